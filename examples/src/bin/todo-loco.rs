//! The todo app on Loco 1.2 (`bemi_loco`: one initializer, a background job on Loco's
//! PostgreSQL queue): `cargo run -p bemi-examples --features loco --bin todo-loco`.
//!
//! Listens on `--addr` (env `BEMI_EXAMPLE_ADDR`, default 127.0.0.1:3000); the database is
//! `DATABASE_URL`, or an embedded PostgreSQL when it is unset. `POST /todo/{id}/archive`
//! enqueues the `ArchiveTodo` job, which the app's queue worker runs.

use std::process::ExitCode;

use bemi_examples::startup::{self, App, Example};

fn main() -> ExitCode {
    startup::main(&Example {
        name: "todo-loco",
        path: "/todo",
        app: App::Router(bemi_examples::loco_app::router),
    })
}
