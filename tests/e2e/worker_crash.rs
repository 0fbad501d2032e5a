//! `kill -9` of the worker process at random moments while concurrent writers make 20 000+
//! changes: afterwards `changes` holds each change exactly once, compared with a ground-truth log
//! kept by the writers.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use bemi_core::context;
use bemi_tests::worker::{stored_count, wait_until_slot_streams, worker_config};
use bemi_tests::{TestCluster, TestResult, ctx, wait_until};
use serde_json::json;

use crate::cli_support::Background;

/// Writers, and what each writes: one-row transactions, then updates and deletes of some of
/// those rows, and a few multi-row transactions large enough to be written in chunks.
const WRITERS: i64 = 4;
const ROWS_PER_WRITER: i64 = 4_000;
const BIG_TRANSACTIONS_PER_WRITER: i64 = 1;
const BIG_TRANSACTION_ROWS: i64 = 3_000;
const KILLS: usize = 5;

/// A tiny xorshift generator: random kill points without a dependency; the seed is printed.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

type Truth = Arc<Mutex<BTreeSet<(String, String)>>>;

async fn write(pool: bemi_sqlx::BemiPool, writer: i64, truth: Truth) -> anyhow::Result<()> {
    let base = writer * 1_000_000;
    let record = |operation: &str, id: i64| {
        truth
            .lock()
            .unwrap()
            .insert((operation.to_owned(), id.to_string()));
    };
    for n in 0..ROWS_PER_WRITER {
        let id = base + n;
        let request = ctx(json!({"writer": writer, "n": n}));
        context::scope(request, async {
            sqlx::query("INSERT INTO events (id, writer, note) VALUES ($1, $2, 'created')")
                .bind(id)
                .bind(writer)
                .execute(&pool)
                .await
        })
        .await?;
        record("CREATE", id);
        if n % 10 == 5 {
            let old = id - 5;
            sqlx::query("UPDATE events SET note = 'updated' WHERE id = $1")
                .bind(old)
                .execute(&pool)
                .await?;
            record("UPDATE", old);
        }
        if n % 10 == 9 {
            let old = id - 8;
            sqlx::query("DELETE FROM events WHERE id = $1")
                .bind(old)
                .execute(&pool)
                .await?;
            record("DELETE", old);
        }
    }
    for big in 0..BIG_TRANSACTIONS_PER_WRITER {
        let first = base + 500_000 + big * BIG_TRANSACTION_ROWS;
        sqlx::query(
            "INSERT INTO events (id, writer, note) \
             SELECT i, $3, 'bulk' FROM generate_series($1::bigint, $2::bigint) i",
        )
        .bind(first)
        .bind(first + BIG_TRANSACTION_ROWS - 1)
        .bind(writer)
        .execute(&pool)
        .await?;
        let mut truth = truth.lock().unwrap();
        for id in first..first + BIG_TRANSACTION_ROWS {
            truth.insert(("CREATE".into(), id.to_string()));
        }
    }
    Ok(())
}

fn start_worker(envs: &[(&str, &str)]) -> anyhow::Result<Background> {
    Background::start(&["worker"], envs)
}

async fn kill_9_at_random_moments_loses_and_duplicates_nothing(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster
        .tracked_database(
            "crash",
            "CREATE TABLE events (id bigint PRIMARY KEY, writer int NOT NULL, note text NOT NULL)",
        )
        .await?;
    let config = worker_config(&db);
    let envs = [
        ("DATABASE_URL", db.url.as_str()),
        ("BEMI_SLOT", config.slot.as_str()),
        ("BEMI_HEARTBEAT_INTERVAL", "1s"),
    ];
    let mut worker = start_worker(&envs)?;
    // The slot exists once the worker streams; writes before that would not be captured.
    wait_until_slot_streams(&db, &config.slot).await?;
    // A slow destination: every batch takes 20 ms more, so the worker lags behind the writers —
    // a position confirmed before its rows are stored would be lost at the next kill.
    db.exec(
        "CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM pg_sleep(0.02); RETURN NULL; END $$; \
         CREATE TRIGGER slow_down BEFORE INSERT ON changes \
           FOR EACH STATEMENT EXECUTE FUNCTION slow_down();",
    )
    .await?;

    let truth: Truth = Arc::default();
    let pool = db.bemi_pool();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        writers.spawn(write(pool.clone(), writer, Arc::clone(&truth)));
    }

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    eprintln!("kill -9 test: random seed {seed}");
    let mut random = Random(seed);
    let started = Instant::now();
    let mut kills = 0;
    while kills < KILLS {
        ensure!(
            started.elapsed() < Duration::from_secs(300),
            "only {kills} kills in 300 s"
        );
        // A random amount of progress, then SIGKILL: mid-batch, mid-chunk, mid-confirmation.
        let target = stored_count(&db).await?.unwrap_or(0) + 200 + random.below(2_500) as i64;
        let writing = !writers.is_empty();
        wait_until(
            "progress before the next kill",
            Duration::from_secs(120),
            || async {
                let progressed = stored_count(&db).await?.unwrap_or(0) >= target;
                Ok((progressed || (!writing && kills > 0)).then_some(()))
            },
        )
        .await?;
        worker.kill().await?;
        kills += 1;
        worker = start_worker(&envs)?;
        while let Some(done) = writers.try_join_next() {
            done??;
        }
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let expected = truth.lock().unwrap().clone();
    ensure!(
        expected.len() >= 20_000,
        "only {} changes were made",
        expected.len()
    );
    wait_until(
        "every change to be stored",
        Duration::from_secs(180),
        || async {
            Ok((stored_count(&db).await?.unwrap_or(0) >= expected.len() as i64).then_some(()))
        },
    )
    .await?;
    worker.terminate().await?;

    let stored: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT operation, primary_key FROM changes WHERE \"table\" = 'events'")
            .fetch_all(&db.pool)
            .await?;
    let unique: BTreeSet<(String, String)> = stored
        .iter()
        .map(|(op, pk)| (op.clone(), pk.clone().unwrap_or_default()))
        .collect();
    ensure!(
        unique.len() == stored.len(),
        "{} duplicates",
        stored.len() - unique.len()
    );
    let missing: Vec<_> = expected.difference(&unique).take(5).collect();
    let invented: Vec<_> = unique.difference(&expected).take(5).collect();
    ensure!(
        missing.is_empty() && invented.is_empty(),
        "after {kills} kills: {} missing (e.g. {missing:?}), {} not made by the writers (e.g. {invented:?})",
        expected.difference(&unique).count(),
        unique.difference(&expected).count()
    );
    // And each stored change kept the context of the statement that made it.
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM changes WHERE operation = 'CREATE' AND after->>'note' = 'created' \
           AND (context->>'n')::bigint <> (primary_key::bigint % 1000000)",
    )
    .fetch_one(&db.pool)
    .await?;
    ensure!(
        wrong == 0,
        "{wrong} changes carry another statement's context"
    );
    // The hash chain continued exactly across every kill: each change numbered once, no gap,
    // every link verifies.
    let mut conn = db.pool.acquire().await?;
    let report = bemi_audit::verify::verify(&mut conn).await?;
    ensure!(
        report.is_intact(),
        "after {kills} kills: {:#?}",
        report.breaks
    );
    ensure!(
        report.chains.len() == 1
            && report.chains[0].changes == stored.len() as u64
            && report.chains[0].last_seq == Some(stored.len() as i64),
        "after {kills} kills: {:#?} for {} changes",
        report.chains,
        stored.len()
    );
    Ok(())
}
e2e_test!(kill_9_at_random_moments_loses_and_duplicates_nothing);
