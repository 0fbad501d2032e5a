//! The minimal examples of `examples/minimal` as a reader runs them: a process on its own port
//! and database, a request with a user, and the write's context read back from the WAL.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_tests::wal::WalSlot;
use bemi_tests::{TestCluster, TestResult, wait_until};
use serde_json::json;
use tokio::process::Command;

use crate::cli_support::free_port;

/// An example program of the examples package, built by `cargo test` next to the tests
/// (`target/debug/examples/NAME`).
pub(crate) fn example(name: &str) -> anyhow::Result<PathBuf> {
    let test_binary = std::env::current_exe()?;
    let profile_dir = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test binary is not in target/PROFILE/deps")?;
    let path = profile_dir.join("examples").join(name);
    ensure!(
        path.exists(),
        "{} is not built: run the tests with `cargo test --workspace` (or first `cargo build -p \
         bemi-examples --examples --all-features`)",
        path.display()
    );
    Ok(path)
}

/// Runs the example `name` against a fresh database, sends `request` once it serves, and
/// returns the contexts its writes carried through the WAL.
async fn run_example(
    cluster: &TestCluster,
    name: &str,
    request: impl FnOnce(reqwest::Client, String) -> reqwest::RequestBuilder,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let db = cluster.database(name).await?;
    let wal = WalSlot::create(&db.pool, &db.name).await?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut child = Command::new(example(name)?)
        .env("DATABASE_URL", &db.url)
        .env("BEMI_EXAMPLE_ADDR", &addr)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    wait_until("the example to serve", Duration::from_secs(60), || {
        let http = http.clone();
        let base = base.clone();
        async move { Ok(http.get(&base).send().await.ok().map(|_| ())) }
    })
    .await?;
    let response = request(http, base).send().await?;
    ensure!(
        response.status().is_success(),
        "{} {:?}",
        response.status(),
        response.text().await
    );
    child.kill().await?;
    let entries = wal.read().await?;
    wal.drop_slot().await?;
    bemi_tests::wal::bemi_contexts(&entries)
}

async fn the_axum_sqlx_example_attributes_its_write(cluster: Arc<TestCluster>) -> TestResult {
    let contexts = run_example(&cluster, "axum-sqlx", |http, base| {
        http.post(format!("{base}/todo"))
            .header("x-user-id", "42")
            .json(&json!({"task": "Sleep"}))
    })
    .await?;
    ensure!(contexts.len() == 1, "{contexts:?}");
    let context = &contexts[0];
    ensure!(
        context["user_id"] == "42" && context["endpoint"] == "/todo" && context["method"] == "POST",
        "{context}"
    );
    ensure!(
        context["SQL"]
            .as_str()
            .is_some_and(|sql| sql.starts_with("INSERT INTO todo"))
    );
    Ok(())
}
e2e_test!(the_axum_sqlx_example_attributes_its_write);

async fn the_actix_tokio_postgres_example_attributes_its_write(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let contexts = run_example(&cluster, "actix-tokio-postgres", |http, base| {
        http.post(format!("{base}/todo/Sleep"))
            .header("x-user-id", "42")
    })
    .await?;
    ensure!(contexts.len() == 1, "{contexts:?}");
    ensure!(
        contexts[0]["user_id"] == "42" && contexts[0]["endpoint"] == "/todo/Sleep",
        "{}",
        contexts[0]
    );
    Ok(())
}
e2e_test!(the_actix_tokio_postgres_example_attributes_its_write);

async fn the_graphql_example_attributes_its_write(cluster: Arc<TestCluster>) -> TestResult {
    let contexts = run_example(&cluster, "graphql", |http, base| {
        http.post(format!("{base}/graphql"))
            .header("x-user-id", "42")
            .json(&json!({"query": "mutation Create { createTodo(task: \"Sleep\") }"}))
    })
    .await?;
    ensure!(contexts.len() == 1, "{contexts:?}");
    let context = &contexts[0];
    ensure!(
        context["user_id"] == "42"
            && context["endpoint"] == "/graphql"
            && context["operationName"] == "Create",
        "{context}"
    );
    Ok(())
}
e2e_test!(the_graphql_example_attributes_its_write);

async fn the_mounted_ui_example_shows_the_write_to_its_users(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("axum_ui_example").await?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let slot = format!("bemi_{}", db.name);
    // Its logs, for the failure message.
    let log_path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.log", db.name));
    let log = std::fs::File::create(&log_path)?;
    let _child = Command::new(example("axum-ui")?)
        .env("DATABASE_URL", &db.url)
        // Slots are the server's: one of its own, beside the other tests' workers.
        .env("BEMI_SLOT", &slot)
        .env("BEMI_EXAMPLE_ADDR", &addr)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    // Anonymous: the app's authentication says no one is signed in.
    let anonymous = wait_until("the example to serve", Duration::from_secs(60), || {
        let http = http.clone();
        let url = format!("{base}/audit/api/changes");
        async move { Ok(http.get(url).send().await.ok()) }
    })
    .await?;
    ensure!(
        anonymous.status() == reqwest::StatusCode::UNAUTHORIZED,
        "{}",
        anonymous.status()
    );
    // The worker runs in the example: wait until its slot streams (a slot being created is
    // already active, but a write made before its consistent point is not decoded), then write
    // as user 42.
    bemi_tests::worker::wait_until_slot_streams(&db, &slot).await?;
    http.post(format!("{base}/todo"))
        .header("x-user-id", "42")
        .json(&json!({"task": "Sleep"}))
        .send()
        .await?
        .error_for_status()?;
    let page = wait_until(
        &format!(
            "the change on the audit page (logs: {})",
            log_path.display()
        ),
        Duration::from_secs(60),
        || {
            let http = http.clone();
            let url = format!("{base}/audit?context=user_id%3D%2242%22");
            async move {
                // 503 until the example's worker has created `changes`.
                let response = http.get(url).header("x-user-id", "support").send().await?;
                if !response.status().is_success() {
                    return Ok(None);
                }
                let page = response.text().await?;
                Ok(page.contains("class=\"change\"").then_some(page))
            }
        },
    )
    .await?;
    ensure!(
        page.contains("href=\"/audit/rows/todo/1\""),
        "links stay under /audit"
    );
    // Read-only users may not revert.
    let refused = http
        .post(format!("{base}/audit/api/revert"))
        .header("x-user-id", "support")
        .bearer_auth("not-a-session")
        .json(&json!({"transaction": 1}))
        .send()
        .await?;
    ensure!(refused.status() == reqwest::StatusCode::FORBIDDEN);
    Ok(())
}
e2e_test!(the_mounted_ui_example_shows_the_write_to_its_users);
