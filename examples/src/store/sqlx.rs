//! The todo queries through the sqlx adapter ([`BemiPool`]).
//!
//! ```no_run
//! use bemi_core::context;
//! use bemi_sqlx::BemiPool;
//! use bemi_examples::store;
//!
//! # async fn run(pool: BemiPool) -> Result<(), sqlx::Error> {
//! let ctx = serde_json::json!({"user_id": 187234});
//! let todo = context::scope(ctx, store::sqlx::create(&pool, "Sleep")).await?;
//! assert_eq!(todo.task, "Sleep");
//! # Ok(()) }
//! ```

use bemi_sqlx::BemiPool;

use crate::todo::{self, Todo};

/// Inserts a todo.
///
/// ```no_run
/// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
/// let todo = bemi_examples::store::sqlx::create(&pool, "Sleep").await?;
/// # Ok(()) }
/// ```
pub async fn create(pool: &BemiPool, task: &str) -> Result<Todo, sqlx::Error> {
    sqlx::query_as::<_, (i64, String, bool)>(todo::INSERT)
        .bind(task)
        .fetch_one(pool)
        .await
        .map(Todo::from)
}

/// Marks a todo completed; `None` when there is no such todo.
///
/// ```no_run
/// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
/// let todo = bemi_examples::store::sqlx::complete(&pool, 1).await?;
/// # Ok(()) }
/// ```
pub async fn complete(pool: &BemiPool, id: i64) -> Result<Option<Todo>, sqlx::Error> {
    sqlx::query_as::<_, (i64, String, bool)>(todo::COMPLETE)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map(|row| row.map(Todo::from))
}

/// Deletes a todo; `false` when there was no such todo.
///
/// ```no_run
/// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
/// let deleted = bemi_examples::store::sqlx::delete(&pool, 1).await?;
/// # Ok(()) }
/// ```
pub async fn delete(pool: &BemiPool, id: i64) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(todo::DELETE).bind(id).execute(pool).await?;
    Ok(result.rows_affected() > 0)
}

/// Every todo, oldest first.
///
/// ```no_run
/// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
/// let todos = bemi_examples::store::sqlx::list(&pool).await?;
/// # Ok(()) }
/// ```
pub async fn list(pool: &BemiPool) -> Result<Vec<Todo>, sqlx::Error> {
    let rows = sqlx::query_as::<_, (i64, String, bool)>(todo::LIST)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(Todo::from).collect())
}
