//! Writing the audit trail: a batch of new changes, inserted in one statement. What the capture
//! worker and `bemi store` write with.
//!
//! The rows travel as one array parameter per column, unnested by the server, and the unique
//! key `(position, table, schema, database, operation, source)` with `ON CONFLICT DO NOTHING` makes a
//! re-delivered change a no-op: [`ChangeBatch::insert`] returns how many rows were new.
//!
//! ```no_run
//! use bemi_audit::store::{ChangeBatch, NewChange};
//! use bemi_audit::Operation;
//!
//! # async fn run(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
//! let now = chrono::Utc::now();
//! let mut batch = ChangeBatch::default();
//! batch.push(NewChange {
//!     primary_key: Some("1"),
//!     before: "{}",
//!     after: r#"{"id":1,"task":"Sleep"}"#,
//!     context: r#"{"user_id":187234}"#,
//!     schema: "public",
//!     table: "todo",
//!     operation: Operation::Create,
//!     committed_at: now,
//!     queued_at: now,
//!     transaction_id: 748,
//!     position: 22_137_512,
//! });
//! let new_rows = batch.insert("app", conn).await?;
//! # Ok(()) }
//! ```

use bemi_core::protocol::Operation;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// Inserts a batch (one array parameter per column); returns how many rows were new.
const INSERT_SQL: &str = r#"
WITH written AS (
  INSERT INTO changes (primary_key, before, after, context, database, schema, "table", operation,
                       committed_at, queued_at, transaction_id, position, source)
  SELECT primary_key, before::jsonb, after::jsonb, context::jsonb, $1, schema, "table", operation,
         committed_at, queued_at, transaction_id, position, coalesce($13, '')
    FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                $9::timestamptz[], $10::timestamptz[], $11::int8[], $12::int8[])
      AS batch(primary_key, before, after, context, schema, "table", operation,
               committed_at, queued_at, transaction_id, position)
  ON CONFLICT ON CONSTRAINT changes_position_key DO NOTHING
  RETURNING 1
)
SELECT count(*) FROM written
"#;

/// One change to store: the columns of `changes` that its writer gives (the id and
/// `created_at` are the server's). The JSON columns are JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewChange<'a> {
    /// The key as of the change: a single column's value as text, a composite key as a JSON
    /// array; `None` without a key (or for a TRUNCATE).
    pub primary_key: Option<&'a str>,
    /// The row before, a JSON object (`{}` for CREATE and TRUNCATE).
    pub before: &'a str,
    /// The row after, a JSON object (`{}` for DELETE and TRUNCATE).
    pub after: &'a str,
    /// The context, a JSON object (`{}` without one).
    pub context: &'a str,
    /// The table's schema.
    pub schema: &'a str,
    /// The table.
    pub table: &'a str,
    /// What happened.
    pub operation: Operation,
    /// When the source transaction committed.
    pub committed_at: DateTime<Utc>,
    /// When the change left the source.
    pub queued_at: DateTime<Utc>,
    /// The source transaction's full 64-bit id (see [`Change::transaction_id`](crate::Change)).
    pub transaction_id: i64,
    /// The change's position in the source's WAL (its LSN): with the table, schema, database
    /// and operation, what makes a change unique.
    pub position: i64,
}

/// New changes as one array per column, to insert at once.
#[derive(Debug, Default)]
pub struct ChangeBatch<'a> {
    primary_key: Vec<Option<&'a str>>,
    before: Vec<&'a str>,
    after: Vec<&'a str>,
    context: Vec<&'a str>,
    schema: Vec<&'a str>,
    table: Vec<&'a str>,
    operation: Vec<&'static str>,
    committed_at: Vec<DateTime<Utc>>,
    queued_at: Vec<DateTime<Utc>>,
    transaction_id: Vec<i64>,
    position: Vec<i64>,
}

impl<'a> ChangeBatch<'a> {
    /// Adds a change to the batch.
    pub fn push(&mut self, change: NewChange<'a>) {
        self.primary_key.push(change.primary_key);
        self.before.push(change.before);
        self.after.push(change.after);
        self.context.push(change.context);
        self.schema.push(change.schema);
        self.table.push(change.table);
        self.operation.push(change.operation.as_str());
        self.committed_at.push(change.committed_at);
        self.queued_at.push(change.queued_at);
        self.transaction_id.push(change.transaction_id);
        self.position.push(change.position);
    }

    /// How many changes the batch holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.position.len()
    }

    /// Whether the batch holds no change.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.position.is_empty()
    }

    /// Inserts the batch as changes of the source `database` in one statement (inside the
    /// connection's transaction, if it has one); returns how many were new — a change already
    /// stored is skipped. The changes name no source cluster: see
    /// [`insert_from`](Self::insert_from).
    pub async fn insert(
        &self,
        database: &str,
        conn: &mut PgConnection,
    ) -> Result<u64, sqlx::Error> {
        self.insert_from(None, database, conn).await
    }

    /// [`insert`](Self::insert), naming the source cluster (its system identifier), which
    /// tells apart transactions of clusters whose databases share a name.
    ///
    /// ```no_run
    /// # async fn run(batch: bemi_audit::store::ChangeBatch<'_>, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    /// let new_rows = batch.insert_from(Some("7716412341606058525"), "app", conn).await?;
    /// # Ok(()) }
    /// ```
    pub async fn insert_from(
        &self,
        source: Option<&str>,
        database: &str,
        conn: &mut PgConnection,
    ) -> Result<u64, sqlx::Error> {
        if self.is_empty() {
            return Ok(0);
        }
        let written: i64 = sqlx::query_scalar(INSERT_SQL)
            .bind(database)
            .bind(&self.primary_key)
            .bind(&self.before)
            .bind(&self.after)
            .bind(&self.context)
            .bind(&self.schema)
            .bind(&self.table)
            .bind(&self.operation)
            .bind(&self.committed_at)
            .bind(&self.queued_at)
            .bind(&self.transaction_id)
            .bind(&self.position)
            .bind(source)
            .fetch_one(conn)
            .await?;
        Ok(u64::try_from(written).unwrap_or(0))
    }
}
