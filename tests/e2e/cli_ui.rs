//! `bemi ui`: refuses to expose the audit trail without a token, serves it with one, and stops
//! cleanly on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use bemi_tests::{TestCluster, TestResult};

use crate::cli_support::{Background, bemi, free_port};

async fn ui_needs_a_token_off_loopback_and_serves_with_one(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("cli_ui").await?;
    let mut conn = db.pool.acquire().await?;
    bemi_audit::schema::prepare(&mut conn).await?;
    drop(conn);
    let env = [("DATABASE_URL", db.url.as_str())];

    let open = bemi(&["ui", "--addr", "0.0.0.0:0"], &env).await?;
    ensure!(open.status.code() == Some(1), "{open:#?}");
    ensure!(
        open.stderr.contains("--token") && open.stderr.contains("127.0.0.1"),
        "{}",
        open.stderr
    );
    let revert_without_token = bemi(&["ui", "--allow-revert"], &env).await?;
    ensure!(
        revert_without_token.status.code() == Some(1),
        "{revert_without_token:#?}"
    );

    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut ui = Background::start(&["ui", "--addr", &addr, "--token", "s3cret"], &env)?;
    let line = ui
        .line_where("BEMI_UI_URL=…", Duration::from_secs(60), |line| {
            line.starts_with("BEMI_UI_URL=")
        })
        .await?;
    ensure!(line == format!("BEMI_UI_URL=http://{addr}/"), "{line}");
    let client = reqwest::Client::new();
    let anonymous = client
        .get(format!("http://{addr}/api/changes"))
        .send()
        .await?;
    ensure!(anonymous.status() == reqwest::StatusCode::UNAUTHORIZED);
    let signed_in = client
        .get(format!("http://{addr}/api/changes"))
        .bearer_auth("s3cret")
        .send()
        .await?;
    ensure!(signed_in.status() == reqwest::StatusCode::OK);
    let revert = client
        .post(format!("http://{addr}/api/revert"))
        .bearer_auth("s3cret")
        .json(&serde_json::json!({"transaction": 1}))
        .send()
        .await?;
    ensure!(
        revert.status() == reqwest::StatusCode::FORBIDDEN,
        "no --allow-revert"
    );
    ui.terminate().await?;

    // Without a token only loopback names are served (DNS rebinding); --public-url names
    // another, and then only that one.
    let bad = bemi(&["ui", "--public-url", "ftp://audit.example"], &env).await?;
    ensure!(
        bad.status.code() == Some(1) && bad.stderr.contains("https://"),
        "{bad:#?}"
    );
    for (public_url, served, refused) in [
        (None, "localhost", "attacker.example"),
        (Some("http://audit.example"), "audit.example", "127.0.0.1"),
    ] {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut args = vec!["ui", "--addr", addr.as_str()];
        args.extend(public_url.iter().flat_map(|url| ["--public-url", *url]));
        let mut ui = Background::start(&args, &env)?;
        ui.line_where("BEMI_UI_URL=…", Duration::from_secs(60), |line| {
            line.starts_with("BEMI_UI_URL=")
        })
        .await?;
        let get = |host: &str| {
            client
                .get(format!("http://{addr}/export.ndjson"))
                .header("host", host)
                .send()
        };
        let ok = get(served).await?;
        ensure!(
            ok.status() == reqwest::StatusCode::OK,
            "{served}: {}",
            ok.status()
        );
        let misdirected = get(refused).await?;
        ensure!(
            misdirected.status() == reqwest::StatusCode::MISDIRECTED_REQUEST,
            "{refused}: {}",
            misdirected.status()
        );
        ensure!(misdirected.text().await?.contains("--public-url"));
        ui.terminate().await?;
    }
    Ok(())
}
e2e_test!(ui_needs_a_token_off_loopback_and_serves_with_one);
