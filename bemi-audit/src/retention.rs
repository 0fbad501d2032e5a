//! Retention: removing changes older than a bound (`bemi prune --older-than 90d`).
//!
//! Rows are deleted in batches, oldest first, each batch its own short transaction: a DELETE
//! takes only row locks on the rows it removes (the table's lock, ROW EXCLUSIVE, lets inserts,
//! reads and other deletes go on), and no transaction stays open long enough to hold back
//! vacuum. Autovacuum reclaims the space afterwards.
//!
//! On a `changes` table partitioned by month, the months that end at or before the bound are
//! dropped (or detached, to archive them) whole — instant, and no dead rows — and only the rows
//! of the month that straddles the bound (and of the default partition) are deleted in batches.
//! Dropping or detaching takes a short exclusive lock on `changes`: it waits at most
//! `lock_timeout` for it (so that it never queues the worker's writes behind it for long) and
//! tries again a few times.
//!
//! Before it deletes anything, a prune leaves a checkpoint of each hash chain at its boundary
//! (signed with [`Pruner::checkpoint_key`]), so that `bemi verify` still verifies the rest.
//!
//! ```no_run
//! use bemi_audit::retention::Pruner;
//!
//! # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
//! let ninety_days_ago = chrono::Utc::now() - chrono::Duration::days(90);
//! let report = Pruner::new(ninety_days_ago)
//!     .batch_rows(5_000)
//!     .run(&pool, |progress| println!("{progress:?}"))
//!     .await?;
//! println!("deleted {} rows, dropped {:?}", report.deleted_rows, report.dropped);
//! # Ok(()) }
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Connection as _, PgPool};
use tokio_util::sync::CancellationToken;

use crate::schema::{self, Layout};

/// Deletes one batch of the oldest rows before `$1`, at most `$2`. `(id, committed_at)` is the
/// primary key of both layouts; the subquery reads the `committed_at` index from its start.
const DELETE_BATCH_SQL: &str = "DELETE FROM changes WHERE committed_at < $1 \
       AND (id, committed_at) IN ( \
         SELECT id, committed_at FROM changes WHERE committed_at < $1 \
          ORDER BY committed_at LIMIT $2)";

/// How many times a partition is tried when its lock is not granted in time.
const LOCK_ATTEMPTS: u32 = 5;

/// What happens to the monthly partitions that are wholly older than the bound.
///
/// ```
/// assert_eq!(bemi_audit::retention::OldPartitions::default(), bemi_audit::retention::OldPartitions::Drop);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OldPartitions {
    /// `DROP TABLE`: gone.
    #[default]
    Drop,
    /// `ALTER TABLE changes DETACH PARTITION`: kept as a table of its own, outside `changes`
    /// (archive it, e.g. with `pg_dump -t`, then drop it).
    Detach,
}

/// Removes the changes committed before a bound.
///
/// ```
/// use bemi_audit::retention::{OldPartitions, Pruner};
///
/// let pruner = Pruner::new(chrono::Utc::now())
///     .batch_rows(1_000)
///     .old_partitions(OldPartitions::Detach)
///     .lock_timeout(std::time::Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
pub struct Pruner {
    older_than: DateTime<Utc>,
    batch_rows: u32,
    old_partitions: OldPartitions,
    lock_timeout: Duration,
    cancel: Option<CancellationToken>,
    checkpoint_key: Option<crate::checkpoint::SigningKey>,
}

/// A step of a prune, reported as it happens.
///
/// ```
/// use bemi_audit::retention::PruneProgress;
///
/// let step = PruneProgress::Batch { deleted: 10, total: 30 };
/// assert!(matches!(step, PruneProgress::Batch { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PruneProgress {
    /// A whole partition was dropped or detached.
    Partition {
        /// Its name.
        name: String,
        /// Detached (kept) rather than dropped.
        detached: bool,
    },
    /// A batch of rows was deleted (and committed).
    Batch {
        /// Rows of this batch.
        deleted: u64,
        /// Rows deleted so far.
        total: u64,
    },
}

/// What a prune did.
///
/// ```
/// let report = bemi_audit::retention::PruneReport::default();
/// assert_eq!(report.deleted_rows, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Rows deleted (not counting dropped or detached partitions).
    pub deleted_rows: u64,
    /// Batches (transactions) it took.
    pub batches: u64,
    /// Partitions dropped.
    pub dropped: Vec<String>,
    /// Partitions detached.
    pub detached: Vec<String>,
    /// Whether it stopped early because it was cancelled (what it did is committed).
    pub cancelled: bool,
}

impl Pruner {
    /// Removes what was committed before `older_than`; batches of 5 000 rows, old partitions
    /// dropped, 5 s lock timeout.
    ///
    /// ```
    /// let pruner = bemi_audit::retention::Pruner::new(chrono::Utc::now() - chrono::Duration::days(90));
    /// ```
    pub fn new(older_than: DateTime<Utc>) -> Self {
        Self {
            older_than,
            batch_rows: 5_000,
            old_partitions: OldPartitions::Drop,
            lock_timeout: Duration::from_secs(5),
            cancel: None,
            checkpoint_key: None,
        }
    }

    /// Rows per batch (at least 1).
    ///
    /// ```
    /// let pruner = bemi_audit::retention::Pruner::new(chrono::Utc::now()).batch_rows(500);
    /// ```
    pub fn batch_rows(mut self, rows: u32) -> Self {
        self.batch_rows = rows.max(1);
        self
    }

    /// Drop (default) or detach the partitions that are wholly older than the bound.
    ///
    /// ```
    /// use bemi_audit::retention::{OldPartitions, Pruner};
    ///
    /// let pruner = Pruner::new(chrono::Utc::now()).old_partitions(OldPartitions::Detach);
    /// ```
    pub fn old_partitions(mut self, what: OldPartitions) -> Self {
        self.old_partitions = what;
        self
    }

    /// How long dropping or detaching a partition waits for its lock before trying again.
    ///
    /// ```
    /// let pruner = bemi_audit::retention::Pruner::new(chrono::Utc::now()).lock_timeout(std::time::Duration::from_secs(1));
    /// ```
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Stop between two batches once `token` is cancelled (e.g. on Ctrl-C).
    ///
    /// ```
    /// let token = tokio_util::sync::CancellationToken::new();
    /// let pruner = bemi_audit::retention::Pruner::new(chrono::Utc::now()).cancel_on(token.clone());
    /// ```
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Signs the checkpoints left at the prune's boundary with `key` (without one they are
    /// unsigned: `bemi verify` with a public key then refuses them).
    ///
    /// ```
    /// let key = bemi_audit::checkpoint::SigningKey::generate().unwrap();
    /// let pruner = bemi_audit::retention::Pruner::new(chrono::Utc::now()).checkpoint_key(Some(key));
    /// ```
    pub fn checkpoint_key(mut self, key: Option<crate::checkpoint::SigningKey>) -> Self {
        self.checkpoint_key = key;
        self
    }

    /// Records, for each chain, a checkpoint of the newest change the prune removes (the
    /// boundary `bemi verify` then starts from).
    async fn checkpoint_boundary(&self, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        // A trail no chained writer has prepared (no chain columns, no checkpoint table).
        let chained: bool = sqlx::query_scalar(
            "SELECT to_regclass('_bemi_checkpoints') IS NOT NULL AND EXISTS ( \
               SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('changes') \
                  AND attname = 'chain_hash' AND NOT attisdropped)",
        )
        .fetch_one(&mut *conn)
        .await?;
        if !chained {
            return Ok(());
        }
        let boundaries: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT DISTINCT ON (chain) chain, chain_seq, chain_hash FROM changes \
              WHERE chain IS NOT NULL AND chain_seq IS NOT NULL AND chain_hash IS NOT NULL \
                AND committed_at < $1 \
              ORDER BY chain, chain_seq DESC",
        )
        .bind(self.older_than)
        .fetch_all(&mut *conn)
        .await?;
        let now = Utc::now();
        for (chain, seq, hash) in boundaries {
            let Some(head) = crate::chain::ChainHead::from_parts(seq, &hash) else {
                continue;
            };
            crate::checkpoint::Checkpoint::sign(
                self.checkpoint_key.as_ref(),
                &chain,
                head,
                now,
                "prune",
            )
            .insert(conn)
            .await?;
        }
        Ok(())
    }

    /// Prunes, calling `progress` after each partition and each batch.
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let report = bemi_audit::retention::Pruner::new(chrono::Utc::now() - chrono::Duration::days(90))
    ///     .run(&pool, |_| {})
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run(
        &self,
        pool: &PgPool,
        mut progress: impl FnMut(PruneProgress),
    ) -> Result<PruneReport, sqlx::Error> {
        let mut report = PruneReport::default();
        let mut conn = pool.acquire().await?;
        if !self.cancelled() {
            self.checkpoint_boundary(&mut conn).await?;
        }
        if schema::layout(&mut conn).await? == Some(Layout::Monthly) {
            for partition in schema::partitions(&mut conn).await? {
                let old =
                    !partition.is_default && partition.to.is_some_and(|to| to <= self.older_than);
                if !old {
                    continue;
                }
                if self.cancelled() {
                    report.cancelled = true;
                    return Ok(report);
                }
                self.remove_partition(&mut conn, &partition.name).await?;
                let detached = self.old_partitions == OldPartitions::Detach;
                if detached {
                    report.detached.push(partition.name.clone());
                } else {
                    report.dropped.push(partition.name.clone());
                }
                progress(PruneProgress::Partition {
                    name: partition.name,
                    detached,
                });
            }
        }
        loop {
            if self.cancelled() {
                report.cancelled = true;
                break;
            }
            let deleted = sqlx::query(DELETE_BATCH_SQL)
                .bind(self.older_than)
                .bind(i64::from(self.batch_rows))
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if deleted == 0 {
                break;
            }
            report.batches += 1;
            report.deleted_rows += deleted;
            progress(PruneProgress::Batch {
                deleted,
                total: report.deleted_rows,
            });
            if deleted < u64::from(self.batch_rows) {
                break;
            }
        }
        Ok(report)
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// Drops or detaches one partition, waiting at most `lock_timeout` for its lock per
    /// attempt.
    async fn remove_partition(
        &self,
        conn: &mut sqlx::PgConnection,
        name: &str,
    ) -> Result<(), sqlx::Error> {
        let mut attempt = 1;
        loop {
            let result = async {
                let mut tx = conn.begin().await?;
                let millis = i64::try_from(self.lock_timeout.as_millis()).unwrap_or(i64::MAX);
                sqlx::query("SELECT set_config('lock_timeout', $1, true)")
                    .bind(format!("{millis}ms"))
                    .execute(&mut *tx)
                    .await?;
                // The name is the partition's regclass text (quoted by the server).
                let sql: String = sqlx::query_scalar(match self.old_partitions {
                    OldPartitions::Drop => "SELECT format('DROP TABLE %s', $1::regclass)",
                    OldPartitions::Detach => {
                        "SELECT format('ALTER TABLE %s DETACH PARTITION %s', \
                                              to_regclass('changes'), $1::regclass)"
                    }
                })
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await?;
                tx.commit().await
            }
            .await;
            match result {
                Err(sqlx::Error::Database(error))
                    if error.code().as_deref() == Some("55P03") && attempt < LOCK_ATTEMPTS =>
                {
                    tracing::warn!(partition = name, attempt, "changes is busy; trying again");
                    tokio::time::sleep(self.lock_timeout).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}
