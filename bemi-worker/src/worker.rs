//! The capture loop: stream the WAL, stitch, write, confirm — and reconnect with backoff.
//!
//! One session connects to the source (checks, publication, slot), opens the destination,
//! and runs the capture loop ([`crate::capture`]) between the replication stream
//! ([`PgSource`]: the stream and the catalog that describes its relations) and the `changes`
//! table ([`Destination`]).
//!
//! Any failure ends the session; the worker reconnects with exponential backoff (0.5 s to 30 s)
//! and resumes from the position the destination recorded. Misconfiguration (see
//! [`WorkerError::is_retryable`]) stops it with an error that names the fix.
//!
//! ```no_run
//! use bemi_worker::{Worker, WorkerConfig};
//!
//! # async fn run() -> Result<(), bemi_worker::WorkerError> {
//! let worker = Worker::new(WorkerConfig::new("postgres://bemi:secret@127.0.0.1/app")).spawn();
//! // … e.g. on SIGTERM:
//! worker.shutdown().await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::capture::{self, Output as _, ReplicationSource};
use crate::catalog::{Catalog, RelationInfo};
use crate::config::WorkerConfig;
use crate::destination::{Destination, Durability};
use crate::error::WorkerError;
use crate::lsn::{format_lsn, parse_lsn};
use crate::metrics::WorkerMetrics;
use crate::pgoutput::Relation;
use crate::schema_history::{
    KEY_UNKNOWN_KEY, SchemaStore, SchemaVersion, TableSchema, WalKey, key_from_wal,
};
use crate::setup;
use crate::sink::{DynSink, Sink, SinkOutput, SinkSession};
use crate::source::{PgWireSource, SourceConnection, SourceEvent};
use crate::xid::FullXids;

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a standby worker looks at the slot it waits for.
const STANDBY_POLL: Duration = Duration::from_millis(500);
/// How soon a standby looks again after ending a silent stream (its end takes a moment).
const AFTER_TAKEOVER_POLL: Duration = Duration::from_millis(100);
/// How long the process streaming from the slot may stay silent (no standby status update)
/// before a standby ends its stream and takes over. A live worker reports at least every 2 s
/// (its idle wake-up; every second while changes flow).
pub(crate) const TAKEOVER_AFTER_SILENCE: Duration = Duration::from_secs(6);

/// A capture worker.
pub struct Worker {
    config: WorkerConfig,
    metrics: Arc<WorkerMetrics>,
    /// Where changes go: `None` for the `changes` table.
    sink: Option<Arc<dyn DynSink>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("metrics", &self.metrics)
            .field(
                "sink",
                &if self.sink.is_some() {
                    "custom"
                } else {
                    "changes"
                },
            )
            .finish()
    }
}

impl Worker {
    /// A worker for `config` that writes the `changes` table of its destination; nothing
    /// happens until [`spawn`](Self::spawn) (or [`run`](Self::run)).
    ///
    /// ```
    /// let worker = bemi_worker::Worker::new(bemi_worker::WorkerConfig::new("postgres://localhost/app"));
    /// assert_eq!(worker.metrics().changes_written(), 0);
    /// ```
    pub fn new(config: WorkerConfig) -> Self {
        Self {
            config,
            metrics: Arc::new(WorkerMetrics::default()),
            sink: None,
        }
    }

    /// A worker for `config` that gives the changes to `sink` instead of writing `changes`
    /// (the destination URL is then not used); its schema history is kept in the source.
    ///
    /// ```
    /// use bemi_worker::sink::{Piece, Sink, SinkSession, SinkWriter};
    /// use bemi_worker::{SinkError, Worker, WorkerConfig};
    ///
    /// struct Count;
    /// impl Sink for Count {
    ///     type Writer = Count;
    ///     async fn open(&self, _: &SinkSession<'_>) -> Result<Count, SinkError> {
    ///         Ok(Count)
    ///     }
    /// }
    /// impl SinkWriter for Count {
    ///     async fn write(&mut self, pieces: &[Piece]) -> Result<u64, SinkError> {
    ///         Ok(pieces.iter().map(|piece| piece.rows.len() as u64).sum())
    ///     }
    /// }
    ///
    /// let worker = Worker::with_sink(WorkerConfig::new("postgres://localhost/app"), Count);
    /// # drop(worker);
    /// ```
    pub fn with_sink(config: WorkerConfig, sink: impl Sink) -> Self {
        Self {
            config,
            metrics: Arc::new(WorkerMetrics::default()),
            sink: Some(Arc::new(sink)),
        }
    }

    /// Runs the worker in a task of the current tokio runtime until the returned handle is
    /// shut down (or an error that retrying cannot fix).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), bemi_worker::WorkerError> {
    /// use std::time::Duration;
    ///
    /// let config = bemi_worker::WorkerConfig::new("postgres://localhost/app");
    /// let mut worker = bemi_worker::Worker::new(config).spawn();
    /// worker.wait_until_streaming(Duration::from_secs(60)).await?;
    /// // … writes made from now on are captured …
    /// println!("{} changes so far", worker.metrics().changes_written());
    /// worker.shutdown().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    ///
    /// Outside of a tokio runtime.
    pub fn spawn(self) -> WorkerHandle {
        let metrics = self.metrics();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { self.run(shutdown).await }
        });
        WorkerHandle {
            metrics,
            shutdown,
            task: Some(task),
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
        let destination = self
            .config
            .destination_url
            .as_ref()
            .filter(|_| self.sink.is_none());
        for (which, url) in [
            ("source", Some(&self.config.source_url)),
            ("destination", destination),
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
        tracing::info!(rules = %self.config.rules_summary(), "capture rules");
        if self.sink.is_none() {
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
        }
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
            // How far behind the outage leaves the slot (and the lag metrics, which no stream
            // updates meanwhile); unknown when the source is down too.
            match self.slot_lag().await {
                Some(behind) => tracing::warn!(
                    error = %error,
                    retry_in = ?delay,
                    slot_lag_bytes = behind,
                    "capture interrupted; reconnecting (the slot keeps the WAL it has not \
                     confirmed: nothing is lost while it waits)"
                ),
                None => tracing::warn!(
                    error = %error,
                    retry_in = ?delay,
                    "capture interrupted; reconnecting"
                ),
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Checks the source, creates the publication and the slot, and records the baseline of
    /// the schema history in the destination, without streaming: changes committed after this
    /// returns are captured by [`run`](Self::run), even if it starts later, with the keys of
    /// their time. `run` does the same when it starts; call this first when writes must not be
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
        let slot = self.prepare_source(&pool).await?;
        // The schema history's baseline, as close to the slot's start as it gets.
        let source = SourceConnection::from_url(&self.config.source_url)?;
        if let Some(sink) = &self.sink {
            let (output, _, _) = self.open_sink(&**sink, &source, &pool, &slot).await?;
            output.close().await;
            pool.close().await;
            return Ok(());
        }
        let (destination, _, _) = self.open_destination(&source, &pool, &slot).await?;
        drop(destination);
        pool.close().await;
        Ok(())
    }

    /// The destination, the position to stream from, and the schema history as of it (its
    /// baseline recorded on the first start on a slot).
    async fn open_destination(
        &self,
        source: &SourceConnection,
        pool: &PgPool,
        slot: &setup::SlotState,
    ) -> Result<(Destination, u64, SchemaStore), WorkerError> {
        let config = &self.config;
        let source_id = source_system_id(pool).await?;
        let mut destination = Destination::open(
            config.destination_url(),
            source_id.as_deref(),
            source.database(),
            &config.slot,
            config.writer_connections,
            Durability::for_destination(same_server(&config.source_url, config.destination_url())),
            config.image_indexes,
            &config.checkpoints,
        )
        .await
        .map_err(WorkerError::Destination)?;
        let resume = destination.resume_point();
        let start_lsn = resume.last_lsn.max(slot.confirmed_flush.unwrap_or(0));
        let (history, used_before) = self
            .load_schema_history(pool, &mut destination, start_lsn)
            .await?;
        self.report_lost_slot(slot, used_before || resume.last_lsn > 0);
        Ok((destination, start_lsn, history))
    }

    /// A small pool of the source database for catalog queries, the publication and the slot.
    /// (See also [`source_system_id`].)
    async fn source_pool(&self) -> Result<PgPool, WorkerError> {
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.source_options()?)
            .await
            .map_err(WorkerError::Source)
    }

    /// How the worker's SQL connections to the source connect.
    fn source_options(&self) -> Result<PgConnectOptions, WorkerError> {
        let mut options: PgConnectOptions = self
            .config
            .source_url
            .parse()
            .map_err(|e| WorkerError::InvalidConfig(format!("source URL: {e}")))?;
        if options.get_application_name().is_none() {
            // Named in pg_stat_activity, like the replication connection.
            options = options.application_name("bemi-worker");
        }
        // Its commits (publication, slot, schema history) must not wait for synchronous
        // standbys: the worker may be one itself.
        Ok(options.options([("synchronous_commit", "local")]))
    }

    /// How many bytes of WAL the slot is behind the source's current position, asked of the
    /// source between sessions (while the destination or the stream is down), so that the
    /// lag metrics keep moving; `None` when the source cannot say within a few seconds.
    async fn slot_lag(&self) -> Option<u64> {
        let measure = async {
            let pool = self.source_pool().await.ok()?;
            let row: Option<(String, Option<String>)> = sqlx::query_as(
                "SELECT pg_catalog.pg_current_wal_lsn()::text, confirmed_flush_lsn::text \
                   FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            )
            .bind(&self.config.slot)
            .fetch_optional(&pool)
            .await
            .ok()?;
            pool.close().await;
            let (current, confirmed) = row?;
            let current = parse_lsn(&current)?;
            let confirmed = confirmed.as_deref().and_then(parse_lsn).unwrap_or(current);
            self.metrics.record_server_position(current);
            Some(current.saturating_sub(confirmed))
        };
        tokio::time::timeout(Duration::from_secs(5), measure)
            .await
            .ok()
            .flatten()
    }

    /// The checks, the publication and the slot; what the slot is like.
    async fn prepare_source(&self, pool: &PgPool) -> Result<setup::SlotState, WorkerError> {
        let config = &self.config;
        setup::check_source(pool, &config.slot).await?;
        setup::sync_publication(pool, config).await?;
        let created = setup::ensure_slot(pool, &config.slot).await?;
        let mut slot = setup::check_source(pool, &config.slot).await?;
        slot.created = created;
        Ok(slot)
    }

    /// Says loudly (an error, `bemi_slots_recreated_total`) that the slot was created now
    /// although its history shows it was used before: dropped, or lost (a failover, or
    /// `max_slot_wal_keep_size`); what was committed while it was gone is not captured.
    fn report_lost_slot(&self, slot: &setup::SlotState, used_before: bool) {
        if slot.created && used_before {
            self.metrics.record_slot_recreated();
            tracing::error!(
                slot = %self.config.slot,
                "the replication slot {} did not exist and was created now, but this worker \
                 stored changes from it before: it was dropped or lost (a failover, \
                 max_slot_wal_keep_size). Changes committed while it was gone are NOT captured: \
                 compare `changes` with the source for that time",
                self.config.slot
            );
        }
    }

    /// The schema history as of `start_lsn`: the versions the destination holds, and for the
    /// published tables it does not have, the source's description of them now (a baseline,
    /// stored). Warns when the source records no history. Also whether it held versions
    /// already (the slot was used before).
    async fn load_schema_history<H: HistoryStore>(
        &self,
        source: &PgPool,
        kept: &mut H,
        start_lsn: u64,
    ) -> Result<(SchemaStore, bool), WorkerError> {
        let mut history = SchemaStore::default();
        let kept_versions = kept.load(start_lsn).await?;
        let used_before = !kept_versions.is_empty();
        for (lsn, schema) in kept_versions {
            tracing::debug!(
                relid = schema.oid,
                lsn = %format_lsn(lsn),
                start = %format_lsn(start_lsn),
                "schema version loaded from the history"
            );
            history.apply(lsn, schema);
        }
        let recording: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger \
                             WHERE evtname = '_bemi_schema_trigger' AND evtenabled <> 'D') \
                AND to_regproc('_bemi_schema_json') IS NOT NULL",
        )
        .fetch_one(source)
        .await
        .map_err(WorkerError::Source)?;
        if !recording {
            tracing::warn!(
                "the source records no schema history (the migration's _bemi_schema_trigger \
                 event trigger is missing: it needs a superuser): primary keys are read from \
                 the catalog as it is when a change is decoded, which is wrong for a change \
                 decoded after a later schema change of its table (a worker that lags or \
                 restarts after downtime). Run `bemi migrate` as a superuser"
            );
            return Ok((history, used_before));
        }
        // Tables of the publication the history does not have yet: their schema now.
        let missing: Vec<(i64, String)> = sqlx::query_as(
            "SELECT c.oid::bigint, _bemi_schema_json(c.oid) \
               FROM pg_catalog.pg_publication_tables t \
               JOIN pg_catalog.pg_class c \
                 ON c.oid = (pg_catalog.quote_ident(t.schemaname) || '.' || \
                             pg_catalog.quote_ident(t.tablename))::regclass \
              WHERE t.pubname = $1",
        )
        .bind(&self.config.publication)
        .fetch_all(source)
        .await
        .map_err(WorkerError::Source)?;
        let mut baseline = Vec::new();
        for (relid, json) in missing {
            let Ok(relid) = u32::try_from(relid) else {
                continue;
            };
            if history.knows(relid) {
                continue;
            }
            if let Ok(schema) = TableSchema::parse(json.as_bytes()) {
                history.apply(start_lsn, schema);
                baseline.push(SchemaVersion {
                    lsn: start_lsn,
                    relid,
                    json,
                });
            }
        }
        kept.store(&baseline).await?;
        tracing::debug!(
            tables = history.len(),
            baseline = baseline.len(),
            "schema history loaded"
        );
        Ok((history, used_before))
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let config = &self.config;
        let source = SourceConnection::from_url(&config.source_url)?;
        let pool = self.source_pool().await?;
        let prepared = self.prepare_source(&pool).await?;
        if !self.stand_by(&pool, shutdown).await? {
            return Ok(());
        }
        // The slot as it is now: another worker may have moved it on while this one stood by
        // (the schema history is loaded as of its position — chaos seed 4, through NATS).
        let slot = setup::SlotState {
            created: prepared.created,
            ..setup::check_source(&pool, &config.slot).await?
        };
        if let Some(sink) = &self.sink {
            let (output, start_lsn, history) =
                self.open_sink(&**sink, &source, &pool, &slot).await?;
            return self
                .stream_into(&source, pool, history, start_lsn, output, shutdown)
                .await;
        }
        let (destination, start_lsn, history) =
            self.open_destination(&source, &pool, &slot).await?;
        self.stream_into(&source, pool, history, start_lsn, destination, shutdown)
            .await
    }

    /// Waits while another process streams from the slot (a worker this one stands by for),
    /// and returns once the slot is free: when that process ends, or, after it has sent no
    /// status for [`TAKEOVER_AFTER_SILENCE`] (a lost connection, a hung process), once this
    /// one has ended its stream. `false` when `shutdown` came first.
    ///
    /// Taking over is safe at any point: the destination (or the sink) records how far it
    /// holds the changes, the slot is confirmed only up to what is stored, and a change
    /// delivered again is stored once.
    async fn stand_by(
        &self,
        pool: &PgPool,
        shutdown: &CancellationToken,
    ) -> Result<bool, WorkerError> {
        let slot = &self.config.slot;
        let mut announced = false;
        let mut next_look = STANDBY_POLL;
        loop {
            // The process streaming from the slot and how long it has been silent (its last
            // status update; its start while it has sent none). Without the right to see
            // another role's replication statistics, the silence is unknown: then it is
            // waited for until it ends.
            let holder: Option<(i32, Option<f64>)> = sqlx::query_as(
                "SELECT s.active_pid,                         EXTRACT(EPOCH FROM clock_timestamp() -                                 COALESCE(r.reply_time, r.backend_start))::float8                    FROM pg_catalog.pg_replication_slots s                    LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid                   WHERE s.slot_name = $1 AND s.active",
            )
            .bind(slot)
            .fetch_optional(pool)
            .await
            .map_err(WorkerError::Source)?;
            let Some((pid, silent_for)) = holder else {
                if announced {
                    tracing::info!(slot = %slot, "the slot is free: taking over");
                }
                self.metrics.set_standby(false);
                return Ok(true);
            };
            let silent_for = silent_for.map(Duration::from_secs_f64);
            if silent_for.is_some_and(|silent| silent >= TAKEOVER_AFTER_SILENCE) {
                tracing::warn!(
                    slot = %slot,
                    pid,
                    silent_for = ?silent_for,
                    "the process streaming from the slot stopped answering: ending its stream \
                     to take over"
                );
                sqlx::query("SELECT pg_catalog.pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(pool)
                    .await
                    .map_err(WorkerError::Source)?;
                self.metrics.record_takeover();
                next_look = AFTER_TAKEOVER_POLL;
            } else if !announced {
                announced = true;
                self.metrics.set_standby(true);
                tracing::info!(
                    slot = %slot,
                    pid,
                    "standing by: another process streams from the slot; taking over when it \
                     ends or stops answering"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(std::mem::replace(&mut next_look, STANDBY_POLL)) => {}
                () = shutdown.cancelled() => {
                    self.metrics.set_standby(false);
                    return Ok(false);
                }
            }
        }
    }

    /// Streams from `start_lsn` into `sink` until `shutdown` or an error.
    async fn stream_into<K: capture::Output>(
        &self,
        source: &SourceConnection,
        pool: PgPool,
        history: SchemaStore,
        start_lsn: u64,
        sink: K,
        shutdown: &CancellationToken,
    ) -> Result<(), WorkerError> {
        let config = &self.config;
        // Before the stream starts: every id it delivers is then within 2^31 of this one.
        let xids = FullXids::new(next_full_xid(&pool).await?);
        let stream =
            PgWireSource::start(source, &config.slot, &config.publication, start_lsn).await?;
        self.metrics.set_connected(true);
        self.metrics.record_confirmed(start_lsn);
        tracing::info!(
            slot = %config.slot,
            start = %format_lsn(start_lsn),
            "streaming changes"
        );
        let mut source = PgSource {
            stream,
            history,
            catalog: Catalog::new(pool.clone()),
            pool,
            config,
            shutdown: shutdown.clone(),
            xids,
            metrics: Arc::clone(&self.metrics),
        };
        let settings = capture::Settings {
            heartbeat_interval: config.heartbeat_interval,
            max_batch_rows: config.max_batch_rows,
            chunk_rows: config.chunk_rows,
            skip_unchanged_updates: config.skip_unchanged_updates,
            context_key: config.context_key,
        };
        capture::run(&mut source, sink, settings, &self.metrics, shutdown).await
    }

    /// The user's sink, the position to stream from (the slot's: what the sink took), and the
    /// schema history as of it, kept in the source.
    async fn open_sink(
        &self,
        sink: &dyn DynSink,
        source: &SourceConnection,
        pool: &PgPool,
        slot: &setup::SlotState,
    ) -> Result<(SinkOutput, u64, SchemaStore), WorkerError> {
        use sqlx::Connection as _;
        let history_conn = sqlx::PgConnection::connect_with(&self.source_options()?)
            .await
            .map_err(WorkerError::Source)?;
        let source_id = source_system_id(pool).await?;
        let session = SinkSession::new(source_id.as_deref(), source.database(), &self.config.slot);
        let writer = sink.open(&session).await?;
        let mut output =
            SinkOutput::new(writer, history_conn, source.database(), &self.config.slot).await?;
        let start_lsn = slot.confirmed_flush.unwrap_or(0);
        let (history, used_before) = self
            .load_schema_history(pool, &mut output, start_lsn)
            .await?;
        self.report_lost_slot(slot, used_before);
        Ok((output, start_lsn, history))
    }
}

/// Where the schema history is kept between runs: the destination, or (for a capture into
/// a [`Sink`]) the source.
trait HistoryStore {
    /// The latest stored version of each table as of `start_lsn`.
    async fn load(&mut self, start_lsn: u64) -> Result<Vec<(u64, TableSchema)>, WorkerError>;

    /// Stores versions read outside the stream (a baseline).
    async fn store(&mut self, versions: &[SchemaVersion]) -> Result<(), WorkerError>;
}

impl HistoryStore for Destination {
    async fn load(&mut self, start_lsn: u64) -> Result<Vec<(u64, TableSchema)>, WorkerError> {
        self.schema_history(start_lsn)
            .await
            .map_err(WorkerError::Destination)
    }

    async fn store(&mut self, versions: &[SchemaVersion]) -> Result<(), WorkerError> {
        self.store_schemas(versions)
            .await
            .map_err(WorkerError::Destination)
    }
}

impl HistoryStore for SinkOutput {
    async fn load(&mut self, start_lsn: u64) -> Result<Vec<(u64, TableSchema)>, WorkerError> {
        self.schema_history(start_lsn).await
    }

    async fn store(&mut self, versions: &[SchemaVersion]) -> Result<(), WorkerError> {
        self.store_schemas(versions).await
    }
}

/// A worker running in a task (see [`Worker::spawn`]): its metrics, and how to stop it and
/// hear how it ended.
#[derive(Debug)]
pub struct WorkerHandle {
    metrics: Arc<WorkerMetrics>,
    shutdown: CancellationToken,
    /// `None` once joined.
    task: Option<tokio::task::JoinHandle<Result<(), WorkerError>>>,
}

impl WorkerHandle {
    /// The worker's metrics.
    ///
    /// ```no_run
    /// # async fn run(worker: bemi_worker::WorkerHandle) {
    /// let metrics = worker.metrics();
    /// println!("{}", metrics.render());
    /// # }
    /// ```
    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The token that stops the worker when cancelled (e.g. to tie it to the shutdown of a
    /// server); [`join`](Self::join) then says how it ended.
    ///
    /// ```no_run
    /// # async fn run(worker: bemi_worker::WorkerHandle) {
    /// let stop = worker.cancel_token();
    /// tokio::spawn(async move {
    ///     let _ = tokio::signal::ctrl_c().await;
    ///     stop.cancel();
    /// });
    /// # }
    /// ```
    pub fn cancel_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Whether the worker's task has ended (it stopped with an error, or was stopped).
    ///
    /// ```no_run
    /// # fn check(worker: &bemi_worker::WorkerHandle) {
    /// if worker.is_finished() {
    ///     eprintln!("the worker stopped: join() says why");
    /// }
    /// # }
    /// ```
    pub fn is_finished(&self) -> bool {
        self.task
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
    }

    /// Waits until the worker streams from its slot (writes committed from then on are
    /// captured), polling every 20 ms; the worker's error if it stopped first, and
    /// [`WorkerError::NotStreaming`] after `timeout`.
    ///
    /// ```no_run
    /// # async fn run(mut worker: bemi_worker::WorkerHandle) -> Result<(), bemi_worker::WorkerError> {
    /// worker.wait_until_streaming(std::time::Duration::from_secs(60)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_until_streaming(&mut self, timeout: Duration) -> Result<(), WorkerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.metrics.is_connected() {
                return Ok(());
            }
            if self.is_finished() {
                self.join_task().await?;
                return Err(WorkerError::Task(
                    "the worker stopped before it streamed".to_owned(),
                ));
            }
            if Instant::now() >= deadline {
                return Err(WorkerError::NotStreaming { waited: timeout });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the worker (it writes and confirms what it holds) and waits for it: `Ok` when it
    /// stopped cleanly, else the error that stopped it before.
    ///
    /// ```no_run
    /// # async fn run(worker: bemi_worker::WorkerHandle) -> Result<(), bemi_worker::WorkerError> {
    /// worker.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(mut self) -> Result<(), WorkerError> {
        self.shutdown.cancel();
        self.join_task().await
    }

    /// Waits until the worker stops by itself (an error that retrying cannot fix) or through
    /// its [`cancel_token`](Self::cancel_token).
    ///
    /// ```no_run
    /// # async fn run(worker: bemi_worker::WorkerHandle) {
    /// if let Err(error) = worker.join().await {
    ///     eprintln!("the worker stopped: {error}");
    /// }
    /// # }
    /// ```
    pub async fn join(mut self) -> Result<(), WorkerError> {
        self.join_task().await
    }

    async fn join_task(&mut self) -> Result<(), WorkerError> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(WorkerError::Task(error.to_string())),
        }
    }
}

/// The source database: its replication stream, and its catalog for relation descriptions,
/// the publication and heartbeats.
/// The source cluster's system identifier (`pg_control_system()`, readable by every role),
/// stored with each change so that transactions of clusters whose databases share a name stay
/// apart. `None`, with a warning, where a server does not give it (a PostgreSQL-compatible
/// service without the function).
async fn source_system_id(pool: &PgPool) -> Result<Option<String>, WorkerError> {
    let id: Result<String, sqlx::Error> =
        sqlx::query_scalar("SELECT system_identifier::text FROM pg_catalog.pg_control_system()")
            .fetch_one(pool)
            .await;
    match id {
        Ok(id) => Ok(Some(id)),
        Err(sqlx::Error::Database(error)) => {
            tracing::warn!(
                %error,
                "the source does not tell its system identifier: changes are stored without a \
                 source, and transactions of two source clusters whose databases share a name \
                 cannot be told apart"
            );
            Ok(None)
        }
        Err(error) => Err(WorkerError::Source(error)),
    }
}

/// The next full transaction id of the source (nothing is assigned by asking), from which the
/// stream's 32-bit ids are extended (see `crate::xid`).
async fn next_full_xid(pool: &PgPool) -> Result<u64, WorkerError> {
    let next: i64 = sqlx::query_scalar(
        "SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint",
    )
    .fetch_one(pool)
    .await
    .map_err(WorkerError::Source)?;
    Ok(u64::try_from(next).unwrap_or(0))
}

struct PgSource<'a> {
    stream: PgWireSource,
    pool: PgPool,
    catalog: Catalog,
    /// The tables' schemas as of the stream's position.
    history: SchemaStore,
    config: &'a WorkerConfig,
    /// Cuts short waits inside an event (see [`Catalog::wait_for_transaction`]).
    shutdown: CancellationToken,
    /// Extends the stream's 32-bit transaction ids.
    xids: FullXids,
    /// Where schema history mismatches are counted.
    metrics: Arc<WorkerMetrics>,
}

impl ReplicationSource for PgSource<'_> {
    async fn recv(&mut self) -> Result<Option<SourceEvent>, WorkerError> {
        Ok(match self.stream.recv().await? {
            Some(SourceEvent::Begin {
                commit_lsn,
                xid,
                commit_time,
            }) => Some(SourceEvent::Begin {
                commit_lsn,
                // The stream's ids are 32-bit: the low half of `xid`.
                xid: self.xids.full(xid as u32),
                commit_time,
            }),
            other => other,
        })
    }

    fn confirm(&self, lsn: u64) {
        self.stream.confirm(lsn);
    }

    async fn describe(
        &mut self,
        relation: &Relation,
        open_xid: Option<u64>,
    ) -> Result<RelationInfo, WorkerError> {
        if let Some(schema) = self.history.get(relation.oid) {
            let differences = schema.check(relation);
            if differences.is_empty() {
                return Ok(schema.describe(relation, self.config));
            }
            // The version in force is not the table the WAL describes: follow the WAL. Types
            // by oid from the catalog (a type oid never changes meaning), the key from the
            // Relation's flags, or unknown.
            self.metrics.record_schema_mismatch();
            let wal_key = key_from_wal(relation, schema);
            let differences: Vec<String> = differences.iter().map(ToString::to_string).collect();
            let table = format!("{}.{}", relation.namespace, relation.name);
            let mut info = self
                .catalog
                .describe_columns(relation, self.config)
                .await
                .map_err(WorkerError::Source)?;
            let key = match wal_key {
                WalKey::Known(key) => {
                    let names: Vec<&str> = key
                        .iter()
                        .map(|&i| relation.columns[i].name.as_str())
                        .collect();
                    info.primary_key = key;
                    format!(
                        "its changes take the key the WAL's replica identity gives: ({})",
                        names.join(", ")
                    )
                }
                WalKey::Unknown(reason) => {
                    let said = format!(
                        "no key can be established ({reason}), so its changes are stored with \
                         primary_key NULL and the reason in the context key {KEY_UNKNOWN_KEY}"
                    );
                    info.key_unknown = Some(reason.into());
                    said
                }
            };
            tracing::warn!(
                table,
                differences = %differences.join("; "),
                "the schema history's description of {table} does not match the WAL; likely \
                 DDL made while event triggers did not fire (session_replication_role = \
                 replica, or _bemi_schema_trigger disabled) or a forged _bemi_schema message. \
                 The worker follows the WAL: {key}. Make DDL with the event trigger enabled and \
                 outside replica mode, check who may call pg_logical_emit_message, and record \
                 the table's schema as it is now with CALL _bemi_record_schemas(); as a \
                 superuser"
            );
            return Ok(info);
        }
        // Not in the history (tracking installed without the event trigger, or a table the
        // history has not seen yet): the catalog, as it is now. Its schema may have changed in
        // this very transaction (see catalog.rs).
        if let Some(xid) = open_xid {
            self.catalog
                .wait_for_transaction(xid as u32, &self.config.slot, &self.shutdown)
                .await
                .map_err(WorkerError::Source)?;
        }
        self.catalog
            .describe(relation, self.config)
            .await
            .map_err(WorkerError::Source)
    }

    fn schema_changed(&mut self, lsn: u64, schema: TableSchema) {
        self.history.apply(lsn, schema);
    }

    async fn tick(&mut self, idle: bool) -> Result<(), WorkerError> {
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
        if idle {
            setup::heartbeat(&self.pool).await?;
        }
        Ok(())
    }

    fn shutdown(&mut self, timeout: Duration) -> impl Future<Output = ()> + Send {
        self.stream.shutdown(timeout)
    }
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
