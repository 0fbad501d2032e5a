//! The sqlx 0.9 adapter (feature `sqlx`): executors that annotate writes with the current context.
//!
//! [`BemiPool`] wraps a [`PgPool`]; `&BemiPool`, `&mut` [`BemiTransaction`] and `&mut`
//! [`BemiConnection`] implement [`sqlx::Executor`], so queries keep their shape:
//!
//! ```no_run
//! use bemi_core::{context, sqlx::BemiPool};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), sqlx::Error> {
//! let pool = BemiPool::connect("postgres://localhost/app").await?;
//! let ctx = json!({"user_id": 187234, "endpoint": "/todo"});
//! context::scope(ctx, async {
//!     sqlx::query("INSERT INTO todo (task) VALUES ($1)")
//!         .bind("Sleep")
//!         .execute(&pool) // carries /*Bemi {"user_id":187234,...} Bemi*/
//!         .await?;
//!
//!     let mut tx = pool.begin().await?;
//!     sqlx::query("UPDATE todo SET is_completed = true").execute(&mut tx).await?;
//!     tx.commit().await
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # Which context
//!
//! A query takes the context in scope where it is handed to the executor, or, if there is none
//! there, the context in scope where it first runs. So both a query made in a request and moved
//! elsewhere, and `context::scope(ctx, pool.execute("…"))`, carry the context.
//!
//! # Statement caching
//!
//! Reads, and writes made without a context, pass through untouched and use sqlx's
//! prepared-statement cache as usual. An annotated write has a different text for every context,
//! so it runs as a non-persistent (unnamed) prepared statement: it neither fills nor evicts the
//! cache. Queries without arguments keep using the simple query protocol.
//!
//! To annotate any other executor (e.g. a `&mut PgConnection` you already hold), wrap it in
//! [`Annotated`].

use std::fmt;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::{
    AssertSqlSafe, Describe, Either, Error, Execute, Executor, PgPool, Postgres, SqlSafeStr,
    SqlStr, Transaction,
};
use sqlx_postgres::{PgStatement, PgTypeInfo};

use futures_util::StreamExt as _;

use crate::integration::SharedContext;
use crate::sql;

/// Wraps any PostgreSQL executor so that its writes are annotated with the current context.
///
/// ```no_run
/// use bemi_core::sqlx::Annotated;
///
/// # async fn run(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
/// sqlx::query("DELETE FROM todo WHERE id = $1")
///     .bind(1_i64)
///     .execute(Annotated(&mut *conn))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Annotated<E>(pub E);

/// A query whose SQL is annotated with the context of the code that hands it to the executor
/// or, if that code has none, of the code that first polls it.
struct AnnotatedQuery {
    sql: SqlStr,
    annotated: bool,
    statement: Option<PgStatement>,
    arguments: Option<Result<Option<PgArguments>, BoxDynError>>,
    persistent: bool,
}

impl AnnotatedQuery {
    /// Takes the query apart and annotates it if a context is in scope **now**, at the call
    /// site, so that a query made in a request keeps that request's context wherever it runs.
    fn new<'q, E: Execute<'q, Postgres>>(mut query: E) -> Self {
        let statement = query.statement().cloned();
        let arguments = query.take_arguments();
        let persistent = query.persistent();
        let mut this = Self {
            sql: query.sql(),
            annotated: false,
            statement,
            arguments: Some(arguments),
            persistent,
        };
        this.annotate();
        this
    }

    /// Annotates with the current context, if there is one and the query is not annotated yet.
    fn annotate(&mut self) {
        if self.annotated {
            return;
        }
        if let Some(annotated) = sql::annotate_current(self.sql.as_str()) {
            self.sql = AssertSqlSafe(annotated).into_sql_str();
            self.annotated = true;
            // A text unique to its context must not take a slot in the statement cache.
            self.persistent = false;
        }
    }

    /// Whether the query still needs the context of the code that will poll it.
    fn needs_context(&self) -> bool {
        !self.annotated && SharedContext::current().is_none()
    }
}

impl<'q> Execute<'q, Postgres> for AnnotatedQuery {
    fn sql(self) -> SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.statement.as_ref()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.arguments.take().unwrap_or(Ok(None))
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

impl<'c, X> Executor<'c> for Annotated<X>
where
    X: Executor<'c, Database = Postgres> + 'c,
{
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let mut query = AnnotatedQuery::new(query);
        if !query.needs_context() {
            return self.0.fetch_many(query);
        }
        let inner = self.0;
        Box::pin(
            futures_util::stream::once(async move {
                query.annotate();
                inner.fetch_many(query)
            })
            .flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let mut query = AnnotatedQuery::new(query);
        if !query.needs_context() {
            return self.0.fetch_optional(query);
        }
        let inner = self.0;
        Box::pin(async move {
            query.annotate();
            inner.fetch_optional(query).await
        })
    }

    /// Prepared statements are not annotated: a statement is prepared once and reused, so it
    /// cannot carry one request's context. Executing it with arguments inside a context does
    /// annotate that execution (as a non-persistent statement).
    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, Error>>
    where
        'c: 'e,
    {
        self.0.prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Postgres>, Error>>
    where
        'c: 'e,
    {
        self.0.describe(sql)
    }
}

/// Implements `Executor` for a reference to a wrapper by delegating to [`Annotated`] of the
/// inner executor.
macro_rules! annotated_executor {
    ($lt:lifetime, $self_ty:ty, |$this:ident| $inner:expr) => {
        impl<$lt> Executor<$lt> for $self_ty {
            type Database = Postgres;

            fn fetch_many<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
            where
                $lt: 'e,
                E: 'q + Execute<'q, Postgres>,
            {
                let $this = self;
                Annotated($inner).fetch_many(query)
            }

            fn fetch_optional<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
            where
                $lt: 'e,
                E: 'q + Execute<'q, Postgres>,
            {
                let $this = self;
                Annotated($inner).fetch_optional(query)
            }

            fn prepare_with<'e>(
                self,
                sql: SqlStr,
                parameters: &'e [PgTypeInfo],
            ) -> BoxFuture<'e, Result<PgStatement, Error>>
            where
                $lt: 'e,
            {
                let $this = self;
                Annotated($inner).prepare_with(sql, parameters)
            }

            fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Postgres>, Error>>
            where
                $lt: 'e,
            {
                let $this = self;
                Annotated($inner).describe(sql)
            }
        }
    };
}

/// A [`PgPool`] whose executor annotates writes with the current context. Cheap to clone.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// let pool = bemi_core::sqlx::BemiPool::new(pool);
/// sqlx::query("DELETE FROM todo WHERE id = $1").bind(3_i64).execute(&pool).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BemiPool {
    pool: PgPool,
}

impl fmt::Debug for BemiPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BemiPool")
            .field("size", &self.pool.size())
            .finish()
    }
}

impl BemiPool {
    /// Wraps an existing pool.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
    /// let pool = bemi_core::sqlx::BemiPool::new(pool);
    /// # Ok(()) }
    /// ```
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Connects a new pool with sqlx's default options.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let pool = bemi_core::sqlx::BemiPool::connect("postgres://localhost/app").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, Error> {
        PgPool::connect(url).await.map(Self::new)
    }

    /// Connects a new pool with the given pool and connection options.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let options: sqlx::postgres::PgConnectOptions = "postgres://localhost/app".parse()?;
    /// let pool = bemi_core::sqlx::BemiPool::connect_with(
    ///     sqlx::postgres::PgPoolOptions::new().max_connections(20),
    ///     options,
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(
        pool_options: PgPoolOptions,
        options: PgConnectOptions,
    ) -> Result<Self, Error> {
        pool_options.connect_with(options).await.map(Self::new)
    }

    /// The wrapped pool: queries through it are **not** annotated.
    ///
    /// ```no_run
    /// # fn run(pool: bemi_core::sqlx::BemiPool) {
    /// let raw: &sqlx::PgPool = pool.inner();
    /// # }
    /// ```
    pub fn inner(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a transaction whose executor annotates writes.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_core::sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("DELETE FROM todo").execute(&mut tx).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin(&self) -> Result<BemiTransaction<'static>, Error> {
        self.pool.begin().await.map(BemiTransaction::new)
    }

    /// Acquires a connection whose executor annotates writes.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_core::sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// let mut conn = pool.acquire().await?;
    /// sqlx::query("DELETE FROM todo").execute(&mut conn).await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self) -> Result<BemiConnection, Error> {
        self.pool
            .acquire()
            .await
            .map(|conn| BemiConnection { conn })
    }

    /// Closes the pool (see [`sqlx::Pool::close`]).
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_core::sqlx::BemiPool) {
    /// pool.close().await;
    /// # }
    /// ```
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl From<PgPool> for BemiPool {
    fn from(pool: PgPool) -> Self {
        Self::new(pool)
    }
}

annotated_executor!('p, &'p BemiPool, |this| &this.pool);

/// A transaction whose executor annotates writes; from [`BemiPool::begin`] or
/// [`BemiTransaction::new`]. Dropped without [`commit`](Self::commit), it rolls back.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// let mut tx = bemi_core::sqlx::BemiTransaction::new(pool.begin().await?);
/// sqlx::query("UPDATE todo SET is_completed = true WHERE id = $1").bind(1_i64).execute(&mut tx).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BemiTransaction<'c> {
    tx: Transaction<'c, Postgres>,
}

impl<'c> BemiTransaction<'c> {
    /// Wraps a transaction begun elsewhere.
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let tx = bemi_core::sqlx::BemiTransaction::new(pool.begin().await?);
    /// # Ok(()) }
    /// ```
    pub fn new(tx: Transaction<'c, Postgres>) -> Self {
        Self { tx }
    }

    /// Commits the transaction.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_core::sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// pool.begin().await?.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn commit(self) -> Result<(), Error> {
        self.tx.commit().await
    }

    /// Rolls the transaction back.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_core::sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// pool.begin().await?.rollback().await?;
    /// # Ok(()) }
    /// ```
    pub async fn rollback(self) -> Result<(), Error> {
        self.tx.rollback().await
    }

    /// The wrapped transaction: queries through it are **not** annotated.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_core::sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("SELECT 1").execute(&mut **tx.inner_mut()).await?;
    /// # Ok(()) }
    /// ```
    pub fn inner_mut(&mut self) -> &mut Transaction<'c, Postgres> {
        &mut self.tx
    }

    /// Unwraps the transaction.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_core::sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// let tx: sqlx::Transaction<'_, sqlx::Postgres> = pool.begin().await?.into_inner();
    /// # Ok(()) }
    /// ```
    pub fn into_inner(self) -> Transaction<'c, Postgres> {
        self.tx
    }
}

annotated_executor!('t, &'t mut BemiTransaction<'_>, |this| &mut *this.tx);

/// A pooled connection whose executor annotates writes; from [`BemiPool::acquire`].
///
/// ```no_run
/// # async fn run(pool: bemi_core::sqlx::BemiPool) -> Result<(), sqlx::Error> {
/// let mut conn = pool.acquire().await?;
/// sqlx::query("INSERT INTO todo (task) VALUES ('Eat')").execute(&mut conn).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BemiConnection {
    conn: PoolConnection<Postgres>,
}

impl BemiConnection {
    /// The wrapped connection: queries through it are **not** annotated.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_core::sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// let mut conn = pool.acquire().await?;
    /// sqlx::query("SELECT 1").execute(&mut **conn.inner_mut()).await?;
    /// # Ok(()) }
    /// ```
    pub fn inner_mut(&mut self) -> &mut PoolConnection<Postgres> {
        &mut self.conn
    }

    /// Starts a transaction on this connection.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_core::sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// let mut conn = pool.acquire().await?;
    /// let tx = conn.begin().await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin(&mut self) -> Result<BemiTransaction<'_>, Error> {
        use sqlx::Connection;
        self.conn.begin().await.map(BemiTransaction::new)
    }
}

annotated_executor!('c, &'c mut BemiConnection, |this| &mut *this.conn);
