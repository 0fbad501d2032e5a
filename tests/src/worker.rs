//! Running a capture worker inside a test (or waiting for one in another process) and reading
//! what it wrote.

use std::time::Duration;

use anyhow::Context as _;
use bemi_worker::Worker;
use bemi_worker::WorkerConfig;
use bemi_worker::WorkerHandle;
use bemi_worker::WorkerMetrics;
use serde_json::Value;
use std::sync::Arc;

use crate::{TestDb, wait_until};

/// A worker running in a task of the test's runtime.
#[derive(Debug)]
pub struct RunningWorker {
    /// Its metrics.
    pub metrics: Arc<WorkerMetrics>,
    handle: WorkerHandle,
}

impl RunningWorker {
    /// Starts a worker and waits until it streams (its slot exists from then on).
    pub async fn start(config: WorkerConfig) -> anyhow::Result<Self> {
        let mut handle = Worker::new(config).spawn();
        handle
            .wait_until_streaming(Duration::from_secs(60))
            .await
            .context("the worker did not stream")?;
        Ok(Self {
            metrics: handle.metrics(),
            handle,
        })
    }

    /// Asks the worker to stop and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(60), self.handle.shutdown())
            .await
            .context("the worker did not stop within 60 s")??;
        Ok(())
    }
}

/// The test's worker configuration: slot and publication named after the database, a short
/// heartbeat.
pub fn worker_config(db: &TestDb) -> WorkerConfig {
    WorkerConfig::new(db.url.clone())
        .slot(format!("bemi_{}", db.name))
        .publication("bemi")
        .heartbeat_interval(Duration::from_millis(500))
}

/// A row of the `changes` table, as JSON values.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChange {
    /// `primary_key`
    pub primary_key: Option<String>,
    /// `before`
    pub before: Value,
    /// `after`
    pub after: Value,
    /// `context`
    pub context: Value,
    /// `database`
    pub database: String,
    /// `schema`
    pub schema: String,
    /// `table`
    pub table: String,
    /// `operation`
    pub operation: String,
    /// `transaction_id`
    pub transaction_id: i64,
    /// `position`
    pub position: i64,
    /// `committed_at` as ISO text
    pub committed_at: String,
}

/// Every stored change, in WAL order.
pub async fn stored_changes(db: &TestDb) -> anyhow::Result<Vec<StoredChange>> {
    stored_changes_in(&db.pool).await
}

/// Every stored change of the `changes` table reachable through `pool`, in WAL order.
pub async fn stored_changes_in(pool: &sqlx::PgPool) -> anyhow::Result<Vec<StoredChange>> {
    type Row = (
        Option<String>,
        Value,
        Value,
        Value,
        String,
        String,
        String,
        String,
        i64,
        i64,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT primary_key, before, after, context, database, schema, \"table\", operation, \
                transaction_id, position, to_char(committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
           FROM changes ORDER BY position, \"table\"",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| StoredChange {
            primary_key: r.0,
            before: r.1,
            after: r.2,
            context: r.3,
            database: r.4,
            schema: r.5,
            table: r.6,
            operation: r.7,
            transaction_id: r.8,
            position: r.9,
            committed_at: r.10,
        })
        .collect())
}

/// How many rows the `changes` table holds; `None` until the worker has created it.
///
/// ```no_run
/// # async fn run(db: &bemi_tests::TestDb) -> anyhow::Result<()> {
/// let stored = bemi_tests::worker::stored_count(db).await?.unwrap_or(0);
/// # Ok(()) }
/// ```
pub async fn stored_count(db: &TestDb) -> anyhow::Result<Option<i64>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('changes') IS NOT NULL")
        .fetch_one(&db.pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    Ok(Some(
        sqlx::query_scalar("SELECT count(*) FROM changes")
            .fetch_one(&db.pool)
            .await?,
    ))
}

/// Waits until the `changes` table holds at least `count` rows, then returns them all.
pub async fn wait_for_changes(db: &TestDb, count: usize) -> anyhow::Result<Vec<StoredChange>> {
    wait_until(
        &format!("{count} rows in changes"),
        Duration::from_secs(60),
        || async {
            let stored = stored_count(db).await?;
            Ok(stored.is_some_and(|n| n as usize >= count).then_some(()))
        },
    )
    .await?;
    stored_changes(db).await
}

/// Waits until a worker in another process streams from `slot` (a WAL sender holds it): from
/// then on, writes are captured. ([`RunningWorker::start`] waits for its worker itself.)
///
/// ```no_run
/// # async fn run(db: &bemi_tests::TestDb) -> anyhow::Result<()> {
/// let slot = bemi_tests::worker::worker_config(db).slot;
/// // … start `bemi worker` with BEMI_SLOT=slot in another process …
/// bemi_tests::worker::wait_until_slot_streams(db, &slot).await?;
/// # Ok(()) }
/// ```
pub async fn wait_until_slot_streams(db: &TestDb, slot: &str) -> anyhow::Result<()> {
    wait_until("the worker to stream", Duration::from_secs(60), || async {
        let streaming: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots s \
                              JOIN pg_stat_replication r ON r.pid = s.active_pid \
                             WHERE s.slot_name = $1)",
        )
        .bind(slot)
        .fetch_one(&db.pool)
        .await?;
        Ok(streaming.then_some(()))
    })
    .await
}
