//! The SeaORM 1.1 line: the adapter on its SeaORM.

use ::sea_orm_1 as sea_orm;

// The same file as the other line's module, on purpose: one adapter for both SeaORM lines.
#[allow(clippy::duplicate_mod)]
#[path = "adapter.rs"]
mod adapter;
#[path = "compat_1.rs"]
mod compat;

pub use adapter::*;
