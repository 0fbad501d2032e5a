//! The store's side: writes the change stream into `changes`, exactly once, with the work
//! shared among the store processes partition by partition.
//!
//! Each partition has one active writer: the store that holds its PostgreSQL advisory lock, on
//! the very connection that writes its rows (so a store that lost its connection can write
//! nothing more). A store takes partitions up to its share (the partitions divided by the
//! stores connected to the destination, rounded up) and gives back what exceeds it, after its
//! current batch. Taking a partition, it reads the stream sequence recorded with the last rows
//! it committed, recreates the partition's durable pull consumer (delivering everything still in
//! the work-queue stream, in order), skips what it already stored, and for each batch commits
//! the rows and the new sequence in one transaction, then acknowledges the messages (which
//! removes them from the stream). A message that is not a change message is kept in
//! `_bemi_store_rejected`, with the reason, instead of blocking its partition.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, stream};
use bemi_audit::store::{ChangeBatch, NewChange};
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::wire::{self, IncomingMessage};
use super::{NatsConfig, connect, ensure_stream};
use crate::error::WorkerError;
use crate::metrics::{self, Render};

/// Where each partition's writer got to, in the destination, per stream.
const STATE_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS _bemi_store_state (
  stream text NOT NULL,
  partition int NOT NULL,
  last_sequence bigint NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (stream, partition)
);
CREATE TABLE IF NOT EXISTS _bemi_store_rejected (
  stream text NOT NULL,
  sequence bigint NOT NULL,
  subject text NOT NULL,
  reason text NOT NULL,
  payload bytea NOT NULL,
  rejected_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (stream, sequence)
)";

const STATE_SQL: &str = "INSERT INTO _bemi_store_state AS s (stream, partition, last_sequence) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (stream, partition) DO UPDATE \
       SET last_sequence = greatest(s.last_sequence, EXCLUDED.last_sequence), updated_at = now()";

const REJECT_SQL: &str = "INSERT INTO _bemi_store_rejected (stream, sequence, subject, reason, payload) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";

/// The application name prefix of a store's destination connections: stores count each other
/// by it.
const APPLICATION_NAME: &str = "bemi-store ";

/// How often a store looks at its partitions (and the others).
const BALANCE_INTERVAL: Duration = Duration::from_millis(500);

/// How a store runs.
///
/// ```
/// use bemi_worker::nats::{NatsConfig, StoreConfig};
///
/// let config = StoreConfig::new(NatsConfig::new("nats://127.0.0.1:4222"), "postgres://localhost/audit");
/// assert_eq!(config.batch_messages, 256);
/// ```
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The change stream.
    pub nats: NatsConfig,
    /// The database with the `changes` table.
    pub destination_url: String,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<SocketAddr>,
    /// Messages fetched (and committed) at once per partition.
    pub batch_messages: usize,
    /// Whether `changes` keeps its GIN indexes on `before` and `after` (see
    /// [`WorkerConfig::image_indexes`](crate::WorkerConfig::image_indexes)).
    pub image_indexes: bemi_audit::schema::ImageIndexes,
}

impl StoreConfig {
    /// Stores `nats`'s stream into the database of `destination_url`.
    pub fn new(nats: NatsConfig, destination_url: impl Into<String>) -> Self {
        Self {
            nats,
            destination_url: destination_url.into(),
            metrics_addr: None,
            batch_messages: 256,
            image_indexes: bemi_audit::schema::ImageIndexes::Keep,
        }
    }
}

/// Counters and gauges of one store.
///
/// ```
/// let metrics = bemi_worker::nats::StoreMetrics::default();
/// assert!(metrics.render().contains("bemi_store_changes_stored_total 0"));
/// ```
#[derive(Debug, Default)]
pub struct StoreMetrics {
    changes_stored: AtomicU64,
    changes_skipped: AtomicU64,
    messages_acked: AtomicU64,
    messages_rejected: AtomicU64,
    redeliveries: AtomicU64,
    errors: AtomicU64,
    partitions_owned: AtomicU64,
    connected: AtomicBool,
    /// Messages waiting in the (work-queue) stream: not yet stored and acknowledged.
    pending: AtomicU64,
}

impl StoreMetrics {
    /// Changes written into `changes` (new ones; a change already stored is skipped).
    pub fn changes_stored(&self) -> u64 {
        self.changes_stored.load(Ordering::Relaxed)
    }

    /// Partitions this store writes now.
    pub fn partitions_owned(&self) -> u64 {
        self.partitions_owned.load(Ordering::Relaxed)
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(1024);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        metric(
            "bemi_store_changes_stored_total",
            "counter",
            "Changes written into the changes table.",
            load(&self.changes_stored),
        );
        metric(
            "bemi_store_changes_skipped_total",
            "counter",
            "Changes delivered again and already stored.",
            load(&self.changes_skipped),
        );
        metric(
            "bemi_store_messages_acked_total",
            "counter",
            "Stream messages acknowledged after their changes were committed.",
            load(&self.messages_acked),
        );
        metric(
            "bemi_store_messages_rejected_total",
            "counter",
            "Messages that are not change messages, kept in _bemi_store_rejected.",
            load(&self.messages_rejected),
        );
        metric(
            "bemi_store_redeliveries_total",
            "counter",
            "Messages delivered more than once.",
            load(&self.redeliveries),
        );
        metric(
            "bemi_store_errors_total",
            "counter",
            "Errors that made the store reconnect or restart a partition.",
            load(&self.errors),
        );
        metric(
            "bemi_store_partitions_owned",
            "gauge",
            "Partitions this store writes.",
            load(&self.partitions_owned),
        );
        metric(
            "bemi_store_pending_messages",
            "gauge",
            "Messages waiting in the stream (all partitions): not yet stored and acknowledged.",
            load(&self.pending),
        );
        metric(
            "bemi_store_connected",
            "gauge",
            "Whether the store reaches NATS and the destination (1) or not (0).",
            u64::from(self.connected.load(Ordering::Relaxed)),
        );
        out
    }
}

impl Render for StoreMetrics {
    fn render(&self) -> String {
        StoreMetrics::render(self)
    }
}

/// Writes the change stream into `changes` until stopped.
///
/// ```no_run
/// use bemi_worker::nats::{NatsConfig, Store, StoreConfig};
///
/// # async fn run() -> Result<(), bemi_worker::WorkerError> {
/// let nats = NatsConfig::new("nats://127.0.0.1:4222");
/// let store = Store::new(StoreConfig::new(nats, "postgres://bemi@127.0.0.1/audit"));
/// store.run(tokio_util::sync::CancellationToken::new()).await
/// # }
/// ```
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    metrics: Arc<StoreMetrics>,
    /// This process's name among the stores.
    id: String,
}

/// A partition this store writes.
struct Owned {
    stop: CancellationToken,
    handle: JoinHandle<Result<(), WorkerError>>,
}

impl Store {
    /// A store with `config`.
    pub fn new(config: StoreConfig) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self {
            config,
            metrics: Arc::default(),
            id: format!("{:x}-{nanos:08x}", std::process::id()),
        }
    }

    /// Its metrics.
    pub fn metrics(&self) -> Arc<StoreMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs until `shutdown` (then finishes the batches in hand), reconnecting with backoff;
    /// stops with an error only for what retrying cannot fix.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        self.config.nats.validate()?;
        if let Some(addr) = self.config.metrics_addr {
            let listener = metrics::bind(addr).await?;
            tracing::info!(%addr, "serving metrics");
            tokio::spawn(metrics::serve(
                listener,
                self.metrics(),
                shutdown.child_token(),
            ));
        }
        let mut backoff = Duration::from_millis(500);
        loop {
            let started = Instant::now();
            let result = self.session(&shutdown).await;
            self.metrics.connected.store(false, Ordering::Relaxed);
            let error = match result {
                Ok(()) => return Ok(()),
                Err(error) if !error.is_retryable() => return Err(error),
                Err(error) => error,
            };
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(500);
            }
            tracing::warn!(%error, retry_in = ?backoff, "store interrupted; reconnecting");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    fn destination_options(&self) -> Result<PgConnectOptions, WorkerError> {
        let options: PgConnectOptions = self
            .config
            .destination_url
            .parse()
            .map_err(|e| WorkerError::InvalidConfig(format!("destination URL: {e}")))?;
        Ok(options.application_name(&format!("{APPLICATION_NAME}{}", self.id)))
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let connection = connect(&self.config.nats, "bemi-store").await?;
        let (stream, partitions) = ensure_stream(&connection.jetstream, &self.config.nats).await?;
        let options = self.destination_options()?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(WorkerError::Destination)?;
        let mut tx = pool.begin().await.map_err(WorkerError::Destination)?;
        bemi_audit::schema::prepare_with(&mut tx, self.config.image_indexes)
            .await
            .map_err(WorkerError::Destination)?;
        sqlx::raw_sql(STATE_TABLE_SQL)
            .execute(&mut *tx)
            .await
            .map_err(WorkerError::Destination)?;
        tx.commit().await.map_err(WorkerError::Destination)?;
        self.metrics.connected.store(true, Ordering::Relaxed);
        tracing::info!(
            stream = %self.config.nats.stream,
            partitions,
            server = %connection.client.server_info().version,
            "storing the change stream"
        );
        let result = self
            .balance(&stream, partitions, &pool, &options, shutdown)
            .await;
        pool.close().await;
        result
    }

    /// Takes and gives back partitions until `shutdown` or an error of a kind retrying cannot
    /// fix.
    async fn balance(
        &self,
        stream: &stream::Stream,
        partitions: u32,
        pool: &PgPool,
        options: &PgConnectOptions,
        shutdown: &CancellationToken,
    ) -> Result<(), WorkerError> {
        let lock_class = wire::stream_lock_class(&self.config.nats.stream);
        let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
        let mut retry_at: HashMap<u32, (Instant, Duration)> = HashMap::new();
        let mut tick = tokio::time::interval(BALANCE_INTERVAL);
        let mut stream_checked = Instant::now() - Duration::from_secs(60);
        let outcome = 'balance: loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break Ok(()),
            }
            // Partitions whose writer ended: an error is retried after a backoff.
            let ended: Vec<u32> = owned
                .iter()
                .filter(|(_, task)| task.handle.is_finished())
                .map(|(p, _)| *p)
                .collect();
            for p in ended {
                let Some(task) = owned.remove(&p) else {
                    continue;
                };
                let error = match task.handle.await {
                    Ok(Ok(())) => continue,
                    Ok(Err(error)) => error,
                    Err(panic) => WorkerError::Nats(format!("partition {p} writer: {panic}")),
                };
                if !error.is_retryable() {
                    break 'balance Err(error);
                }
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                let delay = retry_at
                    .get(&p)
                    .map_or(Duration::from_millis(500), |(_, d)| {
                        (*d * 2).min(Duration::from_secs(30))
                    });
                tracing::warn!(partition = p, %error, retry_in = ?delay, "partition writer stopped");
                retry_at.insert(p, (Instant::now() + delay, delay));
            }
            let live = match live_stores(pool).await {
                Ok(live) => {
                    self.metrics.connected.store(true, Ordering::Relaxed);
                    live.max(1)
                }
                Err(error) => {
                    tracing::debug!(%error, "the destination does not answer");
                    self.metrics.connected.store(false, Ordering::Relaxed);
                    1
                }
            };
            if stream_checked.elapsed() >= Duration::from_secs(2) {
                stream_checked = Instant::now();
                match stream.get_info().await {
                    Ok(info) => self
                        .metrics
                        .pending
                        .store(info.state.messages, Ordering::Relaxed),
                    Err(error) => tracing::debug!(%error, "could not read the stream's state"),
                }
            }
            let share = partitions.div_ceil(live) as usize;
            let active = owned.values().filter(|t| !t.stop.is_cancelled()).count();
            if active > share {
                // Give back the last ones; they finish their batch first.
                for task in owned
                    .values()
                    .rev()
                    .filter(|t| !t.stop.is_cancelled())
                    .take(active - share)
                {
                    task.stop.cancel();
                }
            } else if active < share {
                let mut wanted = share - active;
                for p in 0..partitions {
                    if wanted == 0 || shutdown.is_cancelled() {
                        break;
                    }
                    if owned.contains_key(&p)
                        || retry_at.get(&p).is_some_and(|(at, _)| *at > Instant::now())
                    {
                        continue;
                    }
                    let conn = match try_lock(options, lock_class, p).await {
                        Ok(Some(conn)) => conn,
                        Ok(None) => continue,
                        Err(error) => {
                            tracing::warn!(partition = p, %error, "could not take a partition");
                            break;
                        }
                    };
                    let stop = shutdown.child_token();
                    let writer = PartitionWriter {
                        partition: p,
                        conn,
                        stream: stream.clone(),
                        config: self.config.clone(),
                        metrics: self.metrics(),
                    };
                    let handle = tokio::spawn(writer.run(stop.clone()));
                    owned.insert(p, Owned { stop, handle });
                    wanted -= 1;
                }
            }
            self.metrics
                .partitions_owned
                .store(owned.len() as u64, Ordering::Relaxed);
        };
        for task in owned.values() {
            task.stop.cancel();
        }
        for (p, task) in owned {
            if let Ok(Err(error)) = task.handle.await {
                tracing::warn!(partition = p, %error, "partition writer stopped with an error");
            }
        }
        self.metrics.partitions_owned.store(0, Ordering::Relaxed);
        outcome
    }
}

/// How many stores are connected to the destination (this one included).
async fn live_stores(pool: &PgPool) -> Result<u32, sqlx::Error> {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT application_name) FROM pg_catalog.pg_stat_activity \
          WHERE datname = current_database() AND application_name LIKE $1",
    )
    .bind(format!("{APPLICATION_NAME}%"))
    .fetch_one(pool)
    .await?;
    Ok(u32::try_from(count).unwrap_or(1))
}

/// A connection holding the partition's lock, or `None` when another store holds it.
async fn try_lock(
    options: &PgConnectOptions,
    class: i32,
    partition: u32,
) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_lock($1, $2)")
        .bind(class)
        .bind(i32::try_from(partition).unwrap_or(i32::MAX))
        .fetch_one(&mut conn)
        .await?;
    if locked {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

/// The writer of one partition, on the connection that holds its lock.
struct PartitionWriter {
    partition: u32,
    conn: PgConnection,
    stream: stream::Stream,
    config: StoreConfig,
    metrics: Arc<StoreMetrics>,
}

fn nats_error(what: &str) -> impl FnOnce(async_nats::Error) -> WorkerError + '_ {
    move |error| WorkerError::Nats(format!("{what}: {error}"))
}

impl PartitionWriter {
    async fn run(mut self, stop: CancellationToken) -> Result<(), WorkerError> {
        let result = self.consume(&stop).await;
        let _ = self.conn.close().await;
        result
    }

    async fn consume(&mut self, stop: &CancellationToken) -> Result<(), WorkerError> {
        let p = self.partition;
        let stream_name = self.config.nats.stream.clone();
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT last_sequence FROM _bemi_store_state WHERE stream = $1 AND partition = $2",
        )
        .bind(&stream_name)
        .bind(i32::try_from(p).unwrap_or(i32::MAX))
        .fetch_optional(&mut self.conn)
        .await
        .map_err(WorkerError::Destination)?;
        let mut last_sequence = last.map_or(0, |last| u64::try_from(last).unwrap_or(0));
        // A consumer of our own: delivering what is left in the stream, in order, from the
        // start (what an earlier owner delivered but did not acknowledge included).
        let name = format!("bemi-store-{p}");
        match self.stream.delete_consumer(&name).await {
            Ok(_) => {}
            Err(error)
                if matches!(error.kind(), stream::ConsumerErrorKind::JetStream(inner)
                    if inner.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) => {}
            Err(error) => return Err(WorkerError::Nats(format!("resetting {name}: {error}"))),
        }
        let consumer: PullConsumer = self
            .stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: self.config.nats.subject(p),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                deliver_policy: DeliverPolicy::All,
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await
            .map_err(|error| WorkerError::Nats(format!("creating {name}: {error}")))?;
        tracing::info!(partition = p, after = last_sequence, "writing a partition");
        while !stop.is_cancelled() {
            let mut batch = consumer
                .fetch()
                .max_messages(self.config.batch_messages)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map_err(|error| WorkerError::Nats(format!("fetching from {name}: {error}")))?;
            let mut messages = Vec::new();
            while let Some(message) = batch.next().await {
                messages.push(message.map_err(nats_error("fetching"))?);
            }
            if messages.is_empty() {
                continue;
            }
            last_sequence = self.store(&messages, last_sequence).await?;
            for message in &messages {
                message.ack().await.map_err(nats_error("acknowledging"))?;
            }
            self.metrics
                .messages_acked
                .fetch_add(messages.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Commits the changes of `messages` past `last_sequence`, with the new sequence; returns
    /// it.
    async fn store(
        &mut self,
        messages: &[jetstream::Message],
        last_sequence: u64,
    ) -> Result<u64, WorkerError> {
        let stream_name = &self.config.nats.stream;
        let mut decoded: Vec<IncomingMessage<'_>> = Vec::with_capacity(messages.len());
        let mut rejected: Vec<(u64, &str, String, &[u8])> = Vec::new();
        let mut newest = last_sequence;
        let mut skipped = 0u64;
        for message in messages {
            let info = message
                .info()
                .map_err(nats_error("reading a message's metadata"))?;
            if info.delivered > 1 {
                self.metrics.redeliveries.fetch_add(1, Ordering::Relaxed);
            }
            let sequence = info.stream_sequence;
            if sequence <= last_sequence {
                skipped += 1;
                continue;
            }
            newest = newest.max(sequence);
            match IncomingMessage::read(&message.payload) {
                Ok(read) => decoded.push(read),
                Err(error) => rejected.push((
                    sequence,
                    message.subject.as_str(),
                    error.to_string(),
                    &message.payload,
                )),
            }
        }
        if newest == last_sequence {
            self.metrics
                .changes_skipped
                .fetch_add(skipped, Ordering::Relaxed);
            return Ok(last_sequence);
        }
        let mut by_database: BTreeMap<&str, ChangeBatch<'_>> = BTreeMap::new();
        let mut sent = 0u64;
        for message in &decoded {
            let batch = by_database.entry(&message.database).or_default();
            for change in &message.changes {
                let operation = change
                    .operation()
                    .map_err(|error| WorkerError::Nats(error.to_string()))?;
                batch.push(NewChange {
                    primary_key: change.primary_key.as_deref(),
                    before: change.before.get(),
                    after: change.after.get(),
                    context: change.context.get(),
                    schema: &change.schema,
                    table: &change.table,
                    operation,
                    committed_at: timestamp(change.committed_at),
                    queued_at: timestamp(change.queued_at),
                    transaction_id: i64::try_from(change.transaction_id).unwrap_or(i64::MAX),
                    position: i64::try_from(change.position).unwrap_or(i64::MAX),
                });
                sent += 1;
            }
        }
        let mut tx = self.conn.begin().await.map_err(WorkerError::Destination)?;
        let mut written = 0;
        for (database, batch) in &by_database {
            written += batch
                .insert(database, &mut tx)
                .await
                .map_err(WorkerError::Destination)?;
        }
        for (sequence, subject, reason, payload) in &rejected {
            tracing::error!(
                stream = %stream_name,
                sequence,
                subject,
                reason,
                "a message of the stream is not a change message: kept in _bemi_store_rejected"
            );
            sqlx::query(REJECT_SQL)
                .bind(stream_name)
                .bind(i64::try_from(*sequence).unwrap_or(i64::MAX))
                .bind(subject)
                .bind(reason)
                .bind(payload)
                .execute(&mut *tx)
                .await
                .map_err(WorkerError::Destination)?;
        }
        sqlx::query(STATE_SQL)
            .bind(stream_name)
            .bind(i32::try_from(self.partition).unwrap_or(i32::MAX))
            .bind(i64::try_from(newest).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(WorkerError::Destination)?;
        tx.commit().await.map_err(WorkerError::Destination)?;
        self.metrics
            .changes_stored
            .fetch_add(written, Ordering::Relaxed);
        self.metrics
            .changes_skipped
            .fetch_add(skipped + (sent - written), Ordering::Relaxed);
        self.metrics
            .messages_rejected
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        Ok(newest)
    }
}

/// Microseconds since the Unix epoch as a timestamp (the epoch itself if out of range).
fn timestamp(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}
