//! The tokio-postgres adapter over pooled clients (deadpool-postgres, bb8-postgres): every
//! write, through statements the pool caches included, carries its own context in the WAL.

use std::sync::Arc;

use anyhow::ensure;
use bemi_core::context;
use bemi_tests::wal::transactions;
use bemi_tests::{TestCluster, TestResult, ctx, todo_db};
use bemi_tokio_postgres::{BorrowedClient, BorrowedTransaction};
use serde_json::{Value, json};

const INSERT: &str = "INSERT INTO todo (task) VALUES ($1)";

fn deadpool(url: &str, size: usize) -> anyhow::Result<deadpool_postgres::Pool> {
    let config: tokio_postgres::Config = url.parse()?;
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    Ok(deadpool_postgres::Pool::builder(manager)
        .max_size(size)
        .build()?)
}

/// The `(message, task)` of each transaction of `entries` that wrote one row.
fn messages_by_task(
    entries: &[bemi_tests::WalEntry],
) -> anyhow::Result<Vec<(Option<Value>, String)>> {
    transactions(entries)?
        .into_iter()
        .map(|txn| {
            ensure!(txn.rows.len() == 1, "{txn:?}");
            let task = txn.rows[0]
                .1
                .split("task[text]:'")
                .nth(1)
                .and_then(|rest| rest.split('\'').next())
                .unwrap_or_default()
                .to_owned();
            ensure!(txn.messages.len() <= 1, "{txn:?}");
            Ok((txn.messages.first().cloned(), task))
        })
        .collect()
}

async fn deadpool_writes_through_cached_statements_carry_their_own_context(
    cluster: Arc<TestCluster>,
) -> TestResult {
    const TASKS: usize = 200;
    let db = todo_db(&cluster, "deadpool").await?;
    let pool = deadpool(&db.url, 4)?;
    let slot = db.wal_slot().await?;
    let mut handles = Vec::new();
    for n in 0..TASKS {
        let pool = pool.clone();
        handles.push(tokio::spawn(context::scope(
            ctx(json!({"user_id": n})),
            async move {
                let client = pool.get().await?;
                let insert = client.prepare_cached(INSERT).await?;
                BorrowedClient::new(&client)
                    .execute(&insert, &[&format!("task {n}")])
                    .await?;
                anyhow::Ok(())
            },
        )));
    }
    for handle in handles {
        handle.await??;
    }
    // A context-free write carries none.
    let client = pool.get().await?;
    BorrowedClient::new(&client)
        .execute(INSERT, &[&"no context"])
        .await?;
    let written = messages_by_task(&slot.read().await?)?;
    ensure!(written.len() == TASKS + 1, "{} transactions", written.len());
    for (message, task) in written {
        match task.strip_prefix("task ") {
            Some(n) => ensure!(
                message.as_ref().map(|m| m["user_id"].to_string()) == Some(n.to_owned()),
                "{task}: {message:?}"
            ),
            None => ensure!(message.is_none(), "{task}: {message:?}"),
        }
    }
    Ok(())
}
e2e_test!(deadpool_writes_through_cached_statements_carry_their_own_context);

async fn deadpool_transactions_keep_each_statements_context(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "deadpool_tx").await?;
    let pool = deadpool(&db.url, 2)?;
    let slot = db.wal_slot().await?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let insert = tx.prepare_cached(INSERT).await?;
    let bemi = BorrowedTransaction::new(&tx);
    context::scope(ctx(json!({"user_id": 1})), async {
        bemi.execute(&insert, &[&"first"]).await?;
        context::merge(json!({"step": 2}))?;
        bemi.execute(&insert, &[&"second"]).await?;
        anyhow::Ok(())
    })
    .await?;
    // Outside any scope: the row does not inherit the context.
    bemi.execute(&insert, &[&"third"]).await?;
    drop(bemi);
    tx.commit().await?;
    let txns = transactions(&slot.read().await?)?;
    ensure!(txns.len() == 1 && txns[0].rows.len() == 3, "{txns:#?}");
    let messages: Vec<Value> = txns[0]
        .messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.as_object_mut().map(|o| o.remove("SQL"));
            m
        })
        .collect();
    ensure!(
        messages
            == [
                json!({"user_id": 1}),
                json!({"user_id": 1, "step": 2}),
                json!({})
            ],
        "{messages:#?}"
    );
    Ok(())
}
e2e_test!(deadpool_transactions_keep_each_statements_context);

async fn bb8_writes_carry_their_own_context(cluster: Arc<TestCluster>) -> TestResult {
    const TASKS: usize = 100;
    let db = todo_db(&cluster, "bb8").await?;
    let manager = bb8_postgres::PostgresConnectionManager::new_from_stringlike(
        &db.url,
        tokio_postgres::NoTls,
    )?;
    let pool = bb8::Pool::builder().max_size(4).build(manager).await?;
    let slot = db.wal_slot().await?;
    let mut handles = Vec::new();
    for n in 0..TASKS {
        let pool = pool.clone();
        handles.push(tokio::spawn(context::scope(
            ctx(json!({"user_id": n})),
            async move {
                let client = pool.get().await?;
                BorrowedClient::new(&client)
                    .execute(INSERT, &[&format!("task {n}")])
                    .await?;
                anyhow::Ok(())
            },
        )));
    }
    for handle in handles {
        handle.await??;
    }
    let written = messages_by_task(&slot.read().await?)?;
    ensure!(written.len() == TASKS, "{} transactions", written.len());
    for (message, task) in written {
        let n = task.strip_prefix("task ").unwrap_or_default();
        ensure!(
            message.as_ref().map(|m| m["user_id"].to_string()) == Some(n.to_owned()),
            "{task}: {message:?}"
        );
    }
    Ok(())
}
e2e_test!(bb8_writes_carry_their_own_context);
