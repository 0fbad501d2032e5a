//! One row of the `changes` table, and the position of a row in the audit trail's order.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};
use uuid::Uuid;

use bemi_core::protocol::Operation;

/// One captured change: a row of the `changes` table.
///
/// Serializes with the column names, timestamps as RFC 3339 text:
///
/// ```
/// use bemi_audit::{Change, Operation};
/// use serde_json::json;
///
/// let change: Change = serde_json::from_value(json!({
///     "id": "9b2e6a4e-3c1f-4c7e-9d64-0d4f8f2b7a11",
///     "primary_key": "26",
///     "before": {},
///     "after": {"id": 26, "task": "Sleep", "is_completed": false},
///     "context": {"user_id": 187234, "endpoint": "/todo", "method": "POST"},
///     "database": "app",
///     "schema": "public",
///     "table": "todo",
///     "operation": "CREATE",
///     "committed_at": "2023-12-11T17:09:09Z",
///     "queued_at": "2023-12-11T17:09:09.1Z",
///     "created_at": "2023-12-11T17:09:10Z",
///     "transaction_id": 768,
///     "position": 30606328,
/// }))?;
/// assert_eq!(change.operation, Operation::Create);
/// assert_eq!(change.context["user_id"], 187234);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The change's id.
    pub id: Uuid,
    /// The primary key of the changed row: the text of a one-column key, a JSON array for a
    /// composite key, `None` for a TRUNCATE or a table without a key.
    pub primary_key: Option<String>,
    /// The row before the change (`{}` for CREATE and TRUNCATE).
    pub before: Value,
    /// The row after the change (`{}` for DELETE and TRUNCATE).
    pub after: Value,
    /// The context of the statement that made the change (`{}` when it had none).
    pub context: Value,
    /// The source database.
    pub database: String,
    /// The table's schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// What happened.
    pub operation: Operation,
    /// When the source transaction committed.
    pub committed_at: DateTime<Utc>,
    /// When the change left the source's WAL sender.
    pub queued_at: DateTime<Utc>,
    /// When the worker stored the change.
    pub created_at: DateTime<Utc>,
    /// The source transaction's id: the full 64-bit id (PostgreSQL's `xid8`, as
    /// `pg_current_xact_id()` gives it), unique within its source cluster. Changes stored
    /// before bemi-rs recorded full ids hold the 32-bit id, which repeats after a wraparound.
    pub transaction_id: i64,
    /// The LSN of the change's WAL record.
    pub position: i64,
    /// The source cluster: its system identifier (`pg_control_system()`), which tells apart
    /// clusters whose databases share a name. `None` for changes stored before it was recorded.
    #[serde(default)]
    pub source: Option<String>,
}

impl Change {
    /// Where this change is in the audit trail's order: pass it to
    /// [`ChangeQuery::after`](super::ChangeQuery::after) for the next page.
    ///
    /// ```
    /// # fn run(change: &bemi_audit::Change) {
    /// let cursor = change.cursor();
    /// assert_eq!(cursor.committed_at, change.committed_at);
    /// assert_eq!(cursor.position, change.position);
    /// # }
    /// ```
    pub fn cursor(&self) -> Cursor {
        Cursor {
            committed_at: self.committed_at,
            position: self.position,
            id: self.id,
        }
    }
}

impl Change {
    /// The fields that differ between the before- and the after-image: field → (before,
    /// after). A field missing from one image counts as `null` there, so a CREATE lists every
    /// non-null field of the new row, a DELETE every non-null field of the old one, and a
    /// TRUNCATE nothing.
    ///
    /// Numbers compare as `serde_json` holds them: `f64` beyond 64-bit integers, unless its
    /// `arbitrary_precision` feature is on (the `bemi` CLI turns it on); the audit trail itself
    /// keeps every digit, and [`ChangeQuery::changed`](super::ChangeQuery::changed)
    /// compares there.
    ///
    /// ```
    /// use bemi_audit::Change;
    /// use serde_json::json;
    ///
    /// let change: Change = serde_json::from_value(json!({
    ///     "id": "9b2e6a4e-3c1f-4c7e-9d64-0d4f8f2b7a11", "primary_key": "1",
    ///     "before": {"id": 1, "task": "Sleep", "is_completed": false},
    ///     "after": {"id": 1, "task": "Sleep", "is_completed": true},
    ///     "context": {}, "database": "app", "schema": "public", "table": "todo",
    ///     "operation": "UPDATE", "committed_at": "2023-12-11T17:09:09Z",
    ///     "queued_at": "2023-12-11T17:09:09Z", "created_at": "2023-12-11T17:09:09Z",
    ///     "transaction_id": 1, "position": 1,
    /// }))?;
    /// let diff = change.diff();
    /// assert_eq!(diff.len(), 1);
    /// assert_eq!(diff["is_completed"], (json!(false), json!(true)));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn diff(&self) -> BTreeMap<String, (Value, Value)> {
        let empty = serde_json::Map::new();
        let before = self.before.as_object().unwrap_or(&empty);
        let after = self.after.as_object().unwrap_or(&empty);
        let null = Value::Null;
        before
            .keys()
            .chain(after.keys())
            .filter_map(|field| {
                let old = before.get(field).unwrap_or(&null);
                let new = after.get(field).unwrap_or(&null);
                (old != new).then(|| (field.clone(), (old.clone(), new.clone())))
            })
            .collect()
    }
}

impl<'r> FromRow<'r, PgRow> for Change {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            primary_key: row.try_get("primary_key")?,
            before: row.try_get("before")?,
            after: row.try_get("after")?,
            context: row.try_get("context")?,
            database: row.try_get("database")?,
            schema: row.try_get("schema")?,
            table: row.try_get("table")?,
            operation: operation_column(row)?,
            committed_at: row.try_get("committed_at")?,
            queued_at: row.try_get("queued_at")?,
            created_at: row.try_get("created_at")?,
            transaction_id: row.try_get("transaction_id")?,
            position: row.try_get("position")?,
            // A table an older worker made has no such column until a new one starts.
            source: source_column(row),
        })
    }
}

/// The `source` column: `''` (unknown: stored before sources were recorded, or from a source
/// that does not tell its system identifier) is `None`, as is a table an older worker made
/// until a new one starts.
pub(crate) fn source_column(row: &PgRow) -> Option<String> {
    row.try_get::<Option<String>, _>("source")
        .ok()
        .flatten()
        .filter(|source| !source.is_empty())
}

/// The position of a change in the audit trail's order: `(committed_at, position)`, with the
/// id as the last tie-breaker (the rows of a TRUNCATE of several tables share a position).
/// Cursors compare in that order, as PostgreSQL compares `(committed_at, position, id)` (a
/// uuid's order is that of its bytes in both).
///
/// ```
/// # fn run(page: Vec<bemi_audit::Change>) {
/// let next_page_starts_after = page.last().map(|change| change.cursor());
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cursor {
    /// The change's commit time.
    pub committed_at: DateTime<Utc>,
    /// The change's LSN.
    pub position: i64,
    /// The change's id.
    pub id: Uuid,
}

/// The `operation` column of a row of `changes`.
pub(crate) fn operation_column(row: &PgRow) -> Result<Operation, sqlx::Error> {
    let operation: String = row.try_get("operation")?;
    operation
        .parse()
        .map_err(|error| sqlx::Error::ColumnDecode {
            index: "operation".to_owned(),
            source: Box::new(error),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(operation: Operation, before: Value, after: Value) -> Change {
        let now = Utc::now();
        Change {
            id: Uuid::nil(),
            primary_key: Some("1".into()),
            before,
            after,
            context: Value::Object(Default::default()),
            database: "app".into(),
            schema: "public".into(),
            table: "todo".into(),
            operation,
            committed_at: now,
            queued_at: now,
            created_at: now,
            transaction_id: 1,
            position: 1,
            source: None,
        }
    }

    #[test]
    fn diff_lists_fields_that_differ_with_missing_as_null() {
        use serde_json::json;

        let update = change(
            Operation::Update,
            json!({"id": 1, "task": "a", "tags": [1], "gone": 1, "n": null}),
            json!({"id": 1, "task": "b", "tags": [1], "new": {"x": 1}, "n": null}),
        );
        let diff = update.diff();
        assert_eq!(
            diff.into_iter().collect::<Vec<_>>(),
            [
                ("gone".to_owned(), (json!(1), json!(null))),
                ("new".to_owned(), (json!(null), json!({"x": 1}))),
                ("task".to_owned(), (json!("a"), json!("b"))),
            ]
        );
        let create = change(Operation::Create, json!({}), json!({"id": 1, "n": null}));
        assert_eq!(create.diff().keys().collect::<Vec<_>>(), ["id"]);
        let truncate = change(Operation::Truncate, json!({}), json!({}));
        assert!(truncate.diff().is_empty());
    }

    #[test]
    fn operations_round_trip_through_text_and_serde() {
        for operation in Operation::ALL {
            assert_eq!(operation.as_str().parse::<Operation>(), Ok(operation));
            let json = serde_json::to_value(operation).unwrap();
            assert_eq!(json, operation.as_str());
        }
        assert!(" delete ".parse::<Operation>().is_ok());
        assert!("".parse::<Operation>().is_err());
    }
}
