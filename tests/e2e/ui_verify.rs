//! The web UI's verification page (`/verify`, `/api/verify`) and the context's signature
//! verdict in the change list: a trail as stored verifies; one a superuser altered with SQL
//! shows the break (naming the change and the field) and the altered verdict as "forged"; a
//! caller with a scope (a host app's customer) gets a 404 and no link to it.

use std::sync::Arc;

use anyhow::ensure;
use bemi_core::context;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestResult, ctx};
use bemi_ui::{Access, Scope, UiOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::serve;

async fn the_verification_page_shows_an_intact_trail_and_a_break(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster
        .tracked_database(
            "ui_verify",
            "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL)",
        )
        .await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let pool = db.bemi_pool();
    for n in 1..=3 {
        context::scope(ctx(json!({"user_id": n, "tenant_id": 42})), async {
            sqlx::query("INSERT INTO todo (task) VALUES ($1)")
                .bind(format!("task {n}"))
                .execute(&pool)
                .await
        })
        .await?;
    }
    wait_for_changes(&db, 3).await?;
    worker.stop().await?;

    let key = bemi_audit::checkpoint::SigningKey::generate()?.public();
    let options = UiOptions::new().verify_public_key(key).authorize(|parts| {
        let scoped = parts.headers.contains_key("x-tenant");
        async move {
            if scoped {
                Access::read().scope(Scope::new().context("tenant_id", 42))
            } else {
                Access::read()
            }
        }
    });
    let (base, _stop) = serve::axum_base(bemi_ui::router(db.pool.clone(), options)).await?;
    let client = reqwest::Client::new();
    let get = |path: &str, scoped: bool| {
        let mut request = client.get(format!("{base}{path}"));
        if scoped {
            request = request.header("x-tenant", "42");
        }
        request.send()
    };

    // As stored: intact, one chain of three changes, signatures checked (none signed yet).
    let verified: Value = get("/api/verify", false)
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(verified["intact"] == true, "{verified:#}");
    ensure!(verified["signatures_checked"] == true, "{verified:#}");
    ensure!(verified["chains"][0]["changes"] == 3, "{verified:#}");
    let page = get("/verify", false)
        .await?
        .error_for_status()?
        .text()
        .await?;
    ensure!(page.contains("No break found"), "{page}");
    ensure!(get("/", false).await?.text().await?.contains("/verify\""));

    // A customer's scope: no verification (it names every tenant's changes), no link to it.
    for path in ["/verify", "/api/verify"] {
        let status = get(path, true).await?.status();
        ensure!(status == StatusCode::NOT_FOUND, "{path}: {status}");
    }
    ensure!(!get("/", true).await?.text().await?.contains("/verify\""));

    // A superuser rewrites a context, claiming a verdict.
    let altered: Uuid = sqlx::query_scalar(
        "UPDATE changes SET context = context || '{\"_bemi_signature\": \"forged\"}' \
          WHERE id = (SELECT id FROM changes ORDER BY chain_seq LIMIT 1) RETURNING id",
    )
    .fetch_one(&db.pool)
    .await?;
    let verified: Value = get("/api/verify", false)
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(verified["intact"] == false, "{verified:#}");
    let found = verified["breaks"][0].as_str().unwrap_or_default();
    ensure!(
        found.contains(&altered.to_string()) && found.contains("context"),
        "{verified:#}"
    );
    let page = get("/verify", false)
        .await?
        .error_for_status()?
        .text()
        .await?;
    ensure!(
        page.contains("1 break found") && page.contains(&altered.to_string()),
        "{page}"
    );
    // The list shows the verdict as a badge, not as a context key.
    let list = get("/", false).await?.error_for_status()?.text().await?;
    ensure!(list.contains("class=\"sig forged\""), "{list}");
    ensure!(!list.contains(">_bemi_signature<"), "{list}");
    Ok(())
}
e2e_test!(the_verification_page_shows_an_intact_trail_and_a_break);
