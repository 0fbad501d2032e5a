//! The tracking migration ([`bemi_core::migration`]) applied through a sqlx pool: at an
//! application's start, or from a deploy step.
//!
//! ```no_run
//! use bemi_sqlx::migration::{self, MigrationOptions};
//!
//! # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
//! migration::migrate(&pool, MigrationOptions::default()).await?;
//! # Ok(()) }
//! ```

use super::{compat, sqlx};

/// The migration's choices; re-exported from [`bemi_core::migration`].
pub use bemi_core::migration::MigrationOptions;

/// Applies [`MigrationOptions::up`] in one transaction, serialized against concurrent runs
/// (e.g. several app instances starting at once) by an advisory lock. Idempotent.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// bemi_sqlx::migration::migrate(&pool, Default::default()).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// The database's error, if a statement of the migration fails (nothing is installed then).
pub async fn migrate(pool: &sqlx::PgPool, options: MigrationOptions) -> Result<(), sqlx::Error> {
    run_in_locked_transaction(pool, options.up()).await
}

/// Applies [`bemi_core::migration::down`], serialized like [`migrate`].
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// bemi_sqlx::migration::migrate_down(&pool).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// The database's error, if a statement fails (nothing is removed then).
pub async fn migrate_down(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    run_in_locked_transaction(pool, bemi_core::migration::down().to_owned()).await
}

async fn run_in_locked_transaction(pool: &sqlx::PgPool, sql: String) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('bemi-rs migration'))")
        .execute(&mut *tx)
        .await?;
    compat::execute_raw(&mut tx, sql).await?;
    tx.commit().await
}
