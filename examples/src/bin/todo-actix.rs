//! The todo app on actix-web with the tokio-postgres adapter:
//! `cargo run -p bemi-examples --bin todo-actix`.
//!
//! Listens on `--addr` (env `BEMI_EXAMPLE_ADDR`, default 127.0.0.1:3000); the database is
//! `DATABASE_URL`, or an embedded PostgreSQL when it is unset.

use std::process::ExitCode;

use bemi_examples::startup::{self, App, Example};

fn main() -> ExitCode {
    startup::main(&Example {
        name: "todo-actix",
        path: "/todo",
        app: App::Actix(bemi_examples::actix_app::server),
    })
}
