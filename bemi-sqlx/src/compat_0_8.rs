//! What the adapter needs of sqlx 0.8 where the lines differ: SQL borrowed for the query's
//! lifetime (`&'q str`), and statements with that lifetime.
//!
//! An annotated SQL text is owned by the future or stream that runs it, which lends it to the
//! inner executor: 0.8's `Execute::sql` returns `&'q str`, so the text must outlive the query.

use std::marker::PhantomData;

use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow};
use sqlx::{Either, Error, Execute, Executor, PgConnection, Postgres, Transaction};
pub(super) use sqlx_postgres::{PgStatement, PgTypeInfo};

use super::adapter::TakenQuery;
use super::{sqlx, sqlx_postgres};

/// A query's SQL as [`Execute`] hands it over.
pub(super) type QuerySql<'q> = &'q str;

/// Takes a query's SQL.
pub(super) fn sql_of<'q, E: Execute<'q, Postgres>>(query: E) -> QuerySql<'q> {
    query.sql()
}

pub(super) fn as_str<'s>(sql: &'s QuerySql<'_>) -> &'s str {
    sql
}

impl<'q> Execute<'q, Postgres> for TakenQuery<'q> {
    fn sql(&self) -> &'q str {
        self.sql
    }

    fn statement(&self) -> Option<&PgStatement<'q>> {
        self.statement.as_ref()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.take_args()
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

/// `query` with `sql` in place of its own SQL, borrowed from the caller.
fn lend<'s, 'q: 's>(query: TakenQuery<'q>, sql: &'s str) -> TakenQuery<'s> {
    TakenQuery {
        sql,
        statement: query.statement,
        arguments: query.arguments,
        persistent: query.persistent,
        lifetime: PhantomData,
    }
}

/// Runs `query` with `sql`, its annotated SQL, in its place: the stream owns `sql`.
pub(super) fn fetch_many_with_sql<'c, 'e, 'q: 'e, X>(
    inner: X,
    query: TakenQuery<'q>,
    sql: String,
) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
where
    X: Executor<'c, Database = Postgres> + 'c,
    'c: 'e,
{
    Box::pin(async_stream::stream! {
        let mut results = inner.fetch_many(lend(query, &sql));
        while let Some(result) = results.next().await {
            yield result;
        }
    })
}

/// [`fetch_many_with_sql`] for one row: the future owns `sql`.
pub(super) fn fetch_optional_with_sql<'c, 'e, 'q: 'e, X>(
    inner: X,
    query: TakenQuery<'q>,
    sql: String,
) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
where
    X: Executor<'c, Database = Postgres> + 'c,
    'c: 'e,
{
    Box::pin(async move { inner.fetch_optional(lend(query, &sql)).await })
}

/// A pooled connection lent to a write outside a transaction, closed instead of going back to
/// the pool if the write is dropped before its end ([`defuse`](Self::defuse)).
///
/// sqlx 0.8 counts a transaction only once its `BEGIN` has been answered: a future dropped
/// while the `BEGIN` is on its way leaves the server in a transaction that nothing rolls back,
/// and the pool would lend that connection to a next user whose writes then run in it and are
/// lost with it (sqlx 0.9.1 fixed this). Closing the connection ends that transaction.
pub(super) struct CloseIfDropped<'a> {
    conn: &'a mut PoolConnection<Postgres>,
    done: bool,
}

impl<'a> CloseIfDropped<'a> {
    pub(super) fn new(conn: &'a mut PoolConnection<Postgres>) -> Self {
        Self { conn, done: false }
    }

    pub(super) fn conn(&mut self) -> &mut PgConnection {
        self.conn
    }

    /// The write ran to its end: the connection may go back to the pool.
    pub(super) fn defuse(mut self) {
        self.done = true;
    }
}

impl Drop for CloseIfDropped<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.close_on_drop();
        }
    }
}

/// Begins a transaction with `begin`, a statement that opens it.
pub(super) async fn begin_with(
    conn: &mut PgConnection,
    begin: String,
) -> Result<Transaction<'_, Postgres>, Error> {
    use sqlx::Connection as _;
    conn.begin_with(begin).await
}

/// Runs `sql` (several statements, no parameters) on `conn`.
pub(super) async fn execute_raw(conn: &mut PgConnection, sql: String) -> Result<(), Error> {
    sqlx::raw_sql(&sql).execute(conn).await.map(drop)
}

/// `Executor::prepare_with` and `Executor::describe` of an executor, passed to `$target`
/// (an expression of `$this`, the executor).
macro_rules! prepare_and_describe {
    ($lt:lifetime, $(#[$meta:meta])* |$this:ident| $target:expr) => {
        $(#[$meta])*
        fn prepare_with<'e, 'q: 'e>(
            self,
            sql: compat::QuerySql<'q>,
            parameters: &'e [compat::PgTypeInfo],
        ) -> BoxFuture<'e, Result<compat::PgStatement<'q>, Error>>
        where
            $lt: 'e,
        {
            let $this = self;
            $target.prepare_with(sql, parameters)
        }

        fn describe<'e, 'q: 'e>(
            self,
            sql: compat::QuerySql<'q>,
        ) -> BoxFuture<'e, Result<Describe<Postgres>, Error>>
        where
            $lt: 'e,
        {
            let $this = self;
            $target.describe(sql)
        }
    };
}
pub(super) use prepare_and_describe;
