//! The todo apps on SeaORM and on a deadpool-postgres pool over real HTTP (1 000 concurrent
//! requests keep their contexts apart; a hostile request changes nothing but its row), and the
//! SeaORM integration's transactions: each statement carries the context in scope when it ran,
//! a write without one after one with one inherits nothing, a write outside any scope emits
//! nothing.

use std::sync::Arc;

use anyhow::ensure;
use bemi_core::context;
use bemi_examples::store::seaorm::todo;
use bemi_seaorm::BemiConnection;
use bemi_tests::{TestCluster, TestResult, ctx, todo_db};
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, TransactionSession as _, TransactionTrait as _};
use serde_json::{Value, json};

use crate::serve;
use crate::todo_hostile::{assert_survived, post_hostile};
use crate::todo_load::{assert_each_write_has_its_own_user_with, burst};

fn seaorm_insert(sql: Option<&str>) -> bool {
    sql.is_some_and(|sql| sql.starts_with(r#"INSERT INTO "todo""#))
}

pub(crate) async fn seaorm_todo_app_keeps_1000_concurrent_contexts_apart(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "seaorm_load").await?;
    let slot = db.wal_slot().await?;
    let server = serve::axum(bemi_examples::store::seaorm::router(db.url.clone()).await?).await?;
    burst(&server).await?;
    server.stop().await;
    assert_each_write_has_its_own_user_with(&slot, seaorm_insert).await
}

pub(crate) async fn deadpool_todo_app_keeps_1000_concurrent_contexts_apart(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "deadpool_load").await?;
    let slot = db.wal_slot().await?;
    let server = serve::axum(bemi_examples::store::deadpool::router(db.url.clone()).await?).await?;
    burst(&server).await?;
    server.stop().await;
    // A statement the pool prepared: its text is not the adapter's to know.
    assert_each_write_has_its_own_user_with(&slot, |sql| sql.is_none()).await
}

pub(crate) async fn hostile_requests_through_the_seaorm_and_deadpool_apps_change_nothing_but_their_row(
    cluster: Arc<TestCluster>,
) -> TestResult {
    for (hint, app) in [
        (
            "seaorm_hostile",
            bemi_examples::store::seaorm::router as fn(String) -> _,
        ),
        ("deadpool_hostile", bemi_examples::store::deadpool::router),
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

fn new_todo(task: &str) -> todo::ActiveModel {
    todo::ActiveModel {
        task: Set(task.to_owned()),
        ..Default::default()
    }
}

pub(crate) async fn seaorm_transactions_keep_each_statements_context(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "seaorm_tx").await?;
    let slot = db.wal_slot().await?;
    let orm = BemiConnection::new(sea_orm::Database::connect(&db.url).await?);
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
                todo::Entity::update_many()
                    .col_expr(todo::Column::IsCompleted, Expr::value(true))
                    .filter(todo::Column::Task.eq("a"))
                    .exec(tx)
                    .await?;
                Ok(())
            })
        })
        .await
    })
    .await?;

    let txns = slot.read_transactions().await?;
    let strip = |messages: &[Value]| -> Vec<Value> {
        messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                m.as_object_mut().map(|o| o.remove("SQL"));
                m
            })
            .collect()
    };
    ensure!(txns.len() == 3, "{txns:#?}");
    ensure!(
        strip(&txns[0].messages)
            == [
                json!({"user_id": 1}),
                json!({"user_id": 1, "step": 2}),
                // (The savepoint's message went with it.)
                json!({})
            ]
            && txns[0].rows.len() == 3,
        "{:#?}",
        txns[0]
    );
    ensure!(
        txns[1].messages.is_empty() && txns[1].rows.len() == 1,
        "{:#?}",
        txns[1]
    );
    ensure!(
        strip(&txns[2].messages) == [json!({"user_id": 3})] && txns[2].rows.len() == 1,
        "{:#?}",
        txns[2]
    );
    Ok(())
}
