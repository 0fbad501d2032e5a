#![doc = include_str!("../README.md")]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bemi_core::carrier::{self, EMIT_SQL, RESET_JSON};
use bemi_core::sql;
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    ExecResult, IsolationLevel, QueryResult, QueryStream, Statement, StreamTrait, TransactionError,
    TransactionOptions, TransactionSession, TransactionStream, TransactionTrait, Value,
};

/// The emission of `json` as the transactional `_bemi` message.
fn emission(json: &str) -> Statement {
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        EMIT_SQL,
        [Value::from(json.to_owned())],
    )
}

/// A `DatabaseConnection` whose writes carry the current context (see the crate docs).
///
/// ```no_run
/// # async fn run(db: sea_orm::DatabaseConnection) {
/// let db = bemi_seaorm::BemiConnection::new(db);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BemiConnection {
    inner: DatabaseConnection,
}

impl BemiConnection {
    /// Wraps a connection (a pool: clone the wrapper as you cloned it).
    pub fn new(inner: DatabaseConnection) -> Self {
        Self { inner }
    }

    /// The wrapped connection: writes through it carry no context.
    pub fn inner(&self) -> &DatabaseConnection {
        &self.inner
    }

    /// Unwraps the connection.
    pub fn into_inner(self) -> DatabaseConnection {
        self.inner
    }

    /// A transaction with `json` emitted in it, for one write outside a transaction.
    async fn begin_emitting(&self, json: &str) -> Result<DatabaseTransaction, DbErr> {
        let transaction = self.inner.begin().await?;
        transaction.execute_raw(emission(json)).await?;
        Ok(transaction)
    }
}

impl From<DatabaseConnection> for BemiConnection {
    fn from(inner: DatabaseConnection) -> Self {
        Self::new(inner)
    }
}

/// Runs `$write` on the connection, wrapped with the emission of `$sql`'s context if it needs
/// one: `$write` is an expression of `$on`, the connection or the wrapping transaction.
macro_rules! autocommit {
    ($self:ident, $sql:expr, |$on:ident| $write:expr) => {
        match carrier::message_json($sql) {
            None => {
                let $on = &$self.inner;
                $write.await
            }
            Some(json) => {
                let transaction = $self.begin_emitting(&json).await?;
                let result = {
                    let $on = &transaction;
                    $write.await?
                };
                transaction.commit().await?;
                Ok(result)
            }
        }
    };
}

#[async_trait::async_trait]
impl ConnectionTrait for BemiConnection {
    fn get_database_backend(&self) -> DbBackend {
        self.inner.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let sql = stmt.sql.clone();
        autocommit!(self, &sql, |on| on.execute_raw(stmt))
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        autocommit!(self, sql, |on| on.execute_unprepared(sql))
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let sql = stmt.sql.clone();
        autocommit!(self, &sql, |on| on.query_one_raw(stmt))
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let sql = stmt.sql.clone();
        autocommit!(self, &sql, |on| on.query_all_raw(stmt))
    }

    fn support_returning(&self) -> bool {
        self.inner.support_returning()
    }

    fn is_mock_connection(&self) -> bool {
        self.inner.is_mock_connection()
    }
}

/// A transaction's callback, as SeaORM's `transaction` takes it.
type Callback<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// Runs `callback` in `transaction`: commits on `Ok`, rolls back on `Err`.
async fn run_in<F, T, E>(
    transaction: BemiTransaction,
    callback: F,
) -> Result<T, TransactionError<E>>
where
    F: for<'c> FnOnce(&'c BemiTransaction) -> Callback<'c, T, E> + Send,
    T: Send,
    E: std::fmt::Display + std::fmt::Debug + Send,
{
    match callback(&transaction).await {
        Ok(value) => {
            transaction
                .commit()
                .await
                .map_err(TransactionError::Connection)?;
            Ok(value)
        }
        Err(error) => {
            transaction
                .rollback()
                .await
                .map_err(TransactionError::Connection)?;
            Err(TransactionError::Transaction(error))
        }
    }
}

#[async_trait::async_trait]
impl TransactionTrait for BemiConnection {
    type Transaction = BemiTransaction;

    async fn begin(&self) -> Result<BemiTransaction, DbErr> {
        Ok(BemiTransaction::new(self.inner.begin().await?))
    }

    async fn begin_with_config(
        &self,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<BemiTransaction, DbErr> {
        let inner = self
            .inner
            .begin_with_config(isolation_level, access_mode)
            .await?;
        Ok(BemiTransaction::new(inner))
    }

    async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<BemiTransaction, DbErr> {
        Ok(BemiTransaction::new(
            self.inner.begin_with_options(options).await?,
        ))
    }

    async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(&'c BemiTransaction) -> Callback<'c, T, E> + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let transaction = self.begin().await.map_err(TransactionError::Connection)?;
        run_in(transaction, callback).await
    }

    async fn transaction_with_config<F, T, E>(
        &self,
        callback: F,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(&'c BemiTransaction) -> Callback<'c, T, E> + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let transaction = self
            .begin_with_config(isolation_level, access_mode)
            .await
            .map_err(TransactionError::Connection)?;
        run_in(transaction, callback).await
    }
}

impl StreamTrait for BemiConnection {
    type Stream<'a> = QueryStream;

    fn get_database_backend(&self) -> DbBackend {
        self.inner.get_database_backend()
    }

    /// Streams pass through: they read.
    fn stream_raw<'a>(
        &'a self,
        stmt: Statement,
    ) -> Pin<Box<dyn Future<Output = Result<QueryStream, DbErr>> + 'a + Send>> {
        self.inner.stream_raw(stmt)
    }
}

/// A `DatabaseTransaction` whose writes carry the context in scope when each runs; from
/// [`BemiConnection`]'s `begin` (or [`BemiTransaction::new`]). Dropped without a commit, it
/// rolls back.
#[derive(Debug)]
pub struct BemiTransaction {
    inner: DatabaseTransaction,
    /// A context is in effect in the transaction: a write without one emits `{}` first.
    emitted: Arc<AtomicBool>,
    /// The enclosing transaction's flag, for a savepoint.
    parent: Option<Arc<AtomicBool>>,
}

impl BemiTransaction {
    /// Wraps a transaction.
    ///
    /// ```no_run
    /// use sea_orm::TransactionTrait;
    ///
    /// # async fn run(db: sea_orm::DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    /// let tx = bemi_seaorm::BemiTransaction::new(db.begin().await?);
    /// # Ok(()) }
    /// ```
    pub fn new(inner: DatabaseTransaction) -> Self {
        Self {
            inner,
            emitted: Arc::new(AtomicBool::new(false)),
            parent: None,
        }
    }

    /// The wrapped transaction: writes through it carry no context of their own.
    pub fn inner(&self) -> &DatabaseTransaction {
        &self.inner
    }

    /// Emits what the write of `sql` needs before it: its context, or `{}` when it has none
    /// but one may be in effect.
    ///
    /// A context is noted as in effect **before** its emission is awaited: if the future is
    /// dropped there, the emission may still have run (sqlx finishes a query it sent before
    /// the connection's next use), so the next write without a context resets it. Only a
    /// reset that completed clears the note.
    async fn before(&self, sql: &str) -> Result<(), DbErr> {
        if carrier::may_undo_emissions(sql) {
            // After a ROLLBACK TO SAVEPOINT the context in effect is unknown.
            self.emitted.store(true, Ordering::Release);
            return Ok(());
        }
        let json = match carrier::message_json(sql) {
            Some(json) => json,
            None if sql::is_write(sql) && self.emitted.load(Ordering::Acquire) => {
                RESET_JSON.to_owned()
            }
            None => return Ok(()),
        };
        let reset = json == RESET_JSON;
        if !reset {
            self.emitted.store(true, Ordering::Release);
            if let Some(parent) = &self.parent {
                parent.store(true, Ordering::Release);
            }
        }
        self.inner.execute_raw(emission(&json)).await?;
        if reset {
            self.emitted.store(false, Ordering::Release);
        }
        Ok(())
    }

    fn nested(&self, inner: DatabaseTransaction) -> Self {
        Self {
            inner,
            emitted: Arc::new(AtomicBool::new(self.emitted.load(Ordering::Acquire))),
            parent: Some(Arc::clone(&self.emitted)),
        }
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for BemiTransaction {
    fn get_database_backend(&self) -> DbBackend {
        ConnectionTrait::get_database_backend(&self.inner)
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.before(&stmt.sql).await?;
        self.inner.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.before(sql).await?;
        self.inner.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.before(&stmt.sql).await?;
        self.inner.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.before(&stmt.sql).await?;
        self.inner.query_all_raw(stmt).await
    }

    fn support_returning(&self) -> bool {
        self.inner.support_returning()
    }

    fn is_mock_connection(&self) -> bool {
        self.inner.is_mock_connection()
    }
}

#[async_trait::async_trait]
impl TransactionTrait for BemiTransaction {
    type Transaction = BemiTransaction;

    /// A savepoint: what this transaction has in effect is in effect there too.
    async fn begin(&self) -> Result<BemiTransaction, DbErr> {
        Ok(self.nested(self.inner.begin().await?))
    }

    async fn begin_with_config(
        &self,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<BemiTransaction, DbErr> {
        let inner = self
            .inner
            .begin_with_config(isolation_level, access_mode)
            .await?;
        Ok(self.nested(inner))
    }

    async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<BemiTransaction, DbErr> {
        Ok(self.nested(self.inner.begin_with_options(options).await?))
    }

    async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(&'c BemiTransaction) -> Callback<'c, T, E> + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let nested = self.begin().await.map_err(TransactionError::Connection)?;
        run_in(nested, callback).await
    }

    async fn transaction_with_config<F, T, E>(
        &self,
        callback: F,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(&'c BemiTransaction) -> Callback<'c, T, E> + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let nested = self
            .begin_with_config(isolation_level, access_mode)
            .await
            .map_err(TransactionError::Connection)?;
        run_in(nested, callback).await
    }
}

#[async_trait::async_trait]
impl TransactionSession for BemiTransaction {
    async fn commit(self) -> Result<(), DbErr> {
        self.inner.commit().await
    }

    async fn rollback(self) -> Result<(), DbErr> {
        self.inner.rollback().await
    }
}

impl StreamTrait for BemiTransaction {
    type Stream<'a> = TransactionStream<'a>;

    fn get_database_backend(&self) -> DbBackend {
        ConnectionTrait::get_database_backend(&self.inner)
    }

    /// Streams pass through: they read.
    fn stream_raw<'a>(
        &'a self,
        stmt: Statement,
    ) -> Pin<Box<dyn Future<Output = Result<TransactionStream<'a>, DbErr>> + 'a + Send>> {
        self.inner.stream_raw(stmt)
    }
}
