//! The adapter, written once and compiled once per SeaORM line (`v2`, `v1`): `sea_orm` is
//! the line's SeaORM, `compat` the trait implementations whose shape differs between the lines
//! (method names, and whether `TransactionTrait` can return our transaction).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bemi_core::carrier::{self, EMIT_SQL, InEffect};
use bemi_core::sql;
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    ExecResult, IsolationLevel, QueryResult, Statement, TransactionError, TransactionTrait, Value,
};

use super::compat;
use super::sea_orm;

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
}

impl From<DatabaseConnection> for BemiConnection {
    fn from(inner: DatabaseConnection) -> Self {
        Self::new(inner)
    }
}

/// A transaction of `connection` with `json` emitted in it, for one write outside a transaction.
async fn begin_emitting(
    connection: &DatabaseConnection,
    json: &str,
) -> Result<DatabaseTransaction, DbErr> {
    let transaction = connection.begin().await?;
    compat::execute(&transaction, emission(json)).await?;
    Ok(transaction)
}

/// Runs `$write` on the connection, wrapped with the emission of `$sql`'s context if it needs
/// one: `$write` is an expression of `$on`, the connection or the wrapping transaction (it
/// owns what it uses: `compat::run_to_end` may run it in a task of its own).
macro_rules! autocommit {
    ($self:ident, $sql:expr, |$on:ident| $write:expr) => {
        match carrier::message_json($sql) {
            None => {
                let $on = &$self.inner;
                $write.await
            }
            Some(json) => {
                let connection = $self.inner.clone();
                compat::run_to_end(async move {
                    let transaction = begin_emitting(&connection, &json).await?;
                    let result = {
                        let $on = &transaction;
                        $write.await?
                    };
                    transaction.commit().await?;
                    Ok(result)
                })
                .await
            }
        }
    };
}

/// What `ConnectionTrait` does (`compat` implements it with the line's method names).
impl BemiConnection {
    async fn execute_statement(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let sql = stmt.sql.clone();
        autocommit!(self, &sql, |on| compat::execute(on, stmt))
    }

    async fn execute_unprepared_sql(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let owned = sql.to_owned();
        autocommit!(self, sql, |on| on.execute_unprepared(&owned))
    }

    async fn query_one_statement(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let sql = stmt.sql.clone();
        autocommit!(self, &sql, |on| compat::query_one(on, stmt))
    }

    async fn query_all_statement(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let sql = stmt.sql.clone();
        autocommit!(self, &sql, |on| compat::query_all(on, stmt))
    }

    fn backend(&self) -> DbBackend {
        ConnectionTrait::get_database_backend(&self.inner)
    }

    fn returns(&self) -> bool {
        self.inner.support_returning()
    }

    fn is_mock(&self) -> bool {
        self.inner.is_mock_connection()
    }
}

compat::connection_trait!(BemiConnection);

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
                .commit_transaction()
                .await
                .map_err(TransactionError::Connection)?;
            Ok(value)
        }
        Err(error) => {
            transaction
                .rollback_transaction()
                .await
                .map_err(TransactionError::Connection)?;
            Err(TransactionError::Transaction(error))
        }
    }
}

/// What `TransactionTrait` does (`compat` gives it the line's shape).
impl BemiConnection {
    async fn begin_transaction(&self) -> Result<BemiTransaction, DbErr> {
        Ok(BemiTransaction::new(self.inner.begin().await?))
    }

    async fn begin_transaction_with_config(
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

    async fn run_transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(&'c BemiTransaction) -> Callback<'c, T, E> + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let transaction = self
            .begin_transaction()
            .await
            .map_err(TransactionError::Connection)?;
        run_in(transaction, callback).await
    }

    async fn run_transaction_with_config<F, T, E>(
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
            .begin_transaction_with_config(isolation_level, access_mode)
            .await
            .map_err(TransactionError::Connection)?;
        run_in(transaction, callback).await
    }
}

compat::transaction_trait!(BemiConnection);
compat::stream_trait!(BemiConnection, QueryStream);

/// A `DatabaseTransaction` whose writes carry the context in scope when each runs; from
/// [`BemiConnection`]'s `begin` (or [`BemiTransaction::new`]). Dropped without a commit, it
/// rolls back.
#[derive(Debug)]
pub struct BemiTransaction {
    inner: DatabaseTransaction,
    /// The context in effect in the transaction.
    in_effect: Arc<InEffect>,
    /// The enclosing transaction's, for a savepoint.
    parent: Option<Arc<InEffect>>,
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
            in_effect: Arc::new(InEffect::new()),
            parent: None,
        }
    }

    /// The wrapped transaction: writes through it carry no context of their own.
    pub fn inner(&self) -> &DatabaseTransaction {
        &self.inner
    }

    /// Emits what the write of `sql` needs before it, unless it is in effect already: its
    /// context, or `{}` when it has none but one may be in effect.
    ///
    /// The context in effect is unknown from the moment an emission is planned until it
    /// completed: if the future is dropped there, the emission may still have run (sqlx
    /// finishes a query it sent before the connection's next use), so the next write emits
    /// again.
    async fn before(&self, sql: &str) -> Result<(), DbErr> {
        let planned = if sql::is_write(sql) {
            self.in_effect.before_write(carrier::message_context(sql))
        } else {
            None
        };
        // After a ROLLBACK TO SAVEPOINT, or a statement with a comment of its own, the context
        // in effect is unknown.
        self.in_effect.after_statement(sql);
        let Some(planned) = planned else {
            return Ok(());
        };
        if let Some(parent) = &self.parent {
            parent.forget();
        }
        compat::execute(&self.inner, emission(planned.json())).await?;
        self.in_effect.emitted(&planned);
        Ok(())
    }

    fn nested(&self, inner: DatabaseTransaction) -> Self {
        Self {
            inner,
            in_effect: Arc::new(self.in_effect.savepoint()),
            parent: Some(Arc::clone(&self.in_effect)),
        }
    }
}

/// What `ConnectionTrait` does.
impl BemiTransaction {
    async fn execute_statement(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.before(&stmt.sql).await?;
        compat::execute(&self.inner, stmt).await
    }

    async fn execute_unprepared_sql(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.before(sql).await?;
        self.inner.execute_unprepared(sql).await
    }

    async fn query_one_statement(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.before(&stmt.sql).await?;
        compat::query_one(&self.inner, stmt).await
    }

    async fn query_all_statement(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.before(&stmt.sql).await?;
        compat::query_all(&self.inner, stmt).await
    }

    fn backend(&self) -> DbBackend {
        ConnectionTrait::get_database_backend(&self.inner)
    }

    fn returns(&self) -> bool {
        self.inner.support_returning()
    }

    fn is_mock(&self) -> bool {
        self.inner.is_mock_connection()
    }
}

compat::connection_trait!(BemiTransaction);

/// What `TransactionTrait` does: `begin` makes a savepoint, in which what this transaction has
/// in effect is in effect too.
impl BemiTransaction {
    async fn begin_transaction(&self) -> Result<BemiTransaction, DbErr> {
        Ok(self.nested(self.inner.begin().await?))
    }

    async fn begin_transaction_with_config(
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

    async fn run_transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(&'c BemiTransaction) -> Callback<'c, T, E> + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let nested = self
            .begin_transaction()
            .await
            .map_err(TransactionError::Connection)?;
        run_in(nested, callback).await
    }

    async fn run_transaction_with_config<F, T, E>(
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
            .begin_transaction_with_config(isolation_level, access_mode)
            .await
            .map_err(TransactionError::Connection)?;
        run_in(nested, callback).await
    }

    async fn commit_transaction(self) -> Result<(), DbErr> {
        self.inner.commit().await
    }

    async fn rollback_transaction(self) -> Result<(), DbErr> {
        self.inner.rollback().await
    }
}

compat::transaction_trait!(BemiTransaction);
compat::transaction_session!(BemiTransaction);
compat::stream_trait!(BemiTransaction, TransactionStream<'a>);
