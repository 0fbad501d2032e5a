//! # bemi
//!
//! Context-aware audit trails for PostgreSQL, in Rust: every write your service makes carries
//! the context of the request that made it — *who*, *which endpoint*, *which SQL* — through
//! PostgreSQL's write-ahead log into a queryable `changes` table.
//!
//! This crate gathers the integrations behind one feature each, so that an application names
//! one dependency and compiles only what it uses:
//!
//! | feature | module | crate |
//! |---|---|---|
//! | (always) | [`context`], [`migration`], [`protocol`], [`sql`], [`carrier`], [`integration`] | `bemi-core` |
//! | `axum` | `axum` (Tower layer: axum, tonic, any Tower HTTP service) | `bemi-axum` |
//! | `actix` | `actix` (actix-web middleware) | `bemi-actix` |
//! | `async-graphql` | `async_graphql` (the extension) | `bemi-async-graphql` |
//! | `poem` | `poem` (poem middleware) | `bemi-poem` |
//! | `salvo` | `salvo` (salvo hoop) | `bemi-salvo` |
//! | `rocket` | `rocket` (Rocket route wrapper) | `bemi-rocket` |
//! | `sqlx` | `sqlx` (the sqlx 0.9 adapter; the migration on a sqlx pool) | `bemi-sqlx` |
//! | `tokio-postgres` | `tokio_postgres` (the tokio-postgres 0.7 adapter; deadpool, bb8) | `bemi-tokio-postgres` |
//! | `seaorm` | `seaorm` (SeaORM 2 connection and transaction) | `bemi-seaorm` |
//! | `diesel`, `diesel-async` | `diesel` (Diesel's `PgConnection`; diesel-async's `AsyncPgConnection`) | `bemi-diesel` |
//! | `opentelemetry` | `trace` (trace ids in every write's context) | `bemi-core` |
//! | `audit` | `audit` (queries, time travel, revert, follow, retention) | `bemi-audit` |
//! | `worker` | `worker` (the capture worker, in your process) | `bemi-worker` |
//! | `ui` | `ui` (the audit trail's web UI, an axum `Router`) | `bemi-ui` |
//! | `nats` | `nats` (the worker's NATS JetStream sink, and the store) | `bemi-nats` |
//!
//! ```toml
//! [dependencies]
//! bemi = { version = "0.1", features = ["axum", "sqlx"] }
//! ```
//!
//! ```
//! use bemi::context;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let seen = context::scope(json!({"user_id": 187234}), async { context::current() }).await;
//! assert_eq!(seen.unwrap()["user_id"], 187234);
//! # }
//! ```

pub use bemi_core::{
    Context, ContextExt, IntoContext, carrier, context, integration, migration, protocol, sql,
};

#[cfg(feature = "opentelemetry")]
pub use bemi_core::trace;

#[cfg(feature = "axum")]
pub use bemi_axum as axum;

#[cfg(feature = "actix")]
pub use bemi_actix as actix;

#[cfg(feature = "async-graphql")]
pub use bemi_async_graphql as async_graphql;

#[cfg(feature = "poem")]
pub use bemi_poem as poem;

#[cfg(feature = "salvo")]
pub use bemi_salvo as salvo;

#[cfg(feature = "rocket")]
pub use bemi_rocket as rocket;

#[cfg(feature = "sqlx")]
pub use bemi_sqlx as sqlx;

#[cfg(feature = "tokio-postgres")]
pub use bemi_tokio_postgres as tokio_postgres;

#[cfg(feature = "seaorm")]
pub use bemi_seaorm as seaorm;

#[cfg(any(feature = "diesel", feature = "diesel-async"))]
pub use bemi_diesel as diesel;

#[cfg(feature = "audit")]
pub use bemi_audit as audit;

#[cfg(feature = "worker")]
pub use bemi_worker as worker;

#[cfg(feature = "ui")]
pub use bemi_ui as ui;

/// The adapters' paths through the facade, compiled as a doc test with their features.
///
/// ```
/// fn pool(pool: bemi::sqlx::BemiPool) -> bemi::sqlx::BemiPool { pool }
/// fn client(client: bemi::tokio_postgres::BemiClient) -> bemi::tokio_postgres::BemiClient { client }
/// let _ = bemi::sqlx::migration::migrate;
/// ```
#[cfg(all(doctest, feature = "sqlx", feature = "tokio-postgres"))]
struct AdapterDoctests;
#[cfg(feature = "nats")]
pub use bemi_nats as nats;
