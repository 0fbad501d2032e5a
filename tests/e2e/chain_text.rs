//! The canonical JSON text the hash chain hashes, computed by the writer
//! (`bemi_audit::jsonb_text`) instead of asked of the server: it must be what PostgreSQL prints
//! for any JSON (a fuzz target), a value it cannot vouch for takes the server's text, and a
//! destination that prints differently (a LATIN1 database sorts keys by other bytes) refuses
//! the batch before anything is stored — the batch written again takes the server's text, and
//! the chain verifies.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_audit::chain::{self, ChainHead};
use bemi_audit::jsonb_text::jsonb_text;
use bemi_audit::store::{ChangeBatch, NewChange};
use bemi_tests::poll::wait_until;
use bemi_tests::worker::{RunningWorker, worker_config};
use bemi_tests::{TestCluster, TestDb, TestResult};
use proptest::collection::vec;
use proptest::prelude::*;
use sqlx::{Connection as _, PgConnection};

use crate::fuzz::check_async;

/// JSON whitespace, or none.
fn space() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "\n", "\t ", "\r\n  "])
}

/// A JSON number in any of its written forms.
fn number() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop_oneof!["0", "[1-9][0-9]{0,24}"],
        proptest::option::of("[0-9]{1,10}"),
        proptest::option::of(("[eE]", "[+-]?", 0_u32..=999)),
    )
        .prop_map(|(negative, integer, fraction, exponent)| {
            let mut text = String::new();
            if negative {
                text.push('-');
            }
            text.push_str(&integer);
            if let Some(fraction) = fraction {
                text.push('.');
                text.push_str(&fraction);
            }
            if let Some((e, sign, magnitude)) = exponent {
                // Small exponents mostly; a few long ones.
                let magnitude = if magnitude % 10 == 0 {
                    magnitude
                } else {
                    magnitude % 40
                };
                text.push_str(&format!("{e}{sign}{magnitude}"));
            }
            text
        })
}

/// A JSON string literal: plain characters (of every width), escapes of every kind.
fn string_literal() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            "a", "b", "z", "A", " ", "é", "ß", "😀", "\u{7f}", "\u{2028}", "/", "'", "$", "{", "}",
        ])
        .prop_map(String::from),
        2 => prop::sample::select(vec![
            "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t",
        ])
        .prop_map(String::from),
        2 => (1_u32..0xD800, any::<bool>()).prop_map(|(code, upper)| if upper {
            format!("\\u{code:04X}")
        } else {
            format!("\\u{code:04x}")
        }),
        1 => (0xD800_u32..0xDC00, 0xDC00_u32..0xE000)
            .prop_map(|(high, low)| format!("\\u{high:04x}\\u{low:04X}")),
    ];
    vec(piece, 0..8).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
}

/// Object keys: a few, so that objects repeat them, and of lengths that sort differently
/// than their bytes.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["a", "b", "aa", "ab", "B", "", "é", "zz", "id", "a\\u0062"])
            .prop_map(|key| format!("\"{key}\"")),
        1 => string_literal(),
    ]
}

/// Any JSON document, written with arbitrary whitespace.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        number(),
        string_literal(),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec((space(), inner.clone(), space()), 0..5).prop_map(|items| {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|(before, item, after)| format!("{before}{item}{after}"))
                    .collect();
                format!("[{}]", items.join(","))
            }),
            vec((space(), key(), space(), inner, space()), 0..6).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(s1, key, s2, value, s3)| format!("{s1}{key}{s2}:{s3}{value}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// Fuzz target: for any JSON, what the writer computes is what PostgreSQL prints.
async fn jsonb_text_is_what_postgresql_prints(cluster: Arc<TestCluster>) -> TestResult {
    let db = cluster.database("jsonb_text").await?;
    let pool = db.pool.clone();
    check_async(
        "jsonb_text",
        64,
        || vec((space(), json_text(), space()), 1..24),
        move |documents| {
            let pool = pool.clone();
            async move {
                let documents: Vec<String> = documents
                    .into_iter()
                    .map(|(before, json, after)| format!("{before}{json}{after}"))
                    .collect();
                let printed: Vec<String> = sqlx::query_scalar(
                    "SELECT d::jsonb::text FROM unnest($1::text[]) WITH ORDINALITY AS u(d, n) \
                     ORDER BY n",
                )
                .bind(&documents)
                .fetch_all(&pool)
                .await?;
                for (document, printed) in documents.iter().zip(&printed) {
                    let computed = jsonb_text(document)
                        .with_context(|| format!("refused valid JSON {document:?}"))?;
                    ensure!(
                        &computed == printed,
                        "{document:?}: computed {computed:?}, PostgreSQL printed {printed:?}"
                    );
                }
                Ok(())
            }
        },
    )
    .await
}
e2e_test!(jsonb_text_is_what_postgresql_prints);

/// Stores `batch` as the next batch of `chain_name`, in one transaction; returns how many
/// changes were new and whether the writer computed the JSON's text.
async fn store_chained(
    conn: &mut PgConnection,
    batch: &ChangeBatch<'_>,
    chain_name: &str,
) -> anyhow::Result<(u64, bool)> {
    let mut tx = conn.begin().await?;
    let head = chain::read_head(&mut tx, chain_name).await?;
    let mut chained = batch
        .prepare_chain(chain_name, None, "app", &mut tx)
        .await?;
    let computed = chained.computes_text();
    let new_head: ChainHead = chained.link(head);
    let written = chained.insert(&mut tx).await?;
    chain::record_head(&mut tx, chain_name, head, new_head).await?;
    tx.commit().await?;
    Ok((written, computed))
}

fn created(position: i64, after: &str) -> NewChange<'_> {
    let now = chrono::Utc::now();
    NewChange {
        primary_key: Some("1"),
        before: "{}",
        after,
        context: r#"{"user_id": 7, "SQL": "INSERT INTO todo DEFAULT VALUES"}"#,
        schema: "public",
        table: "todo",
        operation: bemi_audit::Operation::Create,
        committed_at: now,
        queued_at: now,
        transaction_id: 900 + position,
        position,
    }
}

async fn verify_intact(conn: &mut PgConnection) -> TestResult {
    let verification = bemi_audit::verify::verify(conn).await?;
    ensure!(verification.is_intact(), "{verification:?}");
    Ok(())
}

/// A batch with a value the writer cannot vouch for takes the server's text; one that is
/// partly stored already (a re-delivery) leaves those out without a gap; the chain verifies.
async fn values_the_writer_cannot_vouch_for_take_the_servers_text(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("chain_server_text").await?;
    let mut conn = db.pool.acquire().await?;
    bemi_audit::schema::prepare(&mut conn).await?;
    let chain_name = chain::worker_chain(None, "app");

    let mut first = ChangeBatch::default();
    first.push(created(10, r#"{"id":1, "task":"Sleep",  "weight":1.50e1}"#));
    first.push(created(11, r#"{"id":2,"id":3}"#));
    let (written, computed) = store_chained(&mut conn, &first, &chain_name).await?;
    ensure!(
        written == 2 && computed,
        "{written} written, computed here: {computed}"
    );

    // 12 holds an exponent beyond what the writer vouches for; 11 is stored already.
    let mut second = ChangeBatch::default();
    second.push(created(11, r#"{"id":2,"id":3}"#));
    second.push(created(12, r#"{"n":1e1001}"#));
    let (written, computed) = store_chained(&mut conn, &second, &chain_name).await?;
    ensure!(
        written == 1 && !computed,
        "{written} written, computed here: {computed}"
    );

    // A re-delivery through the writer's own text: 11 is stored, 13 is new.
    let mut third = ChangeBatch::default();
    third.push(created(11, r#"{"id":2,"id":3}"#));
    third.push(created(13, r#"{"é":"\u00e9"}"#));
    {
        let mut tx = conn.begin().await?;
        let chained = third
            .prepare_chain(&chain_name, None, "app", &mut tx)
            .await?;
        ensure!(
            chained.already_stored() == 1 && chained.computes_text(),
            "{chained:?}"
        );
    }
    let (written, computed) = store_chained(&mut conn, &third, &chain_name).await?;
    ensure!(
        written == 1 && computed,
        "{written} written, computed here: {computed}"
    );

    let stored: Vec<(i64, String)> =
        sqlx::query_as("SELECT chain_seq, after::text FROM changes ORDER BY chain_seq")
            .fetch_all(&mut *conn)
            .await?;
    ensure!(
        stored.iter().map(|(seq, _)| *seq).collect::<Vec<_>>() == [1, 2, 3, 4],
        "{stored:?}"
    );
    ensure!(
        stored[0].1 == r#"{"id": 1, "task": "Sleep", "weight": 15.0}"#
            && stored[3].1 == r#"{"é": "é"}"#,
        "{stored:?}"
    );
    verify_intact(&mut conn).await
}
e2e_test!(values_the_writer_cannot_vouch_for_take_the_servers_text);

/// A new database in LATIN1 on `db`'s server (named after it, so the run's cleanup drops
/// it); its URL.
async fn latin1_database(db: &TestDb) -> anyhow::Result<String> {
    let latin1 = format!("{}_latin1", db.name);
    // The name is this test's own (letters, digits and underscores).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {latin1} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' \
         TEMPLATE template0"
    )))
    .execute(&db.pool)
    .await?;
    let url = db
        .url
        .replacen(&format!("/{}", db.name), &format!("/{latin1}"), 1);
    ensure!(url != db.url, "no database name in {}", db.url);
    Ok(url)
}

/// A destination in LATIN1 sorts `é` (one byte there) before `zz`: the writer's text differs
/// from the stored value's. The chained insert refuses the batch before storing any of it; the
/// batch written again takes the server's text, and the chain verifies.
async fn a_destination_that_prints_json_differently_refuses_the_batch_and_it_is_written_again(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("chain_latin1").await?;
    let url = latin1_database(&db).await?;
    let mut conn = PgConnection::connect(&url).await?;
    bemi_audit::schema::prepare(&mut conn).await?;
    let chain_name = chain::worker_chain(None, "latin1");

    let after = r#"{"zz": 1, "é": 2}"#;
    let mut batch = ChangeBatch::default();
    batch.push(created(20, after));
    let refused = store_chained(&mut conn, &batch, &chain_name).await;
    let error = refused
        .err()
        .context("the LATIN1 destination took the writer's text")?;
    ensure!(
        format!("{error:#}").contains("differently than they were hashed"),
        "{error:#}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM changes")
        .fetch_one(&mut conn)
        .await?;
    ensure!(stored == 0, "{stored} changes stored by a refused batch");

    let (written, computed) = store_chained(&mut conn, &batch, &chain_name).await?;
    ensure!(
        written == 1 && !computed,
        "{written} written, computed here: {computed}"
    );
    let printed: String = sqlx::query_scalar("SELECT after::text FROM changes")
        .fetch_one(&mut conn)
        .await?;
    ensure!(printed == r#"{"é": 2, "zz": 1}"#, "{printed}");
    verify_intact(&mut conn).await?;
    conn.close().await?;
    Ok(())
}
e2e_test!(a_destination_that_prints_json_differently_refuses_the_batch_and_it_is_written_again);

/// The same through the capture worker: its first batch into a LATIN1 destination is refused,
/// the worker's session starts again, and from then on the chain takes the server's text —
/// every change stored once, the chain intact.
async fn the_worker_recovers_from_a_destination_that_prints_json_differently(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster
        .tracked_database(
            "worker_latin1",
            "CREATE TABLE doc (id bigserial PRIMARY KEY, data jsonb NOT NULL)",
        )
        .await?;
    let url = latin1_database(&db).await?;
    let mut config = worker_config(&db);
    config.destination_url = Some(url.clone());
    let worker = RunningWorker::start(config).await?;
    for n in 0..3 {
        sqlx::query("INSERT INTO doc (data) VALUES ($1::jsonb)")
            .bind(format!(r#"{{"zz": {n}, "é": "ü"}}"#))
            .execute(&db.pool)
            .await?;
    }
    let destination = sqlx::PgPool::connect(&url).await?;
    wait_until("3 changes stored", Duration::from_secs(60), || async {
        // An error until the worker has created `changes`.
        let stored: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM changes")
            .fetch_one(&destination)
            .await
            .ok();
        Ok((stored == Some(3)).then_some(()))
    })
    .await?;
    let mut conn = destination.acquire().await?;
    worker.stop().await?;
    let printed: Vec<String> =
        sqlx::query_scalar("SELECT after->>'data' FROM changes ORDER BY chain_seq")
            .fetch_all(&mut *conn)
            .await?;
    ensure!(
        printed
            == (0..3)
                .map(|n| format!(r#"{{"é": "ü", "zz": {n}}}"#))
                .collect::<Vec<_>>(),
        "{printed:?}"
    );
    verify_intact(&mut conn).await?;
    drop(conn);
    destination.close().await;
    Ok(())
}
e2e_test!(the_worker_recovers_from_a_destination_that_prints_json_differently);

/// The re-delivery probe looks changes up by their unique key however small `changes` was when
/// the connection first ran it. A prepared probe kept the generic plan it made while the table
/// was empty — a lookup by `(table, primary_key, committed_at)` that reads every change of the
/// table for each change of a batch — and took 39 s per batch in a chaos run once the table had
/// grown. Counted by the index scans of the probing transaction itself (no timing).
async fn the_re_delivery_probe_uses_the_unique_key_once_changes_has_grown(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("chain_probe_plan").await?;
    let mut conn = db.pool.acquire().await?;
    bemi_audit::schema::prepare(&mut conn).await?;
    sqlx::raw_sql("ALTER TABLE changes SET (autovacuum_enabled = false)")
        .execute(&mut *conn)
        .await?;
    let chain_name = chain::worker_chain(None, "app");
    let after = r#"{"id": 1}"#;
    // Batches of 50 while the table is small: their plans were cached, and the generic one
    // (which assumes 10 rows) looked cheaper.
    for round in 0..8_i64 {
        let mut batch = ChangeBatch::default();
        for i in 0..50 {
            batch.push(created(1_000 + round * 50 + i, after));
        }
        store_chained(&mut conn, &batch, &chain_name).await?;
    }
    // The table grows (other changes of the same table, as a long-running worker stores them).
    sqlx::raw_sql(
        "INSERT INTO changes (primary_key, after, database, schema, \"table\", operation, \
                              committed_at, queued_at, transaction_id, position) \
         SELECT i::text, '{}', 'app', 'public', 'todo', 'CREATE', now(), now(), i, i \
           FROM generate_series(100000, 120000) i",
    )
    .execute(&mut *conn)
    .await?;

    let mut batch = ChangeBatch::default();
    for i in 0..50 {
        batch.push(created(200_000 + i, after));
    }
    // Index scans of `changes` this backend has not reported yet, by index.
    const SCANS: &str = "SELECT c.relname::text, pg_stat_get_xact_numscans(c.oid) \
                           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                          WHERE i.indrelid = 'changes'::regclass ORDER BY 1";
    let mut tx = conn.begin().await?;
    let before: Vec<(String, i64)> = sqlx::query_as(SCANS).fetch_all(&mut *tx).await?;
    let chained = batch
        .prepare_chain(&chain_name, None, "app", &mut tx)
        .await?;
    ensure!(chained.computes_text(), "the batch took the server's text");
    let after: Vec<(String, i64)> = sqlx::query_as(SCANS).fetch_all(&mut *tx).await?;
    tx.rollback().await?;
    let probed: Vec<(String, i64)> = after
        .into_iter()
        .zip(before)
        .map(|((index, after), (_, before))| (index, after - before))
        .filter(|(_, scans)| *scans > 0)
        .collect();
    ensure!(
        probed == [("changes_position_key".to_owned(), 50)],
        "the probe of 50 changes scanned {probed:?}"
    );
    Ok(())
}
e2e_test!(the_re_delivery_probe_uses_the_unique_key_once_changes_has_grown);
