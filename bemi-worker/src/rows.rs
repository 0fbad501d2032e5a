//! Row changes as the `changes` table stores them: before and after images as typed JSON text,
//! the primary key, and the context the change was stitched to.
//!
//! TOASTed values that an UPDATE did not touch arrive as "unchanged" without their value; they
//! are filled from the before-image (REPLICA IDENTITY FULL) and, when there is none, left out of
//! the after-image rather than stored as `null`.

use std::sync::Arc;

use crate::catalog::RelationInfo;
use crate::config::Redactions;
use crate::json_value::{write_json, write_string};
use crate::pgoutput::{OldRow, Value};
use crate::schema_history::KEY_UNKNOWN_KEY;

use bemi_audit::store::NewChange;
use bemi_core::protocol::Operation;
use chrono::{DateTime, Utc};

/// One row of the `changes` table, before it is written.
///
/// ```
/// let mut row = bemi_worker::sink::ChangeRow::default();
/// row.table = "todo".into();
/// assert_eq!((&*row.table, row.before.as_str()), ("todo", "{}"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeRow {
    /// The primary key value: the text of a single-column key, a JSON array for a composite key,
    /// `None` without a key (or for a TRUNCATE).
    pub primary_key: Option<String>,
    /// The row before the change, as a JSON object (`{}` for CREATE and TRUNCATE).
    pub before: String,
    /// The row after the change, as a JSON object (`{}` for DELETE and TRUNCATE).
    pub after: String,
    /// The context, as a JSON object (`{}` when the change had none).
    pub context: Arc<str>,
    /// The table's schema.
    pub schema: Arc<str>,
    /// The table.
    pub table: Arc<str>,
    /// What happened.
    pub operation: Operation,
    /// When the transaction committed, in microseconds since the Unix epoch.
    pub committed_at: i64,
    /// When the change left the WAL sender, in microseconds since the Unix epoch.
    pub queued_at: i64,
    /// The source transaction's full 64-bit id.
    pub transaction_id: u64,
    /// The LSN of the change's WAL record.
    pub position: u64,
}

impl Default for ChangeRow {
    /// An INSERT without key, images or context, in `public`.
    fn default() -> Self {
        Self {
            primary_key: None,
            before: "{}".to_owned(),
            after: "{}".to_owned(),
            context: Arc::from("{}"),
            schema: Arc::from("public"),
            table: Arc::from(""),
            operation: Operation::Create,
            committed_at: 0,
            queued_at: 0,
            transaction_id: 0,
            position: 0,
        }
    }
}

impl ChangeRow {
    /// The row as the audit trail's batch insert takes it.
    pub(crate) fn as_new_change(&self) -> NewChange<'_> {
        NewChange {
            primary_key: self.primary_key.as_deref(),
            before: &self.before,
            after: &self.after,
            context: &self.context,
            schema: &self.schema,
            table: &self.table,
            operation: self.operation,
            committed_at: timestamp(self.committed_at),
            queued_at: timestamp(self.queued_at),
            // A full id below 2^63 (epoch below 2^31).
            transaction_id: i64::try_from(self.transaction_id).unwrap_or(i64::MAX),
            // An LSN below 2^63 (8 EiB of WAL): the column is a bigint.
            position: i64::try_from(self.position).unwrap_or(i64::MAX),
        }
    }
}

/// µs since the Unix epoch → a timestamp.
fn timestamp(unix_micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(unix_micros).unwrap_or_default()
}

/// Where and when a change happened: the parts of a [`ChangeRow`] that do not come from the row.
#[derive(Debug, Clone)]
pub(crate) struct ChangeMeta {
    /// The context to stitch to.
    pub context: Arc<str>,
    /// Commit time, µs since the Unix epoch.
    pub committed_at: i64,
    /// Send time, µs since the Unix epoch.
    pub queued_at: i64,
    /// Transaction id (full, 64 bits).
    pub transaction_id: u64,
    /// LSN of the change.
    pub position: u64,
}

/// Builds the row of an INSERT.
pub(crate) fn insert(info: &RelationInfo, new: &[Value<'_>], meta: ChangeMeta) -> ChangeRow {
    ChangeRow {
        primary_key: primary_key(info, new),
        before: "{}".to_owned(),
        after: row_json(info, new, None, true),
        ..base(info, Operation::Create, meta)
    }
}

/// Builds the row of an UPDATE; `old` is the before-image (whole row or key) when the server sent
/// one.
pub(crate) fn update(
    info: &RelationInfo,
    old: Option<&OldRow<'_>>,
    new: &[Value<'_>],
    meta: ChangeMeta,
) -> ChangeRow {
    let full_old = old.filter(|o| o.full).map(|o| o.values.as_slice());
    ChangeRow {
        primary_key: primary_key(info, new),
        before: old.map_or_else(
            || "{}".to_owned(),
            |o| row_json(info, &o.values, None, o.full),
        ),
        after: row_json(info, new, full_old, true),
        ..base(info, Operation::Update, meta)
    }
}

/// Why an UPDATE is left out of the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum SkipReason {
    /// The row is the same before and after.
    Unchanged,
    /// Only ignored columns changed.
    IgnoredColumns,
}

impl SkipReason {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::IgnoredColumns => "ignored_columns",
        }
    }
}

/// Whether an UPDATE is left out, and why: when every column it changed is ignored, or — with
/// `skip_unchanged` — when it changed none. Decided on the values as the WAL carries them, so
/// only with the whole before-image (REPLICA IDENTITY FULL); an UPDATE that changed a primary
/// key column is always kept.
pub(crate) fn skipped_update(
    info: &RelationInfo,
    old: Option<&OldRow<'_>>,
    new: &[Value<'_>],
    skip_unchanged: bool,
) -> Option<SkipReason> {
    let old = old.filter(|old| old.full && old.values.len() == new.len())?;
    let mut changed_any = false;
    for (i, (column, (before, after))) in info
        .columns
        .iter()
        .zip(old.values.iter().zip(new))
        .enumerate()
    {
        // An unchanged TOAST value arrives without its value: it did not change.
        let changed = !matches!(after, Value::UnchangedToast) && before != after;
        if !changed {
            continue;
        }
        if !column.ignored || info.primary_key.contains(&i) {
            return None;
        }
        changed_any = true;
    }
    if changed_any {
        Some(SkipReason::IgnoredColumns)
    } else if skip_unchanged {
        Some(SkipReason::Unchanged)
    } else {
        None
    }
}

/// Builds the row of a DELETE.
pub(crate) fn delete(info: &RelationInfo, old: &OldRow<'_>, meta: ChangeMeta) -> ChangeRow {
    ChangeRow {
        primary_key: primary_key(info, &old.values),
        before: row_json(info, &old.values, None, old.full),
        after: "{}".to_owned(),
        ..base(info, Operation::Delete, meta)
    }
}

/// Builds the row of a TRUNCATE of one table.
pub(crate) fn truncate(info: &RelationInfo, meta: ChangeMeta) -> ChangeRow {
    base(info, Operation::Truncate, meta)
}

fn base(info: &RelationInfo, operation: Operation, meta: ChangeMeta) -> ChangeRow {
    let context = match &info.key_unknown {
        Some(reason) if operation != Operation::Truncate => with_key_unknown(&meta.context, reason),
        _ => meta.context,
    };
    ChangeRow {
        primary_key: None,
        before: "{}".to_owned(),
        after: "{}".to_owned(),
        context,
        schema: Arc::clone(&info.schema),
        table: Arc::clone(&info.table),
        operation,
        committed_at: meta.committed_at,
        queued_at: meta.queued_at,
        transaction_id: meta.transaction_id,
        position: meta.position,
    }
}

/// `context` (a JSON object) with [`KEY_UNKNOWN_KEY`] set to `reason`, last, so that it wins
/// over a key of the same name the application put there.
fn with_key_unknown(context: &str, reason: &str) -> Arc<str> {
    let mut out = String::with_capacity(context.len() + reason.len() + 24);
    match context.trim_end().strip_suffix('}') {
        Some(inner) => {
            out.push_str(inner);
            if !inner.trim_end().ends_with('{') {
                out.push(',');
            }
        }
        // Never happens: contexts are JSON objects (see `assembler::parse_context`).
        None => out.push('{'),
    }
    write_string(&mut out, KEY_UNKNOWN_KEY);
    out.push(':');
    write_string(&mut out, reason);
    out.push('}');
    Arc::from(out)
}

/// The JSON object of a row. Unchanged TOAST values are taken from `fill` (the full old row) or
/// left out; with `complete == false` (a key-only old row), NULLs are unknown values and left out.
fn row_json(
    info: &RelationInfo,
    values: &[Value<'_>],
    fill: Option<&[Value<'_>]>,
    complete: bool,
) -> String {
    let mut out = String::with_capacity(64 + values.len() * 16);
    out.push('{');
    let mut first = true;
    for (i, (column, value)) in info.columns.iter().zip(values).enumerate() {
        let value = match value {
            Value::UnchangedToast => match fill.and_then(|f| f.get(i)) {
                Some(filled @ (Value::Text(_) | Value::Binary(_) | Value::Null)) => *filled,
                _ => continue,
            },
            Value::Null if !complete => continue,
            other => *other,
        };
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&column.json_key);
        match value {
            Value::Null => out.push_str("null"),
            _ if column.redacted => write_string(&mut out, Redactions::MARKER),
            Value::Text(bytes) | Value::Binary(bytes) => {
                write_json(&mut out, &column.kind, &String::from_utf8_lossy(bytes));
            }
            Value::UnchangedToast => out.push_str("null"),
        }
    }
    out.push('}');
    out
}

/// The primary key of a row: the text of a one-column key, a JSON array of a composite key;
/// `None` without a key or when a key column's value is missing.
fn primary_key(info: &RelationInfo, values: &[Value<'_>]) -> Option<String> {
    let texts: Option<Vec<&[u8]>> = info
        .primary_key
        .iter()
        .map(|&i| match values.get(i) {
            Some(Value::Text(bytes) | Value::Binary(bytes)) => Some(*bytes),
            _ => None,
        })
        .collect();
    match texts?.as_slice() {
        [] => None,
        [single] => Some(String::from_utf8_lossy(single).into_owned()),
        several => {
            let mut out = String::from("[");
            for (n, (&i, bytes)) in info.primary_key.iter().zip(several).enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_json(
                    &mut out,
                    &info.columns[i].kind,
                    &String::from_utf8_lossy(bytes),
                );
            }
            out.push(']');
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ColumnInfo;
    use crate::json_value::TypeKind;

    /// `doc (id pk, title, updated_at ignored)`.
    fn doc() -> RelationInfo {
        let column = |name: &str, ignored| ColumnInfo {
            json_key: format!("\"{name}\":"),
            kind: TypeKind::Text,
            redacted: false,
            ignored,
        };
        RelationInfo {
            schema: "public".into(),
            table: "doc".into(),
            columns: vec![
                column("id", false),
                column("title", false),
                column("updated_at", true),
            ],
            primary_key: vec![0],
            key_unknown: None,
            captured: true,
        }
    }

    fn full(values: &[&'static str]) -> OldRow<'static> {
        OldRow {
            full: true,
            values: values.iter().map(|v| Value::Text(v.as_bytes())).collect(),
        }
    }

    fn text(values: &[&'static str]) -> Vec<Value<'static>> {
        values.iter().map(|v| Value::Text(v.as_bytes())).collect()
    }

    #[test]
    fn updates_of_ignored_columns_only_or_of_nothing_are_skipped() {
        let info = doc();
        let old = full(&["1", "a", "t1"]);
        let verdict = |new: &[Value<'_>], skip_unchanged| {
            skipped_update(&info, Some(&old), new, skip_unchanged)
        };
        assert_eq!(
            verdict(&text(&["1", "a", "t2"]), true),
            Some(SkipReason::IgnoredColumns)
        );
        assert_eq!(
            verdict(&text(&["1", "a", "t2"]), false),
            Some(SkipReason::IgnoredColumns)
        );
        assert_eq!(
            verdict(&text(&["1", "a", "t1"]), true),
            Some(SkipReason::Unchanged)
        );
        assert_eq!(verdict(&text(&["1", "a", "t1"]), false), None);
        // A real field changed too: kept, whole.
        assert_eq!(verdict(&text(&["1", "b", "t2"]), true), None);
        // The key changed: always kept.
        assert_eq!(verdict(&text(&["2", "a", "t2"]), true), None);
        // A NULL that became a value is a change.
        let old_null = OldRow {
            full: true,
            values: vec![Value::Text(b"1"), Value::Null, Value::Text(b"t1")],
        };
        assert_eq!(
            skipped_update(&info, Some(&old_null), &text(&["1", "a", "t1"]), true),
            None
        );
        // An unchanged TOAST value is unchanged.
        let new = vec![Value::Text(b"1"), Value::UnchangedToast, Value::Text(b"t1")];
        assert_eq!(verdict(&new, true), Some(SkipReason::Unchanged));
    }

    #[test]
    fn without_the_whole_before_image_every_update_is_kept() {
        let info = doc();
        let key_only = OldRow {
            full: false,
            values: vec![Value::Text(b"1"), Value::Null, Value::Null],
        };
        assert_eq!(
            skipped_update(&info, Some(&key_only), &text(&["1", "a", "t1"]), true),
            None
        );
        assert_eq!(
            skipped_update(&info, None, &text(&["1", "a", "t1"]), true),
            None
        );
    }

    #[test]
    fn an_ignored_key_column_still_keeps_a_key_change() {
        let mut info = doc();
        info.columns[0].ignored = true;
        let old = full(&["1", "a", "t1"]);
        assert_eq!(
            skipped_update(&info, Some(&old), &text(&["2", "a", "t2"]), true),
            None
        );
    }

    #[test]
    fn an_insert_has_an_after_image_and_its_key() {
        let info = info(
            &[
                ("id", TypeKind::Int, false),
                ("task", TypeKind::Text, false),
            ],
            vec![0],
        );
        let meta = meta();
        let row = insert(&info, &[Value::Text(b"26"), Value::Text(b"Sleep")], meta);
        assert_eq!(row.after, r#"{"id":26,"task":"Sleep"}"#);
        assert_eq!(row.primary_key.as_deref(), Some("26"));
    }

    #[test]
    fn an_unchanged_toast_value_comes_from_the_before_image() {
        let info = info(
            &[
                ("id", TypeKind::Int, false),
                ("notes", TypeKind::Text, false),
            ],
            vec![0],
        );
        let meta = meta();
        let old = OldRow {
            full: true,
            values: vec![Value::Text(b"1"), Value::Text(b"long text")],
        };
        // The TOASTed column was not touched: its value comes from the before-image.
        let row = update(
            &info,
            Some(&old),
            &[Value::Text(b"2"), Value::UnchangedToast],
            meta,
        );
        assert_eq!(row.before, r#"{"id":1,"notes":"long text"}"#);
        assert_eq!(row.after, r#"{"id":2,"notes":"long text"}"#);
    }

    #[test]
    fn a_delete_has_a_before_image() {
        let info = info(&[("id", TypeKind::Int, false)], vec![0]);
        let meta = meta();
        let row = delete(
            &info,
            &OldRow {
                full: true,
                values: vec![Value::Text(b"27")],
            },
            meta,
        );
        assert_eq!(
            (row.before.as_str(), row.after.as_str()),
            (r#"{"id":27}"#, "{}")
        );
    }

    #[test]
    fn a_truncate_has_no_images() {
        let info = info(&[], vec![]);
        let meta = meta();
        assert_eq!(truncate(&info, meta).operation, Operation::Truncate);
    }

    fn info(columns: &[(&str, TypeKind, bool)], primary_key: Vec<usize>) -> RelationInfo {
        RelationInfo {
            schema: "public".into(),
            table: "t".into(),
            columns: columns
                .iter()
                .map(|(name, kind, redacted)| ColumnInfo {
                    json_key: format!("\"{name}\":"),
                    kind: kind.clone(),
                    redacted: *redacted,
                    ignored: false,
                })
                .collect(),
            primary_key,
            key_unknown: None,
            captured: true,
        }
    }

    fn meta() -> ChangeMeta {
        ChangeMeta {
            context: r#"{"user_id":1}"#.into(),
            committed_at: 1,
            queued_at: 2,
            transaction_id: 3,
            position: 4,
        }
    }

    #[test]
    fn an_unknown_key_is_stored_as_null_with_its_reason_in_the_context() {
        let mut info = info(&[("id", TypeKind::Int, false)], vec![]);
        info.key_unknown = Some("the history does not match".into());
        let row = insert(&info, &[Value::Text(b"7")], meta());
        assert_eq!(row.primary_key, None);
        let context: serde_json::Value = serde_json::from_str(&row.context).unwrap();
        assert_eq!(
            context,
            serde_json::json!({"user_id": 1, "_bemi_key_unknown": "the history does not match"})
        );
        let empty = ChangeMeta {
            context: "{ }".into(),
            ..meta()
        };
        let row = delete(
            &info,
            &OldRow {
                full: true,
                values: vec![Value::Text(b"7")],
            },
            empty,
        );
        let context: serde_json::Value = serde_json::from_str(&row.context).unwrap();
        assert_eq!(
            context,
            serde_json::json!({"_bemi_key_unknown": "the history does not match"})
        );
        // A TRUNCATE never has a key: nothing to mark.
        assert_eq!(&*truncate(&info, meta()).context, r#"{"user_id":1}"#);
    }

    #[test]
    fn composite_keys_are_json_arrays() {
        let info = info(
            &[("a", TypeKind::Int, false), ("b", TypeKind::Text, false)],
            vec![1, 0],
        );
        let row = insert(&info, &[Value::Text(b"7"), Value::Text(b"x")], meta());
        assert_eq!(row.primary_key.as_deref(), Some(r#"["x",7]"#));
    }

    #[test]
    fn redacted_columns_hold_the_marker_in_before_and_after() {
        let info = info(
            &[
                ("id", TypeKind::Int, false),
                ("secret", TypeKind::Text, true),
            ],
            vec![0],
        );
        let old = OldRow {
            full: true,
            values: vec![Value::Text(b"1"), Value::Text(b"hunter2")],
        };
        let row = update(
            &info,
            Some(&old),
            &[Value::Text(b"1"), Value::Text(b"hunter3")],
            meta(),
        );
        assert_eq!(row.before, r#"{"id":1,"secret":"[REDACTED]"}"#);
        assert_eq!(row.after, r#"{"id":1,"secret":"[REDACTED]"}"#);
        assert!(!row.before.contains("hunter"));
    }

    #[test]
    fn unchanged_toast_without_before_image_is_left_out_not_null() {
        let info = info(
            &[("id", TypeKind::Int, false), ("big", TypeKind::Text, false)],
            vec![0],
        );
        let row = update(
            &info,
            None,
            &[Value::Text(b"1"), Value::UnchangedToast],
            meta(),
        );
        assert_eq!(row.after, r#"{"id":1}"#);
        assert_eq!(row.before, "{}");
    }

    #[test]
    fn key_only_old_rows_leave_out_unknown_columns() {
        let info = info(
            &[
                ("id", TypeKind::Int, false),
                ("task", TypeKind::Text, false),
            ],
            vec![0],
        );
        let old = OldRow {
            full: false,
            values: vec![Value::Text(b"5"), Value::Null],
        };
        let row = delete(&info, &old, meta());
        assert_eq!(row.before, r#"{"id":5}"#);
        assert_eq!(row.primary_key.as_deref(), Some("5"));
    }
}
