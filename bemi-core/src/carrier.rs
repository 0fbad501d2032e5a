//! How an adapter carries a write's context to PostgreSQL.
//!
//! - [`Carrier::Message`]: the adapter emits the context itself as the `_bemi`
//!   logical-decoding message, with a cached statement ([`EMIT_SQL`]), in the write's own
//!   transaction and just before the write. The write's SQL is untouched, so it keeps its
//!   prepared statement; a write outside a transaction is wrapped in one. Because the context
//!   and the write travel in one transaction, this is safe behind a transaction-pooling
//!   pgbouncer.
//! - [`Carrier::Comment`]: the adapter appends ` /*Bemi {json} Bemi*/` to the write's SQL and
//!   the migration's trigger turns it into the message — Bemi's wire format of its other
//!   languages. One statement, but a text of its own per write: no prepared statement is
//!   reused, and the server parses and plans every write.
//!
//! - [`Carrier::Auto`] (the default): the faster of the two for each path, as measured.
//!
//! Either way each write's rows take the context in scope where the write was made; a write
//! without context after one with context in the same transaction gets none (the adapter emits
//! `{}` before it), and statements the adapter does not see (raw SQL on the same transaction,
//! triggers' own writes) take the latest context of their transaction, as the stitching rule
//! says.
//!
//! ```
//! use bemi_core::carrier::{Carrier, message_json};
//! use bemi_core::context;
//! use serde_json::json;
//!
//! assert_eq!(Carrier::default(), Carrier::Auto);
//! let json = context::sync_scope(json!({"user_id": 1}), || message_json("DELETE FROM todo"));
//! assert_eq!(json.as_deref(), Some(r#"{"SQL":"DELETE FROM todo","user_id":1}"#));
//! assert_eq!(message_json("DELETE FROM todo"), None); // no context in scope
//! ```

use crate::context;
use crate::sql;

/// How writes carry their context; see the [module docs](self).
///
/// Non-exhaustive: an adapter treats a carrier it does not know as the comment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Carrier {
    /// The measured faster of the two for each path (BENCHMARKS.md, P2): the message, except
    /// for a sqlx write outside a transaction, which carries the comment (2 round trips and a
    /// parse instead of 3 round trips: sqlx cannot pipeline the `BEGIN` and `COMMIT` the message
    /// needs). Choose [`Carrier::Message`] behind a transaction-pooling pgbouncer. With a
    /// context key ([`crate::signing`]) always the message, which is signed; a comment is not.
    #[default]
    Auto,
    /// The adapter emits the `_bemi` message in the write's transaction (cached statements).
    Message,
    /// A trailing ` /*Bemi {json} Bemi*/` comment that the trigger reads.
    Comment,
}

impl Carrier {
    /// The carrier itself, or `auto` for [`Carrier::Auto`]: what an adapter uses on a path
    /// whose measured faster carrier is `auto` — the message whenever a context key is set
    /// ([`crate::signing`]): only the message is signed.
    #[must_use]
    pub fn resolve(self, auto: Carrier) -> Carrier {
        match self {
            // Only the message can be signed (the trigger re-emits a comment's context).
            Carrier::Auto if crate::signing::context_key().is_some() => Carrier::Message,
            Carrier::Auto => auto,
            carrier => carrier,
        }
    }
}

/// Emits the context `$1` (JSON text) as the transactional `_bemi` message. It also clears the
/// trigger's note that a comment context was emitted earlier in the transaction, so that the
/// trigger does not emit `{}` for the write that follows. One cached statement per connection;
/// its columns are text, so that no driver looks up a type in the catalog for it (which would
/// cost a round trip, and destroys an unnamed statement in sqlx 0.9.1).
pub const EMIT_SQL: &str = "SELECT pg_catalog.pg_logical_emit_message(true, '_bemi', $1::text)::text, \
     CASE WHEN pg_catalog.current_setting('bemi.context_emitted', true) = 't' \
          THEN pg_catalog.set_config('bemi.context_emitted', 'f', true) END";

/// The context a write of `sql` carries, as the JSON text of its message (the current context
/// plus the `SQL` key, size-bounded, signed when a context key is set: see
/// [`crate::signing`]); `None` when `sql` does not write or no context is in
/// scope.
#[must_use]
pub fn message_json(sql: &str) -> Option<String> {
    if !sql::is_write(sql) {
        return None;
    }
    context::with_current(|current| current.map(|ctx| sql::context_json(sql, ctx)))
        .map(crate::signing::sign)
}

/// The JSON text of a context for a write whose SQL is unknown (a statement prepared elsewhere):
/// the current context without the `SQL` key, size-bounded; `None` without a context.
#[must_use]
pub fn message_json_without_sql() -> Option<String> {
    context::with_current(|current| current.map(sql::context_json_without_sql))
        .map(crate::signing::sign)
}

/// The emission of `json` as one simple-protocol statement, the JSON an escaped string literal
/// (`E'…'`, which reads the same whatever `standard_conforming_strings` says): for adapters
/// that must not rely on a prepared statement (a transaction-pooling pgbouncer may run the
/// next transaction on another server connection).
///
/// ```
/// let sql = bemi_core::carrier::emit_sql_literal(r#"{"note":"it's \\ fine"}"#);
/// assert!(sql.starts_with(
///     r#"SELECT pg_catalog.pg_logical_emit_message(true, '_bemi', E'{"note":"it''s \\\\ fine"}')"#
/// ));
/// ```
#[must_use]
pub fn emit_sql_literal(json: &str) -> String {
    let mut sql = String::with_capacity(json.len() + 200);
    sql.push_str("SELECT pg_catalog.pg_logical_emit_message(true, '_bemi', E'");
    for c in json.chars() {
        match c {
            '\'' => sql.push_str("''"),
            '\\' => sql.push_str("\\\\"),
            c => sql.push(c),
        }
    }
    sql.push_str(
        "'), CASE WHEN pg_catalog.current_setting('bemi.context_emitted', true) = 't' \
         THEN pg_catalog.set_config('bemi.context_emitted', 'f', true) END",
    );
    sql
}

/// `BEGIN` and the emission of `json` ([`emit_sql_literal`]) in one simple-protocol query:
/// what an adapter sends to open the transaction of a write outside one, in one round trip.
#[must_use]
pub fn begin_and_emit_sql(json: &str) -> String {
    format!("BEGIN; {}", emit_sql_literal(json))
}

/// Whether `sql` may undo emissions made earlier in the transaction (`ROLLBACK TO SAVEPOINT`):
/// after it, an adapter no longer knows which context is in effect, and resets before the
/// next write without one.
///
/// ```
/// assert!(bemi_core::carrier::may_undo_emissions("rollback to savepoint s1"));
/// assert!(!bemi_core::carrier::may_undo_emissions("SAVEPOINT s1"));
/// ```
#[must_use]
pub fn may_undo_emissions(sql: &str) -> bool {
    let sql = sql.trim_start();
    sql.get(..8)
        .is_some_and(|start| start.eq_ignore_ascii_case("rollback"))
}

/// The context that resets an earlier one for the rest of a transaction.
pub const RESET_JSON: &str = "{}";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_writes_in_a_context_carry_one() {
        context::sync_scope(json!({"user_id": 7}), || {
            assert!(message_json("INSERT INTO t VALUES (1)").is_some());
            assert!(
                message_json("WITH x AS (DELETE FROM t RETURNING 1) SELECT * FROM x").is_some()
            );
            assert_eq!(message_json("SELECT * FROM t"), None);
            let unknown = message_json_without_sql().unwrap();
            assert_eq!(unknown, r#"{"user_id":7}"#);
        });
        assert_eq!(message_json_without_sql(), None);
    }

    #[test]
    fn the_literal_survives_quotes_backslashes_and_comment_markers() {
        let hostile = r#"{"a":"'); DROP TABLE t; --","b":"\\' OR 1=1","c":"*/ /* $$"}"#;
        let sql = begin_and_emit_sql(hostile);
        // One literal: every quote inside is doubled, every backslash escaped.
        let literal = sql
            .strip_prefix("BEGIN; SELECT pg_catalog.pg_logical_emit_message(true, '_bemi', E'")
            .and_then(|rest| rest.split("'), CASE WHEN").next())
            .unwrap();
        let unescaped = literal.replace("''", "'").replace("\\\\", "\\");
        assert_eq!(unescaped, hostile);
        assert!(!literal.replace("''", "").contains('\''));
    }
}
