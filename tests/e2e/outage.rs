//! The destination going away for a while: the worker keeps retrying, says how far behind it
//! is (metrics and log) while it cannot write, and when the destination is back it stores
//! every change committed meanwhile, exactly once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use bemi_dev::LaunchOptions;
use bemi_tests::{TestCluster, TestDb, TestResult, private_cluster, private_database, wait_until};

use crate::cli_support::{Background, free_port};
use crate::cli_worker::wait_until_streaming;

/// The keys stored in the destination's `changes`, in order (connection errors while it is
/// down count as none).
async fn stored_ids(destination: &TestDb) -> Vec<i64> {
    sqlx::query_scalar("SELECT primary_key::bigint FROM changes ORDER BY committed_at, position")
        .fetch_all(&destination.pool)
        .await
        .unwrap_or_default()
}

async fn insert(source: &TestDb, ids: std::ops::RangeInclusive<i64>) -> TestResult {
    for id in ids {
        sqlx::query("INSERT INTO items VALUES ($1)")
            .bind(id)
            .execute(&source.pool)
            .await?;
    }
    Ok(())
}

/// The value of a metric in a Prometheus text `body`.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn a_destination_outage_loses_and_duplicates_nothing_and_reports_the_lag(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let source = cluster.database("outage_source").await?;
    source
        .exec("CREATE TABLE items (id bigint PRIMARY KEY)")
        .await?;
    source.migrate().await?;
    let mut pg = private_cluster(LaunchOptions::default()).await?;
    let destination = private_database(&pg, "outage_audit").await?;

    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let slot = format!("bemi_{}", source.name);
    let mut worker = Background::start(
        &["worker"],
        &[
            ("DATABASE_URL", source.url.as_str()),
            ("BEMI_DESTINATION_URL", destination.url.as_str()),
            ("BEMI_SLOT", slot.as_str()),
            ("BEMI_METRICS_ADDR", metrics_addr.as_str()),
        ],
    )?;
    wait_until_streaming(&metrics_addr, &mut worker).await?;
    let metrics = || async {
        anyhow::Ok(
            reqwest::get(format!("http://{metrics_addr}/metrics"))
                .await?
                .text()
                .await?,
        )
    };

    insert(&source, 1..=100).await?;
    wait_until("the first 100 changes", Duration::from_secs(60), || async {
        Ok((stored_ids(&destination).await.len() == 100).then_some(()))
    })
    .await?;

    // The destination goes away; the source goes on.
    pg = tokio::task::spawn_blocking(move || {
        pg.stop_server()?;
        anyhow::Ok(pg)
    })
    .await??;
    insert(&source, 101..=200).await?;
    let during = wait_until(
        "the worker to report its lag while the destination is down",
        Duration::from_secs(90),
        || async {
            let body = metrics().await?;
            let lagging = metric(&body, "bemi_connected") == Some(0.0)
                && metric(&body, "bemi_replication_lag_bytes").is_some_and(|bytes| bytes > 0.0)
                && metric(&body, "bemi_replication_lag_seconds").is_some_and(|s| s > 0.0)
                && worker.stderr().contains("slot_lag_bytes");
            Ok(lagging.then_some(body))
        },
    )
    .await?;
    ensure!(
        metric(&during, "bemi_errors_total").is_some_and(|errors| errors >= 1.0),
        "{during}"
    );

    // It comes back.
    let pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.start_server()?;
        anyhow::Ok(pg)
    })
    .await??;
    insert(&source, 201..=300).await?;
    let ids = wait_until(
        "every change after the outage",
        Duration::from_secs(120),
        || async {
            let ids = stored_ids(&destination).await;
            Ok((ids.len() >= 300).then_some(ids))
        },
    )
    .await?;
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    ensure!(
        ids.len() == 300 && unique == (1..=300).collect(),
        "{} changes, {} distinct: {ids:?}\n{}",
        ids.len(),
        unique.len(),
        worker.stderr()
    );
    ensure!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "not in commit order: {ids:?}"
    );
    wait_until(
        "the lag to go back to 0 s",
        Duration::from_secs(60),
        || async {
            let body = metrics().await?;
            Ok((metric(&body, "bemi_connected") == Some(1.0)
                && metric(&body, "bemi_replication_lag_seconds") == Some(0.0))
            .then_some(()))
        },
    )
    .await?;

    worker.terminate().await?;
    destination.pool.close().await;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}
e2e_test!(a_destination_outage_loses_and_duplicates_nothing_and_reports_the_lag);
