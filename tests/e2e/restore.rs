//! `bemi_audit::Restore` against changes captured by a real worker: two tables with a foreign
//! key go through five scripted states; the restore takes them back to state 2, forward to
//! state 5 and back to state 1, each time equal — byte for byte, as PostgreSQL prints the rows —
//! to a snapshot taken at that state, its own writes audited with `restore_to` and the actor.
//! And the refusals: a table without a primary key, an instant before the trail begins, rows
//! changed where the trail cannot see them (and what `force` does with them). And `bemi restore`
//! as a process: dry run, run, refusal, usage error.

use std::sync::Arc;

use anyhow::{bail, ensure};
use bemi_audit::{ConflictReason, Restore, RestoreAction, RestoreError};
use bemi_core::context;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TODO_TABLE, TestCluster, TestDb, TestResult, ctx};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::cli_support::bemi;

/// Both tables as text, every column as PostgreSQL prints it.
async fn snapshot(db: &TestDb) -> anyhow::Result<(Option<String>, Option<String>)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM project t), \
                (SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM task t)",
    )
    .fetch_one(&db.pool)
    .await?)
}

/// The source's clock after the last commit: an instant between two states.
async fn instant(db: &TestDb) -> anyhow::Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&db.pool)
        .await?)
}

const TABLES: &str = r"
CREATE TABLE project (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL,
  budget numeric(12,2),
  tags text[] NOT NULL DEFAULT '{}',
  started_at timestamptz
);
CREATE TABLE task (
  id int PRIMARY KEY,
  project_id bigint NOT NULL REFERENCES project,
  title text NOT NULL,
  done boolean NOT NULL DEFAULT false,
  meta jsonb
);
CREATE TABLE log_line (message text);
";

/// The scripted states: each the SQL that leads to it, and how many row changes it makes.
const STATES: [(&str, usize); 5] = [
    (
        "INSERT INTO project (name, budget, tags, started_at) VALUES
           ('alpha', 1000.50, '{a,\"b c\"}', '2026-01-02 03:04:05.123456+00'),
           ('beta', NULL, '{}', NULL);
         INSERT INTO task (id, project_id, title, meta) VALUES
           (1, 1, 'plan', '{\"weight\": 1.10}'), (2, 1, 'build', NULL), (3, 2, 'test', '[1, null]');",
        5,
    ),
    (
        "UPDATE project SET name = 'alpha 2', budget = 1234567890.99 WHERE id = 1;
         UPDATE task SET done = true WHERE id = 2;
         DELETE FROM task WHERE id = 3;
         INSERT INTO task (id, project_id, title) VALUES (4, 2, E'ship\nit');",
        4,
    ),
    (
        "DELETE FROM task WHERE id = 4;
         DELETE FROM project WHERE id = 2;
         INSERT INTO project (name, tags) VALUES ('gamma', '{g}');
         INSERT INTO task (id, project_id, title) VALUES (5, 3, 'gamma task');
         UPDATE task SET project_id = 3 WHERE id = 1;",
        5,
    ),
    (
        "UPDATE task SET title = 'plan again', meta = '{\"weight\": 2}' WHERE id = 1;
         UPDATE project SET tags = array_append(tags, 'x') WHERE id = 3;",
        2,
    ),
    (
        "DELETE FROM task WHERE id = 2;
         INSERT INTO task (id, project_id, title, done) VALUES (6, 1, 'review', true);
         UPDATE project SET budget = 1 WHERE id = 1;",
        3,
    ),
];

async fn restoring_goes_back_and_forth_between_scripted_states(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.tracked_database("restore_states", TABLES).await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let before_anything = instant(&db).await?;

    let mut snapshots = Vec::new();
    let mut instants = Vec::new();
    let mut captured = 0;
    for (sql, changes) in STATES {
        db.exec(sql).await?;
        instants.push(instant(&db).await?);
        snapshots.push(snapshot(&db).await?);
        captured += changes;
    }
    wait_for_changes(&db, captured).await?;
    let tables = ["task", "public.project"];

    // A dry run to state 2 writes nothing and shows the statements in a foreign-key order.
    let restore = Restore::new(tables, instants[1]);
    let plan = restore.plan(&db.pool, &db.pool).await?;
    ensure!(
        plan.drift.is_empty() && plan.untracked.is_empty(),
        "{plan:#?}"
    );
    ensure!(
        plan.tables == ["public.project", "public.task"],
        "{:?}",
        plan.tables
    );
    let script = plan.script();
    let position = |needle: &str| {
        script
            .find(needle)
            .ok_or_else(|| anyhow::anyhow!("{needle:?} not in\n{script}"))
    };
    // project 2 comes back before task 4 (which references it); task 1 leaves project 3
    // before project 3 is deleted, and tasks 5 and 6 are deleted before it.
    ensure!(position("public.project 2: insert")? < position("public.task 4: insert")?);
    ensure!(position("public.task 1: set back")? < position("public.project 3: delete")?);
    ensure!(position("public.task 5: delete")? < position("public.project 3: delete")?);
    ensure!(script.contains("OVERRIDING SYSTEM VALUE"), "{script}");
    ensure!(snapshot(&db).await? == snapshots[4], "the dry run wrote");

    // Back to state 2, forward to state 5, back to state 1: each run by user 7.
    for (step, state) in [(1, 1), (2, 4), (3, 0)] {
        let restore = Restore::new(tables, instants[state]);
        let report =
            context::scope(ctx(json!({"user_id": 7})), restore.run(&db.pool, &db.pool)).await?;
        ensure!(
            snapshot(&db).await? == snapshots[state],
            "step {step}: not state {}:\n{:?}\nexpected\n{:?}",
            state + 1,
            snapshot(&db).await?,
            snapshots[state]
        );
        ensure!(report.rows_affected > 0 && report.overwritten.is_empty());
        // Its writes are in the trail, with the instant and the actor.
        captured += usize::try_from(report.rows_affected)?;
        let changes = wait_for_changes(&db, captured).await?;
        let expected = report.context["restore_to"].clone();
        let own = changes
            .iter()
            .filter(|c| c.context.get("restore_to") == Some(&expected))
            .collect::<Vec<_>>();
        ensure!(
            own.len() as u64 == report.rows_affected
                && own.iter().all(|c| c.context["user_id"] == 7),
            "step {step}: {own:#?}"
        );
        // Nothing left to do: the tables are at that state, as the trail now says.
        let again = Restore::new(tables, instants[state])
            .plan(&db.pool, &db.pool)
            .await?;
        ensure!(
            again.statements.is_empty() && again.drift.is_empty(),
            "step {step}: {again:#?}"
        );
    }

    // One row only (keys as `changes` stores them): task 2 as of state 2, the rest stays.
    let report = Restore::new(["task"], instants[1])
        .keys(["2"])
        .run(&db.pool, &db.pool)
        .await?;
    ensure!(
        report.statements.len() == 1 && report.statements[0].action == RestoreAction::Update,
        "{report:#?}"
    );
    let expected = snapshots[0]
        .1
        .as_deref()
        .unwrap_or_default()
        .replace("(2,1,build,f,)", "(2,1,build,t,)");
    ensure!(
        snapshot(&db).await?.1.as_deref() == Some(expected.as_str())
            && Some(expected.as_str()) != snapshots[0].1.as_deref(),
        "{:?}",
        snapshot(&db).await?
    );
    // Task 1 as of state 4 references project 3, which does not exist now: the database
    // refuses, and the error says to restore the referenced table too.
    match Restore::new(["task"], instants[3])
        .keys(["1"])
        .run(&db.pool, &db.pool)
        .await
    {
        Err(error @ RestoreError::Statement { .. }) => {
            let text = error.to_string();
            ensure!(
                text.contains("foreign key") && text.contains("restore that table too"),
                "{text}"
            );
        }
        other => bail!("a foreign key violation was not reported: {other:?}"),
    }

    // Refusals, with their reasons.
    match Restore::new(["log_line"], instants[0])
        .plan(&db.pool, &db.pool)
        .await
    {
        Err(error @ RestoreError::NoPrimaryKey { .. }) => {
            ensure!(error.to_string().contains("no primary key"), "{error}");
        }
        other => bail!("a table without a primary key was not refused: {other:?}"),
    }
    match Restore::new(tables, before_anything)
        .run(&db.pool, &db.pool)
        .await
    {
        Err(error @ RestoreError::TrailTooShort { .. }) => {
            ensure!(error.to_string().contains("begins at"), "{error}");
        }
        other => bail!("an instant before the trail was not refused: {other:?}"),
    }
    match Restore::new(["nope"], instants[0])
        .plan(&db.pool, &db.pool)
        .await
    {
        Err(RestoreError::UnknownTable { table }) => ensure!(table == "nope"),
        other => bail!("an unknown table was not refused: {other:?}"),
    }
    worker.stop().await?;
    Ok(())
}
e2e_test!(restoring_goes_back_and_forth_between_scripted_states);

async fn rows_the_trail_did_not_see_are_refused_unless_forced(
    cluster: Arc<TestCluster>,
) -> TestResult {
    // A row written before tracking began: the trail has never seen it.
    let ddl = "CREATE TABLE item (id int PRIMARY KEY, name text NOT NULL);
               INSERT INTO item VALUES (100, 'before tracking');";
    let db = cluster.tracked_database("restore_drift", ddl).await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    db.exec("INSERT INTO item VALUES (1, 'one'), (2, 'two')")
        .await?;
    let state_1 = instant(&db).await?;
    db.exec(
        "UPDATE item SET name = 'uno' WHERE id = 1; DELETE FROM item WHERE id = 2; \
         INSERT INTO item VALUES (3, 'three')",
    )
    .await?;
    wait_for_changes(&db, 5).await?;
    // Written while nothing captures it.
    worker.stop().await?;
    db.exec("UPDATE item SET name = 'tres' WHERE id = 3")
        .await?;

    let restore = Restore::new(["item"], state_1);
    let unchanged = items(&db).await?;
    match restore.run(&db.pool, &db.pool).await {
        Err(error @ RestoreError::Drift { .. }) => {
            let text = error.to_string();
            ensure!(
                text.contains("public.item 3: the row in the database is not as")
                    && text.contains("tres")
                    && text.contains("public.item 100: in the table but not in the audit trail"),
                "{text}"
            );
        }
        other => bail!("the drift was not refused: {other:?}"),
    }
    ensure!(items(&db).await? == unchanged, "the refused restore wrote");

    // Forced: the drifted row is overwritten (as the plan says), the untracked one kept.
    let forced = restore.force(true);
    let plan = forced.plan(&db.pool, &db.pool).await?;
    ensure!(
        plan.drift.len() == 1 && plan.untracked.len() == 1,
        "{plan:#?}"
    );
    ensure!(
        matches!(&plan.drift[0].reason, ConflictReason::RowDiffers { current: Some(row) } if row["name"] == "tres")
    );
    ensure!(
        plan.script()
            .contains("forced, the restore overwrites them")
    );
    let report = forced.run(&db.pool, &db.pool).await?;
    ensure!(
        report.overwritten.len() == 1 && report.kept[0].primary_key == "100",
        "{report:#?}"
    );
    ensure!(
        items(&db).await? == "(1,one)\n(2,two)\n(100,\"before tracking\")",
        "{}",
        items(&db).await?
    );
    Ok(())
}
e2e_test!(rows_the_trail_did_not_see_are_refused_unless_forced);

async fn items(db: &TestDb) -> anyhow::Result<String> {
    Ok(
        sqlx::query_scalar("SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM item t")
            .fetch_one(&db.pool)
            .await?,
    )
}

async fn bemi_restore_from_the_command_line(cluster: Arc<TestCluster>) -> TestResult {
    let ddl = format!("{TODO_TABLE};\nCREATE TABLE note (body text);");
    let db = cluster.tracked_database("cli_restore", &ddl).await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    db.exec("INSERT INTO todo (task) VALUES ('a'), ('b')")
        .await?;
    let state_1 = instant(&db).await?;
    let then = todos(&db).await?;
    db.exec(
        "UPDATE todo SET task = 'a2', is_completed = true WHERE id = 1; \
         DELETE FROM todo WHERE id = 2; INSERT INTO todo (task) VALUES ('c')",
    )
    .await?;
    wait_for_changes(&db, 5).await?;
    let now = todos(&db).await?;
    let to = state_1.to_rfc3339();
    let envs = [("DATABASE_URL", db.url.as_str())];

    let dry = bemi(&["restore", "todo", "--to", &to, "--dry-run"], &envs)
        .await?
        .success()?;
    ensure!(
        dry.stdout.starts_with("-- Restore of public.todo to ")
            && dry.stdout.contains("public.todo 2: insert the row")
            && dry.stdout.contains("public.todo 3: delete the row")
            && dry
                .stdout
                .contains("public.todo 1: set back is_completed, task"),
        "{}",
        dry.stdout
    );
    ensure!(todos(&db).await? == now, "the dry run wrote");

    let done = bemi(
        &["restore", "todo", "--context", "user=ann"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("BEMI_RESTORE_TO", to.as_str()),
        ],
    )
    .await?
    .success()?;
    ensure!(
        done.stdout.starts_with("restored to ")
            && done.stdout.contains("3 statements (3 rows written)"),
        "{}",
        done.stdout
    );
    ensure!(todos(&db).await? == then);
    let changes = wait_for_changes(&db, 8).await?;
    ensure!(
        changes[5..]
            .iter()
            .all(|c| c.context["user"] == "ann" && c.context["restore_to"].is_string()),
        "{changes:#?}"
    );

    let refused = bemi(&["restore", "note", "--to", &to], &envs).await?;
    ensure!(
        refused.status.code() == Some(1)
            && refused.stderr.contains("public.note has no primary key"),
        "{refused:#?}"
    );
    let usage = bemi(&["restore", "todo", "--to", "someday"], &envs).await?;
    ensure!(usage.status.code() == Some(2), "{usage:#?}");
    worker.stop().await?;
    Ok(())
}
e2e_test!(bemi_restore_from_the_command_line);

async fn todos(db: &TestDb) -> anyhow::Result<Vec<(i64, String, bool)>> {
    Ok(
        sqlx::query_as("SELECT id, task, is_completed FROM todo ORDER BY id")
            .fetch_all(&db.pool)
            .await?,
    )
}
