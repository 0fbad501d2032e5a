//! The todo app on axum with the sqlx adapter: `cargo run -p bemi-examples --bin todo-axum`.
//!
//! Listens on `--addr` (env `BEMI_EXAMPLE_ADDR`, default 127.0.0.1:3000); the database is
//! `DATABASE_URL`, or an embedded PostgreSQL when it is unset.

use std::error::Error;
use std::process::ExitCode;

use bemi_core::sqlx::BemiPool;
use bemi_examples::axum_app;
use bemi_examples::startup::{self, Args, Database};
use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    startup::init_logging();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("todo-axum: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let database = Database::from_env().await?;
    let pool = startup::prepare_database(&database.url()).await?;
    let app = axum_app::router(BemiPool::new(pool));
    let listener = startup::listen(args.addr).await?;
    tracing::info!(
        "todo-axum listening on http://{} (database: {})",
        listener.local_addr()?,
        if database.is_embedded() {
            "embedded"
        } else {
            "DATABASE_URL"
        }
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(startup::ctrl_c())
        .await?;
    Ok(())
}
