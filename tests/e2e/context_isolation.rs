//! 1 000 concurrent tasks with distinct contexts: every write's message carries its own task's
//! context.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use bemi_core::context;
use bemi_tests::{TestCluster, TestResult, ctx};
use serde_json::json;

const TASKS: i32 = 1000;

// On each sqlx line (`sqlx_0_9::`, `sqlx_0_8::`).
crate::lines::sqlx_lines! {
    async fn concurrent_tasks_keep_their_own_context_through_the_wal(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        let db = cluster
            .tracked_database(
                "isolation",
                "CREATE TABLE isolation (id bigserial PRIMARY KEY, n int NOT NULL)",
            )
            .await?;
        let slot = db.wal_slot().await?;
        let pool = line::bemi_pool(&db).await?;

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

        // Each write is its own transaction: its one message, then its one row.
        let mut seen = BTreeMap::new();
        for txn in slot.read_transactions().await? {
            let [(_, data)] = txn.rows.as_slice() else {
                anyhow::bail!("one row per transaction expected: {txn:?}");
            };
            let n: i64 = data
                .split_once("n[integer]:")
                .and_then(|(_, n)| n.trim().parse().ok())
                .with_context(|| format!("row {data}"))?;
            let [context] = txn.messages.as_slice() else {
                anyhow::bail!(
                    "row {n} has {} messages: {:?}",
                    txn.messages.len(),
                    txn.messages
                );
            };
            ensure!(
                context["task"] == json!(n),
                "row {n} got the context {context}"
            );
            ensure!(seen.insert(n, ()).is_none(), "row {n} twice");
        }
        ensure!(seen.len() == TASKS as usize, "{} rows", seen.len());
        Ok(())
    }
    e2e_test!(concurrent_tasks_keep_their_own_context_through_the_wal);
}
