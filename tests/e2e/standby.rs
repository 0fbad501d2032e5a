//! Two `bemi worker` processes on one slot, the way to run the worker highly available: one
//! streams, the other stands by. The standby takes over within 10 s when the streaming one
//! loses its connection (a proxy that stops passing bytes either way and closes nothing) and
//! when it is killed (`kill -9`), while a writer keeps writing; afterwards `changes` holds every
//! row exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bemi_tests::proxy::FaultProxy;
use bemi_tests::worker::{stored_count, wait_until_slot_streams, worker_config};
use bemi_tests::{TestCluster, TestDb, TestResult, wait_until};

use crate::cli_support::Background;

/// How long a standby may take to stream after the streaming worker is gone.
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(10);
/// Rows the writer inserts, one transaction each, while the workers are cut off and killed.
const ROWS: i64 = 3_000;

/// The process streaming from `slot` (none while no one does).
async fn streaming_pid(db: &TestDb, slot: &str) -> anyhow::Result<Option<i32>> {
    Ok(sqlx::query_scalar(
        "SELECT s.active_pid FROM pg_replication_slots s \
           JOIN pg_stat_replication r ON r.pid = s.active_pid \
          WHERE s.slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(&db.pool)
    .await?)
}

/// Waits until a process other than `previous` streams from `slot`, and fails unless it does
/// within [`TAKEOVER_DEADLINE`] of `since`; its pid.
async fn taken_over(db: &TestDb, slot: &str, previous: i32, since: Instant) -> anyhow::Result<i32> {
    let pid = wait_until(
        "another worker to stream",
        Duration::from_secs(60),
        || async {
            Ok(streaming_pid(db, slot)
                .await?
                .filter(|&pid| pid != previous))
        },
    )
    .await?;
    let took = since.elapsed();
    eprintln!("standby: another worker streams {took:?} after the fault");
    ensure!(
        took <= TAKEOVER_DEADLINE,
        "the standby took {took:?} to stream (at most {TAKEOVER_DEADLINE:?})"
    );
    Ok(pid)
}

/// Waits until `worker` says it stands by.
async fn standing_by(worker: &Background) -> TestResult {
    wait_until("a worker to stand by", Duration::from_secs(60), || async {
        Ok(worker.stderr().contains("standing by").then_some(()))
    })
    .await
    .with_context(|| worker.stderr())
}

async fn a_standby_takes_over_a_cut_off_and_a_killed_worker_within_10_s(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster
        .tracked_database("standby", "CREATE TABLE items (id bigint PRIMARY KEY)")
        .await?;
    let slot = worker_config(&db).slot;
    // The first worker reaches the source through a proxy the test can cut; both store into
    // the same `changes` directly.
    let (proxy, proxied) = FaultProxy::in_front_of(&db.url).await?;
    let envs = |source: &str| {
        [
            ("DATABASE_URL", source.to_owned()),
            ("BEMI_DESTINATION_URL", db.url.clone()),
            ("BEMI_SLOT", slot.clone()),
            ("BEMI_HEARTBEAT_INTERVAL", "1s".to_owned()),
        ]
    };
    let start = |source: &str| {
        let envs = envs(source);
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Background::start(&["worker"], &envs)
    };
    let mut first = start(&proxied)?;
    wait_until_slot_streams(&db, &slot).await?;
    let first_pid = streaming_pid(&db, &slot).await?.context("no stream")?;
    let mut second = start(&db.url)?;
    standing_by(&second).await?;

    let pool = db.pool.clone();
    let writer = tokio::spawn(async move {
        for id in 1..=ROWS {
            sqlx::query("INSERT INTO items VALUES ($1)")
                .bind(id)
                .execute(&pool)
                .await?;
        }
        anyhow::Ok(())
    });
    wait_until("the first changes", Duration::from_secs(60), || async {
        Ok((stored_count(&db).await?.unwrap_or(0) >= 100).then_some(()))
    })
    .await?;

    // The first worker's connection is lost: nothing passes either way, nothing is closed.
    proxy.hold_responses();
    proxy.cut_requests_after(0);
    let second_pid = taken_over(&db, &slot, first_pid, Instant::now())
        .await
        .with_context(|| second.stderr())?;
    ensure!(
        second.stderr().contains("stopped answering"),
        "{}",
        second.stderr()
    );
    // Its connection back: it finds its stream ended and stands by in turn.
    proxy.release_responses();
    proxy.pass_requests();
    standing_by(&first).await?;

    // The streaming one killed: the first takes over again.
    second.kill().await?;
    taken_over(&db, &slot, second_pid, Instant::now())
        .await
        .with_context(|| first.stderr())?;

    writer.await??;
    wait_until("every row stored", Duration::from_secs(120), || async {
        Ok((stored_count(&db).await?.unwrap_or(0) >= ROWS).then_some(()))
    })
    .await
    .with_context(|| first.stderr())?;
    let (stored, distinct, lowest, highest): (i64, i64, Option<String>, Option<String>) =
        sqlx::query_as(
            "SELECT count(*), count(DISTINCT primary_key), \
                    min(primary_key::bigint)::text, max(primary_key::bigint)::text \
               FROM changes WHERE \"table\" = 'items'",
        )
        .fetch_one(&db.pool)
        .await?;
    ensure!(
        stored == ROWS && distinct == ROWS,
        "{stored} changes of {distinct} rows, expected {ROWS} once each"
    );
    ensure!(lowest.as_deref() == Some("1") && highest == Some(ROWS.to_string()));
    first.terminate().await?;
    Ok(())
}
e2e_test!(a_standby_takes_over_a_cut_off_and_a_killed_worker_within_10_s);
