//! Time travel on changes captured by a real worker: one key is created, updated three times,
//! deleted, re-created (and its table truncated, and another row created after); at every
//! instant between those writes, and at and just before each commit, the row and the whole
//! table as of that instant are exactly what plain SQL saw then.

use std::sync::Arc;

use anyhow::{Context as _, ensure};
use bemi_audit::{Change, Operation, TimeTravel};
use bemi_core::context;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestDb, TestResult, ctx};
use chrono::{DateTime, Duration, Utc};
use futures_util::TryStreamExt as _;
use serde_json::{Value, json};

/// The table at one instant, read with plain SQL in one statement.
#[derive(Debug, Clone)]
struct Snapshot {
    at: DateTime<Utc>,
    rows: Vec<Value>,
}

async fn snapshot(db: &TestDb) -> anyhow::Result<Snapshot> {
    let (at, rows): (DateTime<Utc>, Value) = sqlx::query_as(
        "SELECT now(), COALESCE(jsonb_agg(to_jsonb(t) ORDER BY id), '[]') FROM todo t",
    )
    .fetch_one(&db.pool)
    .await?;
    Ok(Snapshot {
        at,
        rows: rows.as_array().cloned().unwrap_or_default(),
    })
}

fn row(snapshot: &[Value], id: i64) -> Option<Value> {
    snapshot.iter().find(|r| r["id"] == id).cloned()
}

async fn table_at(
    db: &TestDb,
    travel: &TimeTravel,
    at: DateTime<Utc>,
) -> anyhow::Result<Vec<Value>> {
    let rows: Vec<Value> = travel
        .table_at(&db.pool, at)
        .map_ok(bemi_audit::RowState::into_row)
        .try_collect()
        .await?;
    Ok(rows)
}

async fn row_and_table_as_of_each_instant_match_plain_sql_snapshots(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster
        .tracked_database(
            "time_travel",
            "CREATE TABLE todo (id bigint PRIMARY KEY, task text NOT NULL, \
                            is_completed boolean NOT NULL DEFAULT false, tags int[], \
                            meta jsonb, cost numeric)",
        )
        .await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let pool = db.bemi_pool();

    let writes = [
        "INSERT INTO todo (id, task) VALUES (1, 'Sleep')",
        "INSERT INTO todo (id, task, cost) VALUES (2, 'Eat', 12.50)",
        "UPDATE todo SET task = 'Sleep more' WHERE id = 1",
        "UPDATE todo SET is_completed = true, meta = '{\"by\": {\"user\": 7}}' WHERE id = 1",
        "UPDATE todo SET tags = '{1,2,3}', cost = 0.1 WHERE id = 1",
        "DELETE FROM todo WHERE id = 1",
        "INSERT INTO todo (id, task) VALUES (1, 'Sleep again')",
        "TRUNCATE todo",
        "INSERT INTO todo (id, task) VALUES (3, 'Repeat')",
    ];
    let mut snapshots = vec![snapshot(&db).await?];
    for (i, sql) in writes.iter().enumerate() {
        // Half through the adapter with a context, half as plain SQL.
        if i % 2 == 0 {
            context::scope(
                ctx(json!({"step": i})),
                sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).execute(&pool),
            )
            .await?;
        } else {
            db.exec(sql).await?;
        }
        snapshots.push(snapshot(&db).await?);
    }
    // Nine writes, nine changes (the TRUNCATE is one change of its table).
    wait_for_changes(&db, writes.len()).await?;
    worker.stop().await?;

    let todo = TimeTravel::table("todo");
    let qualified = TimeTravel::table("public.todo").database(db.name.clone());
    for snapshot in &snapshots {
        for id in [1_i64, 2, 3] {
            let expected = row(&snapshot.rows, id);
            for travel in [&todo, &qualified] {
                let state = travel
                    .row_at(&db.pool, &id.to_string(), snapshot.at)
                    .await?;
                let found = state.map(bemi_audit::RowState::into_row);
                ensure!(
                    found == expected,
                    "row {id} at {}: {found:?}, plain SQL saw {expected:?}",
                    snapshot.at
                );
            }
        }
        let table = table_at(&db, &todo, snapshot.at).await?;
        ensure!(
            table == snapshot.rows,
            "table at {}: {table:#?}, plain SQL saw {:#?}",
            snapshot.at,
            snapshot.rows
        );
    }

    // The history of key 1: every change, and the TRUNCATE that ended it.
    let history: Vec<Change> = todo.history(&db.pool, "1").try_collect().await?;
    let operations: Vec<Operation> = history.iter().map(|c| c.operation).collect();
    use Operation::{Create, Delete, Truncate, Update};
    ensure!(
        operations == [Create, Update, Update, Update, Delete, Create, Truncate],
        "{operations:?}"
    );
    // Writes 0 and 2 had a context, write 3 was plain SQL.
    ensure!(
        history[0].context["step"] == 0
            && history[1].context["step"] == 2
            && history[2].context == json!({}),
        "{history:#?}"
    );
    // Key 2 was truncated; key 3 was created after the TRUNCATE, which is not part of its
    // history.
    let history_2: Vec<Operation> = todo
        .history(&db.pool, "2")
        .map_ok(|c| c.operation)
        .try_collect()
        .await?;
    ensure!(history_2 == [Create, Truncate], "{history_2:?}");
    let history_3: Vec<Operation> = todo
        .history(&db.pool, "3")
        .map_ok(|c| c.operation)
        .try_collect()
        .await?;
    ensure!(history_3 == [Create], "{history_3:?}");

    // At a commit instant the change has happened; a microsecond before it has not.
    let all: Vec<Change> = bemi_audit::ChangeQuery::new()
        .oldest_first()
        .fetch(&db.pool)
        .await?;
    ensure!(all.len() == writes.len(), "{all:#?}");
    for (i, change) in all.iter().enumerate() {
        let before = &snapshots[i];
        let after = &snapshots[i + 1];
        ensure!(
            before.at < change.committed_at && change.committed_at <= after.at,
            "change {i} committed at {} outside ({}, {}]",
            change.committed_at,
            before.at,
            after.at
        );
        for (at, expected) in [
            (change.committed_at, after),
            (change.committed_at - Duration::microseconds(1), before),
        ] {
            let table = table_at(&db, &todo, at).await?;
            ensure!(
                table == expected.rows,
                "table at {at} (change {i}): {table:#?}"
            );
            let one = todo
                .row_at(&db.pool, "1", at)
                .await?
                .map(bemi_audit::RowState::into_row);
            ensure!(
                one == row(&expected.rows, 1),
                "row 1 at {at} (change {i}): {one:?}"
            );
        }
    }
    // Before anything happened, and long after.
    ensure!(
        todo.row_at(&db.pool, "1", snapshots[0].at - Duration::days(1))
            .await?
            .is_none()
    );
    let now = table_at(&db, &todo, Utc::now() + Duration::days(1)).await?;
    let last = snapshots.last().context("snapshots")?;
    ensure!(now == last.rows, "{now:#?}");
    ensure!(
        last.rows
            == [
                json!({"id": 3, "task": "Repeat", "is_completed": false, "tags": null, "meta": null, "cost": null})
            ]
    );
    Ok(())
}
e2e_test!(row_and_table_as_of_each_instant_match_plain_sql_snapshots);
