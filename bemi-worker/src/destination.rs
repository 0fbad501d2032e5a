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
//! Each batch also extends the source database's hash chain ([`bemi_audit::chain`]): a batch
//! is numbered and hashed after the one dispatched before it (which hands its head over as soon
//! as it has hashed, before it inserts, so inserts still overlap), the chain's head is recorded
//! with the position, and a signed checkpoint is added when one is due. The head is read back
//! when a session starts: after a crash, the chain continues from what was committed.
//!
//! (The rows travel as arrays of one bound parameter per column, unnested by the server. COPY
//! would need several flushes per batch, which on a connection without `TCP_NODELAY` — sqlx does
//! not set it — waits for delayed ACKs: about 40 ms per batch.)

use std::sync::{Arc, Mutex};

use bemi_audit::chain::{self, ChainHead};
use bemi_audit::checkpoint::{CheckpointPolicy, Checkpointer};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::oneshot;

use crate::assembler::{Partial, Piece, ResumePoint};
use crate::capture::{Output, OutputWriter, PreviousCommit};
use crate::error::WorkerError;
use crate::lsn::{format_lsn, parse_lsn};
use crate::schema_history::{self, SchemaVersion, TableSchema};
use bemi_audit::store::ChangeBatch;

/// The worker's position per source database and slot, written in the same transaction as
/// each batch of rows. Idempotent.
const STATE_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS _bemi_worker_state (
  database text NOT NULL,
  slot text NOT NULL,
  last_lsn pg_lsn NOT NULL DEFAULT '0/0',
  partial_commit_lsn pg_lsn,
  partial_position pg_lsn,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (database, slot)
)";

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
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
    pub(crate) fn for_destination(on_source_server: bool) -> Self {
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
pub(crate) struct Destination {
    writers: Vec<BatchWriter>,
    resume: ResumePoint,
}

impl Destination {
    /// Opens `connections` connections (at least one) whose commits are as durable as
    /// `durability` says, creates the tables if missing, and reads where the worker of `slot`
    /// on the source `database` left off. `source` is the source cluster's system identifier,
    /// stored with each change.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, each argument a setting of the worker's configuration"
    )]
    pub(crate) async fn open(
        url: &str,
        source: Option<&str>,
        database: &str,
        slot: &str,
        connections: usize,
        durability: Durability,
        image_indexes: bemi_audit::schema::ImageIndexes,
        checkpoints: &CheckpointPolicy,
    ) -> Result<Self, sqlx::Error> {
        let chain_name: Arc<str> = chain::worker_chain(source, database).into();
        let (database, slot): (Arc<str>, Arc<str>) = (database.into(), slot.into());
        let source: Option<Arc<str>> = source.map(Arc::from);
        let (first_turn, baton) = oneshot::channel();
        let shared = Arc::new(ChainShared {
            name: chain_name,
            baton: Mutex::new(baton),
            checkpointer: Mutex::new(Checkpointer::new(checkpoints.clone())),
        });
        let mut writers = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let mut conn = PgConnection::connect(url).await?;
            // Confirming a position to the slot is only safe once the rows are durable.
            conn.execute(durability.setting()).await?;
            writers.push(BatchWriter {
                conn,
                source: source.clone(),
                database: Arc::clone(&database),
                slot: Arc::clone(&slot),
                chain: Arc::clone(&shared),
                turn: None,
            });
        }
        let conn = &mut writers[0].conn;
        let mut tx = conn.begin().await?;
        bemi_audit::schema::prepare_with(&mut tx, image_indexes).await?;
        sqlx::raw_sql(STATE_TABLE_SQL).execute(&mut *tx).await?;
        sqlx::raw_sql(schema_history::TABLE_SQL)
            .execute(&mut *tx)
            .await?;
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
        let head = chain::read_head(conn, &shared.name).await?;
        if let Ok(mut checkpointer) = shared.checkpointer.lock() {
            checkpointer.starts_at(head);
        }
        let _ = first_turn.send(head);
        Ok(Self { writers, resume })
    }
}

impl Destination {
    /// The schema history as of the stream's start (`start_lsn`, or the position a partly
    /// stored transaction reached): the latest stored version of each table at or before it.
    pub(crate) async fn schema_history(
        &mut self,
        start_lsn: u64,
    ) -> Result<Vec<(u64, TableSchema)>, sqlx::Error> {
        let position = self
            .resume
            .partial
            .map_or(start_lsn, |partial| partial.position.max(start_lsn));
        let writer = &mut self.writers[0];
        schema_history::load(&mut writer.conn, &writer.database, &writer.slot, position).await
    }

    /// Stores versions of the schema history read outside the stream (the baseline of tables
    /// the history did not have when the worker started).
    pub(crate) async fn store_schemas(
        &mut self,
        versions: &[SchemaVersion],
    ) -> Result<(), sqlx::Error> {
        let writer = &mut self.writers[0];
        schema_history::insert(&mut writer.conn, &writer.database, &writer.slot, versions).await
    }
}

impl Output for Destination {
    type Writer = BatchWriter;

    fn resume_point(&self) -> ResumePoint {
        self.resume
    }

    fn into_writers(self) -> Vec<BatchWriter> {
        self.writers
    }
}

/// The hash chain the writers of one session extend together.
#[derive(Debug)]
struct ChainShared {
    /// Its name ([`chain::worker_chain`]).
    name: Arc<str>,
    /// Where the next dispatched batch receives the head it links after.
    baton: Mutex<oneshot::Receiver<ChainHead>>,
    /// When the head is due a signed checkpoint (used at commit, which is in stream order).
    checkpointer: Mutex<Checkpointer>,
}

/// A batch's place in the chain: the head it links after (from the batch dispatched before
/// it), and where it hands its own head on.
type Turn = (oneshot::Receiver<ChainHead>, oneshot::Sender<ChainHead>);

/// One destination connection that writes batches.
#[derive(Debug)]
pub(crate) struct BatchWriter {
    conn: PgConnection,
    /// The source cluster's system identifier.
    source: Option<Arc<str>>,
    database: Arc<str>,
    slot: Arc<str>,
    chain: Arc<ChainShared>,
    turn: Option<Turn>,
}

impl OutputWriter for BatchWriter {
    /// Writes the rows of `pieces` and the position `resume` in one transaction. The rows are
    /// inserted at once; the commit waits for `previous`, and if that batch failed this one is
    /// rolled back.
    async fn write(
        mut self,
        pieces: &[Piece],
        resume: ResumePoint,
        previous: Option<PreviousCommit>,
        committed: oneshot::Sender<bool>,
    ) -> (Self, Result<u64, WorkerError>) {
        let result = self.try_write(pieces, resume, previous).await;
        if result.is_err() {
            // Best effort: a broken connection is replaced when the session restarts.
            let _ = self.conn.execute("ROLLBACK").await;
        }
        let _ = committed.send(result.is_ok());
        (self, result.map_err(WorkerError::Destination))
    }

    fn dispatched(&mut self) {
        let (next, after) = oneshot::channel();
        if let Ok(mut baton) = self.chain.baton.lock() {
            let previous = std::mem::replace(&mut *baton, after);
            self.turn = Some((previous, next));
        }
    }
}

impl BatchWriter {
    async fn try_write(
        &mut self,
        pieces: &[Piece],
        resume: ResumePoint,
        previous: Option<PreviousCommit>,
    ) -> Result<u64, sqlx::Error> {
        self.conn.execute("BEGIN").await?;
        let mut batch = ChangeBatch::default();
        for row in pieces.iter().flat_map(|piece| piece.rows.iter()) {
            batch.push(row.as_new_change());
        }
        let sent = batch.len() as u64;
        let chain_name = Arc::clone(&self.chain.name);
        let mut chained = batch
            .prepare_chain(
                &chain_name,
                self.source.as_deref(),
                &self.database,
                &mut self.conn,
            )
            .await?;
        let (previous_head, hand_on) = self.turn.take().ok_or_else(|| {
            sqlx::Error::Protocol("a batch was written without its turn in the chain".to_owned())
        })?;
        let head = previous_head.await.map_err(|_| {
            sqlx::Error::Protocol(
                "an earlier batch was not chained; this one is rolled back".to_owned(),
            )
        })?;
        let new_head = chained.link(head);
        let _ = hand_on.send(new_head);
        let written = chained.insert(&mut self.conn).await?;
        let schemas: Vec<SchemaVersion> = pieces
            .iter()
            .flat_map(|piece| piece.schemas.iter().cloned())
            .collect();
        schema_history::insert(&mut self.conn, &self.database, &self.slot, &schemas).await?;
        if !schemas.is_empty() {
            tracing::debug!(
                versions = schemas.len(),
                first = %format_lsn(schemas[0].lsn),
                "schema versions written with the batch"
            );
        }
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
        chain::record_head(&mut self.conn, &chain_name, head, new_head).await?;
        let checkpoint = self
            .chain
            .checkpointer
            .lock()
            .ok()
            .and_then(|clock| clock.due(&chain_name, new_head));
        if let Some(checkpoint) = &checkpoint {
            checkpoint.insert(&mut self.conn).await?;
        }
        self.conn.execute("COMMIT").await?;
        if let Some(checkpoint) = &checkpoint
            && let Ok(mut clock) = self.chain.checkpointer.lock()
            && let Err(error) = clock.committed(checkpoint)
        {
            tracing::error!(%error, seq = checkpoint.seq, "could not append a checkpoint to the checkpoint file");
        }
        if written < sent {
            tracing::warn!(
                sent,
                written,
                "some changes of this batch were already stored; they were skipped"
            );
        }
        Ok(written)
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_destination_on_the_source_server_commits_locally() {
        use crate::destination::Durability;

        assert_eq!(Durability::for_destination(true), Durability::Local);
        assert_eq!(Durability::for_destination(false), Durability::Standbys);
    }
}
