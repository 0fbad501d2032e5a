//! The todo queries through the tokio-postgres adapter ([`BemiClient`]).
//!
//! ```no_run
//! use bemi_core::context;
//! use bemi_tokio_postgres::BemiClient;
//! use bemi_examples::store;
//!
//! # async fn run(client: BemiClient) -> Result<(), tokio_postgres::Error> {
//! let ctx = serde_json::json!({"user_id": 187234});
//! let todo = context::scope(ctx, store::postgres::create(&client, "Sleep")).await?;
//! assert_eq!(todo.task, "Sleep");
//! # Ok(()) }
//! ```

use bemi_tokio_postgres::BemiClient;
use tokio_postgres::Row;

use crate::todo::{self, Todo};

fn todo_from(row: &Row) -> Result<Todo, tokio_postgres::Error> {
    Ok(Todo {
        id: row.try_get("id")?,
        task: row.try_get("task")?,
        is_completed: row.try_get("is_completed")?,
    })
}

/// Inserts a todo.
///
/// ```no_run
/// # async fn run(client: bemi_tokio_postgres::BemiClient) -> Result<(), tokio_postgres::Error> {
/// let todo = bemi_examples::store::postgres::create(&client, "Sleep").await?;
/// # Ok(()) }
/// ```
pub async fn create(client: &BemiClient, task: &str) -> Result<Todo, tokio_postgres::Error> {
    todo_from(&client.query_one(todo::INSERT, &[&task]).await?)
}

/// Marks a todo completed; `None` when there is no such todo.
///
/// ```no_run
/// # async fn run(client: bemi_tokio_postgres::BemiClient) -> Result<(), tokio_postgres::Error> {
/// let todo = bemi_examples::store::postgres::complete(&client, 1).await?;
/// # Ok(()) }
/// ```
pub async fn complete(client: &BemiClient, id: i64) -> Result<Option<Todo>, tokio_postgres::Error> {
    client
        .query_opt(todo::COMPLETE, &[&id])
        .await?
        .as_ref()
        .map(todo_from)
        .transpose()
}

/// Deletes a todo; `false` when there was no such todo.
///
/// ```no_run
/// # async fn run(client: bemi_tokio_postgres::BemiClient) -> Result<(), tokio_postgres::Error> {
/// let deleted = bemi_examples::store::postgres::delete(&client, 1).await?;
/// # Ok(()) }
/// ```
pub async fn delete(client: &BemiClient, id: i64) -> Result<bool, tokio_postgres::Error> {
    Ok(client.execute(todo::DELETE, &[&id]).await? > 0)
}

/// Every todo, oldest first.
///
/// ```no_run
/// # async fn run(client: bemi_tokio_postgres::BemiClient) -> Result<(), tokio_postgres::Error> {
/// let todos = bemi_examples::store::postgres::list(&client).await?;
/// # Ok(()) }
/// ```
pub async fn list(client: &BemiClient) -> Result<Vec<Todo>, tokio_postgres::Error> {
    client
        .query(todo::LIST, &[])
        .await?
        .iter()
        .map(todo_from)
        .collect()
}
