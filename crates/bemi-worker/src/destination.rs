//! The destination: the `changes` table and the worker's position, written together.
//!
//! Each batch of rows is written in one transaction that also records, in `_bemi_worker_state`,
//! how far the batch got: the end LSN of the last source transaction written whole, and — when
//! the batch ends inside a large transaction — that transaction's commit LSN and the position of
//! its last written row. The worker confirms an LSN to the replication slot only after that
//! transaction committed, and on restart resumes from the recorded position, so a crash at any
//! moment neither loses nor duplicates a change. The unique key `(position, table, schema,
//! database, operation)` with `ON CONFLICT DO NOTHING` is the last line of defence: a
//! re-delivered change is a no-op.
//!
//! Inserting into `changes` (its GIN and btree indexes) is the expensive part, so batches are
//! written by several connections ([`BatchWriter`]s) at once — but each one commits only after
//! the batch before it committed, and gives up if that one failed: the recorded position always
//! covers a gap-free prefix of the stream.
//!
//! (The rows travel as arrays of one bound parameter per column, unnested by the server. COPY
//! would need several flushes per batch, which on a connection without `TCP_NODELAY` — sqlx does
//! not set it — waits for delayed ACKs: about 40 ms per batch.)

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::oneshot;

use crate::assembler::{Partial, Piece, ResumePoint};
use crate::rows::ChangeRow;

/// The `changes` table, its indexes, and the worker's state table: see [`crate::schema`].
pub use crate::schema::SCHEMA_SQL;

/// Inserts a batch (one array parameter per column); returns how many rows were new.
const INSERT_SQL: &str = r#"
WITH written AS (
  INSERT INTO changes (primary_key, before, after, context, database, schema, "table", operation,
                       committed_at, queued_at, transaction_id, position)
  SELECT primary_key, before::jsonb, after::jsonb, context::jsonb, $1, schema, "table", operation,
         committed_at, queued_at, transaction_id, position
    FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                $9::timestamptz[], $10::timestamptz[], $11::int8[], $12::int8[])
      AS batch(primary_key, before, after, context, schema, "table", operation,
               committed_at, queued_at, transaction_id, position)
  ON CONFLICT ON CONSTRAINT changes_position_key DO NOTHING
  RETURNING 1
)
SELECT count(*) FROM written
"#;

/// Records the position a batch reached.
const STATE_SQL: &str = "INSERT INTO _bemi_worker_state AS s \
       (database, slot, last_lsn, partial_commit_lsn, partial_position, updated_at) \
     VALUES ($1, $2, $3::text::pg_lsn, $4::text::pg_lsn, $5::text::pg_lsn, now()) \
     ON CONFLICT (database, slot) DO UPDATE SET \
       last_lsn = GREATEST(s.last_lsn, EXCLUDED.last_lsn), \
       partial_commit_lsn = EXCLUDED.partial_commit_lsn, \
       partial_position = EXCLUDED.partial_position, \
       updated_at = now()";

/// How durable a destination commit is before the worker confirms its position to the slot.
///
/// ```
/// use bemi_worker::destination::Durability;
///
/// assert_eq!(Durability::for_destination(true), Durability::Local);
/// assert_eq!(Durability::for_destination(false), Durability::Standbys);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Flushed on the destination and on its synchronous standbys (`synchronous_commit = on`):
    /// a failover of the destination loses nothing the slot has moved past.
    Standbys,
    /// Flushed on the destination server only (`synchronous_commit = local`). For a destination
    /// on the source's own server: a failover there loses the slot too (PostgreSQL 15 does not
    /// carry slots over), and the worker may itself be one of the synchronous standbys, which
    /// must not wait for its own confirmation.
    Local,
}

impl Durability {
    /// [`Local`](Self::Local) for a destination on the source's server, else
    /// [`Standbys`](Self::Standbys).
    pub fn for_destination(on_source_server: bool) -> Self {
        if on_source_server {
            Self::Local
        } else {
            Self::Standbys
        }
    }

    fn setting(self) -> &'static str {
        match self {
            Self::Standbys => "SET synchronous_commit = on",
            Self::Local => "SET synchronous_commit = local",
        }
    }
}

/// How long a destination writer waits for a lock (another worker's uncommitted rows with the
/// same unique key) before its batch fails; see [`Destination::open`].
const WRITER_LOCK_TIMEOUT: &str = "SET lock_timeout = '5s'";

/// The destination database: its connections and where the last committed write left off.
#[derive(Debug)]
pub struct Destination {
    writers: Vec<BatchWriter>,
    resume: ResumePoint,
}

impl Destination {
    /// Opens `connections` connections (at least one) whose commits are as durable as
    /// `durability` says, creates the tables if missing, and reads where the worker of `slot`
    /// on the source `database` left off.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let destination = bemi_worker::destination::Destination::open(
    ///     "postgres://localhost/app", "app", "bemi", 2, bemi_worker::destination::Durability::Local,
    /// ).await?;
    /// println!("resuming after {:?}", destination.resume_point());
    /// # Ok(()) }
    /// ```
    pub async fn open(
        url: &str,
        database: &str,
        slot: &str,
        connections: usize,
        durability: Durability,
    ) -> Result<Self, sqlx::Error> {
        let (database, slot): (Arc<str>, Arc<str>) = (database.into(), slot.into());
        let mut writers = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let mut conn = PgConnection::connect(url).await?;
            // Confirming a position to the slot is only safe once the rows are durable.
            conn.execute(durability.setting()).await?;
            writers.push(BatchWriter {
                conn,
                database: Arc::clone(&database),
                slot: Arc::clone(&slot),
            });
        }
        let conn = &mut writers[0].conn;
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('bemi-rs destination schema'))")
            .execute(&mut *tx)
            .await?;
        crate::schema::prepare(&mut tx).await?;
        tx.commit().await?;
        for writer in &mut writers {
            // A writer waits for the one before it to commit, in this process, while holding
            // its own uncommitted rows; another worker storing the same changes (a second slot)
            // can then close a cycle of waits that PostgreSQL's deadlock detector cannot see.
            // Giving up a row lock wait breaks it: the batch fails, the worker reconnects and
            // finds those changes stored.
            writer.conn.execute(WRITER_LOCK_TIMEOUT).await?;
        }
        let conn = &mut writers[0].conn;
        let resume = read_resume_point(conn, &database, &slot).await?;
        Ok(Self { writers, resume })
    }

    /// Where the last committed write left off.
    ///
    /// ```no_run
    /// # fn run(destination: &bemi_worker::destination::Destination) {
    /// let resume = destination.resume_point();
    /// # }
    /// ```
    pub fn resume_point(&self) -> ResumePoint {
        self.resume
    }

    /// The connections, to write batches with.
    ///
    /// ```no_run
    /// # fn run(destination: bemi_worker::destination::Destination) {
    /// let writers = destination.into_writers();
    /// assert!(!writers.is_empty());
    /// # }
    /// ```
    pub fn into_writers(self) -> Vec<BatchWriter> {
        self.writers
    }
}

/// One destination connection that writes batches.
#[derive(Debug)]
pub struct BatchWriter {
    conn: PgConnection,
    database: Arc<str>,
    slot: Arc<str>,
}

/// The commit of the batch before this one: `true` once it committed, `false` (or dropped) when
/// it failed.
pub type PreviousCommit = oneshot::Receiver<bool>;

impl BatchWriter {
    /// Writes the rows of `pieces` and the position `resume` (see [`advance`]) in one
    /// transaction. The rows are inserted at once; the commit waits for `previous`, and if that
    /// batch failed this one is rolled back. `committed` tells the next batch how this one
    /// ended. Returns the writer (for the next batch) and how many rows were new.
    ///
    /// ```no_run
    /// # async fn run(writer: bemi_worker::destination::BatchWriter, pieces: Vec<bemi_worker::assembler::Piece>) -> Result<(), sqlx::Error> {
    /// use bemi_worker::destination::advance;
    ///
    /// let resume = advance(Default::default(), &pieces);
    /// let (done, _next) = tokio::sync::oneshot::channel();
    /// let (writer, written) = writer.write(&pieces, resume, None, done).await;
    /// println!("{} new rows", written?);
    /// # Ok(()) }
    /// ```
    pub async fn write(
        mut self,
        pieces: &[Piece],
        resume: ResumePoint,
        previous: Option<PreviousCommit>,
        committed: oneshot::Sender<bool>,
    ) -> (Self, Result<u64, sqlx::Error>) {
        let result = self.try_write(pieces, resume, previous).await;
        if result.is_err() {
            // Best effort: a broken connection is replaced when the session restarts.
            let _ = self.conn.execute("ROLLBACK").await;
        }
        let _ = committed.send(result.is_ok());
        (self, result)
    }

    async fn try_write(
        &mut self,
        pieces: &[Piece],
        resume: ResumePoint,
        previous: Option<PreviousCommit>,
    ) -> Result<u64, sqlx::Error> {
        self.conn.execute("BEGIN").await?;
        let columns = Columns::of(pieces.iter().flat_map(|piece| piece.rows.iter()));
        let sent = columns.position.len() as i64;
        let written: i64 = if sent == 0 {
            0
        } else {
            sqlx::query_scalar(INSERT_SQL)
                .bind(&*self.database)
                .bind(columns.primary_key)
                .bind(columns.before)
                .bind(columns.after)
                .bind(columns.context)
                .bind(columns.schema)
                .bind(columns.table)
                .bind(columns.operation)
                .bind(columns.committed_at)
                .bind(columns.queued_at)
                .bind(columns.transaction_id)
                .bind(columns.position)
                .fetch_one(&mut self.conn)
                .await?
        };
        if let Some(previous) = previous
            && !previous.await.unwrap_or(false)
        {
            return Err(sqlx::Error::Protocol(
                "an earlier batch was not written; this one is rolled back".to_owned(),
            ));
        }
        let partial = resume.partial;
        sqlx::query(STATE_SQL)
            .bind(&*self.database)
            .bind(&*self.slot)
            .bind(format_lsn(resume.last_lsn))
            .bind(partial.map(|p| format_lsn(p.commit_lsn)))
            .bind(partial.map(|p| format_lsn(p.position)))
            .execute(&mut self.conn)
            .await?;
        self.conn.execute("COMMIT").await?;
        if written < sent {
            tracing::warn!(
                sent,
                written,
                "some changes of this batch were already stored; they were skipped"
            );
        }
        Ok(written as u64)
    }
}

/// A batch of rows as one array per column.
#[derive(Default)]
struct Columns<'a> {
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

impl<'a> Columns<'a> {
    fn of(rows: impl Iterator<Item = &'a ChangeRow>) -> Self {
        let mut columns = Columns::default();
        for row in rows {
            columns.primary_key.push(row.primary_key.as_deref());
            columns.before.push(&row.before);
            columns.after.push(&row.after);
            columns.context.push(&row.context);
            columns.schema.push(&row.schema);
            columns.table.push(&row.table);
            columns.operation.push(row.operation.as_str());
            columns.committed_at.push(timestamp(row.committed_at));
            columns.queued_at.push(timestamp(row.queued_at));
            columns.transaction_id.push(i64::from(row.transaction_id));
            columns.position.push(row.position as i64);
        }
        columns
    }
}

/// The position after writing `pieces` on top of `resume`.
///
/// ```
/// use bemi_worker::{assembler::{Piece, ResumePoint}, destination::advance};
///
/// let done = advance(ResumePoint::default(), &[Piece { commit_lsn: 5, rows: vec![], end_lsn: Some(9) }]);
/// assert_eq!(done.last_lsn, 9);
/// ```
pub fn advance(mut resume: ResumePoint, pieces: &[Piece]) -> ResumePoint {
    for piece in pieces {
        match piece.end_lsn {
            Some(end_lsn) => {
                resume.last_lsn = resume.last_lsn.max(end_lsn);
                resume.partial = None;
            }
            None => {
                if let Some(last) = piece.rows.last() {
                    resume.partial = Some(Partial {
                        commit_lsn: piece.commit_lsn,
                        position: last.position,
                    });
                }
            }
        }
    }
    resume
}

async fn read_resume_point(
    conn: &mut PgConnection,
    database: &str,
    slot: &str,
) -> Result<ResumePoint, sqlx::Error> {
    let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT last_lsn::text, partial_commit_lsn::text, partial_position::text \
           FROM _bemi_worker_state WHERE database = $1 AND slot = $2",
    )
    .bind(database)
    .bind(slot)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((last, commit, position)) = row else {
        return Ok(ResumePoint::default());
    };
    let parse = |text: &str| {
        parse_lsn(text).ok_or_else(|| {
            sqlx::Error::Protocol(format!("_bemi_worker_state holds an invalid LSN {text:?}"))
        })
    };
    let partial = match (commit, position) {
        (Some(commit), Some(position)) => Some(Partial {
            commit_lsn: parse(&commit)?,
            position: parse(&position)?,
        }),
        _ => None,
    };
    Ok(ResumePoint {
        last_lsn: parse(&last)?,
        partial,
    })
}

/// `0x16_B374D848` → `16/B374D848`.
///
/// ```
/// assert_eq!(bemi_worker::destination::format_lsn(0x16_B374D848), "16/B374D848");
/// ```
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// `16/B374D848` → `0x16_B374D848`.
///
/// ```
/// assert_eq!(bemi_worker::destination::parse_lsn("16/B374D848"), Some(0x16_B374D848));
/// assert_eq!(bemi_worker::destination::parse_lsn("nope"), None);
/// ```
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// µs since the Unix epoch → a timestamp.
fn timestamp(unix_micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(unix_micros).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::Operation;
    use std::sync::Arc;

    fn row(position: u64) -> ChangeRow {
        ChangeRow {
            primary_key: Some("tab\there".into()),
            before: "{}".into(),
            after: r#"{"task":"line\nbreak \\ slash"}"#.into(),
            context: Arc::from("{}"),
            schema: "public".into(),
            table: "todo".into(),
            operation: Operation::Create,
            committed_at: 1_700_000_000_123_456,
            queued_at: 1_700_000_000_123_457,
            transaction_id: 7,
            position,
        }
    }

    #[test]
    fn the_position_advances_with_whole_and_partial_transactions() {
        let start = ResumePoint::default();
        let chunk = Piece {
            commit_lsn: 500,
            rows: vec![row(10), row(20)],
            end_lsn: None,
        };
        let partial = advance(start, std::slice::from_ref(&chunk));
        assert_eq!(
            partial.partial,
            Some(Partial {
                commit_lsn: 500,
                position: 20
            })
        );
        let done = advance(
            partial,
            &[Piece {
                commit_lsn: 500,
                rows: vec![row(30)],
                end_lsn: Some(510),
            }],
        );
        assert_eq!(
            done,
            ResumePoint {
                last_lsn: 510,
                partial: None
            }
        );
        // Never backwards.
        let again = advance(
            done,
            &[Piece {
                commit_lsn: 1,
                rows: vec![],
                end_lsn: Some(2),
            }],
        );
        assert_eq!(again.last_lsn, 510);
    }
}
