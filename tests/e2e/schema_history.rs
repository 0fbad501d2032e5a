//! Keys and values as of each change, whatever happened to the table afterwards: columns added,
//! dropped, renamed or retyped, a primary key dropped and replaced in one transaction, a table
//! renamed or dropped — while the worker streams, and while it is stopped (a worker that
//! restarts after downtime decodes every change after the schema changes that followed it).

use std::sync::Arc;

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

/// Runs `steps` of the scenario, in order.
async fn run_steps(db: &TestDb, steps: &[&str]) -> TestResult {
    for step in steps {
        db.exec(step).await?;
    }
    Ok(())
}

/// Starts a worker, waits for every change of the scenario, stops it and [`check`]s them.
async fn capture_and_check(db: &TestDb) -> TestResult {
    let worker = RunningWorker::start(worker_config(db)).await?;
    let changes = wait_for_changes(db, expected().len()).await?;
    worker.stop().await?;
    check(&changes)
}

async fn keys_and_values_stay_as_of_each_change_while_streaming(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster
        .tracked_database("history_streaming", TABLES)
        .await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    run_steps(&db, STEPS).await?;
    let changes = wait_for_changes(&db, expected().len()).await?;
    worker.stop().await?;
    check(&changes)
}
e2e_test!(keys_and_values_stay_as_of_each_change_while_streaming);

async fn keys_and_values_stay_as_of_each_change_after_downtime(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.tracked_database("history_downtime", TABLES).await?;
    // The worker's slot and publication exist; it stops, and everything happens while it is
    // down: when it comes back, the catalog of now has every later schema.
    RunningWorker::start(worker_config(&db))
        .await?
        .stop()
        .await?;
    run_steps(&db, STEPS).await?;
    capture_and_check(&db).await
}
e2e_test!(keys_and_values_stay_as_of_each_change_after_downtime);

/// A slot prepared ahead of the first run (writers start before the worker): the baseline is
/// recorded with the slot, so a migration between the two does not rewrite older keys.
async fn a_migration_between_prepare_and_the_first_run_keeps_older_keys(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.tracked_database("history_prepared", TABLES).await?;
    bemi_worker::Worker::new(worker_config(&db))
        .prepare()
        .await?;
    run_steps(&db, STEPS).await?;
    capture_and_check(&db).await
}
e2e_test!(a_migration_between_prepare_and_the_first_run_keeps_older_keys);

async fn a_restart_in_the_middle_resumes_with_the_history_it_had(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.tracked_database("history_restart", TABLES).await?;
    RunningWorker::start(worker_config(&db))
        .await?
        .stop()
        .await?;
    // The first half, captured; then the worker stops and the rest happens.
    let (first, rest) = STEPS.split_at(13);
    run_steps(&db, first).await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    wait_for_changes(&db, 10).await?;
    worker.stop().await?;
    run_steps(&db, rest).await?;
    capture_and_check(&db).await
}
e2e_test!(a_restart_in_the_middle_resumes_with_the_history_it_had);

/// Installed by a role that may not create event triggers (no superuser), the migration still
/// tracks the tables and warns; the worker says at start what that costs, and takes keys from
/// the catalog as it is when it reads them — right while it keeps up.
async fn without_the_event_trigger_the_worker_warns_and_reads_the_catalog(
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
    worker.terminate().await?;
    owner.close().await;
    Ok(())
}
e2e_test!(without_the_event_trigger_the_worker_warns_and_reads_the_catalog);

/// How a DDL escapes the event trigger, so that the history keeps a stale version.
#[derive(Clone, Copy)]
enum Unrecorded {
    /// `session_replication_role = replica` (event triggers do not fire).
    ReplicaMode,
    /// `ALTER EVENT TRIGGER _bemi_schema_trigger DISABLE`.
    TriggerDisabled,
}

impl Unrecorded {
    fn wrap(self, ddl: &str) -> String {
        match self {
            Self::ReplicaMode => {
                format!("BEGIN; SET LOCAL session_replication_role = replica; {ddl}; COMMIT")
            }
            Self::TriggerDisabled => format!(
                "ALTER EVENT TRIGGER _bemi_schema_trigger DISABLE; {ddl}; \
                 ALTER EVENT TRIGGER _bemi_schema_trigger ENABLE"
            ),
        }
    }
}

/// Two tables under REPLICA IDENTITY DEFAULT, where the WAL gives the key, and one under FULL
/// (the migration's default), where it does not.
const UNRECORDED_TABLES: &str = "
CREATE TABLE d_pk (id int PRIMARY KEY, code text NOT NULL UNIQUE);
CREATE TABLE d_rename (id int PRIMARY KEY, v text);
CREATE TABLE f_pk (id int PRIMARY KEY, code text NOT NULL UNIQUE);
";

/// Primary keys replaced, a key column renamed, a column added, all unseen by the history.
const UNRECORDED_DDL: &str = "
ALTER TABLE d_pk DROP CONSTRAINT d_pk_pkey, ADD PRIMARY KEY (code);
ALTER TABLE d_rename RENAME COLUMN id TO ident;
ALTER TABLE f_pk DROP CONSTRAINT f_pk_pkey, ADD PRIMARY KEY (code), ADD COLUMN note text
";

async fn unrecorded_db(cluster: &TestCluster, hint: &str) -> anyhow::Result<TestDb> {
    let db = cluster.tracked_database(hint, UNRECORDED_TABLES).await?;
    db.exec(
        "ALTER TABLE d_pk REPLICA IDENTITY DEFAULT; ALTER TABLE d_rename REPLICA IDENTITY DEFAULT",
    )
    .await?;
    Ok(db)
}

/// Writes before and after the unrecorded DDL, then records the schemas as they are (what
/// the worker's warning says to do) and writes again.
async fn unrecorded_steps(db: &TestDb, how: Unrecorded) -> anyhow::Result<()> {
    db.exec(
        "INSERT INTO d_pk VALUES (1, 'A'); INSERT INTO d_rename VALUES (1, 'x'); \
         INSERT INTO f_pk VALUES (1, 'A')",
    )
    .await?;
    db.exec(&how.wrap(UNRECORDED_DDL)).await?;
    db.exec(
        "INSERT INTO d_pk VALUES (2, 'B'); INSERT INTO d_rename VALUES (2, 'y'); \
         INSERT INTO f_pk VALUES (2, 'B'); UPDATE d_pk SET id = 20 WHERE code = 'A'",
    )
    .await?;
    db.exec("CALL _bemi_record_schemas()").await?;
    db.exec("INSERT INTO f_pk VALUES (3, 'C')").await?;
    Ok(())
}

/// Every key right (the WAL's replica identity gives it) or visibly unknown, never the stale
/// version's.
fn check_unrecorded(changes: &[StoredChange]) -> anyhow::Result<()> {
    let expected: &[(&str, &str, Option<&str>)] = &[
        ("d_pk", "CREATE", Some("1")),
        ("d_rename", "CREATE", Some("1")),
        ("f_pk", "CREATE", Some("1")),
        // The primary key is `code` now: the WAL's key flags say so.
        ("d_pk", "CREATE", Some("B")),
        // The key column renamed: still the key, under its new name.
        ("d_rename", "CREATE", Some("2")),
        // Under FULL the WAL does not say: unknown, not the stale `id`.
        ("f_pk", "CREATE", None),
        ("d_pk", "UPDATE", Some("A")),
        // The schemas recorded again: the key is known again.
        ("f_pk", "CREATE", Some("C")),
    ];
    ensure!(
        changes.len() == expected.len(),
        "{} changes, {} expected: {changes:#?}",
        changes.len(),
        expected.len()
    );
    for (change, &(table, operation, key)) in changes.iter().zip(expected) {
        let what = format!("{table} {operation} {key:?}");
        ensure!(
            change.table == table && change.operation == operation,
            "{what}: got {change:?}"
        );
        ensure!(
            change.primary_key.as_deref() == key,
            "{what}: stored with key {:?}",
            change.primary_key
        );
        let marker = change.context.get("_bemi_key_unknown");
        match key {
            Some(_) => ensure!(marker.is_none(), "{what}: marked unknown: {change:?}"),
            None => ensure!(
                marker
                    .and_then(Value::as_str)
                    .is_some_and(|reason| reason.contains("public.f_pk")
                        && reason.contains("REPLICA IDENTITY FULL")),
                "{what}: an unknown key without its marker: {change:?}"
            ),
        }
    }
    Ok(())
}

/// DDL under `session_replication_role = replica` (event triggers do not fire) while the worker
/// streams: the stale versions are caught against the WAL, counted, and no key is wrong.
async fn ddl_in_replica_mode_leaves_no_wrong_key(cluster: Arc<TestCluster>) -> TestResult {
    let db = unrecorded_db(&cluster, "history_replica_mode").await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    unrecorded_steps(&db, Unrecorded::ReplicaMode).await?;
    let changes = wait_for_changes(&db, 8).await?;
    let mismatches = worker.metrics.schema_mismatches();
    let rendered = worker.metrics.render();
    worker.stop().await?;
    check_unrecorded(&changes)?;
    // One per table the unrecorded DDL changed (at least: a Relation message may come again).
    ensure!(mismatches >= 3, "{mismatches} mismatches counted");
    ensure!(
        rendered.contains(&format!("bemi_schema_mismatches_total {mismatches}")),
        "{rendered}"
    );
    Ok(())
}
e2e_test!(ddl_in_replica_mode_leaves_no_wrong_key);

/// DDL with the event trigger disabled, decoded after downtime (every change after all the
/// schema changes): the same.
async fn ddl_with_the_event_trigger_disabled_leaves_no_wrong_key(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = unrecorded_db(&cluster, "history_trigger_disabled").await?;
    RunningWorker::start(worker_config(&db))
        .await?
        .stop()
        .await?;
    unrecorded_steps(&db, Unrecorded::TriggerDisabled).await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let changes = wait_for_changes(&db, 8).await?;
    let mismatches = worker.metrics.schema_mismatches();
    worker.stop().await?;
    check_unrecorded(&changes)?;
    ensure!(mismatches >= 3, "{mismatches} mismatches counted");
    Ok(())
}
e2e_test!(ddl_with_the_event_trigger_disabled_leaves_no_wrong_key);

/// The current metrics text of a worker process.
async fn scrape(metrics_addr: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await?
        .text()
        .await?)
}

/// An ordinary role (the application's, which may emit messages: its adapter emits `_bemi`
/// ones) emits a `_bemi_schema` message claiming a wrong key: the WAL contradicts it, the
/// changes keep their key, and the worker warns and counts it — while streaming, and when the
/// forged version is decoded after downtime (on the first Relation message of a connection).
async fn a_forged_schema_message_is_caught_and_keys_stay_right(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster
        .tracked_database(
            "history_forged",
            "CREATE TABLE forged (id int PRIMARY KEY, code text NOT NULL UNIQUE)",
        )
        .await?;
    db.exec("ALTER TABLE forged REPLICA IDENTITY DEFAULT")
        .await?;
    let role = format!("{}_app", db.name);
    db.exec(&format!(
        "CREATE ROLE {role} WITH LOGIN PASSWORD 'app-secret'; \
         GRANT SELECT, INSERT, UPDATE ON forged TO {role}; \
         GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO {role}"
    ))
    .await?;
    let app = sqlx::PgPool::connect(&with_user(&db.url, &role, "app-secret")?).await?;
    let superuser: bool = sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1")
        .bind(&role)
        .fetch_one(&db.pool)
        .await?;
    ensure!(!superuser, "the application's role is a superuser");
    let oid: i64 = sqlx::query_scalar("SELECT 'forged'::regclass::oid::bigint")
        .fetch_one(&db.pool)
        .await?;
    // The table's very columns, with `code` as its key.
    let forgery = json!({
        "oid": oid.to_string(), "schema": "public", "table": "forged", "key": ["code"],
        "columns": [
            {"name": "id", "type": {"base": "23", "array_depth": 0}, "generated": false},
            {"name": "code", "type": {"base": "25", "array_depth": 0}, "generated": false},
        ],
    })
    .to_string();
    let forge = || async {
        sqlx::query("SELECT pg_logical_emit_message(true, '_bemi_schema', $1)")
            .bind(&forgery)
            .execute(&app)
            .await
    };

    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let slot = format!("bemi_{}", db.name);
    let envs = [
        ("DATABASE_URL", db.url.as_str()),
        ("BEMI_SLOT", slot.as_str()),
        ("BEMI_METRICS_ADDR", metrics_addr.as_str()),
    ];
    let mut worker = Background::start(&["worker"], &envs)?;
    wait_until_streaming(&metrics_addr, &mut worker).await?;
    sqlx::raw_sql("INSERT INTO forged VALUES (1, 'A')")
        .execute(&app)
        .await?;
    forge().await?;
    sqlx::raw_sql("INSERT INTO forged VALUES (2, 'B')")
        .execute(&app)
        .await?;
    wait_for_changes(&db, 2).await?;
    let metrics = scrape(&metrics_addr).await?;
    ensure!(
        metrics.contains("bemi_schema_mismatches_total 1"),
        "the forgery was not counted: {metrics}"
    );
    worker.terminate().await?;
    let logs = worker.stderr();
    ensure!(
        logs.contains("does not match the WAL") && logs.contains("forged _bemi_schema message"),
        "no warning: {logs}"
    );

    // While the worker is down: the forgery again, and a row after it.
    forge().await?;
    sqlx::raw_sql("INSERT INTO forged VALUES (3, 'C'); UPDATE forged SET id = 30 WHERE id = 3")
        .execute(&app)
        .await?;
    let mut worker = Background::start(&["worker"], &envs)?;
    wait_until_streaming(&metrics_addr, &mut worker).await?;
    let changes = wait_for_changes(&db, 4).await?;
    let metrics = scrape(&metrics_addr).await?;
    worker.terminate().await?;
    let keys: Vec<Option<&str>> = changes.iter().map(|c| c.primary_key.as_deref()).collect();
    ensure!(
        keys == [Some("1"), Some("2"), Some("3"), Some("30")],
        "keys {keys:?}: {changes:#?}"
    );
    ensure!(
        !metrics.contains("bemi_schema_mismatches_total 0"),
        "the forgery decoded after downtime was not counted: {metrics}"
    );
    ensure!(
        worker.stderr().contains("does not match the WAL"),
        "no warning after downtime: {}",
        worker.stderr()
    );
    app.close().await;
    Ok(())
}
e2e_test!(a_forged_schema_message_is_caught_and_keys_stay_right);
