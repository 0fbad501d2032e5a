//! The capture loop, apart from where its events come from and where its rows go.
//!
//! One session is two tasks. The **stream** task reads a [`ReplicationSource`], stitches rows
//! to their contexts ([`Assembler`]) and hands [`Piece`]s to the **writer** task over a bounded
//! channel (backpressure: a slow sink slows the reading, memory stays bounded). The writer
//! takes whatever is waiting (up to `max_batch_rows`) and gives it, with the position it
//! reaches, to an idle [`OutputWriter`] — several at once when the stream is ahead — and reports
//! each position back once its batch is held, in stream order (each writer's commit waits for
//! the one before, and gives up when that one failed). Only then does the stream task confirm
//! the position to the source. When nothing is pending, keepalives and heartbeats move the
//! confirmed position along with the server, so an idle database does not hold back WAL.
//!
//! The seams are traits so that the ordering rules have fast tests with in-process doubles (a
//! scripted source, a sink that fails or stalls on command): see the tests below. The real
//! parts are the replication connection with its catalog (`crate::worker::PgSource`) and the
//! `changes` table (`crate::destination::Destination`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::assembler::{Assembler, Piece, ResumePoint};
use crate::catalog::RelationInfo;
use crate::error::WorkerError;
use crate::handoff::{self, PieceReceiver, PieceSender};
use crate::metrics::WorkerMetrics;
use crate::pgoutput::{self, PgOutput, Relation};
use crate::schema_history::{SCHEMA_PREFIX, TableSchema};
use crate::source::SourceEvent;

/// A logical replication stream that positions are confirmed to, with what describes its
/// relations.
pub(crate) trait ReplicationSource: Send {
    /// The next event; `None` when the stream ended.
    fn recv(&mut self) -> impl Future<Output = Result<Option<SourceEvent>, WorkerError>> + Send;

    /// Confirms that everything before `lsn` is durably applied; the slot may advance to it.
    fn confirm(&self, lsn: u64);

    /// What the capture needs to know of a relation announced by the stream, while the
    /// transaction `open_xid` (if any) is being decoded.
    fn describe(
        &mut self,
        relation: &Relation,
        open_xid: Option<u64>,
    ) -> impl Future<Output = Result<RelationInfo, WorkerError>> + Send;

    /// A new version of a table's schema, read at `lsn` (see `crate::schema_history`): the
    /// relations described from now on take their key and types from it.
    fn schema_changed(&mut self, lsn: u64, schema: TableSchema);

    /// Called every heartbeat interval; `idle` when no event arrived since the last call.
    fn tick(&mut self, idle: bool) -> impl Future<Output = Result<(), WorkerError>> + Send;

    /// Ends the stream (after giving a last confirmation up to `timeout` to reach the server).
    fn shutdown(&mut self, timeout: Duration) -> impl Future<Output = ()> + Send;
}

/// Where captured rows go, and how far the rows it holds reach.
pub(crate) trait Output: Send + 'static {
    /// One connection (or channel) that writes batches.
    type Writer: OutputWriter;

    /// Where the last durable write left off: the stream resumes from here, and rows up to
    /// it are not written again.
    fn resume_point(&self) -> ResumePoint;

    /// The writers, to write batches with (at least one).
    fn into_writers(self) -> Vec<Self::Writer>;
}

/// The commit of the batch before this one: `true` once it committed, `false` (or dropped)
/// when it failed.
pub(crate) type PreviousCommit = oneshot::Receiver<bool>;

/// Writes one batch at a time.
pub(crate) trait OutputWriter: Send + Sized + 'static {
    /// Writes the rows of `pieces` and the position `resume` they reach, durably and at once:
    /// the commit waits for `previous`, and if that batch failed this one is not kept.
    /// `committed` tells the next batch how this one ended (send it even on failure).
    /// Returns the writer (for the next batch) and how many rows were new.
    fn write(
        self,
        pieces: &[Piece],
        resume: ResumePoint,
        previous: Option<PreviousCommit>,
        committed: oneshot::Sender<bool>,
    ) -> impl Future<Output = (Self, Result<u64, WorkerError>)> + Send;

    /// Called in stream order when the writer is given its next batch, before
    /// [`write`](Self::write) runs (a writer that chains its batches takes its turn here).
    fn dispatched(&mut self) {}
}

/// How a session batches and reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// How often [`ReplicationSource::tick`] runs.
    pub heartbeat_interval: Duration,
    /// The most rows given to one writer at once.
    pub max_batch_rows: usize,
    /// Rows of one transaction buffered before they are handed over as a piece.
    pub chunk_rows: usize,
    /// Leave out UPDATEs that change nothing.
    pub skip_unchanged_updates: bool,
    /// The application's context key: signed contexts are checked.
    pub context_key: Option<bemi_core::signing::ContextKey>,
}

/// Runs one session: streams from `source` into `sink` until `shutdown` (`Ok`) or an error.
/// Ends by letting the writers finish what they were given and confirming their position.
pub(crate) async fn run<S: ReplicationSource, K: Output>(
    source: &mut S,
    sink: K,
    settings: Settings,
    metrics: &Arc<WorkerMetrics>,
    shutdown: &CancellationToken,
) -> Result<(), WorkerError> {
    let resume = sink.resume_point();
    let writers = sink.into_writers();
    // Rows that may wait for the writers: two full batches per writer.
    let in_flight_rows = settings
        .max_batch_rows
        .saturating_mul(2 * writers.len().max(1));
    let (pieces, piece_rx) = handoff::channel(in_flight_rows);
    let (applied_tx, applied) = watch::channel(resume);
    let writer = tokio::spawn(write_loop(
        writers,
        resume,
        piece_rx,
        applied_tx,
        Arc::clone(metrics),
        settings.max_batch_rows,
    ));
    let mut session = StreamSession {
        settings,
        source,
        assembler: Assembler::new(resume, settings.chunk_rows)
            .with_update_rules(settings.skip_unchanged_updates, Arc::clone(metrics))
            .with_context_key(settings.context_key),
        pieces: Some(pieces),
        applied,
        last_sent_end: resume.last_lsn,
        metrics,
        send_wait: Duration::ZERO,
        described: HashMap::new(),
        redescribe: HashSet::new(),
    };
    let streamed = session.stream(shutdown).await;

    // Let the writer finish what it was given, then confirm its final position.
    drop(session.pieces.take());
    let written = match writer.await {
        Ok(result) => result,
        Err(join_error) => Err(WorkerError::InvalidConfig(format!(
            "the destination writer crashed: {join_error}"
        ))),
    };
    let final_position = session.applied.borrow().last_lsn;
    session.source.confirm(final_position);
    session.source.shutdown(Duration::from_secs(5)).await;
    streamed.and(written)
}

struct StreamSession<'a, S> {
    settings: Settings,
    source: &'a mut S,
    assembler: Assembler,
    pieces: Option<PieceSender>,
    applied: watch::Receiver<ResumePoint>,
    last_sent_end: u64,
    metrics: &'a WorkerMetrics,
    /// Time the current event spent waiting for the writer (backpressure), not working.
    send_wait: Duration,
    /// The last Relation message of each relation.
    described: HashMap<u32, Relation>,
    /// Relations that got a schema version after their last Relation message: described
    /// again before their next change (a DDL's version is followed by a new Relation message
    /// anyway; one without a schema change — a baseline, or a forged message — is not).
    redescribe: HashSet<u32>,
}

impl<S: ReplicationSource> StreamSession<'_, S> {
    /// Streams until shutdown (`Ok`) or an error.
    async fn stream(&mut self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let mut tick = tokio::time::interval(self.settings.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut active = false;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                changed = self.applied.changed() => {
                    if changed.is_err() {
                        // The writer stopped: its error is reported when it is joined.
                        return Ok(());
                    }
                    let position = self.applied.borrow_and_update().last_lsn;
                    self.source.confirm(position);
                }
                _ = tick.tick() => {
                    self.source.tick(!active).await?;
                    active = false;
                }
                event = self.source.recv() => {
                    active = true;
                    match event? {
                        Some(event) => self.on_event(event).await?,
                        None => return Err(WorkerError::StreamEnded),
                    }
                }
            }
        }
    }

    async fn on_event(&mut self, event: SourceEvent) -> Result<(), WorkerError> {
        tracing::trace!(?event, "replication event");
        let started = Instant::now();
        self.send_wait = Duration::ZERO;
        let result = self.handle(event).await;
        self.metrics
            .add_stream_time(started.elapsed().saturating_sub(self.send_wait));
        result
    }

    async fn handle(&mut self, event: SourceEvent) -> Result<(), WorkerError> {
        match event {
            SourceEvent::Begin {
                commit_lsn,
                xid,
                commit_time,
            } => self.assembler.begin(commit_lsn, xid, commit_time),
            SourceEvent::Data {
                position,
                sent_at,
                data,
            } => match pgoutput::decode(&data)? {
                PgOutput::Relation(relation) => {
                    let open_xid = self.assembler.open_xid();
                    let info = self.source.describe(&relation, open_xid).await?;
                    self.assembler.relation(relation.oid, info);
                    self.redescribe.remove(&relation.oid);
                    self.described.insert(relation.oid, relation);
                }
                change => {
                    if !self.redescribe.is_empty() {
                        self.redescribe_for(&change).await?;
                    }
                    if let Some(piece) = self.assembler.change(change, position, sent_at)? {
                        self.send(piece).await?;
                    }
                }
            },
            SourceEvent::Message {
                transactional: true,
                prefix,
                content,
                ..
            } if prefix == bemi_core::protocol::MESSAGE_PREFIX => {
                self.assembler.context_message(&content);
            }
            SourceEvent::Message {
                transactional: true,
                prefix,
                content,
                ..
            } if prefix == bemi_core::protocol::SQLCOMMENTER_MESSAGE_PREFIX => {
                self.assembler.sqlcommenter_message(&content);
            }
            SourceEvent::Message {
                transactional: true,
                prefix,
                content,
                lsn,
            } if prefix == SCHEMA_PREFIX => {
                if let Some(schema) = self.assembler.schema_message(lsn, &content) {
                    if self.described.contains_key(&schema.oid) {
                        self.redescribe.insert(schema.oid);
                    }
                    self.source.schema_changed(lsn, schema);
                }
            }
            SourceEvent::Message {
                transactional: false,
                lsn,
                ..
            } => self.confirm_if_idle(lsn),
            SourceEvent::Message { .. } => {}
            SourceEvent::Commit {
                commit_lsn,
                end_lsn,
            } => {
                let piece = self.assembler.commit(commit_lsn, end_lsn)?;
                self.last_sent_end = end_lsn;
                self.metrics.record_received(end_lsn);
                self.send(piece).await?;
            }
            SourceEvent::KeepAlive { wal_end } => {
                self.metrics.record_server_position(wal_end);
                self.confirm_if_idle(wal_end);
            }
        }
        Ok(())
    }

    /// Describes again, from their last Relation message, the relations of `change` that got
    /// a schema version since (so that the version is checked and in force from here on).
    async fn redescribe_for(&mut self, change: &PgOutput<'_>) -> Result<(), WorkerError> {
        let oids: &[u32] = match change {
            PgOutput::Insert { relation, .. }
            | PgOutput::Update { relation, .. }
            | PgOutput::Delete { relation, .. } => std::slice::from_ref(relation),
            PgOutput::Truncate { relations, .. } => relations,
            _ => &[],
        };
        for oid in oids {
            if !self.redescribe.remove(oid) {
                continue;
            }
            if let Some(relation) = self.described.get(oid) {
                let open_xid = self.assembler.open_xid();
                let info = self.source.describe(relation, open_xid).await?;
                self.assembler.relation(*oid, info);
            }
        }
        Ok(())
    }

    /// With nothing open or pending, everything the server sent before `lsn` is applied: the
    /// slot may move there (this is what keeps an idle database's slot advancing).
    fn confirm_if_idle(&self, lsn: u64) {
        let applied = self.applied.borrow().last_lsn;
        if !self.assembler.in_transaction() && applied >= self.last_sent_end {
            self.source.confirm(lsn);
            self.metrics.record_confirmed(lsn);
        }
    }

    async fn send(&mut self, piece: Piece) -> Result<(), WorkerError> {
        let Some(pieces) = &self.pieces else {
            return Ok(());
        };
        let started = Instant::now();
        let sent = pieces.send(piece).await;
        self.send_wait += started.elapsed();
        if sent.is_err() {
            // The writer stopped; the session ends and reports its error.
            self.pieces = None;
            return Err(WorkerError::StreamEnded);
        }
        Ok(())
    }
}

/// The writer task: takes batches of pieces and writes each with an idle writer — several at
/// once when the stream is ahead — reporting each position once its batch committed, in stream
/// order (each batch's commit waits for the one before).
async fn write_loop<W: OutputWriter>(
    mut idle: Vec<W>,
    mut resume: ResumePoint,
    mut pieces: PieceReceiver,
    applied: watch::Sender<ResumePoint>,
    metrics: Arc<WorkerMetrics>,
    max_batch_rows: usize,
) -> Result<(), WorkerError> {
    let mut in_flight: VecDeque<InFlight<W>> = VecDeque::new();
    let mut previous: Option<PreviousCommit> = None;
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            batch = pieces.recv_batch(max_batch_rows), if open && !idle.is_empty() => {
                let Some(batch) = batch else {
                    open = false;
                    continue;
                };
                let mut writer = idle.pop().expect("an idle writer");
                writer.dispatched();
                resume = resume.advanced(&batch.pieces);
                let (committed, next) = oneshot::channel();
                let started = Instant::now();
                let task = tokio::spawn({
                    let previous = previous.replace(next);
                    async move {
                        let (writer, written) =
                            writer.write(&batch.pieces, resume, previous, committed).await;
                        (writer, written, batch)
                    }
                });
                in_flight.push_back(InFlight { task, resume, started });
            }
            done = async { (&mut in_flight.front_mut().expect("a batch in flight").task).await },
                if !in_flight.is_empty() =>
            {
                let InFlight { resume, started, .. } =
                    in_flight.pop_front().expect("a batch in flight");
                let (writer, written, batch) = done.map_err(|e| {
                    WorkerError::InvalidConfig(format!("a destination writer crashed: {e}"))
                })?;
                written?;
                idle.push(writer);
                metrics.add_write_time(started.elapsed());
                tracing::debug!(
                    rows = batch.rows,
                    pieces = batch.pieces.len(),
                    elapsed = ?started.elapsed(),
                    "wrote a batch"
                );
                pieces.release(&batch);
                let transactions =
                    batch.pieces.iter().filter(|p| p.end_lsn.is_some()).count() as u64;
                let last_commit = batch
                    .pieces
                    .iter()
                    .rev()
                    .find_map(|p| p.rows.last())
                    .map_or(0, |row| row.committed_at);
                metrics.record_write(batch.rows as u64, transactions, resume.last_lsn, last_commit);
                applied.send_replace(resume);
            }
        }
    }
    Ok(())
}

/// A batch being written.
struct InFlight<W> {
    task: tokio::task::JoinHandle<(W, Result<u64, WorkerError>, handoff::Batch)>,
    resume: ResumePoint,
    started: Instant,
}

#[cfg(test)]
mod tests {
    //! The ordering rules of the capture loop, with a scripted source and an in-memory sink
    //! that fails or stalls on command. (The same rules against PostgreSQL, with kill -9: the
    //! end-to-end tests.)

    use std::collections::{HashMap, VecDeque};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::sync::{Semaphore, oneshot};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::catalog::ColumnInfo;
    use crate::json_value::TypeKind;
    use crate::rows::ChangeRow;

    const TODO: u32 = 16_385;

    /// One transaction of the script: its commit LSN, end LSN and rows (their positions).
    #[derive(Debug, Clone)]
    struct Transaction {
        commit_lsn: u64,
        end_lsn: u64,
        positions: Vec<u64>,
    }

    /// `count` transactions of `rows` inserts each, in WAL order.
    fn transactions(count: u64, rows: u64) -> Vec<Transaction> {
        (0..count)
            .map(|t| {
                let start = 1_000 * (t + 1);
                Transaction {
                    commit_lsn: start + 900,
                    end_lsn: start + 950,
                    positions: (0..rows).map(|r| start + 10 * (r + 1)).collect(),
                }
            })
            .collect()
    }

    /// The events PostgreSQL sends for `script` to a slot confirmed up to `confirmed`: every
    /// transaction that ends after it, whole (a transaction is never sent in part).
    fn events(script: &[Transaction], confirmed: u64) -> VecDeque<SourceEvent> {
        let mut events = VecDeque::new();
        for (xid, transaction) in script.iter().enumerate() {
            if transaction.end_lsn <= confirmed {
                continue;
            }
            events.push_back(SourceEvent::Begin {
                commit_lsn: transaction.commit_lsn,
                xid: xid as u64 + 700,
                commit_time: 0,
            });
            events.push_back(data(0, relation_message()));
            events.push_back(SourceEvent::Message {
                transactional: true,
                lsn: transaction.positions[0] - 1,
                prefix: bemi_core::protocol::MESSAGE_PREFIX.to_owned(),
                content: Bytes::from(format!(r#"{{"transaction":{xid}}}"#)),
            });
            for &position in &transaction.positions {
                events.push_back(data(position, insert_message(position)));
            }
            events.push_back(SourceEvent::Commit {
                commit_lsn: transaction.commit_lsn,
                end_lsn: transaction.end_lsn,
            });
        }
        events
    }

    fn data(position: u64, message: Vec<u8>) -> SourceEvent {
        SourceEvent::Data {
            position,
            sent_at: 0,
            data: Bytes::from(message),
        }
    }

    /// pgoutput's Relation message of `public.todo (id int8)`.
    fn relation_message() -> Vec<u8> {
        let mut message = vec![b'R'];
        message.extend(TODO.to_be_bytes());
        message.extend(b"public\0todo\0");
        message.push(b'f');
        message.extend(1u16.to_be_bytes());
        message.push(1);
        message.extend(b"id\0");
        message.extend(20u32.to_be_bytes());
        message.extend((-1i32).to_be_bytes());
        message
    }

    /// pgoutput's Insert message of the row whose id is `id`.
    fn insert_message(id: u64) -> Vec<u8> {
        let value = id.to_string();
        let mut message = vec![b'I'];
        message.extend(TODO.to_be_bytes());
        message.push(b'N');
        message.extend(1u16.to_be_bytes());
        message.push(b't');
        message.extend((value.len() as u32).to_be_bytes());
        message.extend(value.as_bytes());
        message
    }

    /// A source that plays a script, then waits; it remembers the highest position confirmed.
    struct ScriptedSource {
        events: VecDeque<SourceEvent>,
        confirmed: Arc<AtomicU64>,
        /// How many times a relation was described.
        describes: Arc<AtomicUsize>,
    }

    impl ScriptedSource {
        fn new(events: VecDeque<SourceEvent>) -> Self {
            Self {
                events,
                confirmed: Arc::default(),
                describes: Arc::default(),
            }
        }
    }

    impl ReplicationSource for ScriptedSource {
        async fn recv(&mut self) -> Result<Option<SourceEvent>, WorkerError> {
            match self.events.pop_front() {
                Some(event) => Ok(Some(event)),
                None => std::future::pending().await,
            }
        }

        fn confirm(&self, lsn: u64) {
            self.confirmed.fetch_max(lsn, Ordering::SeqCst);
        }

        async fn describe(
            &mut self,
            relation: &Relation,
            _open_xid: Option<u64>,
        ) -> Result<RelationInfo, WorkerError> {
            assert_eq!(relation.oid, TODO);
            self.describes.fetch_add(1, Ordering::SeqCst);
            Ok(RelationInfo {
                schema: "public".into(),
                table: "todo".into(),
                columns: vec![ColumnInfo {
                    json_key: "\"id\":".into(),
                    kind: TypeKind::Int,
                    redacted: false,
                    ignored: false,
                }],
                primary_key: vec![0],
                key_unknown: None,
                captured: true,
            })
        }

        fn schema_changed(&mut self, _lsn: u64, _schema: TableSchema) {}

        async fn tick(&mut self, _idle: bool) -> Result<(), WorkerError> {
            Ok(())
        }

        async fn shutdown(&mut self, _timeout: Duration) {}
    }

    /// What the in-memory sink holds: rows as written (duplicates kept, so that a test sees
    /// them) and the position, changed together at each commit.
    #[derive(Debug, Default)]
    struct Held {
        rows: Vec<ChangeRow>,
        resume: ResumePoint,
    }

    /// Faults of the in-memory sink.
    #[derive(Debug, Default)]
    struct Faults {
        /// Writes started so far (the first is number 1).
        started: AtomicUsize,
        /// The write that holds the row at this position fails (after waiting for its turn).
        fail_at: Option<u64>,
        /// With a gate, each write waits for a permit before it commits.
        gate: Option<Arc<Semaphore>>,
    }

    #[derive(Clone)]
    struct MemorySink {
        held: Arc<Mutex<Held>>,
        faults: Arc<Faults>,
        writers: usize,
    }

    impl MemorySink {
        fn new(writers: usize, faults: Faults) -> Self {
            Self {
                held: Arc::default(),
                faults: Arc::new(faults),
                writers,
            }
        }

        /// The same storage, behind a new session, with other faults (a restart).
        fn restarted(&self, faults: Faults) -> Self {
            Self {
                held: Arc::clone(&self.held),
                faults: Arc::new(faults),
                writers: self.writers,
            }
        }

        fn positions(&self) -> Vec<u64> {
            let held = self.held.lock().unwrap();
            held.rows.iter().map(|row| row.position).collect()
        }

        fn resume(&self) -> ResumePoint {
            self.held.lock().unwrap().resume
        }
    }

    impl Output for MemorySink {
        type Writer = MemoryWriter;

        fn resume_point(&self) -> ResumePoint {
            self.resume()
        }

        fn into_writers(self) -> Vec<MemoryWriter> {
            (0..self.writers)
                .map(|_| MemoryWriter {
                    held: Arc::clone(&self.held),
                    faults: Arc::clone(&self.faults),
                })
                .collect()
        }
    }

    struct MemoryWriter {
        held: Arc<Mutex<Held>>,
        faults: Arc<Faults>,
    }

    impl OutputWriter for MemoryWriter {
        async fn write(
            self,
            pieces: &[Piece],
            resume: ResumePoint,
            previous: Option<PreviousCommit>,
            committed: oneshot::Sender<bool>,
        ) -> (Self, Result<u64, WorkerError>) {
            let number = self.faults.started.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(gate) = &self.faults.gate {
                gate.acquire().await.unwrap().forget();
            }
            let earlier_ok = match previous {
                Some(previous) => previous.await.unwrap_or(false),
                None => true,
            };
            let doomed = self.faults.fail_at.is_some_and(|position| {
                pieces
                    .iter()
                    .flat_map(|p| &p.rows)
                    .any(|row| row.position == position)
            });
            if !earlier_ok || doomed {
                let _ = committed.send(false);
                let error = WorkerError::InvalidConfig(format!("write {number} failed"));
                return (self, Err(error));
            }
            let rows: Vec<ChangeRow> = pieces.iter().flat_map(|p| p.rows.clone()).collect();
            let count = rows.len() as u64;
            {
                let mut held = self.held.lock().unwrap();
                held.rows.extend(rows);
                held.resume = resume;
            }
            let _ = committed.send(true);
            (self, Ok(count))
        }
    }

    fn settings(max_batch_rows: usize, chunk_rows: usize) -> Settings {
        Settings {
            heartbeat_interval: Duration::from_secs(3600),
            max_batch_rows,
            chunk_rows,
            skip_unchanged_updates: true,
            context_key: None,
        }
    }

    /// Polls `condition` every few milliseconds for at most ten seconds.
    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A capture session on its own task: its result, the confirmed position, and the token
    /// that stops it.
    struct Session {
        task: tokio::task::JoinHandle<Result<(), WorkerError>>,
        confirmed: Arc<AtomicU64>,
        shutdown: CancellationToken,
    }

    fn start(source: ScriptedSource, sink: MemorySink, settings: Settings) -> Session {
        let confirmed = Arc::clone(&source.confirmed);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let mut source = source;
                let metrics = Arc::new(WorkerMetrics::default());
                run(&mut source, sink, settings, &metrics, &shutdown).await
            }
        });
        Session {
            task,
            confirmed,
            shutdown,
        }
    }

    #[tokio::test]
    async fn a_schema_version_without_a_new_relation_message_is_applied_at_the_next_change() {
        let schema = |oid: u32, lsn: u64| SourceEvent::Message {
            transactional: true,
            lsn,
            prefix: SCHEMA_PREFIX.to_owned(),
            content: Bytes::from(format!(r#"{{"oid": {oid}, "key": ["id"]}}"#)),
        };
        let insert = |position: u64| data(position, insert_message(position));
        let events = VecDeque::from([
            SourceEvent::Begin {
                commit_lsn: 900,
                xid: 700,
                commit_time: 0,
            },
            data(0, relation_message()),
            insert(110),
            // A version with no schema change behind it (a baseline, or a forgery): described
            // again, once, before the table's next change.
            schema(TODO, 115),
            insert(120),
            insert(130),
            // A DDL's version: the new Relation message describes the table, nothing more.
            schema(TODO, 135),
            data(0, relation_message()),
            insert(140),
            // A table this session never described: nothing to do.
            schema(TODO + 1, 145),
            insert(150),
            SourceEvent::Commit {
                commit_lsn: 900,
                end_lsn: 950,
            },
        ]);
        let source = ScriptedSource::new(events);
        let describes = Arc::clone(&source.describes);
        let sink = MemorySink::new(1, Faults::default());
        let session = start(source, sink.clone(), settings(100, 100));
        wait_until("the transaction held", || sink.positions().len() == 5).await;
        assert_eq!(describes.load(Ordering::SeqCst), 3);
        session.shutdown.cancel();
        session.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_position_is_confirmed_only_once_the_sink_holds_it() {
        let script = transactions(3, 2);
        let gate = Arc::new(Semaphore::new(0));
        let faults = Faults {
            gate: Some(Arc::clone(&gate)),
            ..Faults::default()
        };
        let sink = MemorySink::new(2, faults);
        let session = start(
            ScriptedSource::new(events(&script, 0)),
            sink.clone(),
            settings(2, 100),
        );
        // Both writers hold a batch, stalled before their commit: nothing is confirmed.
        wait_until("two writes started", || {
            sink.faults.started.load(Ordering::SeqCst) == 2
        })
        .await;
        tokio::task::yield_now().await;
        assert_eq!(session.confirmed.load(Ordering::SeqCst), 0);
        assert!(sink.positions().is_empty());

        // One commit: exactly the first transaction's end is confirmed.
        gate.add_permits(1);
        wait_until("the first batch held", || sink.positions().len() == 2).await;
        wait_until("its position confirmed", || {
            session.confirmed.load(Ordering::SeqCst) == script[0].end_lsn
        })
        .await;

        gate.add_permits(10);
        let last = script.last().unwrap().end_lsn;
        wait_until("everything confirmed", || {
            session.confirmed.load(Ordering::SeqCst) == last
        })
        .await;
        assert_eq!(sink.positions().len(), 6);
        assert_eq!(sink.resume().last_lsn, last);
        session.shutdown.cancel();
        session.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_failed_batch_keeps_the_batches_after_it_from_committing() {
        let script = transactions(4, 1);
        // The first write fails once the second has been given its batch.
        let gate = Arc::new(Semaphore::new(0));
        let faults = Faults {
            fail_at: Some(script[0].positions[0]),
            gate: Some(Arc::clone(&gate)),
            ..Faults::default()
        };
        let sink = MemorySink::new(2, faults);
        let session = start(
            ScriptedSource::new(events(&script, 0)),
            sink.clone(),
            settings(1, 100),
        );
        wait_until("two writes started", || {
            sink.faults.started.load(Ordering::SeqCst) == 2
        })
        .await;
        gate.add_permits(10);
        let outcome = session.task.await.unwrap();
        assert!(outcome.is_err(), "{outcome:?}");
        // The second batch was written after the first, but its commit waited for the first
        // and gave up: nothing is held, nothing confirmed.
        assert!(sink.positions().is_empty(), "{:?}", sink.positions());
        assert_eq!(sink.resume(), ResumePoint::default());
        assert_eq!(session.confirmed.load(Ordering::SeqCst), 0);
    }

    /// Chaos seed 2 (direct): the destination failed while a large transaction waited for room
    /// in the hand-off; the stream waited for that room forever — no reconnect, and a SIGTERM
    /// that never finished.
    #[tokio::test]
    async fn a_writer_that_fails_while_the_stream_waits_for_room_ends_the_session() {
        // One transaction of 50 rows in chunks of 1; room for 4 rows in flight.
        let script = transactions(1, 50);
        let faults = Faults {
            fail_at: Some(script[0].positions[0]),
            ..Faults::default()
        };
        let sink = MemorySink::new(1, faults);
        let session = start(
            ScriptedSource::new(events(&script, 0)),
            sink.clone(),
            settings(2, 1),
        );
        let outcome = tokio::time::timeout(Duration::from_secs(10), session.task)
            .await
            .expect("the session ended after its writer failed")
            .unwrap();
        assert!(outcome.is_err(), "{outcome:?}");
        assert!(sink.positions().is_empty(), "{:?}", sink.positions());
    }

    #[tokio::test]
    async fn a_restart_resumes_where_the_sink_left_off_and_stores_each_row_once() {
        // Two small transactions, one of 10 rows written in chunks of 3, and two more.
        let mut script = transactions(2, 1);
        let big = Transaction {
            commit_lsn: 50_000,
            end_lsn: 50_100,
            positions: (1..=10).map(|i| 40_000 + i * 10).collect(),
        };
        script.push(big.clone());
        script.extend(transactions(2, 1).into_iter().map(|t| Transaction {
            commit_lsn: t.commit_lsn + 60_000,
            end_lsn: t.end_lsn + 60_000,
            positions: t.positions.iter().map(|p| p + 60_000).collect(),
        }));
        let expected: Vec<u64> = script.iter().flat_map(|t| t.positions.clone()).collect();

        // The write of the big transaction's last row fails: the session ends with its first
        // three chunks held, and a partial position at the ninth row.
        let sink = MemorySink::new(
            1,
            Faults {
                fail_at: Some(big.positions[9]),
                ..Faults::default()
            },
        );
        let session = start(
            ScriptedSource::new(events(&script, 0)),
            sink.clone(),
            settings(3, 3),
        );
        assert!(session.task.await.unwrap().is_err());
        let resume = sink.resume();
        assert_eq!(resume.last_lsn, script[1].end_lsn);
        assert_eq!(
            resume.partial.map(|p| (p.commit_lsn, p.position)),
            Some((big.commit_lsn, big.positions[8]))
        );
        assert!(session.confirmed.load(Ordering::SeqCst) <= script[1].end_lsn);

        // The slot re-sends from the confirmed position: the big transaction again, whole.
        let sink = sink.restarted(Faults::default());
        let confirmed = session.confirmed.load(Ordering::SeqCst);
        let session = start(
            ScriptedSource::new(events(&script, confirmed)),
            sink.clone(),
            settings(3, 3),
        );
        let last = script.last().unwrap().end_lsn;
        wait_until("everything confirmed", || {
            session.confirmed.load(Ordering::SeqCst) == last
        })
        .await;
        session.shutdown.cancel();
        session.task.await.unwrap().unwrap();

        let mut held = sink.positions();
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for position in &held {
            *seen.entry(*position).or_default() += 1;
        }
        assert!(seen.values().all(|&n| n == 1), "duplicates: {seen:?}");
        held.sort_unstable();
        assert_eq!(held, expected);
    }
}
