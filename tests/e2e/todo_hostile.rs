//! A request whose task (in the body) and user (in the `x-user-id` header, which the apps'
//! closure puts into the context) are `*/ DROP TABLE todo; /*`: the table survives, the row
//! holds exactly that text, and the message carries it as data.

use std::sync::Arc;

use anyhow::ensure;
use bemi_tests::{TestCluster, TestDb, TestResult, WalSlot};
use bemi_tokio_postgres::BemiClient;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::serve::{self, Served};

const HOSTILE: &str = "*/ DROP TABLE todo; /*";

/// The table is still there and holds exactly one row, whose task is [`HOSTILE`]; the one
/// message carries [`HOSTILE`] as its user id.
pub(crate) async fn assert_survived(db: &TestDb, slot: &WalSlot) -> anyhow::Result<Value> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('public.todo') IS NOT NULL")
        .fetch_one(&db.pool)
        .await?;
    ensure!(exists, "the todo table was dropped");
    let tasks: Vec<String> = sqlx::query_scalar("SELECT task FROM todo")
        .fetch_all(&db.pool)
        .await?;
    ensure!(tasks == [HOSTILE], "rows: {tasks:?}");
    let txns = slot.read_transactions().await?;
    ensure!(txns.len() == 1, "one write expected: {txns:#?}");
    ensure!(
        txns[0].rows.len() == 1 && serve::task_of(&txns[0].rows[0].1)? == HOSTILE,
        "row: {:?}",
        txns[0].rows
    );
    let [message] = txns[0].messages.as_slice() else {
        anyhow::bail!("one message expected: {:?}", txns[0].messages);
    };
    ensure!(message["user_id"] == HOSTILE, "message {message}");
    Ok(message.clone())
}

pub(crate) async fn post_hostile(server: &Served) -> anyhow::Result<()> {
    let response = serve::client()?
        .post(server.url("/todo"))
        .header("x-user-id", HOSTILE)
        .json(&json!({"task": HOSTILE}))
        .send()
        .await?;
    ensure!(response.status() == StatusCode::CREATED, "{response:?}");
    let row: Value = response.json().await?;
    ensure!(row["task"] == HOSTILE, "{row}");
    Ok(())
}

async fn hostile_request_through_the_axum_app_changes_nothing_but_its_row(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "axum_hostile").await?;
    let slot = db.wal_slot().await?;
    let server = serve::axum(bemi_examples::axum_app::router(db.bemi_pool())).await?;
    post_hostile(&server).await?;
    server.stop().await;
    assert_survived(&db, &slot).await?;
    Ok(())
}
e2e_test!(hostile_request_through_the_axum_app_changes_nothing_but_its_row);

async fn hostile_request_through_the_actix_app_changes_nothing_but_its_row(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "actix_hostile").await?;
    let slot = db.wal_slot().await?;
    let server = serve::actix_todo(BemiClient::new(db.tokio_postgres().await?)).await?;
    post_hostile(&server).await?;
    server.stop().await;
    assert_survived(&db, &slot).await?;
    Ok(())
}
e2e_test!(hostile_request_through_the_actix_app_changes_nothing_but_its_row);

async fn hostile_graphql_variables_change_nothing_but_their_row(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "graphql_hostile").await?;
    let slot = db.wal_slot().await?;
    let server = serve::axum(bemi_examples::graphql_app::router(db.bemi_pool())).await?;
    let response = serve::client()?
        .post(server.url("/graphql"))
        .header("x-user-id", HOSTILE)
        .json(&json!({
            "query": "mutation CreateTodo($task: String!) { createTodo(task: $task) { task } }",
            "variables": {"task": HOSTILE},
        }))
        .send()
        .await?;
    ensure!(response.status() == StatusCode::OK, "{response:?}");
    let body: Value = response.json().await?;
    ensure!(body["data"]["createTodo"]["task"] == HOSTILE, "{body}");
    server.stop().await;
    let message = assert_survived(&db, &slot).await?;
    ensure!(
        message["variables"] == json!({"task": HOSTILE}),
        "message {message}"
    );
    Ok(())
}
e2e_test!(hostile_graphql_variables_change_nothing_but_their_row);
