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
use uuid::Uuid;

use crate::chain::{ChainHead, LinkFields};

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

/// Asks the server for each change's id and the canonical text (`jsonb::text`) of its JSON
/// columns, and whether it is stored already (a re-delivery) or repeats an earlier change of
/// the same batch (a message published twice), in batch order.
const CANONICAL_SQL: &str = r#"
SELECT gen_random_uuid(), b.before::jsonb::text, b.after::jsonb::text, b.context::jsonb::text,
       EXISTS (SELECT 1 FROM changes s
                WHERE s.position = b.position AND s."table" = b."table" AND s.schema = b.schema
                  AND s.database = $1 AND s.operation = b.operation
                  AND s.source = coalesce($2, ''))
       OR row_number() OVER (PARTITION BY b.position, b."table", b.schema, b.operation
                             ORDER BY b.n) > 1
  FROM unnest($3::text[], $4::text[], $5::text[], $6::int8[], $7::text[], $8::text[], $9::text[])
       WITH ORDINALITY AS b(before, after, context, position, "table", schema, operation, n)
 ORDER BY b.n
"#;

/// Inserts a chained batch (one array parameter per column); returns how many rows were new.
const INSERT_CHAINED_SQL: &str = r#"
WITH written AS (
  INSERT INTO changes (id, primary_key, before, after, context, database, schema, "table",
                       operation, committed_at, queued_at, transaction_id, position, source,
                       chain, chain_seq, chain_hash, chain_fields)
  SELECT id, primary_key, before::jsonb, after::jsonb, context::jsonb, $1, schema, "table",
         operation, committed_at, queued_at, transaction_id, position, $2, $3, chain_seq,
         chain_hash, chain_fields
    FROM unnest($4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                $10::text[], $11::text[], $12::timestamptz[], $13::timestamptz[], $14::int8[],
                $15::int8[], $16::int8[], $17::bytea[], $18::bytea[])
      AS batch(id, primary_key, before, after, context, schema, "table", operation,
               committed_at, queued_at, transaction_id, position, chain_seq, chain_hash,
               chain_fields)
  ON CONFLICT ON CONSTRAINT changes_position_key DO NOTHING
  RETURNING 1
)
SELECT count(*) FROM written
"#;

/// A [`ChangeBatch`] on its way into a hash chain ([`crate::chain`]): the server gave each
/// change its id and the canonical text of its JSON, and said which changes are stored already
/// (a re-delivery after a crash: left out *before* numbers are given, so the chain has no
/// gap); [`link`](Self::link) numbers and hashes the rest after a chain head,
/// [`insert`](Self::insert) stores them.
///
/// ```no_run
/// use bemi_audit::chain;
/// use bemi_audit::store::ChangeBatch;
///
/// # async fn run(batch: ChangeBatch<'_>, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
/// let name = chain::worker_chain(None, "app");
/// let head = chain::read_head(conn, &name).await?;
/// let mut chained = batch.prepare_chain(&name, None, "app", conn).await?;
/// let new_head = chained.link(head);
/// chained.insert(conn).await?;
/// chain::record_head(conn, &name, head, new_head).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ChainedBatch<'b, 'a> {
    batch: &'b ChangeBatch<'a>,
    chain: &'b str,
    source: String,
    database: &'b str,
    ids: Vec<Uuid>,
    before: Vec<String>,
    after: Vec<String>,
    context: Vec<String>,
    stored: Vec<bool>,
    seq: Vec<i64>,
    hash: Vec<Vec<u8>>,
    fields: Vec<Vec<u8>>,
}

impl<'a> ChangeBatch<'a> {
    /// Prepares the batch for the chain `chain` (see [`ChainedBatch`]): one round trip.
    pub async fn prepare_chain<'b>(
        &'b self,
        chain: &'b str,
        source: Option<&str>,
        database: &'b str,
        conn: &mut PgConnection,
    ) -> Result<ChainedBatch<'b, 'a>, sqlx::Error> {
        type Row = (Uuid, String, String, String, bool);
        let rows: Vec<Row> = if self.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(CANONICAL_SQL)
                .bind(database)
                .bind(source)
                .bind(&self.before)
                .bind(&self.after)
                .bind(&self.context)
                .bind(&self.position)
                .bind(&self.table)
                .bind(&self.schema)
                .bind(&self.operation)
                .fetch_all(&mut *conn)
                .await?
        };
        if rows.len() != self.len() {
            return Err(sqlx::Error::Protocol(format!(
                "the destination returned {} canonical rows for a batch of {}",
                rows.len(),
                self.len()
            )));
        }
        let mut chained = ChainedBatch {
            batch: self,
            chain,
            source: source.unwrap_or("").to_owned(),
            database,
            ids: Vec::with_capacity(rows.len()),
            before: Vec::with_capacity(rows.len()),
            after: Vec::with_capacity(rows.len()),
            context: Vec::with_capacity(rows.len()),
            stored: Vec::with_capacity(rows.len()),
            seq: Vec::new(),
            hash: Vec::new(),
            fields: Vec::new(),
        };
        for (id, before, after, context, stored) in rows {
            chained.ids.push(id);
            chained.before.push(before);
            chained.after.push(after);
            chained.context.push(context);
            chained.stored.push(stored);
        }
        Ok(chained)
    }
}

impl ChainedBatch<'_, '_> {
    /// How many changes of the batch are stored already (left out).
    #[must_use]
    pub fn already_stored(&self) -> usize {
        self.stored.iter().filter(|stored| **stored).count()
    }

    /// Numbers and hashes the changes that are not stored yet after `head`, in batch order;
    /// returns the new head (`head` itself when there is nothing new).
    pub fn link(&mut self, head: ChainHead) -> ChainHead {
        let mut head = head;
        self.seq.clear();
        self.hash.clear();
        self.fields.clear();
        let b = self.batch;
        for i in 0..b.len() {
            if self.stored[i] {
                continue;
            }
            let id = self.ids[i].to_string();
            let fields = LinkFields {
                id: &id,
                primary_key: b.primary_key[i],
                before: &self.before[i],
                after: &self.after[i],
                context: &self.context[i],
                database: self.database,
                schema: b.schema[i],
                table: b.table[i],
                operation: b.operation[i],
                committed_at: b.committed_at[i].timestamp_micros(),
                queued_at: b.queued_at[i].timestamp_micros(),
                transaction_id: b.transaction_id[i],
                position: b.position[i],
                source: &self.source,
            };
            let (next, digests) = head.link(self.chain, &fields);
            head = next;
            self.seq.push(head.seq);
            self.hash.push(head.hash.to_vec());
            self.fields.push(digests);
        }
        head
    }

    /// Inserts the linked changes in one statement; returns how many. Fails (the caller's
    /// transaction must roll back) when one of them turned out to be stored meanwhile, which
    /// would leave a hole in the chain.
    pub async fn insert(&self, conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        let b = self.batch;
        let indexes: Vec<usize> = (0..b.len()).filter(|&i| !self.stored[i]).collect();
        if indexes.is_empty() {
            return Ok(0);
        }
        if indexes.len() != self.seq.len() {
            return Err(sqlx::Error::Protocol(
                "a chained batch was inserted before it was linked".to_owned(),
            ));
        }
        macro_rules! column {
            ($values:expr) => {
                indexes
                    .iter()
                    .map(|&i| $values[i].clone())
                    .collect::<Vec<_>>()
            };
        }
        let written: i64 = sqlx::query_scalar(INSERT_CHAINED_SQL)
            .bind(self.database)
            .bind(&self.source)
            .bind(self.chain)
            .bind(column!(self.ids))
            .bind(column!(b.primary_key))
            .bind(column!(self.before))
            .bind(column!(self.after))
            .bind(column!(self.context))
            .bind(column!(b.schema))
            .bind(column!(b.table))
            .bind(column!(b.operation))
            .bind(column!(b.committed_at))
            .bind(column!(b.queued_at))
            .bind(column!(b.transaction_id))
            .bind(column!(b.position))
            .bind(&self.seq)
            .bind(&self.hash)
            .bind(&self.fields)
            .fetch_one(conn)
            .await?;
        let written = u64::try_from(written).unwrap_or(0);
        if written != indexes.len() as u64 {
            return Err(sqlx::Error::Protocol(format!(
                "{} of {} chained changes were stored meanwhile by another writer; the batch \
                 is rolled back and written again",
                indexes.len() as u64 - written,
                indexes.len()
            )));
        }
        Ok(written)
    }
}
