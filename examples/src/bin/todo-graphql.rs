//! The todo app as a GraphQL server (async-graphql over axum, sqlx adapter):
//! `cargo run -p bemi-examples --bin todo-graphql`, then `POST /graphql`.
//!
//! Listens on `--addr` (env `BEMI_EXAMPLE_ADDR`, default 127.0.0.1:3000); the database is
//! `DATABASE_URL`, or an embedded PostgreSQL when it is unset.

use std::process::ExitCode;

use bemi_examples::startup::{self, App, Example};

fn main() -> ExitCode {
    startup::main(&Example {
        name: "todo-graphql",
        path: "/graphql",
        app: App::Axum(bemi_examples::graphql_app::router),
    })
}
