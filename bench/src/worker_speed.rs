//! How fast the capture worker is: P4 (throughput against the raw decode rate of
//! `pg_recvlogical` on the same slot workload), P5 (commit → visible latency at a steady rate),
//! P6 (peak memory while ingesting one large transaction).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bemi_core::context;
use bemi_sqlx::BemiPool;
use bemi_worker::Worker;
use bemi_worker::WorkerConfig;
use bemi_worker::WorkerMetrics;
use serde_json::json;

use crate::env::{Database, Env, Sizes};
use crate::report::{Goal, Row, Verdict};
use crate::stats::{Samples, human, percentile};

pub(crate) const EVENTS_TABLE: &str = "CREATE TABLE events (id bigserial PRIMARY KEY, kind text NOT NULL, \
     payload jsonb NOT NULL, amount numeric NOT NULL, at timestamptz NOT NULL DEFAULT now())";

pub(crate) fn request(n: u64) -> context::Context {
    json!({"user_id": n % 1000, "endpoint": "/events", "method": "POST"})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

pub(crate) async fn insert_event(pool: &BemiPool, n: u64) -> Result<(), sqlx::Error> {
    context::scope(request(n), async {
        sqlx::query("INSERT INTO events (kind, payload, amount) VALUES ($1, $2, $3::numeric)")
            .bind("order.created")
            .bind(json!({"order": n, "items": [1, 2, 3], "note": "benchmark"}))
            .bind(format!("{}.{:02}", n % 997, n % 100))
            .execute(pool)
            .await
            .map(drop)
    })
    .await
}

/// A worker running in this process.
pub(crate) struct InProcessWorker {
    pub(crate) metrics: Arc<WorkerMetrics>,
    handle: bemi_worker::WorkerHandle,
}

impl InProcessWorker {
    /// Starts a worker writing `changes` with `config`.
    pub(crate) fn start(config: WorkerConfig) -> Self {
        Self::spawn(Worker::new(config))
    }

    /// Starts `worker`.
    pub(crate) fn spawn(worker: Worker) -> Self {
        let handle = worker.spawn();
        Self {
            metrics: handle.metrics(),
            handle,
        }
    }

    pub(crate) async fn wait_for(&self, changes: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.metrics.changes_written() < changes {
            anyhow::ensure!(!self.handle.is_finished(), "the worker stopped");
            anyhow::ensure!(
                Instant::now() < deadline,
                "the worker wrote {} of {changes} changes in {timeout:?}",
                self.metrics.changes_written()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.handle.shutdown().await?;
        Ok(())
    }
}

pub(crate) fn config(db: &Database, slot: &str) -> WorkerConfig {
    WorkerConfig::new(db.url.clone()).slot(slot)
}

/// A change to the worker's configuration a user can make.
type Choice = fn(&mut WorkerConfig);

/// P4: changes per second written into `changes` ÷ the rate at which `pg_recvlogical` merely
/// receives the same slot workload (many small transactions and one large one).
pub(crate) async fn p4_throughput(env: &Env, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let db = env.database("bench_p4").await?;
    db.exec(EVENTS_TABLE).await?;
    bemi_sqlx::migration::migrate(&db.pool, Default::default()).await?;
    let bemi = BemiPool::new(db.pool.clone());
    let recvlogical = env
        .bin_dir()
        .map(|dir| dir.join("pg_recvlogical"))
        .filter(|path| path.exists())
        .unwrap_or_else(|| "pg_recvlogical".into());
    // The same workload also written into `changes` of another database on the same server: then
    // the WAL sender skips the worker's own writes instead of decoding them.
    let elsewhere = env.database("bench_p4_destination").await?;
    let total = u64::from(sizes.small_transactions) + u64::from(sizes.large_transaction_rows);
    let (mut raw, mut ours, mut ours_elsewhere) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut decode_us, mut write_us) = (Samples::default(), Samples::default());
    let (mut limit, mut copy) = (Samples::default(), Samples::default());
    // What a user can choose: fewer indexes on `changes`, more writer connections.
    let choices: [(&str, Choice); 2] = [
        (
            "`--image-indexes drop` (no GIN on before/after)",
            |config| {
                config.image_indexes = bemi_worker::ImageIndexes::Drop;
            },
        ),
        ("`--writer-connections 4`", |config| {
            config.writer_connections = 4;
        }),
    ];
    let mut chosen: Vec<Samples> = vec![Samples::default(); choices.len()];
    for round in 0..sizes.rounds.min(3) {
        let (worker_slot, elsewhere_slot, raw_slot) = (
            format!("bench_worker_{round}"),
            format!("bench_elsewhere_{round}"),
            format!("bench_raw_{round}"),
        );
        let config = config(&db, &worker_slot);
        let mut config_elsewhere = config.clone();
        config_elsewhere.slot = elsewhere_slot.clone();
        config_elsewhere.destination_url = Some(elsewhere.url.clone());
        Worker::new(config.clone()).prepare().await?;
        Worker::new(config_elsewhere.clone()).prepare().await?;
        let choice_configs: Vec<WorkerConfig> = (0..choices.len())
            .map(|c| {
                let mut choice = config_elsewhere.clone();
                choice.slot = format!("bench_choice{c}_{round}");
                choice
            })
            .collect();
        for choice in &choice_configs {
            Worker::new(choice.clone()).prepare().await?;
        }
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&raw_slot)
            .execute(&db.pool)
            .await?;
        // The workload, before either reader starts: 4 writers of one-row transactions, then
        // one large transaction.
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..4u64 {
            let bemi = bemi.clone();
            let count = u64::from(sizes.small_transactions) / 4
                + u64::from(writer == 0) * (u64::from(sizes.small_transactions) % 4);
            writers.spawn(async move {
                for n in 0..count {
                    insert_event(&bemi, writer * 1_000_000 + n).await?;
                }
                Ok::<_, sqlx::Error>(())
            });
        }
        while let Some(result) = writers.join_next().await {
            result??;
        }
        context::scope(request(0), async {
            sqlx::query(
                "INSERT INTO events (kind, payload, amount) \
                 SELECT 'import', jsonb_build_object('row', i, 'tags', jsonb_build_array('a', 'b')), i / 100.0 \
                   FROM generate_series(1, $1) i",
            )
            .bind(sizes.large_transaction_rows as i32)
            .execute(&bemi)
            .await
        })
        .await?;
        let end: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&db.pool)
            .await?;

        let started = Instant::now();
        let status = tokio::process::Command::new(&recvlogical)
            .args([
                "--dbname",
                &db.url,
                "--slot",
                &raw_slot,
                "--start",
                "--no-loop",
            ])
            .args(["--endpos", &end, "--file", "/dev/null"])
            .args([
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=bemi",
                "-o",
                "messages=true",
            ])
            .kill_on_drop(true)
            .status()
            .await?;
        anyhow::ensure!(status.success(), "pg_recvlogical failed: {status}");
        raw.0.push(total as f64 / started.elapsed().as_secs_f64());

        let started = Instant::now();
        let worker = InProcessWorker::start(config);
        worker.wait_for(total, Duration::from_secs(600)).await?;
        ours.0.push(total as f64 / started.elapsed().as_secs_f64());
        let timing = worker.metrics.timing();
        decode_us.0.push(timing.decode_seconds * 1e6 / total as f64);
        write_us.0.push(timing.write_seconds * 1e6 / total as f64);
        worker.stop().await?;

        let started = Instant::now();
        let worker = InProcessWorker::start(config_elsewhere);
        worker.wait_for(total, Duration::from_secs(600)).await?;
        ours_elsewhere
            .0
            .push(total as f64 / started.elapsed().as_secs_f64());
        worker.stop().await?;

        // The limit: PostgreSQL itself inserting the same rows into an identically indexed
        // table on the same server — the most any writer of `changes` could store here.
        elsewhere.exec("DROP TABLE IF EXISTS changes_limit").await?;
        elsewhere
            .exec("CREATE TABLE changes_limit (LIKE changes INCLUDING ALL)")
            .await?;
        // (VACUUM cannot run in the implicit transaction of a multi-statement query.)
        elsewhere.exec("VACUUM ANALYZE changes").await?;
        let started = Instant::now();
        elsewhere
            .exec("INSERT INTO changes_limit SELECT * FROM changes")
            .await?;
        limit.0.push(total as f64 / started.elapsed().as_secs_f64());
        elsewhere.exec("DROP TABLE changes_limit").await?;
        copy.0.push(binary_copy_rate(&elsewhere).await?);

        elsewhere.exec("TRUNCATE changes").await?;

        for ((mut choice, (_, apply)), samples) in
            choice_configs.into_iter().zip(&choices).zip(&mut chosen)
        {
            apply(&mut choice);
            let slot = choice.slot.clone();
            let started = Instant::now();
            let worker = InProcessWorker::start(choice);
            worker.wait_for(total, Duration::from_secs(600)).await?;
            samples
                .0
                .push(total as f64 / started.elapsed().as_secs_f64());
            worker.stop().await?;
            elsewhere.exec("TRUNCATE changes").await?;
            sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(slot)
                .execute(&db.pool)
                .await?;
        }
        // (Each worker's start creates or drops the image indexes as its configuration says.)

        for slot in [&worker_slot, &elsewhere_slot, &raw_slot] {
            sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(slot)
                .execute(&db.pool)
                .await?;
        }
        db.exec("TRUNCATE changes, events").await?;
        elsewhere.exec("TRUNCATE changes").await?;
    }
    let choice_rows = choices.iter().zip(&chosen).map(|((what, _), samples)| {
        Row::ratio(
            "P4-choice",
            &format!("… `changes` in another database, {what}"),
            raw.show("changes/s"),
            samples.show("changes/s"),
            &samples.ratios_to(&raw),
            Goal::None,
        )
    });
    let mut rows = vec![
        Row::ratio(
            "P4",
            &format!(
                "worker throughput, changes/s into `changes` ÷ raw pg_recvlogical receive rate \
                 ({} one-row transactions + one of {} rows)",
                sizes.small_transactions, sizes.large_transaction_rows
            ),
            raw.show("changes/s"),
            ours.show("changes/s"),
            &ours.ratios_to(&raw),
            Goal::AtLeast(0.5),
        ),
        Row::ratio(
            "P4-ref",
            "… the same with `changes` in another database of the server (`--destination-url`)",
            raw.show("changes/s"),
            ours_elsewhere.show("changes/s"),
            &ours_elsewhere.ratios_to(&raw),
            Goal::None,
        ),
        Row::ratio(
            "P4-limit",
            "… the worker into another database ÷ PostgreSQL's own `INSERT … SELECT` of the same rows into an identically indexed table there (the most any writer could store here)",
            limit.show("changes/s"),
            ours_elsewhere.show("changes/s"),
            &ours_elsewhere.ratios_to(&limit),
            Goal::AtLeast(0.8),
        ),
        Row::ratio(
            "P4-copy",
            "… binary `COPY` of the same rows (PostgreSQL's own binary encoding of them, sent back over one connection with `TCP_NODELAY`) into an identically indexed table ÷ the `INSERT … SELECT` of P4-limit: the fastest shape a writer could send",
            limit.show("changes/s"),
            copy.show("changes/s"),
            &copy.ratios_to(&limit),
            Goal::None,
        ),
        Row {
            id: "P4-detail".to_owned(),
            what: "worker time per change (same database): stream task (decode, JSON, stitch) / writer (insert, indexes, commit)".to_owned(),
            baseline: format!("{} µs", human(decode_us.median())),
            tracked: format!("{} µs", human(write_us.median())),
            ratio: None,
            goal: Goal::None,
            verdict: Verdict::NotApplicable,
        },
    ];
    rows.extend(choice_rows);
    Ok(rows)
}

/// The rate of a binary `COPY` of every row of `changes` in `db` into an identically indexed
/// table: the rows read out in PostgreSQL's binary format first (not timed), then sent back in
/// the chunks they came in, over one sqlx connection (which sets `TCP_NODELAY`).
async fn binary_copy_rate(db: &Database) -> anyhow::Result<f64> {
    use futures_util::TryStreamExt as _;

    db.exec("DROP TABLE IF EXISTS changes_copy").await?;
    db.exec("CREATE TABLE changes_copy (LIKE changes INCLUDING ALL)")
        .await?;
    let mut conn = db.pool.acquire().await?;
    let chunks: Vec<_> = conn
        .copy_out_raw("COPY changes TO STDOUT (FORMAT binary)")
        .await?
        .try_collect()
        .await?;
    let started = Instant::now();
    let mut copy_in = conn
        .copy_in_raw("COPY changes_copy FROM STDIN (FORMAT binary)")
        .await?;
    for chunk in chunks {
        copy_in.send(chunk).await?;
    }
    let rows = copy_in.finish().await?;
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    db.exec("DROP TABLE changes_copy").await?;
    Ok(rate)
}

/// P5: commit → row visible in `changes` at a steady 1 000 writes/s: p50 and p99 of
/// `created_at - committed_at` (both from the server's clock; `created_at` is the start of the
/// worker's write transaction).
pub(crate) async fn p5_latency(env: &Env, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let db = env.database("bench_p5").await?;
    db.exec(EVENTS_TABLE).await?;
    bemi_sqlx::migration::migrate(&db.pool, Default::default()).await?;
    let bemi = BemiPool::new(db.pool.clone());
    let worker = InProcessWorker::start(config(&db, "bench_latency"));
    let connected = Instant::now();
    while !worker.metrics.is_connected() {
        anyhow::ensure!(
            connected.elapsed() < Duration::from_secs(60),
            "the worker did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let per_writer = paced_writers(&bemi, sizes).await?;
    worker
        .wait_for(per_writer * 4, Duration::from_secs(120))
        .await?;
    worker.stop().await?;
    let mut latencies: Vec<f64> = sqlx::query_scalar(
        "SELECT (EXTRACT(EPOCH FROM created_at - committed_at) * 1000)::float8 FROM changes",
    )
    .fetch_all(&db.pool)
    .await?;
    let p50 = percentile(&mut latencies, 50.0);
    let p99 = percentile(&mut latencies, 99.0);
    let row = |id: &str, what: &str, value: f64, bound: f64| Row {
        id: id.to_owned(),
        what: what.to_owned(),
        baseline: "—".to_owned(),
        tracked: format!("{} ms", human(value)),
        ratio: None,
        goal: Goal::Text(if bound < 100.0 {
            "≤ 50 ms"
        } else {
            "≤ 250 ms"
        }),
        verdict: Verdict::of(value <= bound),
    };
    Ok(vec![
        row(
            "P5",
            "commit → visible in `changes` at 1 000 writes/s, p50",
            p50,
            50.0,
        ),
        row(
            "P5",
            "commit → visible in `changes` at 1 000 writes/s, p99",
            p99,
            250.0,
        ),
    ])
}

/// P6: peak RSS of a `bemi` worker process while it ingests one transaction of
/// `sizes.memory_rows` rows.
pub(crate) async fn p6_memory(env: &Env, sizes: &Sizes) -> anyhow::Result<Row> {
    let db = env.database("bench_p6").await?;
    db.exec("CREATE TABLE big (id int PRIMARY KEY, pad text NOT NULL)")
        .await?;
    let slot = "bench_memory";
    let config = config(&db, slot);
    Worker::new(config.clone()).prepare().await?;
    db.exec(&format!(
        "INSERT INTO big SELECT i, md5(i::text) || md5((i + 1)::text) FROM generate_series(1, {}) i",
        sizes.memory_rows
    ))
    .await?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--worker-child", &db.url, slot])
        .kill_on_drop(true)
        .spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("the worker child has no pid"))?;
    let started = Instant::now();
    let mut peak_kib = 0u64;
    loop {
        peak_kib = peak_kib.max(peak_rss_kib(pid).unwrap_or(0));
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('changes') IS NOT NULL")
            .fetch_one(&db.pool)
            .await?;
        let written: i64 = if exists {
            sqlx::query_scalar("SELECT count(*) FROM changes")
                .fetch_one(&db.pool)
                .await?
        } else {
            0
        };
        if written >= i64::from(sizes.memory_rows) {
            break;
        }
        anyhow::ensure!(child.try_wait()?.is_none(), "the worker child exited early");
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "the worker child is too slow"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    peak_kib = peak_kib.max(peak_rss_kib(pid).unwrap_or(0));
    child.kill().await?;
    let mib = peak_kib as f64 / 1024.0;
    Ok(Row {
        id: "P6".to_owned(),
        what: format!(
            "worker peak RSS while ingesting one {}-row transaction",
            sizes.memory_rows
        ),
        baseline: "—".to_owned(),
        tracked: format!("{} MiB", human(mib)),
        ratio: None,
        goal: Goal::Text("≤ 256 MiB"),
        verdict: Verdict::of(mib <= 256.0),
    })
}

/// `VmHWM` of a process: its peak resident set size, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The worker child of P6: captures `slot` of `url` until it is killed.
pub(crate) async fn worker_child(url: String, slot: String) -> anyhow::Result<()> {
    Worker::new(WorkerConfig::new(url).slot(slot))
        .spawn()
        .join()
        .await?;
    Ok(())
}

/// The latency rows' load: 4 writers, each inserting events at 250 writes/s for the latency
/// time; how many each wrote.
pub(crate) async fn paced_writers(bemi: &BemiPool, sizes: &Sizes) -> anyhow::Result<u64> {
    let per_writer = (sizes.latency_time.as_secs_f64() * 250.0) as u64;
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..4u64 {
        let bemi = bemi.clone();
        writers.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(4));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for n in 0..per_writer {
                tick.tick().await;
                insert_event(&bemi, writer * 1_000_000 + n).await?;
            }
            Ok::<_, sqlx::Error>(())
        });
    }
    while let Some(result) = writers.join_next().await {
        result??;
    }
    Ok(per_writer)
}
