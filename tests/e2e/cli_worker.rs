//! `bemi worker` as a process: it captures what its flags and environment say, serves metrics,
//! stops cleanly on SIGTERM, and fails fast with the fix on a misconfigured role.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use bemi_core::context;
use bemi_tests::worker::wait_for_changes;
use bemi_tests::{TestCluster, TestResult, ctx, wait_until};
use serde_json::json;

use crate::cli_support::{Background, free_port, with_user};

/// Waits until the worker reports, on its metrics endpoint, that it streams. (The slot's
/// `active` flag is no sign: it is also set while the slot is being created, before changes are
/// decoded.)
pub(crate) async fn wait_until_streaming(
    metrics_addr: &str,
    worker: &mut Background,
) -> TestResult {
    wait_until("the worker to stream", Duration::from_secs(60), || {
        let exited = worker
            .has_exited()
            .map(|exited| exited.then(|| worker.stderr()));
        async move {
            if let Some(stderr) = exited? {
                anyhow::bail!("bemi worker exited: {stderr}");
            }
            // Connection refused until the endpoint is up.
            let Ok(response) = reqwest::get(format!("http://{metrics_addr}/metrics")).await else {
                return Ok(None);
            };
            let body = response.text().await?;
            Ok(body.contains("bemi_connected 1").then_some(()))
        }
    })
    .await
}

async fn worker_binary_captures_serves_metrics_and_exits_0_on_sigterm(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("cli_worker").await?;
    db.exec(
        "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, secret text); \
         CREATE TABLE ignored (id int PRIMARY KEY)",
    )
    .await?;
    db.migrate().await?;
    let slot = format!("bemi_{}", db.name);
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let mut worker = Background::start(
        &["worker", "--heartbeat-interval", "500ms"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("BEMI_SLOT", slot.as_str()),
            ("BEMI_EXCLUDE_TABLES", "ignored,public.other_*"),
            ("BEMI_REDACT", "todo.secret,other.column"),
            ("BEMI_METRICS_ADDR", metrics_addr.as_str()),
        ],
    )?;
    wait_until_streaming(&metrics_addr, &mut worker).await?;

    // Committed before the captured rows: had it been captured, it would be stored first.
    db.exec("INSERT INTO ignored VALUES (1)").await?;
    let pool = db.bemi_pool();
    for task in ["a", "b", "c"] {
        context::scope(
            ctx(json!({"user_id": 187234})),
            sqlx::query("INSERT INTO todo (task, secret) VALUES ($1, 'hunter2')")
                .bind(task)
                .execute(&pool),
        )
        .await?;
    }
    let changes = match wait_for_changes(&db, 3).await {
        Ok(changes) => changes,
        Err(error) => anyhow::bail!(
            "{error:#}; stored: {:#?}; worker log: {}",
            bemi_tests::worker::stored_changes(&db).await,
            worker.stderr()
        ),
    };
    ensure!(changes.len() == 3, "{changes:#?}");
    for change in &changes {
        ensure!(change.table == "todo", "{change:#?}");
        ensure!(change.after["secret"] == "[REDACTED]", "{change:#?}");
        ensure!(change.context["user_id"] == 187234, "{change:#?}");
    }

    let metrics = wait_until("metrics of 3 changes", Duration::from_secs(30), || async {
        let body = reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await?
            .text()
            .await?;
        Ok(body
            .contains("bemi_changes_written_total 3")
            .then_some(body))
    })
    .await?;
    ensure!(metrics.contains("bemi_connected 1"), "{metrics}");

    worker.terminate().await?;
    let logs = worker.stderr();
    ensure!(
        logs.contains("starting the capture worker") && logs.contains("stopped cleanly"),
        "{logs}"
    );
    ensure!(
        !logs.contains(db.url.split('@').next().unwrap_or_default()),
        "the password was logged: {logs}"
    );
    // The server lets go of the slot once it notices the connection closed.
    wait_until(
        "the slot to be released",
        Duration::from_secs(30),
        || async {
            let active: bool =
                sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                    .bind(&slot)
                    .fetch_one(&db.pool)
                    .await?;
            Ok((!active).then_some(()))
        },
    )
    .await?;
    Ok(())
}
e2e_test!(worker_binary_captures_serves_metrics_and_exits_0_on_sigterm);

async fn worker_binary_without_replication_privilege_names_alter_role(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("cli_norepl").await?;
    let role = format!("{}_norepl", db.name);
    db.exec(&format!(
        "CREATE ROLE \"{role}\" LOGIN NOREPLICATION PASSWORD 'norepl-pw'"
    ))
    .await?;
    let url = with_user(&db.url, &role, "norepl-pw")?;
    let result = async {
        let mut worker = Background::start(&["worker"], &[("DATABASE_URL", url.as_str())])?;
        let status = worker.wait(Duration::from_secs(60)).await?;
        let stderr = worker.stderr();
        ensure!(status.code() == Some(1), "{status}: {stderr}");
        ensure!(stderr.contains("ALTER ROLE"), "{stderr}");
        ensure!(stderr.contains("WITH REPLICATION"), "{stderr}");
        Ok(())
    }
    .await;
    db.exec(&format!("DROP ROLE IF EXISTS \"{role}\"")).await?;
    result
}
e2e_test!(worker_binary_without_replication_privilege_names_alter_role);
