//! [`TimeTravel`]: a row or a whole table as it was at an instant, and the history of one row,
//! rebuilt from the `changes` table.
//!
//! The state of a row at `t` is the after-image of its last change committed at or before `t`
//! — unless that change is a DELETE, or a TRUNCATE of the table came later (TRUNCATE changes
//! have no primary key: they end every row of their table at once). Changes are ordered by
//! `(committed_at, position)`, the order in which they happened.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use futures_util::stream::{self, BoxStream, StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Executor, FromRow, Postgres, Row as _};

use super::change::Change;
use bemi_core::protocol::Operation;

/// The columns of a [`Change`], which every query of this module selects.
#[cfg(test)]
const COLUMNS: &str = "id, primary_key, before, after, context, database, schema, \"table\", \
                       operation, committed_at, queued_at, created_at, transaction_id, position, source";

/// The last change of one row at or before an instant, and whether a TRUNCATE of its table
/// came after it (by then). `$1` table, `$2` schema or NULL, `$3` database or NULL, `$4`
/// primary key, `$5` instant. Both lookups are served by the index
/// `("table", primary_key, committed_at)` (TRUNCATE rows have a NULL primary key).
const ROW_AT_SQL: &str = "SELECT latest.*, EXISTS ( \
       SELECT 1 FROM changes t \
        WHERE t.\"table\" = latest.\"table\" AND t.schema = latest.schema \
          AND t.database = latest.database AND t.primary_key IS NULL \
          AND t.operation = 'TRUNCATE' AND t.committed_at >= latest.committed_at \
          AND t.committed_at <= $5 \
          AND (t.committed_at, t.position) > (latest.committed_at, latest.position) \
     ) AS truncated \
     FROM ( \
       SELECT id, primary_key, before, after, context, database, schema, \"table\", operation, \
              committed_at, queued_at, created_at, transaction_id, position, source \
         FROM changes \
        WHERE \"table\" = $1 AND ($2::text IS NULL OR schema = $2) \
          AND ($3::text IS NULL OR database = $3) AND primary_key = $4 AND committed_at <= $5 \
        ORDER BY committed_at DESC, position DESC, id DESC LIMIT 1 \
     ) latest";

/// Every change of one row, and every TRUNCATE of its table, oldest first. `$1` table, `$2`
/// schema or NULL, `$3` database or NULL, `$4` primary key.
const HISTORY_SQL: &str = "SELECT id, primary_key, before, after, context, database, schema, \
     \"table\", operation, committed_at, queued_at, created_at, transaction_id, position, source \
     FROM changes \
     WHERE \"table\" = $1 AND ($2::text IS NULL OR schema = $2) \
       AND ($3::text IS NULL OR database = $3) \
       AND (primary_key = $4 OR (primary_key IS NULL AND operation = 'TRUNCATE')) \
     ORDER BY committed_at, position, id";

/// The last change of every row of a table at or before an instant, without the rows that were
/// deleted or truncated by then, in primary-key order (as text). `$1` table, `$2` schema or
/// NULL, `$3` database or NULL, `$4` instant.
///
/// The table's changes are found with the index `("table", primary_key, committed_at)`;
/// `DISTINCT ON` keeps the last one per key (the server reads them in key order from the
/// index, or sorts them, spilling to disk beyond `work_mem`); the TRUNCATE lookup is one index
/// probe per row (a subquery with `LIMIT` stays a per-row probe, so the key order is kept).
/// Rows reach the client one by one as sqlx's `fetch` reads them: nothing is held whole.
const TABLE_AT_SQL: &str = "SELECT latest.* FROM ( \
       SELECT DISTINCT ON (primary_key, schema, database) \
              id, primary_key, before, after, context, database, schema, \"table\", operation, \
              committed_at, queued_at, created_at, transaction_id, position, source \
         FROM changes \
        WHERE \"table\" = $1 AND ($2::text IS NULL OR schema = $2) \
          AND ($3::text IS NULL OR database = $3) AND primary_key IS NOT NULL \
          AND committed_at <= $4 \
        ORDER BY primary_key, schema, database, committed_at DESC, position DESC, id DESC \
     ) latest \
     WHERE latest.operation <> 'DELETE' \
       AND NOT COALESCE(( \
         SELECT (t.committed_at, t.position) > (latest.committed_at, latest.position) \
           FROM changes t \
          WHERE t.\"table\" = latest.\"table\" AND t.schema = latest.schema \
            AND t.database = latest.database AND t.primary_key IS NULL \
            AND t.operation = 'TRUNCATE' AND t.committed_at <= $4 \
          ORDER BY t.committed_at DESC, t.position DESC LIMIT 1), false) \
     ORDER BY latest.primary_key, latest.schema, latest.database";

/// [`TABLE_AT_SQL`] from the row after `($5, $6, $7)` on, at most `$8` rows.
static TABLE_PAGE_SQL: LazyLock<String> = LazyLock::new(|| {
    TABLE_AT_SQL.replacen(
        "AND committed_at <= $4",
        "AND committed_at <= $4 \
         AND ($5::text IS NULL OR (primary_key, schema, database) > ($5, $6, $7))",
        1,
    ) + " LIMIT $8"
});

/// Where a page of [`TimeTravel::table_at_page`] ends: its last row's key, schema and database.
///
/// ```
/// let cursor = bemi_audit::TablePageCursor {
///     primary_key: "42".into(),
///     schema: "public".into(),
///     database: "app".into(),
/// };
/// assert_eq!(cursor.primary_key, "42");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePageCursor {
    /// The row's primary key.
    pub primary_key: String,
    /// Its schema.
    pub schema: String,
    /// Its database.
    pub database: String,
}

impl TablePageCursor {
    /// The cursor after `row`.
    ///
    /// ```no_run
    /// # fn run(state: bemi_audit::RowState) {
    /// let cursor = bemi_audit::TablePageCursor::of(&state);
    /// # }
    /// ```
    pub fn of(row: &RowState) -> Self {
        Self {
            primary_key: row.primary_key().to_owned(),
            schema: row.change.schema.clone(),
            database: row.change.database.clone(),
        }
    }
}

/// A row as it was: the change that gave it that state (its last change at or before the
/// instant asked for).
///
/// ```
/// # fn run(state: bemi_audit::RowState) {
/// println!("{} was {} (since {})", state.primary_key(), state.row(), state.change.committed_at);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowState {
    /// The row's last change at or before the instant: a CREATE or an UPDATE.
    pub change: Change,
}

impl RowState {
    /// The row's values: the after-image of [`change`](Self::change).
    ///
    /// ```
    /// # fn run(state: bemi_audit::RowState) {
    /// let task = &state.row()["task"];
    /// # }
    /// ```
    pub fn row(&self) -> &Value {
        &self.change.after
    }

    /// The row's values, by value.
    ///
    /// ```
    /// # fn run(state: bemi_audit::RowState) {
    /// let row: serde_json::Value = state.into_row();
    /// # }
    /// ```
    pub fn into_row(self) -> Value {
        self.change.after
    }

    /// The row's primary key, as stored in `changes`.
    ///
    /// ```
    /// # fn run(state: bemi_audit::RowState) {
    /// assert_eq!(Some(state.primary_key()), state.change.primary_key.as_deref());
    /// # }
    /// ```
    pub fn primary_key(&self) -> &str {
        self.change.primary_key.as_deref().unwrap_or_default()
    }
}

/// Time travel over the changes of one table.
///
/// ```no_run
/// use bemi_audit::TimeTravel;
/// use futures_util::TryStreamExt as _;
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// let yesterday = chrono::Utc::now() - chrono::Duration::days(1);
/// let todo = TimeTravel::table("public.todo");
///
/// // One row as it was (None: it did not exist then).
/// if let Some(state) = todo.row_at(&pool, "26", yesterday).await? {
///     println!("{}", state.row());
/// }
/// // Everything that happened to it, oldest first.
/// let history: Vec<_> = todo.history(&pool, "26").try_collect().await?;
/// // The whole table as it was, streamed row by row.
/// let mut rows = todo.table_at(&pool, yesterday);
/// while let Some(state) = rows.try_next().await? {
///     println!("{} {}", state.primary_key(), state.row());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeTravel {
    schema: Option<String>,
    table: String,
    database: Option<String>,
}

impl TimeTravel {
    /// The table `todo` (in whichever schema has it: qualify it when several do) or
    /// `public.todo`.
    ///
    /// ```
    /// let todo = bemi_audit::TimeTravel::table("public.todo");
    /// ```
    pub fn table(name: &str) -> Self {
        let (schema, table) = match name.split_once('.') {
            Some((schema, table)) => (Some(schema.to_owned()), table.to_owned()),
            None => (None, name.to_owned()),
        };
        Self {
            schema,
            table,
            database: None,
        }
    }

    /// Only changes of this source database (for a `changes` table that several databases
    /// write into).
    ///
    /// ```
    /// let todo = bemi_audit::TimeTravel::table("todo").database("app");
    /// ```
    pub fn database(mut self, name: impl Into<String>) -> Self {
        self.database = Some(name.into());
        self
    }

    /// The row with this primary key (as stored: `"26"`, or a JSON array for a composite key)
    /// as it was at `at`: `None` if it did not exist then (not created yet, deleted, or its
    /// table truncated).
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    /// let state = bemi_audit::TimeTravel::table("todo").row_at(&pool, "1", an_hour_ago).await?;
    /// # Ok(()) }
    /// ```
    pub async fn row_at<'c, E>(
        &self,
        executor: E,
        primary_key: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<RowState>, sqlx::Error>
    where
        E: Executor<'c, Database = Postgres>,
    {
        let latest: Option<Latest> = sqlx::query_as(ROW_AT_SQL)
            .bind(&self.table)
            .bind(self.schema.as_deref())
            .bind(self.database.as_deref())
            .bind(primary_key)
            .bind(at)
            .fetch_optional(executor)
            .await?;
        Ok(latest.and_then(|latest| {
            let gone = latest.truncated
                || matches!(
                    latest.change.operation,
                    Operation::Delete | Operation::Truncate
                );
            (!gone).then_some(RowState {
                change: latest.change,
            })
        }))
    }

    /// Every change of the row with this primary key, oldest first, with the TRUNCATEs of its
    /// table that ended it (a TRUNCATE while the row did not exist is left out). Streamed.
    ///
    /// ```no_run
    /// use futures_util::TryStreamExt as _;
    ///
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let history: Vec<_> = bemi_audit::TimeTravel::table("todo")
    ///     .history(&pool, "1")
    ///     .try_collect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn history<'e, 'c: 'e, E>(
        &self,
        executor: E,
        primary_key: &str,
    ) -> BoxStream<'e, Result<Change, sqlx::Error>>
    where
        E: Executor<'c, Database = Postgres> + 'e,
    {
        let changes = sqlx::query_as::<_, Change>(HISTORY_SQL)
            .bind(self.table.clone())
            .bind(self.schema.clone())
            .bind(self.database.clone())
            .bind(primary_key.to_owned())
            .fetch(executor);
        // Which (schema, database) copies of the row exist at this point of the history.
        let existing: Vec<(String, String)> = Vec::new();
        stream::try_unfold(
            (changes, existing),
            |(mut changes, mut existing)| async move {
                while let Some(change) = changes.try_next().await? {
                    let copy = (change.schema.clone(), change.database.clone());
                    let exists = existing.contains(&copy);
                    let keep = match change.operation {
                        Operation::Truncate => exists,
                        _ => true,
                    };
                    match change.operation {
                        Operation::Create | Operation::Update if !exists => existing.push(copy),
                        Operation::Delete | Operation::Truncate => {
                            existing.retain(|c| *c != copy);
                        }
                        _ => {}
                    }
                    if keep {
                        return Ok(Some((change, (changes, existing))));
                    }
                }
                Ok(None)
            },
        )
        .boxed()
    }

    /// Every row of the table as it was at `at`, in primary-key order (as text), streamed from
    /// one query row by row: the client's memory stays bounded however large the table was. Tables without a primary
    /// key cannot be rebuilt (their changes do not say which row they touched) and yield
    /// nothing.
    ///
    /// ```no_run
    /// use futures_util::TryStreamExt as _;
    ///
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let at = "2026-05-01T12:00:00Z".parse().unwrap();
    /// let mut rows = bemi_audit::TimeTravel::table("todo").table_at(&pool, at);
    /// while let Some(state) = rows.try_next().await? {
    ///     println!("{}", state.row());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn table_at<'e, 'c: 'e, E>(
        &self,
        executor: E,
        at: DateTime<Utc>,
    ) -> BoxStream<'e, Result<RowState, sqlx::Error>>
    where
        E: Executor<'c, Database = Postgres> + 'e,
    {
        sqlx::query_as::<_, Change>(TABLE_AT_SQL)
            .bind(self.table.clone())
            .bind(self.schema.clone())
            .bind(self.database.clone())
            .bind(at)
            .fetch(executor)
            .map_ok(|change| RowState { change })
            .boxed()
    }

    /// One page of [`table_at`](Self::table_at): at most `limit` rows after `after` (the
    /// [`TablePageCursor::of`] the previous page's last row), in the same order — keyset paging,
    /// so that page 1 000 costs what page 1 does.
    ///
    /// ```no_run
    /// use bemi_audit::{TablePageCursor, TimeTravel};
    ///
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let at = "2026-05-01T12:00:00Z".parse().unwrap();
    /// let todo = TimeTravel::table("todo");
    /// let first = todo.table_at_page(&pool, at, None, 100).await?;
    /// if let Some(last) = first.last() {
    ///     let second = todo.table_at_page(&pool, at, Some(&TablePageCursor::of(last)), 100).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn table_at_page<'c, E>(
        &self,
        executor: E,
        at: DateTime<Utc>,
        after: Option<&TablePageCursor>,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<RowState>, sqlx::Error>> + use<'c, E>
    where
        E: Executor<'c, Database = Postgres>,
    {
        let (table, schema, database) = (
            self.table.clone(),
            self.schema.clone(),
            self.database.clone(),
        );
        let after = after.cloned();
        async move {
            let changes = sqlx::query_as::<_, Change>(AssertSqlSafe(TABLE_PAGE_SQL.as_str()))
                .bind(table)
                .bind(schema)
                .bind(database)
                .bind(at)
                .bind(after.as_ref().map(|c| c.primary_key.clone()))
                .bind(after.as_ref().map(|c| c.schema.clone()))
                .bind(after.as_ref().map(|c| c.database.clone()))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(executor)
                .await?;
            Ok(changes
                .into_iter()
                .map(|change| RowState { change })
                .collect())
        }
    }

    /// The SQL of [`table_at`](Self::table_at), e.g. for `EXPLAIN`. Parameters: `$1` table,
    /// `$2` schema (or NULL), `$3` database (or NULL), `$4` the instant.
    ///
    /// ```
    /// assert!(bemi_audit::TimeTravel::table_at_sql().contains("DISTINCT ON"));
    /// ```
    pub fn table_at_sql() -> &'static str {
        TABLE_AT_SQL
    }
}

/// A row of [`ROW_AT_SQL`].
struct Latest {
    change: Change,
    truncated: bool,
}

impl<'r> FromRow<'r, PgRow> for Latest {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            change: Change::from_row(row)?,
            truncated: row.try_get("truncated")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_and_unqualified_tables() {
        let todo = TimeTravel::table("todo");
        assert_eq!((todo.schema, todo.table.as_str()), (None, "todo"));
        let invoice = TimeTravel::table("billing.invoice").database("app");
        assert_eq!(invoice.schema.as_deref(), Some("billing"));
        assert_eq!(invoice.database.as_deref(), Some("app"));
    }

    #[test]
    fn every_query_selects_every_column_of_a_change() {
        for sql in [ROW_AT_SQL, HISTORY_SQL, TABLE_AT_SQL] {
            assert!(sql.contains(COLUMNS), "{sql}");
        }
    }
}
