//! `bemi_audit::ChangeQuery` against a real `changes` table: rows decode whole, keyset
//! pages and the stream visit every match exactly once in order (ties included), and context
//! values keep their JSON type.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::ensure;
use bemi_audit::{Change, ChangeQuery, Operation};
use bemi_tests::{TestCluster, TestResult};
use chrono::{TimeZone as _, Utc};
use futures_util::TryStreamExt as _;
use serde_json::json;

/// 2 500 changes; committed_at shared by groups of three, position shared by pairs (of two
/// tables): the order needs every key of the cursor.
const FIXTURE: &str = r#"
INSERT INTO changes (primary_key, before, after, context, database, schema, "table", operation,
                     committed_at, queued_at, transaction_id, position)
SELECT i::text, '{}', jsonb_build_object('id', i), jsonb_build_object('user_id', i % 10),
       'app', 'public', CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END, 'CREATE',
       timestamptz '2024-01-01 00:00:00+00' + (i / 3) * interval '1 second',
       timestamptz '2024-01-01 00:00:00+00', i, i / 2
  FROM generate_series(1, 2500) AS i;
INSERT INTO changes (primary_key, before, after, context, database, schema, "table", operation,
                     committed_at, queued_at, transaction_id, position)
VALUES ('7', '{"id": 7, "n": 1.5}', '{}', '{"user_id": "7"}', 'app', 'billing', 'a', 'DELETE',
        '2023-06-01 12:00:00.123456+00', '2023-06-01 12:00:01+00', 99, 1000000);
"#;

/// The ids, as text (the test needs no uuid crate of its own).
fn ids(changes: &[Change]) -> Vec<String> {
    changes.iter().map(|c| c.id.to_string()).collect()
}

async fn change_query_pages_and_streams_every_match_once(cluster: Arc<TestCluster>) -> TestResult {
    let db = cluster.database("audit_query").await?;
    db.exec(bemi_audit::schema::SCHEMA_SQL).await?;
    db.exec(FIXTURE).await?;

    // Every column decodes.
    let deleted = ChangeQuery::new()
        .table("billing.a")
        .fetch(&db.pool)
        .await?;
    ensure!(deleted.len() == 1, "{deleted:#?}");
    let change = &deleted[0];
    ensure!(change.primary_key.as_deref() == Some("7"));
    ensure!(change.before == json!({"id": 7, "n": 1.5}) && change.after == json!({}));
    ensure!(change.operation == Operation::Delete);
    ensure!((change.database.as_str(), change.schema.as_str()) == ("app", "billing"));
    ensure!(change.transaction_id == 99 && change.position == 1_000_000);
    ensure!(
        change.committed_at
            == Utc.with_ymd_and_hms(2023, 6, 1, 12, 0, 0).unwrap()
                + chrono::Duration::microseconds(123_456)
    );
    ensure!(change.queued_at == Utc.with_ymd_and_hms(2023, 6, 1, 12, 0, 1).unwrap());
    ensure!(change.created_at > change.queued_at);
    let round_trip: Change = serde_json::from_str(&serde_json::to_string(change)?)?;
    ensure!(&round_trip == change);

    // The expected order, from SQL.
    let expected: Vec<String> = sqlx::query_scalar(
        "SELECT id::text FROM changes WHERE schema = 'public' \
         ORDER BY committed_at DESC, position DESC, id DESC",
    )
    .fetch_all(&db.pool)
    .await?;
    ensure!(expected.len() == 2500);

    // Keyset pages of 100, newest first.
    let base = ChangeQuery::new().limit(100);
    let mut paged = Vec::new();
    let mut page = base.clone().fetch(&db.pool).await?;
    for _ in 0..100 {
        let Some(last) = page.last().map(Change::cursor) else {
            break;
        };
        paged.extend(ids(&page));
        page = base.clone().after(last).fetch(&db.pool).await?;
    }
    // The billing row is the oldest of all: the last page ends with it.
    ensure!(paged.last() == Some(&change.id.to_string()));
    paged.pop();
    ensure!(paged.len() == 2500, "{} paged", paged.len());
    ensure!(paged == expected, "keyset pages differ from the SQL order");

    // The stream crosses its own page boundaries (1 000 rows) without loss or repetition.
    let streamed: Vec<Change> = ChangeQuery::new()
        .table("public.a")
        .oldest_first()
        .stream(&db.pool)
        .try_collect()
        .await?;
    ensure!(streamed.len() == 1250, "{} streamed", streamed.len());
    let unique: HashSet<String> = ids(&streamed).into_iter().collect();
    ensure!(unique.len() == 1250);
    ensure!(
        streamed
            .windows(2)
            .all(|w| (w[0].committed_at, w[0].position) <= (w[1].committed_at, w[1].position)),
        "not oldest first"
    );
    let limited: Vec<Change> = ChangeQuery::new()
        .limit(1234)
        .stream(&db.pool)
        .try_collect()
        .await?;
    ensure!(
        ids(&limited) == expected[..1234],
        "the limited stream differs"
    );

    // Context values keep their JSON type: 7 the number is not "7" the string.
    let numbers = ChangeQuery::new()
        .context("user_id", 7)
        .fetch(&db.pool)
        .await?;
    ensure!(numbers.len() == 250, "{}", numbers.len());
    ensure!(numbers.iter().all(|c| c.context == json!({"user_id": 7})));
    let strings = ChangeQuery::new()
        .context("user_id", "7")
        .fetch(&db.pool)
        .await?;
    ensure!(
        strings.len() == 1 && strings[0].operation == Operation::Delete,
        "{strings:#?}"
    );

    // Time range: [since, until).
    let start = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 10).unwrap();
    let end = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 12).unwrap();
    let window = ChangeQuery::new()
        .since(start)
        .until(end)
        .fetch(&db.pool)
        .await?;
    let mut keys: Vec<i64> = window
        .iter()
        .map(|c| c.primary_key.as_deref().unwrap_or_default().parse())
        .collect::<Result<_, _>>()?;
    keys.sort_unstable();
    ensure!(keys == [30, 31, 32, 33, 34, 35], "{keys:?}");
    Ok(())
}
e2e_test!(change_query_pages_and_streams_every_match_once);
