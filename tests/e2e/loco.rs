//! The Loco todo app (`bemi_examples::loco_app`: `bemi_loco`'s initializer, job and task
//! wrappers) over real HTTP, its background jobs run by Loco's PostgreSQL queue, and the real
//! capture worker storing `changes`:
//!
//! - 1 000 concurrent requests: every write stored with its own request's context;
//! - a job enqueued by a request: its write stored with the job's name and arguments and the
//!   request's context; jobs enqueued by a Loco task: with the task's context; a job enqueued
//!   outside any context: with the job's own context only;
//! - the binary's start-up path serves and runs the jobs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_examples::loco_app::{self, ArchiveArgs, ArchiveTodo};
use bemi_examples::startup::{self, App, Example};
use bemi_loco::PerformLaterWithContext as _;
use bemi_tests::worker::{RunningWorker, StoredChange, stored_changes, worker_config};
use bemi_tests::{TestCluster, TestDb, TestResult, todo_db, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::serve::{self, Served};
use crate::todo_load::burst;

const USER: &str = "187234";

/// The capture worker of `db`, for the todo table only (not Loco's `pg_loco_queue`).
async fn capture(db: &TestDb) -> anyhow::Result<RunningWorker> {
    RunningWorker::start(worker_config(db).tables(["todo"])).await
}

/// Waits until `changes` holds `count` changes (the worker captures only `todo`), then
/// returns them.
async fn wait_for_todo_changes(db: &TestDb, count: usize) -> anyhow::Result<Vec<StoredChange>> {
    wait_until(
        &format!("{count} changes of todo"),
        Duration::from_secs(120),
        || async {
            let stored = bemi_tests::worker::stored_count(db).await?;
            Ok(stored.is_some_and(|n| n as usize >= count).then_some(()))
        },
    )
    .await?;
    let changes = stored_changes(db).await?;
    ensure!(
        changes.len() == count && changes.iter().all(|c| c.table == "todo"),
        "expected {count} changes of todo, got {changes:#?}"
    );
    Ok(changes)
}

/// A change's context without the `SQL` key, and that key (which every write has).
fn context_and_sql(change: &StoredChange) -> anyhow::Result<(Value, String)> {
    let mut context = change.context.clone();
    let sql = context
        .as_object_mut()
        .and_then(|object| object.remove("SQL"))
        .and_then(|sql| sql.as_str().map(str::to_owned))
        .with_context(|| format!("no SQL key in {change:?}"))?;
    Ok((context, sql))
}

async fn loco_todo_app_keeps_1000_concurrent_contexts_apart(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "loco_load").await?;
    let worker = capture(&db).await?;
    let app = loco_app::boot(&db.url).await?;
    let server = serve::axum(app.router).await?;
    burst(&server).await?;
    server.stop().await;

    let changes = wait_for_todo_changes(&db, 1000).await?;
    worker.stop().await?;
    let mut users = BTreeSet::new();
    for change in &changes {
        let task = change.after["task"].as_str().context("task")?;
        let user: i64 = task
            .strip_prefix("load-")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("task {task}"))?;
        let (context, sql) = context_and_sql(change)?;
        ensure!(
            change.operation == "CREATE"
                && context == json!({"user_id": user, "endpoint": "/todo", "method": "POST"})
                && sql.starts_with(r#"INSERT INTO "todo""#),
            "the row of user {user} was stored as {change:?}"
        );
        ensure!(users.insert(user), "user {user} wrote twice");
    }
    ensure!(users.len() == 1000, "{} of 1000 writes", users.len());
    Ok(())
}
e2e_test!(loco_todo_app_keeps_1000_concurrent_contexts_apart);

/// Sends a request as [`USER`] and checks its status; returns the JSON body (`null` for none).
async fn request(
    http: &reqwest::Client,
    request: reqwest::RequestBuilder,
    expected: StatusCode,
) -> anyhow::Result<Value> {
    let response = http
        .execute(request.header("x-user-id", USER).build()?)
        .await?;
    let status = response.status();
    let body = response.text().await?;
    ensure!(status == expected, "{status} (expected {expected}): {body}");
    Ok(if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body)?
    })
}

/// Waits until `GET /todo` lists exactly `tasks` (jobs run in the queue's own time).
async fn wait_for_list(http: &reqwest::Client, server: &Served, tasks: &[&str]) -> TestResult {
    wait_until(
        &format!("the todo list to be {tasks:?}"),
        Duration::from_secs(60),
        || async {
            let list: Vec<Value> = http.get(server.url("/todo")).send().await?.json().await?;
            let listed: Vec<&str> = list.iter().filter_map(|t| t["task"].as_str()).collect();
            Ok((listed == tasks).then_some(()))
        },
    )
    .await
}

async fn loco_jobs_and_tasks_write_with_their_own_context(cluster: Arc<TestCluster>) -> TestResult {
    let db = todo_db(&cluster, "loco_jobs").await?;
    let worker = capture(&db).await?;
    let app = loco_app::boot(&db.url).await?;
    let queue = loco_app::start_worker(&app.ctx);
    let server = serve::axum(app.router.clone()).await?;
    let http = serve::client()?;

    // The REST interface, as user 187234.
    let mut ids = BTreeMap::new();
    for task in ["Sleep", "Eat", "Repeat", "Walk", "Nap"] {
        let post = http.post(server.url("/todo")).json(&json!({"task": task}));
        let row = request(&http, post, StatusCode::CREATED).await?;
        ensure!(row["task"] == task && row["is_completed"] == false, "{row}");
        ids.insert(task, row["id"].as_i64().context("id")?);
    }
    for task in ["Sleep", "Walk"] {
        let put = http.put(server.url(&format!("/todo/{}/complete", ids[task])));
        let row = request(&http, put, StatusCode::OK).await?;
        ensure!(row["is_completed"] == true, "{row}");
    }
    let delete = http.delete(server.url(&format!("/todo/{}", ids["Eat"])));
    request(&http, delete, StatusCode::NO_CONTENT).await?;
    let missing = http.delete(server.url(&format!("/todo/{}", ids["Eat"])));
    request(&http, missing, StatusCode::NOT_FOUND).await?;

    // A job enqueued by a request, run by Loco's queue worker.
    let archive = http.post(server.url(&format!("/todo/{}/archive", ids["Repeat"])));
    let accepted = request(&http, archive, StatusCode::ACCEPTED).await?;
    ensure!(accepted["job_id"].is_string(), "{accepted}");
    wait_for_list(&http, &server, &["Sleep", "Walk", "Nap"]).await?;

    // Jobs enqueued by a Loco task (outside any request): one per completed todo.
    loco_app::run_task(&app.ctx, "archive_completed").await?;
    wait_for_list(&http, &server, &["Nap"]).await?;

    // A job enqueued with no context at all.
    ensure!(bemi_core::context::current().is_none());
    ArchiveTodo::perform_later_with_context(&app.ctx, ArchiveArgs { id: ids["Nap"] }).await?;
    wait_for_list(&http, &server, &[]).await?;

    server.stop().await;
    loco_app::stop_worker(&app.ctx, queue).await;

    // 5 creates, 2 updates, 5 deletes, each with the context of what made it.
    let changes = wait_for_todo_changes(&db, 12).await?;
    worker.stop().await?;
    let request_context = |method: &str, endpoint: String| json!({"user_id": 187234, "endpoint": endpoint, "method": method});
    let job_context = |id: i64, mut enqueued_in: Value| {
        let object = enqueued_in.as_object_mut().expect("an object");
        object.insert("job".into(), json!("ArchiveTodo"));
        object.insert("job_args".into(), json!({"id": id}));
        enqueued_in
    };
    let task_context = json!({"task": "archive_completed", "task_vars": {}});
    let mut expected: BTreeMap<(String, i64), Value> = BTreeMap::new();
    for id in ids.values() {
        expected.insert(
            ("CREATE".into(), *id),
            request_context("POST", "/todo".into()),
        );
    }
    for task in ["Sleep", "Walk"] {
        let id = ids[task];
        expected.insert(
            ("UPDATE".into(), id),
            request_context("PUT", format!("/todo/{id}/complete")),
        );
    }
    let eat = ids["Eat"];
    expected.insert(
        ("DELETE".into(), eat),
        request_context("DELETE", format!("/todo/{eat}")),
    );
    let repeat = ids["Repeat"];
    expected.insert(
        ("DELETE".into(), repeat),
        job_context(
            repeat,
            request_context("POST", format!("/todo/{repeat}/archive")),
        ),
    );
    for name in ["Sleep", "Walk"] {
        let id = ids[name];
        expected.insert(("DELETE".into(), id), job_context(id, task_context.clone()));
    }
    expected.insert(
        ("DELETE".into(), ids["Nap"]),
        job_context(ids["Nap"], json!({})),
    );

    let mut stored = BTreeMap::new();
    for change in &changes {
        let id: i64 = change
            .primary_key
            .as_deref()
            .and_then(|key| key.parse().ok())
            .with_context(|| format!("primary key of {change:?}"))?;
        let (context, _sql) = context_and_sql(change)?;
        ensure!(
            stored
                .insert((change.operation.clone(), id), context)
                .is_none(),
            "two {} of todo {id}: {changes:#?}",
            change.operation
        );
    }
    for (key, context) in &expected {
        ensure!(
            stored.get(key) == Some(context),
            "{key:?}: expected the context {context}, stored {:?}",
            stored.get(key)
        );
    }
    ensure!(stored.len() == expected.len(), "stored {stored:#?}");
    Ok(())
}
e2e_test!(loco_jobs_and_tasks_write_with_their_own_context);

/// `todo-loco`'s start-up path (`startup::serve` with `loco_app::router`, on a fresh database:
/// the scaffold creates the table and installs tracking): it serves, its queue worker runs the
/// job a request enqueues, and it stops when told to.
async fn loco_example_startup_serves_and_runs_its_jobs(cluster: Arc<TestCluster>) -> TestResult {
    let db = cluster.database("loco_startup").await?;
    let listener = startup::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let example = Example {
        name: "todo-loco",
        path: "/todo",
        app: App::Router(loco_app::router),
    };
    let url = db.url.clone();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        startup::serve(&example, &url, listener, shutdown).await
    });
    let http = serve::client()?;
    wait_until("todo-loco to serve", Duration::from_secs(60), || async {
        let response = http.get(format!("{base}/todo")).send().await;
        Ok(response
            .ok()
            .filter(|r| r.status() == StatusCode::OK)
            .map(drop))
    })
    .await?;

    let post = http
        .post(format!("{base}/todo"))
        .json(&json!({"task": "Sleep"}));
    let row = request(&http, post, StatusCode::CREATED).await?;
    let id = row["id"].as_i64().context("id")?;
    let archive = http.post(format!("{base}/todo/{id}/archive"));
    request(&http, archive, StatusCode::ACCEPTED).await?;
    wait_until(
        "the job to archive the todo",
        Duration::from_secs(60),
        || async {
            let list: Vec<Value> = http
                .get(format!("{base}/todo"))
                .send()
                .await?
                .json()
                .await?;
            Ok(list.is_empty().then_some(()))
        },
    )
    .await?;

    stop.send(()).ok().context("the server stopped early")?;
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .context("todo-loco did not stop within 60 s of being told to")???;
    Ok(())
}
e2e_test!(loco_example_startup_serves_and_runs_its_jobs);
