//! Both adapters through a real pgbouncer in transaction pooling mode (Debian's 1.18: no
//! protocol-level prepared statements): concurrent requests with distinct contexts, every write
//! attributed to its own context, no protocol error.

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use bemi_core::carrier::Carrier;
use bemi_core::context;
use bemi_dev::{Pgbouncer, PoolMode};
use bemi_sqlx::BemiPool;
use bemi_tests::{TestCluster, TestResult, todo_db};
use bemi_tokio_postgres::BemiClient;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Server connections pgbouncer keeps per database: far fewer than the clients.
const POOL_SIZE: u32 = 3;
const TASKS: i64 = 120;

async fn both_adapters_attribute_every_write_through_pgbouncer(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "pgbouncer").await?;
    let slot = db.wal_slot().await?;
    let upstream = db.url.clone();
    let bouncer = tokio::task::spawn_blocking(move || {
        Pgbouncer::start(&upstream, PoolMode::Transaction, POOL_SIZE)
    })
    .await??;
    let url = bouncer.url_for(&db.name);

    // sqlx, as a pgbouncer without protocol-level prepared statements needs it: no statement
    // cache (unnamed statements). Ten client connections share three server connections.
    let options = PgConnectOptions::from_str(&url)?.statement_cache_capacity(0);
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(options)
        .await?;
    let mut backends = std::collections::BTreeSet::new();
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut conn = pool.acquire().await?;
        // (The simple protocol: an extended-protocol query outside a transaction is what
        // pgbouncer 1.18 cannot route — its two Syncs may reach two server connections.)
        let row = sqlx::raw_sql("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await?;
        let pid: i32 = sqlx::Row::try_get(&row, 0)?;
        backends.insert(pid);
        held.push(conn);
    }
    drop(held);
    ensure!(
        backends.len() <= POOL_SIZE as usize,
        "not pooled: 10 clients saw {} server backends",
        backends.len()
    );
    // The message carrier for every write: sqlx's default puts a write outside a transaction
    // in a comment, whose two Syncs pgbouncer may split.
    let pool = BemiPool::new(pool).carrier(Carrier::Message);

    // tokio-postgres: one client shared by many tasks (autocommit writes, simple protocol:
    // tokio-postgres prepares named statements, which pgbouncer 1.18 cannot route outside a
    // transaction), and clients of their own for transactions.
    let connect = |url: String| async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        anyhow::Ok(BemiClient::new(client).transaction_pooler(true))
    };
    let shared = Arc::new(connect(url.clone()).await?);

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..TASKS {
        let (pool, shared, url) = (pool.clone(), Arc::clone(&shared), url.clone());
        tasks.spawn(context::scope(json!({"user_id": n}), async move {
            // sqlx: an autocommit write, and a transaction of two.
            sqlx::query("INSERT INTO todo (task) VALUES ($1)")
                .bind(format!("sqlx-{n}"))
                .execute(&pool)
                .await
                .context("sqlx autocommit")?;
            let mut tx = pool.begin().await.context("sqlx begin")?;
            for part in ["a", "b"] {
                sqlx::query("INSERT INTO todo (task) VALUES ($1)")
                    .bind(format!("sqlx-{n}{part}"))
                    .execute(&mut tx)
                    .await
                    .context("sqlx in a transaction")?;
            }
            tx.commit().await.context("sqlx commit")?;
            // tokio-postgres: the shared client, then a transaction on a client of its own.
            shared
                .batch_execute(&format!("INSERT INTO todo (task) VALUES ('tp-{n}')"))
                .await
                .context("tokio-postgres batch")?;
            if n % 4 == 0 {
                let mut own = connect(url).await?;
                let tx = own.transaction().await?;
                tx.execute(
                    "INSERT INTO todo (task) VALUES ($1)",
                    &[&format!("tp-{n}t")],
                )
                .await?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        }));
    }
    while let Some(done) = tasks.join_next().await {
        done?.with_context(|| format!("pgbouncer's log ends with:\n{}", bouncer.log_tail()))?;
    }

    let rows = bemi_tests::wal::stitched_contexts(&slot.read().await?)?
        .into_iter()
        .collect::<BTreeMap<_, _>>();
    let mut expected = 0;
    for n in 0..TASKS {
        let mut tasks = vec![
            format!("sqlx-{n}"),
            format!("sqlx-{n}a"),
            format!("sqlx-{n}b"),
            format!("tp-{n}"),
        ];
        if n % 4 == 0 {
            tasks.push(format!("tp-{n}t"));
        }
        for task in tasks {
            expected += 1;
            let context = rows
                .get(&task)
                .with_context(|| format!("{task} not written"))?;
            ensure!(*context == json!({"user_id": n}), "{task}: {context}");
        }
    }
    ensure!(
        rows.len() == expected,
        "{} rows, {expected} expected",
        rows.len()
    );
    drop(bouncer);
    Ok(())
}
e2e_test!(both_adapters_attribute_every_write_through_pgbouncer);
