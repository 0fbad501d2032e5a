//! Enrichment through the WAL: a handler (and an authentication middleware before it) adds to
//! the request's context with `bemi_core::context::merge`; the writes made after each merge
//! carry the added keys, the write made before does not.

use std::sync::Arc;

use anyhow::ensure;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::post;
use bemi_core::context;
use bemi_sqlx::BemiPool;
use bemi_tests::{TestCluster, TestResult, ctx};
use serde_json::json;

use crate::serve;

const INSERT: &str = "INSERT INTO todo (task) VALUES ($1)";

/// "Authentication": the bearer token names the user, who joins the context.
async fn authenticate(request: Request, next: Next) -> Result<Response, StatusCode> {
    let user = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or(StatusCode::UNAUTHORIZED)?
        .to_owned();
    context::merge(ctx(json!({"authenticated_user": user})))
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(next.run(request).await)
}

/// Writes, enriches, writes again.
async fn handler(State(pool): State<BemiPool>) -> Result<StatusCode, String> {
    let insert = |task: &'static str| sqlx::query(INSERT).bind(task).execute(&pool);
    insert("before").await.map_err(|error| error.to_string())?;
    context::merge(ctx(json!({"role": "admin"}))).map_err(|error| error.to_string())?;
    insert("after").await.map_err(|error| error.to_string())?;
    Ok(StatusCode::NO_CONTENT)
}

async fn axum_handler_enrichment_reaches_the_wal(cluster: Arc<TestCluster>) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "enrichment").await?;
    let slot = db.wal_slot().await?;
    let app = axum::Router::new()
        .route("/todo", post(handler))
        .route_layer(middleware::from_fn(authenticate))
        .with_state(db.bemi_pool())
        .layer(bemi_axum::BemiLayer::new(
            bemi_examples::request_context::for_http::<Body>,
        ));
    let server = serve::axum(app).await?;
    let response = serve::client()?
        .post(server.url("/todo"))
        .header("x-user-id", "187234")
        .header("authorization", "Bearer alice")
        .send()
        .await?;
    serve::ensure_status(response, StatusCode::NO_CONTENT).await?;
    server.stop().await;

    let base = json!({
        "user_id": 187234,
        "endpoint": "/todo",
        "method": "POST",
        "authenticated_user": "alice",
        "SQL": INSERT,
    });
    let mut enriched = base.clone();
    enriched["role"] = json!("admin");
    let txns = slot.read_transactions().await?;
    ensure!(txns.len() == 2, "two writes expected: {txns:#?}");
    serve::ensure_task_and_context_each(&txns, [("before", base), ("after", enriched)])
}
e2e_test!(axum_handler_enrichment_reaches_the_wal);
