//! The one-command demo of bemi-rs: `cargo run -p bemi-examples --bin demo`.
//!
//! Without `DATABASE_URL` it starts an embedded PostgreSQL (removed at exit); with it, it uses
//! that server (which needs `wal_level=logical`) and drops the demo's replication slot at the end.
//! It migrates, runs the capture worker in-process, serves the axum todo app, replays Bemi's five
//! example requests and prints the resulting `changes` table, then how to query it (or, for the
//! embedded database, how to keep one to query). Logs go to stderr, warnings and errors only:
//! stdout is the demo's own output.

use std::process::ExitCode;

use bemi_examples::{demo, startup};

/// The demo's own slot, so that it never touches a worker's `bemi` slot.
const SLOT: &str = "bemi_demo";

#[tokio::main]
async fn main() -> ExitCode {
    startup::init_logging_at(tracing::Level::WARN);
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let database = startup::Database::from_env().await?;
    println!(
        "PostgreSQL: {}",
        if database.is_embedded() {
            "embedded (removed at exit; set DATABASE_URL to use your own)"
        } else {
            "DATABASE_URL"
        }
    );
    println!(
        "Replaying the requests of user {} through the axum todo app:\n",
        demo::USER_ID
    );
    let url = database.url();
    let result = demo::replay(&url, SLOT).await;
    if !database.is_embedded() {
        // A slot left behind would keep WAL on the server forever.
        demo::drop_slot(&url, SLOT).await?;
    }
    let changes = result?;
    println!("\nThe `changes` table the worker wrote:\n");
    println!("{}", demo::table(&changes));
    print!("{}", demo::closing_hint(database.is_embedded()));
    Ok(())
}
