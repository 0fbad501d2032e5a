//! The seeds' five requests (create Sleep, Eat and Repeat as user 187234, complete Sleep, delete
//! Eat) through each todo app over real HTTP: the WAL holds exactly one `_bemi` message per
//! write, with that request's `user_id`, `endpoint`, `method` (GraphQL: `operationName` and
//! `variables` too) and the `SQL` key.

use std::sync::Arc;

use anyhow::{Context as _, ensure};
use bemi_examples::todo;
use bemi_tests::wal::Txn;
use bemi_tests::{TestCluster, TestResult};
use bemi_tokio_postgres::BemiClient;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::serve::{self, Served};

const USER: &str = "187234";

/// A write a request must have made: the context of its message and its row operation.
struct Write {
    context: Value,
    operation: &'static str,
}

fn rest_write(method: &str, endpoint: &str, sql: &str, operation: &'static str) -> Write {
    Write {
        context: json!({"user_id": 187234, "endpoint": endpoint, "method": method, "SQL": sql}),
        operation,
    }
}

/// Each write in its own transaction: exactly its message, then its one row.
fn assert_one_message_per_write(txns: &[Txn], writes: &[Write]) -> anyhow::Result<()> {
    ensure!(
        txns.len() == writes.len(),
        "{} transactions for {} writes: {txns:#?}",
        txns.len(),
        writes.len()
    );
    for (txn, write) in txns.iter().zip(writes) {
        ensure!(
            txn.messages == [write.context.clone()],
            "expected the message {}, got {:?}",
            write.context,
            txn.messages
        );
        ensure!(
            txn.rows.len() == 1 && txn.rows[0].0 == write.operation,
            "expected one {} row, got {:?}",
            write.operation,
            txn.rows
        );
    }
    Ok(())
}

/// The five requests against a REST todo app; returns the writes they must have made.
async fn rest_seed(server: &Served) -> anyhow::Result<Vec<Write>> {
    let http = serve::client()?;
    let mut writes = Vec::new();
    let mut ids = Vec::new();
    for task in ["Sleep", "Eat", "Repeat"] {
        let response = http
            .post(server.url("/todo"))
            .header("x-user-id", USER)
            .json(&json!({"task": task}))
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::CREATED,
            "POST {task}: {response:?}"
        );
        let row: Value = response.json().await?;
        ensure!(
            row["task"] == task && row["is_completed"] == false,
            "created {row}"
        );
        ids.push(row["id"].as_i64().context("id")?);
        writes.push(rest_write("POST", "/todo", todo::INSERT, "INSERT"));
    }
    let (sleep, eat, repeat) = (ids[0], ids[1], ids[2]);

    let endpoint = format!("/todo/{sleep}/complete");
    let response = http
        .put(server.url(&endpoint))
        .header("x-user-id", USER)
        .send()
        .await?;
    ensure!(response.status() == StatusCode::OK, "PUT: {response:?}");
    let row: Value = response.json().await?;
    ensure!(
        row == json!({"id": sleep, "task": "Sleep", "is_completed": true}),
        "completed {row}"
    );
    writes.push(rest_write("PUT", &endpoint, todo::COMPLETE, "UPDATE"));

    let endpoint = format!("/todo/{eat}");
    let response = http
        .delete(server.url(&endpoint))
        .header("x-user-id", USER)
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::NO_CONTENT,
        "DELETE: {response:?}"
    );
    writes.push(rest_write("DELETE", &endpoint, todo::DELETE, "DELETE"));

    let response = http.get(server.url("/todo")).send().await?;
    ensure!(response.status() == StatusCode::OK, "GET: {response:?}");
    let list: Value = response.json().await?;
    ensure!(
        list == json!([
            {"id": sleep, "task": "Sleep", "is_completed": true},
            {"id": repeat, "task": "Repeat", "is_completed": false},
        ]),
        "list {list}"
    );
    Ok(writes)
}

async fn axum_todo_app_seed_requests_carry_their_context(cluster: Arc<TestCluster>) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "axum_seed").await?;
    let slot = db.wal_slot().await?;
    let server = serve::axum(bemi_examples::axum_app::router(db.bemi_pool())).await?;
    let writes = rest_seed(&server).await?;
    server.stop().await;
    assert_one_message_per_write(&slot.read_transactions().await?, &writes)
}
e2e_test!(axum_todo_app_seed_requests_carry_their_context);

async fn actix_todo_app_seed_requests_carry_their_context(cluster: Arc<TestCluster>) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "actix_seed").await?;
    let slot = db.wal_slot().await?;
    let server = serve::actix_todo(BemiClient::new(db.tokio_postgres().await?)).await?;
    let writes = rest_seed(&server).await?;
    server.stop().await;
    assert_one_message_per_write(&slot.read_transactions().await?, &writes)
}
e2e_test!(actix_todo_app_seed_requests_carry_their_context);

/// Runs one GraphQL operation as user 187234 and returns its `data`.
async fn graphql(
    http: &reqwest::Client,
    server: &Served,
    operation: &str,
    query: &str,
    variables: Value,
) -> anyhow::Result<Value> {
    let response = http
        .post(server.url("/graphql"))
        .header("x-user-id", USER)
        .json(&json!({"query": query, "operationName": operation, "variables": variables}))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::OK,
        "{operation}: {response:?}"
    );
    let body: Value = response.json().await?;
    ensure!(body.get("errors").is_none(), "{operation}: {body}");
    Ok(body["data"].clone())
}

fn graphql_write(operation: &str, variables: Value, sql: &str, row: &'static str) -> Write {
    Write {
        context: json!({
            "user_id": 187234,
            "endpoint": "/graphql",
            "method": "POST",
            "operationName": operation,
            "variables": variables,
            "SQL": sql,
        }),
        operation: row,
    }
}

async fn graphql_todo_app_seed_operations_carry_their_context(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "graphql_seed").await?;
    let slot = db.wal_slot().await?;
    let server = serve::axum(bemi_examples::graphql_app::router(db.bemi_pool())).await?;
    let http = serve::client()?;
    let mut writes = Vec::new();
    let mut ids = Vec::new();

    let create =
        "mutation CreateTodo($task: String!) { createTodo(task: $task) { id task isCompleted } }";
    for task in ["Sleep", "Eat", "Repeat"] {
        let variables = json!({"task": task});
        let data = graphql(&http, &server, "CreateTodo", create, variables.clone()).await?;
        ensure!(
            data["createTodo"]["task"] == task && data["createTodo"]["isCompleted"] == false,
            "created {data}"
        );
        ids.push(data["createTodo"]["id"].as_i64().context("id")?);
        writes.push(graphql_write(
            "CreateTodo",
            variables,
            todo::INSERT,
            "INSERT",
        ));
    }
    let (sleep, eat, repeat) = (ids[0], ids[1], ids[2]);

    let complete = "mutation CompleteTodo($id: Int!) { completeTodo(id: $id) { id isCompleted } }";
    let variables = json!({"id": sleep});
    let data = graphql(&http, &server, "CompleteTodo", complete, variables.clone()).await?;
    ensure!(
        data == json!({"completeTodo": {"id": sleep, "isCompleted": true}}),
        "{data}"
    );
    writes.push(graphql_write(
        "CompleteTodo",
        variables,
        todo::COMPLETE,
        "UPDATE",
    ));

    let delete = "mutation DeleteTodo($id: Int!) { deleteTodo(id: $id) }";
    let variables = json!({"id": eat});
    let data = graphql(&http, &server, "DeleteTodo", delete, variables.clone()).await?;
    ensure!(data == json!({"deleteTodo": true}), "{data}");
    writes.push(graphql_write(
        "DeleteTodo",
        variables,
        todo::DELETE,
        "DELETE",
    ));

    let list = "query Todos { todos { id task isCompleted } }";
    let data = graphql(&http, &server, "Todos", list, json!({})).await?;
    ensure!(
        data == json!({"todos": [
            {"id": sleep, "task": "Sleep", "isCompleted": true},
            {"id": repeat, "task": "Repeat", "isCompleted": false},
        ]}),
        "{data}"
    );

    server.stop().await;
    assert_one_message_per_write(&slot.read_transactions().await?, &writes)
}
e2e_test!(graphql_todo_app_seed_operations_carry_their_context);
