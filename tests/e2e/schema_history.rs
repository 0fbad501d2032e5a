//! Keys and values as of each change, whatever happened to the table afterwards: columns added,
//! dropped, renamed or retyped, a primary key dropped and replaced in one transaction, a table
//! renamed or dropped — while the worker streams, and while it is stopped (a worker that
//! restarts after downtime decodes every change after the schema changes that followed it).

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use bemi_tests::worker::{RunningWorker, StoredChange, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestDb, TestResult};
use serde_json::{Value, json};

use crate::cli_support::{Background, bemi, free_port, with_user};
use crate::cli_worker::wait_until_streaming;

const TABLES: &str = "
CREATE TABLE t_add (id int PRIMARY KEY, a text);
CREATE TABLE t_drop (id int PRIMARY KEY, a text, b text);
CREATE TABLE t_rename_col (id int PRIMARY KEY, old_name text);
CREATE TABLE t_type (id int PRIMARY KEY, n int);
CREATE TABLE t_pk (id int PRIMARY KEY, code text NOT NULL UNIQUE);
CREATE TABLE t_renamed (id int PRIMARY KEY);
CREATE TABLE t_dropped (id int PRIMARY KEY, v text);
CREATE TABLE t_savepoint (id int PRIMARY KEY, code text NOT NULL);
";

/// Writes and schema changes, each statement on its own unless grouped.
const STEPS: &[&str] = &[
    "INSERT INTO t_add VALUES (1, 'x')",
    "ALTER TABLE t_add ADD COLUMN b int DEFAULT 7",
    "INSERT INTO t_add VALUES (2, 'y', 8)",
    "INSERT INTO t_drop VALUES (1, 'x', 'gone')",
    "ALTER TABLE t_drop DROP COLUMN b",
    "UPDATE t_drop SET a = 'z' WHERE id = 1",
    "INSERT INTO t_rename_col VALUES (1, 'v')",
    "ALTER TABLE t_rename_col RENAME COLUMN old_name TO new_name",
    "INSERT INTO t_rename_col VALUES (2, 'w')",
    "INSERT INTO t_type VALUES (1, 5)",
    "ALTER TABLE t_type ALTER COLUMN n TYPE text USING n::text",
    "INSERT INTO t_type VALUES (2, 'six')",
    "INSERT INTO t_pk VALUES (1, 'A'), (2, 'B')",
    "BEGIN; ALTER TABLE t_pk DROP CONSTRAINT t_pk_pkey; ALTER TABLE t_pk ADD PRIMARY KEY (code); \
     COMMIT",
    "INSERT INTO t_pk VALUES (3, 'C')",
    "UPDATE t_pk SET id = 10 WHERE code = 'A'",
    "INSERT INTO t_renamed VALUES (1)",
    "ALTER TABLE t_renamed RENAME TO t_renamed2",
    "INSERT INTO t_renamed2 VALUES (2)",
    "INSERT INTO t_dropped VALUES (1, 'a'), (2, 'b')",
    "DROP TABLE t_dropped",
    // The schema message in a released savepoint, the row right after it in the transaction.
    "INSERT INTO t_savepoint VALUES (1, 'A')",
    "BEGIN; SAVEPOINT s; \
     ALTER TABLE t_savepoint DROP CONSTRAINT t_savepoint_pkey, ADD PRIMARY KEY (code); \
     RELEASE SAVEPOINT s; INSERT INTO t_savepoint VALUES (2, 'B'); COMMIT",
];

/// What each change must be: table, operation, key, and the after-image (the before-image for
/// a DELETE).
fn expected() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        ("t_add", "CREATE", "1", json!({"id": 1, "a": "x"})),
        ("t_add", "CREATE", "2", json!({"id": 2, "a": "y", "b": 8})),
        (
            "t_drop",
            "CREATE",
            "1",
            json!({"id": 1, "a": "x", "b": "gone"}),
        ),
        ("t_drop", "UPDATE", "1", json!({"id": 1, "a": "z"})),
        (
            "t_rename_col",
            "CREATE",
            "1",
            json!({"id": 1, "old_name": "v"}),
        ),
        (
            "t_rename_col",
            "CREATE",
            "2",
            json!({"id": 2, "new_name": "w"}),
        ),
        ("t_type", "CREATE", "1", json!({"id": 1, "n": 5})),
        ("t_type", "CREATE", "2", json!({"id": 2, "n": "six"})),
        ("t_pk", "CREATE", "1", json!({"id": 1, "code": "A"})),
        ("t_pk", "CREATE", "2", json!({"id": 2, "code": "B"})),
        ("t_pk", "CREATE", "C", json!({"id": 3, "code": "C"})),
        ("t_pk", "UPDATE", "A", json!({"id": 10, "code": "A"})),
        ("t_renamed", "CREATE", "1", json!({"id": 1})),
        ("t_renamed2", "CREATE", "2", json!({"id": 2})),
        ("t_dropped", "CREATE", "1", json!({"id": 1, "v": "a"})),
        ("t_dropped", "CREATE", "2", json!({"id": 2, "v": "b"})),
        ("t_savepoint", "CREATE", "1", json!({"id": 1, "code": "A"})),
        ("t_savepoint", "CREATE", "B", json!({"id": 2, "code": "B"})),
    ]
}

fn check(changes: &[StoredChange]) -> anyhow::Result<()> {
    let expected = expected();
    ensure!(
        changes.len() == expected.len(),
        "{} changes, {} expected: {changes:#?}",
        changes.len(),
        expected.len()
    );
    for (change, (table, operation, key, image)) in changes.iter().zip(expected) {
        let what = format!("{table} {operation} {key}");
        ensure!(
            change.table == table && change.operation == operation,
            "{what}: got {change:?}"
        );
        ensure!(
            change.primary_key.as_deref() == Some(key),
            "{what}: stored with key {:?}",
            change.primary_key
        );
        ensure!(change.after == image, "{what}: after {}", change.after);
    }
    Ok(())
}

async fn prepared_db(cluster: &TestCluster, hint: &str) -> anyhow::Result<TestDb> {
    let db = cluster.database(hint).await?;
    db.exec(TABLES).await?;
    db.migrate().await?;
    Ok(db)
}

pub(crate) async fn keys_and_values_stay_as_of_each_change_while_streaming(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = prepared_db(&cluster, "history_streaming").await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    for step in STEPS {
        db.exec(step).await?;
    }
    let changes = wait_for_changes(&db, expected().len()).await?;
    worker.stop().await?;
    check(&changes)
}

pub(crate) async fn keys_and_values_stay_as_of_each_change_after_downtime(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = prepared_db(&cluster, "history_downtime").await?;
    // The worker's slot and publication exist; it stops, and everything happens while it is
    // down: when it comes back, the catalog of now has every later schema.
    RunningWorker::start(worker_config(&db))
        .await?
        .stop()
        .await?;
    for step in STEPS {
        db.exec(step).await?;
    }
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let changes = wait_for_changes(&db, expected().len()).await?;
    worker.stop().await?;
    check(&changes)
}

/// A slot prepared ahead of the first run (writers start before the worker): the baseline is
/// recorded with the slot, so a migration between the two does not rewrite older keys.
pub(crate) async fn a_migration_between_prepare_and_the_first_run_keeps_older_keys(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = prepared_db(&cluster, "history_prepared").await?;
    bemi_worker::Worker::new(worker_config(&db))
        .prepare()
        .await?;
    for step in STEPS {
        db.exec(step).await?;
    }
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let changes = wait_for_changes(&db, expected().len()).await?;
    worker.stop().await?;
    check(&changes)
}

pub(crate) async fn a_restart_in_the_middle_resumes_with_the_history_it_had(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = prepared_db(&cluster, "history_restart").await?;
    RunningWorker::start(worker_config(&db))
        .await?
        .stop()
        .await?;
    // The first half, captured; then the worker stops and the rest happens.
    let (first, rest) = STEPS.split_at(13);
    for step in first {
        db.exec(step).await?;
    }
    let worker = RunningWorker::start(worker_config(&db)).await?;
    wait_for_changes(&db, 10).await?;
    worker.stop().await?;
    for step in rest {
        db.exec(step).await?;
    }
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let changes = wait_for_changes(&db, expected().len()).await?;
    worker.stop().await?;
    check(&changes)
}

/// Installed by a role that may not create event triggers (no superuser), the migration still
/// tracks the tables and warns; the worker says at start what that costs, and takes keys from
/// the catalog as it is when it reads them — right while it keeps up.
pub(crate) async fn without_the_event_trigger_the_worker_warns_and_reads_the_catalog(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("history_unprivileged").await?;
    let role = format!("{}_owner", db.name);
    db.exec(&format!(
        "CREATE ROLE {role} WITH LOGIN REPLICATION PASSWORD 'owner-secret'; \
         GRANT CREATE ON DATABASE \"{}\" TO {role}; \
         GRANT CREATE ON SCHEMA public TO {role}",
        db.name
    ))
    .await?;
    let url = with_user(&db.url, &role, "owner-secret")?;
    let owner = sqlx::PgPool::connect(&url).await?;
    sqlx::raw_sql("CREATE TABLE t_pk (id int PRIMARY KEY, code text NOT NULL UNIQUE)")
        .execute(&owner)
        .await?;
    let migrate = bemi(&["migrate"], &[("DATABASE_URL", url.as_str())])
        .await?
        .success()?;
    ensure!(
        migrate.stderr.contains("superuser"),
        "the migration did not warn: {migrate:#?}"
    );
    let recording: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = '_bemi_schema_trigger')",
    )
    .fetch_one(&db.pool)
    .await?;
    ensure!(!recording, "a non-superuser created the event trigger");

    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let slot = format!("bemi_{}", db.name);
    let mut worker = Background::start(
        &["worker"],
        &[
            ("DATABASE_URL", url.as_str()),
            ("BEMI_SLOT", slot.as_str()),
            ("BEMI_METRICS_ADDR", metrics_addr.as_str()),
        ],
    )?;
    wait_until_streaming(&metrics_addr, &mut worker).await?;
    let logs = worker.stderr();
    ensure!(
        logs.contains("records no schema history") && logs.contains("superuser"),
        "no warning at start: {logs}"
    );
    sqlx::raw_sql("INSERT INTO t_pk VALUES (1, 'A')")
        .execute(&owner)
        .await?;
    let changes = wait_for_changes(&db, 1).await?;
    ensure!(
        changes[0].primary_key.as_deref() == Some("1"),
        "{changes:#?}"
    );
    worker.signal(libc::SIGTERM)?;
    let status = worker.wait(Duration::from_secs(60)).await?;
    ensure!(status.success(), "{status}: {}", worker.stderr());
    owner.close().await;
    Ok(())
}
