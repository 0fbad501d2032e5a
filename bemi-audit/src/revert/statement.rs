//! The inverse of one change as a statement: CREATE → DELETE, DELETE → INSERT of the
//! before-image, UPDATE → UPDATE back to the before-values of the fields that changed.
//!
//! The images go in as one bound `jsonb` parameter each, turned back into typed values by
//! `jsonb_populate_record(NULL::schema.table, $1)`: the table's own column types parse the
//! typed JSON (timestamps, numeric with every digit, arrays, bytea, json), so nothing is
//! written into the SQL text but quoted identifiers.

use serde::Serialize;
use uuid::Uuid;

use super::REDACTED;
use super::catalog::Table;
use super::error::RevertError;
use super::selection::Selected;
use bemi_core::protocol::Operation;
use bemi_core::sql::{quote_ident, quote_table};

/// One statement of a revert.
///
/// ```
/// # fn run(plan: bemi_audit::RevertPlan) {
/// for statement in &plan.statements {
///     println!("-- {}\n{};", statement.description, statement.sql);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevertStatement {
    /// The change it undoes.
    pub change_id: Uuid,
    /// What it does, e.g. `revert UPDATE of public.todo 1: restore is_completed`.
    pub description: String,
    /// The SQL, with `$1`, `$2` for the parameters.
    pub sql: String,
    /// The parameters: JSON images, bound as `jsonb`.
    pub params: Vec<String>,
}

/// The inverse of `change` on `table`, or `None` when there is nothing to restore (an UPDATE
/// that changed no column that can be written back). `force` turns an INSERT into an upsert.
pub(crate) fn inverse(
    change: &Selected,
    table: &Table,
    force: bool,
) -> Result<Option<RevertStatement>, RevertError> {
    let refuse = |reason: String| RevertError::Unrevertable {
        change: change.id,
        row: change.row_name(),
        reason,
    };
    if table.primary_key.is_empty() {
        return Err(refuse(format!(
            "{} has no primary key, so its rows cannot be found again; add one",
            table.display_name()
        )));
    }
    let target = quote_table(&table.schema, &table.name);
    let (sql, params, what) = match change.operation {
        Operation::Truncate => {
            return Err(refuse(
                "a TRUNCATE has no row images; rebuild the rows with `bemi at TABLE TIME` \
                 (TimeTravel::table_at) as of just before it"
                    .to_owned(),
            ));
        }
        Operation::Create => {
            check_key(table, &change.after_fields()).map_err(refuse)?;
            let sql = format!(
                "DELETE FROM {target} AS _bemi_target \
                 USING jsonb_populate_record(NULL::{target}, $1::jsonb) AS _bemi_key \
                 WHERE {}",
                key_match(table)
            );
            (sql, vec![change.after.clone()], "delete the row".to_owned())
        }
        Operation::Delete => {
            let before = change.before_fields();
            check_key(table, &before).map_err(refuse)?;
            let mut columns = Vec::new();
            for field in before.keys() {
                let Some(column) = table.column(field) else {
                    return Err(refuse(missing_column(table, field)));
                };
                if !column.generated {
                    columns.push(column);
                }
            }
            let redacted: Vec<&str> = columns
                .iter()
                .filter(|c| before[&c.name] == REDACTED)
                .map(|c| c.name.as_str())
                .collect();
            if !redacted.is_empty() {
                return Err(refuse(redacted_message(&redacted)));
            }
            let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
            let overriding = if columns.iter().any(|c| c.identity_always) {
                " OVERRIDING SYSTEM VALUE"
            } else {
                ""
            };
            let mut sql = format!(
                "INSERT INTO {target} ({}){overriding} SELECT {} \
                 FROM jsonb_populate_record(NULL::{target}, $1::jsonb) AS _bemi_old",
                names.join(", "),
                names
                    .iter()
                    .map(|n| format!("_bemi_old.{n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            if force {
                sql.push_str(&upsert(table, &columns));
            }
            (
                sql,
                vec![change.before.clone()],
                "insert the row".to_owned(),
            )
        }
        Operation::Update => {
            let before = change.before_fields();
            check_key(table, &change.after_fields()).map_err(refuse)?;
            let mut restore = Vec::new();
            for field in &change.changed {
                if !before.contains_key(field) {
                    // Not in the before-image (a column added since): nothing to restore.
                    continue;
                }
                let Some(column) = table.column(field) else {
                    return Err(refuse(missing_column(table, field)));
                };
                if column.generated {
                    continue;
                }
                if column.identity_always {
                    return Err(refuse(format!(
                        "it changed the identity column {field} (GENERATED ALWAYS), which an \
                         UPDATE cannot set back"
                    )));
                }
                if before[field] == REDACTED {
                    return Err(refuse(redacted_message(&[field])));
                }
                restore.push(field.as_str());
            }
            if restore.is_empty() {
                return Ok(None);
            }
            let sets: Vec<String> = restore
                .iter()
                .map(|f| {
                    let name = quote_ident(f);
                    format!("{name} = _bemi_old.{name}")
                })
                .collect();
            let sql = format!(
                "UPDATE {target} AS _bemi_target SET {} \
                 FROM jsonb_populate_record(NULL::{target}, $1::jsonb) AS _bemi_old, \
                      jsonb_populate_record(NULL::{target}, $2::jsonb) AS _bemi_key \
                 WHERE {}",
                sets.join(", "),
                key_match(table)
            );
            (
                sql,
                vec![change.before.clone(), change.after.clone()],
                format!("restore {}", restore.join(", ")),
            )
        }
    };
    Ok(Some(RevertStatement {
        change_id: change.id,
        description: format!(
            "revert {} of {} (change {}): {what}",
            change.operation,
            change.row_name(),
            change.id
        ),
        sql,
        params,
    }))
}

/// `_bemi_target.k1 = _bemi_key.k1 AND …` over the primary key.
pub(crate) fn key_match(table: &Table) -> String {
    table
        .primary_key
        .iter()
        .map(|column| {
            let name = quote_ident(column);
            format!("_bemi_target.{name} = _bemi_key.{name}")
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The image that locates the row must hold every key column, unredacted.
fn check_key(
    table: &Table,
    image: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    for column in &table.primary_key {
        match image.get(column) {
            None | Some(serde_json::Value::Null) => {
                return Err(format!(
                    "its image has no value for the key column {column} (the primary key of {} \
                     changed since?)",
                    table.display_name()
                ));
            }
            Some(value) if value == REDACTED => {
                return Err(redacted_message(&[column.as_str()]));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `ON CONFLICT (key) DO UPDATE SET …` (or `DO NOTHING` when every column is a key column).
pub(crate) fn upsert(table: &Table, columns: &[&super::catalog::Column]) -> String {
    let key: Vec<String> = table.primary_key.iter().map(|c| quote_ident(c)).collect();
    let sets: Vec<String> = columns
        .iter()
        .filter(|c| !table.primary_key.contains(&c.name) && !c.identity_always)
        .map(|c| {
            let name = quote_ident(&c.name);
            format!("{name} = EXCLUDED.{name}")
        })
        .collect();
    if sets.is_empty() {
        format!(" ON CONFLICT ({}) DO NOTHING", key.join(", "))
    } else {
        format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            key.join(", "),
            sets.join(", ")
        )
    }
}

pub(crate) fn missing_column(table: &Table, field: &str) -> String {
    format!(
        "{} has no column {field} any more (dropped or renamed since the change); restore it by \
         hand",
        table.display_name()
    )
}

pub(crate) fn redacted_message(columns: &[&str]) -> String {
    format!(
        "the audit trail holds {REDACTED:?} instead of the value{} of {} (the worker redacts \
         {}), so the old value cannot be restored; restore it from a backup",
        if columns.len() == 1 { "" } else { "s" },
        columns.join(", "),
        if columns.len() == 1 { "it" } else { "them" },
    )
}

#[cfg(test)]
mod tests {
    use super::super::catalog::Column;
    use super::*;
    use chrono::Utc;

    fn column(name: &str) -> Column {
        Column {
            name: name.to_owned(),
            identity_always: false,
            generated: false,
            json: false,
        }
    }

    fn table() -> Table {
        let mut id = column("id");
        id.identity_always = true;
        let mut total = column("total");
        total.generated = true;
        Table {
            schema: "public".into(),
            name: "my \"table\"".into(),
            columns: vec![id, column("task"), column("done"), total],
            primary_key: vec!["id".into()],
        }
    }

    fn selected(operation: Operation, before: &str, after: &str, changed: &[&str]) -> Selected {
        Selected {
            id: Uuid::nil(),
            primary_key: Some("1".into()),
            schema: "public".into(),
            table: "my \"table\"".into(),
            operation,
            committed_at: Utc::now(),
            position: 1,
            source: None,
            before: before.into(),
            after: after.into(),
            changed: changed.iter().map(ToString::to_string).collect(),
        }
    }

    const ROW: &str = r#"{"id": 1, "task": "x'); DROP TABLE t; --", "done": false, "total": 2}"#;

    #[test]
    fn a_create_becomes_a_delete_by_key() {
        let change = selected(Operation::Create, "{}", ROW, &["id", "task", "done"]);
        let statement = inverse(&change, &table(), false).unwrap().unwrap();
        assert_eq!(
            statement.sql,
            "DELETE FROM \"public\".\"my \"\"table\"\"\" AS _bemi_target USING \
             jsonb_populate_record(NULL::\"public\".\"my \"\"table\"\"\", $1::jsonb) AS _bemi_key \
             WHERE _bemi_target.\"id\" = _bemi_key.\"id\""
        );
        assert_eq!(statement.params, [ROW]);
        assert!(!statement.sql.contains("DROP"));
    }

    #[test]
    fn a_delete_becomes_an_insert_without_generated_columns() {
        let change = selected(
            Operation::Delete,
            ROW,
            "{}",
            &["id", "task", "done", "total"],
        );
        let statement = inverse(&change, &table(), false).unwrap().unwrap();
        assert!(
            statement.sql.starts_with(
                "INSERT INTO \"public\".\"my \"\"table\"\"\" (\"done\", \"id\", \"task\") \
                 OVERRIDING SYSTEM VALUE SELECT _bemi_old.\"done\", _bemi_old.\"id\", \
                 _bemi_old.\"task\" FROM jsonb_populate_record("
            ),
            "{}",
            statement.sql
        );
        assert!(!statement.sql.contains("ON CONFLICT"));
        let forced = inverse(&change, &table(), true).unwrap().unwrap();
        assert!(
            forced.sql.ends_with(
                " ON CONFLICT (\"id\") DO UPDATE SET \"done\" = EXCLUDED.\"done\", \
                 \"task\" = EXCLUDED.\"task\""
            ),
            "{}",
            forced.sql
        );
    }

    #[test]
    fn an_update_restores_only_the_changed_writable_fields() {
        let after = r#"{"id": 1, "task": "y", "done": true, "total": 3}"#;
        let change = selected(Operation::Update, ROW, after, &["done", "task", "total"]);
        let statement = inverse(&change, &table(), false).unwrap().unwrap();
        assert!(
            statement
                .sql
                .contains("SET \"done\" = _bemi_old.\"done\", \"task\" = _bemi_old.\"task\" FROM"),
            "{}",
            statement.sql
        );
        assert_eq!(statement.params, [ROW, after]);
        assert!(statement.description.ends_with("restore done, task"));
        let nothing = selected(Operation::Update, ROW, ROW, &[]);
        assert_eq!(inverse(&nothing, &table(), false).unwrap(), None);
    }

    #[test]
    fn refusals_say_why() {
        let reason = |change: Selected, table: &Table| match inverse(&change, table, true) {
            Err(RevertError::Unrevertable { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        let redacted = r#"{"id": 1, "task": "[REDACTED]", "done": false}"#;
        let text = reason(selected(Operation::Delete, redacted, "{}", &[]), &table());
        assert!(
            text.contains("task") && text.contains("[REDACTED]"),
            "{text}"
        );
        let text = reason(selected(Operation::Truncate, "{}", "{}", &[]), &table());
        assert!(text.contains("bemi at"), "{text}");
        let dropped = r#"{"id": 1, "gone": 1}"#;
        let text = reason(selected(Operation::Delete, dropped, "{}", &[]), &table());
        assert!(text.contains("no column gone"), "{text}");
        let mut keyless = table();
        keyless.primary_key.clear();
        let text = reason(selected(Operation::Create, "{}", ROW, &[]), &keyless);
        assert!(text.contains("no primary key"), "{text}");
        let text = reason(
            selected(Operation::Create, "{}", r#"{"task": 1}"#, &[]),
            &table(),
        );
        assert!(text.contains("key column id"), "{text}");
        let update = selected(Operation::Update, ROW, r#"{"id": 2}"#, &["id"]);
        let text = reason(update, &table());
        assert!(text.contains("identity column id"), "{text}");
    }
}
