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
//! removes them from the stream). A re-delivered message is written again: the unique key of
//! `changes` makes it a no-op (so a stream created again, whose sequences restart, loses
//! nothing; the store notices it by the stream's creation time and says so).
//!
//! The parts of a change too large for one message (see [`wire`]) are held, unacknowledged,
//! until all are there; the joined change is then stored like any message. A message that is
//! not a change message, or that the destination refuses for its content (SQLSTATE classes 22,
//! 23 and 54), is kept in `_bemi_store_rejected` with the reason instead of blocking its
//! partition: a batch the destination refuses is written again message by message, so that only
//! the bad ones are set aside.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, stream};
use bemi_audit::chain;
use bemi_audit::checkpoint::Checkpointer;
use bemi_audit::store::{ChangeBatch, NewChange};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::connection::{NatsConfig, connect, ensure_stream};
use crate::error::NatsError;
use crate::wire::{self, IncomingMessage, Part, ReadError};

/// Where each partition's writer got to, in the destination, per stream.
/// Where each partition's writer got to, in the destination, per stream (and which stream of
/// that name: its creation time); the messages set aside. Tables of earlier versions are
/// brought up to date.
const STATE_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS _bemi_store_state (
  stream text NOT NULL,
  partition int NOT NULL,
  last_sequence bigint NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (stream, partition)
);
ALTER TABLE _bemi_store_state ADD COLUMN IF NOT EXISTS stream_created text NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS _bemi_store_rejected (
  stream text NOT NULL,
  stream_created text NOT NULL DEFAULT '',
  sequence bigint NOT NULL,
  subject text NOT NULL,
  reason text NOT NULL,
  payload bytea NOT NULL,
  rejected_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (stream, stream_created, sequence)
);
ALTER TABLE _bemi_store_rejected ADD COLUMN IF NOT EXISTS stream_created text NOT NULL DEFAULT '';
DO $$ BEGIN
  IF (SELECT i.indnatts FROM pg_catalog.pg_index i
       WHERE i.indrelid = '_bemi_store_rejected'::regclass AND i.indisprimary) = 2 THEN
    ALTER TABLE _bemi_store_rejected DROP CONSTRAINT _bemi_store_rejected_pkey,
      ADD PRIMARY KEY (stream, stream_created, sequence);
  END IF;
END $$";

const STATE_SQL: &str = "INSERT INTO _bemi_store_state AS s \
       (stream, partition, last_sequence, stream_created) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (stream, partition) DO UPDATE \
       SET last_sequence = CASE WHEN s.stream_created = EXCLUDED.stream_created \
             THEN greatest(s.last_sequence, EXCLUDED.last_sequence) \
             ELSE EXCLUDED.last_sequence END, \
           stream_created = EXCLUDED.stream_created, updated_at = now()";

const RESET_SQL: &str = "UPDATE _bemi_store_state \
        SET last_sequence = 0, stream_created = $3, updated_at = now() \
      WHERE stream = $1 AND partition = $2";

const REJECT_SQL: &str = "INSERT INTO _bemi_store_rejected \
       (stream, stream_created, sequence, subject, reason, payload) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";

/// How long the parts of a split change may wait for the rest while later messages of their
/// partition arrive, before they are set aside (longer than the stream's duplicate window, so
/// that a capture that crashed between parts has published them again).
const ORPHAN_AFTER: Duration = Duration::from_secs(300);

/// The application name prefix of a store's destination connections: stores count each other
/// by it.
const APPLICATION_NAME: &str = "bemi-store ";

/// How often an idle partition writer checks that its consumer still exists.
const CONSUMER_CHECK_INTERVAL: Duration = Duration::from_secs(3);

/// How often a store looks at its partitions (and the others).
const BALANCE_INTERVAL: Duration = Duration::from_millis(500);

/// How a store runs.
///
/// ```
/// use bemi_nats::{NatsConfig, StoreConfig};
///
/// let config = StoreConfig::new(NatsConfig::new("nats://127.0.0.1:4222"), "postgres://localhost/audit");
/// assert_eq!(config.batch_messages, 256);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreConfig {
    /// The change stream.
    pub nats: NatsConfig,
    /// The database with the `changes` table.
    pub destination_url: String,
    /// Messages fetched (and committed) at once per partition.
    pub batch_messages: usize,
    /// Whether `changes` keeps its GIN indexes on `before` and `after` (see
    /// [`WorkerConfig::image_indexes`](bemi_worker::WorkerConfig::image_indexes)).
    pub image_indexes: bemi_audit::schema::ImageIndexes,
    /// When each partition's chain head is signed, and with which key (default: no key).
    pub checkpoints: bemi_audit::checkpoint::CheckpointPolicy,
}

impl StoreConfig {
    /// Stores `nats`'s stream into the database of `destination_url`.
    pub fn new(nats: NatsConfig, destination_url: impl Into<String>) -> Self {
        Self {
            nats,
            destination_url: destination_url.into(),
            batch_messages: 256,
            image_indexes: bemi_audit::schema::ImageIndexes::Keep,
            checkpoints: bemi_audit::checkpoint::CheckpointPolicy::default(),
        }
    }

    /// Signs each partition's chain head with `policy`'s key every N changes or T seconds.
    ///
    /// ```
    /// use bemi_audit::checkpoint::CheckpointPolicy;
    /// use bemi_nats::{NatsConfig, StoreConfig};
    ///
    /// let config = StoreConfig::new(NatsConfig::new("nats://127.0.0.1:4222"), "postgres://localhost/audit")
    ///     .checkpoints(CheckpointPolicy::new(None).every_changes(100));
    /// assert_eq!(config.checkpoints.every_changes, 100);
    /// ```
    #[must_use]
    pub fn checkpoints(mut self, policy: bemi_audit::checkpoint::CheckpointPolicy) -> Self {
        self.checkpoints = policy;
        self
    }

    /// Messages fetched and committed at once per partition (default 256).
    ///
    /// ```
    /// use bemi_nats::{NatsConfig, StoreConfig};
    ///
    /// let config = StoreConfig::new(NatsConfig::new("nats://127.0.0.1:4222"), "postgres://localhost/audit")
    ///     .batch_messages(64);
    /// assert_eq!(config.batch_messages, 64);
    /// ```
    #[must_use]
    pub fn batch_messages(mut self, messages: usize) -> Self {
        self.batch_messages = messages;
        self
    }

    /// Keep or drop the GIN indexes on `before` and `after` of `changes` (default keep).
    ///
    /// ```
    /// use bemi_nats::{NatsConfig, StoreConfig};
    /// use bemi_worker::ImageIndexes;
    ///
    /// let config = StoreConfig::new(NatsConfig::new("nats://127.0.0.1:4222"), "postgres://localhost/audit")
    ///     .image_indexes(ImageIndexes::Drop);
    /// assert_eq!(config.image_indexes, ImageIndexes::Drop);
    /// ```
    #[must_use]
    pub fn image_indexes(mut self, indexes: bemi_audit::schema::ImageIndexes) -> Self {
        self.image_indexes = indexes;
        self
    }
}

/// Counters and gauges of one store.
///
/// ```
/// let metrics = bemi_nats::StoreMetrics::default();
/// assert!(metrics.render().contains("bemi_store_changes_stored_total 0"));
/// ```
#[derive(Debug, Default)]
pub struct StoreMetrics {
    changes_stored: AtomicU64,
    changes_skipped: AtomicU64,
    messages_acked: AtomicU64,
    messages_rejected: AtomicU64,
    stream_resets: AtomicU64,
    redeliveries: AtomicU64,
    errors: AtomicU64,
    partitions_owned: AtomicU64,
    /// Parts of split changes held until the rest arrive (all partitions).
    parts_waiting: AtomicU64,
    connected: AtomicBool,
    /// Messages waiting in the (work-queue) stream: not yet stored and acknowledged.
    pending: AtomicU64,
}

impl StoreMetrics {
    /// Changes written into `changes` (new ones; a change already stored is skipped).
    pub fn changes_stored(&self) -> u64 {
        self.changes_stored.load(Ordering::Relaxed)
    }

    /// Messages set aside in `_bemi_store_rejected`.
    pub fn messages_rejected(&self) -> u64 {
        self.messages_rejected.load(Ordering::Relaxed)
    }

    /// Times a partition found its stream created again (or its sequence reset) since the
    /// position recorded for it.
    pub fn stream_resets(&self) -> u64 {
        self.stream_resets.load(Ordering::Relaxed)
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
            "Messages set aside in _bemi_store_rejected: not change messages, or refused by \
             the destination for their content.",
            load(&self.messages_rejected),
        );
        metric(
            "bemi_store_stream_resets_total",
            "counter",
            "Times a partition found its stream created again (or its sequence reset) since \
             the position it recorded.",
            load(&self.stream_resets),
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
            "bemi_store_parts_waiting",
            "gauge",
            "Parts of changes too large for one message, held (unacknowledged) until the rest \
             arrive.",
            load(&self.parts_waiting),
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

/// Writes the change stream into `changes` until stopped.
///
/// ```no_run
/// use bemi_nats::{NatsConfig, Store, StoreConfig};
///
/// # async fn run() -> Result<(), bemi_nats::NatsError> {
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
    handle: JoinHandle<Result<(), NatsError>>,
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
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), NatsError> {
        self.config.nats.validate()?;
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

    fn destination_options(&self) -> Result<PgConnectOptions, NatsError> {
        let options: PgConnectOptions = self
            .config
            .destination_url
            .parse()
            .map_err(|e| NatsError::InvalidConfig(format!("destination URL: {e}")))?;
        Ok(options.application_name(&format!("{APPLICATION_NAME}{}", self.id)))
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), NatsError> {
        let connection = connect(&self.config.nats, "bemi-store").await?;
        let (stream, partitions) = ensure_stream(&connection.jetstream, &self.config.nats).await?;
        let options = self.destination_options()?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(NatsError::destination)?;
        let mut tx = pool.begin().await.map_err(NatsError::destination)?;
        bemi_audit::schema::prepare_with(&mut tx, self.config.image_indexes)
            .await
            .map_err(NatsError::destination)?;
        sqlx::raw_sql(STATE_TABLE_SQL)
            .execute(&mut *tx)
            .await
            .map_err(NatsError::destination)?;
        tx.commit().await.map_err(NatsError::destination)?;
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
    ) -> Result<(), NatsError> {
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
                    Err(panic) => NatsError::Nats(format!("partition {p} writer: {panic}")),
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
                        checkpointer: Checkpointer::new(self.config.checkpoints.clone()),
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
    /// When the partition's chain head is due a signed checkpoint.
    checkpointer: Checkpointer,
}

fn nats_error(what: &str) -> impl FnOnce(async_nats::Error) -> NatsError + '_ {
    move |error| NatsError::Nats(format!("{what}: {error}"))
}

/// What a store writes (or sets aside) at once: one message, or the parts of one, joined.
struct Unit<M> {
    /// The stream sequence of its (last) message.
    sequence: u64,
    subject: String,
    payload: Bytes,
    /// Why it is set aside without being read, if it is.
    invalid: Option<String>,
    /// The messages to acknowledge once it is committed.
    messages: Vec<M>,
}

/// The parts of split changes received so far, by whole and part count.
struct Joiner<M> {
    wholes: HashMap<(String, u32), Joining<M>>,
}

struct Joining<M> {
    parts: BTreeMap<u32, (u64, Bytes)>,
    subject: String,
    messages: Vec<M>,
    since: Instant,
}

impl<M> Joiner<M> {
    fn new() -> Self {
        Self {
            wholes: HashMap::new(),
        }
    }

    /// How many parts it holds.
    fn parts_held(&self) -> u64 {
        self.wholes
            .values()
            .map(|joining| joining.parts.len() as u64)
            .sum()
    }

    /// Adds a part (again, if delivered twice); returns the whole once every part is there.
    fn add(
        &mut self,
        part: Part,
        sequence: u64,
        subject: &str,
        payload: Bytes,
        message: M,
    ) -> Option<Unit<M>> {
        let key = (part.whole, part.count);
        let joining = self.wholes.entry(key.clone()).or_insert_with(|| Joining {
            parts: BTreeMap::new(),
            subject: subject.to_owned(),
            messages: Vec::new(),
            since: Instant::now(),
        });
        joining.parts.insert(part.index, (sequence, payload));
        joining.messages.push(message);
        if joining.parts.len() < usize::try_from(part.count).unwrap_or(usize::MAX) {
            return None;
        }
        let joining = self.wholes.remove(&key)?;
        Some(joining.into_unit(None))
    }

    /// The wholes still missing parts after `older_than`, though a later message (up to
    /// `newest`) came: their missing parts will not come; they are set aside.
    fn orphans(&mut self, newest: u64, older_than: Duration) -> Vec<Unit<M>> {
        let keys: Vec<(String, u32)> = self
            .wholes
            .iter()
            .filter(|(_, joining)| {
                joining.since.elapsed() >= older_than
                    && joining
                        .parts
                        .values()
                        .all(|(sequence, _)| *sequence < newest)
            })
            .map(|(key, _)| key.clone())
            .collect();
        keys.into_iter()
            .filter_map(|key| {
                let joining = self.wholes.remove(&key)?;
                let reason = format!(
                    "an incomplete split change: {} of its {} parts (whole {}) arrived, and \
                     later messages of its partition followed for {}s without the rest; if the \
                     capture publishes it again, it is stored then (look for its position in \
                     changes), otherwise re-run the capture from before it",
                    joining.parts.len(),
                    key.1,
                    key.0,
                    older_than.as_secs()
                );
                Some(joining.into_unit(Some(reason)))
            })
            .collect()
    }
}

impl<M> Joining<M> {
    fn into_unit(self, invalid: Option<String>) -> Unit<M> {
        let sequence = self.parts.values().map(|(s, _)| *s).max().unwrap_or(0);
        let mut payload = Vec::with_capacity(self.parts.values().map(|(_, p)| p.len()).sum());
        for (_, part) in self.parts.values() {
            payload.extend_from_slice(part);
        }
        Unit {
            sequence,
            subject: self.subject,
            payload: payload.into(),
            invalid,
            messages: self.messages,
        }
    }
}

/// The part a message is, if it is one (by its headers).
fn part_of(message: &jetstream::Message) -> Option<Result<Part, ReadError>> {
    let headers = message.headers.as_ref()?;
    let part = headers.get(wire::PART_HEADER)?;
    let whole = headers
        .get(wire::WHOLE_HEADER)
        .map_or("", |whole| whole.as_str());
    Some(Part::from_headers(part.as_str(), whole))
}

/// Why committing failed: the content of what was written, or anything else (retried).
enum CommitError {
    /// The destination refused the content (SQLSTATE class 22, 23 or 54): the reason.
    Content(String),
    Other(NatsError),
}

/// Whether the destination refused a write for what it holds: a data exception (class 22: e.g.
/// `\u0000` in `jsonb`, 22P05), an integrity violation (class 23; the unique key of `changes`
/// is a no-op, not an error) or a program limit (class 54: a value too large). Connection,
/// lock and resource errors are not: they are retried.
fn content_error(error: &sqlx::Error) -> Option<String> {
    let database = error.as_database_error()?;
    let code = database.code()?;
    ["22", "23", "54"]
        .iter()
        .any(|class| code.starts_with(class))
        .then(|| {
            format!(
                "the destination refused it: {} (SQLSTATE {code})",
                database.message()
            )
        })
}

fn commit_error(error: sqlx::Error) -> CommitError {
    match content_error(&error) {
        Some(reason) => CommitError::Content(reason),
        None => CommitError::Other(NatsError::destination(error)),
    }
}

impl PartitionWriter {
    async fn run(mut self, stop: CancellationToken) -> Result<(), NatsError> {
        let mut held = 0;
        let result = self.consume(&stop, &mut held).await;
        self.metrics
            .parts_waiting
            .fetch_sub(held, Ordering::Relaxed);
        let _ = self.conn.close().await;
        result
    }

    /// The stream's identity (its creation time), after checking it against the one recorded
    /// with this partition's position: a stream created again (or whose sequence went back) is
    /// logged, counted and recorded.
    async fn identify_stream(&mut self) -> Result<String, NatsError> {
        let p = i32::try_from(self.partition).unwrap_or(i32::MAX);
        let stream_name = self.config.nats.stream.clone();
        let info = self.stream.get_info().await.map_err(|error| {
            NatsError::Nats(format!("reading the stream {stream_name:?}: {error}"))
        })?;
        let created = info.created.to_string();
        let recorded: Option<(i64, String)> = sqlx::query_as(
            "SELECT last_sequence, stream_created FROM _bemi_store_state \
              WHERE stream = $1 AND partition = $2",
        )
        .bind(&stream_name)
        .bind(p)
        .fetch_optional(&mut self.conn)
        .await
        .map_err(NatsError::destination)?;
        let Some((last, was_created)) = recorded else {
            return Ok(created);
        };
        let last = u64::try_from(last).unwrap_or(0);
        let what = if !was_created.is_empty() && was_created != created {
            Some(format!(
                "was deleted and created again (it was created {was_created}, this one {created})"
            ))
        } else if last > info.state.last_sequence {
            Some(format!(
                "has sequences up to {} only, below the {last} this partition recorded: it was \
                 created again or its sequence was reset",
                info.state.last_sequence
            ))
        } else {
            None
        };
        if let Some(what) = what {
            self.metrics.stream_resets.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                stream = %stream_name,
                partition = self.partition,
                "the stream {what}: its messages are stored from its start (changes stored \
                 before are not duplicated); changes that were in the lost stream and not stored \
                 yet are gone: compare changes with the source for the time around the loss"
            );
            sqlx::query(RESET_SQL)
                .bind(&stream_name)
                .bind(p)
                .bind(&created)
                .execute(&mut self.conn)
                .await
                .map_err(NatsError::destination)?;
        }
        Ok(created)
    }

    /// Writes the partition until `stop`; `held` follows the parts it holds.
    async fn consume(&mut self, stop: &CancellationToken, held: &mut u64) -> Result<(), NatsError> {
        let p = self.partition;
        let created = self.identify_stream().await?;
        // A consumer of our own: delivering what is left in the stream, in order, from the
        // start (what an earlier owner delivered but did not acknowledge included).
        let name = format!("bemi-store-{p}");
        match self.stream.delete_consumer(&name).await {
            Ok(_) => {}
            Err(error)
                if matches!(error.kind(), stream::ConsumerErrorKind::JetStream(inner)
                    if inner.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) => {}
            Err(error) => return Err(NatsError::Nats(format!("resetting {name}: {error}"))),
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
            .map_err(|error| NatsError::Nats(format!("creating {name}: {error}")))?;
        tracing::info!(partition = p, "writing a partition");
        let mut joiner = Joiner::new();
        let mut newest = 0;
        let mut consumer_checked = Instant::now();
        while !stop.is_cancelled() {
            let mut batch = consumer
                .fetch()
                .max_messages(self.config.batch_messages)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map_err(|error| NatsError::Nats(format!("fetching from {name}: {error}")))?;
            let mut units = Vec::new();
            while let Some(message) = batch.next().await {
                let message = message.map_err(nats_error("fetching"))?;
                let info = message
                    .info()
                    .map_err(nats_error("reading a message's metadata"))?;
                if info.delivered > 1 {
                    self.metrics.redeliveries.fetch_add(1, Ordering::Relaxed);
                }
                let sequence = info.stream_sequence;
                newest = newest.max(sequence);
                let subject = message.subject.to_string();
                let payload = message.payload.clone();
                match part_of(&message) {
                    None => units.push(Unit {
                        sequence,
                        subject,
                        payload,
                        invalid: None,
                        messages: vec![message],
                    }),
                    Some(Err(error)) => units.push(Unit {
                        sequence,
                        subject,
                        payload,
                        invalid: Some(error.to_string()),
                        messages: vec![message],
                    }),
                    Some(Ok(part)) => {
                        tracing::debug!(
                            partition = p,
                            part = part.index,
                            of = part.count,
                            "a part of a split change"
                        );
                        units.extend(joiner.add(part, sequence, &subject, payload, message));
                    }
                }
            }
            units.extend(joiner.orphans(newest, ORPHAN_AFTER));
            let now_held = joiner.parts_held();
            if now_held >= *held {
                self.metrics
                    .parts_waiting
                    .fetch_add(now_held - *held, Ordering::Relaxed);
            } else {
                self.metrics
                    .parts_waiting
                    .fetch_sub(*held - now_held, Ordering::Relaxed);
            }
            *held = now_held;
            if units.is_empty() {
                // A stream deleted under a fetch may end it without an error: an idle
                // partition asks now and then whether its consumer still exists, and if not
                // (the stream is gone or was created again) starts over, which takes the
                // partition again on the stream there is now.
                if consumer_checked.elapsed() >= CONSUMER_CHECK_INTERVAL {
                    consumer_checked = Instant::now();
                    consumer
                        .get_info()
                        .await
                        .map_err(|error| NatsError::Nats(format!("checking {name}: {error}")))?;
                }
                continue;
            }
            units.sort_by_key(|unit| unit.sequence);
            self.store(&units, &created).await?;
            let mut acked = 0;
            for message in units.iter().flat_map(|unit| &unit.messages) {
                message.ack().await.map_err(nats_error("acknowledging"))?;
                acked += 1;
            }
            self.metrics
                .messages_acked
                .fetch_add(acked, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Commits `units` with the newest sequence, in one transaction; when the destination
    /// refuses their content, again one by one, setting aside those it refuses.
    async fn store<M>(&mut self, units: &[Unit<M>], created: &str) -> Result<(), NatsError> {
        match self.commit(units, created).await {
            Ok(()) => return Ok(()),
            Err(CommitError::Other(error)) => return Err(error),
            Err(CommitError::Content(reason)) if units.len() > 1 => tracing::warn!(
                partition = self.partition,
                messages = units.len(),
                %reason,
                "the destination refused a batch; writing its messages one by one"
            ),
            Err(CommitError::Content(_)) => {}
        }
        for unit in units {
            match self.commit(std::slice::from_ref(unit), created).await {
                Ok(()) => {}
                Err(CommitError::Other(error)) => return Err(error),
                Err(CommitError::Content(reason)) => {
                    self.set_aside(unit, &reason, created)
                        .await
                        .map_err(NatsError::destination)?;
                }
            }
        }
        Ok(())
    }

    /// One transaction: the changes of `units`, the ones that are not change messages set
    /// aside, the newest sequence.
    async fn commit<M>(&mut self, units: &[Unit<M>], created: &str) -> Result<(), CommitError> {
        let mut decoded: Vec<IncomingMessage<'_>> = Vec::with_capacity(units.len());
        let mut unreadable: Vec<(&Unit<M>, String)> = Vec::new();
        for unit in units {
            let read = match &unit.invalid {
                Some(reason) => Err(reason.clone()),
                None => IncomingMessage::read(&unit.payload).map_err(|error| error.to_string()),
            };
            match read {
                Ok(message) => decoded.push(message),
                Err(reason) => unreadable.push((unit, reason)),
            }
        }
        let mut by_database: BTreeMap<(Option<&str>, &str), ChangeBatch<'_>> = BTreeMap::new();
        let mut sent = 0u64;
        for message in &decoded {
            let batch = by_database
                .entry((message.source.as_deref(), &message.database))
                .or_default();
            for change in &message.changes {
                let operation = change
                    .operation()
                    .map_err(|error| CommitError::Other(NatsError::Nats(error.to_string())))?;
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
        let newest = units.iter().map(|unit| unit.sequence).max().unwrap_or(0);
        let stream_name = self.config.nats.stream.clone();
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(|error| CommitError::Other(NatsError::destination(error)))?;
        // The partition's chain: read in the transaction (this store holds the partition), the
        // re-delivered changes left out before numbering.
        let chain_name = chain::stream_chain(&stream_name, self.partition);
        let start = chain::read_head(&mut tx, &chain_name)
            .await
            .map_err(commit_error)?;
        self.checkpointer.starts_at(start);
        let mut head = start;
        let mut written = 0;
        for ((source, database), batch) in &by_database {
            let mut chained = batch
                .prepare_chain(&chain_name, *source, database, &mut tx)
                .await
                .map_err(commit_error)?;
            head = chained.link(head);
            written += chained.insert(&mut tx).await.map_err(commit_error)?;
        }
        chain::record_head(&mut tx, &chain_name, start, head)
            .await
            .map_err(commit_error)?;
        let checkpoint = self.checkpointer.due(&chain_name, head);
        if let Some(checkpoint) = &checkpoint {
            checkpoint.insert(&mut tx).await.map_err(commit_error)?;
        }
        for (unit, reason) in &unreadable {
            reject(&mut tx, &stream_name, created, unit, reason)
                .await
                .map_err(commit_error)?;
        }
        record(&mut tx, &stream_name, self.partition, newest, created)
            .await
            .map_err(commit_error)?;
        tx.commit().await.map_err(commit_error)?;
        if let Some(checkpoint) = &checkpoint
            && let Err(error) = self.checkpointer.committed(checkpoint)
        {
            tracing::error!(%error, seq = checkpoint.seq, "could not append a checkpoint to the checkpoint file");
        }
        self.metrics
            .changes_stored
            .fetch_add(written, Ordering::Relaxed);
        self.metrics
            .changes_skipped
            .fetch_add(sent - written, Ordering::Relaxed);
        self.metrics
            .messages_rejected
            .fetch_add(unreadable.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sets `unit` aside, with the sequence, in a transaction of its own.
    async fn set_aside<M>(
        &mut self,
        unit: &Unit<M>,
        reason: &str,
        created: &str,
    ) -> Result<(), sqlx::Error> {
        let stream_name = self.config.nats.stream.clone();
        let mut tx = self.conn.begin().await?;
        reject(&mut tx, &stream_name, created, unit, reason).await?;
        record(
            &mut tx,
            &stream_name,
            self.partition,
            unit.sequence,
            created,
        )
        .await?;
        tx.commit().await?;
        self.metrics
            .messages_rejected
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Keeps `unit` in `_bemi_store_rejected`, with `reason`, and logs it.
async fn reject<M>(
    conn: &mut PgConnection,
    stream_name: &str,
    created: &str,
    unit: &Unit<M>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    tracing::error!(
        stream = %stream_name,
        sequence = unit.sequence,
        subject = %unit.subject,
        reason,
        "a message of the stream cannot be stored: kept in _bemi_store_rejected (see the \
         README's NATS section to inspect and replay it); its partition goes on"
    );
    sqlx::query(REJECT_SQL)
        .bind(stream_name)
        .bind(created)
        .bind(i64::try_from(unit.sequence).unwrap_or(i64::MAX))
        .bind(&unit.subject)
        .bind(reason)
        .bind(unit.payload.as_ref())
        .execute(conn)
        .await?;
    Ok(())
}

/// Records `sequence` as where `partition` of the stream created at `created` got to.
async fn record(
    conn: &mut PgConnection,
    stream_name: &str,
    partition: u32,
    sequence: u64,
    created: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(STATE_SQL)
        .bind(stream_name)
        .bind(i32::try_from(partition).unwrap_or(i32::MAX))
        .bind(i64::try_from(sequence).unwrap_or(i64::MAX))
        .bind(created)
        .execute(conn)
        .await?;
    Ok(())
}

/// Microseconds since the Unix epoch as a timestamp (the epoch itself if out of range).
fn timestamp(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(index: u32, count: u32, whole: &str) -> Part {
        Part::from_headers(&format!("{index}/{count}"), whole).unwrap()
    }

    #[test]
    fn parts_join_in_order_whatever_order_and_repeats_they_come_in() {
        let mut joiner = Joiner::new();
        let subject = "bemi.changes.0";
        assert!(
            joiner
                .add(part(2, 3, "w"), 11, subject, Bytes::from_static(b"bb"), 2)
                .is_none()
        );
        assert!(
            joiner
                .add(part(1, 3, "w"), 10, subject, Bytes::from_static(b"aa"), 1)
                .is_none()
        );
        // Delivered again (an acknowledgement wait passed): kept once, acknowledged twice.
        assert!(
            joiner
                .add(part(1, 3, "w"), 10, subject, Bytes::from_static(b"aa"), 3)
                .is_none()
        );
        let whole = joiner
            .add(part(3, 3, "w"), 12, subject, Bytes::from_static(b"c"), 4)
            .unwrap();
        assert_eq!(whole.payload, Bytes::from_static(b"aabbc"));
        assert_eq!(whole.sequence, 12);
        assert_eq!(whole.messages, vec![2, 1, 3, 4]);
        assert!(whole.invalid.is_none());
        assert!(joiner.wholes.is_empty());
    }

    #[test]
    fn only_parts_overtaken_long_ago_are_set_aside() {
        let mut joiner = Joiner::new();
        assert!(
            joiner
                .add(part(1, 2, "w"), 10, "s", Bytes::from_static(b"a"), ())
                .is_none()
        );
        // Waiting at the end of the partition: kept, however long.
        assert!(joiner.orphans(10, Duration::ZERO).is_empty());
        // Overtaken, but not for long: kept.
        assert!(joiner.orphans(11, Duration::from_secs(60)).is_empty());
        let orphans = joiner.orphans(11, Duration::ZERO);
        assert_eq!(orphans.len(), 1);
        assert!(
            orphans[0]
                .invalid
                .as_deref()
                .unwrap()
                .contains("1 of its 2 parts")
        );
    }

    #[test]
    fn content_errors_are_told_from_the_others() {
        assert!(content_error(&sqlx::Error::PoolTimedOut).is_none());
        assert!(content_error(&sqlx::Error::Protocol("x".into())).is_none());
    }
}
