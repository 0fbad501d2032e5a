//! The todo queries through sync Diesel on [`BemiPgConnection`], pooled by deadpool-diesel:
//! each query runs on a blocking thread (`interact`), and [`bemi_diesel::with_context`]
//! carries the request's context there.
//!
//! ```no_run
//! use bemi_examples::store::TodoStore as _;
//!
//! # async fn run() -> Result<(), bemi_examples::store::diesel::Error> {
//! let store = bemi_examples::store::diesel::Store::connect("postgres://localhost/app", 8)?;
//! let ctx = serde_json::json!({"user_id": 187234});
//! let todo = bemi_core::context::scope(ctx, store.create("Sleep")).await?;
//! # Ok(()) }
//! ```

use bemi_diesel::BemiPgConnection;
use diesel::prelude::*;

use crate::startup::{RouterFuture, connect_error};
use crate::store::TodoStore;
use crate::store::diesel_schema::{TodoRow, todo};
use crate::todo::Todo;

/// The axum app on sync Diesel for the database of `url` (`todo-diesel`).
///
/// ```no_run
/// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
/// let app = bemi_examples::store::diesel::router("postgres://localhost/app".into()).await?;
/// # Ok(()) }
/// ```
pub fn router(url: String) -> RouterFuture {
    Box::pin(async move {
        let store = Store::connect(&url, 16).map_err(|error| connect_error(&url, error))?;
        Ok(crate::axum_app::router_for(store))
    })
}

/// A deadpool-diesel pool of [`BemiPgConnection`]s as a [`TodoStore`].
#[derive(Clone)]
pub struct Store {
    pool: deadpool_diesel::Pool<deadpool_diesel::Manager<BemiPgConnection>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// What a query can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection from the pool, or its blocking thread failed.
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
    /// let store = bemi_examples::store::diesel::Store::connect("postgres://localhost/app", 8)?;
    /// # Ok::<(), bemi_examples::store::diesel::Error>(())
    /// ```
    pub fn connect(url: &str, size: usize) -> Result<Self, Error> {
        let manager = deadpool_diesel::Manager::new(url, deadpool_diesel::Runtime::Tokio1);
        let pool = deadpool_diesel::Pool::builder(manager)
            .max_size(size)
            .build()
            .map_err(|error| Error::Pool(error.to_string()))?;
        Ok(Self { pool })
    }

    /// Runs `query` on a pooled connection, on a blocking thread, in the current context.
    async fn run<R: Send + 'static>(
        &self,
        query: impl FnOnce(&mut BemiPgConnection) -> QueryResult<R> + Send + 'static,
    ) -> Result<R, Error> {
        let conn = self
            .pool
            .get()
            .await
            .map_err(|error| Error::Pool(error.to_string()))?;
        let result = conn
            .interact(bemi_diesel::with_context(query))
            .await
            .map_err(|error| Error::Pool(error.to_string()))?;
        Ok(result?)
    }
}

impl TodoStore for Store {
    type Error = Error;

    async fn create(&self, task: &str) -> Result<Todo, Error> {
        let task = task.to_owned();
        let row = self
            .run(move |conn| {
                diesel::insert_into(todo::table)
                    .values(todo::task.eq(task))
                    .returning(TodoRow::as_returning())
                    .get_result(conn)
            })
            .await?;
        Ok(row.into())
    }

    async fn complete(&self, id: i64) -> Result<Option<Todo>, Error> {
        let row = self
            .run(move |conn| {
                diesel::update(todo::table.find(id))
                    .set(todo::is_completed.eq(true))
                    .returning(TodoRow::as_returning())
                    .get_result(conn)
                    .optional()
            })
            .await?;
        Ok(row.map(Todo::from))
    }

    async fn delete(&self, id: i64) -> Result<bool, Error> {
        let deleted = self
            .run(move |conn| diesel::delete(todo::table.find(id)).execute(conn))
            .await?;
        Ok(deleted > 0)
    }

    async fn list(&self) -> Result<Vec<Todo>, Error> {
        let rows = self
            .run(|conn| {
                todo::table
                    .order(todo::id.asc())
                    .select(TodoRow::as_select())
                    .load(conn)
            })
            .await?;
        Ok(rows.into_iter().map(Todo::from).collect())
    }
}
