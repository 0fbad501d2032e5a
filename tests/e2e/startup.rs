//! The examples' start-up path (`bemi_examples::startup`): preparing a fresh database twice
//! (create the table, install the triggers) is harmless, and the axum example then serves
//! requests whose writes carry their context.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_examples::startup::{self, App, Example};
use bemi_examples::todo;
use bemi_tests::{TestCluster, TestDb, TestResult, WalSlot, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::serve;

/// The non-internal triggers on `todo`, by name.
async fn todo_triggers(pool: &sqlx::PgPool) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'public.todo'::regclass \
         AND NOT tgisinternal ORDER BY tgname",
    )
    .fetch_all(pool)
    .await?)
}

async fn example_startup_prepares_a_fresh_database_twice_and_serves(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("startup").await?;
    let missing: bool = sqlx::query_scalar("SELECT to_regclass('public.todo') IS NULL")
        .fetch_one(&db.pool)
        .await?;
    ensure!(missing, "a fresh database has no todo table");

    startup::prepare_database(&db.url).await?.close().await;
    let triggers = todo_triggers(&db.pool).await?;
    ensure!(!triggers.is_empty(), "no triggers on todo after start-up");
    startup::prepare_database(&db.url)
        .await
        .context("preparing the database a second time")?
        .close()
        .await;
    ensure!(
        todo_triggers(&db.pool).await? == triggers,
        "a second start-up changed the triggers"
    );

    // Serve it as the binaries do (which prepares the database a third time).
    let slot = serve_one_request_and_stop(&db, App::Axum(bemi_examples::axum_app::router)).await?;
    assert_one_write(&slot).await
}
e2e_test!(example_startup_prepares_a_fresh_database_twice_and_serves);

/// The actix example through the same start-up path: it serves, and it stops when told to.
async fn example_startup_serves_the_actix_app_and_stops(cluster: Arc<TestCluster>) -> TestResult {
    let db = cluster.database("startup_actix").await?;
    let slot =
        serve_one_request_and_stop(&db, App::Actix(bemi_examples::actix_app::server)).await?;
    assert_one_write(&slot).await
}
e2e_test!(example_startup_serves_the_actix_app_and_stops);

/// Serves `app` with `startup::serve` on 127.0.0.1, creates "Sleep" as user 187234, stops the
/// server and waits for it to finish. The slot was created once the app was serving.
async fn serve_one_request_and_stop(db: &TestDb, app: App) -> anyhow::Result<WalSlot> {
    let listener = startup::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let example = Example {
        name: "todo-example",
        path: "/todo",
        app,
    };
    let url = db.url.clone();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        startup::serve(&example, &url, listener, shutdown).await
    });
    let http = serve::client()?;
    // Serving means the start-up is done; only then start reading the WAL.
    wait_until("the example to serve", Duration::from_secs(60), || async {
        let response = http.get(format!("{base}/todo")).send().await;
        Ok(response
            .ok()
            .filter(|r| r.status() == StatusCode::OK)
            .map(drop))
    })
    .await?;
    let slot = db.wal_slot().await?;

    let response = http
        .post(format!("{base}/todo"))
        .header("x-user-id", "187234")
        .json(&json!({"task": "Sleep"}))
        .send()
        .await?;
    ensure!(response.status() == StatusCode::CREATED, "{response:?}");
    let row: Value = response.json().await?;
    ensure!(
        row["task"] == "Sleep" && row["is_completed"] == false,
        "{row}"
    );

    stop.send(()).ok().context("the server stopped early")?;
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .context("the server did not stop within 60 s of being told to")???;
    Ok(slot)
}

/// The WAL holds the one write of [`serve_one_request_and_stop`], with its request's context.
async fn assert_one_write(slot: &WalSlot) -> TestResult {
    let txns = slot.read_transactions().await?;
    ensure!(txns.len() == 1, "one write expected: {txns:#?}");
    ensure!(
        txns[0].messages
            == [json!({
                "user_id": 187234,
                "endpoint": "/todo",
                "method": "POST",
                "SQL": todo::INSERT,
            })],
        "{:?}",
        txns[0].messages
    );
    ensure!(
        txns[0].rows.len() == 1 && serve::task_of(&txns[0].rows[0].1)? == "Sleep",
        "{:?}",
        txns[0].rows
    );
    Ok(())
}
