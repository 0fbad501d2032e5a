//! The todo queries through a deadpool-postgres pool, with statements the pool caches
//! (`prepare_cached`) and [`BorrowedClient`]: every write carries the context.
//!
//! ```no_run
//! use bemi_examples::store::TodoStore as _;
//!
//! # async fn run(pool: deadpool_postgres::Pool) -> Result<(), bemi_examples::store::deadpool::Error> {
//! let store = bemi_examples::store::deadpool::Store::new(pool);
//! let ctx = serde_json::json!({"user_id": 187234});
//! let todo = bemi_core::context::scope(ctx, store.create("Sleep")).await?;
//! # Ok(()) }
//! ```

use bemi_tokio_postgres::BorrowedClient;
use tokio_postgres::Row;

use crate::startup::{RouterFuture, connect_error};
use crate::store::TodoStore;
use crate::todo::{self, Todo};

/// The axum app on a deadpool-postgres pool of 16 connections for the database of `url`
/// (`todo-deadpool`).
///
/// ```no_run
/// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
/// let app = bemi_examples::store::deadpool::router("postgres://localhost/app".into()).await?;
/// # Ok(()) }
/// ```
pub fn router(url: String) -> RouterFuture {
    Box::pin(async move {
        let store = Store::connect(&url, 16).map_err(|error| connect_error(&url, error))?;
        Ok(crate::axum_app::router_for(store))
    })
}

/// A deadpool-postgres pool as a [`TodoStore`].
#[derive(Clone)]
pub struct Store {
    pool: deadpool_postgres::Pool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Queries through `pool`.
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        Self { pool }
    }

    /// A pool of `url`'s database of up to `size` connections.
    ///
    /// ```no_run
    /// let store = bemi_examples::store::deadpool::Store::connect("postgres://localhost/app", 8)?;
    /// # Ok::<(), bemi_examples::store::deadpool::Error>(())
    /// ```
    pub fn connect(url: &str, size: usize) -> Result<Self, Error> {
        let config: tokio_postgres::Config = url.parse()?;
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(size)
            .build()
            .map_err(|error| Error::Pool(error.to_string()))?;
        Ok(Self::new(pool))
    }

    /// A pooled connection.
    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool
            .get()
            .await
            .map_err(|error| Error::Pool(error.to_string()))
    }

    /// Runs `sql` (prepared once per pooled connection) with `params` through the adapter.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(BorrowedClient::new(&client)
            .query(&statement, params)
            .await?)
    }
}

/// What a query through the pool can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection from the pool.
    #[error("connection pool: {0}")]
    Pool(String),
    /// The query failed.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

fn todo_of(row: &Row) -> Todo {
    Todo {
        id: row.get(0),
        task: row.get(1),
        is_completed: row.get(2),
    }
}

impl TodoStore for Store {
    type Error = Error;

    async fn create(&self, task: &str) -> Result<Todo, Error> {
        let client = self.client().await?;
        let insert = client.prepare_cached(todo::INSERT).await?;
        let row = BorrowedClient::new(&client)
            .query_one(&insert, &[&task])
            .await?;
        Ok(todo_of(&row))
    }

    async fn complete(&self, id: i64) -> Result<Option<Todo>, Error> {
        Ok(self
            .query(todo::COMPLETE, &[&id])
            .await?
            .first()
            .map(todo_of))
    }

    async fn delete(&self, id: i64) -> Result<bool, Error> {
        let client = self.client().await?;
        let delete = client.prepare_cached(todo::DELETE).await?;
        Ok(BorrowedClient::new(&client)
            .execute(&delete, &[&id])
            .await?
            > 0)
    }

    async fn list(&self) -> Result<Vec<Todo>, Error> {
        Ok(self
            .query(todo::LIST, &[])
            .await?
            .iter()
            .map(todo_of)
            .collect())
    }
}
