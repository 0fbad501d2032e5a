//! `bemi dev`: a throwaway PostgreSQL (`wal_level=logical`) with tracking installed, a worker
//! capturing into its `changes` table and the web UI reading it; Ctrl-C stops them and removes
//! the cluster's data.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use tokio_util::sync::CancellationToken;

use super::worker::CaptureArgs;
use super::{connect, metrics_server, shutdown};
use bemi_dev::EphemeralPostgres;
use bemi_worker::{Worker, WorkerError};

/// How long the worker may take to start streaming.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `bemi dev`
#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    #[command(flatten)]
    capture: CaptureArgs,
    /// Where the web UI listens (a loopback address; port 0 picks a free one). Its URL is
    /// printed as BEMI_UI_URL=….
    #[arg(long, env = "BEMI_DEV_UI_ADDR", default_value = "127.0.0.1:0")]
    ui_addr: std::net::SocketAddr,
}

/// Runs `bemi dev`.
pub(super) async fn run(args: DevArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signals()?;
    tracing::info!("starting an ephemeral PostgreSQL (wal_level=logical)");
    let pg = tokio::task::spawn_blocking(EphemeralPostgres::start)
        .await
        .context("the PostgreSQL launcher panicked")?
        .map_err(|error| anyhow!(error))?;
    let result = serve(&pg.url(), &args, shutdown).await;
    tracing::info!("stopping PostgreSQL and removing its data");
    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .context("stopping PostgreSQL panicked")?;
    result
}

/// Migrates, runs the worker, prints `DATABASE_URL=…` once it streams, and waits for it to stop.
async fn serve(url: &str, args: &DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !args.ui_addr.ip().is_loopback() {
        return Err(anyhow!(
            "--ui-addr {} is not a loopback address: `bemi dev`'s UI has no token; use `bemi ui \
             --token` to serve the audit trail on a network",
            args.ui_addr
        ));
    }
    let pool = connect(url).await?;
    bemi_sqlx::migration::migrate(&pool, Default::default())
        .await
        .context("could not install tracking")?;
    let ui_listener = tokio::net::TcpListener::bind(args.ui_addr)
        .await
        .with_context(|| format!("could not listen on {} for the web UI", args.ui_addr))?;

    let worker = Worker::new(args.capture.config(url, None)?);
    if let Some(addr) = args.capture.metrics_addr() {
        let listener = metrics_server::bind(addr).await?;
        let metrics = worker.metrics();
        metrics_server::spawn(listener, move || metrics.render(), shutdown.child_token());
    }
    let mut running = worker.spawn();
    let stop = running.cancel_token();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            stop.cancel();
        }
    });
    match running.wait_until_streaming(READY_TIMEOUT).await {
        Ok(()) => {}
        // Stopped by Ctrl-C while it started.
        Err(_) if shutdown.is_cancelled() => return running.join().await.map_err(|e| anyhow!(e)),
        Err(error @ WorkerError::NotStreaming { .. }) => {
            let _ = running.shutdown().await;
            return Err(anyhow!(error));
        }
        Err(error) => return Err(anyhow!(error)),
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "DATABASE_URL={url}")?;
    stdout.flush()?;
    drop(stdout);
    // The worker has created `changes`: the UI can read it from now on.
    tokio::spawn(super::ui::serve(
        ui_listener,
        bemi_ui::router(
            pool.clone(),
            bemi_ui::UiOptions::new().authorize(|_| async {
                bemi_ui::Access::revert().actor(serde_json::json!({"reverted_by": "bemi dev"}))
            }),
        ),
        shutdown.clone(),
    ));
    tracing::info!(
        "PostgreSQL is ready and changes are captured into its `changes` table; Ctrl-C stops it \
         and removes its data"
    );
    running.join().await.map_err(|error| anyhow!(error))
}
