//! In a real headless Chromium: a tenant's embedded activity feed and change list show its own
//! changes only, hidden fields as hidden; another tenant's change is a 404; and an admin
//! restores a table from the "table as of" page — dry run first, then applied.

use std::sync::Arc;

use anyhow::ensure;
use bemi_core::context;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestResult, ctx};
use bemi_ui::{Access, Scope, UiOptions};
use fantoccini::{Client, Locator};
use serde_json::json;
use uuid::Uuid;

use crate::serve;
use crate::ui_browser::{Chromedriver, screenshot, text_of};

const TABLES: &str =
    "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, secret text);";

async fn a_tenant_sees_its_own_feed_and_an_admin_restores_a_table_in_chromium(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.tracked_database("ui_browser_scope", TABLES).await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let pool = db.bemi_pool();
    for tenant in [42, 43] {
        context::scope(
            ctx(json!({"tenant_id": tenant, "user_id": tenant - 41})),
            sqlx::query("INSERT INTO todo (task, secret) VALUES ($1, $2)")
                .bind(format!("task-of-{tenant}"))
                .bind(format!("s{tenant}-secret"))
                .execute(&pool),
        )
        .await?;
    }
    wait_for_changes(&db, 2).await?;
    let state_1 =
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>("SELECT clock_timestamp()")
            .fetch_one(&db.pool)
            .await?;
    let snapshot = || async {
        let rows: Vec<(i64, String, Option<String>)> =
            sqlx::query_as("SELECT id, task, secret FROM todo ORDER BY id")
                .fetch_all(&db.pool)
                .await?;
        anyhow::Ok(rows)
    };
    let then = snapshot().await?;
    context::scope(
        ctx(json!({"tenant_id": 42, "user_id": 1})),
        sqlx::query("UPDATE todo SET task = 'Buy oat milk' WHERE id = 1").execute(&pool),
    )
    .await?;
    db.exec("DELETE FROM todo WHERE id = 2").await?;
    wait_for_changes(&db, 4).await?;
    let other: Uuid =
        sqlx::query_scalar("SELECT id FROM changes WHERE context->>'tenant_id' = '43' LIMIT 1")
            .fetch_one(&db.pool)
            .await?;

    // The host app: tenant 42's embedded audit log, and its own staff's admin UI.
    let tenant = bemi_ui::router(
        db.pool.clone(),
        UiOptions::new().authorize(|_| async {
            Access::read().scope(
                Scope::new()
                    .context("tenant_id", 42)
                    .tables(["todo"])
                    .hide_columns(["secret"]),
            )
        }),
    );
    let admin = bemi_ui::router(
        db.pool.clone(),
        UiOptions::new()
            .authorize(|_| async { Access::revert().actor(json!({"user_id": "admin"})) }),
    );
    let (host, _stop) = serve::axum_base(
        axum::Router::new()
            .nest("/t42/audit", tenant)
            .nest("/admin/audit", admin),
    )
    .await?;
    let driver = Chromedriver::start().await?;
    let profile = tempfile::tempdir()?;
    let browser = driver.browser(profile.path()).await?;
    let result = walk(&browser, &host, other, state_1).await;
    let _ = browser.close().await;
    result?;
    ensure!(snapshot().await? == then, "{:?}", snapshot().await?);
    worker.stop().await?;
    Ok(())
}
e2e_test!(a_tenant_sees_its_own_feed_and_an_admin_restores_a_table_in_chromium);

async fn walk(
    browser: &Client,
    host: &str,
    other: Uuid,
    state_1: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    // The feed: tenant 42's two changes as sentences, the secret named as hidden.
    browser.goto(&format!("{host}/t42/audit/feed")).await?;
    let first = text_of(browser, "li.feed-entry .line").await?;
    ensure!(
        first == "user 1 changed todo 1: task 'task-of-42' → 'Buy oat milk'",
        "{first}"
    );
    let lines = browser.find_all(Locator::Css("li.feed-entry")).await?;
    ensure!(lines.len() == 2, "{} lines", lines.len());
    let source = browser.source().await?;
    ensure!(source.contains("secret (hidden)"), "{source}");
    for leak in ["task-of-43", "s42-secret", "s43-secret", "tenant_id\":43"] {
        ensure!(!source.contains(leak), "the feed shows {leak}");
    }
    screenshot(browser, "tenant-feed").await?;
    // The change list and another tenant's change.
    browser.goto(&format!("{host}/t42/audit")).await?;
    let rows = browser.find_all(Locator::Css("tr.change")).await?;
    ensure!(rows.len() == 2, "{} rows", rows.len());
    ensure!(!browser.source().await?.contains("task-of-43"));
    browser
        .goto(&format!("{host}/t42/audit/changes/{other}"))
        .await?;
    let heading = text_of(browser, "h1").await?;
    ensure!(heading.contains("404"), "{heading}");
    // Tenant 42 may not restore: no button.
    browser
        .goto(&format!("{host}/t42/audit/tables/todo"))
        .await?;
    ensure!(
        browser
            .find_all(Locator::Css("button#restore"))
            .await?
            .is_empty()
    );

    // The admin restores the table as of state 1: a dry run, then applied.
    let at = state_1.to_rfc3339();
    browser
        .goto(&format!(
            "{host}/admin/audit/tables/todo?at={}",
            at.replace('+', "%2B")
        ))
        .await?;
    browser
        .find(Locator::Css("button#restore"))
        .await?
        .click()
        .await?;
    let plan = text_of(browser, "pre#plan").await?;
    ensure!(
        plan.contains("-- Restore of public.todo to ")
            && plan.contains("public.todo 2: insert the row")
            && plan.contains("public.todo 1: set back task"),
        "{plan}"
    );
    screenshot(browser, "restore-dry-run").await?;
    browser
        .find(Locator::Css("button#apply"))
        .await?
        .click()
        .await?;
    let done = text_of(browser, "p.done").await?;
    ensure!(
        done.starts_with("Restored todo with 2 statements"),
        "{done}"
    );
    Ok(())
}
