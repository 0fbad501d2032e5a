//! P7: capture and storage through NATS JetStream (`bemi worker --sink` + one `bemi store`)
//! against the direct worker: end-to-end throughput on the P4 workload, and commit → visible
//! latency at 1 000 writes/s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bemi_core::context;
use bemi_dev::NatsServer;
use bemi_nats::{NatsConfig, NatsSink, Store, StoreConfig, StoreMetrics};
use bemi_sqlx::BemiPool;
use bemi_worker::Worker;
use tokio_util::sync::CancellationToken;

use crate::env::{Database, Env, Sizes};
use crate::report::{Goal, Row, Verdict};
use crate::stats::{Samples, human, percentile};
use crate::worker_speed::{
    EVENTS_TABLE, InProcessWorker, config, insert_event, paced_writers, request,
};

/// A store running in this process.
struct InProcessStore {
    metrics: Arc<StoreMetrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), bemi_nats::NatsError>>,
}

impl InProcessStore {
    fn start(nats: &NatsConfig, destination: &Database) -> Self {
        let store = Store::new(StoreConfig::new(nats.clone(), destination.url.clone()));
        let metrics = store.metrics();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { store.run(shutdown).await }
        });
        Self {
            metrics,
            shutdown,
            task,
        }
    }

    async fn wait_for(&self, changes: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.metrics.changes_stored() < changes {
            anyhow::ensure!(!self.task.is_finished(), "the store stopped");
            anyhow::ensure!(
                Instant::now() < deadline,
                "the store wrote {} of {changes} changes in {timeout:?}",
                self.metrics.changes_stored()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// The P4 workload: 4 writers of one-row transactions, then one large transaction.
async fn workload(bemi: &BemiPool, sizes: &Sizes) -> anyhow::Result<u64> {
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
             SELECT 'import', jsonb_build_object('row', i), i / 100.0 FROM generate_series(1, $1) i",
        )
        .bind(sizes.large_transaction_rows as i32)
        .execute(bemi)
        .await
    })
    .await?;
    Ok(u64::from(sizes.small_transactions) + u64::from(sizes.large_transaction_rows))
}

/// P7: throughput through JetStream ÷ the direct worker (both writing `changes` into another
/// database of the server), and the latency of the two-process path.
pub(crate) async fn p7_jetstream(env: &Env, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let mut nats = tokio::task::spawn_blocking(NatsServer::start).await??;
    let db = env.database("bench_p7").await?;
    db.exec(EVENTS_TABLE).await?;
    bemi_sqlx::migration::migrate(&db.pool, Default::default()).await?;
    let audit = env.database("bench_p7_audit").await?;
    let bemi = BemiPool::new(db.pool.clone());
    let (mut direct, mut through) = (Samples::default(), Samples::default());
    for round in 0..sizes.rounds.min(3) {
        let direct_config =
            config(&db, &format!("bench_direct_{round}")).destination(audit.url.clone());
        let nats_config = NatsConfig::new(nats.url()).stream(format!("bench{round}"));
        let through_config = config(&db, &format!("bench_nats_{round}"));
        let through_nats =
            || Worker::with_sink(through_config.clone(), NatsSink::new(nats_config.clone()));
        Worker::new(direct_config.clone()).prepare().await?;
        through_nats().prepare().await?;
        let total = workload(&bemi, sizes).await?;

        let started = Instant::now();
        let worker = InProcessWorker::start(direct_config);
        worker.wait_for(total, Duration::from_secs(600)).await?;
        direct
            .0
            .push(total as f64 / started.elapsed().as_secs_f64());
        worker.stop().await?;
        audit.exec("TRUNCATE changes").await?;

        let started = Instant::now();
        let worker = InProcessWorker::spawn(through_nats());
        let store = InProcessStore::start(&nats_config, &audit);
        store.wait_for(total, Duration::from_secs(600)).await?;
        through
            .0
            .push(total as f64 / started.elapsed().as_secs_f64());
        worker.stop().await?;
        store.stop().await?;
        audit.exec("TRUNCATE changes").await?;

        for slot in [
            format!("bench_direct_{round}"),
            format!("bench_nats_{round}"),
        ] {
            sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(slot)
                .execute(&db.pool)
                .await?;
        }
        db.exec("TRUNCATE events").await?;
    }

    // Latency: 4 writers at 250 writes/s each, the worker and one store running.
    let nats_config = NatsConfig::new(nats.url()).stream("bench_latency");
    let latency_config = config(&db, "bench_nats_latency");
    let worker = InProcessWorker::spawn(Worker::with_sink(
        latency_config,
        NatsSink::new(nats_config.clone()),
    ));
    let store = InProcessStore::start(&nats_config, &audit);
    let connected = Instant::now();
    while !(worker.metrics.is_connected() && store.metrics.partitions_owned() > 0) {
        anyhow::ensure!(
            connected.elapsed() < Duration::from_secs(60),
            "the worker or the store did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let per_writer = paced_writers(&bemi, sizes).await?;
    store
        .wait_for(per_writer * 4, Duration::from_secs(120))
        .await?;
    worker.stop().await?;
    store.stop().await?;
    let mut latencies: Vec<f64> = sqlx::query_scalar(
        "SELECT (EXTRACT(EPOCH FROM created_at - committed_at) * 1000)::float8 FROM changes",
    )
    .fetch_all(&audit.pool)
    .await?;
    tokio::task::spawn_blocking(move || nats.stop()).await??;
    let p50 = percentile(&mut latencies, 50.0);
    let p99 = percentile(&mut latencies, 99.0);
    let latency = |what: &str, value: f64, goal: Goal, met: Option<bool>| Row {
        id: "P7".to_owned(),
        what: what.to_owned(),
        baseline: "—".to_owned(),
        tracked: format!("{} ms", human(value)),
        ratio: None,
        goal,
        verdict: met.map_or(Verdict::NotApplicable, Verdict::of),
    };
    Ok(vec![
        Row::ratio(
            "P7",
            &format!(
                "end-to-end changes/s through NATS JetStream (worker --sink + one store) ÷ the \
                 direct worker, both into another database ({} one-row transactions + one of {} \
                 rows)",
                sizes.small_transactions, sizes.large_transaction_rows
            ),
            direct.show("changes/s"),
            through.show("changes/s"),
            &through.ratios_to(&direct),
            Goal::None,
        ),
        latency(
            "through NATS: commit → visible in `changes` at 1 000 writes/s, p50",
            p50,
            Goal::None,
            None,
        ),
        latency(
            "through NATS: commit → visible in `changes` at 1 000 writes/s, p99",
            p99,
            Goal::Text("≤ 250 ms"),
            Some(p99 <= 250.0),
        ),
    ])
}
