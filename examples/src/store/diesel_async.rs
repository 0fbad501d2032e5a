//! The todo queries through diesel-async on [`BemiAsyncPgConnection`], pooled by bb8
//! (diesel-async's `AsyncDieselConnectionManager`).
//!
//! ```no_run
//! use bemi_examples::store::TodoStore as _;
//!
//! # async fn run() -> Result<(), bemi_examples::store::diesel_async::Error> {
//! let store = bemi_examples::store::diesel_async::Store::connect("postgres://localhost/app", 8).await?;
//! let ctx = serde_json::json!({"user_id": 187234});
//! let todo = bemi_core::context::scope(ctx, store.create("Sleep")).await?;
//! # Ok(()) }
//! ```

use bemi_diesel::BemiAsyncPgConnection;
use diesel::{
    ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper as _,
};
use diesel_async::RunQueryDsl as _;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::Pool;

use crate::startup::{RouterFuture, connect_error};
use crate::store::TodoStore;
use crate::store::diesel_schema::{TodoRow, todo};
use crate::todo::Todo;

/// The axum app on diesel-async for the database of `url` (`todo-diesel-async`).
///
/// ```no_run
/// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
/// let app = bemi_examples::store::diesel_async::router("postgres://localhost/app".into()).await?;
/// # Ok(()) }
/// ```
pub fn router(url: String) -> RouterFuture {
    Box::pin(async move {
        let store = Store::connect(&url, 16)
            .await
            .map_err(|error| connect_error(&url, error))?;
        Ok(crate::axum_app::router_for(store))
    })
}

/// A bb8 pool of [`BemiAsyncPgConnection`]s as a [`TodoStore`].
#[derive(Clone)]
pub struct Store {
    pool: Pool<BemiAsyncPgConnection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// What a query can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection from the pool.
    #[error("connection pool: {0}")]
    Pool(String),
    /// The query failed.
    #[error(transparent)]
    Diesel(#[from] diesel::result::Error),
}

impl Store {
    /// A pool of `url`'s database of up to `size` connections.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), bemi_examples::store::diesel_async::Error> {
    /// let store = bemi_examples::store::diesel_async::Store::connect("postgres://localhost/app", 8).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, size: u32) -> Result<Self, Error> {
        let manager = AsyncDieselConnectionManager::<BemiAsyncPgConnection>::new(url);
        let pool = Pool::builder()
            .max_size(size)
            .build(manager)
            .await
            .map_err(|error| Error::Pool(error.to_string()))?;
        Ok(Self { pool })
    }

    async fn conn(
        &self,
    ) -> Result<bb8::PooledConnection<'_, AsyncDieselConnectionManager<BemiAsyncPgConnection>>, Error>
    {
        self.pool
            .get()
            .await
            .map_err(|error| Error::Pool(error.to_string()))
    }
}

impl TodoStore for Store {
    type Error = Error;

    async fn create(&self, task: &str) -> Result<Todo, Error> {
        let mut conn = self.conn().await?;
        let row = diesel::insert_into(todo::table)
            .values(todo::task.eq(task))
            .returning(TodoRow::as_returning())
            .get_result(&mut conn)
            .await?;
        Ok(row.into())
    }

    async fn complete(&self, id: i64) -> Result<Option<Todo>, Error> {
        let mut conn = self.conn().await?;
        let row = diesel::update(todo::table.find(id))
            .set(todo::is_completed.eq(true))
            .returning(TodoRow::as_returning())
            .get_result(&mut conn)
            .await
            .optional()?;
        Ok(row.map(Todo::from))
    }

    async fn delete(&self, id: i64) -> Result<bool, Error> {
        let mut conn = self.conn().await?;
        Ok(diesel::delete(todo::table.find(id))
            .execute(&mut conn)
            .await?
            > 0)
    }

    async fn list(&self) -> Result<Vec<Todo>, Error> {
        let mut conn = self.conn().await?;
        let rows = todo::table
            .order(todo::id.asc())
            .select(TodoRow::as_select())
            .load(&mut conn)
            .await?;
        Ok(rows.into_iter().map(Todo::from).collect())
    }
}
