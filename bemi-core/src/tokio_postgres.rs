//! The tokio-postgres 0.7 adapter (feature `tokio-postgres`): a client and a transaction that
//! annotate writes with the current context.
//!
//! [`BemiClient`] and [`BemiTransaction`] have the usual methods (`execute`, `query`,
//! `query_one`, `query_opt`, `query_raw`, `batch_execute`, `simple_query`, `transaction`) with the
//! signatures of tokio-postgres, and annotate SQL given as text (`&str` or `String`).
//!
//! ```no_run
//! use bemi_core::{context, tokio_postgres::BemiClient};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), tokio_postgres::Error> {
//! let (client, connection) =
//!     tokio_postgres::connect("postgres://localhost/app", tokio_postgres::NoTls).await?;
//! tokio::spawn(connection);
//! let mut client = BemiClient::new(client);
//!
//! let ctx = json!({"user_id": 187234});
//! context::scope(ctx, async {
//!     client.execute("INSERT INTO todo (task) VALUES ($1)", &[&"Sleep"]).await?;
//!     let tx = client.transaction().await?;
//!     tx.execute("UPDATE todo SET is_completed = true", &[]).await?;
//!     tx.commit().await
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # Pre-prepared statements
//!
//! A [`Statement`] from `prepare` has its text fixed on the server when it was prepared, so a
//! write executed through it **carries no context**: it is passed through unchanged and, unless
//! an earlier statement of the same transaction set a context, its rows are stored without one.
//! Give writes as text to have them annotated; tokio-postgres prepares text queries on the fly
//! (an unnamed statement, closed after use), so nothing accumulates on the server. Reads may use
//! prepared statements freely.

use std::borrow::Cow;
use std::future::Future;

use tokio_postgres::types::{BorrowToSql, ToSql};
use tokio_postgres::{Client, Error, Row, RowStream, SimpleQueryMessage, Statement, Transaction};

use crate::sql;

mod private {
    pub trait Sealed {}
}

/// A query the adapter accepts: SQL text (annotated when it writes) or a prepared [`Statement`]
/// (passed through, see the module docs).
///
/// ```
/// fn takes<T: ?Sized + bemi_core::tokio_postgres::BemiQuery>(_: &T) {}
/// takes("DELETE FROM todo");
/// takes(&String::from("DELETE FROM todo"));
/// ```
pub trait BemiQuery: private::Sealed + Sync {
    #[doc(hidden)]
    fn resolve(&self) -> Resolved<'_>;
}

/// A query after annotation.
#[doc(hidden)]
#[derive(Debug)]
pub enum Resolved<'a> {
    Text(Cow<'a, str>),
    Prepared(&'a Statement),
}

impl<'a> Resolved<'a> {
    /// A text left alone for lack of a context gets the context of the code that runs it.
    fn or_resolve_in_scope<T: ?Sized + BemiQuery>(self, query: &'a T) -> Resolved<'a> {
        match self {
            Resolved::Text(Cow::Borrowed(_)) => query.resolve(),
            resolved => resolved,
        }
    }
}

fn resolve_text(sql: &str) -> Resolved<'_> {
    Resolved::Text(match sql::annotate_current(sql) {
        Some(annotated) => Cow::Owned(annotated),
        None => Cow::Borrowed(sql),
    })
}

impl private::Sealed for str {}
impl BemiQuery for str {
    fn resolve(&self) -> Resolved<'_> {
        resolve_text(self)
    }
}

impl private::Sealed for String {}
impl BemiQuery for String {
    fn resolve(&self) -> Resolved<'_> {
        resolve_text(self)
    }
}

impl private::Sealed for Statement {}
impl BemiQuery for Statement {
    fn resolve(&self) -> Resolved<'_> {
        Resolved::Prepared(self)
    }
}

/// Generates the query methods shared by [`BemiClient`] and [`BemiTransaction`]. Each method
/// annotates with the context of the code that calls it, so a future made in a request keeps
/// that context wherever it is awaited; without a context there, with the context of the code
/// that awaits it.
macro_rules! query_methods {
    () => {
        /// Like tokio-postgres' `execute`: runs a statement and returns the number of rows it
        /// affected. Text writes are annotated with the current context.
        pub fn execute<'q, T>(
            &'q self,
            query: &'q T,
            params: &'q [&'q (dyn ToSql + Sync)],
        ) -> impl Future<Output = Result<u64, Error>> + Send + 'q
        where
            T: ?Sized + BemiQuery,
        {
            let resolved = query.resolve();
            async move {
                match &resolved.or_resolve_in_scope(query) {
                    Resolved::Text(sql) => self.inner.execute(sql.as_ref(), params).await,
                    Resolved::Prepared(statement) => self.inner.execute(*statement, params).await,
                }
            }
        }

        /// Like tokio-postgres' `query`: runs a statement and returns its rows.
        pub fn query<'q, T>(
            &'q self,
            query: &'q T,
            params: &'q [&'q (dyn ToSql + Sync)],
        ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'q
        where
            T: ?Sized + BemiQuery,
        {
            let resolved = query.resolve();
            async move {
                match &resolved.or_resolve_in_scope(query) {
                    Resolved::Text(sql) => self.inner.query(sql.as_ref(), params).await,
                    Resolved::Prepared(statement) => self.inner.query(*statement, params).await,
                }
            }
        }

        /// Like tokio-postgres' `query_one`: exactly one row, or an error.
        pub fn query_one<'q, T>(
            &'q self,
            query: &'q T,
            params: &'q [&'q (dyn ToSql + Sync)],
        ) -> impl Future<Output = Result<Row, Error>> + Send + 'q
        where
            T: ?Sized + BemiQuery,
        {
            let resolved = query.resolve();
            async move {
                match &resolved.or_resolve_in_scope(query) {
                    Resolved::Text(sql) => self.inner.query_one(sql.as_ref(), params).await,
                    Resolved::Prepared(statement) => self.inner.query_one(*statement, params).await,
                }
            }
        }

        /// Like tokio-postgres' `query_opt`: at most one row.
        pub fn query_opt<'q, T>(
            &'q self,
            query: &'q T,
            params: &'q [&'q (dyn ToSql + Sync)],
        ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'q
        where
            T: ?Sized + BemiQuery,
        {
            let resolved = query.resolve();
            async move {
                match &resolved.or_resolve_in_scope(query) {
                    Resolved::Text(sql) => self.inner.query_opt(sql.as_ref(), params).await,
                    Resolved::Prepared(statement) => self.inner.query_opt(*statement, params).await,
                }
            }
        }

        /// Like tokio-postgres' `query_raw`: a stream of rows, parameters from an iterator.
        pub fn query_raw<'q, T, P, I>(
            &'q self,
            query: &'q T,
            params: I,
        ) -> impl Future<Output = Result<RowStream, Error>> + Send + 'q
        where
            T: ?Sized + BemiQuery,
            P: BorrowToSql,
            I: IntoIterator<Item = P> + Send + 'q,
            I::IntoIter: ExactSizeIterator,
        {
            let resolved = query.resolve();
            async move {
                match &resolved.or_resolve_in_scope(query) {
                    Resolved::Text(sql) => self.inner.query_raw(sql.as_ref(), params).await,
                    Resolved::Prepared(statement) => self.inner.query_raw(*statement, params).await,
                }
            }
        }

        /// Like tokio-postgres' `batch_execute`: several statements in one simple-protocol
        /// query. If any of them writes, the whole batch carries the context.
        pub fn batch_execute<'q>(
            &'q self,
            query: &'q str,
        ) -> impl Future<Output = Result<(), Error>> + Send + 'q {
            let sql = sql::annotate_current(query);
            async move {
                let sql = sql.or_else(|| sql::annotate_current(query));
                self.inner
                    .batch_execute(sql.as_deref().unwrap_or(query))
                    .await
            }
        }

        /// Like tokio-postgres' `simple_query`, annotated like [`Self::batch_execute`].
        pub fn simple_query<'q>(
            &'q self,
            query: &'q str,
        ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>, Error>> + Send + 'q {
            let sql = sql::annotate_current(query);
            async move {
                let sql = sql.or_else(|| sql::annotate_current(query));
                self.inner
                    .simple_query(sql.as_deref().unwrap_or(query))
                    .await
            }
        }

        /// Prepares a statement, **without** annotation (see the module docs).
        pub async fn prepare(&self, query: &str) -> Result<Statement, Error> {
            self.inner.prepare(query).await
        }
    };
}

/// A tokio-postgres [`Client`] that annotates writes with the current context.
///
/// ```no_run
/// # async fn run(client: tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
/// let client = bemi_core::tokio_postgres::BemiClient::new(client);
/// client.execute("DELETE FROM todo WHERE id = $1", &[&1_i64]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BemiClient {
    inner: Client,
}

impl BemiClient {
    /// Wraps a client.
    ///
    /// ```no_run
    /// # fn run(client: tokio_postgres::Client) {
    /// let client = bemi_core::tokio_postgres::BemiClient::new(client);
    /// # }
    /// ```
    pub fn new(client: Client) -> Self {
        Self { inner: client }
    }

    /// The wrapped client: queries through it are **not** annotated.
    ///
    /// ```no_run
    /// # fn run(client: bemi_core::tokio_postgres::BemiClient) {
    /// let raw: &tokio_postgres::Client = client.inner();
    /// # }
    /// ```
    pub fn inner(&self) -> &Client {
        &self.inner
    }

    /// Unwraps the client.
    ///
    /// ```no_run
    /// # fn run(client: bemi_core::tokio_postgres::BemiClient) {
    /// let raw: tokio_postgres::Client = client.into_inner();
    /// # }
    /// ```
    pub fn into_inner(self) -> Client {
        self.inner
    }

    /// Begins a transaction whose writes are annotated.
    ///
    /// ```no_run
    /// # async fn run(mut client: bemi_core::tokio_postgres::BemiClient) -> Result<(), tokio_postgres::Error> {
    /// let tx = client.transaction().await?;
    /// tx.execute("DELETE FROM todo", &[]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction(&mut self) -> Result<BemiTransaction<'_>, Error> {
        self.inner.transaction().await.map(BemiTransaction::new)
    }

    query_methods!();
}

impl From<Client> for BemiClient {
    fn from(client: Client) -> Self {
        Self::new(client)
    }
}

/// A tokio-postgres [`Transaction`] that annotates writes; from [`BemiClient::transaction`].
/// Dropped without [`commit`](Self::commit), it rolls back.
///
/// ```no_run
/// # async fn run(mut client: tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
/// let tx = bemi_core::tokio_postgres::BemiTransaction::new(client.transaction().await?);
/// tx.execute("UPDATE todo SET is_completed = true", &[]).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub struct BemiTransaction<'a> {
    inner: Transaction<'a>,
}

impl std::fmt::Debug for BemiTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BemiTransaction").finish_non_exhaustive()
    }
}

impl<'a> BemiTransaction<'a> {
    /// Wraps a transaction.
    ///
    /// ```no_run
    /// # async fn run(mut client: tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    /// let tx = bemi_core::tokio_postgres::BemiTransaction::new(client.transaction().await?);
    /// # Ok(()) }
    /// ```
    pub fn new(transaction: Transaction<'a>) -> Self {
        Self { inner: transaction }
    }

    /// The wrapped transaction: queries through it are **not** annotated.
    ///
    /// ```no_run
    /// # async fn run(mut client: bemi_core::tokio_postgres::BemiClient) -> Result<(), tokio_postgres::Error> {
    /// let tx = client.transaction().await?;
    /// let raw: &tokio_postgres::Transaction<'_> = tx.inner();
    /// # Ok(()) }
    /// ```
    pub fn inner(&self) -> &Transaction<'a> {
        &self.inner
    }

    /// Commits the transaction.
    ///
    /// ```no_run
    /// # async fn run(mut client: bemi_core::tokio_postgres::BemiClient) -> Result<(), tokio_postgres::Error> {
    /// client.transaction().await?.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn commit(self) -> Result<(), Error> {
        self.inner.commit().await
    }

    /// Rolls the transaction back.
    ///
    /// ```no_run
    /// # async fn run(mut client: bemi_core::tokio_postgres::BemiClient) -> Result<(), tokio_postgres::Error> {
    /// client.transaction().await?.rollback().await?;
    /// # Ok(()) }
    /// ```
    pub async fn rollback(self) -> Result<(), Error> {
        self.inner.rollback().await
    }

    /// Starts a nested transaction (a savepoint) whose writes are annotated.
    ///
    /// ```no_run
    /// # async fn run(mut client: bemi_core::tokio_postgres::BemiClient) -> Result<(), tokio_postgres::Error> {
    /// let mut tx = client.transaction().await?;
    /// let nested = tx.transaction().await?;
    /// nested.rollback().await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction(&mut self) -> Result<BemiTransaction<'_>, Error> {
        self.inner.transaction().await.map(BemiTransaction::new)
    }

    query_methods!();
}
