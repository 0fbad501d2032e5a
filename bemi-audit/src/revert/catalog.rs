//! What a revert needs to know about a table of the source database: its columns (identity,
//! generated, json) and its primary key, from the catalog.

use sqlx::{Executor, Postgres};

/// One column of a source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub name: String,
    /// `GENERATED ALWAYS AS IDENTITY`: an INSERT needs `OVERRIDING SYSTEM VALUE`, an UPDATE
    /// cannot set it.
    pub identity_always: bool,
    /// `GENERATED ALWAYS AS (…) STORED`: never written, PostgreSQL computes it.
    pub generated: bool,
    /// `json` or `json[]`: no equality operator, compared as jsonb.
    pub json: bool,
}

/// A source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// The primary key's columns, in key order (empty: the table has none).
    pub primary_key: Vec<String>,
}

impl Table {
    pub(crate) fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// `schema.table` for messages.
    pub(crate) fn display_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Columns in order, with their place in the primary key (1-based; 0: not in it). `indkey` is
/// an `int2vector`, whose subscripts start at 0.
const COLUMNS_SQL: &str = "SELECT a.attname::text, a.attidentity = 'a', a.attgenerated <> '', \
       a.atttypid IN ('json'::regtype, '_json'::regtype), \
       COALESCE(array_position(i.indkey::int2[], a.attnum) \
                - array_lower(i.indkey::int2[], 1) + 1, 0)::int4 \
  FROM pg_class c \
  JOIN pg_namespace n ON n.oid = c.relnamespace \
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
  LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
 ORDER BY a.attnum";

/// The table `schema.name` of the source, or `None` if it does not exist (any more).
pub(crate) async fn describe<'c, E>(
    executor: E,
    schema: &str,
    name: &str,
) -> Result<Option<Table>, sqlx::Error>
where
    E: Executor<'c, Database = Postgres>,
{
    let rows: Vec<(String, bool, bool, bool, i32)> = sqlx::query_as(COLUMNS_SQL)
        .bind(schema)
        .bind(name)
        .fetch_all(executor)
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut key: Vec<(i32, String)> = rows
        .iter()
        .filter(|row| row.4 > 0)
        .map(|row| (row.4, row.0.clone()))
        .collect();
    key.sort();
    Ok(Some(Table {
        schema: schema.to_owned(),
        name: name.to_owned(),
        primary_key: key.into_iter().map(|(_, column)| column).collect(),
        columns: rows
            .into_iter()
            .map(|(name, identity_always, generated, json, _)| Column {
                name,
                identity_always,
                generated,
                json,
            })
            .collect(),
    }))
}
