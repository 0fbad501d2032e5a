//! 1 000 concurrent tasks with distinct contexts: every write's message carries its own task's
//! context.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use bemi_core::context;
use bemi_tests::{TestCluster, TestResult, WalEntry, ctx};
use serde_json::{Value, json};

const TASKS: i32 = 1000;

pub async fn concurrent_tasks_keep_their_own_context_through_the_wal(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("isolation").await?;
    db.exec("CREATE TABLE isolation (id bigserial PRIMARY KEY, n int NOT NULL)")
        .await?;
    db.migrate().await?;
    let slot = db.wal_slot().await?;
    let pool = db.bemi_pool();

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..TASKS {
        let pool = pool.clone();
        tasks.spawn(context::scope(ctx(json!({"task": n})), async move {
            // Yield between reading and writing so that tasks interleave on the workers.
            tokio::task::yield_now().await;
            sqlx::query("INSERT INTO isolation (n) VALUES ($1)")
                .bind(n)
                .execute(&pool)
                .await
        }));
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }

    // Pair each row with the message before it in its transaction.
    let entries = slot.read().await?;
    let mut seen = BTreeMap::new();
    let mut pending: Option<Value> = None;
    for entry in &entries {
        match entry {
            WalEntry::Begin => pending = None,
            WalEntry::Message { content, .. } => pending = Some(serde_json::from_str(content)?),
            WalEntry::Change { data, .. } => {
                let n: i64 = data
                    .split_once("n[integer]:")
                    .and_then(|(_, n)| n.trim().parse().ok())
                    .with_context(|| format!("row {data}"))?;
                let context = pending
                    .take()
                    .with_context(|| format!("row {n} has no message"))?;
                ensure!(
                    context["task"] == json!(n),
                    "row {n} got the context {context}"
                );
                ensure!(seen.insert(n, ()).is_none(), "row {n} twice");
            }
            WalEntry::Commit => {}
        }
    }
    ensure!(seen.len() == TASKS as usize, "{} rows", seen.len());
    Ok(())
}
