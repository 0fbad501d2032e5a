//! 1 000 concurrent requests with distinct `x-user-id` through the axum and the actix todo apps:
//! every write's message carries its own request's user id; none crossed, none missing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_examples::todo;
use bemi_tests::{TestCluster, TestResult};
use bemi_tokio_postgres::BemiClient;
use reqwest::StatusCode;
use serde_json::json;

use crate::open_files;
use crate::serve::{self, Served};

/// How many requests; each is its own user.
const REQUESTS: i64 = 1000;
/// The whole burst must be answered within this time.
const BURST_DEADLINE: Duration = Duration::from_secs(180);
/// Open files a burst needs: both ends of every connection, plus room for the database
/// connections, the cluster and the tests that run at the same time.
const OPEN_FILES: libc::rlim_t = 2 * REQUESTS as libc::rlim_t + 512;

/// Sends all requests at once (`POST /todo {"task": "load-N"}` as user N) and waits, with a
/// deadline, until every one is answered with 201.
pub(crate) async fn burst(server: &Served) -> anyhow::Result<()> {
    open_files::ensure_at_least(OPEN_FILES, "the burst of 1 000 concurrent requests")?;
    let http = serve::client()?;
    let mut requests = tokio::task::JoinSet::new();
    for user in 1..=REQUESTS {
        let request = http
            .post(server.url("/todo"))
            .header("x-user-id", user.to_string())
            .json(&json!({"task": format!("load-{user}")}));
        requests.spawn(async move { (user, request.send().await) });
    }
    tokio::time::timeout(BURST_DEADLINE, async {
        while let Some(joined) = requests.join_next().await {
            let (user, response) = joined?;
            let response = response.with_context(|| format!("request of user {user}"))?;
            ensure!(
                response.status() == StatusCode::CREATED,
                "user {user}: {response:?}"
            );
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("{REQUESTS} requests not answered within {BURST_DEADLINE:?}"))?
}

/// Every row `load-N` is alone in its transaction after exactly one message whose `user_id` is
/// N; all N are there, once.
async fn assert_each_write_has_its_own_user(slot: &bemi_tests::WalSlot) -> TestResult {
    assert_each_write_has_its_own_user_with(slot, |sql| sql == Some(todo::INSERT)).await
}

/// [`assert_each_write_has_its_own_user`], for an app whose library writes its own SQL:
/// `sql_ok` judges the message's `SQL` key (`None` without one: a prepared statement's).
pub(crate) async fn assert_each_write_has_its_own_user_with(
    slot: &bemi_tests::WalSlot,
    sql_ok: impl Fn(Option<&str>) -> bool,
) -> TestResult {
    let txns = slot.read_transactions().await?;
    let mut users = BTreeSet::new();
    for txn in &txns {
        ensure!(txn.rows.len() == 1, "one row per request: {txn:?}");
        let task = serve::task_of(&txn.rows[0].1)?;
        let user: i64 = task
            .strip_prefix("load-")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("task {task}"))?;
        let [message] = txn.messages.as_slice() else {
            anyhow::bail!("the row of user {user} got {:?}", txn.messages);
        };
        let mut context = message.clone();
        let sql = context
            .as_object_mut()
            .and_then(|object| object.remove("SQL"));
        ensure!(
            context == json!({"user_id": user, "endpoint": "/todo", "method": "POST"})
                && sql_ok(sql.as_ref().and_then(serde_json::Value::as_str)),
            "the row of user {user} got {message}"
        );
        ensure!(users.insert(user), "user {user} wrote twice");
    }
    ensure!(
        users.len() as i64 == REQUESTS,
        "{} of {REQUESTS} writes",
        users.len()
    );
    Ok(())
}

async fn axum_todo_app_keeps_1000_concurrent_contexts_apart(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "axum_load").await?;
    let slot = db.wal_slot().await?;
    let server = serve::axum(bemi_examples::axum_app::router(db.bemi_pool())).await?;
    burst(&server).await?;
    server.stop().await;
    assert_each_write_has_its_own_user(&slot).await
}
e2e_test!(axum_todo_app_keeps_1000_concurrent_contexts_apart);

async fn actix_todo_app_keeps_1000_concurrent_contexts_apart(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "actix_load").await?;
    let slot = db.wal_slot().await?;
    let server = serve::actix_todo(BemiClient::new(db.tokio_postgres().await?)).await?;
    burst(&server).await?;
    server.stop().await;
    assert_each_write_has_its_own_user(&slot).await
}
e2e_test!(actix_todo_app_keeps_1000_concurrent_contexts_apart);
