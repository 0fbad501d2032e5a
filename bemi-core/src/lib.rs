//! # bemi-core
//!
//! Context-aware audit trails for PostgreSQL: the parts every integration shares.
//!
//! - [`context`]: the request context, a JSON object in a task-local, and [`ContextExt`] to
//!   carry it into spawned tasks;
//! - [`carrier`]: how adapters carry a write's context (a message in its transaction, or a
//!   ` /*Bemi {json} Bemi*/` comment, see [`sql`]);
//! - [`sql`]: annotating writes with the comment;
//! - [`migration`]: the SQL that installs the triggers;
//! - [`protocol`]: the names and bounds of the wire format and of the `changes` table;
//! - [`integration`]: what framework integrations (layers, middleware) are built from.
//!
//! The database adapters that carry the context are crates of their own: `bemi-sqlx`,
//! `bemi-tokio-postgres`, `bemi-seaorm` and `bemi-diesel`.
//!
//! ```
//! use bemi_core::{context, sql};
//! use serde_json::json;
//!
//! let annotated = context::sync_scope(json!({"user_id": 187234}), || {
//!     sql::annotate_current("DELETE FROM todo WHERE id = $1")
//! });
//! assert!(annotated.unwrap().ends_with(r#""user_id":187234} Bemi*/"#));
//! ```

pub mod carrier;
pub mod context;
pub mod integration;
mod local;
pub mod migration;
pub mod protocol;
pub mod sql;

#[cfg(feature = "opentelemetry")]
pub mod trace;

pub use context::{Context, ContextExt, IntoContext};
