//! The message carrier's semantics through the WAL: each write's rows take the context in scope
//! when it ran — nested scopes, a `merge` in the middle of a transaction, a write without
//! context after one with context, savepoints rolled back — for both adapters, and the comment
//! carrier gives the same stitching.

use std::sync::Arc;

use anyhow::ensure;
use bemi_core::carrier::Carrier;
use bemi_core::context;
use bemi_tests::{TestCluster, TestResult, todo_db};
use bemi_tokio_postgres::BemiClient;
use serde_json::{Value, json};

/// What every adapter must produce for the sequence of `sqlx_sequence` and
/// [`tokio_postgres_sequence`].
fn expected() -> Vec<(String, Value)> {
    [
        ("a", json!({"user_id": 1})),
        ("b", json!({"user_id": 2})),
        ("c", json!({})),
        ("d", json!({"user_id": 3})),
        ("e", json!({"user_id": 3, "step": 2})),
        ("g", json!({})),
        ("h", json!({})),
    ]
    .into_iter()
    .map(|(task, context)| (task.to_owned(), context))
    .collect()
}

const INSERT: &str = "INSERT INTO todo (task) VALUES ($1)";

/// The same transaction through the tokio-postgres adapter, its savepoint a nested
/// transaction.
async fn tokio_postgres_sequence(client: &mut BemiClient) -> anyhow::Result<()> {
    let mut tx = client.transaction().await?;
    context::scope(json!({"user_id": 1}), async {
        tx.execute(INSERT, &[&"a"]).await?;
        // (The query takes the context where it is made: inside the nested scope.)
        context::scope(json!({"user_id": 2}), async {
            tx.execute(INSERT, &[&"b"]).await
        })
        .await
    })
    .await?;
    tx.execute(INSERT, &[&"c"]).await?;
    context::scope(json!({"user_id": 3}), async {
        tx.execute(INSERT, &[&"d"]).await?;
        context::merge(json!({"step": 2}))?;
        tx.execute(INSERT, &[&"e"]).await?;
        anyhow::Ok(())
    })
    .await?;
    {
        let savepoint = tx.transaction().await?;
        savepoint.execute(INSERT, &[&"g"]).await?;
        context::scope(json!({"user_id": 4}), async {
            savepoint.execute(INSERT, &[&"f"]).await
        })
        .await?;
        savepoint.rollback().await?;
    }
    tx.execute(INSERT, &[&"g"]).await?;
    tx.execute(INSERT, &[&"h"]).await?;
    tx.commit().await?;
    Ok(())
}

// The sqlx adapter (beside tokio-postgres), on each sqlx line (`sqlx_0_9::`, `sqlx_0_8::`).
crate::lines::sqlx_lines! {
    /// One transaction through the sqlx adapter.
    async fn sqlx_sequence(pool: &bemi_sqlx::BemiPool) -> anyhow::Result<()> {
        let mut tx = pool.begin().await?;
        context::scope(json!({"user_id": 1}), async {
            sqlx::query(INSERT).bind("a").execute(&mut tx).await?;
            // A nested scope shadows the outer one.
            context::scope(json!({"user_id": 2}), async {
                sqlx::query(INSERT).bind("b").execute(&mut tx).await
            })
            .await
        })
        .await?;
        // No context: the rows do not inherit user 2.
        sqlx::query(INSERT).bind("c").execute(&mut tx).await?;
        context::scope(json!({"user_id": 3}), async {
            sqlx::query(INSERT).bind("d").execute(&mut tx).await?;
            context::merge(json!({"step": 2}))?;
            sqlx::query(INSERT).bind("e").execute(&mut tx).await?;
            anyhow::Ok(())
        })
        .await?;
        // A savepoint rolled back: its write (and its context) are gone...
        sqlx::query("SAVEPOINT s1").execute(&mut tx).await?;
        sqlx::query(INSERT).bind("g").execute(&mut tx).await?;
        context::scope(json!({"user_id": 4}), async {
            sqlx::query(INSERT).bind("f").execute(&mut tx).await
        })
        .await?;
        sqlx::query("ROLLBACK TO SAVEPOINT s1")
            .execute(&mut tx)
            .await?;
        // ...and the writes after it carry no context (not user 3's, not user 4's).
        sqlx::query(INSERT).bind("g").execute(&mut tx).await?;
        sqlx::query(INSERT).bind("h").execute(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn every_write_takes_the_context_in_scope_when_it_ran(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        let db = todo_db(&cluster, "carrier_semantics").await?;
        let slot = db.wal_slot().await?;
        for carrier in [Carrier::Auto, Carrier::Message, Carrier::Comment] {
            sqlx_sequence(&line::bemi_pool(&db).await?.carrier(carrier)).await?;
            let rows = bemi_tests::wal::stitched_contexts(&slot.read().await?)?;
            ensure!(rows == expected(), "sqlx, {carrier:?}: {rows:#?}");

            let mut client = BemiClient::new(db.tokio_postgres().await?).carrier(carrier);
            tokio_postgres_sequence(&mut client).await?;
            let rows = bemi_tests::wal::stitched_contexts(&slot.read().await?)?;
            ensure!(rows == expected(), "tokio-postgres, {carrier:?}: {rows:#?}");
        }
        Ok(())
    }
    e2e_test!(every_write_takes_the_context_in_scope_when_it_ran);
}

async fn a_shared_client_keeps_each_write_in_its_own_transaction(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "carrier_shared").await?;
    let slot = db.wal_slot().await?;
    let client = Arc::new(BemiClient::new(db.tokio_postgres().await?));
    // 200 tasks on one client: writes with a context (each wrapped in a transaction with its
    // message), writes without, and reads, all pipelined on one connection.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200_i64 {
        let client = Arc::clone(&client);
        tasks.spawn(async move {
            let task = format!("t{n}");
            if n % 4 == 3 {
                client.execute(INSERT, &[&task]).await?;
            } else {
                context::scope(json!({"user_id": n}), client.execute(INSERT, &[&task])).await?;
            }
            client.query("SELECT count(*) FROM todo", &[]).await?;
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let rows = bemi_tests::wal::stitched_contexts(&slot.read().await?)?;
    ensure!(rows.len() == 200, "{} rows", rows.len());
    for (task, context) in rows {
        let n: i64 = task[1..].parse()?;
        let expected = if n % 4 == 3 {
            json!({})
        } else {
            json!({"user_id": n})
        };
        ensure!(context == expected, "{task}: {context}");
    }
    // A failing write with a context (its own transaction) leaves no transaction open, in
    // either protocol.
    let null: Option<String> = None;
    let failed = context::scope(json!({"user_id": 1}), client.execute(INSERT, &[&null])).await;
    ensure!(failed.is_err(), "a NULL task must fail");
    let failed = context::scope(
        json!({"user_id": 1}),
        client.batch_execute("INSERT INTO todo (task) VALUES (NULL)"),
    )
    .await;
    ensure!(failed.is_err(), "a NULL task must fail");
    // (An aborted transaction left open would fail every later statement.)
    client.query_one("SELECT 1", &[]).await?;
    let open: i64 = client
        .query_one("SELECT count(*) FROM todo", &[])
        .await
        .map(|row| row.get(0))?;
    ensure!(open == 200);
    Ok(())
}
e2e_test!(a_shared_client_keeps_each_write_in_its_own_transaction);
