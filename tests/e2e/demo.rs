//! The demo end to end: Bemi's five requests through the axum app over HTTP, the worker, and
//! the `changes` rows they produce — the shape of Bemi's example table.

use std::sync::Arc;

use anyhow::ensure;
use bemi_audit::Operation;
use bemi_tests::worker::{RunningWorker, worker_config};
use bemi_tests::{TestCluster, TestResult};
use serde_json::json;

async fn requests_through_the_axum_app_become_the_seeds_changes_table(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("demo").await?;
    let slot = format!("demo_{}", db.name);
    let changes = bemi_examples::demo::replay(&db.url, &slot).await?;
    let shape: Vec<(Operation, Option<&str>)> = changes
        .iter()
        .map(|c| (c.operation, c.primary_key.as_deref()))
        .collect();
    ensure!(
        shape
            == [
                (Operation::Create, Some("1")),
                (Operation::Create, Some("2")),
                (Operation::Create, Some("3")),
                (Operation::Update, Some("1")),
                (Operation::Delete, Some("2")),
            ],
        "{shape:?}"
    );
    let row =
        |id: i64, task: &str, done: bool| json!({"id": id, "task": task, "is_completed": done});
    ensure!(changes[0].before == json!({}) && changes[0].after == row(1, "Sleep", false));
    ensure!(changes[2].after == row(3, "Repeat", false));
    ensure!(
        changes[3].before == row(1, "Sleep", false) && changes[3].after == row(1, "Sleep", true)
    );
    ensure!(changes[4].before == row(2, "Eat", false) && changes[4].after == json!({}));
    let endpoints = ["/todo", "/todo", "/todo", "/todo/1/complete", "/todo/2"];
    let methods = ["POST", "POST", "POST", "PUT", "DELETE"];
    for ((change, endpoint), method) in changes.iter().zip(endpoints).zip(methods) {
        let context = &change.context;
        ensure!(context["user_id"] == 187234, "{context}");
        ensure!(
            context["endpoint"] == endpoint && context["method"] == method,
            "{context}"
        );
        ensure!(
            context["SQL"].as_str().is_some_and(|sql| !sql.is_empty()),
            "{context}"
        );
        ensure!(change.table == "todo" && change.schema == "public" && change.database == db.name);
        ensure!(change.committed_at <= change.created_at);
    }
    ensure!(
        changes
            .windows(2)
            .all(|w| w[0].committed_at <= w[1].committed_at),
        "committed_at out of order"
    );
    bemi_examples::demo::drop_slot(&db.url, &slot).await?;
    Ok(())
}
e2e_test!(requests_through_the_axum_app_become_the_seeds_changes_table);

/// With a bemi worker already streaming the database (just started: nothing written yet), the
/// demo lets it capture the changes instead of running a second worker, and each of the five
/// changes is stored once.
async fn the_demo_relies_on_a_running_worker_that_captures_todo(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster
        .tracked_database("demo_shared", "CREATE TABLE notes (id int PRIMARY KEY)")
        .await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let slot = format!("demo_{}", db.name);
    let changes = bemi_examples::demo::replay(&db.url, &slot).await?;
    ensure!(changes.len() == 5, "{changes:#?}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM changes WHERE \"table\" = 'todo'")
        .fetch_one(&db.pool)
        .await?;
    ensure!(stored == 5, "{stored} todo changes stored");
    let demo_slot: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
    )
    .bind(&slot)
    .fetch_one(&db.pool)
    .await?;
    ensure!(!demo_slot, "the demo ran a worker of its own");
    worker.stop().await?;
    Ok(())
}
e2e_test!(the_demo_relies_on_a_running_worker_that_captures_todo);
