//! `bemi store`: writes a NATS JetStream change stream into `changes` until SIGINT or SIGTERM.

use std::net::SocketAddr;

use anyhow::anyhow;

use super::audit_db::AuditArgs;
use super::worker::{IndexArgs, NatsArgs, StreamArgs};
use super::{metrics_server, shutdown};
use bemi_nats::{NatsConfig, Store, StoreConfig};

/// `bemi store`
#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    /// The NATS server with the change stream: nats://HOST:PORT or tls://HOST:PORT, with
    /// user:password@ or token@ before the host if the server asks for them.
    #[arg(long, env = "BEMI_FROM", value_name = "URL", hide_env_values = true)]
    from: String,
    #[command(flatten)]
    stream: StreamArgs,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    db: AuditArgs,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9188 (path /metrics).
    #[arg(long, env = "BEMI_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Messages fetched and committed at once, per partition.
    #[arg(
        long,
        env = "BEMI_BATCH_MESSAGES",
        value_name = "N",
        default_value_t = 256,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    batch_messages: u16,
    #[command(flatten)]
    indexes: IndexArgs,
    #[command(flatten)]
    checkpoints: super::verify::CheckpointArgs,
}

impl StoreArgs {
    /// The store's configuration; the destination is `--destination-url`, else `DATABASE_URL`.
    fn config(&self, database_url: Option<&str>) -> anyhow::Result<StoreConfig> {
        let destination = self.db.url_or(database_url)?;
        let nats = self
            .nats
            .apply(NatsConfig::new(self.from.trim()).stream(self.stream.stream.trim()));
        Ok(StoreConfig::new(nats, destination)
            .batch_messages(usize::from(self.batch_messages))
            .image_indexes(self.indexes.image_indexes)
            .checkpoints(self.checkpoints.policy()?))
    }
}

/// Runs `bemi store`.
pub(super) async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let database_url = std::env::var("DATABASE_URL").ok();
    let config = args.config(database_url.as_deref())?;
    let shutdown = shutdown::on_signals()?;
    tracing::info!(
        from = %config.nats.display_url(),
        stream = %config.nats.stream,
        destination = %bemi_worker::without_password(&config.destination_url),
        "starting the store"
    );
    let store = Store::new(config);
    if let Some(addr) = args.metrics_addr {
        let listener = metrics_server::bind(addr).await?;
        let metrics = store.metrics();
        metrics_server::spawn(listener, move || metrics.render(), shutdown.child_token());
    }
    store.run(shutdown).await.map_err(|error| anyhow!(error))?;
    tracing::info!("the store stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Harness {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[test]
    fn flags_become_the_store_configuration() {
        let harness = Harness::try_parse_from([
            "bemi",
            "--from",
            "nats://127.0.0.1:4222",
            "--stream",
            "audit",
            "--destination-url",
            "postgres://b/audit",
            "--batch-messages",
            "64",
            "--nats-ca",
            "ca.pem",
            "--nats-cert",
            "client.pem",
            "--nats-key",
            "client.key",
            "--nats-creds",
            "user.creds",
        ])
        .unwrap();
        let config = harness.store.config(Some("postgres://a/app")).unwrap();
        assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(config.nats.ca_file.as_deref(), Some("ca.pem".as_ref()));
        assert_eq!(
            config.nats.client_certificate,
            Some(("client.pem".into(), "client.key".into()))
        );
        assert_eq!(
            config.nats.credentials_file.as_deref(),
            Some("user.creds".as_ref())
        );
        assert_eq!(config.nats.nkey_file, None);
        // A certificate needs its key.
        assert!(
            Harness::try_parse_from([
                "bemi",
                "--from",
                "nats://x:4222",
                "--nats-cert",
                "client.pem"
            ])
            .is_err()
        );
        assert_eq!(config.nats.stream, "audit");
        assert_eq!(config.destination_url, "postgres://b/audit");
        assert_eq!(config.batch_messages, 64);
        // Without --destination-url: DATABASE_URL.
        let harness = Harness::try_parse_from(["bemi", "--from", "nats://127.0.0.1:4222"]).unwrap();
        let config = harness.store.config(Some("postgres://a/app")).unwrap();
        assert_eq!(config.destination_url, "postgres://a/app");
        assert_eq!(config.nats.stream, "bemi");
        assert!(harness.store.config(None).is_err());
    }
}
