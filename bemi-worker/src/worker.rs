//! The capture loop: stream the WAL, stitch, write, confirm — and reconnect with backoff.
//!
//! One session is two tasks. The **stream** task reads the replication connection, decodes
//! pgoutput, stitches rows to their contexts ([`Assembler`]) and hands [`Piece`]s to the
//! **writer** task over a bounded channel (backpressure: a slow destination slows the reading,
//! memory stays bounded). The writer takes whatever is waiting (up to `max_batch_rows`), writes it
//! with the new position in one destination transaction, and reports the position back; only then
//! does the stream task confirm it to the slot. When nothing is pending, keepalives and
//! heartbeats move the confirmed position along with the server, so an idle database does not
//! hold back WAL.
//!
//! Any failure ends the session; the worker reconnects with exponential backoff (0.5 s to 30 s)
//! and resumes from the position the destination recorded. Misconfiguration (see
//! [`WorkerError::is_retryable`]) stops it with an error that names the fix.
//!
//! ```no_run
//! use bemi_worker::{Worker, WorkerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), bemi_worker::WorkerError> {
//! let worker = Worker::new(WorkerConfig::new("postgres://bemi:secret@127.0.0.1/app"));
//! let shutdown = CancellationToken::new();
//! // e.g. cancel on SIGTERM: shutdown.cancel();
//! worker.run(shutdown).await?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::assembler::{Assembler, Piece, ResumePoint};
use crate::catalog::Catalog;
use crate::config::WorkerConfig;
use crate::destination::{BatchWriter, Destination, Durability, PreviousCommit, advance};
use crate::error::WorkerError;
use crate::handoff::{self, PieceReceiver, PieceSender};
use crate::metrics::{self, WorkerMetrics};
use crate::pgoutput::{self, PgOutput};
use crate::setup;
use crate::source::{PgWireSource, ReplicationSource, SourceConnection, SourceEvent};

/// The prefix of context messages.
const CONTEXT_PREFIX: &str = bemi_core::protocol::MESSAGE_PREFIX;
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A capture worker.
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    metrics: Arc<WorkerMetrics>,
}

impl Worker {
    /// A worker for `config`; nothing happens until [`run`](Self::run).
    ///
    /// ```
    /// let worker = bemi_worker::Worker::new(bemi_worker::WorkerConfig::new("postgres://localhost/app"));
    /// assert_eq!(worker.metrics().changes_written(), 0);
    /// ```
    pub fn new(config: WorkerConfig) -> Self {
        Self {
            config,
            metrics: Arc::new(WorkerMetrics::default()),
        }
    }

    /// The worker's metrics.
    ///
    /// ```
    /// let worker = bemi_worker::Worker::new(bemi_worker::WorkerConfig::new("postgres://localhost/app"));
    /// println!("{}", worker.metrics().render());
    /// ```
    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Captures changes until `shutdown` is cancelled (then returns `Ok` after writing and
    /// confirming what it has), or until an error that retrying cannot fix.
    ///
    /// ```no_run
    /// # async fn run(worker: bemi_worker::Worker) -> Result<(), bemi_worker::WorkerError> {
    /// let shutdown = tokio_util::sync::CancellationToken::new();
    /// tokio::spawn({
    ///     let shutdown = shutdown.clone();
    ///     async move {
    ///         let _ = tokio::signal::ctrl_c().await;
    ///         shutdown.cancel();
    ///     }
    /// });
    /// worker.run(shutdown).await
    /// # }
    /// ```
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        crate::tls::install_crypto_provider();
        // TLS settings that cannot work stop the worker now, not at every reconnect.
        for (which, url) in [
            ("source", Some(&self.config.source_url)),
            ("destination", self.config.destination_url.as_ref()),
        ] {
            let Some(url) = url else { continue };
            if crate::tls::TlsSettings::from_url(url)?.ignores_root_cert() {
                tracing::warn!(
                    which,
                    "the {which} URL names sslrootcert but its sslmode does not verify the \
                     server's certificate (libpq would with require; this client does not): use \
                     sslmode=verify-full"
                );
            }
        }
        if let Some(addr) = self.config.metrics_addr {
            let listener = metrics::bind(addr).await?;
            tracing::info!(%addr, "serving metrics");
            tokio::spawn(metrics::serve(
                listener,
                self.metrics(),
                shutdown.child_token(),
            ));
        }
        // Creates the next months' partitions of `changes` ahead of time (when it is
        // partitioned; a no-op otherwise).
        let destination = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy(self.config.destination_url())
            .map_err(|e| WorkerError::InvalidConfig(format!("destination URL: {e}")))?;
        tokio::spawn(bemi_audit::schema::maintain_partitions(
            destination,
            bemi_audit::schema::PARTITION_CHECK_INTERVAL,
            shutdown.child_token(),
        ));
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = Instant::now();
            let result = self.session(&shutdown).await;
            self.metrics.set_connected(false);
            let error = match result {
                Ok(()) => return Ok(()),
                Err(error) if !error.is_retryable() => return Err(error),
                Err(error) => error,
            };
            self.metrics.record_error();
            if started.elapsed() > MAX_BACKOFF {
                backoff = MIN_BACKOFF;
            }
            let delay = jitter(backoff);
            tracing::warn!(error = %error, retry_in = ?delay, "capture interrupted; reconnecting");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Checks the source and creates the publication and the slot, without streaming: changes
    /// committed after this returns are captured by [`run`](Self::run), even if it starts
    /// later. `run` does the same when it starts; call this first when writes must not be
    /// missed between now and then (tests, benchmarks, a deploy that starts writers first).
    ///
    /// ```no_run
    /// # async fn run(worker: bemi_worker::Worker) -> Result<(), bemi_worker::WorkerError> {
    /// worker.prepare().await?;
    /// // ... start the writers ...
    /// worker.run(tokio_util::sync::CancellationToken::new()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn prepare(&self) -> Result<(), WorkerError> {
        crate::tls::install_crypto_provider();
        let pool = self.source_pool().await?;
        self.prepare_source(&pool).await?;
        pool.close().await;
        Ok(())
    }

    /// A small pool of the source database for catalog queries, the publication and the slot.
    async fn source_pool(&self) -> Result<PgPool, WorkerError> {
        let mut options: PgConnectOptions = self
            .config
            .source_url
            .parse()
            .map_err(|e| WorkerError::InvalidConfig(format!("source URL: {e}")))?;
        if options.get_application_name().is_none() {
            // Named in pg_stat_activity, like the replication connection.
            options = options.application_name("bemi-worker");
        }
        // Its commits (publication, slot) must not wait for synchronous standbys: the worker
        // may be one itself.
        options = options.options([("synchronous_commit", "local")]);
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(WorkerError::Source)
    }

    /// The checks, the publication and the slot; what the slot is like.
    async fn prepare_source(&self, pool: &PgPool) -> Result<setup::SlotState, WorkerError> {
        let config = &self.config;
        setup::check_source(pool, &config.slot).await?;
        setup::sync_publication(pool, config).await?;
        setup::ensure_slot(pool, &config.slot).await?;
        setup::check_source(pool, &config.slot).await
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let config = &self.config;
        let source = SourceConnection::from_url(&config.source_url)?;
        let pool = self.source_pool().await?;
        let slot = self.prepare_source(&pool).await?;

        let destination = Destination::open(
            config.destination_url(),
            source.database(),
            &config.slot,
            config.writer_connections,
            Durability::for_destination(same_server(&config.source_url, config.destination_url())),
        )
        .await
        .map_err(WorkerError::Destination)?;
        let resume = destination.resume_point();
        let start_lsn = resume.last_lsn.max(slot.confirmed_flush.unwrap_or(0));
        let stream =
            PgWireSource::start(&source, &config.slot, &config.publication, start_lsn).await?;
        self.metrics.set_connected(true);
        self.metrics.record_confirmed(start_lsn);
        tracing::info!(
            slot = %config.slot,
            start = %crate::destination::format_lsn(start_lsn),
            "streaming changes"
        );

        // Rows that may wait for the writer: two full batches per connection.
        let in_flight_rows = config
            .max_batch_rows
            .saturating_mul(2 * config.writer_connections.max(1));
        let (pieces, piece_rx) = handoff::channel(in_flight_rows);
        let (applied_tx, applied) = watch::channel(resume);
        let writer = tokio::spawn(write_loop(
            destination,
            piece_rx,
            applied_tx,
            self.metrics(),
            config.max_batch_rows,
        ));
        let mut session = StreamSession {
            config,
            pool,
            stream,
            assembler: Assembler::new(resume, config.chunk_rows),
            catalog: None,
            pieces: Some(pieces),
            applied,
            last_sent_end: resume.last_lsn,
            metrics: &self.metrics,
            send_wait: Duration::ZERO,
            shutdown: shutdown.clone(),
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
        session.stream.confirm(final_position);
        session.stream.shutdown(Duration::from_secs(5)).await;
        streamed.and(written)
    }
}

struct StreamSession<'a> {
    config: &'a WorkerConfig,
    pool: PgPool,
    stream: PgWireSource,
    assembler: Assembler,
    catalog: Option<Catalog>,
    pieces: Option<PieceSender>,
    applied: watch::Receiver<ResumePoint>,
    last_sent_end: u64,
    metrics: &'a WorkerMetrics,
    /// Time the current event spent waiting for the writer (backpressure), not working.
    send_wait: Duration,
    /// Cuts short waits inside an event (see [`Catalog::wait_for_transaction`]).
    shutdown: CancellationToken,
}

impl StreamSession<'_> {
    /// Streams until shutdown (`Ok`) or an error.
    async fn stream(&mut self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
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
                    self.stream.confirm(position);
                }
                _ = tick.tick() => {
                    self.on_tick(active).await?;
                    active = false;
                }
                event = self.stream.recv() => {
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
                    let catalog = self
                        .catalog
                        .get_or_insert_with(|| Catalog::new(self.pool.clone()));
                    // Its schema may have changed in this very transaction (see catalog.rs).
                    if let Some(xid) = self.assembler.open_xid() {
                        catalog
                            .wait_for_transaction(xid, &self.config.slot, &self.shutdown)
                            .await
                            .map_err(WorkerError::Source)?;
                    }
                    let info = catalog
                        .describe(&relation, self.config)
                        .await
                        .map_err(WorkerError::Source)?;
                    self.assembler.relation(relation.oid, info);
                }
                change => {
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
            } if prefix == CONTEXT_PREFIX => self.assembler.context_message(&content),
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

    /// With nothing open or pending, everything the server sent before `lsn` is applied: the
    /// slot may move there (this is what keeps an idle database's slot advancing).
    fn confirm_if_idle(&self, lsn: u64) {
        let applied = self.applied.borrow().last_lsn;
        if !self.assembler.in_transaction() && applied >= self.last_sent_end {
            self.stream.confirm(lsn);
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

    async fn on_tick(&mut self, active: bool) -> Result<(), WorkerError> {
        match setup::sync_publication(&self.pool, self.config).await {
            Ok(added) if !added.is_empty() => tracing::warn!(
                tables = ?added,
                "added tables to the publication that the migration's event trigger had not \
                 added; their changes before now were not captured (install tracking as a \
                 superuser so new tables are published as they are created)"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not check the publication"),
        }
        if !active {
            setup::heartbeat(&self.pool).await?;
        }
        Ok(())
    }
}

/// The writer task: takes batches of pieces and writes each with an idle [`BatchWriter`] — several
/// at once when the stream is ahead — reporting each position once its batch committed, in
/// stream order (each batch's commit waits for the one before).
async fn write_loop(
    destination: Destination,
    mut pieces: PieceReceiver,
    applied: watch::Sender<ResumePoint>,
    metrics: Arc<WorkerMetrics>,
    max_batch_rows: usize,
) -> Result<(), WorkerError> {
    let mut resume = destination.resume_point();
    let mut idle = destination.into_writers();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut previous: Option<PreviousCommit> = None;
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            batch = pieces.recv_batch(max_batch_rows), if open && !idle.is_empty() => {
                let Some(batch) = batch else {
                    open = false;
                    continue;
                };
                let writer = idle.pop().expect("an idle writer");
                resume = advance(resume, &batch.pieces);
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
                written.map_err(WorkerError::Destination)?;
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
struct InFlight {
    task: tokio::task::JoinHandle<(BatchWriter, Result<u64, sqlx::Error>, handoff::Batch)>,
    resume: ResumePoint,
    started: Instant,
}

/// ±25 % so that many workers do not reconnect in lockstep.
fn jitter(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    delay.mul_f64(factor)
}

/// Whether two database URLs name the same server (host and port; databases may differ).
fn same_server(a: &str, b: &str) -> bool {
    let server = |url: &str| {
        url.parse::<PgConnectOptions>()
            .ok()
            .map(|o| (o.get_host().to_owned(), o.get_port()))
    };
    let server_a = server(a);
    server_a.is_some() && server_a == server(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_server_compares_host_and_port_not_the_database() {
        assert!(same_server(
            "postgres://u@db:5432/app",
            "postgres://w@db/audit"
        ));
        assert!(!same_server(
            "postgres://u@db/app",
            "postgres://u@db:6543/app"
        ));
        assert!(!same_server(
            "postgres://u@db/app",
            "postgres://u@other/app"
        ));
    }
}
