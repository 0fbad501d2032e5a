//! Defects the chaos runner (`bemi-chaos`) found, each reproduced here on its own, without the
//! runner's randomness.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_tests::proxy::FaultProxy;
use bemi_tests::worker::{stored_count, wait_until_slot_streams, worker_config};
use bemi_tests::{TestCluster, TestResult, wait_until};

use crate::cli_support::Background;

/// The scenario of seeds 1 and 3 (direct), where a table's changes lost their key after DDL:
/// an `ADD COLUMN` committed while the worker's requests to the source are cut (its replies
/// and catalog queries lost, the WAL still arriving), then its connections closed. (The cause
/// was the schema history's load ordering versions by their LSN as text — unit test
/// `the_latest_version_is_loaded_whatever_its_lsn_looks_like_as_text` — this keeps the
/// scenario itself covered.)
async fn an_add_column_while_the_workers_requests_are_cut_keeps_the_key(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster
        .tracked_database(
            "chaos_add_column",
            "CREATE TABLE events (id bigint PRIMARY KEY, note text);
             ALTER TABLE events REPLICA IDENTITY FULL",
        )
        .await?;
    let slot = worker_config(&db).slot;
    let (proxy, proxied) = FaultProxy::in_front_of(&db.url).await?;
    let mut worker = Background::start(
        &["worker"],
        &[
            ("DATABASE_URL", &proxied),
            ("BEMI_DESTINATION_URL", &db.url),
            ("BEMI_SLOT", &slot),
            ("RUST_LOG", "info,bemi_worker=debug"),
        ],
    )?;
    wait_until_slot_streams(&db, &slot).await?;
    let insert = |from: i64, to: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO events (id, note) SELECT g, 'n' FROM generate_series($1, $2) g",
            )
            .bind(from)
            .bind(to)
            .execute(&pool)
            .await
        }
    };
    insert(1, 10).await?;
    wait_until("the first rows stored", Duration::from_secs(60), || async {
        Ok((stored_count(&db).await?.unwrap_or(0) >= 10).then_some(()))
    })
    .await?;

    // The worker's requests are cut (its status updates and queries lost); the WAL still
    // reaches it.
    proxy.cut_requests_after(0);
    sqlx::query("ALTER TABLE events ADD COLUMN extra int DEFAULT 1")
        .execute(&db.pool)
        .await?;
    insert(11, 20).await?;
    sqlx::query("UPDATE events SET note = 'u' WHERE id <= 5")
        .execute(&db.pool)
        .await?;
    // It may store them meanwhile (the destination is not behind the proxy), or stall on a
    // catalog query: either way, at most 15 s later its connections are closed and its
    // requests pass again, as in the chaos run.
    let _ = wait_until(
        "the cut worker to store",
        Duration::from_secs(15),
        || async { Ok((stored_count(&db).await?.unwrap_or(0) >= 25).then_some(())) },
    )
    .await;
    proxy.pass_requests();
    proxy.close_connections();
    insert(21, 30).await?;

    wait_until("every change stored", Duration::from_secs(90), || async {
        Ok((stored_count(&db).await?.unwrap_or(0) >= 35).then_some(()))
    })
    .await
    .with_context(|| worker.stderr())?;
    let keyless: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, context::text FROM changes \
          WHERE \"table\" = 'events' AND primary_key IS NULL ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await?;
    ensure!(
        keyless.is_empty(),
        "{} changes stored without their key, e.g. {:?}\n{}",
        keyless.len(),
        keyless.first(),
        worker.stderr()
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM changes WHERE \"table\" = 'events'")
        .fetch_one(&db.pool)
        .await?;
    ensure!(stored == 35, "{stored} changes stored, expected 35");
    worker.terminate().await?;
    Ok(())
}
e2e_test!(an_add_column_while_the_workers_requests_are_cut_keeps_the_key);

/// Seed 2 (direct): a worker whose connection to the source stopped passing bytes either way
/// (a half-open connection) logged SIGTERM and never exited: the replication client waited for
/// the server's answer to its goodbye forever.
async fn a_worker_cut_off_from_the_source_still_ends_on_sigterm(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster
        .tracked_database(
            "chaos_cut_sigterm",
            "CREATE TABLE items (id bigint PRIMARY KEY)",
        )
        .await?;
    let slot = worker_config(&db).slot;
    let (proxy, proxied) = FaultProxy::in_front_of(&db.url).await?;
    let mut worker = Background::start(
        &["worker"],
        &[
            ("DATABASE_URL", &proxied),
            ("BEMI_DESTINATION_URL", &db.url),
            ("BEMI_SLOT", &slot),
        ],
    )?;
    wait_until_slot_streams(&db, &slot).await?;
    sqlx::query("INSERT INTO items SELECT generate_series(1, 10)")
        .execute(&db.pool)
        .await?;
    wait_until("the rows stored", Duration::from_secs(60), || async {
        Ok((stored_count(&db).await?.unwrap_or(0) >= 10).then_some(()))
    })
    .await?;
    // Nothing passes either way; nothing is closed.
    proxy.hold_responses();
    proxy.cut_requests_after(0);
    let started = std::time::Instant::now();
    worker.terminate().await.with_context(|| worker.stderr())?;
    let took = started.elapsed();
    eprintln!("the cut-off worker exited {took:?} after SIGTERM");
    // Its waits at shutdown are bounded (5 s for the last confirmation, 5 s for the
    // connection's end); a minute leaves room for a slow machine.
    ensure!(took < Duration::from_secs(60), "it took {took:?} to exit");
    proxy.release_responses();
    proxy.pass_requests();
    Ok(())
}
e2e_test!(a_worker_cut_off_from_the_source_still_ends_on_sigterm);

/// What cannot be survived is said loudly: a slot dropped while the worker was stopped (or lost
/// in a failover) is created again by the worker, which says, as an error, that changes
/// committed meanwhile are not captured — and says nothing of the kind on a first start.
async fn a_lost_slot_is_reported_when_the_worker_creates_it_again(
    cluster: Arc<TestCluster>,
) -> TestResult {
    const LOUD: &str = "did not exist and was created now";
    let db = cluster
        .tracked_database(
            "chaos_lost_slot",
            "CREATE TABLE items (id bigint PRIMARY KEY)",
        )
        .await?;
    let slot = worker_config(&db).slot;
    let envs = [
        ("DATABASE_URL", db.url.as_str()),
        ("BEMI_SLOT", slot.as_str()),
    ];
    let mut first = Background::start(&["worker"], &envs)?;
    wait_until_slot_streams(&db, &slot).await?;
    sqlx::query("INSERT INTO items SELECT generate_series(1, 10)")
        .execute(&db.pool)
        .await?;
    wait_until("the rows stored", Duration::from_secs(60), || async {
        Ok((stored_count(&db).await?.unwrap_or(0) >= 10).then_some(()))
    })
    .await?;
    first.terminate().await?;
    ensure!(!first.stderr().contains(LOUD), "{}", first.stderr());

    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&db.pool)
        .await?;
    // Committed while there is no slot: not captured.
    sqlx::query("INSERT INTO items SELECT generate_series(11, 20)")
        .execute(&db.pool)
        .await?;
    let mut second = Background::start(&["worker"], &envs)?;
    wait_until(
        "the lost slot reported",
        Duration::from_secs(60),
        || async { Ok(second.stderr().contains(LOUD).then_some(())) },
    )
    .await
    .with_context(|| second.stderr())?;
    ensure!(second.stderr().contains("ERROR"), "{}", second.stderr());
    second.terminate().await?;
    Ok(())
}
e2e_test!(a_lost_slot_is_reported_when_the_worker_creates_it_again);

/// The scenario of seed 9 (through NATS): a worker that restarts publishes a transaction's
/// changes again, so one store batch can hold the same change twice. Each copy was numbered in
/// the chain; the insert kept one, and the batch failed as "stored meanwhile by another
/// writer" — rolled back and fetched again, forever: the partition never moved. A batch's own
/// repeats are now left out like changes stored before it.
async fn a_batch_holding_the_same_change_twice_stores_it_once_and_chains_without_a_gap(
    cluster: Arc<TestCluster>,
) -> TestResult {
    use bemi_audit::store::{ChangeBatch, NewChange};

    let db = cluster.database("chaos_repeat_in_batch").await?;
    let mut conn = db.pool.acquire().await?;
    bemi_audit::schema::prepare(&mut conn).await?;
    let now = chrono::Utc::now();
    let change = |position: i64| NewChange {
        primary_key: Some("1"),
        before: "{}",
        after: r#"{"id": 1}"#,
        context: r#"{"user_id": 7}"#,
        schema: "public",
        table: "todo",
        operation: bemi_audit::Operation::Create,
        committed_at: now,
        queued_at: now,
        transaction_id: 900,
        position,
    };
    let chain_name = bemi_audit::chain::worker_chain(None, "app");
    // Changes 10 and 11, then the same two again (the re-published message), then 12.
    let mut batch = ChangeBatch::default();
    for position in [10, 11, 10, 11, 12] {
        batch.push(change(position));
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let head = bemi_audit::chain::read_head(&mut tx, &chain_name).await?;
    let mut chained = batch
        .prepare_chain(&chain_name, None, "app", &mut tx)
        .await?;
    ensure!(
        chained.already_stored() == 2,
        "{}",
        chained.already_stored()
    );
    let new_head = chained.link(head);
    let written = chained.insert(&mut tx).await?;
    ensure!(written == 3, "{written} changes written, 3 expected");
    bemi_audit::chain::record_head(&mut tx, &chain_name, head, new_head).await?;
    tx.commit().await?;

    let verification = bemi_audit::verify::verify(&mut conn).await?;
    ensure!(verification.is_intact(), "{verification:?}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM changes")
        .fetch_one(&mut *conn)
        .await?;
    ensure!(stored == 3, "{stored} rows in changes");
    Ok(())
}
e2e_test!(a_batch_holding_the_same_change_twice_stores_it_once_and_chains_without_a_gap);
