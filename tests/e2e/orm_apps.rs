//! The todo apps on SeaORM and on a deadpool-postgres pool over real HTTP (1 000 concurrent
//! requests keep their contexts apart; a hostile request changes nothing but its row), and the
//! SeaORM integration's transactions: each statement carries the context in scope when it ran,
//! a write without one after one with one inherits nothing, a write outside any scope emits
//! nothing.

use std::sync::Arc;

use anyhow::ensure;
use bemi_core::context;
use bemi_tests::{TestCluster, TestResult, ctx, todo_db};
use serde_json::{Value, json};

use crate::serve;
use crate::todo_hostile::{assert_survived, post_hostile};
use crate::todo_load::{assert_each_write_has_its_own_user_with, burst};

/// The INSERT an ORM renders (SeaORM and Diesel quote the table).
fn seaorm_insert(sql: Option<&str>) -> bool {
    sql.is_some_and(|sql| sql.starts_with(r#"INSERT INTO "todo""#))
}

/// The axum todo app on `router`'s store under 1 000 concurrent requests: every write carries
/// its own request's user, and its statement passes `statement`.
async fn app_keeps_1000_concurrent_contexts_apart(
    cluster: &TestCluster,
    hint: &str,
    router: fn(String) -> bemi_examples::startup::RouterFuture,
    statement: fn(Option<&str>) -> bool,
) -> TestResult {
    let db = todo_db(cluster, hint).await?;
    let slot = db.wal_slot().await?;
    let server = serve::axum(router(db.url.clone()).await?).await?;
    burst(&server).await?;
    server.stop().await;
    assert_each_write_has_its_own_user_with(&slot, statement).await
}

async fn seaorm_todo_app_keeps_1000_concurrent_contexts_apart(
    cluster: Arc<TestCluster>,
) -> TestResult {
    app_keeps_1000_concurrent_contexts_apart(
        &cluster,
        "seaorm_load",
        bemi_examples::store::seaorm::router,
        seaorm_insert,
    )
    .await
}
e2e_test!(seaorm_todo_app_keeps_1000_concurrent_contexts_apart);

async fn diesel_todo_app_keeps_1000_concurrent_contexts_apart(
    cluster: Arc<TestCluster>,
) -> TestResult {
    app_keeps_1000_concurrent_contexts_apart(
        &cluster,
        "diesel_load",
        bemi_examples::store::diesel::router,
        seaorm_insert,
    )
    .await
}
e2e_test!(diesel_todo_app_keeps_1000_concurrent_contexts_apart);

async fn diesel_async_todo_app_keeps_1000_concurrent_contexts_apart(
    cluster: Arc<TestCluster>,
) -> TestResult {
    app_keeps_1000_concurrent_contexts_apart(
        &cluster,
        "diesel_async_load",
        bemi_examples::store::diesel_async::router,
        seaorm_insert,
    )
    .await
}
e2e_test!(diesel_async_todo_app_keeps_1000_concurrent_contexts_apart);

async fn deadpool_todo_app_keeps_1000_concurrent_contexts_apart(
    cluster: Arc<TestCluster>,
) -> TestResult {
    // A statement the pool prepared: its text is not the adapter's to know.
    app_keeps_1000_concurrent_contexts_apart(
        &cluster,
        "deadpool_load",
        bemi_examples::store::deadpool::router,
        |sql| sql.is_none(),
    )
    .await
}
e2e_test!(deadpool_todo_app_keeps_1000_concurrent_contexts_apart);

async fn hostile_requests_through_the_orm_and_pool_apps_change_nothing_but_their_row(
    cluster: Arc<TestCluster>,
) -> TestResult {
    for (hint, app) in [
        (
            "seaorm_hostile",
            bemi_examples::store::seaorm::router as fn(String) -> _,
        ),
        ("deadpool_hostile", bemi_examples::store::deadpool::router),
        ("diesel_hostile", bemi_examples::store::diesel::router),
        (
            "diesel_async_hostile",
            bemi_examples::store::diesel_async::router,
        ),
    ] {
        let db = todo_db(&cluster, hint).await?;
        let slot = db.wal_slot().await?;
        let server = serve::axum(app(db.url.clone()).await?).await?;
        post_hostile(&server).await?;
        server.stop().await;
        assert_survived(&db, &slot).await?;
    }
    Ok(())
}
e2e_test!(hostile_requests_through_the_orm_and_pool_apps_change_nothing_but_their_row);

// The SeaORM integration's transactions, on each line (`seaorm_2::`, `seaorm_1::`).
crate::lines::seaorm_lines! {
    use self::sea_orm::entity::prelude::*;
    use self::sea_orm::ActiveValue::Set;

    fn new_todo(task: &str) -> line::todo::ActiveModel {
        line::todo::ActiveModel {
            task: Set(task.to_owned()),
            ..Default::default()
        }
    }

    async fn seaorm_transactions_keep_each_statements_context(cluster: Arc<TestCluster>) -> TestResult {
        let db = todo_db(&cluster, "seaorm_tx").await?;
        let slot = db.wal_slot().await?;
        let orm = bemi_seaorm::BemiConnection::new(sea_orm::Database::connect(&db.url).await?);
        let tx = orm.begin().await?;
        context::scope(ctx(json!({"user_id": 1})), async {
            new_todo("a").insert(&tx).await?;
            context::merge(json!({"step": 2}))?;
            new_todo("b").insert(&tx).await?;
            // A savepoint, rolled back with its write and its context.
            let savepoint = tx.begin().await?;
            context::scope(
                ctx(json!({"user_id": 2})),
                new_todo("gone").insert(&savepoint),
            )
            .await?;
            savepoint.rollback().await?;
            anyhow::Ok(())
        })
        .await?;
        // Outside any scope: inherits nothing.
        new_todo("c").insert(&tx).await?;
        tx.commit().await?;
        // Outside any scope and any transaction: no message at all.
        new_todo("d").insert(&orm).await?;
        // The `transaction` helper, with a context.
        context::scope(ctx(json!({"user_id": 3})), async {
            orm.transaction::<_, (), DbErr>(|tx| {
                Box::pin(async move {
                    line::todo::Entity::update_many()
                        .col_expr(line::todo::Column::IsCompleted, Expr::value(true))
                        .filter(line::todo::Column::Task.eq("a"))
                        .exec(tx)
                        .await?;
                    Ok(())
                })
            })
            .await
        })
        .await?;

        let txns = slot.read_transactions().await?;
        ensure!(txns.len() == 3, "{txns:#?}");
        // (The savepoint's message went with it.)
        ensure_transaction(&txns[0], &scoped_merged_then_outside(), 3)?;
        ensure_transaction(&txns[1], &[], 1)?;
        ensure_transaction(&txns[2], &[json!({"user_id": 3})], 1)
    }
    e2e_test!(seaorm_transactions_keep_each_statements_context);
}

/// The contexts of the transactions tests: a write in `{"user_id": 1}`, one after merging
/// `{"step": 2}`, one outside the scope (which inherits nothing).
fn scoped_merged_then_outside() -> [Value; 3] {
    [
        json!({"user_id": 1}),
        json!({"user_id": 1, "step": 2}),
        json!({}),
    ]
}

/// `txn` holds `rows` rows and exactly the messages `expected` (without the library's `SQL`
/// key), in order.
fn ensure_transaction(txn: &bemi_tests::wal::Txn, expected: &[Value], rows: usize) -> TestResult {
    ensure!(
        contexts(txn) == expected && txn.rows.len() == rows,
        "expected {rows} rows and {expected:?}: {txn:#?}"
    );
    Ok(())
}

/// The messages of each transaction, without the library's `SQL` key.
fn contexts(txn: &bemi_tests::wal::Txn) -> Vec<Value> {
    txn.messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.as_object_mut().map(|o| o.remove("SQL"));
            m
        })
        .collect()
}

async fn diesel_transactions_keep_each_statements_context(cluster: Arc<TestCluster>) -> TestResult {
    use bemi_diesel::BemiPgConnection;
    use bemi_examples::store::diesel_schema::todo;
    use diesel::{Connection as _, ExpressionMethods as _, RunQueryDsl as _};

    let db = todo_db(&cluster, "diesel_tx").await?;
    let slot = db.wal_slot().await?;
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut conn = BemiPgConnection::establish(&url)?;
        let insert = |conn: &mut BemiPgConnection, task: &str| {
            diesel::insert_into(todo::table)
                .values(todo::task.eq(task))
                .execute(conn)
        };
        conn.transaction(|conn| {
            context::sync_scope(ctx(json!({"user_id": 1})), || -> diesel::QueryResult<()> {
                insert(conn, "a")?;
                context::merge(json!({"step": 2})).ok();
                insert(conn, "b")?;
                // A savepoint, rolled back with its write and its context.
                let _ = conn.transaction(|conn| {
                    context::sync_scope(ctx(json!({"user_id": 2})), || insert(conn, "gone"))?;
                    Err::<(), _>(diesel::result::Error::RollbackTransaction)
                });
                Ok(())
            })?;
            // Outside any scope: inherits nothing.
            insert(conn, "c")
        })?;
        // Outside any scope and any transaction: no message.
        insert(&mut conn, "d")?;
        Ok(())
    })
    .await??;
    let txns = slot.read_transactions().await?;
    ensure!(txns.len() == 2, "{txns:#?}");
    ensure_transaction(&txns[0], &scoped_merged_then_outside(), 3)?;
    ensure_transaction(&txns[1], &[], 1)?;
    Ok(())
}
e2e_test!(diesel_transactions_keep_each_statements_context);

async fn diesel_async_transactions_keep_each_statements_context(
    cluster: Arc<TestCluster>,
) -> TestResult {
    use bemi_diesel::BemiAsyncPgConnection;
    use bemi_examples::store::diesel_schema::todo;
    use diesel::ExpressionMethods as _;
    use diesel_async::{AsyncConnection as _, RunQueryDsl as _};

    let db = todo_db(&cluster, "diesel_async_tx").await?;
    let slot = db.wal_slot().await?;
    let mut conn = BemiAsyncPgConnection::establish(&db.url).await?;
    conn.transaction::<_, anyhow::Error, _>(async |conn| {
        context::scope(ctx(json!({"user_id": 1})), async {
            diesel::insert_into(todo::table)
                .values(todo::task.eq("a"))
                .execute(conn)
                .await?;
            context::merge(json!({"step": 2}))?;
            diesel::insert_into(todo::table)
                .values(todo::task.eq("b"))
                .execute(conn)
                .await?;
            anyhow::Ok(())
        })
        .await?;
        diesel::insert_into(todo::table)
            .values(todo::task.eq("c"))
            .execute(conn)
            .await?;
        Ok(())
    })
    .await?;
    // Outside any scope and any transaction: no message; inside a scope, wrapped.
    diesel::insert_into(todo::table)
        .values(todo::task.eq("d"))
        .execute(&mut conn)
        .await?;
    context::scope(ctx(json!({"user_id": 3})), async {
        diesel::insert_into(todo::table)
            .values(todo::task.eq("e"))
            .execute(&mut conn)
            .await
    })
    .await?;
    let txns = slot.read_transactions().await?;
    ensure!(txns.len() == 3, "{txns:#?}");
    ensure_transaction(&txns[0], &scoped_merged_then_outside(), 3)?;
    ensure_transaction(&txns[1], &[], 1)?;
    ensure_transaction(&txns[2], &[json!({"user_id": 3})], 1)
}
e2e_test!(diesel_async_transactions_keep_each_statements_context);

async fn on_a_blocking_thread_only_the_helper_carries_the_context(
    cluster: Arc<TestCluster>,
) -> TestResult {
    use bemi_diesel::BemiPgConnection;

    let db = todo_db(&cluster, "diesel_blocking").await?;
    let slot = db.wal_slot().await?;
    let manager = deadpool_diesel::Manager::<BemiPgConnection>::new(
        db.url.as_str(),
        deadpool_diesel::Runtime::Tokio1,
    );
    let pool = deadpool_diesel::Pool::builder(manager)
        .max_size(2)
        .build()?;
    context::scope(ctx(json!({"user_id": 9})), blocking_inserts(&pool)).await?;
    let txns = slot.read_transactions().await?;
    ensure!(txns.len() == 2, "{txns:#?}");
    ensure!(
        txns[0].messages.is_empty() && serve::task_of(&txns[0].rows[0].1)? == "without",
        "{:#?}",
        txns[0]
    );
    ensure!(
        contexts(&txns[1]) == [json!({"user_id": 9})]
            && serve::task_of(&txns[1].rows[0].1)? == "with",
        "{:#?}",
        txns[1]
    );
    Ok(())
}
e2e_test!(on_a_blocking_thread_only_the_helper_carries_the_context);

/// Two inserts on a blocking thread of `pool`: without the helper, then with it.
async fn blocking_inserts(
    pool: &deadpool_diesel::Pool<deadpool_diesel::Manager<bemi_diesel::BemiPgConnection>>,
) -> anyhow::Result<()> {
    use bemi_diesel::BemiPgConnection;
    use bemi_examples::store::diesel_schema::todo;
    use diesel::{ExpressionMethods as _, RunQueryDsl as _};

    let insert = |task: &'static str| {
        move |conn: &mut BemiPgConnection| {
            diesel::insert_into(todo::table)
                .values(todo::task.eq(task))
                .execute(conn)
        }
    };
    let conn = pool.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    // Without the helper: the blocking thread has no context.
    conn.interact(insert("without"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))??;
    // With it: the request's.
    conn.interact(bemi_diesel::with_context(insert("with")))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))??;
    Ok(())
}
