//! The todo queries, once per database library. Writes go through bemi's adapters, so each one
//! carries the context in scope. [`TodoStore`] is what the axum apps need of any of them.

use std::future::Future;

use crate::todo::Todo;

#[cfg(feature = "deadpool")]
pub mod deadpool;
#[cfg(feature = "diesel")]
pub mod diesel;
#[cfg(feature = "diesel-async")]
pub mod diesel_async;
#[cfg(any(feature = "diesel", feature = "diesel-async"))]
pub mod diesel_schema;
#[cfg(feature = "actix")]
pub mod postgres;
#[cfg(feature = "seaorm")]
pub mod seaorm;
pub mod sqlx;

/// The four queries of the REST apps, over some database library.
///
/// ```
/// fn takes<S: bemi_examples::store::TodoStore>(_: S) {}
/// # fn run(pool: bemi_sqlx::BemiPool) { takes(pool); }
/// ```
pub trait TodoStore: Clone + Send + Sync + 'static {
    /// What a query can fail with.
    type Error: std::fmt::Display + Send;

    /// Inserts a todo.
    fn create(&self, task: &str) -> impl Future<Output = Result<Todo, Self::Error>> + Send;

    /// Marks a todo completed; `None` when there is no such todo.
    fn complete(&self, id: i64) -> impl Future<Output = Result<Option<Todo>, Self::Error>> + Send;

    /// Deletes a todo; `false` when there was no such todo.
    fn delete(&self, id: i64) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Every todo, oldest first.
    fn list(&self) -> impl Future<Output = Result<Vec<Todo>, Self::Error>> + Send;
}

impl TodoStore for bemi_sqlx::BemiPool {
    type Error = ::sqlx::Error;

    async fn create(&self, task: &str) -> Result<Todo, Self::Error> {
        sqlx::create(self, task).await
    }

    async fn complete(&self, id: i64) -> Result<Option<Todo>, Self::Error> {
        sqlx::complete(self, id).await
    }

    async fn delete(&self, id: i64) -> Result<bool, Self::Error> {
        sqlx::delete(self, id).await
    }

    async fn list(&self) -> Result<Vec<Todo>, Self::Error> {
        sqlx::list(self).await
    }
}
