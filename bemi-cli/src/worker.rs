//! `bemi worker`: the capture worker until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::anyhow;
use sqlx::{Connection as _, PgConnection};

use super::{SourceArgs, metrics_server, shutdown, time::parse_duration};
use bemi_audit::schema::{self, ImageIndexes, Layout};
use bemi_nats::{NatsConfig, NatsSink};
use bemi_worker::Worker;
use bemi_worker::{IgnoredColumns, Redactions, WorkerConfig};

/// `bemi worker`
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Where the `changes` table lives (default: the source database).
    #[arg(
        long,
        env = "BEMI_DESTINATION_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    destination_url: Option<String>,
    #[command(flatten)]
    capture: CaptureArgs,
    /// Publish into a NATS JetStream stream instead of writing `changes` (`bemi store` writes
    /// the stream into it): nats://HOST:PORT or tls://HOST:PORT, with user:password@ or
    /// token@ before the host if the server asks for them.
    #[arg(long, env = "BEMI_SINK", value_name = "URL", hide_env_values = true)]
    sink: Option<String>,
    #[command(flatten)]
    stream: StreamArgs,
    #[command(flatten)]
    nats: NatsArgs,
    /// Partitions of the stream, when the worker creates it (fixed afterwards): how many
    /// `bemi store` processes can share the work.
    #[arg(
        long,
        env = "BEMI_PARTITIONS",
        value_name = "N",
        default_value_t = bemi_nats::DEFAULT_PARTITIONS,
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    partitions: u32,
    /// Create the `changes` table partitioned by month on committed_at (`month`), or as one
    /// table (`none`). Applies when the table is created; the worker keeps the partitions of
    /// the current and next month created either way.
    #[arg(
        long,
        env = "BEMI_PARTITION_BY",
        value_name = "none|month",
        default_value = "none",
        value_parser = partitioning
    )]
    partition_by: Layout,
}

/// How to reach NATS besides the URL: the flags `bemi worker --sink` and `bemi store` share.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct NatsArgs {
    /// A NATS credentials file (a user JWT and its nkey seed, as nsc writes them).
    #[arg(long, env = "BEMI_NATS_CREDS", value_name = "FILE")]
    nats_creds: Option<std::path::PathBuf>,
    /// A file holding an nkey seed, for NATS nkey authentication.
    #[arg(long, env = "BEMI_NATS_NKEY", value_name = "FILE")]
    nats_nkey: Option<std::path::PathBuf>,
    /// The PEM file of the CA that signed the NATS server's certificate (TLS is then required).
    #[arg(long, env = "BEMI_NATS_CA", value_name = "FILE")]
    nats_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) to present to the NATS server, with --nats-key.
    #[arg(
        long,
        env = "BEMI_NATS_CERT",
        value_name = "FILE",
        requires = "nats_key"
    )]
    nats_cert: Option<std::path::PathBuf>,
    /// The key (PEM) of --nats-cert.
    #[arg(
        long,
        env = "BEMI_NATS_KEY",
        value_name = "FILE",
        requires = "nats_cert"
    )]
    nats_key: Option<std::path::PathBuf>,
}

impl NatsArgs {
    /// `config` with these credentials and TLS settings.
    pub(crate) fn apply(&self, mut config: NatsConfig) -> NatsConfig {
        config.credentials_file.clone_from(&self.nats_creds);
        config.nkey_file.clone_from(&self.nats_nkey);
        config.ca_file.clone_from(&self.nats_ca);
        if let (Some(cert), Some(key)) = (&self.nats_cert, &self.nats_key) {
            config = config.client_certificate(cert, key);
        }
        config
    }
}

/// `--stream`: the flag `bemi worker --sink` and `bemi store` share.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StreamArgs {
    /// The JetStream stream (created if missing, with file storage).
    #[arg(long, env = "BEMI_STREAM", value_name = "NAME", default_value = "bemi")]
    pub(crate) stream: String,
}

fn partitioning(text: &str) -> Result<Layout, String> {
    text.parse()
}

/// What to capture and how: the flags `bemi worker` and `bemi dev` share.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CaptureArgs {
    /// The logical replication slot (created if missing; lower-case letters, digits, `_`).
    #[arg(long, env = "BEMI_SLOT", default_value = "bemi", value_parser = slot_name)]
    slot: String,
    /// The publication (created if missing and kept in sync with the captured tables).
    #[arg(long, env = "BEMI_PUBLICATION", default_value = "bemi")]
    publication: String,
    /// Only capture these tables: globs of `table` or `schema.table` (`*`, `?`).
    #[arg(
        long,
        env = "BEMI_TABLES",
        value_name = "GLOB",
        value_delimiter = ',',
        num_args = 1..
    )]
    tables: Vec<String>,
    /// Never capture these tables (globs, as --tables).
    #[arg(
        long,
        env = "BEMI_EXCLUDE_TABLES",
        value_name = "GLOB",
        value_delimiter = ',',
        num_args = 1..
    )]
    exclude_tables: Vec<String>,
    /// Store "[REDACTED]" instead of these columns' values in before and after.
    #[arg(
        long,
        env = "BEMI_REDACT",
        value_name = "TABLE.COLUMN",
        value_delimiter = ',',
        num_args = 1..
    )]
    redact: Vec<String>,
    /// Leave out an UPDATE when every column it changed matches one of these globs
    /// (`TABLE.COLUMN` or `SCHEMA.TABLE.COLUMN`, `*` and `?`), e.g. `*.updated_at`. An UPDATE
    /// that changed another column is stored whole; INSERTs, DELETEs, TRUNCATEs and UPDATEs of
    /// a primary key are always stored.
    #[arg(
        long,
        env = "BEMI_IGNORE_COLUMNS",
        value_name = "GLOB.GLOB",
        value_delimiter = ',',
        num_args = 1..
    )]
    ignore_columns: Vec<String>,
    /// Leave out UPDATEs that leave their row as it was (ORMs saving an unchanged model):
    /// `true` (the default) or `false` to store them. Needs REPLICA IDENTITY FULL (the
    /// migration's default) to tell; without it every UPDATE is stored.
    #[arg(
        long,
        env = "BEMI_SKIP_UNCHANGED_UPDATES",
        value_name = "BOOL",
        default_value = "true",
        value_parser = super::boolish(),
        action = clap::ArgAction::Set
    )]
    skip_unchanged_updates: bool,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9187 (path /metrics).
    #[arg(long, env = "BEMI_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// How often an idle source gets a heartbeat (and new tables are looked for).
    #[arg(
        long,
        env = "BEMI_HEARTBEAT_INTERVAL",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_duration
    )]
    heartbeat_interval: Duration,
    /// Destination connections writing batches at once (commits stay in stream order); more
    /// use more cores of the destination server.
    #[arg(
        long,
        env = "BEMI_WRITER_CONNECTIONS",
        value_name = "N",
        default_value_t = 2,
        value_parser = clap::value_parser!(u16).range(1..=16)
    )]
    writer_connections: u16,
    #[command(flatten)]
    indexes: IndexArgs,
    #[command(flatten)]
    checkpoints: super::verify::CheckpointArgs,
    /// The applications' context key (the secret they sign contexts with): each stored context
    /// then says whether it was signed and valid, unsigned or forged (`_bemi_signature`).
    #[arg(
        long,
        env = "BEMI_CONTEXT_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    context_key: Option<String>,
}

/// `--image-indexes`: the flag `bemi worker`, `bemi dev` and `bemi store` share.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct IndexArgs {
    /// Keep the GIN indexes on `before` and `after` of `changes` (`keep`: created if missing),
    /// which serve `--before`/`--after` filters, or `drop` them (dropped if present): their
    /// upkeep is a large part of storing each change (BENCHMARKS.md, P4-choice).
    #[arg(
        long,
        env = "BEMI_IMAGE_INDEXES",
        value_name = "keep|drop",
        default_value = "keep",
        value_parser = image_indexes
    )]
    pub(crate) image_indexes: ImageIndexes,
}

fn image_indexes(text: &str) -> Result<ImageIndexes, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "keep" => Ok(ImageIndexes::Keep),
        "drop" => Ok(ImageIndexes::Drop),
        other => Err(format!("{other:?}: write keep or drop")),
    }
}

impl CaptureArgs {
    /// The worker's configuration for `source_url`.
    pub(super) fn config(
        &self,
        source_url: &str,
        destination_url: Option<String>,
    ) -> anyhow::Result<WorkerConfig> {
        let redactions = Redactions::parse_strict(&self.redact).map_err(|error| anyhow!(error))?;
        let ignored =
            IgnoredColumns::parse_strict(&self.ignore_columns).map_err(|error| anyhow!(error))?;
        if self.heartbeat_interval.is_zero() {
            return Err(anyhow!(
                "--heartbeat-interval must be longer than zero, e.g. 10s"
            ));
        }
        let mut config = WorkerConfig::new(source_url)
            .tables(self.tables.iter().map(|t| t.trim().to_owned()))
            .exclude_tables(self.exclude_tables.iter().map(|t| t.trim().to_owned()))
            .redactions(redactions)
            .ignored_columns(ignored)
            .skip_unchanged_updates(self.skip_unchanged_updates)
            .slot(self.slot.clone())
            .publication(self.publication.clone())
            .heartbeat_interval(self.heartbeat_interval)
            .writer_connections(usize::from(self.writer_connections))
            .image_indexes(self.indexes.image_indexes)
            .checkpoints(self.checkpoints.policy()?)
            .context_key(
                self.context_key
                    .as_deref()
                    .map(str::trim)
                    .filter(|secret| !secret.is_empty())
                    .map(|secret| bemi_core::signing::ContextKey::new(secret.as_bytes())),
            );
        if let Some(url) = destination_url.filter(|url| !url.trim().is_empty()) {
            config = config.destination(url);
        }
        Ok(config)
    }

    /// Where to serve the metrics, if anywhere.
    pub(super) fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }
}

/// PostgreSQL's rule for slot names, checked before the worker would retry a hopeless start.
fn slot_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not a valid replication slot name: use 1 to 63 lower-case letters, \
             digits and underscores, e.g. bemi_app"
        ))
    }
}

/// Runs `bemi worker`.
pub(super) async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let config = args
        .capture
        .config(args.source.url()?, args.destination_url.clone())?;
    let shutdown = shutdown::on_signals()?;
    if let Some(sink) = args.sink.as_deref().filter(|url| !url.trim().is_empty()) {
        let nats = args.nats.apply(
            NatsConfig::new(sink.trim())
                .stream(args.stream.stream.trim())
                .partitions(args.partitions),
        );
        tracing::info!(
            source = %bemi_worker::without_password(&config.source_url),
            sink = %nats.display_url(),
            stream = %nats.stream,
            slot = %config.slot,
            publication = %config.publication,
            "starting the capture worker"
        );
        let sink = NatsSink::new(nats);
        let sink_metrics = sink.metrics();
        let worker = Worker::with_sink(config, sink);
        let metrics = worker.metrics();
        let render = move || metrics.render() + &sink_metrics.render();
        return run_worker(worker, args.capture.metrics_addr(), render, shutdown).await;
    }
    if args.partition_by == Layout::Monthly {
        let mut conn = PgConnection::connect(config.destination_url())
            .await
            .map_err(|error| {
                anyhow!(
                    "could not connect to the destination {} to create the partitioned changes \
                     table: {error}",
                    bemi_worker::without_password(config.destination_url())
                )
            })?;
        schema::create(&mut conn, Layout::Monthly).await?;
        tracing::info!("the changes table is partitioned by month");
    }
    tracing::info!(
        source = %bemi_worker::without_password(&config.source_url),
        destination = %bemi_worker::without_password(config.destination_url()),
        slot = %config.slot,
        publication = %config.publication,
        "starting the capture worker"
    );
    let worker = Worker::new(config);
    let metrics = worker.metrics();
    let render = move || metrics.render();
    run_worker(worker, args.capture.metrics_addr(), render, shutdown).await
}

/// Runs `worker` until `shutdown`, serving `render`'s metrics on `metrics_addr`.
async fn run_worker(
    worker: Worker,
    metrics_addr: Option<SocketAddr>,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = metrics_addr {
        let listener = metrics_server::bind(addr).await?;
        metrics_server::spawn(listener, render, shutdown.child_token());
    }
    let handle = worker.spawn();
    let stop = handle.cancel_token();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stop.cancel();
    });
    handle.join().await.map_err(|error| anyhow!(error))?;
    tracing::info!("the capture worker stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Harness {
        #[command(flatten)]
        capture: CaptureArgs,
    }

    #[test]
    fn flags_become_the_worker_configuration() {
        let harness = Harness::try_parse_from([
            "bemi",
            "--slot",
            "bemi_app",
            "--tables",
            "public.*,todo",
            "--exclude-tables",
            "public.sessions",
            "--redact",
            "users.password_hash",
            "billing.card.number",
            "--metrics-addr",
            "127.0.0.1:9187",
            "--heartbeat-interval",
            "2s",
        ])
        .unwrap();
        let config = harness
            .capture
            .config("postgres://a/app", Some("postgres://b/audit".into()))
            .unwrap();
        assert_eq!(config.slot, "bemi_app");
        assert_eq!(config.publication, "bemi");
        assert_eq!(config.filter.include, ["public.*", "todo"]);
        assert!(!config.filter.includes("public", "sessions"));
        assert!(
            config
                .redactions
                .is_redacted("public", "users", "password_hash")
        );
        assert!(config.redactions.is_redacted("billing", "card", "number"));
        assert_eq!(
            harness.capture.metrics_addr(),
            Some("127.0.0.1:9187".parse().unwrap())
        );
        assert_eq!(config.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(config.destination_url(), "postgres://b/audit");
    }

    #[test]
    fn bad_values_are_refused_with_the_fix() {
        let error = Harness::try_parse_from(["bemi", "--slot", "My-Slot"]).unwrap_err();
        assert!(error.to_string().contains("lower-case letters"), "{error}");
        let harness = Harness::try_parse_from(["bemi", "--redact", "password"]).unwrap();
        let error = harness
            .capture
            .config("postgres://a/app", None)
            .unwrap_err();
        assert!(error.to_string().contains("TABLE.COLUMN"), "{error}");
    }
}
