//! The migration: tracks every schema and later tables, is idempotent, and `down` removes every
//! object it created.

use std::sync::Arc;

use anyhow::ensure;
use bemi_core::context;
use bemi_core::migration::{self, MigrationOptions};
use bemi_tests::wal::{bemi_contexts, changes};
use bemi_tests::{TestCluster, TestDb, TestResult, ctx};
use serde_json::json;

async fn tracked_tables(db: &TestDb) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT tgrelid::regclass::text FROM pg_trigger \
         WHERE tgname = '_bemi_statement_trigger' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await?)
}

async fn bemi_objects(db: &TestDb) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT 'function ' || proname FROM pg_proc WHERE proname LIKE '\\_bemi%' \
         UNION ALL SELECT 'event trigger ' || evtname FROM pg_event_trigger WHERE evtname LIKE '\\_bemi%' \
         UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE '\\_bemi%' \
         ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await?)
}

async fn up_tracks_every_schema_and_new_tables(cluster: Arc<TestCluster>) -> TestResult {
    let db = cluster.database("migration_schemas").await?;
    db.exec(
        "CREATE TABLE todo (id bigserial PRIMARY KEY, task text); \
         CREATE SCHEMA billing; \
         CREATE TABLE billing.invoice (id int PRIMARY KEY, total numeric); \
         CREATE TABLE events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at); \
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');",
    )
    .await?;
    db.migrate().await?;
    db.exec(
        "CREATE TABLE billing.later (id int PRIMARY KEY); \
         CREATE TABLE copied AS SELECT * FROM todo;",
    )
    .await?;
    let tables = tracked_tables(&db).await?;
    let expected = [
        "billing.invoice",
        "billing.later",
        "copied",
        "events",
        "events_2026",
        "todo",
    ];
    ensure!(tables == expected, "tracked: {tables:?}");
    for table in expected {
        ensure!(
            db.replica_identity(table).await? == "f",
            "{table} is not REPLICA IDENTITY FULL"
        );
    }

    // A write to a table created after the migration carries its context.
    let slot = db.wal_slot().await?;
    context::scope(
        ctx(json!({"user_id": 3})),
        sqlx::query("INSERT INTO billing.later (id) VALUES (1)").execute(&db.bemi_pool()),
    )
    .await?;
    let entries = slot.read().await?;
    let contexts = bemi_contexts(&entries)?;
    ensure!(
        contexts.len() == 1 && contexts[0]["user_id"] == 3,
        "{entries:#?}"
    );
    ensure!(changes(&entries).len() == 1);
    Ok(())
}
e2e_test!(up_tracks_every_schema_and_new_tables);

async fn up_twice_is_harmless_and_down_removes_everything(cluster: Arc<TestCluster>) -> TestResult {
    let db = cluster
        .tracked_database(
            "migration_idempotent",
            "CREATE TABLE todo (id bigserial PRIMARY KEY, task text)",
        )
        .await?;
    let once = (tracked_tables(&db).await?, bemi_objects(&db).await?);
    db.migrate().await?;
    // The raw SQL, as a migration tool would run it, is idempotent too.
    db.exec(&migration::up()).await?;
    let twice = (tracked_tables(&db).await?, bemi_objects(&db).await?);
    ensure!(once == twice, "{once:?} != {twice:?}");
    ensure!(once.0 == ["todo"]);

    bemi_sqlx::migration::migrate_down(&db.pool).await?;
    let left = bemi_objects(&db).await?;
    ensure!(left.is_empty(), "left behind: {left:?}");
    // down twice is harmless as well, and writes work without tracking.
    db.exec(migration::down()).await?;
    sqlx::query("INSERT INTO todo (task) VALUES ('after down')")
        .execute(&db.pool)
        .await?;
    db.exec("CREATE TABLE after_down (id int)").await?;
    ensure!(tracked_tables(&db).await?.is_empty());
    Ok(())
}
e2e_test!(up_twice_is_harmless_and_down_removes_everything);

async fn replica_identity_full_is_switchable(cluster: Arc<TestCluster>) -> TestResult {
    let db = cluster.database("migration_replica").await?;
    db.exec("CREATE TABLE todo (id bigserial PRIMARY KEY, task text)")
        .await?;
    let options = MigrationOptions::default().replica_identity_full(false);
    bemi_sqlx::migration::migrate(&db.pool, options).await?;
    db.exec("CREATE TABLE later (id int PRIMARY KEY)").await?;
    ensure!(tracked_tables(&db).await? == ["later", "todo"]);
    ensure!(db.replica_identity("todo").await? == "d");
    ensure!(db.replica_identity("later").await? == "d");
    Ok(())
}
e2e_test!(replica_identity_full_is_switchable);

async fn worker_tables_and_unlogged_tables_are_not_tracked(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("migration_excluded").await?;
    db.exec(
        "CREATE TABLE changes (id uuid PRIMARY KEY, primary_key text, before jsonb, after jsonb, \
           context jsonb, database text, schema text, \"table\" text, operation text, \
           committed_at timestamptz, queued_at timestamptz, created_at timestamptz, \
           transaction_id bigint, position bigint); \
         CREATE TABLE _bemi_worker_state (slot text PRIMARY KEY); \
         CREATE UNLOGGED TABLE scratch (id int); \
         CREATE TEMP TABLE temporary_rows (id int); \
         CREATE TABLE todo (id int PRIMARY KEY);",
    )
    .await?;
    db.migrate().await?;
    // Created after the migration: the event trigger must skip them too.
    db.exec("CREATE TABLE _bemi_later (id int); CREATE UNLOGGED TABLE scratch2 (id int)")
        .await?;
    let tables = tracked_tables(&db).await?;
    ensure!(tables == ["todo"], "tracked: {tables:?}");
    ensure!(db.replica_identity("changes").await? == "d");
    Ok(())
}
e2e_test!(worker_tables_and_unlogged_tables_are_not_tracked);

/// Without the comment trigger, tables are still tracked (REPLICA IDENTITY FULL, now and for
/// later tables) but carry no trigger: only the adapters' messages carry contexts, a comment is
/// ignored. Switching back installs the triggers again, and `down` removes everything.
async fn without_the_comment_trigger_only_messages_carry_contexts(
    cluster: Arc<TestCluster>,
) -> TestResult {
    use bemi_core::carrier::Carrier;

    let db = cluster
        .tracked_database(
            "migration_no_comment_trigger",
            "CREATE TABLE todo (id bigserial PRIMARY KEY, task text)",
        )
        .await?;
    ensure!(tracked_tables(&db).await? == ["todo"]);
    let options = MigrationOptions::default().comment_trigger(false);
    bemi_sqlx::migration::migrate(&db.pool, options).await?;
    db.exec("CREATE TABLE later (id int PRIMARY KEY)").await?;
    let left = tracked_tables(&db).await?;
    ensure!(left.is_empty(), "triggers left: {left:?}");
    ensure!(db.replica_identity("later").await? == "f");

    let slot = db.wal_slot().await?;
    context::scope(
        ctx(json!({"user_id": 5})),
        sqlx::query("INSERT INTO todo (task) VALUES ('by message')")
            .execute(&db.bemi_pool().carrier(Carrier::Message)),
    )
    .await?;
    context::scope(
        ctx(json!({"user_id": 6})),
        sqlx::query("INSERT INTO later (id) VALUES (1)")
            .execute(&db.bemi_pool().carrier(Carrier::Comment)),
    )
    .await?;
    let entries = slot.read().await?;
    let contexts = bemi_contexts(&entries)?;
    ensure!(
        contexts.len() == 1 && contexts[0]["user_id"] == 5,
        "{entries:#?}"
    );
    ensure!(changes(&entries).len() == 2, "{entries:#?}");

    db.migrate().await?;
    ensure!(tracked_tables(&db).await? == ["later", "todo"]);
    bemi_sqlx::migration::migrate_down(&db.pool).await?;
    let left = bemi_objects(&db).await?;
    ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}
e2e_test!(without_the_comment_trigger_only_messages_carry_contexts);
