#![doc = include_str!("../README.md")]

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
