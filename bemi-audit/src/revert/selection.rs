//! The changes a revert undoes, read from the `changes` table with their images as JSON text
//! (so that numbers keep every digit on their way back into the source) and the fields that
//! changed (compared as jsonb, exactly).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool, Row as _};
use uuid::Uuid;

use crate::query::ChangeQuery;
use bemi_core::protocol::Operation;

const SELECT: &str = "SELECT id, primary_key, schema, \"table\", operation, committed_at, \
       position, source, before::text AS before_text, after::text AS after_text, \
       ARRAY(SELECT field FROM jsonb_object_keys(before || after) AS field \
              WHERE before -> field IS DISTINCT FROM after -> field ORDER BY field) AS changed \
  FROM changes";

/// One change to undo.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Selected {
    pub id: Uuid,
    pub primary_key: Option<String>,
    pub schema: String,
    pub table: String,
    pub operation: Operation,
    pub committed_at: DateTime<Utc>,
    pub position: i64,
    /// The source cluster ([`Change::source`](crate::Change::source)).
    pub source: Option<String>,
    /// The before-image as stored (jsonb text).
    pub before: String,
    /// The after-image as stored (jsonb text).
    pub after: String,
    /// The fields whose values differ between the images.
    pub changed: Vec<String>,
}

impl Selected {
    /// `public.todo 26`, for messages.
    pub(super) fn row_name(&self) -> String {
        format!(
            "{}.{} {}",
            self.schema,
            self.table,
            self.primary_key.as_deref().unwrap_or("(no key)")
        )
    }

    /// The before-image's fields (values only for checks: numbers may be rounded here).
    pub(super) fn before_fields(&self) -> Map<String, Value> {
        fields(&self.before)
    }

    /// The after-image's fields (values only for checks).
    pub(super) fn after_fields(&self) -> Map<String, Value> {
        fields(&self.after)
    }
}

fn fields(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

impl<'r> FromRow<'r, PgRow> for Selected {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            primary_key: row.try_get("primary_key")?,
            schema: row.try_get("schema")?,
            table: row.try_get("table")?,
            operation: crate::change::operation_column(row)?,
            committed_at: row.try_get("committed_at")?,
            position: row.try_get("position")?,
            source: crate::change::source_column(row),
            before: row.try_get("before_text")?,
            after: row.try_get("after_text")?,
            changed: row.try_get("changed")?,
        })
    }
}

/// The changes matching `query`, oldest first, at most `limit`.
pub(crate) async fn load(
    pool: &PgPool,
    query: &ChangeQuery,
    limit: u64,
) -> Result<Vec<Selected>, sqlx::Error> {
    let mut builder = query.clone().oldest_first().limit(limit).build(SELECT);
    builder.build_query_as::<Selected>().fetch_all(pool).await
}
