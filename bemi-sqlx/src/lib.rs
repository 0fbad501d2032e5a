#![doc = include_str!("../README.md")]

// One adapter, compiled once per sqlx line: `adapter.rs` and `migration.rs` name `sqlx` and
// `compat` through `super`, and each line's module below says which sqlx that is and brings
// the few items whose shape differs between the lines (`compat_0_9.rs`, `compat_0_8.rs`).

/// How writes carry their context ([`BemiPool::carrier`]); re-exported from
/// [`bemi_core::carrier`].
pub use bemi_core::carrier::Carrier;

/// The sqlx 0.9 line (feature `sqlx-0-9`, on by default), also at the crate's root:
/// `bemi_sqlx::BemiPool` is `bemi_sqlx::v0_9::BemiPool`.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) {
/// let pool: bemi_sqlx::v0_9::BemiPool = bemi_sqlx::BemiPool::new(pool);
/// # }
/// ```
#[cfg(feature = "sqlx-0-9")]
pub mod v0_9;

#[cfg(feature = "sqlx-0-9")]
pub use v0_9::*;

/// The sqlx 0.8 line (feature `sqlx-0-8`): the same adapter and migration as the crate's root,
/// built on sqlx 0.8 — `bemi_sqlx::v0_8::BemiPool` wraps a sqlx 0.8 `PgPool`. The examples in
/// the items' documentation name the 0.9 line's paths; with 0.8, put `v0_8::` after
/// `bemi_sqlx::`.
///
/// ```toml
/// [dependencies]
/// sqlx = { version = "0.8.6", features = ["postgres", "runtime-tokio"] }
/// bemi-sqlx = { version = "0.1", default-features = false, features = ["sqlx-0-8"] }
/// ```
#[cfg(feature = "sqlx-0-8")]
pub mod v0_8;
