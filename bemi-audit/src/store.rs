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
use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row as _};
use uuid::Uuid;

use crate::chain::{ChainHead, LinkFields};
use crate::jsonb_text::jsonb_text;

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

/// Asks the server for the canonical text (`jsonb::text`) of each change's JSON columns and
/// whether it is stored already (a re-delivery), in batch order: [`STORED_SQL`] for JSON whose
/// text the writer cannot compute itself ([`jsonb_text`]).
const CANONICAL_SQL: &str = r#"
SELECT b.before::jsonb::text, b.after::jsonb::text, b.context::jsonb::text,
       EXISTS (SELECT 1 FROM changes s
                WHERE s.position = b.position AND s."table" = b."table" AND s.schema = b.schema
                  AND s.database = $1 AND s.operation = b.operation
                  AND s.source = coalesce($2, ''))
  FROM unnest($3::text[], $4::text[], $5::text[], $6::int8[], $7::text[], $8::text[], $9::text[])
       WITH ORDINALITY AS b(before, after, context, position, "table", schema, operation, n)
 ORDER BY b.n
"#;

/// For each change of the batch, in order, whether it is stored already (a re-delivery). The
/// check is a subquery per change (an index probe of the unique key), not a join the planner
/// could choose to run as a scan of `changes` per change. Planned at each execution (see
/// [`PROBES_PREPARED`]).
const STORED_SQL: &str = r#"
SELECT array_agg(EXISTS (SELECT 1 FROM changes s
                          WHERE s.position = b.position AND s."table" = b."table"
                            AND s.schema = b.schema AND s.database = $1
                            AND s.operation = b.operation AND s.source = coalesce($2, ''))
                 ORDER BY b.n)
  FROM unnest($3::int8[], $4::text[], $5::text[], $6::text[])
       WITH ORDINALITY AS b(position, "table", schema, operation, n)
"#;

/// Whether the queries that look changes up by their unique key ([`STORED_SQL`],
/// [`CANONICAL_SQL`]) are prepared once and keep their plan: no, they are planned at each
/// execution. A prepared statement's generic plan assumes 10 rows for a parameter's `unnest` and is kept once it
/// looks cheaper than the plans for the real batches, and made while `changes` is still small
/// it can look changes up by `(table, primary_key, committed_at)` with a filter on the rest —
/// which, once the table holds many changes of that table, reads all of them for every change
/// of every batch (a probe of one worker's batch took 39 s in a chaos run). Planned with the
/// batch and the table as they are, the unique key's index is chosen; planning costs well under
/// a millisecond per batch.
const PROBES_PREPARED: bool = false;

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

/// [`INSERT_CHAINED_SQL`] for JSON whose text the writer computed and hashed itself: each
/// value is parsed once, and nothing is inserted unless every stored value prints as the text
/// that was hashed. Returns how many rows were new and how many values printed differently.
const INSERT_CHAINED_CHECKED_SQL: &str = r#"
WITH batch AS MATERIALIZED (
  SELECT id, primary_key, before_text, after_text, context_text,
         before_text::jsonb AS before, after_text::jsonb AS after, context_text::jsonb AS context,
         schema, "table", operation, committed_at, queued_at, transaction_id, position,
         chain_seq, chain_hash, chain_fields
    FROM unnest($4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                $10::text[], $11::text[], $12::timestamptz[], $13::timestamptz[], $14::int8[],
                $15::int8[], $16::int8[], $17::bytea[], $18::bytea[])
      AS b(id, primary_key, before_text, after_text, context_text, schema, "table", operation,
           committed_at, queued_at, transaction_id, position, chain_seq, chain_hash,
           chain_fields)
),
differing AS (
  SELECT count(*) AS n FROM batch
   WHERE before::text <> before_text OR after::text <> after_text
      OR context::text <> context_text
),
written AS (
  INSERT INTO changes (id, primary_key, before, after, context, database, schema, "table",
                       operation, committed_at, queued_at, transaction_id, position, source,
                       chain, chain_seq, chain_hash, chain_fields)
  SELECT id, primary_key, before, after, context, $1, schema, "table", operation,
         committed_at, queued_at, transaction_id, position, $2, $3, chain_seq, chain_hash,
         chain_fields
    FROM batch
   WHERE (SELECT n FROM differing) = 0
  ON CONFLICT ON CONSTRAINT changes_position_key DO NOTHING
  RETURNING 1
)
SELECT (SELECT count(*) FROM written), (SELECT n FROM differing)
"#;

/// Chains whose destination printed a JSON value differently than [`jsonb_text`] computed it
/// (a database encoding other than UTF-8 sorts keys by other bytes): their batches take the
/// server's text from then on, for the rest of the process.
static SERVER_TEXT_CHAINS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn takes_server_text(chain: &str) -> bool {
    SERVER_TEXT_CHAINS
        .lock()
        .map_or(true, |chains| chains.contains(chain))
}

/// A [`ChangeBatch`] on its way into a hash chain ([`crate::chain`]): each change has its id
/// and the canonical text of its JSON (`jsonb::text`, see [`jsonb_text`]), and the changes
/// that are stored already (a re-delivery after a crash) or repeat an earlier one of the batch
/// are known — left out *before* numbers are given, so the chain has no gap;
/// [`link`](Self::link) numbers and hashes the rest after a chain head,
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
    /// The JSON texts were computed here, so the insert has the server check them.
    computed_here: bool,
    seq: Vec<i64>,
    hash: Vec<Vec<u8>>,
    fields: Vec<Vec<u8>>,
}

impl<'a> ChangeBatch<'a> {
    /// Prepares the batch for the chain `chain` (see [`ChainedBatch`]): one round trip. The
    /// writer computes the JSON's canonical text itself ([`jsonb_text`]) and asks the server
    /// only which changes are stored already; when it cannot vouch for a value's text, or the
    /// destination printed one differently before, the server gives the text of the batch.
    pub async fn prepare_chain<'b>(
        &'b self,
        chain: &'b str,
        source: Option<&str>,
        database: &'b str,
        conn: &mut PgConnection,
    ) -> Result<ChainedBatch<'b, 'a>, sqlx::Error> {
        let mut chained = ChainedBatch {
            batch: self,
            chain,
            source: source.unwrap_or("").to_owned(),
            database,
            ids: Vec::new(),
            before: Vec::with_capacity(self.len()),
            after: Vec::with_capacity(self.len()),
            context: Vec::with_capacity(self.len()),
            stored: Vec::new(),
            computed_here: false,
            seq: Vec::new(),
            hash: Vec::new(),
            fields: Vec::new(),
        };
        if self.is_empty() {
            return Ok(chained);
        }
        chained.ids = random_ids(self.len()).map_err(|error| {
            sqlx::Error::Protocol(format!("no random ids for a chained batch: {error}"))
        })?;
        let stored: Vec<bool> = if !takes_server_text(chain) && chained.compute_texts() {
            chained.computed_here = true;
            sqlx::query_scalar(STORED_SQL)
                .persistent(PROBES_PREPARED)
                .bind(database)
                .bind(source)
                .bind(&self.position)
                .bind(&self.table)
                .bind(&self.schema)
                .bind(&self.operation)
                .fetch_one(&mut *conn)
                .await?
        } else {
            let rows: Vec<(String, String, String, bool)> = sqlx::query_as(CANONICAL_SQL)
                .persistent(PROBES_PREPARED)
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
                .await?;
            rows.into_iter()
                .map(|(before, after, context, stored)| {
                    chained.before.push(before);
                    chained.after.push(after);
                    chained.context.push(context);
                    stored
                })
                .collect()
        };
        if stored.len() != self.len() {
            return Err(sqlx::Error::Protocol(format!(
                "the destination checked {} changes of a batch of {}",
                stored.len(),
                self.len()
            )));
        }
        // Left out: the changes stored already, and the repeats of an earlier one.
        chained.stored = self.repeated_in_batch();
        for (left_out, stored) in chained.stored.iter_mut().zip(stored) {
            *left_out |= stored;
        }
        Ok(chained)
    }

    /// For each change, whether an earlier change of the batch has its unique key (a message
    /// published twice): only the first is stored.
    fn repeated_in_batch(&self) -> Vec<bool> {
        let mut seen = HashSet::with_capacity(self.len());
        (0..self.len())
            .map(|i| {
                !seen.insert((
                    self.position[i],
                    self.table[i],
                    self.schema[i],
                    self.operation[i],
                ))
            })
            .collect()
    }
}

/// `count` random (version 4) UUIDs.
fn random_ids(count: usize) -> Result<Vec<Uuid>, getrandom::Error> {
    let mut bytes = vec![0_u8; count * 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes
        .chunks_exact(16)
        .map(|chunk| {
            let mut random = [0_u8; 16];
            random.copy_from_slice(chunk);
            uuid::Builder::from_random_bytes(random).into_uuid()
        })
        .collect())
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

    /// Whether the JSON's canonical text was computed here ([`jsonb_text`]; the insert has the
    /// server check it) rather than asked of the server.
    #[must_use]
    pub fn computes_text(&self) -> bool {
        self.computed_here
    }

    /// The canonical text of every JSON value, computed here; `false` (and nothing kept) when
    /// one cannot be vouched for.
    fn compute_texts(&mut self) -> bool {
        let b = self.batch;
        for i in 0..b.len() {
            let (Some(before), Some(after), Some(context)) = (
                jsonb_text(b.before[i]),
                jsonb_text(b.after[i]),
                jsonb_text(b.context[i]),
            ) else {
                self.before.clear();
                self.after.clear();
                self.context.clear();
                return false;
            };
            self.before.push(before);
            self.after.push(after);
            self.context.push(context);
        }
        true
    }

    /// Inserts the linked changes in one statement; returns how many. Fails (the caller's
    /// transaction must roll back) when one of them turned out to be stored meanwhile, which
    /// would leave a hole in the chain, or when the destination printed a JSON value other than
    /// as it was hashed (then nothing was inserted, and the chain's later batches take the
    /// server's text).
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
                indexes.iter().map(|&i| $values[i]).collect::<Vec<_>>()
            };
        }
        macro_rules! text_column {
            ($values:expr) => {
                indexes
                    .iter()
                    .map(|&i| $values[i].as_str())
                    .collect::<Vec<&str>>()
            };
        }
        let sql = if self.computed_here {
            INSERT_CHAINED_CHECKED_SQL
        } else {
            INSERT_CHAINED_SQL
        };
        let query = sqlx::query(sql)
            .bind(self.database)
            .bind(&self.source)
            .bind(self.chain)
            .bind(column!(self.ids))
            .bind(column!(b.primary_key))
            .bind(text_column!(self.before))
            .bind(text_column!(self.after))
            .bind(text_column!(self.context))
            .bind(column!(b.schema))
            .bind(column!(b.table))
            .bind(column!(b.operation))
            .bind(column!(b.committed_at))
            .bind(column!(b.queued_at))
            .bind(column!(b.transaction_id))
            .bind(column!(b.position))
            .bind(&self.seq)
            .bind(&self.hash)
            .bind(&self.fields);
        let row = query.fetch_one(conn).await?;
        let written: i64 = row.try_get(0)?;
        if self.computed_here {
            let differing: i64 = row.try_get(1)?;
            if differing > 0 {
                if let Ok(mut chains) = SERVER_TEXT_CHAINS.lock() {
                    chains.insert(self.chain.to_owned());
                }
                tracing::warn!(
                    chain = self.chain,
                    differing,
                    "the destination prints JSON differently than the writer computed it (a \
                     database encoding other than UTF-8?); this chain takes the server's text \
                     from now on"
                );
                return Err(sqlx::Error::Protocol(format!(
                    "the destination printed {differing} JSON values of this batch differently \
                     than they were hashed; nothing was stored, and the batch is rolled back and \
                     written again with the destination's text"
                )));
            }
        }
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
