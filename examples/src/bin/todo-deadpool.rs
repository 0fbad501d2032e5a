//! The todo app on axum with a deadpool-postgres pool (`bemi_tokio_postgres::BorrowedClient`):
//! `cargo run -p bemi-examples --features deadpool --bin todo-deadpool`.
//!
//! Listens on `--addr` (env `BEMI_EXAMPLE_ADDR`, default 127.0.0.1:3000); the database is
//! `DATABASE_URL`, or an embedded PostgreSQL when it is unset.

use std::process::ExitCode;

use bemi_examples::startup::{self, App, Example};

fn main() -> ExitCode {
    startup::main(&Example {
        name: "todo-deadpool",
        path: "/todo",
        app: App::Router(bemi_examples::store::deadpool::router),
    })
}
