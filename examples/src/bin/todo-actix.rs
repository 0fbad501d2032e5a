//! The todo app on actix-web with the tokio-postgres adapter:
//! `cargo run -p bemi-examples --bin todo-actix`.
//!
//! Listens on `--addr` (env `BEMI_EXAMPLE_ADDR`, default 127.0.0.1:3000); the database is
//! `DATABASE_URL`, or an embedded PostgreSQL when it is unset.

use std::error::Error;
use std::process::ExitCode;

use bemi_examples::actix_app;
use bemi_examples::startup::{self, Args, Database};
use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    startup::init_logging();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("todo-actix: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let database = Database::from_env().await?;
    let url = database.url();
    // The table and the triggers, through sqlx's migration helper; requests use tokio-postgres.
    startup::prepare_database(&url).await?.close().await;
    let client = startup::connect_tokio_postgres(&url).await?;
    let listener = startup::listen(args.addr).await?.into_std()?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    tracing::info!(
        "todo-actix listening on http://{} (database: {})",
        listener.local_addr()?,
        if database.is_embedded() {
            "embedded"
        } else {
            "DATABASE_URL"
        }
    );
    let server = actix_app::server(client, listener, workers)?;
    let handle = server.handle();
    tokio::spawn(async move {
        startup::ctrl_c().await;
        handle.stop(true).await;
    });
    server.await?;
    Ok(())
}
