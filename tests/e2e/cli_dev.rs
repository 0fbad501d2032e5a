//! `bemi dev`: a tracked, captured throwaway database until Ctrl-C, then nothing left.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_core::context;
use bemi_sqlx::BemiPool;
use bemi_tests::{TODO_TABLE, TestCluster, TestResult, ctx, wait_until};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;

use crate::cli_support::Background;

async fn dev_captures_into_a_throwaway_database_removed_on_ctrl_c(
    _cluster: Arc<TestCluster>,
) -> TestResult {
    let mut dev = Background::start(&["dev", "--heartbeat-interval", "500ms"], &[])?;
    let line = dev
        .line_where("DATABASE_URL=…", Duration::from_secs(120), |line| {
            line.starts_with("DATABASE_URL=")
        })
        .await?;
    let url = line.trim_start_matches("DATABASE_URL=").to_owned();
    ensure!(url.contains("@127.0.0.1:"), "{url}");

    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    let data_dir: String = sqlx::query_scalar("SHOW data_directory")
        .fetch_one(&pool)
        .await?;
    // A table created after `bemi dev` started is tracked and captured.
    sqlx::raw_sql(TODO_TABLE).execute(&pool).await?;
    let bemi = BemiPool::new(pool.clone());
    context::scope(
        ctx(json!({"user_id": 187234})),
        sqlx::query("INSERT INTO todo (task) VALUES ('Sleep')").execute(&bemi),
    )
    .await?;
    let captured: Value = wait_until("the change in `changes`", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            Ok(sqlx::query_scalar(
                "SELECT context FROM changes WHERE \"table\" = 'todo' AND operation = 'CREATE'",
            )
            .fetch_optional(&pool)
            .await?)
        }
    })
    .await?;
    ensure!(captured["user_id"] == 187234, "{captured}");
    pool.close().await;
    // The web UI, printed after the database's URL, shows the change.
    let ui = dev
        .line_where("BEMI_UI_URL=…", Duration::from_secs(30), |line| {
            line.starts_with("BEMI_UI_URL=")
        })
        .await?;
    let ui = ui.trim_start_matches("BEMI_UI_URL=").to_owned();
    ensure!(ui.starts_with("http://127.0.0.1:"), "{ui}");
    let page = reqwest::get(format!("{ui}?table=todo"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    ensure!(
        page.contains("user_id") && page.contains("187234"),
        "{page}"
    );
    // Its UI has no token: a page whose name rebinds to 127.0.0.1 is refused.
    let rebound = reqwest::Client::new()
        .get(format!("{ui}export.ndjson"))
        .header("host", "attacker.example")
        .send()
        .await?;
    ensure!(
        rebound.status() == reqwest::StatusCode::MISDIRECTED_REQUEST,
        "{}",
        rebound.status()
    );

    dev.interrupt().await?;
    ensure!(
        !std::path::Path::new(&data_dir).exists(),
        "{data_dir} is still there"
    );
    let port: u16 = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .context("no port in the URL")?
        .parse()?;
    ensure!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "PostgreSQL still listens on {port}"
    );
    Ok(())
}
e2e_test!(dev_captures_into_a_throwaway_database_removed_on_ctrl_c);
