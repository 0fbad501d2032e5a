//! Capture and storage as separate processes through a real nats-server (JetStream):
//! `bemi worker --sink nats://…` and `bemi store --from nats://…`, killed and restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, ensure};
use bemi_core::context;
use bemi_dev::{LaunchOptions, NatsServer};
use bemi_tests::proxy::FaultProxy;
use bemi_tests::{
    TestCluster, TestDb, TestResult, ctx, private_cluster, private_database, wait_until,
};
use serde_json::{Value, json};

use crate::cli_support::{Background, free_port};

/// The table most NATS tests write to.
const ITEMS: &str = "CREATE TABLE items (id bigint PRIMARY KEY)";

/// How many changes the `changes` table of `audit` holds (none while it is unreachable).
async fn stored(audit: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM changes")
        .fetch_one(&audit.pool)
        .await
        .unwrap_or(0)
}

async fn start_nats() -> anyhow::Result<NatsServer> {
    Ok(tokio::task::spawn_blocking(NatsServer::start).await??)
}

/// The capture process, publishing into `nats`.
fn start_worker(source: &TestDb, nats: &str) -> anyhow::Result<Background> {
    start_worker_with(source, nats, &[])
}

/// The capture process, publishing into `nats`, with more settings.
fn start_worker_with(
    source: &TestDb,
    nats: &str,
    more: &[(&str, &str)],
) -> anyhow::Result<Background> {
    let slot = format!("bemi_{}", source.name);
    let mut envs = vec![
        ("DATABASE_URL", source.url.as_str()),
        ("BEMI_SLOT", slot.as_str()),
        ("BEMI_SINK", nats),
    ];
    envs.extend_from_slice(more);
    Background::start(&["worker", "--heartbeat-interval", "1s"], &envs)
}

/// A store process, writing `nats`'s stream into `audit`, with metrics on `metrics_addr`.
fn start_store(audit: &TestDb, nats: &str, metrics_addr: &str) -> anyhow::Result<Background> {
    start_store_with(audit, nats, metrics_addr, &[])
}

/// A store process with more settings.
fn start_store_with(
    audit: &TestDb,
    nats: &str,
    metrics_addr: &str,
    more: &[(&str, &str)],
) -> anyhow::Result<Background> {
    let mut envs = vec![
        ("BEMI_DESTINATION_URL", audit.url.as_str()),
        ("BEMI_FROM", nats),
        ("BEMI_METRICS_ADDR", metrics_addr),
    ];
    envs.extend_from_slice(more);
    Background::start(&["store"], &envs)
}

/// The parts of a NATS pipeline test: a tracked source database (`NAME`), the destination
/// (`NAME_audit`), a nats-server, its URL, and an address for a store's metrics.
struct Pipeline {
    source: TestDb,
    audit: TestDb,
    nats: NatsServer,
    url: String,
    store_metrics: String,
}

impl Pipeline {
    /// Creates the databases (`ddl` run in the source, tracking installed) and starts nats-server.
    async fn start(cluster: &TestCluster, name: &str, ddl: &str) -> anyhow::Result<Self> {
        let source = cluster.tracked_database(name, ddl).await?;
        let audit = cluster.database(&format!("{name}_audit")).await?;
        let nats = start_nats().await?;
        Ok(Self {
            source,
            audit,
            url: nats.url(),
            nats,
            store_metrics: format!("127.0.0.1:{}", free_port()?),
        })
    }
}

/// The capture process, publishing into `nats`, once its slot streams.
async fn streaming_worker(source: &TestDb, nats: &str) -> anyhow::Result<Background> {
    let mut worker = start_worker(source, nats)?;
    wait_for_slot(source, &mut worker).await?;
    Ok(worker)
}

/// Waits until the worker's slot streams (so that writes from now on are captured).
async fn wait_for_slot(source: &TestDb, worker: &mut Background) -> TestResult {
    let slot = format!("bemi_{}", source.name);
    wait_until("the capture to stream", Duration::from_secs(60), || {
        let exited = worker
            .has_exited()
            .map(|exited| exited.then(|| worker.stderr()));
        let streaming = worker.stderr().contains("streaming changes");
        let (slot, pool) = (slot.clone(), source.pool.clone());
        async move {
            if let Some(stderr) = exited? {
                anyhow::bail!("bemi worker exited: {stderr}");
            }
            let active: Option<bool> =
                sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                    .bind(&slot)
                    .fetch_optional(&pool)
                    .await?;
            Ok((active == Some(true) && streaming).then_some(()))
        }
    })
    .await
}

/// A metric's value on a Prometheus endpoint (`None` while it does not answer).
async fn metric(addr: &str, name: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn through_nats_every_change_is_stored_once_across_kills_and_a_server_restart(
    cluster: Arc<TestCluster>,
) -> TestResult {
    const WRITERS: i64 = 4;
    const PER_WRITER: i64 = 5_000;
    const TOTAL: i64 = WRITERS * PER_WRITER;
    let Pipeline {
        source,
        audit,
        mut nats,
        url,
        store_metrics,
    } = Pipeline::start(
        &cluster,
        "nats_chaos",
        "CREATE TABLE items (id bigint PRIMARY KEY, writer int NOT NULL, n int NOT NULL)",
    )
    .await?;
    let mut worker = streaming_worker(&source, &url).await?;
    let mut store = start_store(&audit, &url, &store_metrics)?;

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let pool = source.bemi_pool();
            tokio::spawn(async move {
                for n in 0..PER_WRITER {
                    context::scope(
                        ctx(json!({"writer": w, "n": n, "note": "*/ <script>"})),
                        sqlx::query("INSERT INTO items VALUES ($1, $2, $3)")
                            .bind(w * PER_WRITER + n)
                            .bind(w as i32)
                            .bind(n as i32)
                            .execute(&pool),
                    )
                    .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();

    // Faults at moments that vary from run to run: each once the stored count passes its mark.
    let jitter = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .subsec_nanos() as i64
        % 1_500;
    let marks = [
        2_000 + jitter,
        6_000 + jitter,
        10_000 + jitter,
        14_000 + jitter,
    ];
    let mut done = 0;
    let mut log = Vec::new();
    while done < marks.len() {
        let count = wait_until(
            "the next fault's moment",
            Duration::from_secs(180),
            || async {
                let count = stored(&audit).await;
                Ok((count >= marks[done]).then_some(count))
            },
        )
        .await
        .with_context(|| format!("faults so far: {log:?}; store: {}", store.stderr()))?;
        match done {
            0 => {
                worker.kill().await?;
                worker = start_worker(&source, &url)?;
            }
            1 => {
                store.kill().await?;
                store = start_store(&audit, &url, &store_metrics)?;
            }
            2 => {
                nats = tokio::task::spawn_blocking(move || {
                    nats.kill()?;
                    nats.start_again()?;
                    anyhow::Ok(nats)
                })
                .await??;
            }
            _ => {
                worker.kill().await?;
                store.kill().await?;
                worker = start_worker(&source, &url)?;
                store = start_store(&audit, &url, &store_metrics)?;
            }
        }
        log.push(count);
        done += 1;
    }
    for writer in writers {
        writer.await??;
    }
    wait_until("every change", Duration::from_secs(180), || async {
        Ok((stored(&audit).await >= TOTAL).then_some(()))
    })
    .await
    .with_context(|| format!("worker: {}\nstore: {}", worker.stderr(), store.stderr()))?;

    let rows: Vec<(Value, Value)> = sqlx::query_as("SELECT after, context FROM changes")
        .fetch_all(&audit.pool)
        .await?;
    ensure!(rows.len() as i64 == TOTAL, "{} changes", rows.len());
    let mut ids = BTreeSet::new();
    for (after, context) in &rows {
        ensure!(ids.insert(after["id"].as_i64()), "twice: {after}");
        ensure!(
            context["writer"] == after["writer"]
                && context["n"] == after["n"]
                && context["note"] == "*/ <script>"
                && context["SQL"].is_string(),
            "{after} has the context {context}"
        );
    }
    ensure!(ids.len() as i64 == TOTAL);
    // Each change names its source cluster, carried through the stream.
    let cluster: String =
        sqlx::query_scalar("SELECT system_identifier::text FROM pg_control_system()")
            .fetch_one(&source.pool)
            .await?;
    let named: i64 = sqlx::query_scalar("SELECT count(*) FROM changes WHERE source = $1")
        .bind(&cluster)
        .fetch_one(&audit.pool)
        .await?;
    ensure!(
        named == TOTAL,
        "{named} of {TOTAL} changes name the source {cluster}"
    );
    // Each partition's hash chain continued exactly across the kills and the restart.
    chains_verify(&audit, TOTAL as usize).await?;
    worker.terminate().await?;
    store.terminate().await?;
    drop(nats);
    Ok(())
}
e2e_test!(through_nats_every_change_is_stored_once_across_kills_and_a_server_restart);

async fn through_nats_a_destination_outage_is_held_by_the_stream_not_the_slot(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let source = cluster.tracked_database("nats_outage", ITEMS).await?;
    let mut pg = private_cluster(LaunchOptions::default()).await?;
    let audit = private_database(&pg, "nats_outage_audit").await?;
    let nats = start_nats().await?;
    let store_metrics = format!("127.0.0.1:{}", free_port()?);
    let mut worker = streaming_worker(&source, &nats.url()).await?;
    let mut store = start_store(&audit, &nats.url(), &store_metrics)?;
    let insert = |ids: std::ops::RangeInclusive<i64>| {
        let pool = source.pool.clone();
        async move {
            for id in ids {
                sqlx::query("INSERT INTO items VALUES ($1)")
                    .bind(id)
                    .execute(&pool)
                    .await?;
            }
            anyhow::Ok(())
        }
    };
    insert(1..=100).await?;
    wait_until("the first changes", Duration::from_secs(60), || async {
        Ok((stored(&audit).await == 100).then_some(()))
    })
    .await?;

    pg = tokio::task::spawn_blocking(move || {
        pg.stop_server()?;
        anyhow::Ok(pg)
    })
    .await??;
    insert(101..=600).await?;
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&source.pool)
        .await?;
    // The capture goes on: the slot confirms past the writes; the stream holds them.
    let slot = format!("bemi_{}", source.name);
    wait_until(
        "the slot to move past the writes while the destination is down",
        Duration::from_secs(60),
        || async {
            let past: bool = sqlx::query_scalar(
                "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots \
                  WHERE slot_name = $1",
            )
            .bind(&slot)
            .bind(&written)
            .fetch_one(&source.pool)
            .await?;
            Ok(past.then_some(()))
        },
    )
    .await
    .with_context(|| worker.stderr())?;
    wait_until(
        "the store to report what waits in the stream",
        Duration::from_secs(60),
        || async {
            let pending = metric(&store_metrics, "bemi_store_pending_messages").await;
            let connected = metric(&store_metrics, "bemi_store_connected").await;
            Ok((pending.is_some_and(|p| p > 0.0) && connected == Some(0.0)).then_some(()))
        },
    )
    .await?;

    let pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.start_server()?;
        anyhow::Ok(pg)
    })
    .await??;
    wait_until(
        "every change after the outage",
        Duration::from_secs(120),
        || async { Ok((stored(&audit).await >= 600).then_some(())) },
    )
    .await
    .with_context(|| store.stderr())?;
    let ids: Vec<Option<String>> = sqlx::query_scalar("SELECT primary_key FROM changes")
        .fetch_all(&audit.pool)
        .await?;
    let unique: BTreeSet<i64> = ids
        .iter()
        .filter_map(|id| id.as_deref()?.parse().ok())
        .collect();
    ensure!(
        ids.len() == 600 && unique == (1..=600).collect(),
        "{} changes, {} distinct",
        ids.len(),
        unique.len()
    );
    // The outage was retried, not taken for bad messages.
    let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM _bemi_store_rejected")
        .fetch_one(&audit.pool)
        .await?;
    ensure!(rejected == 0, "{rejected} messages set aside");
    ensure!(
        metric(&store_metrics, "bemi_store_messages_rejected_total").await == Some(0.0),
        "{}",
        store.stderr()
    );
    worker.terminate().await?;
    store.terminate().await?;
    audit.pool.close().await;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}
e2e_test!(through_nats_a_destination_outage_is_held_by_the_stream_not_the_slot);

async fn through_nats_two_stores_share_the_partitions_and_keep_each_rows_order(
    cluster: Arc<TestCluster>,
) -> TestResult {
    const ROWS: i64 = 200;
    const VERSIONS: i64 = 10;
    let source = cluster
        .tracked_database(
            "nats_two",
            "CREATE TABLE items (id bigint PRIMARY KEY, version int NOT NULL)",
        )
        .await?;
    let audit = cluster.database("nats_two_audit").await?;
    let nats = start_nats().await?;
    let (first_metrics, second_metrics) = (
        format!("127.0.0.1:{}", free_port()?),
        format!("127.0.0.1:{}", free_port()?),
    );
    let mut worker = streaming_worker(&source, &nats.url()).await?;
    let mut first = start_store(&audit, &nats.url(), &first_metrics)?;
    let mut second = start_store(&audit, &nats.url(), &second_metrics)?;
    wait_until(
        "the stores to share the partitions",
        Duration::from_secs(60),
        || async {
            let owned = (
                metric(&first_metrics, "bemi_store_partitions_owned").await,
                metric(&second_metrics, "bemi_store_partitions_owned").await,
            );
            Ok((owned == (Some(4.0), Some(4.0))).then_some(()))
        },
    )
    .await?;

    // Each row written, then updated again and again, by writers that interleave.
    source
        .exec(&format!(
            "INSERT INTO items SELECT g, 0 FROM generate_series(1, {ROWS}) g"
        ))
        .await?;
    let updaters: Vec<_> = (0..4)
        .map(|w| {
            let pool = source.pool.clone();
            tokio::spawn(async move {
                for version in 1..=VERSIONS {
                    for id in (1..=ROWS).filter(|id| id % 4 == w) {
                        sqlx::query("UPDATE items SET version = $2 WHERE id = $1")
                            .bind(id)
                            .bind(version as i32)
                            .execute(&pool)
                            .await?;
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for updater in updaters {
        updater.await??;
    }
    let total = ROWS * (VERSIONS + 1);
    wait_until("every change", Duration::from_secs(120), || async {
        Ok((stored(&audit).await >= total).then_some(()))
    })
    .await?;
    let rows: Vec<(Option<String>, Value)> =
        sqlx::query_as("SELECT primary_key, after FROM changes ORDER BY committed_at, position")
            .fetch_all(&audit.pool)
            .await?;
    ensure!(rows.len() as i64 == total, "{} changes", rows.len());
    let mut histories: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (key, after) in rows {
        histories
            .entry(key.unwrap_or_default())
            .or_default()
            .push(after["version"].as_i64().unwrap_or(-1));
    }
    ensure!(histories.len() as i64 == ROWS);
    for (key, versions) in &histories {
        ensure!(
            *versions == (0..=VERSIONS).collect::<Vec<_>>(),
            "row {key}: {versions:?}"
        );
    }
    // Both wrote.
    let (a, b) = (
        metric(&first_metrics, "bemi_store_changes_stored_total").await,
        metric(&second_metrics, "bemi_store_changes_stored_total").await,
    );
    ensure!(
        a.is_some_and(|a| a > 0.0) && b.is_some_and(|b| b > 0.0),
        "stored: {a:?} and {b:?}"
    );
    // One hash chain per partition, each continuous, though two stores wrote them.
    chains_verify(&audit, total as usize).await?;
    Background::terminate_all(&mut [&mut worker, &mut first, &mut second]).await?;
    drop(nats);
    Ok(())
}
e2e_test!(through_nats_two_stores_share_the_partitions_and_keep_each_rows_order);

/// A JetStream client of the test's own, to do to the stream what operators (or accidents) do.
async fn jetstream(url: &str) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = async_nats::connect(url).await?;
    Ok(async_nats::jetstream::new(client))
}

/// Messages in the stream `bemi` (none while it is missing).
async fn in_stream(url: &str) -> u64 {
    let Ok(js) = jetstream(url).await else {
        return 0;
    };
    match js.get_stream("bemi").await {
        Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
        Err(_) => 0,
    }
}

/// Inserts rows `ids` into `items`, one transaction each.
async fn insert_items(source: &TestDb, ids: std::ops::RangeInclusive<i64>) -> TestResult {
    for id in ids {
        sqlx::query("INSERT INTO items VALUES ($1)")
            .bind(id)
            .execute(&source.pool)
            .await?;
    }
    Ok(())
}

/// Waits until `changes` holds `count` changes.
async fn wait_stored(audit: &TestDb, count: i64, store: &Background) -> TestResult {
    wait_until(
        &format!("{count} stored changes"),
        Duration::from_secs(60),
        || async { Ok((stored(audit).await >= count).then_some(())) },
    )
    .await
    .with_context(|| format!("{} stored; store: {}", count, store.stderr()))
}

/// `changes` holds each of `ids` of `items` exactly once, and nothing else.
async fn each_once(audit: &TestDb, ids: std::ops::RangeInclusive<i64>) -> TestResult {
    let keys: Vec<Option<String>> =
        sqlx::query_scalar("SELECT primary_key FROM changes WHERE \"table\" = 'items'")
            .fetch_all(&audit.pool)
            .await?;
    let unique: BTreeSet<i64> = keys
        .iter()
        .filter_map(|key| key.as_deref()?.parse().ok())
        .collect();
    ensure!(
        keys.len() == ids.clone().count() && unique == ids.clone().collect(),
        "{} changes, {} distinct, expected {ids:?}",
        keys.len(),
        unique.len()
    );
    chains_verify(audit, keys.len()).await
}

/// Every partition's hash chain verifies, and together they hold all `count` changes.
async fn chains_verify(audit: &TestDb, count: usize) -> TestResult {
    let mut conn = audit.pool.acquire().await?;
    let report = bemi_audit::verify::verify(&mut conn).await?;
    ensure!(report.is_intact(), "{:#?}", report.breaks);
    let chained: u64 = report.chains.iter().map(|chain| chain.changes).sum();
    ensure!(
        chained == count as u64
            && report.unchained == 0
            && report
                .chains
                .iter()
                .all(|chain| chain.chain.starts_with("nats:")
                    && chain.first_seq == Some(1)
                    && chain.last_seq == Some(chain.changes as i64)),
        "{:#?} for {count} changes",
        report.chains
    );
    Ok(())
}

async fn through_nats_a_stream_purged_or_created_again_loses_and_duplicates_nothing(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let source = cluster.tracked_database("nats_reset", ITEMS).await?;
    let audit = cluster.database("nats_reset_audit").await?;
    // The tables of an earlier version of the store, with positions in a stream long gone and
    // a message it set aside: brought up to date, the positions noticed as another stream's.
    audit
        .exec(
            "CREATE TABLE _bemi_store_state (stream text NOT NULL, partition int NOT NULL, \
               last_sequence bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), \
               PRIMARY KEY (stream, partition)); \
             INSERT INTO _bemi_store_state (stream, partition, last_sequence) \
               SELECT 'bemi', p, 1000000 FROM generate_series(0, 7) p; \
             CREATE TABLE _bemi_store_rejected (stream text NOT NULL, sequence bigint NOT NULL, \
               subject text NOT NULL, reason text NOT NULL, payload bytea NOT NULL, \
               rejected_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (stream, sequence)); \
             INSERT INTO _bemi_store_rejected (stream, sequence, subject, reason, payload) \
               VALUES ('bemi', 1, 'bemi.changes.0', 'an old one', '\\x00')",
        )
        .await?;
    let mut nats = start_nats().await?;
    let url = nats.url();
    let store_metrics = format!("127.0.0.1:{}", free_port()?);
    let mut worker = streaming_worker(&source, &url).await?;
    let mut store = start_store(&audit, &url, &store_metrics)?;
    insert_items(&source, 1..=50).await?;
    wait_stored(&audit, 50, &store).await?;
    ensure!(
        store
            .stderr()
            .contains("below the 1000000 this partition recorded"),
        "{}",
        store.stderr()
    );
    let kept: (i64, i16) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM _bemi_store_rejected), \
                (SELECT indnatts FROM pg_index \
                  WHERE indrelid = '_bemi_store_rejected'::regclass AND indisprimary)",
    )
    .fetch_one(&audit.pool)
    .await?;
    ensure!(kept == (1, 3), "{kept:?}");

    // Purged (and the server restarted after it), while both run.
    jetstream(&url)
        .await?
        .get_stream("bemi")
        .await?
        .purge()
        .await?;
    nats = tokio::task::spawn_blocking(move || {
        nats.kill()?;
        nats.start_again()?;
        anyhow::Ok(nats)
    })
    .await??;
    insert_items(&source, 51..=100).await?;
    wait_stored(&audit, 100, &store).await?;

    // Lost: both stopped, the stream deleted (an empty volume), both started again. Its
    // sequences start again at 1, below the positions the store recorded for the old one.
    Background::terminate_all(&mut [&mut worker, &mut store]).await?;
    jetstream(&url).await?.delete_stream("bemi").await?;
    worker = streaming_worker(&source, &url).await?;
    store = start_store(&audit, &url, &store_metrics)?;
    insert_items(&source, 101..=150).await?;
    wait_stored(&audit, 150, &store).await?;
    // Deleted again while both run: the capture creates it again, the store follows.
    jetstream(&url).await?.delete_stream("bemi").await?;
    insert_items(&source, 151..=170).await?;
    wait_stored(&audit, 170, &store)
        .await
        .with_context(|| worker.stderr())?;
    each_once(&audit, 1..=170).await?;
    // Said and counted.
    wait_until(
        "the reset to be counted",
        Duration::from_secs(30),
        || async {
            let resets = metric(&store_metrics, "bemi_store_stream_resets_total").await;
            Ok(resets.is_some_and(|resets| resets > 0.0).then_some(()))
        },
    )
    .await?;
    ensure!(
        store.stderr().contains("was deleted and created again"),
        "{}",
        store.stderr()
    );
    Background::terminate_all(&mut [&mut worker, &mut store]).await?;
    drop(nats);
    Ok(())
}
e2e_test!(through_nats_a_stream_purged_or_created_again_loses_and_duplicates_nothing);

async fn through_nats_a_message_the_destination_refuses_is_set_aside_and_its_partition_goes_on(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let Pipeline {
        source,
        audit,
        nats,
        url,
        store_metrics,
    } = Pipeline::start(&cluster, "nats_poison", ITEMS).await?;
    let mut worker = streaming_worker(&source, &url).await?;
    // Changes, then in every partition a message whose context `jsonb` refuses (`\u0000`,
    // SQLSTATE 22P05), then more changes: the store, started last, gets them in mixed batches.
    insert_items(&source, 1..=20).await?;
    wait_until(
        "the first changes in the stream",
        Duration::from_secs(60),
        || async { Ok((in_stream(&url).await >= 20).then_some(())) },
    )
    .await?;
    let js = jetstream(&url).await?;
    let mut poison = Vec::new();
    for p in 0..8 {
        let payload = format!(
            r#"{{"v":1,"database":"{}","commit_lsn":1,"changes":[{{"primary_key":"poison-{p}","before":{{}},"after":{{"id":"poison"}},"context":{{"bad":"\u0000"}},"schema":"public","table":"items","operation":"CREATE","committed_at":0,"queued_at":0,"transaction_id":1,"position":{}}}]}}"#,
            source.name,
            p + 1
        );
        js.publish(format!("bemi.changes.{p}"), payload.clone().into())
            .await?
            .await?;
        poison.push(payload);
    }
    insert_items(&source, 21..=40).await?;
    wait_until(
        "every message in the stream",
        Duration::from_secs(60),
        || async { Ok((in_stream(&url).await >= 48).then_some(())) },
    )
    .await?;
    let mut store = start_store(&audit, &url, &store_metrics)?;
    wait_stored(&audit, 40, &store).await?;
    each_once(&audit, 1..=40).await?;
    let rejected: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT reason, payload FROM _bemi_store_rejected ORDER BY subject")
            .fetch_all(&audit.pool)
            .await?;
    ensure!(rejected.len() == 8, "{rejected:?}");
    for ((reason, payload), published) in rejected.iter().zip(&poison) {
        ensure!(reason.contains("22P05"), "{reason}");
        ensure!(payload == published.as_bytes(), "{reason}");
    }
    ensure!(
        metric(&store_metrics, "bemi_store_messages_rejected_total").await == Some(8.0),
        "{}",
        store.stderr()
    );
    wait_until("an empty stream", Duration::from_secs(30), || async {
        Ok((in_stream(&url).await == 0).then_some(()))
    })
    .await?;
    // Rejected messages are replayed by publishing their payload again, once fixed.
    let fixed = poison[0].replace(r#"{"bad":"\u0000"}"#, r#"{"bad":"fixed"}"#);
    js.publish("bemi.changes.0", fixed.into()).await?.await?;
    wait_stored(&audit, 41, &store).await?;
    Background::terminate_all(&mut [&mut worker, &mut store]).await?;
    drop(nats);
    Ok(())
}
e2e_test!(through_nats_a_message_the_destination_refuses_is_set_aside_and_its_partition_goes_on);

/// The `body` of `blobs` row `id`, as (length, md5), in the source and in `changes`.
async fn blob(
    source: &TestDb,
    audit: &TestDb,
    id: i64,
) -> anyhow::Result<((i32, String), (i32, String))> {
    let in_source: (i32, String) =
        sqlx::query_as("SELECT length(body), md5(body) FROM blobs WHERE id = $1")
            .bind(id)
            .fetch_one(&source.pool)
            .await?;
    let in_changes: (i32, String) = sqlx::query_as(
        "SELECT length(after->>'body'), md5(after->>'body') FROM changes \
          WHERE \"table\" = 'blobs' AND primary_key = $1",
    )
    .bind(id.to_string())
    .fetch_one(&audit.pool)
    .await?;
    Ok((in_source, in_changes))
}

async fn through_nats_changes_of_2_and_30_mb_are_stored_whole_across_kills_between_parts(
    cluster: Arc<TestCluster>,
) -> TestResult {
    const MB: i64 = 1_000_000;
    let Pipeline {
        source,
        audit,
        nats,
        url,
        store_metrics,
    } = Pipeline::start(
        &cluster,
        "nats_large",
        "CREATE TABLE blobs (id bigint PRIMARY KEY, body text NOT NULL)",
    )
    .await?;
    let mut worker = streaming_worker(&source, &url).await?;
    let mut store = start_store(&audit, &url, &store_metrics)?;
    // nats-server's default max_payload is 1 MB: these take 2 and 30 parts (or more).
    let insert = |id: i64, bytes: i64| {
        let pool = source.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO blobs SELECT $1, string_agg(md5(g::text || $1::text), '') \
                   FROM generate_series(1, $2 / 32) g",
            )
            .bind(id)
            .bind(bytes)
            .execute(&pool)
            .await?;
            anyhow::Ok(())
        }
    };
    insert(1, 2 * MB).await?;
    insert(2, 30 * MB).await?;
    sqlx::query("INSERT INTO blobs VALUES (3, 'small, after them')")
        .execute(&source.pool)
        .await?;
    wait_stored(&audit, 3, &store).await?;
    for id in 1..=3 {
        let (in_source, in_changes) = blob(&source, &audit, id).await?;
        ensure!(
            in_source == in_changes,
            "row {id}: {in_source:?} != {in_changes:?}"
        );
    }

    wait_until("an empty stream", Duration::from_secs(30), || async {
        Ok((in_stream(&url).await == 0).then_some(()))
    })
    .await?;

    // The capture cut off after some parts of a 30 MB change, and killed; the store killed
    // while it holds those parts.
    worker.kill().await?;
    store.kill().await?;
    // Through a proxy that passes the first 5 MB of the capture's bytes and then holds the rest.
    let proxy = FaultProxy::start(nats.port()).await?;
    proxy.cut_requests_after(5 * 1024 * 1024);
    worker = streaming_worker(&source, &proxy.url_for(&url, nats.port())?).await?;
    insert(4, 30 * MB).await?;
    wait_until(
        "the capture to be cut off",
        Duration::from_secs(60),
        || async { Ok((proxy.forwarded_bytes() >= 5 * 1024 * 1024).then_some(())) },
    )
    .await?;
    wait_until(
        "some parts in the stream",
        Duration::from_secs(30),
        || async { Ok((in_stream(&url).await >= 3).then_some(())) },
    )
    .await?;
    worker.kill().await?;
    drop(proxy);
    store = start_store(&audit, &url, &store_metrics)?;
    let parts = wait_until(
        "the store to hold the parts",
        Duration::from_secs(60),
        || async {
            let held = metric(&store_metrics, "bemi_store_parts_waiting").await;
            let parts = in_stream(&url).await;
            Ok((held == Some(parts as f64) && parts >= 3).then_some(parts))
        },
    )
    .await
    .with_context(|| store.stderr())?;
    store.kill().await?;
    ensure!(in_stream(&url).await == parts, "the parts left the stream");
    ensure!(stored(&audit).await == 3);

    // Both again: the capture publishes the change again (the stream drops the parts it has),
    // the store joins the parts.
    store = start_store(&audit, &url, &store_metrics)?;
    worker = start_worker(&source, &url)?;
    wait_stored(&audit, 4, &store).await?;
    let (in_source, in_changes) = blob(&source, &audit, 4).await?;
    ensure!(in_source == in_changes, "{in_source:?} != {in_changes:?}");
    ensure!(in_source.0 >= 30_000_000, "{in_source:?}");
    wait_until("an empty stream", Duration::from_secs(30), || async {
        Ok((in_stream(&url).await == 0).then_some(()))
    })
    .await?;
    ensure!(stored(&audit).await == 4);
    Background::terminate_all(&mut [&mut worker, &mut store]).await?;
    drop(nats);
    Ok(())
}
e2e_test!(through_nats_changes_of_2_and_30_mb_are_stored_whole_across_kills_between_parts);

/// A certificate authority for the TLS server of the credentials test.
fn certificate_authority() -> anyhow::Result<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bemi NATS test CA");
    Ok(rcgen::CertifiedIssuer::self_signed(
        params,
        rcgen::KeyPair::generate()?,
    )?)
}

/// A certificate for `name` signed by `ca`, for `purpose`, and its key: PEM files in `dir`.
fn certificate(
    ca: &rcgen::CertifiedIssuer<'_, rcgen::KeyPair>,
    name: &str,
    purpose: rcgen::ExtendedKeyUsagePurpose,
    dir: &std::path::Path,
) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.extended_key_usages = vec![purpose];
    let certificate = params.signed_by(&key, ca)?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, certificate.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((
        cert_path.display().to_string(),
        key_path.display().to_string(),
    ))
}

async fn start_nats_with(config: String) -> anyhow::Result<NatsServer> {
    Ok(tokio::task::spawn_blocking(move || NatsServer::start_with_config(&config)).await??)
}

async fn through_nats_passwords_tokens_nkeys_credentials_and_tls_reach_servers_that_ask_for_them(
    cluster: Arc<TestCluster>,
) -> TestResult {
    const PASSWORD: &str = "pw-S3CRET";
    const TOKEN: &str = "t0ken-S3CRET";
    let source = cluster.tracked_database("nats_auth", ITEMS).await?;
    let audit = cluster.database("nats_auth_audit").await?;
    let store_metrics = format!("127.0.0.1:{}", free_port()?);
    let files = tempfile::tempdir()?;

    // TLS with a client certificate, and a user with a password.
    let ca = certificate_authority()?;
    let ca_path = files.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem())?;
    let ca_path = ca_path.display().to_string();
    let (server_cert, server_key) = certificate(
        &ca,
        "127.0.0.1",
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        files.path(),
    )?;
    let (client_cert, client_key) = certificate(
        &ca,
        "bemi-client",
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        files.path(),
    )?;
    let nats = start_nats_with(format!(
        r#"tls {{ cert_file: "{server_cert}", key_file: "{server_key}", ca_file: "{ca_path}", verify: true, timeout: 5 }}
authorization {{ user: "bemi", password: "{PASSWORD}" }}"#
    ))
    .await?;
    let url = format!("tls://bemi:{PASSWORD}@127.0.0.1:{}", nats.port());
    let tls = [
        ("BEMI_NATS_CA", ca_path.as_str()),
        ("BEMI_NATS_CERT", client_cert.as_str()),
        ("BEMI_NATS_KEY", client_key.as_str()),
    ];
    let mut worker = start_worker_with(&source, &url, &tls)?;
    wait_for_slot(&source, &mut worker).await?;
    let mut store = start_store_with(&audit, &url, &store_metrics, &tls)?;
    insert_items(&source, 1..=5).await?;
    wait_stored(&audit, 5, &store).await?;
    // A wrong password: refused, said so, and no password shown.
    let wrong = format!("tls://bemi:WRONG-{PASSWORD}@127.0.0.1:{}", nats.port());
    let wrong_metrics = format!("127.0.0.1:{}", free_port()?);
    let mut refused = start_store_with(&audit, &wrong, &wrong_metrics, &tls)?;
    wait_until("the refusal", Duration::from_secs(30), || async {
        Ok(refused.stderr().contains("connecting to").then_some(()))
    })
    .await?;
    let said = refused.stderr();
    ensure!(
        said.contains("tls://bemi:***@127.0.0.1") && said.contains("refused the credentials"),
        "{said}"
    );
    refused.kill().await?;
    Background::terminate_all(&mut [&mut worker, &mut store]).await?;
    for said in [worker.stderr(), store.stderr(), refused.stderr()] {
        ensure!(!said.contains("S3CRET"), "a password shown: {said}");
    }
    drop(nats);

    // A token.
    let nats = start_nats_with(format!(r#"authorization {{ token: "{TOKEN}" }}"#)).await?;
    let url = format!("nats://{TOKEN}@127.0.0.1:{}", nats.port());
    worker = streaming_worker(&source, &url).await?;
    store = start_store(&audit, &url, &store_metrics)?;
    insert_items(&source, 6..=10).await?;
    wait_stored(&audit, 10, &store).await?;
    for process in [&mut worker, &mut store] {
        process.terminate().await?;
        ensure!(!process.stderr().contains("S3CRET"), "{}", process.stderr());
        ensure!(
            process.stderr().contains("nats://***@127.0.0.1"),
            "{}",
            process.stderr()
        );
    }
    drop(nats);

    // An nkey.
    let user = nkeys::KeyPair::new_user();
    let seed_path = files.path().join("user.nk");
    std::fs::write(&seed_path, user.seed()?)?;
    let seed_path = seed_path.display().to_string();
    let nats = start_nats_with(format!(
        r#"authorization {{ users: [ {{ nkey: "{}" }} ] }}"#,
        user.public_key()
    ))
    .await?;
    let nkey = [("BEMI_NATS_NKEY", seed_path.as_str())];
    worker = start_worker_with(&source, &nats.url(), &nkey)?;
    wait_for_slot(&source, &mut worker).await?;
    store = start_store_with(&audit, &nats.url(), &store_metrics, &nkey)?;
    insert_items(&source, 11..=15).await?;
    wait_stored(&audit, 15, &store).await?;
    Background::terminate_all(&mut [&mut worker, &mut store]).await?;
    drop(nats);

    // A credentials file: an operator, its account (with JetStream) and a user, as JWTs.
    let (operator, account) = (
        nkeys::KeyPair::new_operator(),
        nkeys::KeyPair::new_account(),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        &json!({"type": "account", "version": 2, "limits": {
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}}),
    )?;
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        &json!({"type": "user", "version": 2, "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1}),
    )?;
    // JetStream needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        &json!({"type": "account", "version": 2}),
    )?;
    let operator_path = files.path().join("operator.jwt");
    std::fs::write(
        &operator_path,
        jwt(
            &operator,
            &operator.public_key(),
            &json!({"type": "operator", "version": 2}),
        )?,
    )?;
    let creds_path = files.path().join("user.creds");
    std::fs::write(
        &creds_path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed()?
        ),
    )?;
    let creds_path = creds_path.display().to_string();
    let nats = start_nats_with(format!(
        r#"operator: "{}"
system_account: {system_pub}
resolver: MEMORY
resolver_preload: {{ {}: "{account_jwt}", {system_pub}: "{system_jwt}" }}"#,
        operator_path.display(),
        account.public_key(),
        system_pub = system.public_key(),
    ))
    .await?;
    let creds = [("BEMI_NATS_CREDS", creds_path.as_str())];
    worker = start_worker_with(&source, &nats.url(), &creds)?;
    wait_for_slot(&source, &mut worker)
        .await
        .with_context(|| nats.log_tail())?;
    store = start_store_with(&audit, &nats.url(), &store_metrics, &creds)?;
    insert_items(&source, 16..=20).await?;
    wait_stored(&audit, 20, &store)
        .await
        .with_context(|| nats.log_tail())?;
    each_once(&audit, 1..=20).await?;
    Background::terminate_all(&mut [&mut worker, &mut store]).await?;
    drop(nats);
    Ok(())
}
e2e_test!(through_nats_passwords_tokens_nkeys_credentials_and_tls_reach_servers_that_ask_for_them);

/// A NATS JWT (`ed25519-nkey`) for `subject` with `nats` claims, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, nats: &Value) -> anyhow::Result<String> {
    let issued = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({
        "jti": format!("BEMITEST{issued}{}", &subject[..8]),
        "iat": issued,
        "iss": issuer.public_key(),
        "name": "bemi-test",
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        base64_url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        base64_url(&serde_json::to_vec(&claims)?)
    );
    let signature = issuer.sign(signed.as_bytes())?;
    Ok(format!("{signed}.{}", base64_url(&signature)))
}

/// Base64 with the URL alphabet and no padding.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, byte)| n | (u32::from(*byte) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Chaos seed 4 (`--nats`): a standby takes over with the slot's position as it was when it
/// began to stand by. The schema history it loads is as of that stale position, while the
/// stream starts where the other worker left off — past a DDL: the table's changes did not
/// match the history and were stored without their key. It reads the slot again once it takes
/// over.
async fn through_nats_a_standby_takes_over_with_the_schema_history_of_the_slots_position(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let pipeline = Pipeline::start(
        &cluster,
        "nats_standby_history",
        "CREATE TABLE events (id bigint PRIMARY KEY, note text)",
    )
    .await?;
    let (source, audit, url) = (&pipeline.source, &pipeline.audit, &pipeline.url);
    let mut first = streaming_worker(source, url).await?;
    let mut second = start_worker(source, url)?;
    wait_until(
        "the second worker to stand by",
        Duration::from_secs(60),
        || async { Ok(second.stderr().contains("standing by").then_some(())) },
    )
    .await?;
    let mut store = start_store(audit, url, &pipeline.store_metrics)?;

    // A DDL and changes after it, all taken by the first worker (its slot confirmed past them).
    sqlx::raw_sql(
        "ALTER TABLE events ADD COLUMN extra int DEFAULT 1;
         INSERT INTO events (id, note) SELECT g, 'n' FROM generate_series(1, 10) g",
    )
    .execute(&source.pool)
    .await?;
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&source.pool)
        .await?;
    let slot = format!("bemi_{}", source.name);
    wait_until(
        "the slot confirmed past the DDL",
        Duration::from_secs(60),
        || async {
            let confirmed: Option<bool> = sqlx::query_scalar(
                "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots \
              WHERE slot_name = $1",
            )
            .bind(&slot)
            .bind(&target)
            .fetch_optional(&source.pool)
            .await?;
            Ok((confirmed == Some(true)).then_some(()))
        },
    )
    .await?;
    wait_stored(audit, 10, &store).await?;

    // The first worker dies; the second takes over and captures more.
    first.kill().await?;
    wait_until(
        "the second worker to stream",
        Duration::from_secs(60),
        || async { Ok(second.stderr().contains("streaming changes").then_some(())) },
    )
    .await?;
    sqlx::query("UPDATE events SET note = 'u'")
        .execute(&source.pool)
        .await?;
    wait_stored(audit, 20, &store).await?;
    let keyless: i64 = sqlx::query_scalar("SELECT count(*) FROM changes WHERE primary_key IS NULL")
        .fetch_one(&audit.pool)
        .await?;
    ensure!(
        keyless == 0 && !second.stderr().contains("does not match the WAL"),
        "{keyless} changes stored without their key:\n{}",
        second.stderr()
    );
    Background::terminate_all(&mut [&mut second, &mut store]).await?;
    Ok(())
}
e2e_test!(through_nats_a_standby_takes_over_with_the_schema_history_of_the_slots_position);
