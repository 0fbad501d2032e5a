//! The todo app on axum with diesel-async through bb8 (`bemi_diesel::BemiAsyncPgConnection`):
//! `cargo run -p bemi-examples --features diesel-async --bin todo-diesel-async`.
//!
//! Listens on `--addr` (env `BEMI_EXAMPLE_ADDR`, default 127.0.0.1:3000); the database is
//! `DATABASE_URL`, or an embedded PostgreSQL when it is unset.

use std::process::ExitCode;

use bemi_examples::startup::{self, App, Example};

fn main() -> ExitCode {
    startup::main(&Example {
        name: "todo-diesel-async",
        path: "/todo",
        app: App::Router(bemi_examples::store::diesel_async::router),
    })
}
