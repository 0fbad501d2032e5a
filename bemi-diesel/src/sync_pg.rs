//! The sync Diesel connection.

use bemi_core::carrier::{begin_and_emit_sql, emit_sql_literal};
use diesel::connection::{
    AnsiTransactionManager, CacheSize, Connection, ConnectionSealed, DefaultLoadingMode,
    Instrumentation, LoadConnection, SimpleConnection, TransactionManager,
};
use diesel::expression::QueryMetadata;
use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::{ConnectionResult, QueryResult};

use crate::plan::{Emitted, Plan, sql_of};

/// A Diesel `PgConnection` whose writes carry the current context (see the crate docs).
///
/// ```no_run
/// use bemi_diesel::BemiPgConnection;
/// use diesel::{Connection as _, RunQueryDsl as _};
///
/// let mut conn = BemiPgConnection::establish("postgres://localhost/app")?;
/// bemi_core::context::sync_scope(serde_json::json!({"user_id": 187234}), || {
///     diesel::sql_query("UPDATE todo SET is_completed = true WHERE id = 1").execute(&mut conn)
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BemiPgConnection {
    inner: PgConnection,
    emitted: Emitted,
}

impl std::fmt::Debug for BemiPgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BemiPgConnection").finish_non_exhaustive()
    }
}

impl BemiPgConnection {
    /// Wraps a connection.
    pub fn new(inner: PgConnection) -> Self {
        Self {
            inner,
            emitted: Emitted::default(),
        }
    }

    /// The wrapped connection: queries through it carry no context.
    pub fn inner_mut(&mut self) -> &mut PgConnection {
        &mut self.inner
    }

    /// Unwraps the connection.
    pub fn into_inner(self) -> PgConnection {
        self.inner
    }

    fn in_transaction(&mut self) -> bool {
        AnsiTransactionManager::transaction_manager_status_mut(&mut self.inner)
            .transaction_depth()
            .is_ok_and(|depth| depth.is_some())
    }

    fn plan(&mut self, sql: Option<&str>) -> Plan {
        let in_transaction = self.in_transaction();
        self.emitted.plan(sql, in_transaction)
    }

    /// Runs `write` on the inner connection after what `plan` asks.
    ///
    /// No cancellation to handle: a call blocks its thread until it returns (Diesel is
    /// synchronous; dropping the future of `interact` or `spawn_blocking` does not stop it), so
    /// a write cannot be abandoned between its emission and its end, as an async one can.
    fn around<R>(
        &mut self,
        plan: Plan,
        write: impl FnOnce(&mut PgConnection) -> QueryResult<R>,
    ) -> QueryResult<R> {
        match plan {
            Plan::Alone => write(&mut self.inner),
            Plan::Emit(emission) => {
                self.inner
                    .batch_execute(&emit_sql_literal(emission.json()))?;
                self.emitted.emitted(&emission);
                write(&mut self.inner)
            }
            Plan::Wrap(json) => {
                // BEGIN with the emission in one round trip; the transaction manager of the
                // inner connection does not know of it, which is right: it ends here.
                self.inner.batch_execute(&begin_and_emit_sql(&json))?;
                match write(&mut self.inner) {
                    Ok(result) => {
                        self.inner.batch_execute("COMMIT")?;
                        Ok(result)
                    }
                    Err(error) => {
                        let _ = self.inner.batch_execute("ROLLBACK");
                        Err(error)
                    }
                }
            }
        }
    }
}

impl SimpleConnection for BemiPgConnection {
    fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let plan = self.plan(Some(query));
        self.around(plan, |inner| inner.batch_execute(query))
    }
}

impl ConnectionSealed for BemiPgConnection {}

impl Connection for BemiPgConnection {
    type Backend = Pg;
    type TransactionManager = AnsiTransactionManager;

    fn establish(database_url: &str) -> ConnectionResult<Self> {
        PgConnection::establish(database_url).map(Self::new)
    }

    fn execute_returning_count<T>(&mut self, source: &T) -> QueryResult<usize>
    where
        T: QueryFragment<Pg> + QueryId,
    {
        let plan = self.plan(sql_of(source).as_deref());
        self.around(plan, |inner| inner.execute_returning_count(source))
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

impl LoadConnection<DefaultLoadingMode> for BemiPgConnection {
    type Cursor<'conn, 'query> =
        <PgConnection as LoadConnection<DefaultLoadingMode>>::Cursor<'conn, 'query>;
    type Row<'conn, 'query> =
        <PgConnection as LoadConnection<DefaultLoadingMode>>::Row<'conn, 'query>;

    /// A `RETURNING` write outside a transaction is committed before its rows are returned
    /// (in this loading mode the cursor owns its result).
    fn load<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> QueryResult<Self::Cursor<'conn, 'query>>
    where
        T: Query + QueryFragment<Pg> + QueryId + 'query,
        Pg: QueryMetadata<T::SqlType>,
    {
        let plan = self.plan(sql_of(&source).as_deref());
        self.around(plan, |inner| {
            <PgConnection as LoadConnection<DefaultLoadingMode>>::load(inner, source)
        })
    }
}
