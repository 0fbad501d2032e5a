//! Fuzz targets against the real server (run with `BEMI_FUZZ_SECONDS=N` for a time budget;
//! see `bemi_fuzz`):
//!
//! - annotated SQL: generated statements — strings of every quoting, comments of every kind
//!   between tokens and at the end, reads and writes, some cut short — are annotated with a
//!   context; PostgreSQL must parse the annotated text as the same statement as the original
//!   (`EXPLAIN (VERBOSE)` gives the same plan, or the same error), every write must get the
//!   annotation, and the trigger must emit exactly the context that was appended;
//! - context round trip: any JSON object, through the sqlx adapter (the comment carrier and
//!   the message carrier) and the tokio-postgres adapter, arrives in the WAL as itself.

use std::sync::Arc;

use anyhow::{Context as _, ensure};
use bemi_core::carrier::Carrier;
use bemi_core::{IntoContext as _, context};
use bemi_sqlx::BemiPool;
use bemi_tests::wal::{WalSlot, bemi_contexts};
use bemi_tests::{TestCluster, TestDb, TestResult};
use bemi_tokio_postgres::BemiClient;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value};
use sqlx::Row as _;

/// Runs an async property on the e2e runtime from proptest's synchronous runner, on inputs of
/// the strategy `strategy()` makes (made on the runner's thread: proptest's boxed strategies
/// stay on one thread).
pub(crate) async fn check_async<S, F, Fut>(
    target: &'static str,
    smoke_cases: u32,
    strategy: fn() -> S,
    property: F,
) -> TestResult
where
    S: Strategy + 'static,
    S::Value: std::fmt::Debug,
    F: Fn(S::Value) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        bemi_fuzz::check(target, smoke_cases, strategy(), |input| {
            runtime
                .block_on(property(input))
                .map_err(|error| TestCaseError::fail(format!("{error:#}")))
        })
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    Ok(())
}

/// Characters that probe quoting and comments.
const TRICKY_CHARS: &str = "a'\"$*/-\\\n é;{}\u{0}\t_1";

fn tricky_text(max: usize) -> impl Strategy<Value = String> {
    let chars: Vec<char> = TRICKY_CHARS.chars().collect();
    prop_oneof![
        3 => vec(prop::sample::select(chars), 0..max).prop_map(|c| c.into_iter().collect()),
        1 => prop::sample::select(vec![
            "*/", "/*", "/*Bemi ", " Bemi*/", "/*Bemi {} Bemi*/", "--", "$$", "$t$", "\\u002a",
            "'; DROP TABLE fz; --", "\u{202e}", "\u{10ffff}",
        ])
        .prop_map(String::from),
        1 => ".{0,12}",
    ]
}

/// A JSON value of every kind, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        tricky_text(16).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((tricky_text(8), inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A context: a JSON object, sometimes with a key of its own named `SQL`.
fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    (
        vec((tricky_text(10), json_value()), 0..6),
        proptest::option::weighted(0.1, tricky_text(10)),
    )
        .prop_map(|(pairs, sql)| {
            let mut map: Map<String, Value> = pairs.into_iter().collect();
            if let Some(sql) = sql {
                map.insert("SQL".into(), Value::String(sql));
            }
            map
        })
}

/// What the message of a write of `sql` with `context` holds: the context, and the statement
/// (trimmed) under `SQL` unless the context has that key.
fn expected_message(context: &Map<String, Value>, sql: &str) -> Value {
    let mut expected = context.clone();
    expected
        .entry("SQL")
        .or_insert_with(|| Value::String(sql.trim().to_owned()));
    Value::Object(expected)
}

/// A statement template: `_` is a place for whitespace or a comment, `{s}` a string literal,
/// `{i}` an integer; and whether it writes.
const TEMPLATES: &[(&str, bool)] = &[
    ("INSERT_INTO_fz_(a,_b)_VALUES_({i},_{s})", true),
    (
        "insert_into_\"fz\"_(a,_\"we\"\"ird\")_values_({i},_{s})_RETURNING_a",
        true,
    ),
    ("UPDATE_fz_SET_b_=_{s}_WHERE_a_=_{i}", true),
    ("DELETE_FROM_fz_WHERE_b_=_{s}", true),
    (
        "WITH_w_AS_(INSERT_INTO_fz_(a,_b)_VALUES_({i},_{s})_RETURNING_a)_SELECT_a_FROM_w",
        true,
    ),
    (
        "MERGE_INTO_fz_USING_(SELECT_{i}_AS_a)_AS_s_ON_fz.a_=_s.a_WHEN_NOT_MATCHED_THEN_INSERT_(a,_b)_VALUES_(s.a,_{s})",
        true,
    ),
    ("SELECT_{s}_AS_x,_{i}", false),
    ("SELECT_a_FROM_fz_WHERE_b_=_{s}_FOR_UPDATE", false),
];

/// Whitespace and comments, as they may stand between tokens.
const TRIVIA: &[&str] = &[
    " ",
    " ",
    " ",
    "\n",
    "\t",
    " /* c */ ",
    "/**/",
    " /* a /* nested */ b */ ",
    " -- line\n",
    "\n--\n",
    " /*Bemi {\"fake\":1} Bemi*/ ",
];

/// What may end a statement.
const ENDINGS: &[&str] = &[
    "",
    "",
    ";",
    " ; ",
    "\n",
    " -- trailing",
    " -- trailing\n",
    " /* c */",
    ";\n",
    "; -- after",
    "; /* after */",
    " --",
];

fn string_literal() -> impl Strategy<Value = String> {
    (
        0..4u8,
        tricky_text(12),
        prop::sample::select(vec!["", "t", "x_1"]),
    )
        .prop_map(|(kind, body, tag)| {
            let body = body.replace('\0', "");
            match kind {
                0 => format!("'{}'", body.replace('\'', "''")),
                1 => format!("E'{}'", body.replace('\\', "\\\\").replace('\'', "\\'")),
                2 => {
                    let body = body.replace('$', "");
                    format!("${tag}${body}${tag}$")
                }
                _ => format!("'{}'::text", body.replace('\'', "''")),
            }
        })
}

/// A generated statement: its text, whether it writes, whether it was cut short.
#[derive(Debug, Clone)]
struct Statement {
    sql: String,
    writes: bool,
    cut: bool,
}

fn statement() -> impl Strategy<Value = Statement> {
    (
        prop::sample::select(TEMPLATES),
        prop::sample::select(TRIVIA),
        vec(prop::sample::select(TRIVIA), 24),
        vec(string_literal(), 2),
        vec(any::<i32>(), 2),
        prop::sample::select(ENDINGS),
        proptest::option::weighted(0.1, any::<prop::sample::Index>()),
    )
        .prop_map(
            |((template, writes), lead, gaps, strings, ints, ending, cut)| {
                let mut sql = String::from(lead.trim_start_matches(' '));
                let (mut gaps, mut strings, mut ints) =
                    (gaps.into_iter(), strings.into_iter(), ints.into_iter());
                let mut rest = template;
                while !rest.is_empty() {
                    if let Some(after) = rest.strip_prefix("{s}") {
                        sql.push_str(&strings.next().unwrap_or_default());
                        rest = after;
                    } else if let Some(after) = rest.strip_prefix("{i}") {
                        sql.push_str(&ints.next().unwrap_or_default().to_string());
                        rest = after;
                    } else if let Some(after) = rest.strip_prefix('_') {
                        sql.push_str(gaps.next().unwrap_or(" "));
                        rest = after;
                    } else {
                        let c = rest.chars().next().unwrap_or(' ');
                        sql.push(c);
                        rest = &rest[c.len_utf8()..];
                    }
                }
                sql.push_str(ending);
                let cut = cut.map(|at| {
                    let boundaries: Vec<usize> = sql.char_indices().map(|(i, _)| i).collect();
                    sql.truncate(boundaries[at.index(boundaries.len())]);
                });
                Statement {
                    sql,
                    writes,
                    cut: cut.is_some(),
                }
            },
        )
}

/// The server's reading of `sql`: its verbose plan, or its error (SQLSTATE and message).
async fn server_reading(db: &TestDb, sql: &str) -> anyhow::Result<Result<Vec<String>, String>> {
    let explain = format!("EXPLAIN (VERBOSE, COSTS OFF) {sql}");
    match sqlx::raw_sql(sqlx::AssertSqlSafe(explain))
        .fetch_all(&db.pool)
        .await
    {
        Ok(rows) => Ok(Ok(rows
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?)),
        Err(sqlx::Error::Database(error)) => Ok(Err(format!(
            "{}: {}",
            error.code().unwrap_or_default(),
            error.message()
        ))),
        Err(error) => Err(error.into()),
    }
}

async fn fuzz_db(cluster: &TestCluster, hint: &str) -> anyhow::Result<(TestDb, WalSlot)> {
    let db = cluster
        .tracked_database(hint, "CREATE TABLE fz (a int, b text, \"we\"\"ird\" text)")
        .await?;
    let slot = db.wal_slot().await?;
    Ok((db, slot))
}

async fn fuzz_annotated_sql_parses_as_the_same_statement(cluster: Arc<TestCluster>) -> TestResult {
    let (db, slot) = fuzz_db(&cluster, "fuzz_sql").await?;
    let db = Arc::new(db);
    let slot = Arc::new(slot);
    check_async(
        "annotated SQL",
        150,
        || (statement(), json_object()),
        move |(statement, context)| {
            let (db, slot) = (Arc::clone(&db), Arc::clone(&slot));
            async move {
                let ctx = Value::Object(context.clone())
                    .into_context()
                    .context("an object is a context")?;
                let annotated = bemi_core::sql::annotate(&statement.sql, &ctx);
                let plain = server_reading(&db, &statement.sql).await?;
                if statement.writes && !statement.cut {
                    ensure!(
                        plain.is_ok(),
                        "the generated write does not parse: {plain:?}"
                    );
                    ensure!(annotated.is_some(), "a write was not annotated");
                }
                if !statement.writes && !statement.cut {
                    ensure!(annotated.is_none(), "a read was annotated: {annotated:?}");
                }
                let Some(annotated) = annotated else {
                    return Ok(());
                };
                let read = server_reading(&db, &annotated).await?;
                ensure!(
                    read == plain,
                    "PostgreSQL reads the annotated text differently:\n{annotated}\n{read:#?}\n\
                 the original:\n{plain:#?}"
                );
                if plain.is_err() {
                    return Ok(());
                }
                // Run it: the trigger must emit exactly the context that was appended.
                slot.read().await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(annotated.clone()))
                    .execute(&db.pool)
                    .await?;
                let messages = bemi_contexts(&slot.read().await?)?;
                let expected = expected_message(&context, &statement.sql);
                ensure!(
                    messages == [expected.clone()],
                    "the trigger emitted {messages:#?}, not {expected:#?}, for\n{annotated}"
                );
                Ok(())
            }
        },
    )
    .await
}
e2e_test!(fuzz_annotated_sql_parses_as_the_same_statement);

async fn fuzz_any_context_round_trips_through_the_wal(cluster: Arc<TestCluster>) -> TestResult {
    let (db, slot) = fuzz_db(&cluster, "fuzz_context").await?;
    let pool = db.bemi_pool();
    let comment = BemiPool::new(db.pool.clone()).carrier(Carrier::Comment);
    let client = Arc::new(BemiClient::new(db.tokio_postgres().await?));
    let slot = Arc::new(slot);
    const SQL: &str = "INSERT INTO fz (a, b) VALUES (1, $1)";
    check_async("context round trip", 60, json_object, move |context| {
        let (pool, comment, client, slot) = (
            pool.clone(),
            comment.clone(),
            Arc::clone(&client),
            Arc::clone(&slot),
        );
        async move {
            let ctx = Value::Object(context.clone());
            slot.read().await?;
            context::scope(bemi_tests::ctx(ctx), async {
                // The comment carrier (autocommit through the pool) …
                sqlx::query(SQL).bind("comment").execute(&comment).await?;
                // … the message carrier (in a transaction) …
                let mut tx = pool.begin().await?;
                sqlx::query(SQL).bind("message").execute(&mut tx).await?;
                tx.commit().await?;
                // … and tokio-postgres's default.
                client.execute(SQL, &[&"tokio"]).await?;
                anyhow::Ok(())
            })
            .await?;
            let messages = bemi_contexts(&slot.read().await?)?;
            let expected = expected_message(&context, SQL);
            ensure!(
                messages == [expected.clone(), expected.clone(), expected.clone()],
                "messages {messages:#?}, expected three of {expected:#?}"
            );
            Ok(())
        }
    })
    .await
}
e2e_test!(fuzz_any_context_round_trips_through_the_wal);
