//! P9: what tamper evidence costs. P9-chain: storing batches of changes into `changes` with
//! the hash chain (the JSON's canonical text computed by the writer and checked by the server
//! in the insert, one more round trip per batch for the re-delivery check, SHA-256 per change,
//! the head read and recorded) ÷ without it (`ChangeBatch::insert_from`, what
//! a writer did before). P9-sign: single-row tracked writes, each in its transaction (the
//! message carrier either way), with a context key (HMAC-SHA256 per emitted context) and
//! without: CPU per write (the server's and this process's, from `/proc`, as P2-cpu reads it),
//! off ÷ on — throughput on this shared machine swung from 0.92 to 1.09 between runs.

use std::time::Instant;

use bemi_audit::chain;
use bemi_audit::store::{ChangeBatch, NewChange};
use bemi_audit::{Operation, schema};
use bemi_core::signing::{self, ContextKey};
use serde_json::json;
use sqlx::Connection as _;

use crate::cpu::CpuMeter;
use crate::env::{Env, Sizes};
use crate::report::{Goal, Row};
use crate::stats::{Samples, human, interleaved, interleaved_rounds};

/// Changes per batch (the worker's batches are up to 10 000 rows; the store's 256 messages).
const BATCH: usize = 500;

/// The rows of one batch: `after` images of a todo-like table, a context with a user.
fn rows(round: usize, base: i64) -> Vec<(String, String, String)> {
    (0..BATCH)
        .map(|i| {
            let id = base + i as i64;
            (
                id.to_string(),
                json!({"id": id, "task": format!("task {round}.{i}"), "is_completed": false, "weight": 1.5})
                    .to_string(),
                json!({"user_id": 187_234, "endpoint": "/todo", "method": "POST",
                       "SQL": "INSERT INTO todo (task) VALUES ($1)"})
                .to_string(),
            )
        })
        .collect()
}

fn batch(rows: &[(String, String, String)], base: i64) -> ChangeBatch<'_> {
    let now = sqlx::types::chrono::Utc::now();
    let mut batch = ChangeBatch::default();
    for (i, (key, after, context)) in rows.iter().enumerate() {
        batch.push(NewChange {
            primary_key: Some(key),
            before: "{}",
            after,
            context,
            schema: "public",
            table: "todo",
            operation: Operation::Create,
            committed_at: now,
            queued_at: now,
            transaction_id: base + i as i64,
            position: base + i as i64,
        });
    }
    batch
}

pub(crate) async fn p9_tamper(env: &Env, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let db = env.database("bench_tamper").await?;
    let mut conn = sqlx::PgConnection::connect(&db.url).await?;
    {
        let mut tx = conn.begin().await?;
        schema::prepare(&mut tx).await?;
        tx.commit().await?;
    }
    let batches = (sizes.small_transactions as usize / BATCH).clamp(2, 40);
    let rounds = sizes.rounds;
    let chain_name = chain::worker_chain(None, "bench");
    let (off, on) = {
        let conn = std::sync::Arc::new(tokio::sync::Mutex::new(conn));
        let next = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(1));
        let plain = {
            let (conn, next) = (conn.clone(), next.clone());
            move || {
                let (conn, next) = (conn.clone(), next.clone());
                async move {
                    let mut conn = conn.lock().await;
                    let started = Instant::now();
                    for round in 0..batches {
                        let base =
                            next.fetch_add(BATCH as i64, std::sync::atomic::Ordering::Relaxed);
                        let rows = rows(round, base);
                        let batch = batch(&rows, base);
                        let mut tx = conn.begin().await?;
                        batch.insert_from(None, "bench", &mut tx).await?;
                        tx.commit().await?;
                    }
                    Ok((batches * BATCH) as f64 / started.elapsed().as_secs_f64())
                }
            }
        };
        let chained = {
            let (conn, next, chain_name) = (conn.clone(), next.clone(), chain_name.clone());
            move || {
                let (conn, next, chain_name) = (conn.clone(), next.clone(), chain_name.clone());
                async move {
                    let mut conn = conn.lock().await;
                    let started = Instant::now();
                    for round in 0..batches {
                        let base =
                            next.fetch_add(BATCH as i64, std::sync::atomic::Ordering::Relaxed);
                        let rows = rows(round, base);
                        let batch = batch(&rows, base);
                        let mut tx = conn.begin().await?;
                        let head = chain::read_head(&mut tx, &chain_name).await?;
                        let mut chained = batch
                            .prepare_chain(&chain_name, None, "bench", &mut tx)
                            .await?;
                        let new_head = chained.link(head);
                        chained.insert(&mut tx).await?;
                        chain::record_head(&mut tx, &chain_name, head, new_head).await?;
                        tx.commit().await?;
                    }
                    Ok((batches * BATCH) as f64 / started.elapsed().as_secs_f64())
                }
            }
        };
        interleaved(rounds, plain, chained).await?
    };
    let mut out = vec![Row::ratio(
        "P9-chain",
        &format!("store rate, batches of {BATCH} changes: hash chain on ÷ off"),
        off.show("changes/s"),
        on.show("changes/s"),
        &on.ratios_to(&off),
        Goal::AtLeast(0.95),
    )];

    // Signing: tracked single-row writes in their own transactions, key off ÷ on.
    db.exec(
        "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, \
         is_completed boolean NOT NULL DEFAULT false)",
    )
    .await?;
    let pool = bemi_sqlx::BemiPool::new(db.pool.clone());
    bemi_sqlx::migration::migrate(&db.pool, Default::default()).await?;
    // Enough writes that a round's CPU (read in 10 ms clock ticks) is not a handful of ticks.
    let writes = (sizes.small_transactions as usize / 4).clamp(30, 6_000);
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&db.pool)
        .await?;
    let meter = CpuMeter::for_backend(backend);
    // One round: the writes' throughput, and their CPU (server and this process) per write.
    let run = |key: Option<ContextKey>| {
        let pool = pool.clone();
        async move {
            signing::set_context_key(key);
            let cpu_before = meter.map(|meter| meter.read());
            let started = Instant::now();
            for n in 0..writes {
                bemi_core::context::scope(
                    json!({"user_id": n, "endpoint": "/todo", "method": "POST"}),
                    async {
                        let mut tx = pool.begin().await?;
                        sqlx::query("INSERT INTO todo (task) VALUES ($1)")
                            .bind("Sleep")
                            .execute(&mut tx)
                            .await?;
                        tx.commit().await?;
                        anyhow::Ok(())
                    },
                )
                .await?;
            }
            let rate = writes as f64 / started.elapsed().as_secs_f64();
            let cpu_per_write = meter.zip(cpu_before).map(|(meter, before)| {
                let used = meter.read() - before;
                (
                    used.server * 1e6 / writes as f64,
                    used.client * 1e6 / writes as f64,
                )
            });
            signing::set_context_key(None);
            anyhow::Ok((rate, cpu_per_write))
        }
    };
    let key = ContextKey::new(b"bench secret");
    let (unsigned, signed) = interleaved_rounds(rounds, || run(None), || run(Some(key))).await?;
    type Round = (f64, Option<(f64, f64)>);
    let rates = |rounds: &[Round]| Samples(rounds.iter().map(|r| r.0).collect());
    let cpu = |rounds: &[Round], part: fn((f64, f64)) -> f64| {
        rounds
            .iter()
            .map(|r| r.1.map(part))
            .collect::<Option<Vec<f64>>>()
            .map(Samples)
    };
    let total = |(server, client): (f64, f64)| server + client;
    match (cpu(&unsigned, total), cpu(&signed, total)) {
        (Some(cpu_unsigned), Some(cpu_signed)) => {
            let median = |rounds: &[Round], part: fn((f64, f64)) -> f64| {
                cpu(rounds, part).map_or_else(String::new, |samples| human(samples.median()))
            };
            out.push(Row::ratio(
                "P9-sign",
                &format!(
                    "tracked single-row writes (each in a transaction, sqlx), CPU per write (the \
                     server's + the client's): signed contexts off ÷ on, so that ≥ 1 is free \
                     ({} writes per round; server {} → {} µs, client {} → {} µs; throughput {} → \
                     {} writes/s)",
                    human(writes as f64),
                    median(&unsigned, |(server, _)| server),
                    median(&signed, |(server, _)| server),
                    median(&unsigned, |(_, client)| client),
                    median(&signed, |(_, client)| client),
                    human(rates(&unsigned).median()),
                    human(rates(&signed).median()),
                ),
                cpu_unsigned.show("µs"),
                cpu_signed.show("µs"),
                &cpu_unsigned.ratios_to(&cpu_signed),
                Goal::AtLeast(0.97),
            ));
        }
        _ => out.push(Row::ratio(
            "P9-sign",
            &format!(
                "tracked single-row writes (each in a transaction, sqlx): signed contexts on ÷ \
                 off, throughput (the server is not on this machine: no CPU reading; {} writes \
                 per round)",
                human(writes as f64)
            ),
            rates(&unsigned).show("writes/s"),
            rates(&signed).show("writes/s"),
            &rates(&signed).ratios_to(&rates(&unsigned)),
            Goal::AtLeast(0.97),
        )),
    }
    Ok(out)
}
