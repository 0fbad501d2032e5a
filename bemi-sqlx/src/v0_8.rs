//! The sqlx 0.8 line: the adapter and the migration on its sqlx.

use ::sqlx_0_8 as sqlx;
use ::sqlx_postgres_0_8 as sqlx_postgres;

// The same file as the other line's module, on purpose: one adapter for both sqlx lines.
#[allow(clippy::duplicate_mod)]
#[path = "adapter.rs"]
mod adapter;
#[path = "compat_0_8.rs"]
mod compat;
#[allow(clippy::duplicate_mod)]
#[path = "migration.rs"]
pub mod migration;

pub use adapter::*;
