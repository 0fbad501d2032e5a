//! The diesel-async connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bemi_core::carrier::{begin_and_emit_sql, emit_sql_literal};
use diesel::connection::{CacheSize, Instrumentation};
use diesel::pg::Pg;
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::{ConnectionResult, QueryResult};
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncConnectionCore, AsyncPgConnection,
    SimpleAsyncConnection, TransactionManager,
};
use futures_util::future::{BoxFuture, join};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};

use crate::plan::{Emitted, Plan, sql_of};

/// A row of the inner connection.
type PgRow = <AsyncPgConnection as AsyncConnectionCore>::Row<'static, 'static>;

/// A diesel-async `AsyncPgConnection` whose writes carry the current context (see the crate
/// docs). Pool it with diesel-async's `AsyncDieselConnectionManager<BemiAsyncPgConnection>`.
///
/// ```no_run
/// use bemi_diesel::BemiAsyncPgConnection;
/// use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = BemiAsyncPgConnection::establish("postgres://localhost/app").await?;
/// bemi_core::context::scope(serde_json::json!({"user_id": 187234}), async {
///     diesel::sql_query("UPDATE todo SET is_completed = true WHERE id = 1")
///         .execute(&mut conn)
///         .await
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub struct BemiAsyncPgConnection {
    inner: AsyncPgConnection,
    emitted: Emitted,
    /// Set while a wrapping transaction is open: a connection whose write future was dropped
    /// in the middle may hold an open transaction: its next statement rolls it back first, and
    /// a pool drops it.
    wrapping: Arc<AtomicBool>,
}

impl std::fmt::Debug for BemiAsyncPgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BemiAsyncPgConnection")
            .finish_non_exhaustive()
    }
}

impl BemiAsyncPgConnection {
    /// Wraps a connection.
    pub fn new(inner: AsyncPgConnection) -> Self {
        Self {
            inner,
            emitted: Emitted::default(),
            wrapping: Arc::default(),
        }
    }

    /// The wrapped connection: queries through it carry no context.
    pub fn inner_mut(&mut self) -> &mut AsyncPgConnection {
        &mut self.inner
    }

    /// Unwraps the connection.
    pub fn into_inner(self) -> AsyncPgConnection {
        self.inner
    }

    fn plan(&mut self, sql: Option<&str>) -> Plan {
        let in_transaction =
            AnsiTransactionManager::transaction_manager_status_mut(&mut self.inner)
                .transaction_depth()
                .is_ok_and(|depth| depth.is_some());
        self.emitted.plan(sql, in_transaction)
    }
}

/// Ends the wrapping transaction of a write whose future was dropped (`wrapping` still set)
/// before anything else runs on the connection: `ROLLBACK`, after that write's requests (a
/// connection runs its requests in order; after their `COMMIT`, the `ROLLBACK` only warns).
/// Without it, the next statement would run inside that transaction, after its context.
async fn recover(conn: &AsyncPgConnection, wrapping: &AtomicBool) -> QueryResult<()> {
    if wrapping.load(Ordering::Acquire) {
        let mut conn = conn;
        conn.batch_execute("ROLLBACK").await?;
        wrapping.store(false, Ordering::Release);
    }
    Ok(())
}

/// Runs `write` (a future made on `conn`, not yet polled) after what `plan` asks, pipelined
/// with it on the connection where possible.
///
/// Cancellation: the future may be dropped at any await. The context in effect is unknown
/// in `emitted` from the moment an emission is planned until it completed, so the write after
/// a dropped one emits again (its context, or `{}`). A wrapping
/// transaction left open is noted in `wrapping`: the next statement on the connection rolls it
/// back first ([`recover`]), and a pool drops the connection
/// ([`PoolableConnection::is_broken`]).
fn around<'c, R: Send + 'c>(
    conn: &'c AsyncPgConnection,
    emitted: Emitted,
    wrapping: Arc<AtomicBool>,
    plan: Plan,
    write: BoxFuture<'c, QueryResult<R>>,
) -> BoxFuture<'c, QueryResult<R>> {
    match plan {
        // (A wrapping transaction left open is noted before the next call can be made.)
        Plan::Alone if !wrapping.load(Ordering::Acquire) => write,
        Plan::Alone => async move {
            recover(conn, &wrapping).await?;
            write.await
        }
        .boxed(),
        Plan::Emit(emission) => async move {
            recover(conn, &wrapping).await?;
            let mut emitter = conn;
            let sql = emit_sql_literal(emission.json());
            let (sent, result) = join(emitter.batch_execute(&sql), write).await;
            sent?;
            emitted.emitted(&emission);
            result
        }
        .boxed(),
        Plan::Wrap(json) => async move {
            recover(conn, &wrapping).await?;
            wrapping.store(true, Ordering::Release);
            let (mut begin, mut commit) = (conn, conn);
            let opening = begin_and_emit_sql(&json);
            let (began, result) = join(begin.batch_execute(&opening), write).await;
            // COMMIT only once the write has run: a statement not prepared yet is sent after
            // its preparation's round trip, so a COMMIT sent along with it would come first.
            // After a failed write, COMMIT ends the transaction as a ROLLBACK.
            let committed = commit.batch_execute("COMMIT").await;
            wrapping.store(false, Ordering::Release);
            began?;
            let result = result?;
            committed?;
            Ok(result)
        }
        .boxed(),
    }
}

impl SimpleAsyncConnection for BemiAsyncPgConnection {
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let plan = self.plan(Some(query));
        let (emitted, wrapping) = (self.emitted.clone(), Arc::clone(&self.wrapping));
        let conn: &AsyncPgConnection = &self.inner;
        let mut writer = conn;
        let write = async move { writer.batch_execute(query).await }.boxed();
        around(conn, emitted, wrapping, plan, write).await
    }
}

impl AsyncConnectionCore for BemiAsyncPgConnection {
    type ExecuteFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<usize>>;
    type LoadFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<Self::Stream<'conn, 'query>>>;
    type Stream<'conn, 'query> = BoxStream<'static, QueryResult<PgRow>>;
    type Row<'conn, 'query> = PgRow;
    type Backend = Pg;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Pg> + QueryId + 'query,
    {
        let query = source.as_query();
        let plan = self.plan(sql_of(&query).as_deref());
        let (emitted, wrapping) = (self.emitted.clone(), Arc::clone(&self.wrapping));
        let conn: &'conn AsyncPgConnection = &self.inner;
        let mut loader = conn;
        let load = AsyncConnectionCore::load(&mut loader, query);
        if let Plan::Wrap(json) = plan {
            // The rows are read before COMMIT, then handed out.
            return async move {
                recover(conn, &wrapping).await?;
                wrapping.store(true, Ordering::Release);
                let mut begin = conn;
                // (After a failed emission the transaction may be open: `wrapping` stays set,
                // so the connection's next statement rolls it back.)
                begin.batch_execute(&begin_and_emit_sql(&json)).await?;
                let rows: QueryResult<Vec<PgRow>> = match load.await {
                    Ok(stream) => stream.try_collect().await,
                    Err(error) => Err(error),
                };
                let mut end = conn;
                let ended = end
                    .batch_execute(if rows.is_ok() { "COMMIT" } else { "ROLLBACK" })
                    .await;
                wrapping.store(false, Ordering::Release);
                let rows = rows?;
                ended?;
                Ok(futures_util::stream::iter(rows.into_iter().map(Ok)).boxed())
            }
            .boxed();
        }
        around(conn, emitted, wrapping, plan, load)
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Pg> + QueryId + 'query,
    {
        let plan = self.plan(sql_of(&source).as_deref());
        let (emitted, wrapping) = (self.emitted.clone(), Arc::clone(&self.wrapping));
        let conn: &'conn AsyncPgConnection = &self.inner;
        let mut writer = conn;
        let write = AsyncConnectionCore::execute_returning_count(&mut writer, source);
        around(conn, emitted, wrapping, plan, write)
    }
}

impl AsyncConnection for BemiAsyncPgConnection {
    type TransactionManager = AnsiTransactionManager;

    async fn establish(database_url: &str) -> ConnectionResult<Self> {
        AsyncPgConnection::establish(database_url)
            .await
            .map(Self::new)
    }

    fn transaction_state(&mut self) -> &mut AnsiTransactionManager {
        self.inner.transaction_state()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.inner.instrumentation()
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.inner.set_instrumentation(instrumentation);
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.inner.set_prepared_statement_cache_size(size);
    }
}

impl PoolableConnection for BemiAsyncPgConnection {
    /// Broken when a write's wrapping transaction was left open (its future dropped), or as
    /// the transaction manager judges (a closed connection fails the pool's recycling check).
    fn is_broken(&mut self) -> bool {
        self.wrapping.load(Ordering::Acquire)
            || AnsiTransactionManager::is_broken_transaction_manager(&mut self.inner)
    }
}
