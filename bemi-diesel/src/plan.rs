//! What a wrapper sends before a statement: the same rules for the sync and the async
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bemi_core::carrier::{self, RESET_JSON};
use bemi_core::sql;

/// What to send around a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The statement alone.
    Alone,
    /// In the open transaction: the emission of this message, then the statement.
    Emit(String),
    /// Outside a transaction: `BEGIN` and the emission, the statement, `COMMIT`.
    Wrap(String),
}

/// Whether a context may be in effect in the connection's transaction. Shared with the
/// futures of the async connection, which note a completed reset ([`Emitted::emitted`]).
///
/// Pessimistic, for cancellation: a context is noted when its emission is planned, before it is
/// sent (a future dropped after sending it leaves it in effect); a reset is un-noted only once
/// it completed (a future dropped before sending it leaves the context in effect).
#[derive(Debug, Default, Clone)]
pub(crate) struct Emitted(Arc<AtomicBool>);

impl Emitted {
    /// The plan for `sql` (`None`: it could not be rendered, and passes through), in a
    /// transaction or not.
    pub(crate) fn plan(&self, sql: Option<&str>, in_transaction: bool) -> Plan {
        if !in_transaction {
            self.set(false);
        }
        let Some(sql) = sql else {
            return Plan::Alone;
        };
        if in_transaction && carrier::may_undo_emissions(sql) {
            // After a ROLLBACK TO SAVEPOINT the context in effect is unknown.
            self.set(true);
            return Plan::Alone;
        }
        match (carrier::message_json(sql), in_transaction) {
            (Some(json), true) => {
                self.set(true);
                Plan::Emit(json)
            }
            (Some(json), false) => Plan::Wrap(json),
            (None, true) if self.0.load(Ordering::Acquire) && sql::is_write(sql) => {
                Plan::Emit(RESET_JSON.to_owned())
            }
            (None, _) => Plan::Alone,
        }
    }

    /// Notes that the emission of `json` (planned by [`Emitted::plan`]) completed: after a
    /// reset, no context is in effect.
    pub(crate) fn emitted(&self, json: &str) {
        if json == RESET_JSON {
            self.set(false);
        }
    }

    fn set(&self, in_effect: bool) {
        self.0.store(in_effect, Ordering::Release);
    }
}

/// The SQL text of a statement, as Diesel renders it for PostgreSQL.
pub(crate) fn sql_of<T: diesel::query_builder::QueryFragment<diesel::pg::Pg> + ?Sized>(
    source: &T,
) -> Option<String> {
    use diesel::query_builder::QueryBuilder as _;
    let mut builder = diesel::pg::PgQueryBuilder::new();
    source.to_sql(&mut builder, &diesel::pg::Pg).ok()?;
    Some(builder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bemi_core::context;
    use serde_json::json;

    #[test]
    fn writes_get_their_context_and_later_writes_without_one_a_reset() {
        let emitted = Emitted::default();
        let insert = "INSERT INTO todo (task) VALUES ($1)";
        let plan = context::sync_scope(json!({"user_id": 1}), || emitted.plan(Some(insert), true));
        assert!(matches!(plan, Plan::Emit(json) if json.contains("\"user_id\":1")));
        // No context now: a reset, until one completed (a write dropped before its reset was
        // sent leaves the context in effect).
        assert_eq!(emitted.plan(Some(insert), true), Plan::Emit("{}".into()));
        assert_eq!(emitted.plan(Some(insert), true), Plan::Emit("{}".into()));
        emitted.emitted("{}");
        assert_eq!(emitted.plan(Some(insert), true), Plan::Alone);
        // Reads never emit.
        let read = context::sync_scope(json!({"user_id": 1}), || {
            emitted.plan(Some("SELECT 1"), true)
        });
        assert_eq!(read, Plan::Alone);
        // Outside a transaction: wrapped, and nothing is in effect afterwards.
        let plan = context::sync_scope(json!({"user_id": 2}), || emitted.plan(Some(insert), false));
        assert!(matches!(plan, Plan::Wrap(_)));
        assert_eq!(emitted.plan(Some(insert), false), Plan::Alone);
        // After a rollback to a savepoint, the next write without a context resets.
        assert_eq!(
            emitted.plan(Some("ROLLBACK TO SAVEPOINT diesel_savepoint_1"), true),
            Plan::Alone
        );
        assert_eq!(emitted.plan(Some(insert), true), Plan::Emit("{}".into()));
        emitted.emitted("{}");
        // A context is in effect as soon as its emission is planned, before it completes.
        let _ = context::sync_scope(json!({"user_id": 3}), || emitted.plan(Some(insert), true));
        assert_eq!(emitted.plan(Some(insert), true), Plan::Emit("{}".into()));
    }
}
