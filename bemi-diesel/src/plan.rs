//! What a wrapper sends before a statement: the same rules for the sync and the async
//! connection.

use std::sync::Arc;

use bemi_core::carrier::{self, Emission, InEffect};
use bemi_core::sql;

/// What to send around a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The statement alone.
    Alone,
    /// In the open transaction: this emission, then the statement.
    Emit(Emission),
    /// Outside a transaction: `BEGIN` and the emission of this (signed) message, the
    /// statement, `COMMIT`.
    Wrap(String),
}

/// The context in effect in the connection's transaction ([`InEffect`]). Shared with the
/// futures of the async connection, which note a completed emission ([`Emitted::emitted`]).
///
/// Pessimistic, for cancellation: from the moment an emission is planned until it completed,
/// the context in effect is unknown (a future dropped after sending it leaves it in effect, one
/// dropped before does not), and the next write emits again.
#[derive(Debug, Default, Clone)]
pub(crate) struct Emitted(Arc<InEffect>);

impl Emitted {
    /// The plan for `sql` (`None`: it could not be rendered, and passes through), in a
    /// transaction or not.
    pub(crate) fn plan(&self, sql: Option<&str>, in_transaction: bool) -> Plan {
        if !in_transaction {
            self.0.new_transaction();
        }
        let Some(sql) = sql else {
            return Plan::Alone;
        };
        if !sql::is_write(sql) {
            // After a ROLLBACK TO SAVEPOINT the context in effect is unknown.
            self.0.after_statement(sql);
            return Plan::Alone;
        }
        if !in_transaction {
            return carrier::message_json(sql).map_or(Plan::Alone, Plan::Wrap);
        }
        let planned = self.0.before_write(carrier::message_context(sql));
        // A write with a comment of its own may change the context in effect unseen.
        self.0.after_statement(sql);
        planned.map_or(Plan::Alone, Plan::Emit)
    }

    /// Notes that `emission` (planned by [`Emitted::plan`]) completed.
    pub(crate) fn emitted(&self, emission: &Emission) {
        self.0.emitted(emission);
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

    fn emits(plan: &Plan) -> Option<&str> {
        match plan {
            Plan::Emit(emission) => Some(emission.json()),
            _ => None,
        }
    }

    #[test]
    fn writes_get_their_context_once_and_later_writes_without_one_a_reset() {
        let emitted = Emitted::default();
        let insert = "INSERT INTO todo (task) VALUES ($1)";
        let in_context = |plan: &dyn Fn() -> Plan| context::sync_scope(json!({"user_id": 1}), plan);
        let plan = in_context(&|| emitted.plan(Some(insert), true));
        assert!(emits(&plan).is_some_and(|json| json.contains("\"user_id\":1")));
        // Until it completed, the context in effect is unknown: emitted again.
        let plan = in_context(&|| emitted.plan(Some(insert), true));
        let Plan::Emit(emission) = plan else {
            panic!("{plan:?}")
        };
        emitted.emitted(&emission);
        // Then the same context is in effect: nothing to emit.
        assert_eq!(
            in_context(&|| emitted.plan(Some(insert), true)),
            Plan::Alone
        );
        // No context now: a reset, until one completed.
        assert_eq!(emits(&emitted.plan(Some(insert), true)), Some("{}"));
        let plan = emitted.plan(Some(insert), true);
        assert_eq!(emits(&plan), Some("{}"));
        let Plan::Emit(reset) = plan else { panic!() };
        emitted.emitted(&reset);
        assert_eq!(emitted.plan(Some(insert), true), Plan::Alone);
        // Reads never emit.
        assert_eq!(
            in_context(&|| emitted.plan(Some("SELECT 1"), true)),
            Plan::Alone
        );
        // Outside a transaction: wrapped, and nothing is in effect afterwards.
        let plan = context::sync_scope(json!({"user_id": 2}), || emitted.plan(Some(insert), false));
        assert!(matches!(plan, Plan::Wrap(_)));
        assert_eq!(emitted.plan(Some(insert), false), Plan::Alone);
        // After a rollback to a savepoint, the next write without a context resets.
        assert_eq!(
            emitted.plan(Some("ROLLBACK TO SAVEPOINT diesel_savepoint_1"), true),
            Plan::Alone
        );
        assert_eq!(emits(&emitted.plan(Some(insert), true)), Some("{}"));
    }
}
