//! Tracking never makes a write fail: random writes with random trailing comments (Bemi's,
//! sqlcommenter tags, plain, malformed, huge, Unicode, line comments, several comments) under
//! random `search_path`s (`''`, a tenant schema holding a same-named table and functions named
//! like the migration's, a schema without anything) succeed against a tracked database exactly
//! when they succeed against the same database without tracking — with the same error and the
//! same row counts — and every row they write is captured.
//!
//! Run longer with `BEMI_FUZZ_SECONDS=N` (see `bemi_fuzz`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_tests::worker::{RunningWorker, worker_config};
use bemi_tests::{TestCluster, TestDb, TestResult, wait_until};
use proptest::collection::vec;
use proptest::prelude::*;
use sqlx::{Connection as _, Executor as _, PgConnection};

use crate::fuzz::check_async;

/// The tables and schemas both databases get; the tracked one also gets the migration, which
/// runs before the tenant's objects exist (they are tracked by the event trigger).
const SCHEMA: &str = "CREATE TABLE public.pt (id bigserial PRIMARY KEY, v text NOT NULL);
CREATE SCHEMA tenant;
CREATE SCHEMA empty;";

/// Objects of a tenant schema that shadow what an unqualified trigger would look up.
const TENANT: &str = "CREATE TABLE tenant.pt (id bigserial PRIMARY KEY, v text NOT NULL);
CREATE FUNCTION tenant._bemi_trailing_context(text) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN RAISE EXCEPTION 'the tenant''s function was called'; END$$;
CREATE FUNCTION tenant._bemi_trailing_sqlcommenter(text) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN RAISE EXCEPTION 'the tenant''s function was called'; END$$;
CREATE FUNCTION tenant.strpos(text, text) RETURNS int LANGUAGE plpgsql AS
  $$BEGIN RAISE EXCEPTION 'the tenant''s strpos was called'; END$$;";

const SEARCH_PATHS: &[&str] = &[
    "",
    "tenant",
    "tenant, public",
    "tenant, pg_catalog, public",
    "empty",
    "empty, public",
    "\"$user\", public",
    "pg_catalog",
    "public",
];

/// Writes; `{v}` is the marker value. Every UPDATE changes its rows (the worker leaves out
/// updates that change nothing).
const WRITES: &[&str] = &[
    "INSERT INTO public.pt (v) VALUES ({v})",
    "INSERT INTO pt (v) VALUES ({v})",
    "INSERT INTO public.pt (v) VALUES ({v}), ({v})",
    "UPDATE public.pt SET v = v || '+' || {v} WHERE id % 5 = 0",
    "UPDATE pt SET v = v || '+' || {v} WHERE id % 7 = 1",
    "DELETE FROM public.pt WHERE id % 11 = 3",
    "DELETE FROM pt WHERE id % 13 = 4",
    "WITH w AS (INSERT INTO public.pt (v) VALUES ({v}) RETURNING id) SELECT id FROM w",
];

/// Comments that end a statement, as others write them and as nobody should.
const ENDINGS: &[&str] = &[
    "",
    ";",
    " /* note */",
    " /*Bemi {\"user_id\":1} Bemi*/",
    " /*Bemi {\"user_id\":1} Bemi*/ ;\n",
    " /*Bemi Bemi*/",
    " /*Bemi  Bemi*/",
    " /*Bemi {} Bemi*/",
    " /*Bemi {\"a\":\"\\u002a/\"} Bemi*/",
    " /*Bemi {\"a\":\"*\"} Bemi*/",
    " /*Bemi not json Bemi*/",
    " /*Bemi {\"a\":1} Bemi*/ /* and another */",
    " /* first */ /*Bemi {\"a\":1} Bemi*/",
    " /*Bemi {\"a\":1} Bemi*/ -- line",
    " -- line comment",
    " /*route='%2Ftodo',controller='todo'*/",
    " /*k=*/",
    " /*=v*/",
    " /* ☃ Ω 𝄞 */",
    " /*Bemi {\"é\":\"𝄞\"} Bemi*/",
    " /* a /* nested */ b */",
    " /*/",
    " */",
];

/// A statement's trailing part, made of pieces that probe the trigger's parsing.
fn ending() -> impl Strategy<Value = String> {
    let pieces: Vec<&'static str> = vec![
        "/*", "*/", "/*Bemi ", " Bemi*/", "Bemi", " ", "\n", ";", "*", "{", "}", "'", "=", "é",
        "--", "%", "\\",
    ];
    prop_oneof![
        4 => prop::sample::select(ENDINGS).prop_map(String::from),
        2 => vec(prop::sample::select(pieces), 0..10).prop_map(|p| format!(" {}", p.concat())),
        1 => (0..3usize).prop_map(|kind| {
            // Huge comments: a long Bemi context, a long tag, a long plain comment.
            let long = "é".repeat(200_000);
            match kind {
                0 => format!(" /*Bemi {{\"x\":\"{long}\"}} Bemi*/"),
                1 => format!(" /*k='{long}'*/"),
                _ => format!(" /* {long} */"),
            }
        }),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    search_path: &'static str,
    write: &'static str,
    marker: String,
    ending: String,
    simple_protocol: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(SEARCH_PATHS),
        prop::sample::select(WRITES),
        "[a-z0-9 ]{0,8}",
        ending(),
        any::<bool>(),
    )
        .prop_map(
            |(search_path, write, marker, ending, simple_protocol)| Case {
                search_path,
                write,
                marker,
                ending,
                simple_protocol,
            },
        )
}

impl Case {
    fn sql(&self) -> String {
        let write = self.write.replace("{v}", &format!("'{}'", self.marker));
        format!("{write}{}", self.ending)
    }
}

/// What a statement did: its rows, or its error's SQLSTATE and message.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Rows(u64),
    Failed(String, String),
}

async fn run(conn: &mut PgConnection, case: &Case) -> anyhow::Result<Outcome> {
    sqlx::query("SELECT set_config('search_path', $1, false)")
        .bind(case.search_path)
        .execute(&mut *conn)
        .await?;
    let sql = sqlx::AssertSqlSafe(case.sql());
    let result = if case.simple_protocol {
        conn.execute(sqlx::raw_sql(sql)).await
    } else {
        conn.execute(sqlx::query(sql)).await
    };
    let outcome = match result {
        Ok(done) => Outcome::Rows(done.rows_affected()),
        Err(sqlx::Error::Database(error)) => Outcome::Failed(
            error
                .code()
                .map(std::borrow::Cow::into_owned)
                .unwrap_or_default(),
            error.message().to_owned(),
        ),
        Err(other) => return Err(other).context("the statement's connection failed"),
    };
    // A failed statement aborted nothing else: each runs in autocommit.
    Ok(outcome)
}

/// Rows each table should have in `changes`, by operation, from the statements' row counts.
type Expected = BTreeMap<(String, String), i64>;

fn table_of(case: &Case) -> &'static str {
    let unqualified = !case.write.contains("public.pt");
    let tenant_first = case.search_path.starts_with("tenant");
    if unqualified && tenant_first {
        "tenant.pt"
    } else {
        "public.pt"
    }
}

fn operation_of(case: &Case) -> &'static str {
    if case.write.starts_with("UPDATE") {
        "UPDATE"
    } else if case.write.starts_with("DELETE") {
        "DELETE"
    } else {
        "CREATE"
    }
}

async fn random_comments_and_search_paths_never_fail_a_write(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let tracked = cluster.database("never_fails_tracked").await?;
    let plain = cluster.database("never_fails_plain").await?;
    tracked.exec(SCHEMA).await?;
    tracked.migrate().await?;
    tracked.exec(TENANT).await?;
    plain.exec(SCHEMA).await?;
    plain.exec(TENANT).await?;
    let worker = RunningWorker::start(worker_config(&tracked)).await?;

    let tracked_conn = Arc::new(tokio::sync::Mutex::new(
        PgConnection::connect(&tracked.url).await?,
    ));
    let plain_conn = Arc::new(tokio::sync::Mutex::new(
        PgConnection::connect(&plain.url).await?,
    ));
    let expected = Arc::new(Mutex::new(Expected::new()));
    let failures_seen = Arc::new(Mutex::new(0u64));
    check_async("tracking never fails a write", 400, case, {
        let expected = Arc::clone(&expected);
        let failures_seen = Arc::clone(&failures_seen);
        move |case: Case| {
            let tracked_conn = Arc::clone(&tracked_conn);
            let plain_conn = Arc::clone(&plain_conn);
            let expected = Arc::clone(&expected);
            let failures_seen = Arc::clone(&failures_seen);
            async move {
                let with_tracking = run(&mut *tracked_conn.lock().await, &case).await?;
                let without = run(&mut *plain_conn.lock().await, &case).await?;
                ensure!(
                    with_tracking == without,
                    "with tracking: {with_tracking:?}, without: {without:?}, for {:?} under \
                     search_path {:?}",
                    truncated(&case.sql()),
                    case.search_path
                );
                match with_tracking {
                    Outcome::Rows(rows) => {
                        let key = (table_of(&case).to_owned(), operation_of(&case).to_owned());
                        *expected.lock().unwrap().entry(key).or_default() += rows as i64;
                    }
                    Outcome::Failed(..) => *failures_seen.lock().unwrap() += 1,
                }
                Ok(())
            }
        }
    })
    .await?;
    // The property is not vacuous: some statements failed in both (`pt` under '' or `empty`,
    // broken comments), and most wrote.
    let failures = *failures_seen.lock().unwrap();
    let expected = expected.lock().unwrap().clone();
    ensure!(
        failures > 0,
        "no generated statement failed: the generator lost its teeth"
    );
    ensure!(
        expected.get(&("tenant.pt".to_owned(), "CREATE".to_owned())) > Some(&0)
            && expected.get(&("public.pt".to_owned(), "CREATE".to_owned())) > Some(&0),
        "the generator wrote to too few tables: {expected:?}"
    );

    wait_until_captured(&tracked, &expected).await?;
    worker.stop().await
}
e2e_test!(random_comments_and_search_paths_never_fail_a_write);

/// Waits until `changes` holds exactly the expected rows per table and operation.
async fn wait_until_captured(db: &TestDb, expected: &Expected) -> TestResult {
    let outcome = wait_until(
        "every successful write's rows in changes",
        Duration::from_secs(120),
        || async { Ok((stored_counts(db).await? == *expected).then_some(())) },
    )
    .await;
    match outcome {
        Ok(()) => Ok(()),
        Err(error) => {
            let stored = stored_counts(db).await?;
            Err(error.context(format!(
                "expected {expected:?} in changes, found {stored:?}"
            )))
        }
    }
}

/// The rows of `changes` per table and operation.
async fn stored_counts(db: &TestDb) -> anyhow::Result<Expected> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('changes') IS NOT NULL")
        .fetch_one(&db.pool)
        .await?;
    if !exists {
        return Ok(Expected::new());
    }
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT \"schema\" || '.' || \"table\", operation, count(*) FROM changes GROUP BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(table, operation, count)| ((table, operation), count))
        .collect())
}

fn truncated(sql: &str) -> String {
    if sql.chars().count() > 300 {
        format!(
            "{}… ({} bytes)",
            sql.chars().take(300).collect::<String>(),
            sql.len()
        )
    } else {
        sql.to_owned()
    }
}
