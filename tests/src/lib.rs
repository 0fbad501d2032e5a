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

/// The book's pages (`docs/src`), one item each: their Rust blocks are compiled (and those
/// without `no_run` run) as doc tests, so that they stay true.
#[cfg(doctest)]
pub mod book {
    /// `docs/src/introduction.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/introduction.md")]
    pub struct BookIntroduction;

    /// `docs/src/getting-started.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/getting-started.md")]
    pub struct BookGettingStarted;

    /// `docs/src/integrate/index.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/index.md")]
    pub struct BookIntegrateIndex;

    /// `docs/src/integrate/axum.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/axum.md")]
    pub struct BookIntegrateAxum;

    /// `docs/src/integrate/actix-web.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/actix-web.md")]
    pub struct BookIntegrateActixWeb;

    /// `docs/src/integrate/async-graphql.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/async-graphql.md")]
    pub struct BookIntegrateAsyncGraphql;

    /// `docs/src/integrate/poem.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/poem.md")]
    pub struct BookIntegratePoem;

    /// `docs/src/integrate/salvo.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/salvo.md")]
    pub struct BookIntegrateSalvo;

    /// `docs/src/integrate/rocket.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/rocket.md")]
    pub struct BookIntegrateRocket;

    /// `docs/src/integrate/sqlx.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/sqlx.md")]
    pub struct BookIntegrateSqlx;

    /// `docs/src/integrate/tokio-postgres.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/tokio-postgres.md")]
    pub struct BookIntegrateTokioPostgres;

    /// `docs/src/integrate/seaorm.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/seaorm.md")]
    pub struct BookIntegrateSeaorm;

    /// `docs/src/integrate/diesel.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/diesel.md")]
    pub struct BookIntegrateDiesel;

    /// `docs/src/integrate/loco.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/loco.md")]
    pub struct BookIntegrateLoco;

    /// `docs/src/integrate/carriers.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/carriers.md")]
    pub struct BookIntegrateCarriers;

    /// `docs/src/integrate/opentelemetry.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/opentelemetry.md")]
    pub struct BookIntegrateOpentelemetry;

    /// `docs/src/integrate/jobs.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/jobs.md")]
    pub struct BookIntegrateJobs;

    /// `docs/src/integrate/other-languages.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/other-languages.md")]
    pub struct BookIntegrateOtherLanguages;

    /// `docs/src/integrate/pgbouncer.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/pgbouncer.md")]
    pub struct BookIntegratePgbouncer;

    /// `docs/src/integrate/pitfalls.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/integrate/pitfalls.md")]
    pub struct BookIntegratePitfalls;

    /// `docs/src/operate/install.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/operate/install.md")]
    pub struct BookOperateInstall;

    /// `docs/src/operate/worker.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/operate/worker.md")]
    pub struct BookOperateWorker;

    /// `docs/src/operate/existing-database.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/operate/existing-database.md")]
    pub struct BookOperateExistingDatabase;

    /// `docs/src/operate/capture-rules.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/operate/capture-rules.md")]
    pub struct BookOperateCaptureRules;

    /// `docs/src/operate/nats.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/operate/nats.md")]
    pub struct BookOperateNats;

    /// `docs/src/operate/tls.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/operate/tls.md")]
    pub struct BookOperateTls;

    /// `docs/src/operate/metrics.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/operate/metrics.md")]
    pub struct BookOperateMetrics;

    /// `docs/src/operate/retention.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/operate/retention.md")]
    pub struct BookOperateRetention;

    /// `docs/src/operate/performance.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/operate/performance.md")]
    pub struct BookOperatePerformance;

    /// `docs/src/operate/chaos.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/operate/chaos.md")]
    pub struct BookOperateChaos;

    /// `docs/src/audit/changes-table.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/audit/changes-table.md")]
    pub struct BookAuditChangesTable;

    /// `docs/src/audit/querying.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/audit/querying.md")]
    pub struct BookAuditQuerying;

    /// `docs/src/audit/time-travel.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/audit/time-travel.md")]
    pub struct BookAuditTimeTravel;

    /// `docs/src/audit/revert.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/audit/revert.md")]
    pub struct BookAuditRevert;

    /// `docs/src/audit/web-ui.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/audit/web-ui.md")]
    pub struct BookAuditWebUi;

    /// `docs/src/audit/restore.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/audit/restore.md")]
    pub struct BookAuditRestore;

    /// `docs/src/audit/customer-audit-log.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/audit/customer-audit-log.md")]
    pub struct BookAuditCustomerAuditLog;

    /// `docs/src/security/web-ui.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/security/web-ui.md")]
    pub struct BookSecurityWebUi;

    /// `docs/src/security/hostile-input.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/security/hostile-input.md")]
    pub struct BookSecurityHostileInput;

    /// `docs/src/security/secrets.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/security/secrets.md")]
    pub struct BookSecuritySecrets;

    /// `docs/src/reference/cli.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/reference/cli.md")]
    pub struct BookReferenceCli;

    /// `docs/src/reference/changes-columns.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/reference/changes-columns.md")]
    pub struct BookReferenceChangesColumns;

    /// `docs/src/reference/wire-format.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/reference/wire-format.md")]
    pub struct BookReferenceWireFormat;

    /// `docs/src/reference/web-ui-api.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/reference/web-ui-api.md")]
    pub struct BookReferenceWebUiApi;

    /// `docs/src/reference/metrics.md`.
    #[cfg(doctest)]
    #[doc = include_str!("../../docs/src/reference/metrics.md")]
    pub struct BookReferenceMetrics;
}

pub mod cluster;
pub mod poll;
pub mod proxy;
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
