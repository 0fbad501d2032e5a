//! What the adapter needs of sqlx 0.9 where the lines differ: SQL as an owned [`SqlStr`], and
//! statements without a lifetime.

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow};
use sqlx::{
    AssertSqlSafe, Either, Error, Execute, Executor, PgConnection, Postgres, SqlSafeStr, SqlStr,
    Transaction,
};
pub(super) use sqlx_postgres::{PgStatement as Statement, PgTypeInfo};

use super::adapter::TakenQuery;
use super::{sqlx, sqlx_postgres};

/// A query's SQL as [`Execute`] hands it over.
pub(super) type QuerySql<'q> = SqlStr;

/// A prepared statement (no lifetime in 0.9).
pub(super) type PgStatement<'q> = Statement;

/// Takes a query's SQL (the query's last use).
pub(super) fn sql_of<'q, E: Execute<'q, Postgres>>(query: E) -> QuerySql<'q> {
    query.sql()
}

pub(super) fn as_str<'s>(sql: &'s QuerySql<'_>) -> &'s str {
    sql.as_str()
}

impl<'q> Execute<'q, Postgres> for TakenQuery<'q> {
    fn sql(self) -> SqlStr {
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

/// Runs `query` with `sql`, its annotated SQL, in its place.
pub(super) fn fetch_many_with_sql<'c, 'e, 'q: 'e, X>(
    inner: X,
    mut query: TakenQuery<'q>,
    sql: String,
) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
where
    X: Executor<'c, Database = Postgres> + 'c,
    'c: 'e,
{
    query.sql = AssertSqlSafe(sql).into_sql_str();
    inner.fetch_many(query)
}

/// [`fetch_many_with_sql`] for one row.
pub(super) fn fetch_optional_with_sql<'c, 'e, 'q: 'e, X>(
    inner: X,
    mut query: TakenQuery<'q>,
    sql: String,
) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
where
    X: Executor<'c, Database = Postgres> + 'c,
    'c: 'e,
{
    query.sql = AssertSqlSafe(sql).into_sql_str();
    inner.fetch_optional(query)
}

/// A pooled connection lent to a write outside a transaction. Nothing to do on sqlx 0.9.1: a
/// dropped `BEGIN` (or transaction) queues its `ROLLBACK`, which goes out before the pool
/// lends the connection again.
pub(super) struct CloseIfDropped<'a>(&'a mut PoolConnection<Postgres>);

impl<'a> CloseIfDropped<'a> {
    pub(super) fn new(conn: &'a mut PoolConnection<Postgres>) -> Self {
        Self(conn)
    }

    pub(super) fn conn(&mut self) -> &mut PgConnection {
        self.0
    }

    /// The write ran to its end.
    pub(super) fn defuse(self) {}
}

/// Begins a transaction with `begin`, a statement that opens it.
pub(super) async fn begin_with(
    conn: &mut PgConnection,
    begin: String,
) -> Result<Transaction<'_, Postgres>, Error> {
    use sqlx::Connection as _;
    conn.begin_with(AssertSqlSafe(begin)).await
}

/// Runs `sql` (several statements, no parameters) on `conn`.
pub(super) async fn execute_raw(conn: &mut PgConnection, sql: String) -> Result<(), Error> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(drop)
}

/// `Executor::prepare_with` and `Executor::describe` of an executor, passed to `$target`
/// (an expression of `$this`, the executor).
macro_rules! prepare_and_describe {
    ($lt:lifetime, $(#[$meta:meta])* |$this:ident| $target:expr) => {
        $(#[$meta])*
        fn prepare_with<'e>(
            self,
            sql: compat::QuerySql<'static>,
            parameters: &'e [compat::PgTypeInfo],
        ) -> BoxFuture<'e, Result<compat::Statement, Error>>
        where
            $lt: 'e,
        {
            let $this = self;
            $target.prepare_with(sql, parameters)
        }

        fn describe<'e>(
            self,
            sql: compat::QuerySql<'static>,
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
