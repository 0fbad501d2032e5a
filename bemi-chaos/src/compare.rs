//! The judgement: `changes` against the oracle, row by row, in commit order per row.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// One row change as both sides describe it, normalized: operations as `changes` names them
/// (CREATE, UPDATE, DELETE, TRUNCATE), images as PostgreSQL's canonical `jsonb` text (`{}` when
/// absent), the key as `changes.primary_key` writes it, the context without the library's keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RowChange {
    /// The table.
    pub(crate) table: String,
    /// CREATE | UPDATE | DELETE | TRUNCATE.
    pub(crate) operation: String,
    /// The primary key as of the change (`None` for a TRUNCATE).
    pub(crate) primary_key: Option<String>,
    /// The row before, canonical jsonb text.
    pub(crate) before: String,
    /// The row after, canonical jsonb text.
    pub(crate) after: String,
    /// The context, canonical jsonb text (`{}` without one).
    pub(crate) context: String,
}

/// A difference between `changes` and the oracle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mismatch {
    /// Committed (the oracle has it) but not in `changes`, `count` times.
    Lost { change: RowChange, count: usize },
    /// In `changes` more often than committed (`count` extra copies; a duplicate, or a change
    /// with a wrong image, key or context).
    Extra { change: RowChange, count: usize },
    /// The same changes of one row, in another order: the first index that differs.
    Order {
        table: String,
        primary_key: Option<String>,
        index: usize,
        expected: RowChange,
        found: RowChange,
    },
}

impl Mismatch {
    /// What kind of mismatch, of which table (and whether `changes` marked the key unknown):
    /// the summary's grouping.
    pub(crate) fn kind(&self) -> String {
        let (what, change) = match self {
            Self::Lost { change, .. } => ("lost", change),
            Self::Extra { change, .. } => ("extra", change),
            Self::Order { found, .. } => ("order", found),
        };
        let unknown = if change.context.contains("\"_bemi_key_unknown\"") {
            ", key marked unknown"
        } else {
            ""
        };
        format!("{what} {} {}{unknown}", change.operation, change.table)
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lost { change, count } => {
                write!(f, "LOST ({count}x, committed but not in changes): {change}")
            }
            Self::Extra { change, count } => write!(
                f,
                "EXTRA ({count}x, in changes but not committed so): {change}"
            ),
            Self::Order {
                table,
                primary_key,
                index,
                expected,
                found,
            } => write!(
                f,
                "ORDER of {table} {}: change #{index} should be {expected}, is {found}",
                primary_key.as_deref().unwrap_or("(no key)")
            ),
        }
    }
}

impl fmt::Display for RowChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} key={} context={} before={} after={}",
            self.operation,
            self.table,
            self.primary_key.as_deref().unwrap_or("(none)"),
            short(&self.context),
            short(&self.before),
            short(&self.after)
        )
    }
}

/// `text`, cut to 300 characters (rows beyond 1 MB are printed by their start).
fn short(text: &str) -> String {
    match text.char_indices().nth(300) {
        Some((at, _)) => format!(
            "{}…({} bytes)",
            text.get(..at).unwrap_or_default(),
            text.len()
        ),
        None => text.to_owned(),
    }
}

/// Compares the changes `captured` (in `changes` order: WAL position) with `committed` (the
/// oracle's order: when each row change happened). Each row's changes must be the same, in the
/// same order; everything else (interleaving of rows) is free.
pub(crate) fn compare(committed: &[RowChange], captured: &[RowChange]) -> Vec<Mismatch> {
    let by_row = |changes: &[RowChange]| {
        let mut rows: BTreeMap<(String, Option<String>), Vec<RowChange>> = BTreeMap::new();
        for change in changes {
            rows.entry((change.table.clone(), change.primary_key.clone()))
                .or_default()
                .push(change.clone());
        }
        rows
    };
    let (mut expected, mut found) = (by_row(committed), by_row(captured));
    let mut mismatches = Vec::new();
    let keys: Vec<_> = expected
        .keys()
        .chain(found.keys())
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for key in keys {
        let expected = expected.remove(&key).unwrap_or_default();
        let found = found.remove(&key).unwrap_or_default();
        if expected == found {
            continue;
        }
        let mut counts: HashMap<&RowChange, isize> = HashMap::new();
        for change in &expected {
            *counts.entry(change).or_default() += 1;
        }
        for change in &found {
            *counts.entry(change).or_default() -= 1;
        }
        let mut differs = false;
        // In the row's order, so that the report reads like its history.
        let mut reported = std::collections::HashSet::new();
        for change in expected.iter().chain(&found) {
            let count = counts.get(change).copied().unwrap_or_default();
            if count == 0 || !reported.insert(change) {
                continue;
            }
            differs = true;
            mismatches.push(if count > 0 {
                Mismatch::Lost {
                    change: change.clone(),
                    count: count.unsigned_abs(),
                }
            } else {
                Mismatch::Extra {
                    change: change.clone(),
                    count: count.unsigned_abs(),
                }
            });
        }
        if !differs && let Some(index) = (0..expected.len()).find(|&i| expected[i] != found[i]) {
            mismatches.push(Mismatch::Order {
                table: key.0.clone(),
                primary_key: key.1.clone(),
                index,
                expected: expected[index].clone(),
                found: found[index].clone(),
            });
        }
    }
    mismatches
}

/// `json` (an image or a context as jsonb text) with every UTC timestamp written one way:
/// `to_jsonb` writes `…+00:00` where `changes` writes `…Z` (the same instant).
pub(crate) fn normalize(json: &str) -> String {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) => {
                let bytes = text.as_bytes();
                let timestamp = bytes.len() >= 25
                    && bytes.get(4) == Some(&b'-')
                    && bytes.get(7) == Some(&b'-')
                    && bytes.get(10) == Some(&b'T');
                if timestamp && let Some(utc) = text.strip_suffix("+00:00") {
                    *text = format!("{utc}Z");
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            serde_json::Value::Object(map) => map.values_mut().for_each(walk),
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(mut value) => {
            walk(&mut value);
            value.to_string()
        }
        Err(_) => json.to_owned(),
    }
}

/// The key `changes.primary_key` holds for a row image (a JSON object) and its key columns:
/// the text of a one-column key, a JSON array of a composite key, `None` without a key.
pub(crate) fn primary_key(row: &serde_json::Value, columns: &[String]) -> Option<String> {
    let values: Option<Vec<&serde_json::Value>> = columns
        .iter()
        .map(|column| row.get(column).filter(|value| !value.is_null()))
        .collect();
    match values?.as_slice() {
        [] => None,
        [serde_json::Value::String(text)] => Some(text.clone()),
        [single] => Some(single.to_string()),
        several => {
            Some(serde_json::Value::Array(several.iter().map(|&v| v.clone()).collect()).to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(pk: &str, operation: &str, after: &str, context: &str) -> RowChange {
        RowChange {
            table: "chaos_accounts".into(),
            operation: operation.into(),
            primary_key: Some(pk.into()),
            before: "{}".into(),
            after: after.into(),
            context: context.into(),
        }
    }

    #[test]
    fn equal_histories_have_no_mismatch_whatever_the_interleaving() {
        let a1 = change("1", "CREATE", r#"{"id": 1}"#, r#"{"seq": 1}"#);
        let b1 = change("2", "CREATE", r#"{"id": 2}"#, r#"{"seq": 2}"#);
        let a2 = change("1", "UPDATE", r#"{"id": 1, "n": 2}"#, r#"{"seq": 3}"#);
        let committed = [a1.clone(), b1.clone(), a2.clone()];
        assert_eq!(compare(&committed, &[b1, a1, a2]), vec![]);
    }

    #[test]
    fn a_lost_a_duplicated_and_a_misattributed_change_are_named() {
        let a1 = change(
            "1",
            "CREATE",
            r#"{"id": 1}"#,
            r#"{"seq": 1, "writer": "w1"}"#,
        );
        let b1 = change(
            "2",
            "CREATE",
            r#"{"id": 2}"#,
            r#"{"seq": 2, "writer": "w2"}"#,
        );
        let c1 = change(
            "3",
            "CREATE",
            r#"{"id": 3}"#,
            r#"{"seq": 3, "writer": "w1"}"#,
        );
        let mut wrong = c1.clone();
        wrong.context = r#"{"seq": 2, "writer": "w2"}"#.into();
        let mismatches = compare(
            &[a1.clone(), b1.clone(), c1.clone()],
            &[b1.clone(), b1.clone(), wrong.clone()],
        );
        assert_eq!(
            mismatches,
            vec![
                Mismatch::Lost {
                    change: a1,
                    count: 1
                },
                Mismatch::Extra {
                    change: b1,
                    count: 1
                },
                Mismatch::Lost {
                    change: c1,
                    count: 1
                },
                Mismatch::Extra {
                    change: wrong,
                    count: 1
                },
            ]
        );
        assert_eq!(mismatches[3].kind(), "extra CREATE chaos_accounts");
        let text = mismatches[3].to_string();
        assert!(text.starts_with("EXTRA (1x"), "{text}");
        assert!(
            text.contains(r#"context={"seq": 2, "writer": "w2"}"#),
            "{text}"
        );
    }

    #[test]
    fn the_same_changes_of_a_row_in_another_order_are_named() {
        let a1 = change("1", "CREATE", r#"{"id": 1}"#, "{}");
        let a2 = change("1", "DELETE", "{}", "{}");
        let mismatches = compare(&[a1.clone(), a2.clone()], &[a2.clone(), a1.clone()]);
        assert_eq!(
            mismatches,
            vec![Mismatch::Order {
                table: "chaos_accounts".into(),
                primary_key: Some("1".into()),
                index: 0,
                expected: a1,
                found: a2,
            }]
        );
    }

    #[test]
    fn utc_timestamps_are_written_one_way() {
        assert_eq!(
            normalize(
                r#"{"at": "2026-01-01T00:00:00.5+00:00", "t": ["2026-01-01T00:00:00+00:00"]}"#
            ),
            normalize(r#"{"at": "2026-01-01T00:00:00.5Z", "t": ["2026-01-01T00:00:00Z"]}"#)
        );
        assert_ne!(
            normalize(r#"{"at": "2026-01-01T00:00:00+01:00"}"#),
            normalize(r#"{"at": "2026-01-01T00:00:00Z"}"#)
        );
    }

    #[test]
    fn keys_as_changes_writes_them() {
        let row = json!({"order_id": 7, "line_no": 2, "sku": "x", "id": "a"});
        assert_eq!(primary_key(&row, &["order_id".into()]), Some("7".into()));
        assert_eq!(primary_key(&row, &["id".into()]), Some("a".into()));
        assert_eq!(
            primary_key(&row, &["order_id".into(), "line_no".into()]),
            Some("[7,2]".into())
        );
        assert_eq!(primary_key(&row, &[]), None);
        assert_eq!(primary_key(&row, &["missing".into()]), None);
    }
}
