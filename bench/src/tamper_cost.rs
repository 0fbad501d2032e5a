//! P9: what tamper evidence costs. P9-chain: storing batches of changes into `changes` with
//! the hash chain (one more round trip per batch for the canonical JSON and the re-delivery
//! check, SHA-256 per change, the head recorded) ÷ without it (`ChangeBatch::insert_from`, what
//! a writer did before). P9-sign: single-row tracked writes, each in its transaction (the
//! message carrier either way), with a context key (HMAC-SHA256 per emitted context) ÷ without.

use std::time::Instant;

use bemi_audit::chain;
use bemi_audit::store::{ChangeBatch, NewChange};
use bemi_audit::{Operation, schema};
use bemi_core::signing::{self, ContextKey};
use serde_json::json;
use sqlx::Connection as _;

use crate::env::{Env, Sizes};
use crate::report::{Goal, Row};
use crate::stats::{human, interleaved};

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
    let writes = (sizes.small_transactions as usize / 10).clamp(30, 2_000);
    let run = |key: Option<ContextKey>| {
        let pool = pool.clone();
        async move {
            signing::set_context_key(key);
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
            signing::set_context_key(None);
            anyhow::Ok(rate)
        }
    };
    let key = ContextKey::new(b"bench secret");
    let (unsigned, signed) = interleaved(rounds, || run(None), || run(Some(key))).await?;
    out.push(Row::ratio(
        "P9-sign",
        &format!(
            "tracked single-row writes (each in a transaction, sqlx): signed contexts on ÷ off \
             ({} writes per round)",
            human(writes as f64)
        ),
        unsigned.show("writes/s"),
        signed.show("writes/s"),
        &signed.ratios_to(&unsigned),
        Goal::AtLeast(0.97),
    ));
    Ok(out)
}
