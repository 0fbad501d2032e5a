//! The benchmark's PostgreSQL: an ephemeral cluster (or `DATABASE_URL`'s server), one database
//! per comparison, and the sizes of the workloads.

use std::time::Duration;

use bemi_dev::{DevDatabase, LaunchOptions};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor as _, PgPool};

/// Workload sizes: the full run, or `--quick` for a smoke test that only checks everything works.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Alternating rounds per comparison.
    pub rounds: usize,
    /// How long a throughput round runs.
    pub round_time: Duration,
    /// Rows of the P3 UPDATE.
    pub update_rows: u32,
    /// Small transactions of the P4 workload.
    pub small_transactions: u32,
    /// Rows of the P4 large transaction.
    pub large_transaction_rows: u32,
    /// Seconds of steady writes in P5.
    pub latency_time: Duration,
    /// Rows of the P6 transaction.
    pub memory_rows: u32,
    /// Changes in the audit trail of P8.
    pub ui_changes: u32,
    /// Requests per page in P8.
    pub ui_requests: usize,
}

impl Sizes {
    /// The sizes of the goals.
    pub(crate) fn full() -> Self {
        Self {
            rounds: 5,
            round_time: Duration::from_secs(3),
            update_rows: 50_000,
            small_transactions: 20_000,
            large_transaction_rows: 200_000,
            latency_time: Duration::from_secs(10),
            memory_rows: 1_000_000,
            ui_changes: 1_000_000,
            ui_requests: 100,
        }
    }

    /// Tiny sizes, one round: checks that every benchmark still runs.
    pub(crate) fn quick() -> Self {
        Self {
            rounds: 1,
            round_time: Duration::from_millis(300),
            update_rows: 2_000,
            small_transactions: 300,
            large_transaction_rows: 3_000,
            latency_time: Duration::from_secs(1),
            memory_rows: 5_000,
            ui_changes: 20_000,
            ui_requests: 10,
        }
    }
}

/// The server every comparison runs on.
pub(crate) struct Env {
    server: DevDatabase,
}

/// A database of one comparison.
pub(crate) struct Database {
    /// Its URL.
    pub url: String,
    /// A pool of up to 8 connections.
    pub pool: PgPool,
}

impl Env {
    /// Starts an ephemeral cluster, or uses `DATABASE_URL` (a superuser of a server with
    /// `wal_level=logical`).
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let server = tokio::task::spawn_blocking(|| match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Ok(DevDatabase::External(url)),
            _ => bemi_dev::EphemeralPostgres::start_with(
                LaunchOptions::default().setting("max_wal_size", "4GB"),
            )
            .map(DevDatabase::Ephemeral),
        })
        .await??;
        Ok(Self { server })
    }

    /// The directory of the server binaries (for `pg_recvlogical`), when the cluster is ours.
    pub(crate) fn bin_dir(&self) -> Option<std::path::PathBuf> {
        match &self.server {
            DevDatabase::Ephemeral(pg) => Some(pg.bin_dir().to_owned()),
            _ => None,
        }
    }

    /// A fresh database named `name` (dropped first if a previous run left it).
    pub(crate) async fn database(&self, name: &str) -> anyhow::Result<Database> {
        let admin = PgPool::connect(&self.server.url()).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        admin.close().await;
        let url = self.server.url_for(name);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await?;
        Ok(Database { url, pool })
    }
}

impl Database {
    /// Runs SQL (several statements allowed), unannotated.
    pub(crate) async fn exec(&self, sql: &str) -> anyhow::Result<()> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The current WAL insert position, in bytes.
    pub(crate) async fn wal_position(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
