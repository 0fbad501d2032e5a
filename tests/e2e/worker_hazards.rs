//! The hazards a capture worker must survive (DESIGN.md): server restarts, misconfiguration,
//! lost slots, idle databases, tables created while it runs, large transactions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_dev::LaunchOptions;
use bemi_tests::worker::{RunningWorker, stored_changes, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestResult, private_cluster, private_database, wait_until};
use bemi_worker::Worker;
use bemi_worker::WorkerError;
use tokio_util::sync::CancellationToken;

/// Runs a worker that is expected to give up, and returns its error.
pub(crate) async fn fatal_error(config: bemi_worker::WorkerConfig) -> anyhow::Result<WorkerError> {
    let worker = Worker::new(config);
    match tokio::time::timeout(
        Duration::from_secs(30),
        worker.run(CancellationToken::new()),
    )
    .await
    {
        Ok(Err(error)) => Ok(error),
        Ok(Ok(())) => anyhow::bail!("the worker stopped without an error"),
        Err(_) => anyhow::bail!("the worker kept retrying instead of failing fast"),
    }
}

async fn wal_level_replica_fails_fast_naming_the_fix(_cluster: Arc<TestCluster>) -> TestResult {
    let pg = private_cluster(LaunchOptions::default().setting("wal_level", "replica")).await?;
    let db = private_database(&pg, "replica_only").await?;
    let error = fatal_error(worker_config(&db)).await?;
    let message = error.to_string();
    ensure!(matches!(error, WorkerError::WalLevel { .. }), "{message}");
    ensure!(
        message.contains("wal_level = logical") && message.contains("ALTER SYSTEM"),
        "{message}"
    );
    db.pool.close().await;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}
e2e_test!(wal_level_replica_fails_fast_naming_the_fix);

async fn a_role_without_replication_fails_fast_naming_the_fix(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("no_replication").await?;
    let role = format!("{}_app", db.name);
    db.exec(&format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD 'app-secret' NOREPLICATION; \
         GRANT ALL ON DATABASE \"{}\" TO \"{role}\"",
        db.name
    ))
    .await?;
    let mut config = worker_config(&db);
    let (_, host_and_database) = db.url.split_once('@').context("url")?;
    config.source_url = format!("postgres://{role}:app-secret@{host_and_database}");
    let error = fatal_error(config).await?;
    let message = error.to_string();
    ensure!(
        matches!(error, WorkerError::NoReplicationPrivilege { .. }),
        "{message}"
    );
    ensure!(
        message.contains(&format!("ALTER ROLE \"{role}\" WITH REPLICATION")),
        "{message}"
    );
    Ok(())
}
e2e_test!(a_role_without_replication_fails_fast_naming_the_fix);

async fn a_lost_slot_fails_fast_naming_the_fix(_cluster: Arc<TestCluster>) -> TestResult {
    let pg = private_cluster(
        LaunchOptions::default()
            .setting("max_slot_wal_keep_size", "1MB")
            .setting("wal_keep_size", "0"),
    )
    .await?;
    let db = private_database(&pg, "lost_slot").await?;
    db.exec("CREATE TABLE filler (id serial PRIMARY KEY, pad text)")
        .await?;
    let config = worker_config(&db);
    RunningWorker::start(config.clone()).await?.stop().await?;
    // Push the slot's WAL out: several segments, then a checkpoint removes them.
    let lost = wait_until("the slot to be lost", Duration::from_secs(60), || async {
        db.exec(
            "INSERT INTO filler (pad) SELECT repeat('x', 100) FROM generate_series(1, 2000); \
             SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .await?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1")
                .bind(&config.slot)
                .fetch_one(&db.pool)
                .await?;
        Ok((status.as_deref() == Some("lost")).then_some(()))
    });
    lost.await?;
    let error = fatal_error(config.clone()).await?;
    let message = error.to_string();
    ensure!(matches!(error, WorkerError::SlotLost { .. }), "{message}");
    ensure!(
        message.contains(&format!("pg_drop_replication_slot('{}')", config.slot)),
        "{message}"
    );
    db.pool.close().await;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}
e2e_test!(a_lost_slot_fails_fast_naming_the_fix);

async fn an_idle_database_keeps_its_slot_advancing(cluster: Arc<TestCluster>) -> TestResult {
    let idle = cluster.database("idle_source").await?;
    idle.exec("CREATE TABLE todo (id serial PRIMARY KEY)")
        .await?;
    let busy = cluster.database("busy_neighbour").await?;
    busy.exec("CREATE TABLE noise (id serial PRIMARY KEY, pad text)")
        .await?;
    let config = worker_config(&idle);
    let worker = RunningWorker::start(config.clone()).await?;
    busy.exec("INSERT INTO noise (pad) SELECT repeat('x', 200) FROM generate_series(1, 5000)")
        .await?;
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&busy.pool)
        .await?;
    wait_until("the idle slot to pass the neighbour's WAL", Duration::from_secs(60), || async {
        let passed: bool = sqlx::query_scalar(
            "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&config.slot)
        .bind(&target)
        .fetch_one(&idle.pool)
        .await?;
        Ok(passed.then_some(()))
    })
    .await?;
    worker.stop().await?;
    ensure!(stored_changes(&idle).await?.is_empty());
    Ok(())
}
e2e_test!(an_idle_database_keeps_its_slot_advancing);

async fn tables_created_while_running_are_captured_from_their_first_row(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster
        .tracked_database("later_tables", "CREATE TABLE todo (id serial PRIMARY KEY)")
        .await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    // Created and written in one transaction: only the event trigger can publish it in time.
    db.exec(
        "BEGIN; \
         CREATE TABLE later (id int PRIMARY KEY, note text); \
         INSERT INTO later VALUES (1, 'first row'); \
         CREATE TABLE events (id int, day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day); \
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
         INSERT INTO events VALUES (1, '2026-11-22'); \
         COMMIT;",
    )
    .await?;
    // The stream can deliver a transaction a moment before other sessions see it committed: the
    // worker's catalog lookups of a table and a type created in it must wait for them.
    let rounds = 150;
    for i in 0..rounds {
        db.exec(&format!(
            "BEGIN; \
             CREATE TYPE mood_{i} AS ENUM ('happy', 'sad'); \
             CREATE TABLE born_{i} (id int PRIMARY KEY, moods mood_{i}[]); \
             INSERT INTO born_{i} VALUES ({i}, '{{happy,sad}}'); \
             COMMIT;"
        ))
        .await?;
    }
    let changes = wait_for_changes(&db, 2 + rounds).await?;
    worker.stop().await?;
    let tables: Vec<(&str, Option<&str>)> = changes
        .iter()
        .take(2)
        .map(|c| (c.table.as_str(), c.primary_key.as_deref()))
        .collect();
    ensure!(
        tables
            == [
                ("later", Some("1")),
                ("events", Some(r#"[1,"2026-11-22"]"#))
            ],
        "{tables:?}"
    );
    for (i, change) in changes.iter().skip(2).enumerate() {
        ensure!(change.table == format!("born_{i}"), "{change:?}");
        ensure!(change.primary_key == Some(i.to_string()), "{change:?}");
        ensure!(
            change.after["moods"] == serde_json::json!(["happy", "sad"]),
            "{change:?}"
        );
    }
    Ok(())
}
e2e_test!(tables_created_while_running_are_captured_from_their_first_row);

async fn a_large_transaction_is_written_in_chunks_exactly_once_across_a_stop(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("chunks").await?;
    db.exec("CREATE TABLE big (id int PRIMARY KEY, pad text)")
        .await?;
    let mut config = worker_config(&db);
    config.chunk_rows = 500;
    config.max_batch_rows = 500;
    let worker = RunningWorker::start(config.clone()).await?;
    let rows = 30_000;
    db.exec(&format!(
        "INSERT INTO big SELECT i, repeat('x', 50) FROM generate_series(1, {rows}) i"
    ))
    .await?;
    // Stop in the middle of writing the transaction: part of it is stored, with its position.
    wait_until(
        "part of the transaction to be written",
        Duration::from_secs(60),
        || async { Ok((worker.metrics.changes_written() > 0).then_some(())) },
    )
    .await?;
    worker.stop().await?;
    let (stored, partial): (i64, Option<String>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM changes), \
                (SELECT partial_position::text FROM _bemi_worker_state WHERE slot = $1)",
    )
    .bind(&config.slot)
    .fetch_one(&db.pool)
    .await?;
    ensure!(
        stored < rows && partial.is_some(),
        "expected a stop in the middle of the transaction: {stored} rows stored, partial {partial:?}"
    );

    let worker = RunningWorker::start(config).await?;
    let changes = wait_for_changes(&db, rows as usize).await?;
    worker.stop().await?;
    let ids: BTreeSet<Option<String>> = changes.iter().map(|c| c.primary_key.clone()).collect();
    ensure!(
        changes.len() == rows as usize,
        "{} rows stored",
        changes.len()
    );
    ensure!(
        ids.len() == rows as usize,
        "duplicates among {} rows",
        changes.len()
    );
    Ok(())
}
e2e_test!(a_large_transaction_is_written_in_chunks_exactly_once_across_a_stop);

async fn a_postgres_restart_while_streaming_loses_nothing(
    _cluster: Arc<TestCluster>,
) -> TestResult {
    let pg = private_cluster(LaunchOptions::default()).await?;
    let db = private_database(&pg, "restart").await?;
    db.exec("CREATE TABLE todo (id int PRIMARY KEY)").await?;
    db.migrate().await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;

    let total = 1500;
    let writer = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            for id in 1..=total {
                // Retried until it commits; ON CONFLICT makes a retry after an unknown outcome safe.
                wait_until("an insert to commit", Duration::from_secs(120), || {
                    let pool = pool.clone();
                    async move {
                        let done =
                            sqlx::query("INSERT INTO todo VALUES ($1) ON CONFLICT DO NOTHING")
                                .bind(id)
                                .execute(&pool)
                                .await
                                .is_ok();
                        Ok(done.then_some(()))
                    }
                })
                .await?;
            }
            anyhow::Ok(())
        })
    };
    wait_until(
        "some changes before the restart",
        Duration::from_secs(60),
        || async { Ok((worker.metrics.changes_written() >= 300).then_some(())) },
    )
    .await?;
    let pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop_server()?;
        pg.start_server()?;
        anyhow::Ok(pg)
    })
    .await??;
    writer.await??;

    let changes = wait_for_changes(&db, total as usize).await?;
    let reconnects = worker.metrics.errors();
    worker.stop().await?;
    let ids: Vec<i64> = changes
        .iter()
        .map(|c| c.primary_key.as_deref().unwrap_or("0").parse().unwrap_or(0))
        .collect();
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    ensure!(
        ids.len() == total as usize,
        "{} changes for {total} rows",
        ids.len()
    );
    ensure!(
        unique == (1..=i64::from(total)).collect(),
        "missing or duplicate ids"
    );
    ensure!(
        changes.iter().all(|c| c.operation == "CREATE"),
        "{changes:#?}"
    );
    ensure!(reconnects >= 1, "the worker never lost its connection");
    db.pool.close().await;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}
e2e_test!(a_postgres_restart_while_streaming_loses_nothing);

/// With a synchronous standby, a transaction is streamed once flushed but becomes visible only
/// when the standby confirms it. A primary key added in that transaction must still be the key
/// of its rows and of every later row. With the schema history the key comes with the
/// transaction itself (the worker stores the row before the commit is even visible); without it
/// (no event trigger) the worker waits for the transaction to be visible before reading the
/// catalog, instead of caching "no primary key".
async fn a_primary_key_added_while_a_synchronous_standby_holds_the_commit_is_used(
    _cluster: Arc<TestCluster>,
) -> TestResult {
    primary_key_added_while_a_synchronous_standby_holds_the_commit(true).await?;
    primary_key_added_while_a_synchronous_standby_holds_the_commit(false).await
}
e2e_test!(a_primary_key_added_while_a_synchronous_standby_holds_the_commit_is_used);

async fn primary_key_added_while_a_synchronous_standby_holds_the_commit(
    with_history: bool,
) -> TestResult {
    let pg = private_cluster(LaunchOptions::default()).await?;
    let db = private_database(&pg, "sync_standby").await?;
    db.exec("CREATE TABLE accounts (id int NOT NULL, name text)")
        .await?;
    db.migrate().await?;
    if !with_history {
        db.exec("DROP EVENT TRIGGER _bemi_schema_trigger").await?;
    }
    // Sessions opened from now on (the worker's) commit locally; the writer below waits for
    // the standby.
    db.exec(&format!(
        "ALTER DATABASE \"{}\" SET synchronous_commit = local",
        db.name
    ))
    .await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    db.exec("INSERT INTO accounts VALUES (1, 'before the key')")
        .await?;
    wait_for_changes(&db, 1).await?;

    // A synchronous standby that never confirms: commits that wait for it hang.
    db.exec("ALTER SYSTEM SET synchronous_standby_names = 'ghost_standby'")
        .await?;
    db.exec("SELECT pg_reload_conf()").await?;
    wait_until("the reload", Duration::from_secs(30), || async {
        let names: String = sqlx::query_scalar("SHOW synchronous_standby_names")
            .fetch_one(&db.pool)
            .await?;
        Ok((names == "ghost_standby").then_some(()))
    })
    .await?;
    let started: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&db.pool)
        .await?;
    let writer_pool = db.pool.clone();
    let held = tokio::spawn(async move {
        sqlx::raw_sql(
            "BEGIN; \
             SET LOCAL synchronous_commit = on; \
             ALTER TABLE accounts ADD PRIMARY KEY (id); \
             INSERT INTO accounts VALUES (2, 'with the key'); \
             COMMIT;",
        )
        .execute(&writer_pool)
        .await
    });
    wait_until(
        "the commit to wait for the standby",
        Duration::from_secs(60),
        || async {
            let held: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep')",
            )
            .fetch_one(&db.pool)
            .await?;
            Ok(held.then_some(()))
        },
    )
    .await?;
    // The worker has the transaction. With the history it stores the row at once, keyed by
    // the transaction's own schema message; without, it waits for the transaction to become
    // visible (or, without that wait, it has stored the row already, with the catalog's answer
    // of the moment).
    wait_until(
        "the worker to take up the held transaction",
        Duration::from_secs(60),
        || async {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                                 WHERE application_name = 'bemi-worker' \
                                   AND backend_type = 'client backend' \
                                   AND query LIKE '%pg_visible_in_snapshot%' \
                                   AND state_change > $1)",
            )
            .bind(started)
            .fetch_one(&db.pool)
            .await?;
            let stored = stored_changes(&db).await?.len();
            // With the history the row is stored while the commit still waits.
            Ok((waiting && !with_history || stored >= 2).then_some(()))
        },
    )
    .await?;
    ensure!(
        !held.is_finished(),
        "the commit did not wait for the standby"
    );
    db.exec("ALTER SYSTEM RESET synchronous_standby_names")
        .await?;
    db.exec("SELECT pg_reload_conf()").await?;
    tokio::time::timeout(Duration::from_secs(60), held).await???;
    db.exec("INSERT INTO accounts VALUES (3, 'after the key')")
        .await?;

    let changes = wait_for_changes(&db, 3).await?;
    worker.stop().await?;
    let keys: Vec<Option<&str>> = changes.iter().map(|c| c.primary_key.as_deref()).collect();
    ensure!(
        keys == [None, Some("2"), Some("3")],
        "with history: {with_history}: {keys:?}"
    );
    db.pool.close().await;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}

/// `synchronous_standby_names = '*'` makes the worker's own replication connection a
/// synchronous standby: every commit waits for the worker to confirm it. The worker must not
/// wait for itself — neither for the transaction to become visible nor in its own writes to
/// `changes` — so commits go through (well before the 30 s visibility fallback) and are
/// captured. The worker runs as the README's role (REPLICATION, no superuser), which may not
/// even see that its connection is a synchronous standby.
async fn a_worker_that_is_itself_a_synchronous_standby_does_not_wait_for_itself(
    _cluster: Arc<TestCluster>,
) -> TestResult {
    let pg = private_cluster(LaunchOptions::default()).await?;
    let db = private_database(&pg, "self_standby").await?;
    let worker_role = "self_standby_worker";
    db.exec(&format!(
        "CREATE ROLE app_owner NOLOGIN; \
         CREATE TABLE accounts (id int PRIMARY KEY, name text); \
         ALTER TABLE accounts OWNER TO app_owner; \
         CREATE ROLE {worker_role} WITH LOGIN REPLICATION PASSWORD 'worker-secret'; \
         GRANT CREATE ON DATABASE \"{}\" TO {worker_role}; \
         GRANT CREATE ON SCHEMA public TO {worker_role}; \
         GRANT app_owner TO {worker_role}",
        db.name
    ))
    .await?;
    db.migrate().await?;
    let mut config = worker_config(&db);
    let (_, host_and_database) = db.url.split_once('@').context("url")?;
    config.source_url = format!("postgres://{worker_role}:worker-secret@{host_and_database}");
    let slot = config.slot.clone();
    let worker = RunningWorker::start(config).await?;
    // Any standby, the worker's connection included (the only one here), is synchronous.
    db.exec("ALTER SYSTEM SET synchronous_standby_names = '*'")
        .await?;
    db.exec("SELECT pg_reload_conf()").await?;
    wait_until(
        "the worker's connection to be a synchronous standby",
        Duration::from_secs(60),
        || async {
            let state: Option<String> = sqlx::query_scalar(
                "SELECT r.sync_state FROM pg_stat_replication r \
                   JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1",
            )
            .bind(&slot)
            .fetch_optional(&db.pool)
            .await?;
            Ok((state.as_deref() == Some("sync")).then_some(()))
        },
    )
    .await?;
    // A new table (its Relation message comes with this very transaction) and a write to it;
    // the commit waits for the worker's confirmation.
    // A deadline well below the 30 s fallback: the worker gives up waiting for the transaction
    // after 2 s when it cannot see its own sync_state.
    tokio::time::timeout(
        Duration::from_secs(15),
        db.exec(
            "BEGIN; \
             CREATE TABLE later (id int PRIMARY KEY); \
             INSERT INTO later VALUES (1); \
             INSERT INTO accounts VALUES (1, 'a'); \
             COMMIT",
        ),
    )
    .await
    .context("the commit waited for the worker's 30 s visibility fallback, or for ever")??;
    let changes = wait_for_changes(&db, 2).await?;
    let tables: Vec<&str> = changes.iter().map(|c| c.table.as_str()).collect();
    ensure!(tables == ["later", "accounts"], "{changes:#?}");
    worker.stop().await?;
    db.pool.close().await;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}
e2e_test!(a_worker_that_is_itself_a_synchronous_standby_does_not_wait_for_itself);

/// Two workers (two slots) storing the same database's changes into one `changes` table — an
/// overlapping deploy, or a second worker started by mistake. Each chains its writer
/// connections' commits, so waiting on the other's uncommitted rows could close a cycle that
/// PostgreSQL cannot see; the writers give up such a wait after a while, and both workers go
/// on. Every change is stored exactly once.
async fn two_workers_storing_the_same_changes_do_not_deadlock(
    cluster: Arc<TestCluster>,
) -> TestResult {
    const WRITES: usize = 400;
    let db = cluster
        .tracked_database(
            "two_workers",
            "CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL)",
        )
        .await?;
    let first = RunningWorker::start(worker_config(&db)).await?;
    let mut second_config = worker_config(&db);
    second_config.slot = format!("{}_second", second_config.slot);
    second_config.publication = "bemi_second".to_owned();
    let second = RunningWorker::start(second_config).await?;
    // Concurrent writers: many small transactions, so that the workers' batches interleave.
    let mut writers = Vec::new();
    for writer in 0..4 {
        let pool = db.pool.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..WRITES / 4 {
                let id = i32::try_from(writer * WRITES + i)?;
                sqlx::query("INSERT INTO items VALUES ($1, 0)")
                    .bind(id)
                    .execute(&pool)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let changes = wait_for_changes(&db, WRITES).await?;
    let distinct: BTreeSet<i64> = changes.iter().map(|c| c.position).collect();
    ensure!(
        changes.len() == WRITES && distinct.len() == WRITES,
        "{} changes, {} distinct",
        changes.len(),
        distinct.len()
    );
    first.stop().await?;
    second.stop().await?;
    Ok(())
}
e2e_test!(two_workers_storing_the_same_changes_do_not_deadlock);
