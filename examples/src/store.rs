//! The todo queries, once per database library. Writes go through bemi's adapters, so each one
//! carries the context in scope. [`TodoStore`] is what the axum apps need of any of them.

use crate::todo::Todo;
pub use crate::todo::TodoStore;

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
