//! The capture rules through a real worker: UPDATEs that changed only ignored columns, or
//! nothing, are left out and counted; everything else is stored as it was — also across a
//! kill -9 in the middle of a transaction that mixes left-out and stored rows.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use bemi_tests::worker::{
    RunningWorker, stored_changes, stored_count, wait_for_changes, wait_until_slot_streams,
    worker_config,
};
use bemi_tests::{TestCluster, TestResult, wait_until};
use serde_json::json;

use crate::cli_support::Background;

const DOC_TABLE: &str = "CREATE TABLE doc (id int PRIMARY KEY, title text NOT NULL, \
                         updated_at timestamptz NOT NULL DEFAULT now(), \
                         views_cached_counter int NOT NULL DEFAULT 0)";

/// One statement each: what it does, and whether the rules keep it.
const MIX: [(&str, bool); 9] = [
    ("INSERT INTO doc (id, title) VALUES (1, 'draft')", true),
    // Only updated_at: left out.
    (
        "UPDATE doc SET updated_at = updated_at + interval '1 s' WHERE id = 1",
        false,
    ),
    // updated_at and a real field: stored, updated_at in both images as it was.
    (
        "UPDATE doc SET title = 'final', updated_at = updated_at + interval '1 s' WHERE id = 1",
        true,
    ),
    // Nothing changed (an ORM saving an unchanged model): left out.
    ("UPDATE doc SET title = 'final' WHERE id = 1", false),
    // Only the cached counter (doc.*_cached_counter): left out.
    (
        "UPDATE doc SET views_cached_counter = views_cached_counter + 1 WHERE id = 1",
        false,
    ),
    // The key changed, with an ignored column only: stored.
    (
        "UPDATE doc SET id = 2, updated_at = updated_at + interval '1 s' WHERE id = 1",
        true,
    ),
    // The key "changed" to itself alongside nothing else: unchanged, left out.
    ("UPDATE doc SET id = 2 WHERE id = 2", false),
    ("DELETE FROM doc WHERE id = 2", true),
    ("TRUNCATE doc", true),
];

async fn ignored_columns_and_unchanged_updates_are_left_out_and_counted(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.tracked_database("rules", DOC_TABLE).await?;
    let config = worker_config(&db).ignore_columns(["*.updated_at", "doc.*_cached_counter"]);
    let worker = RunningWorker::start(config).await?;
    for (sql, _) in MIX {
        db.exec(sql).await?;
    }
    let kept = MIX.iter().filter(|(_, kept)| *kept).count();
    let changes = wait_for_changes(&db, kept).await?;
    // Nothing more arrives: the last statement (TRUNCATE) is stored, and everything before it
    // was decided already.
    let operations: Vec<&str> = changes.iter().map(|c| c.operation.as_str()).collect();
    ensure!(
        operations == ["CREATE", "UPDATE", "UPDATE", "DELETE", "TRUNCATE"],
        "{operations:?}"
    );
    let title_edit = &changes[1];
    ensure!(
        title_edit.before["title"] == "draft" && title_edit.after["title"] == "final",
        "{title_edit:?}"
    );
    ensure!(
        title_edit.before["updated_at"] != title_edit.after["updated_at"]
            && title_edit.after["updated_at"].is_string(),
        "the ignored column stays in the images as it was: {title_edit:?}"
    );
    let key_change = &changes[2];
    ensure!(
        key_change.before["id"] == 1 && key_change.after["id"] == 2,
        "{key_change:?}"
    );
    let mut skipped = worker.metrics.skipped_updates();
    skipped.sort();
    ensure!(
        skipped
            == [
                ("public.doc".to_owned(), "ignored_columns".to_owned(), 2),
                ("public.doc".to_owned(), "unchanged".to_owned(), 2),
            ],
        "{skipped:?}"
    );
    let rendered = worker.metrics.render();
    ensure!(
        rendered.contains(r#"bemi_updates_skipped_total{table="public.doc",reason="unchanged"} 2"#),
        "{rendered}"
    );
    worker.stop().await?;
    Ok(())
}
e2e_test!(ignored_columns_and_unchanged_updates_are_left_out_and_counted);

async fn unchanged_updates_are_stored_when_asked(cluster: Arc<TestCluster>) -> TestResult {
    let db = cluster.tracked_database("rules_keep", DOC_TABLE).await?;
    let worker = RunningWorker::start(worker_config(&db).skip_unchanged_updates(false)).await?;
    db.exec("INSERT INTO doc (id, title) VALUES (1, 'same')")
        .await?;
    db.exec("UPDATE doc SET title = 'same' WHERE id = 1")
        .await?;
    db.exec("UPDATE doc SET updated_at = updated_at WHERE id = 1")
        .await?;
    let changes = wait_for_changes(&db, 3).await?;
    ensure!(
        changes[1].operation == "UPDATE" && changes[1].before == changes[1].after,
        "{changes:?}"
    );
    ensure!(worker.metrics.skipped_updates().is_empty());
    worker.stop().await?;
    Ok(())
}
e2e_test!(unchanged_updates_are_stored_when_asked);

async fn a_kill_9_inside_a_mixed_transaction_loses_and_duplicates_nothing(
    cluster: Arc<TestCluster>,
) -> TestResult {
    const ROWS: i64 = 30_000;
    let db = cluster.tracked_database("rules_crash", DOC_TABLE).await?;
    db.exec(&format!(
        "INSERT INTO doc (id, title) SELECT i, 'v1' FROM generate_series(1, {ROWS}) i"
    ))
    .await?;
    let config = worker_config(&db);
    let envs = [
        ("DATABASE_URL", db.url.as_str()),
        ("BEMI_SLOT", config.slot.as_str()),
        ("BEMI_IGNORE_COLUMNS", "*.updated_at"),
    ];
    let mut worker = Background::start(&["worker"], &envs)?;
    wait_until_slot_streams(&db, &config.slot).await?;
    // A slow destination, so that the kill lands while the transaction is being stored.
    db.exec(
        "CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$; \
         CREATE TRIGGER slow_down BEFORE INSERT ON changes \
           FOR EACH STATEMENT EXECUTE FUNCTION slow_down();",
    )
    .await?;
    // One transaction: odd rows get a new title (stored), even rows only a new updated_at
    // (left out).
    db.exec(
        "UPDATE doc SET updated_at = updated_at + interval '1 s', \
                        title = CASE WHEN id % 2 = 1 THEN 'v2' ELSE title END",
    )
    .await?;
    let expected = ROWS / 2;
    wait_until(
        "part of the transaction to be stored",
        Duration::from_secs(120),
        || async {
            let updates: i64 =
                sqlx::query_scalar("SELECT count(*) FROM changes WHERE operation = 'UPDATE'")
                    .fetch_one(&db.pool)
                    .await?;
            Ok((updates > 0).then_some(updates))
        },
    )
    .await?;
    let stored_before_kill: i64 =
        sqlx::query_scalar("SELECT count(*) FROM changes WHERE operation = 'UPDATE'")
            .fetch_one(&db.pool)
            .await?;
    ensure!(
        stored_before_kill < expected,
        "the kill came too late to test anything: {stored_before_kill} of {expected} stored"
    );
    worker.kill().await?;
    db.exec("DROP TRIGGER slow_down ON changes").await?;
    let mut worker = Background::start(&["worker"], &envs)?;
    wait_until(
        "the whole transaction to be stored",
        Duration::from_secs(180),
        || async {
            let count = stored_count(&db).await?.unwrap_or(0);
            // The INSERTs came before the slot: only the UPDATEs are captured.
            Ok((count >= expected).then_some(()))
        },
    )
    .await?;
    worker.terminate().await?;

    let changes = stored_changes(&db).await?;
    let updates: Vec<_> = changes.iter().filter(|c| c.operation == "UPDATE").collect();
    ensure!(updates.len() == changes.len(), "only UPDATEs were made");
    ensure!(
        updates.len() as i64 == expected,
        "{} UPDATEs stored, {expected} expected",
        updates.len()
    );
    let mut keys: Vec<i64> = updates
        .iter()
        .map(|c| c.primary_key.as_deref().unwrap_or("0").parse().unwrap_or(0))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    ensure!(
        keys.len() as i64 == expected,
        "duplicates among the UPDATEs"
    );
    ensure!(keys.iter().all(|id| id % 2 == 1), "an even row was stored");
    ensure!(
        updates
            .iter()
            .all(|c| c.after["title"] == json!("v2") && c.before["title"] == json!("v1")),
        "images changed"
    );
    Ok(())
}
e2e_test!(a_kill_9_inside_a_mixed_transaction_loses_and_duplicates_nothing);
