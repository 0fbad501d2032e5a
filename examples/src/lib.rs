//! # bemi-examples
//!
//! The todo app of bemi-rs in several flavours, each a library function that builds the app from
//! a database handle (so tests and the demo can serve it on any port) and a binary that runs it:
//!
//! | binary | feature | app | database access |
//! |---|---|---|---|
//! | `todo-axum` | — | `axum_app::router` | sqlx (`bemi_sqlx::BemiPool`) |
//! | `todo-actix` | `actix` | `actix_app::app` | tokio-postgres (`bemi_tokio_postgres::BemiClient`) |
//! | `todo-graphql` | `graphql` | `graphql_app::router` | sqlx, through async-graphql |
//! | `todo-loco` | `loco` | `loco_app::router` | SeaORM through Loco (`bemi_loco`), and a background job |
//!
//! The demo (`cargo run -p bemi-examples --bin demo`) needs no feature, so it compiles none of
//! the other frameworks.
//!
//! The HTTP API of the REST apps: `POST /todo {"task":"Sleep"}` → 201 with the row,
//! `PUT /todo/{id}/complete` → 200 with the row, `DELETE /todo/{id}` → 204, `GET /todo` → 200 with
//! the list. Every request runs in the context of [`request_context`]: `user_id` (from the
//! `x-user-id` header), `endpoint` and `method`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = bemi_examples::startup::prepare_database("postgres://localhost/app").await?;
//! let app = bemi_examples::axum_app::router(bemi_sqlx::BemiPool::new(pool));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

#[cfg(feature = "actix")]
pub mod actix_app;
pub mod axum_app;
pub mod demo;
#[cfg(feature = "graphql")]
pub mod graphql_app;
#[cfg(feature = "loco")]
pub mod loco_app;
pub mod request_context;
pub mod startup;
pub mod store;
pub mod todo;
