//! One transaction of 1 000 000 rows through the `bemi worker` binary: stored exactly once,
//! with the worker's peak memory bounded. Slow (minutes), so it is ignored by default; run it
//! with `cargo test --release -p bemi-tests --test e2e -- --ignored worker_large`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use bemi_tests::worker::{wait_until_slot_streams, worker_config};
use bemi_tests::{TestCluster, TestResult, wait_until};

use crate::cli_support::Background;

const ROWS: i64 = 1_000_000;
const MAX_PEAK_RSS_MIB: f64 = 256.0;

fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn a_million_row_transaction_in_bounded_memory(cluster: Arc<TestCluster>) -> TestResult {
    let db = cluster
        .tracked_database(
            "million",
            "CREATE TABLE big (id int PRIMARY KEY, pad text NOT NULL)",
        )
        .await?;
    let config = worker_config(&db);
    let envs = [
        ("DATABASE_URL", db.url.as_str()),
        ("BEMI_SLOT", config.slot.as_str()),
    ];
    let mut worker = Background::start(&["worker"], &envs)?;
    wait_until_slot_streams(&db, &config.slot).await?;
    db.exec(&format!(
        "INSERT INTO big SELECT i, md5(i::text) || md5((i + 1)::text) FROM generate_series(1, {ROWS}) i"
    ))
    .await?;
    let pid = worker
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the worker exited"))?;
    let mut peak_kib = 0;
    wait_until("a million changes", Duration::from_secs(1800), || {
        peak_kib = peak_kib.max(peak_rss_kib(pid).unwrap_or(0));
        let pool = db.pool.clone();
        async move {
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM changes")
                .fetch_one(&pool)
                .await?;
            Ok((stored >= ROWS).then_some(()))
        }
    })
    .await?;
    peak_kib = peak_kib.max(peak_rss_kib(pid).unwrap_or(0));
    worker.terminate().await?;
    let (stored, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT primary_key) FROM changes")
            .fetch_one(&db.pool)
            .await?;
    let peak_mib = peak_kib as f64 / 1024.0;
    eprintln!("1 000 000-row transaction: worker peak RSS {peak_mib:.1} MiB");
    ensure!(
        stored == ROWS && distinct == ROWS,
        "{stored} rows, {distinct} distinct"
    );
    ensure!(peak_mib <= MAX_PEAK_RSS_MIB, "peak RSS {peak_mib:.1} MiB");
    Ok(())
}
e2e_test!(a_million_row_transaction_in_bounded_memory, ignored);
