//! The todo app on axum with sync Diesel through deadpool-diesel (`bemi_diesel::BemiPgConnection`):
//! `cargo run -p bemi-examples --features diesel --bin todo-diesel`.
//!
//! Listens on `--addr` (env `BEMI_EXAMPLE_ADDR`, default 127.0.0.1:3000); the database is
//! `DATABASE_URL`, or an embedded PostgreSQL when it is unset.

use std::process::ExitCode;

use bemi_examples::startup::{self, App, Example};

fn main() -> ExitCode {
    startup::main(&Example {
        name: "todo-diesel",
        path: "/todo",
        app: App::Router(bemi_examples::store::diesel::router),
    })
}
