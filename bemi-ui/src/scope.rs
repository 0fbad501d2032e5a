//! [`Scope`]: what one audience may see of the audit trail — a host app showing each of its
//! customers that customer's own history.
//!
//! The authorization callback returns it with the request's [`Access`](crate::Access). Every
//! endpoint applies it: the lists, the API and the exports only query changes inside it; a
//! change, a row or a table outside it is a 404, exactly as if it did not exist; hidden columns
//! and context keys are replaced by [`HIDDEN`] in every page, JSON body and export, and a
//! filter that names one is a 404 too (its answers would tell the hidden values).

use std::collections::BTreeSet;

use bemi_audit::{Change, ChangeQuery};
use serde_json::{Map, Value};

/// What a hidden value is replaced with.
pub const HIDDEN: &str = "[HIDDEN]";

/// What one request may see: forced context filters, a set of tables, and a field policy.
/// The default sees everything.
///
/// ```
/// use bemi_ui::{Access, Scope};
///
/// let scope = Scope::new()
///     .context("tenant_id", 42)
///     .tables(["todo", "public.project"])
///     .hide_columns(["password_hash", "todo.internal_note"])
///     .hide_context_keys(["ip"]);
/// let access = Access::read().scope(scope);
/// assert!(!access.scope_ref().is_everything());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    context: Map<String, Value>,
    tables: Option<BTreeSet<String>>,
    hidden_columns: BTreeSet<String>,
    hidden_context: BTreeSet<String>,
}

impl Scope {
    /// Everything, nothing hidden.
    ///
    /// ```
    /// assert!(bemi_ui::Scope::new().is_everything());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Only changes whose context has `key` equal to `value` (e.g. `tenant_id = 42`). Several
    /// must all hold. Changes without context (plain SQL) are outside.
    ///
    /// ```
    /// let scope = bemi_ui::Scope::new().context("tenant_id", 42);
    /// ```
    #[must_use]
    pub fn context(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.context.insert(key.into(), value.into());
        self
    }

    /// Only changes of these tables (`todo`, in any schema, or `public.todo`).
    ///
    /// ```
    /// let scope = bemi_ui::Scope::new().tables(["todo"]);
    /// ```
    #[must_use]
    pub fn tables<I, S>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tables = Some(tables.into_iter().map(Into::into).collect());
        self
    }

    /// Columns whose values are shown as [`HIDDEN`]: `column` in every table, or
    /// `table.column`. When any column is hidden, the statement text (the context's `SQL` key,
    /// which may quote values) is hidden too.
    ///
    /// ```
    /// let scope = bemi_ui::Scope::new().hide_columns(["password_hash"]);
    /// ```
    #[must_use]
    pub fn hide_columns<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hidden_columns
            .extend(columns.into_iter().map(Into::into));
        self
    }

    /// Context keys whose values are shown as [`HIDDEN`] (e.g. `ip`, `user_agent`).
    ///
    /// ```
    /// let scope = bemi_ui::Scope::new().hide_context_keys(["ip"]);
    /// ```
    #[must_use]
    pub fn hide_context_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hidden_context.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Whether this scope sees everything, nothing hidden.
    ///
    /// ```
    /// assert!(!bemi_ui::Scope::new().tables(["todo"]).is_everything());
    /// ```
    #[must_use]
    pub fn is_everything(&self) -> bool {
        *self == Self::default()
    }

    /// Whether this scope reaches every row of its tables: no forced filter, nothing hidden
    /// (what a restore, which rewrites whole tables, needs).
    pub(crate) fn reaches_whole_tables(&self) -> bool {
        self.context.is_empty() && self.hidden_columns.is_empty() && self.hidden_context.is_empty()
    }

    /// `query` restricted to this scope.
    pub(crate) fn restrict(&self, mut query: ChangeQuery) -> ChangeQuery {
        query = query.require_context(self.context.clone());
        if let Some(tables) = &self.tables {
            query = query.within_tables(tables);
        }
        query
    }

    /// Whether the table `schema.table` is inside.
    pub(crate) fn admits_table(&self, schema: &str, table: &str) -> bool {
        self.tables.as_ref().is_none_or(|tables| {
            tables.contains(table) || tables.contains(&format!("{schema}.{table}"))
        })
    }

    /// Whether a table named as a URL names it (`todo` or `schema.todo`) may be inside: with a
    /// table set, it must be named in it (a bare name when the set has it bare).
    pub(crate) fn admits_table_name(&self, name: &str) -> bool {
        match name.split_once('.') {
            Some((schema, table)) => self.admits_table(schema, table),
            None => self
                .tables
                .as_ref()
                .is_none_or(|tables| tables.contains(name)),
        }
    }

    /// Whether `change` is inside (its table, and its context holds every forced pair).
    pub(crate) fn admits(&self, change: &Change) -> bool {
        self.admits_parts(&change.schema, &change.table, &change.context)
    }

    fn admits_parts(&self, schema: &str, table: &str, context: &Value) -> bool {
        self.admits_table(schema, table)
            && self
                .context
                .iter()
                .all(|(key, value)| context.get(key) == Some(value))
    }

    /// Whether every change of `ids` exists and is inside (a revert's plan).
    pub(crate) async fn admits_all(
        &self,
        pool: &sqlx::PgPool,
        ids: &[uuid::Uuid],
    ) -> Result<bool, sqlx::Error> {
        if self.is_everything() {
            return Ok(true);
        }
        let rows: Vec<(String, String, Value)> =
            sqlx::query_as("SELECT schema, \"table\", context FROM changes WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(pool)
                .await?;
        Ok(rows.len() >= ids.len()
            && rows
                .iter()
                .all(|(schema, table, context)| self.admits_parts(schema, table, context)))
    }

    /// Whether a filter on the context key `key` would tell hidden values.
    pub(crate) fn hides_context_key(&self, key: &str) -> bool {
        self.hidden_context.contains(key)
            || (key == bemi_core::protocol::SQL_KEY && !self.hidden_columns.is_empty())
    }

    /// Whether `column` of `table` (any table when `None`) is hidden.
    pub(crate) fn hides_column(&self, table: Option<&str>, column: &str) -> bool {
        self.hidden_columns.contains(column)
            || table.is_some_and(|table| {
                let bare = table.rsplit('.').next().unwrap_or(table);
                self.hidden_columns.contains(&format!("{bare}.{column}"))
            })
            || (table.is_none()
                && self
                    .hidden_columns
                    .iter()
                    .any(|hidden| hidden.rsplit_once('.').is_some_and(|(_, c)| c == column)))
    }

    /// A revert's statements and conflicts as this scope may see them: the statements without
    /// their parameters (the rows' images: hidden values), conflicts with hidden values
    /// replaced and later changes outside the scope emptied.
    pub(crate) fn redact_revert(
        &self,
        statements: &mut [bemi_audit::RevertStatement],
        conflicts: &mut [bemi_audit::Conflict],
    ) {
        if self.is_everything() {
            return;
        }
        for statement in statements {
            statement.params.clear();
        }
        for conflict in conflicts {
            match &mut conflict.reason {
                bemi_audit::ConflictReason::ChangedLater { change } => {
                    let inside = self.admits(change);
                    let mut redacted = self.redact((**change).clone());
                    if !inside {
                        redacted.context = Value::Object(Map::new());
                        redacted.before = Value::Object(Map::new());
                        redacted.after = Value::Object(Map::new());
                    }
                    **change = redacted;
                }
                bemi_audit::ConflictReason::RowDiffers {
                    current: Some(Value::Object(fields)),
                } => {
                    for (column, value) in fields.iter_mut() {
                        if self.hides_column(Some(&conflict.table), column) {
                            *value = Value::String(HIDDEN.to_owned());
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// `change` with its hidden values replaced by [`HIDDEN`].
    pub(crate) fn redact(&self, mut change: Change) -> Change {
        if self.hidden_columns.is_empty() && self.hidden_context.is_empty() {
            return change;
        }
        let table = change.table.clone();
        for image in [&mut change.before, &mut change.after] {
            if let Value::Object(fields) = image {
                for (column, value) in fields.iter_mut() {
                    if self.hides_column(Some(&table), column) {
                        *value = Value::String(HIDDEN.to_owned());
                    }
                }
            }
        }
        if let Value::Object(context) = &mut change.context {
            for (key, value) in context.iter_mut() {
                if self.hides_context_key(key) {
                    *value = Value::String(HIDDEN.to_owned());
                }
            }
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(table: &str, context: Value) -> Change {
        serde_json::from_value(json!({
            "id": "00000000-0000-0000-0000-000000000000",
            "primary_key": "1",
            "before": {"id": 1, "secret": "s", "note": "n"},
            "after": {"id": 1, "secret": "t", "note": "m"},
            "context": context,
            "database": "app",
            "schema": "public",
            "table": table,
            "operation": "UPDATE",
            "committed_at": "2026-01-01T00:00:00Z",
            "queued_at": "2026-01-01T00:00:00Z",
            "created_at": "2026-01-01T00:00:00Z",
            "transaction_id": 1,
            "position": 1,
        }))
        .unwrap()
    }

    #[test]
    fn a_scope_admits_its_tenant_and_tables_only() {
        let scope = Scope::new().context("tenant_id", 42).tables(["todo"]);
        assert!(scope.admits(&change("todo", json!({"tenant_id": 42, "user_id": 1}))));
        assert!(!scope.admits(&change("todo", json!({"tenant_id": 43}))));
        assert!(!scope.admits(&change("todo", json!({"tenant_id": "42"}))));
        assert!(!scope.admits(&change("todo", json!({}))));
        assert!(!scope.admits(&change("invoice", json!({"tenant_id": 42}))));
        assert!(scope.admits_table_name("todo") && scope.admits_table_name("public.todo"));
        assert!(!scope.admits_table_name("invoice"));
        let qualified = Scope::new().tables(["public.todo"]);
        assert!(qualified.admits_table_name("public.todo"));
        assert!(
            !qualified.admits_table_name("todo"),
            "another schema's todo"
        );
        assert!(!qualified.admits_table_name("other.todo"));
    }

    #[test]
    fn hidden_values_are_replaced_everywhere() {
        let scope = Scope::new()
            .hide_columns(["todo.secret"])
            .hide_context_keys(["ip"]);
        let redacted = scope.redact(change(
            "todo",
            json!({"ip": "10.0.0.1", "user_id": 1, "SQL": "UPDATE todo SET secret = 't'"}),
        ));
        let text = serde_json::to_string(&redacted).unwrap();
        assert!(!text.contains("10.0.0.1") && !text.contains("\"t\"") && !text.contains("SET"));
        assert_eq!(redacted.after["secret"], HIDDEN);
        assert_eq!(redacted.after["note"], "m");
        assert_eq!(redacted.context["user_id"], 1);
        assert!(scope.hides_column(None, "secret") && !scope.hides_column(None, "note"));
        assert!(scope.hides_context_key("ip") && scope.hides_context_key("SQL"));
        // Another table's `secret` is not hidden by `todo.secret`.
        let other = scope.redact(change("invoice", json!({})));
        assert_eq!(other.after["secret"], "t");
    }
}
