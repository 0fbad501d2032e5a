//! The shared test cluster and the per-test databases.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::Context as _;
use bemi_dev::{DevDatabase, EphemeralPostgres};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// Where the test databases live: started on first use, shared by every test of the run.
#[derive(Debug, Default)]
pub struct TestCluster {
    server: OnceLock<DevDatabase>,
    counter: AtomicUsize,
    start_lock: Mutex<()>,
}

/// One fresh database for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// A superuser URL.
    pub url: String,
    /// A small pool of superuser connections.
    pub pool: PgPool,
}

impl TestCluster {
    /// A cluster that starts on first use.
    pub fn new() -> Self {
        Self::default()
    }

    fn server(&self) -> anyhow::Result<&DevDatabase> {
        if let Some(server) = self.server.get() {
            return Ok(server);
        }
        let _guard = self
            .start_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(server) = self.server.get() {
            return Ok(server);
        }
        let server = DevDatabase::from_var("BEMI_TEST_DATABASE_URL")?;
        Ok(self.server.get_or_init(|| server))
    }

    /// The prefix of every database this run creates.
    fn prefix() -> String {
        format!("bemi_t{}_", std::process::id())
    }

    /// A fresh database with `ddl` run in it (several statements allowed) and tracking
    /// installed: the source of a capture test.
    ///
    /// # Errors
    ///
    /// When the database cannot be made, `ddl` fails or the migration does.
    pub async fn tracked_database(&self, hint: &str, ddl: &str) -> anyhow::Result<TestDb> {
        let db = self.database(hint).await?;
        db.exec(ddl).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Creates a fresh database named after `hint`.
    pub async fn database(&self, hint: &str) -> anyhow::Result<TestDb> {
        let server = tokio::task::block_in_place(|| self.server())?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let hint: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let name = format!("{}{n}_{hint}", Self::prefix());
        let url = server.url_for(&name);
        create_database(&server.url(), name, url).await
    }

    /// Drops what this run created on an external server (databases and their slots). An
    /// ephemeral cluster is simply deleted when it is dropped.
    pub fn cleanup(&self) {
        let Some(DevDatabase::External(url)) = self.server.get() else {
            return;
        };
        let url = url.clone();
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(drop_databases(&url, &Self::prefix())));
        if let Err(error) = result {
            eprintln!("warning: could not drop the test databases: {error:#}");
        }
    }
}

async fn drop_databases(admin_url: &str, prefix: &str) -> anyhow::Result<()> {
    let mut admin = admin_options(admin_url)?.connect().await?;
    let like = format!("{prefix}%");
    sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE database LIKE $1 AND NOT active",
    )
    .bind(&like)
    .execute(&mut admin)
    .await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(&like)
            .fetch_all(&mut admin)
            .await?;
    for name in names {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
    }
    Ok(())
}

fn admin_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    Ok(url.parse::<PgConnectOptions>()?.disable_statement_logging())
}

/// A cluster of the test's own, for tests that restart or misconfigure the server.
pub async fn private_cluster(
    options: bemi_dev::LaunchOptions,
) -> anyhow::Result<EphemeralPostgres> {
    Ok(tokio::task::spawn_blocking(move || EphemeralPostgres::start_with(options)).await??)
}

/// A database on a private cluster, as a [`TestDb`].
pub async fn private_database(pg: &EphemeralPostgres, name: &str) -> anyhow::Result<TestDb> {
    create_database(&pg.url(), name.to_owned(), pg.url_for(name)).await
}

/// Creates the database `name` as the superuser of `admin_url`; `url` is its URL.
async fn create_database(admin_url: &str, name: String, url: String) -> anyhow::Result<TestDb> {
    let mut admin = admin_options(admin_url)?.connect().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating database {name}"))?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(admin_options(&url)?)
        .await?;
    Ok(TestDb { name, url, pool })
}
