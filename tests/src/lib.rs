//! Support for the end-to-end tests of bemi-rs: a shared PostgreSQL cluster with one fresh
//! database per test, a reader of the WAL through a `test_decoding` slot, and polling with a
//! deadline.
//!
//! The cluster is an [`bemi_dev::EphemeralPostgres`] unless
//! `BEMI_TEST_DATABASE_URL` points at an existing server (a superuser URL; the server needs
//! `wal_level=logical`). Each test gets its own database there, dropped when the run ends.

/// The README's code blocks, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

pub mod cluster;
pub mod poll;
pub mod wal;
pub mod worker;

pub use cluster::{TestCluster, TestDb, private_cluster, private_database};
pub use poll::wait_until;
pub use wal::{WalEntry, WalSlot};

/// What a test returns.
pub type TestResult = anyhow::Result<()>;

/// `serde_json::json!` as a context map.
///
/// ```
/// let ctx = bemi_tests::ctx(serde_json::json!({"user_id": 1}));
/// assert_eq!(ctx["user_id"], 1);
/// ```
pub fn ctx(value: serde_json::Value) -> bemi_core::context::Context {
    match value {
        serde_json::Value::Object(map) => map,
        other => panic!("a context must be a JSON object, got {other}"),
    }
}

/// The todo table of the examples.
pub const TODO_TABLE: &str = "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, \
                              is_completed boolean NOT NULL DEFAULT false)";

/// A fresh database with the [`TODO_TABLE`] and bemi's triggers.
///
/// ```no_run
/// # async fn run(cluster: &bemi_tests::TestCluster) -> anyhow::Result<()> {
/// let db = bemi_tests::todo_db(cluster, "my_test").await?;
/// db.exec("INSERT INTO todo (task) VALUES ('Sleep')").await?;
/// # Ok(()) }
/// ```
pub async fn todo_db(cluster: &TestCluster, hint: &str) -> anyhow::Result<TestDb> {
    let db = cluster.database(hint).await?;
    db.exec(TODO_TABLE).await?;
    db.migrate().await?;
    Ok(db)
}

impl TestDb {
    /// Runs `sql` (several statements allowed) without any annotation.
    pub async fn exec(&self, sql: &str) -> anyhow::Result<()> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Installs tracking with the default options.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        bemi_sqlx::migration::migrate(&self.pool, Default::default()).await?;
        Ok(())
    }

    /// The pool wrapped by the sqlx adapter.
    pub fn bemi_pool(&self) -> bemi_sqlx::BemiPool {
        bemi_sqlx::BemiPool::new(self.pool.clone())
    }

    /// A tokio-postgres client of this database (its connection runs in a spawned task).
    pub async fn tokio_postgres(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) =
            tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                eprintln!("tokio-postgres connection ended: {error}");
            }
        });
        Ok(client)
    }

    /// The replica identity of `table` as `pg_class.relreplident`: `d` (default), `f` (full).
    ///
    /// ```no_run
    /// # async fn run(db: &bemi_tests::TestDb) -> anyhow::Result<()> {
    /// assert_eq!(db.replica_identity("todo").await?, "f");
    /// # Ok(()) }
    /// ```
    pub async fn replica_identity(&self, table: &str) -> anyhow::Result<String> {
        Ok(
            sqlx::query_scalar("SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass")
                .bind(table)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// A `test_decoding` slot of this database.
    pub async fn wal_slot(&self) -> anyhow::Result<WalSlot> {
        WalSlot::create(&self.pool, &self.name).await
    }
}
