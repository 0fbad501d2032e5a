//! # bemi-core
//!
//! Context-aware audit trails for PostgreSQL. This crate holds the parts every integration
//! shares:
//!
//! - [`context`]: the request context, a JSON object in a tokio task-local;
//! - [`sql`]: annotating writes with ` /*Bemi {json} Bemi*/`;
//! - [`migration`]: the SQL that installs the statement-level triggers;
//! - driver adapters behind the features `sqlx` and `tokio-postgres`;
//! - `audit`: the captured changes and queries over them, behind the feature `sqlx`;
//! - `graphql`: the async-graphql 7 extension, behind the feature `async-graphql`.
//!
//! ```
//! use bemi_core::{context, sql};
//! use serde_json::json;
//!
//! let ctx = json!({"user_id": 187234}).as_object().unwrap().clone();
//! let annotated = context::sync_scope(ctx, || sql::annotate_current("DELETE FROM todo WHERE id = $1"));
//! assert!(annotated.unwrap().ends_with(r#""user_id":187234} Bemi*/"#));
//! ```

pub mod context;
pub mod migration;
pub mod sql;

#[cfg(feature = "sqlx")]
pub mod sqlx;

#[cfg(feature = "sqlx")]
pub mod audit;

#[cfg(feature = "tokio-postgres")]
pub mod tokio_postgres;

#[cfg(feature = "async-graphql")]
pub mod graphql;
