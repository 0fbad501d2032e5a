//! Bad input gets a clear error, never a panic: hostile query strings to the real web UI over
//! HTTP (a 400 with a message — never a dropped connection, never a 500), and hostile time
//! arguments to the real `bemi` binary (a usage error, never exit code 101).

use std::sync::Arc;

use anyhow::{Context as _, ensure};
use bemi_tests::{TestCluster, TestResult};
use bemi_ui::UiOptions;
use proptest::strategy::Strategy;
use reqwest::StatusCode;

use crate::cli_support::bemi;
use crate::fuzz::check_async;
use crate::serve;

/// The UI's paths that read the filters from the query string (and resolve them: the live
/// tail's page leaves that to its `/api/tail`).
const FILTERED_PATHS: &[&str] = &[
    "/api/changes",
    "/export.csv",
    "/export.ndjson",
    "/api/tail",
    "/",
];

/// Hostile query strings, each with a word its 400 must say. Each of the first ones broke the
/// UI before: a panic (the connection dropped) or a query PostgreSQL refused (a 500).
const HOSTILE: &[(&str, &str)] = &[
    // The é straddles the date's tenth byte: the time parser panicked.
    ("since=123456789%C3%A9", "2024-05-01"),
    ("until=2024-05-01%C3%A9", "2024-05-01"),
    // Before PostgreSQL's earliest time: the database refused the query (500).
    ("since=2500000d", "earliest"),
    (
        "cursor=-210866803200000001.1.00000000000000000000000000000000",
        "next",
    ),
    // NUL characters PostgreSQL's text and jsonb cannot hold (500).
    ("table=to%00do", "NUL"),
    ("pk=1%00", "NUL"),
    ("changed=%00", "NUL"),
    ("context=user_id%3D%22%5Cu0000%22", "NUL"),
    ("context=a%00%3D1", "NUL"),
    // Other nonsense.
    ("until=2024-05-01T12%3A00%3A00%2B%C3%A9", "2024-05-01"),
    ("since=%F0%9F%92%A9", "2024-05-01"),
    ("since=%FF%FE", "2024-05-01"),
    ("operation=%C3%A9", "CREATE"),
    ("limit=99999999999999999999999", "how many"),
    ("transaction=1e400", "whole number"),
    ("cursor=%C3%A9.%C3%A9.%C3%A9", "next"),
    ("context=%C3%A9", "KEY=VALUE"),
];

async fn hostile_query_strings_get_a_400_that_says_what_to_write(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("hostile_queries").await?;
    bemi_audit::schema::prepare(&mut *db.pool.acquire().await?).await?;
    let (base, _stop) =
        serve::axum_base(bemi_ui::router(db.pool.clone(), UiOptions::new())).await?;
    let client = reqwest::Client::new();
    for (query, hint) in HOSTILE {
        for path in FILTERED_PATHS {
            let url = format!("{base}{path}?{query}");
            // A panic in the handler drops the connection: an error here.
            let response = client
                .get(&url)
                .send()
                .await
                .with_context(|| format!("GET {path}?{query}: no response"))?;
            let status = response.status();
            let body = response.text().await?;
            ensure!(
                status == StatusCode::BAD_REQUEST,
                "GET {path}?{query}: {status}, not 400: {body}"
            );
            ensure!(
                body.contains(hint),
                "GET {path}?{query}: the 400 does not say {hint:?}: {body}"
            );
        }
    }
    // The API's error is JSON that names the parameter.
    let error: serde_json::Value = client
        .get(format!("{base}/api/changes?since=123456789%C3%A9"))
        .send()
        .await?
        .json()
        .await?;
    let message = error["error"].as_str().context("an error message")?;
    ensure!(
        message.starts_with("since") && message.contains("15m"),
        "{message}"
    );

    // Any query string: 200 or 400, never a 500, never a dropped connection.
    let base = Arc::new(base);
    check_async(
        "hostile query strings over HTTP",
        200,
        query_string,
        move |query| {
            let (client, base) = (client.clone(), Arc::clone(&base));
            async move {
                for path in ["/api/changes", "/export.ndjson"] {
                    let response = client
                        .get(format!("{base}{path}?{query}"))
                        .send()
                        .await
                        .with_context(|| format!("GET {path}?{query}: no response"))?;
                    let status = response.status();
                    let body = response.text().await?;
                    ensure!(
                        status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
                        "GET {path}?{query}: {status}: {body}"
                    );
                    ensure!(
                        status == StatusCode::OK || body.contains("\"error\""),
                        "GET {path}?{query}: a 400 without a message: {body}"
                    );
                }
                Ok(())
            }
        },
    )
    .await
}
e2e_test!(hostile_query_strings_get_a_400_that_says_what_to_write);

/// Query strings of the filters' keys (and others) with arbitrary values (any bytes, any
/// text, valid forms with a character put in).
fn query_string() -> impl Strategy<Value = String> {
    bemi_fuzz::query_string(
        &[
            "table",
            "pk",
            "operation",
            "context",
            "since",
            "until",
            "changed",
            "transaction",
            "limit",
            "cursor",
        ],
        &[
            "123456789",
            "2024-05-01T12:00:00+02:00",
            "15m",
            "user_id=187234",
            "1733400000000000.42.0123456789abcdef0123456789abcdef",
        ],
    )
}

async fn hostile_time_arguments_are_usage_errors_not_panics(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("hostile_arguments").await?;
    bemi_audit::schema::prepare(&mut *db.pool.acquire().await?).await?;
    let env = [("DATABASE_URL", db.url.as_str())];
    let cases: &[(&[&str], &str)] = &[
        // Panicked (exit code 101) inside the é.
        (&["changes", "--since", "123456789é"], "--since"),
        (&["changes", "--until", "2024-05-01é"], "--until"),
        (&["changes", "--until", "2024-05-01T12:00:00+é"], "--until"),
        (&["at", "todo", "1", "123456789é"], "TIME"),
        (
            &[
                "revert",
                "--context",
                "request_id=r-1",
                "--since",
                "123456789é",
                "--dry-run",
            ],
            "--since",
        ),
        (&["changes", "--since", "é"], "--since"),
        // Before PostgreSQL's earliest time: refused while the arguments are parsed.
        (&["changes", "--since", "2500000d"], "earliest"),
    ];
    for (args, hint) in cases {
        let output = bemi(args, &env).await?;
        ensure!(
            output.status.code() == Some(2),
            "bemi {args:?}: not a usage error (exit code 2): {output:#?}"
        );
        ensure!(
            output.stderr.contains(hint)
                && (output.stderr.contains("15m") || output.stderr.contains("7d"))
                && !output.stderr.contains("panicked"),
            "bemi {args:?}: the error does not say what to write: {}",
            output.stderr
        );
    }
    // A context filter PostgreSQL cannot compare: an error that says so, not a database error.
    let output = bemi(&["changes", "--context", r#"user_id="\u0000""#], &env).await?;
    ensure!(
        output.status.code() == Some(1) && output.stderr.contains("leave it out"),
        "{output:#?}"
    );
    Ok(())
}
e2e_test!(hostile_time_arguments_are_usage_errors_not_panics);
