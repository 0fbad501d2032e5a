//! The todo app on axum with the sqlx adapter: `cargo run -p bemi-examples --bin todo-axum`.
//!
//! Listens on `--addr` (env `BEMI_EXAMPLE_ADDR`, default 127.0.0.1:3000); the database is
//! `DATABASE_URL`, or an embedded PostgreSQL when it is unset.

use std::process::ExitCode;

use bemi_examples::startup::{self, App, Example};

fn main() -> ExitCode {
    startup::main(&Example {
        name: "todo-axum",
        path: "/todo",
        app: App::Axum(bemi_examples::axum_app::router),
    })
}
