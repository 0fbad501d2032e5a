//! Before a revert writes anything: did any row change after the changes being reverted?
//!
//! Two checks. In the audit trail: a later change of the same row (or a TRUNCATE of its table)
//! that is not being reverted. In the source database: the row as it is now must be exactly as
//! the last change being reverted left it (or absent after a DELETE) — this catches changes the
//! worker has not captured yet. Inside the revert's transaction the second check locks the rows
//! (`FOR UPDATE`), so nothing can slip in between the check and the writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, FromRow, PgConnection, PgPool, Row as _};
use uuid::Uuid;

use super::REDACTED;
use super::catalog::Table;
use super::error::{Conflict, ConflictReason};
use super::selection::Selected;
use super::statement::key_match;
use crate::change::Change;
use crate::query::ChangeQuery;
use bemi_core::protocol::Operation;
use bemi_core::sql::{quote_ident, quote_table};

/// For each row (unnested arrays), its first change after the earliest change being reverted
/// that is not being reverted. Served by the index `("table", primary_key, committed_at)`.
const LATER_CHANGES_SQL: &str = "SELECT k.ordinal, later.* \
  FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[]) \
       WITH ORDINALITY AS k(schema, tbl, pk, committed_at, position, ordinal) \
  CROSS JOIN LATERAL ( \
    SELECT c.id, c.primary_key, c.before, c.after, c.context, c.database, c.schema, c.\"table\", \
           c.operation, c.committed_at, c.queued_at, c.created_at, c.transaction_id, c.position, \
           c.source \
      FROM changes c \
     WHERE c.\"table\" = k.tbl AND c.schema = k.schema AND c.database = $6 \
       AND ($8::boolean IS NULL OR c.source = coalesce($9, '')) \
       AND ($10::text IS NULL OR c.source = '' OR c.source = $10) \
       AND (c.primary_key = k.pk OR (c.primary_key IS NULL AND c.operation = 'TRUNCATE')) \
       AND c.committed_at >= k.committed_at \
       AND (c.committed_at, c.position) > (k.committed_at, k.position) \
       AND c.id <> ALL ($7::uuid[]) \
     ORDER BY c.committed_at, c.position, c.id LIMIT 1 \
  ) later \
  ORDER BY k.ordinal";

/// A row's identity in the audit trail.
type RowKey = (String, String, String);

fn row_key(change: &Selected) -> RowKey {
    (
        change.schema.clone(),
        change.table.clone(),
        change.primary_key.clone().unwrap_or_default(),
    )
}

/// Later changes in the audit trail of the rows that `selected` (oldest first) touched, among
/// the changes of the database and source cluster that `query` selected from.
pub(crate) async fn later_changes(
    pool: &PgPool,
    query: &ChangeQuery,
    selected: &[Selected],
) -> Result<Vec<Conflict>, sqlx::Error> {
    let database = query.database_filter().unwrap_or_default();
    let (exact_source, source_or_unrecorded) = query.source_filters();
    let mut first: BTreeMap<RowKey, (DateTime<Utc>, i64)> = BTreeMap::new();
    for change in selected {
        first
            .entry(row_key(change))
            .or_insert((change.committed_at, change.position));
    }
    let keys: Vec<&RowKey> = first.keys().collect();
    let (mut schemas, mut tables, mut pks, mut times, mut positions) =
        (vec![], vec![], vec![], vec![], vec![]);
    for ((schema, table, pk), (at, position)) in &first {
        schemas.push(schema.as_str());
        tables.push(table.as_str());
        pks.push(pk.as_str());
        times.push(*at);
        positions.push(*position);
    }
    let ids: Vec<Uuid> = selected.iter().map(|c| c.id).collect();
    let rows: Vec<Later> = sqlx::query_as(LATER_CHANGES_SQL)
        .bind(schemas)
        .bind(tables)
        .bind(pks)
        .bind(times)
        .bind(positions)
        .bind(database)
        .bind(ids)
        .bind(exact_source.map(|_| true))
        .bind(exact_source.flatten())
        .bind(source_or_unrecorded)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|later| {
            let (schema, table, primary_key) = (*keys.get(later.ordinal - 1)?).clone();
            Some(Conflict {
                schema,
                table,
                primary_key,
                reason: ConflictReason::ChangedLater {
                    change: Box::new(later.change),
                },
            })
        })
        .collect())
}

/// A row of [`LATER_CHANGES_SQL`].
struct Later {
    ordinal: usize,
    change: Change,
}

impl<'r> FromRow<'r, PgRow> for Later {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let ordinal: i64 = row.try_get("ordinal")?;
        Ok(Self {
            ordinal: usize::try_from(ordinal).unwrap_or(0),
            change: Change::from_row(row)?,
        })
    }
}

/// The rows of the source that are not as the last change being reverted left them. With
/// `lock`, the rows found are locked until the end of the transaction. Rows in `skip` (already
/// known to conflict) are not looked at.
pub(crate) async fn live_rows(
    conn: &mut PgConnection,
    selected: &[Selected],
    tables: &HashMap<(String, String), Table>,
    skip: &[Conflict],
    lock: bool,
) -> Result<Vec<Conflict>, sqlx::Error> {
    let skip: BTreeSet<RowKey> = skip
        .iter()
        .map(|c| (c.schema.clone(), c.table.clone(), c.primary_key.clone()))
        .collect();
    let mut last: BTreeMap<RowKey, &Selected> = BTreeMap::new();
    for change in selected {
        last.insert(row_key(change), change);
    }
    let mut conflicts = Vec::new();
    for (key, change) in last {
        if skip.contains(&key) {
            continue;
        }
        let Some(table) = tables.get(&(change.schema.clone(), change.table.clone())) else {
            continue;
        };
        let (image, present) = match change.operation {
            Operation::Delete => (&change.before, false),
            _ => (&change.after, true),
        };
        let fields = if present {
            change.after_fields()
        } else {
            Default::default()
        };
        let sql = live_sql(table, &fields, lock);
        let found: Option<(String, bool)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(image)
            .fetch_optional(&mut *conn)
            .await?;
        let current = found
            .as_ref()
            .map(|(row, _)| serde_json::from_str(row).unwrap_or(Value::Null));
        let as_expected = match found {
            Some((_, same)) => present && same,
            None => !present,
        };
        if !as_expected {
            let (schema, table, primary_key) = key;
            conflicts.push(Conflict {
                schema,
                table,
                primary_key,
                reason: ConflictReason::RowDiffers { current },
            });
        }
    }
    Ok(conflicts)
}

/// `SELECT to_jsonb(row)::text, <row equals the image> FROM table … WHERE <key matches>`.
/// Columns compare by their text output (every type has one; json as jsonb); generated
/// columns and redacted values are left out.
fn live_sql(table: &Table, image: &serde_json::Map<String, Value>, lock: bool) -> String {
    let target = quote_table(&table.schema, &table.name);
    let comparisons: Vec<String> = table
        .columns
        .iter()
        .filter(|c| !c.generated)
        .filter(|c| image.get(&c.name).is_some_and(|v| v != REDACTED))
        .map(|c| {
            let name = quote_ident(&c.name);
            if c.json {
                format!(
                    "to_jsonb(_bemi_target.{name})::text IS NOT DISTINCT FROM \
                     to_jsonb(_bemi_key.{name})::text"
                )
            } else {
                format!("_bemi_target.{name}::text IS NOT DISTINCT FROM _bemi_key.{name}::text")
            }
        })
        .collect();
    let same = if comparisons.is_empty() {
        "true".to_owned()
    } else {
        comparisons.join(" AND ")
    };
    format!(
        "SELECT to_jsonb(_bemi_target)::text, ({same}) \
           FROM {target} AS _bemi_target, \
                jsonb_populate_record(NULL::{target}, $1::jsonb) AS _bemi_key \
          WHERE {}{}",
        key_match(table),
        if lock {
            " FOR UPDATE OF _bemi_target"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::super::catalog::Column;
    use super::*;
    use serde_json::json;

    #[test]
    fn the_live_check_compares_writable_unredacted_columns_as_text() {
        let column = |name: &str, json: bool, generated: bool| Column {
            name: name.to_owned(),
            identity_always: false,
            generated,
            json,
        };
        let table = Table {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                column("id", false, false),
                column("meta", true, false),
                column("secret", false, false),
                column("total", false, true),
                column("later", false, false),
            ],
            primary_key: vec!["id".into()],
        };
        let Value::Object(image) =
            json!({"id": 1, "meta": {"a": 1}, "secret": "[REDACTED]", "total": 2})
        else {
            unreachable!("an object literal")
        };
        let sql = live_sql(&table, &image, true);
        assert_eq!(
            sql.split_whitespace().collect::<Vec<_>>().join(" "),
            "SELECT to_jsonb(_bemi_target)::text, (_bemi_target.\"id\"::text IS NOT DISTINCT \
             FROM _bemi_key.\"id\"::text AND to_jsonb(_bemi_target.\"meta\")::text IS NOT \
             DISTINCT FROM to_jsonb(_bemi_key.\"meta\")::text) FROM \"public\".\"t\" AS \
             _bemi_target, jsonb_populate_record(NULL::\"public\".\"t\", $1::jsonb) AS _bemi_key \
             WHERE _bemi_target.\"id\" = _bemi_key.\"id\" FOR UPDATE OF _bemi_target"
        );
        let absent = live_sql(&table, &Default::default(), false);
        assert!(absent.contains("(true)") && !absent.contains("FOR UPDATE"));
    }
}
