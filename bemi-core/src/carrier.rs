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
//! says. Inside a transaction the message is emitted only when the context changes
//! ([`InEffect`]): a write whose context is the one already in effect emits nothing.
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

use std::sync::Mutex;

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
    message_context(sql).map(crate::signing::sign)
}

/// The context a write of `sql` carries, as [`message_json`] but not signed: what
/// [`InEffect::before_write`] compares with the context in effect (a signature differs at
/// every emission).
#[must_use]
pub fn message_context(sql: &str) -> Option<String> {
    if !sql::is_write(sql) {
        return None;
    }
    context::with_current(|current| current.map(|ctx| sql::context_json(sql, ctx)))
}

/// [`message_json_without_sql`], not signed (see [`message_context`]).
#[must_use]
pub fn message_context_without_sql() -> Option<String> {
    context::with_current(|current| current.map(sql::context_json_without_sql))
}

/// What an adapter knows of the context in effect in the transaction it writes in, so that it
/// emits a context only when it changes: the writes of one request in one transaction carry one
/// message, and each of their rows takes it by the stitching rule.
///
/// Pessimistic: an emission planned by [`before_write`](Self::before_write) leaves the context
/// in effect unknown until [`emitted`](Self::emitted) says it completed (a future dropped after
/// sending it may have left it in effect, or not); so does a statement that may change it
/// without the adapter ([`after_statement`](Self::after_statement)). Unknown, a write emits
/// its context — or `{}` when it has none.
///
/// ```
/// use bemi_core::carrier::InEffect;
///
/// let in_effect = InEffect::new();
/// let first = in_effect.before_write(Some(r#"{"user_id":1}"#.into())).unwrap();
/// assert_eq!(first.json(), r#"{"user_id":1}"#);
/// in_effect.emitted(&first);
/// // The same context again: nothing to emit.
/// assert!(in_effect.before_write(Some(r#"{"user_id":1}"#.into())).is_none());
/// // Without a context: `{}`, once.
/// let reset = in_effect.before_write(None).unwrap();
/// assert_eq!(reset.json(), "{}");
/// in_effect.emitted(&reset);
/// assert!(in_effect.before_write(None).is_none());
/// // A statement with a trailing comment may carry a context of its own (the trigger's).
/// in_effect.after_statement("UPDATE t SET a = 1 /*Bemi {} Bemi*/");
/// assert_eq!(in_effect.before_write(None).unwrap().json(), "{}");
/// ```
#[derive(Debug, Default)]
pub struct InEffect(Mutex<Known>);

#[derive(Debug, Default)]
struct Known {
    state: State,
    /// Bumped by every planned emission: a completed emission is the one in effect only if no
    /// other was planned after it.
    generation: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum State {
    /// No context: none emitted in the transaction, or `{}` last.
    #[default]
    Nothing,
    /// This context (its JSON before signing) was emitted last.
    Context(String),
    /// Not known: an emission is in flight or was dropped, a savepoint was rolled back, or a
    /// statement may have emitted a context of its own.
    Unknown,
}

/// A message an adapter sends before a write: from [`InEffect::before_write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emission {
    /// What is sent: the context, signed when a context key is set, or `{}`.
    json: String,
    /// The context before signing (`None` for `{}`).
    context: Option<String>,
    generation: u64,
}

impl Emission {
    /// The JSON text to emit ([`EMIT_SQL`]'s parameter).
    #[must_use]
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Whether this is the reset, `{}`: the write has no context.
    #[must_use]
    pub fn is_reset(&self) -> bool {
        self.context.is_none()
    }
}

impl InEffect {
    /// A transaction in which nothing was emitted yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A savepoint of this transaction: what is in effect here is in effect there. Whatever the
    /// savepoint emits, call [`forget`](Self::forget) on this one (it is in effect here too
    /// once the savepoint is released, and undone if it is rolled back).
    #[must_use]
    pub fn savepoint(&self) -> Self {
        let state = self.lock().state.clone();
        Self(Mutex::new(Known {
            state,
            generation: 0,
        }))
    }

    /// What to emit before a write in the transaction whose context is `context` (from
    /// [`message_context`]; `None`: no context in scope): `None` when that context — or no
    /// context — is known to be in effect already. The context is signed here when a context
    /// key is set. Until [`emitted`](Self::emitted) the context in effect is unknown.
    #[must_use]
    pub fn before_write(&self, context: Option<String>) -> Option<Emission> {
        let mut known = self.lock();
        let already = match (&known.state, &context) {
            (State::Nothing, None) => true,
            (State::Context(in_effect), Some(context)) => in_effect == context,
            _ => false,
        };
        if already {
            return None;
        }
        known.state = State::Unknown;
        known.generation += 1;
        let json = context
            .clone()
            .map_or_else(|| RESET_JSON.to_owned(), crate::signing::sign);
        Some(Emission {
            json,
            context,
            generation: known.generation,
        })
    }

    /// Notes that `emission` completed: its context is in effect, unless another emission was
    /// planned after it.
    pub fn emitted(&self, emission: &Emission) {
        let mut known = self.lock();
        if known.generation == emission.generation {
            known.state = emission
                .context
                .clone()
                .map_or(State::Nothing, State::Context);
        }
    }

    /// Notes a statement the adapter passes on in the transaction without planning for it:
    /// after `ROLLBACK TO SAVEPOINT` (which may undo emissions) or a statement that ends with a
    /// comment (which the migration's trigger may turn into a context of its own), the context
    /// in effect is unknown.
    pub fn after_statement(&self, sql: &str) {
        if may_undo_emissions(sql) || ends_with_comment(sql) {
            self.forget();
        }
    }

    /// A new transaction begins on the connection: no context is in effect (an emission of an
    /// earlier transaction that completes late changes nothing).
    pub fn new_transaction(&self) {
        let mut known = self.lock();
        if known.state != State::Nothing {
            known.state = State::Nothing;
            known.generation += 1;
        }
    }

    /// The context in effect is not known any more (the next write emits).
    pub fn forget(&self) {
        let mut known = self.lock();
        known.state = State::Unknown;
        known.generation += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        // The state is replaced whole under the lock, so a poisoned one is still consistent.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether `sql` ends with a block comment (after whitespace and `;`), as the migration's
/// trigger reads a context from.
fn ends_with_comment(sql: &str) -> bool {
    sql.trim_end_matches([' ', '\t', '\r', '\n', ';'])
        .ends_with("*/")
}

/// The JSON text of a context for a write whose SQL is unknown (a statement prepared elsewhere):
/// the current context without the `SQL` key, size-bounded; `None` without a context.
#[must_use]
pub fn message_json_without_sql() -> Option<String> {
    message_context_without_sql().map(crate::signing::sign)
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
    fn a_context_is_emitted_when_it_changes_and_only_then() {
        let (a, b) = (r#"{"user_id":1}"#.to_owned(), r#"{"user_id":2}"#.to_owned());
        let in_effect = InEffect::new();
        assert_eq!(in_effect.before_write(None), None, "nothing emitted yet");
        let first = in_effect.before_write(Some(a.clone())).unwrap();
        // Until it completed, the same context is emitted again (the first may be dropped).
        let again = in_effect.before_write(Some(a.clone())).unwrap();
        in_effect.emitted(&again);
        assert_eq!(in_effect.before_write(Some(a.clone())), None);
        // A completion that is not the last planned emission tells nothing.
        let other = in_effect.before_write(Some(b.clone())).unwrap();
        in_effect.emitted(&first);
        assert!(in_effect.before_write(Some(a.clone())).is_some());
        in_effect.emitted(&other);
        assert!(
            in_effect.before_write(Some(b.clone())).is_some(),
            "a later plan came between"
        );
        let b_again = in_effect.before_write(Some(b.clone())).unwrap();
        in_effect.emitted(&b_again);
        assert_eq!(in_effect.before_write(Some(b.clone())), None);
        // A savepoint starts from what is in effect; its parent forgets when it emits.
        let savepoint = in_effect.savepoint();
        assert_eq!(savepoint.before_write(Some(b.clone())), None);
        assert!(savepoint.before_write(Some(a.clone())).is_some());
        in_effect.forget();
        assert!(in_effect.before_write(Some(b.clone())).is_some());
    }

    #[test]
    fn statements_that_may_change_the_context_unseen_make_it_unknown() {
        for sql in [
            "ROLLBACK TO SAVEPOINT s1",
            "INSERT INTO t VALUES (1) /*Bemi {\"user_id\":9} Bemi*/",
            "UPDATE t SET a = 1 /*controller='x'*/ ;\n",
        ] {
            let in_effect = InEffect::new();
            let reset = in_effect.before_write(Some("{}".into())).unwrap();
            in_effect.emitted(&reset);
            in_effect.after_statement("SAVEPOINT s1");
            in_effect.after_statement("SELECT 1");
            assert_eq!(in_effect.before_write(Some("{}".into())), None, "{sql}");
            in_effect.after_statement(sql);
            assert!(in_effect.before_write(Some("{}".into())).is_some(), "{sql}");
        }
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
