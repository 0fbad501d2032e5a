//! The capture worker end to end: what lands in `changes` for direct SQL, adapter writes,
//! TRUNCATE, composite keys, TOASTed values and every supported type.

use std::sync::Arc;

use anyhow::ensure;
use bemi_core::context;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TODO_TABLE, TestCluster, TestResult, ctx};
use serde_json::{Value, json};

// Adapter writes through the worker, on each sqlx line (`sqlx_0_9::`, `sqlx_0_8::`).
crate::lines::sqlx_lines! {
    async fn direct_sql_and_statements_are_stitched_to_their_own_context(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        let db = cluster
            .tracked_database("capture_stitch", TODO_TABLE)
            .await?;
        let worker = RunningWorker::start(worker_config(&db)).await?;

        // Direct SQL, no adapter: captured with an empty context.
        db.exec("INSERT INTO todo (task) VALUES ('direct')").await?;
        // One transaction: context A, context B, no context.
        let pool = line::bemi_pool(&db).await?;
        let mut tx = pool.begin().await?;
        let (insert, update, delete) = (
            "INSERT INTO todo (task) VALUES ($1)",
            "UPDATE todo SET is_completed = true WHERE task = $1",
            "DELETE FROM todo WHERE task = $1",
        );
        context::scope(
            ctx(json!({"ctx": "A"})),
            sqlx::query(insert).bind("a").execute(&mut tx),
        )
        .await?;
        context::scope(
            ctx(json!({"ctx": "B"})),
            sqlx::query(update).bind("direct").execute(&mut tx),
        )
        .await?;
        sqlx::query(delete).bind("a").execute(&mut tx).await?;
        tx.commit().await?;
        context::scope(ctx(json!({"job": "reset"})), async {
            sqlx::query("TRUNCATE todo").execute(&pool).await
        })
        .await?;

        let changes = wait_for_changes(&db, 5).await?;
        worker.stop().await?;
        ensure!(changes.len() == 5, "{changes:#?}");
        let summary: Vec<(&str, Option<&str>, Value)> = changes
            .iter()
            .map(|c| {
                (
                    c.operation.as_str(),
                    c.primary_key.as_deref(),
                    c.context.clone(),
                )
            })
            .collect();
        ensure!(
            summary
                == [
                    ("CREATE", Some("1"), json!({})),
                    ("CREATE", Some("2"), json!({"ctx": "A", "SQL": insert})),
                    ("UPDATE", Some("1"), json!({"ctx": "B", "SQL": update})),
                    ("DELETE", Some("2"), json!({})),
                    (
                        "TRUNCATE",
                        None,
                        json!({"job": "reset", "SQL": "TRUNCATE todo"})
                    ),
                ],
            "{summary:#?}"
        );
        let update_row = &changes[2];
        ensure!(update_row.before == json!({"id": 1, "task": "direct", "is_completed": false}));
        ensure!(update_row.after == json!({"id": 1, "task": "direct", "is_completed": true}));
        ensure!(changes[3].before == json!({"id": 2, "task": "a", "is_completed": false}));
        ensure!(changes[3].after == json!({}));
        ensure!(
            changes
                .iter()
                .all(|c| c.table == "todo" && c.schema == "public" && c.database == db.name)
        );
        // The three statements of one transaction share its id and commit time.
        ensure!(changes[1].transaction_id == changes[3].transaction_id);
        ensure!(changes[1].committed_at == changes[3].committed_at);
        Ok(())
    }
    e2e_test!(direct_sql_and_statements_are_stitched_to_their_own_context);
}

// SeaORM writes through the worker, on each SeaORM line (`seaorm_2::`, `seaorm_1::`).
crate::lines::seaorm_lines! {
    async fn seaorm_writes_are_stored_with_their_own_context(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        use self::sea_orm::{DbBackend, Statement};

        let db = cluster
            .tracked_database("capture_seaorm", TODO_TABLE)
            .await?;
        let worker = RunningWorker::start(worker_config(&db)).await?;
        let orm = bemi_seaorm::BemiConnection::new(sea_orm::Database::connect(&db.url).await?);
        let (insert, update, delete) = (
            "INSERT INTO todo (task) VALUES ($1)",
            "UPDATE todo SET is_completed = true WHERE task = $1",
            "DELETE FROM todo WHERE task = $1",
        );
        let statement = |sql: &str, task: &str| {
            Statement::from_sql_and_values(DbBackend::Postgres, sql, [task.into()])
        };
        // Outside a transaction: in one of its own, which carries the context.
        context::scope(
            ctx(json!({"ctx": "A"})),
            line::execute(&orm, statement(insert, "a")),
        )
        .await?;
        // In a transaction: context B, then none (which inherits nothing).
        let tx = orm.begin().await?;
        context::scope(
            ctx(json!({"ctx": "B"})),
            line::execute(&tx, statement(update, "a")),
        )
        .await?;
        line::execute(&tx, statement(delete, "a")).await?;
        tx.commit().await?;

        let changes = wait_for_changes(&db, 3).await?;
        worker.stop().await?;
        let summary: Vec<(&str, Option<&str>, Value)> = changes
            .iter()
            .map(|c| (c.operation.as_str(), c.primary_key.as_deref(), c.context.clone()))
            .collect();
        ensure!(
            summary
                == [
                    ("CREATE", Some("1"), json!({"ctx": "A", "SQL": insert})),
                    ("UPDATE", Some("1"), json!({"ctx": "B", "SQL": update})),
                    ("DELETE", Some("1"), json!({})),
                ],
            "{summary:#?}"
        );
        ensure!(changes[1].transaction_id == changes[2].transaction_id);
        ensure!(changes[1].after == json!({"id": 1, "task": "a", "is_completed": true}));
        Ok(())
    }
    e2e_test!(seaorm_writes_are_stored_with_their_own_context);
}

async fn composite_keys_toast_and_every_type_are_stored_as_typed_json(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("capture_types").await?;
    db.exec(
        "CREATE TYPE mood AS ENUM ('happy', 'sad'); \
         CREATE DOMAIN positive AS int CHECK (VALUE > 0); \
         CREATE TABLE pairs (a int, b text, note text, PRIMARY KEY (b, a)); \
         CREATE TABLE docs (id int PRIMARY KEY, body text, n int); \
         CREATE TABLE typed ( \
           id int PRIMARY KEY, i2 smallint, i8 bigint, r real, d double precision, \
           d_nan double precision, d_inf double precision, num numeric, flag boolean, \
           j json, jb jsonb, ints int[], texts text[], grid int[][], ts timestamp, \
           tstz timestamptz, day date, raw bytea, uid uuid, nothing text, feeling mood, \
           feelings mood[], pos positive, span interval, huge numeric(40,20))",
    )
    .await?;
    db.migrate().await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;

    db.exec("INSERT INTO pairs VALUES (1, 'x', 'first')")
        .await?;
    // An incompressible value larger than the TOAST threshold.
    db.exec(
        "INSERT INTO docs SELECT 1, string_agg(md5(i::text), ''), 0 FROM generate_series(1, 4000) i; \
         UPDATE docs SET n = 1 WHERE id = 1",
    )
    .await?;
    db.exec(
        "INSERT INTO typed VALUES (1, -32768, 9223372036854775807, 1.5, 0.1, 'NaN', '-Infinity', \
           123.4500, true, '{\"a\": [1, 2]}', '{\"b\": {\"c\": null}}', '{1,NULL,3}', \
           '{\"x y\",NULL,\"q\\\"\"}', '{{1,2},{3,4}}', '2026-11-22 10:07:00.5', \
           '2026-11-22 10:07:00.123456+02', '2026-11-22', '\\x01ff', \
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL, 'happy', '{sad,happy}', 7, \
           '1 day 2 hours', 12345678901234567890.12345678901234567890)",
    )
    .await?;

    let changes = wait_for_changes(&db, 4).await?;
    worker.stop().await?;
    ensure!(changes.len() == 4, "{changes:#?}");
    ensure!(
        changes[0].primary_key.as_deref() == Some(r#"["x",1]"#),
        "{:?}",
        changes[0].primary_key
    );

    let body_length = 32 * 4000;
    let toast_update = &changes[2];
    ensure!(toast_update.operation == "UPDATE");
    for image in [&toast_update.before, &toast_update.after] {
        let body = image["body"].as_str().unwrap_or_default();
        ensure!(
            body.len() == body_length,
            "body has {} bytes in {image}",
            body.len()
        );
    }
    ensure!(toast_update.before["n"] == 0 && toast_update.after["n"] == 1);

    let typed = &changes[3].after;
    // Parsed from text, so that numbers compare digit for digit (the workspace's serde_json
    // keeps every digit: bemi-worker enables `arbitrary_precision`).
    let expected: Value = serde_json::from_str(
        r#"{
        "id": 1, "i2": -32768, "i8": 9223372036854775807, "r": 1.5, "d": 0.1,
        "d_nan": "NaN", "d_inf": "-Infinity", "num": 123.4500, "flag": true,
        "j": {"a": [1, 2]}, "jb": {"b": {"c": null}}, "ints": [1, null, 3],
        "texts": ["x y", null, "q\""], "grid": [[1, 2], [3, 4]],
        "ts": "2026-11-22T10:07:00.5", "tstz": "2026-11-22T08:07:00.123456Z",
        "day": "2026-11-22", "raw": "\\x01ff", "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "nothing": null, "feeling": "happy", "feelings": ["sad", "happy"], "pos": 7,
        "span": "P1DT2H", "huge": 12345678901234567890.12345678901234567890
        }"#,
    )?;
    for (key, value) in expected.as_object().into_iter().flatten() {
        ensure!(
            &typed[key] == value,
            "{key}: stored {} expected {value}",
            typed[key]
        );
    }
    // numeric keeps every digit: compare the stored text, not a float.
    let (num, huge): (String, String) = sqlx::query_as(
        "SELECT after->>'num', after->>'huge' FROM changes WHERE \"table\" = 'typed'",
    )
    .fetch_one(&db.pool)
    .await?;
    ensure!(num == "123.4500", "numeric stored as {num}");
    ensure!(
        huge == "12345678901234567890.12345678901234567890",
        "numeric stored as {huge}"
    );
    Ok(())
}
e2e_test!(composite_keys_toast_and_every_type_are_stored_as_typed_json);

async fn malformed_and_per_row_messages_are_stitched_not_fatal(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("capture_messages").await?;
    db.exec(TODO_TABLE).await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    // Bemi's per-row triggers emit one message before each row; a broken one must not stop us.
    db.exec(
        "BEGIN; \
         SELECT pg_logical_emit_message(true, '_bemi', '{\"row\": 1}'); \
         INSERT INTO todo (task) VALUES ('one'); \
         SELECT pg_logical_emit_message(true, '_bemi', '{\"row\": 2}'); \
         INSERT INTO todo (task) VALUES ('two'); \
         SELECT pg_logical_emit_message(true, '_bemi', '{not json'); \
         INSERT INTO todo (task) VALUES ('three'); \
         SELECT pg_logical_emit_message(true, 'other_prefix', '{\"ignored\": true}'); \
         INSERT INTO todo (task) VALUES ('four'); \
         COMMIT;",
    )
    .await?;
    let changes = wait_for_changes(&db, 4).await?;
    worker.stop().await?;
    ensure!(changes[0].context == json!({"row": 1}));
    ensure!(changes[1].context == json!({"row": 2}));
    let marker = &changes[2].context["_bemi_invalid_context"];
    ensure!(marker["text"] == "{not json", "{}", changes[2].context);
    ensure!(
        changes[3].context == changes[2].context,
        "a foreign prefix changes nothing"
    );
    Ok(())
}
e2e_test!(malformed_and_per_row_messages_are_stitched_not_fatal);

async fn the_workers_own_tables_are_never_captured(cluster: Arc<TestCluster>) -> TestResult {
    let db = cluster
        .tracked_database("capture_own_tables", TODO_TABLE)
        .await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    for i in 0..3 {
        db.exec(&format!("INSERT INTO todo (task) VALUES ('t{i}')"))
            .await?;
    }
    wait_for_changes(&db, 3).await?;
    // More writes after the worker wrote to `changes` and its state.
    db.exec("UPDATE todo SET is_completed = true").await?;
    let changes = wait_for_changes(&db, 6).await?;
    worker.stop().await?;
    ensure!(changes.len() == 6, "{changes:#?}");
    ensure!(changes.iter().all(|c| c.table == "todo"), "{changes:#?}");
    // Not even streamed: the publication leaves them out, and they carry no trigger.
    let published: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'bemi'",
    )
    .fetch_all(&db.pool)
    .await?;
    ensure!(published == ["todo"], "published: {published:?}");
    let triggered: Vec<String> = sqlx::query_scalar(
        "SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = '_bemi_statement_trigger'",
    )
    .fetch_all(&db.pool)
    .await?;
    ensure!(triggered == ["todo"], "triggers on: {triggered:?}");
    Ok(())
}
e2e_test!(the_workers_own_tables_are_never_captured);

/// `image_indexes`: `Drop` removes the GIN indexes on before/after at the worker's start (and
/// never creates them), `Keep` puts them back; changes are stored either way.
async fn the_image_indexes_follow_the_workers_choice(cluster: Arc<TestCluster>) -> TestResult {
    let db = cluster
        .tracked_database("image_indexes", "CREATE TABLE items (id int PRIMARY KEY)")
        .await?;
    let indexes = || async {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes \
              WHERE tablename = 'changes' AND indexname IN ('changes_before_idx', 'changes_after_idx') \
              ORDER BY 1",
        )
        .fetch_all(&db.pool)
        .await?;
        anyhow::Ok(names)
    };
    let mut config = worker_config(&db);
    config.image_indexes = bemi_worker::ImageIndexes::Drop;
    let worker = RunningWorker::start(config.clone()).await?;
    db.exec("INSERT INTO items VALUES (1)").await?;
    wait_for_changes(&db, 1).await?;
    worker.stop().await?;
    ensure!(indexes().await?.is_empty(), "{:?}", indexes().await?);
    config.image_indexes = bemi_worker::ImageIndexes::Keep;
    let worker = RunningWorker::start(config).await?;
    db.exec("INSERT INTO items VALUES (2)").await?;
    wait_for_changes(&db, 2).await?;
    worker.stop().await?;
    ensure!(
        indexes().await? == ["changes_after_idx", "changes_before_idx"],
        "{:?}",
        indexes().await?
    );
    Ok(())
}
e2e_test!(the_image_indexes_follow_the_workers_choice);
