//! The hazards a capture worker must survive (DESIGN.md): server restarts, misconfiguration,
//! lost slots, idle databases, tables created while it runs, large transactions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_tests::worker::{RunningWorker, stored_changes, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestResult, private_cluster, private_database, wait_until};
use bemi_worker::error::WorkerError;
use bemi_worker::launcher::LaunchOptions;
use bemi_worker::worker::Worker;
use tokio_util::sync::CancellationToken;

/// Runs a worker that is expected to give up, and returns its error.
pub async fn fatal_error(config: bemi_worker::config::WorkerConfig) -> anyhow::Result<WorkerError> {
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

pub async fn wal_level_replica_fails_fast_naming_the_fix(_cluster: Arc<TestCluster>) -> TestResult {
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

pub async fn a_role_without_replication_fails_fast_naming_the_fix(
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

pub async fn a_lost_slot_fails_fast_naming_the_fix(_cluster: Arc<TestCluster>) -> TestResult {
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

pub async fn an_idle_database_keeps_its_slot_advancing(cluster: Arc<TestCluster>) -> TestResult {
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

pub async fn tables_created_while_running_are_captured_from_their_first_row(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("later_tables").await?;
    db.exec("CREATE TABLE todo (id serial PRIMARY KEY)").await?;
    db.migrate().await?;
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

pub async fn a_large_transaction_is_written_in_chunks_exactly_once_across_a_stop(
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

pub async fn a_postgres_restart_while_streaming_loses_nothing(
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
