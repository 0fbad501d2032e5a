//! The todo queries, once per database driver. Writes go through bemi's adapters, so each one
//! carries the context in scope.

#[cfg(feature = "actix")]
pub mod postgres;
pub mod sqlx;
