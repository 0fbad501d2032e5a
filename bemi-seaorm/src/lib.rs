#![doc = include_str!("../README.md")]

// One adapter, compiled once per SeaORM line: `adapter.rs` names `sea_orm` and `compat`
// through `super`; each line's module says which SeaORM that is, and its `compat` implements
// SeaORM's traits in that line's shape over the adapter's methods (`compat_2.rs`,
// `compat_1.rs`).

/// The SeaORM 2 line (feature `sea-orm-2`, on by default), also at the crate's root:
/// `bemi_seaorm::BemiConnection` is `bemi_seaorm::v2::BemiConnection`.
///
/// ```no_run
/// # fn run(db: sea_orm::DatabaseConnection) {
/// let db: bemi_seaorm::v2::BemiConnection = bemi_seaorm::BemiConnection::new(db);
/// # }
/// ```
#[cfg(feature = "sea-orm-2")]
pub mod v2;

#[cfg(feature = "sea-orm-2")]
pub use v2::*;

/// The SeaORM 1.1 line (feature `sea-orm-1`; SeaORM 1.1 is on sqlx 0.8): the same connection
/// and transaction as the crate's root, on SeaORM 1.1 — `bemi_seaorm::v1::BemiConnection` wraps
/// a SeaORM 1.1 `DatabaseConnection`. One difference: SeaORM 1.1's `TransactionTrait::begin`
/// returns its own `DatabaseTransaction`, which could not carry a context, so the wrappers'
/// `begin`, `begin_with_config`, `transaction`, `transaction_with_config`, `commit` and
/// `rollback` are methods of their own (same names and arguments: calls keep their shape), not
/// that trait's.
///
/// ```toml
/// [dependencies]
/// sea-orm = { version = "1.1.20", features = ["sqlx-postgres", "runtime-tokio-rustls", "macros"] }
/// bemi-seaorm = { version = "0.1", default-features = false, features = ["sea-orm-1"] }
/// ```
#[cfg(feature = "sea-orm-1")]
pub mod v1;
