//! A handler that hands writes to other tasks: with the helpers (`in_current_context`, or
//! `current` + `sync_scope` in blocking code) the writes keep the request's context; without
//! them they have none. Asserted, so that the README's pitfalls stay true. (actix-web's
//! `web::block` closures are checked where they run — the context and the annotation a write
//! would get there — as they cannot drive the worker's single-threaded runtime.)

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use bemi_core::context::{self, ContextExt as _};
use bemi_sqlx::BemiPool;
use bemi_tests::{TestCluster, TestResult, WalSlot};
use bemi_tokio_postgres::BemiClient;
use serde_json::{Value, json};

use crate::serve;

const INSERT: &str = "INSERT INTO todo (task) VALUES ($1)";

async fn insert_sqlx(pool: BemiPool, task: &'static str) -> Result<(), sqlx::Error> {
    // The query is made when this future first runs, i.e. in whatever task polls it.
    sqlx::query(INSERT).bind(task).execute(&pool).await?;
    Ok(())
}

async fn insert_postgres(
    client: Arc<BemiClient>,
    task: &'static str,
) -> Result<(), tokio_postgres::Error> {
    client.execute(INSERT, &[&task]).await?;
    Ok(())
}

/// The request's context, as the WAL must show it for the carried writes.
fn request_context(endpoint: &str) -> Value {
    json!({"user_id": 187234, "endpoint": endpoint, "method": "POST", "SQL": INSERT})
}

/// Every `carried*` row has exactly the request's context; every `lost*` row has none.
async fn assert_carried_and_lost(
    slot: &WalSlot,
    endpoint: &str,
    tasks: &[&str],
) -> anyhow::Result<()> {
    let txns = slot.read_transactions().await?;
    let mut seen = BTreeMap::new();
    for txn in &txns {
        ensure!(txn.rows.len() == 1, "one row per write: {txn:?}");
        let task = serve::task_of(&txn.rows[0].1)?;
        let expected = if task.starts_with("carried") {
            vec![request_context(endpoint)]
        } else {
            vec![]
        };
        ensure!(
            txn.messages == expected,
            "{task}: expected {expected:?}, got {:?}",
            txn.messages
        );
        seen.insert(task, ());
    }
    let seen: Vec<&str> = seen.keys().map(String::as_str).collect();
    let mut expected = tasks.to_vec();
    expected.sort_unstable();
    ensure!(seen == expected, "rows {seen:?}, expected {expected:?}");
    Ok(())
}

async fn axum_spawning_handler(State(pool): State<BemiPool>) -> Result<StatusCode, String> {
    async {
        // Carried into a task, and lost without the helper.
        let carried = tokio::spawn(insert_sqlx(pool.clone(), "carried spawn").in_current_context());
        let lost = tokio::spawn(insert_sqlx(pool.clone(), "lost spawn"));
        // Blocking code: capture the context here, enter it there.
        let runtime = tokio::runtime::Handle::current();
        let captured = context::current().context("no context in the handler")?;
        let (rt, p) = (runtime.clone(), pool.clone());
        let carried_blocking = tokio::task::spawn_blocking(move || {
            context::sync_scope(captured, || rt.block_on(insert_sqlx(p, "carried blocking")))
        });
        let lost_blocking = tokio::task::spawn_blocking(move || {
            runtime.block_on(insert_sqlx(pool, "lost blocking"))
        });
        carried.await??;
        lost.await??;
        carried_blocking.await??;
        lost_blocking.await??;
        anyhow::Ok(StatusCode::NO_CONTENT)
    }
    .await
    .map_err(|error| format!("{error:#}"))
}

async fn axum_spawned_tasks_keep_the_context_only_with_the_helpers(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "axum_spawn").await?;
    let slot = db.wal_slot().await?;
    let app = axum::Router::new()
        .route("/spawn", post(axum_spawning_handler))
        .with_state(db.bemi_pool())
        .layer(bemi_axum::BemiLayer::new(
            bemi_examples::request_context::for_http::<Body>,
        ));
    let server = serve::axum(app).await?;
    let response = serve::client()?
        .post(server.url("/spawn"))
        .header("x-user-id", "187234")
        .send()
        .await?;
    serve::ensure_status(response, StatusCode::NO_CONTENT).await?;
    server.stop().await;
    assert_carried_and_lost(
        &slot,
        "/spawn",
        &[
            "carried spawn",
            "lost spawn",
            "carried blocking",
            "lost blocking",
        ],
    )
    .await
}
e2e_test!(axum_spawned_tasks_keep_the_context_only_with_the_helpers);

/// What code in a `web::block` closure sees: the context, and the annotation a write would get.
fn seen_in_block() -> (Option<context::Context>, Option<String>) {
    (context::current(), bemi_core::sql::annotate_current(INSERT))
}

async fn actix_spawning_handler(
    client: actix_web::web::Data<BemiClient>,
) -> actix_web::HttpResponse {
    let outcome = async {
        let client = client.into_inner();
        let shared = || Arc::clone(&client);
        let carried =
            actix_web::rt::spawn(insert_postgres(shared(), "carried spawn").in_current_context());
        let lost = actix_web::rt::spawn(insert_postgres(shared(), "lost spawn"));
        carried.await??;
        lost.await??;

        // `web::block` with the README's pattern: capture the context here, enter it there.
        let captured = context::current().context("no context in the handler")?;
        let expected = captured.clone();
        let (carried_context, carried_sql) =
            actix_web::web::block(move || context::sync_scope(captured, seen_in_block)).await?;
        ensure!(
            carried_context.as_ref() == Some(&expected),
            "web::block with sync_scope saw {carried_context:?}, expected {expected:?}"
        );
        let carried_sql = carried_sql.context("web::block with sync_scope: no annotation")?;
        ensure!(
            carried_sql.contains(r#""user_id":187234"#),
            "web::block with sync_scope annotated {carried_sql}"
        );

        // Without it: no context, no annotation.
        let (lost_context, lost_sql) = actix_web::web::block(seen_in_block).await?;
        ensure!(
            lost_context.is_none() && lost_sql.is_none(),
            "web::block without sync_scope saw {lost_context:?} / {lost_sql:?}"
        );
        anyhow::Ok(())
    }
    .await;
    match outcome {
        Ok(()) => actix_web::HttpResponse::NoContent().finish(),
        Err(error) => actix_web::HttpResponse::InternalServerError().body(format!("{error:#}")),
    }
}

async fn actix_spawned_tasks_and_web_block_keep_the_context_only_with_the_helpers(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "actix_spawn").await?;
    let slot = db.wal_slot().await?;
    let client = BemiClient::new(db.tokio_postgres().await?);
    let server = serve::actix_post(client, "/spawn", actix_spawning_handler).await?;
    let response = serve::client()?
        .post(server.url("/spawn"))
        .header("x-user-id", "187234")
        .send()
        .await?;
    serve::ensure_status(response, StatusCode::NO_CONTENT).await?;
    server.stop().await;
    assert_carried_and_lost(&slot, "/spawn", &["carried spawn", "lost spawn"]).await
}
e2e_test!(actix_spawned_tasks_and_web_block_keep_the_context_only_with_the_helpers);
