//! `bemi changes` as a process, on changes captured by a real worker: every filter, the table
//! and JSON-lines outputs, and `--follow`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_audit::schema::{self, Layout};
use bemi_audit::{Change, Operation};
use bemi_core::context;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TODO_TABLE, TestCluster, TestDb, TestResult, ctx};
use serde_json::json;

use crate::cli_support::{Background, bemi};

/// `bemi changes --json args…` against `db`, parsed.
async fn json_changes(db: &TestDb, args: &[&str]) -> anyhow::Result<Vec<Change>> {
    json_changes_with(db, args, &[]).await
}

async fn json_changes_with(
    db: &TestDb,
    args: &[&str],
    envs: &[(&str, &str)],
) -> anyhow::Result<Vec<Change>> {
    let mut all_args = vec!["changes", "--json"];
    all_args.extend_from_slice(args);
    let mut all_envs = vec![("DATABASE_URL", db.url.as_str())];
    all_envs.extend_from_slice(envs);
    let output = bemi(&all_args, &all_envs).await?.success()?;
    output
        .stdout
        .lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

/// (table, primary key, operation) of a change.
type Summary = (String, String, Operation);

/// The [`Summary`] of each change.
fn summary(changes: &[Change]) -> Vec<Summary> {
    changes
        .iter()
        .map(|c| {
            (
                c.table.clone(),
                c.primary_key.clone().unwrap_or_default(),
                c.operation,
            )
        })
        .collect()
}

fn s(table: &str, pk: &str, operation: Operation) -> Summary {
    (table.to_owned(), pk.to_owned(), operation)
}

async fn changes_filters_in_table_and_json_output(cluster: Arc<TestCluster>) -> TestResult {
    use Operation::{Create, Delete, Update};

    let db = cluster.database("cli_changes").await?;
    db.exec(&format!(
        "{TODO_TABLE}; CREATE TABLE note (id int PRIMARY KEY, body text)"
    ))
    .await?;
    db.migrate().await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let pool = db.bemi_pool();
    let todo = |user: i64| ctx(json!({"user_id": user, "endpoint": "/todo"}));
    context::scope(
        todo(1),
        sqlx::query("INSERT INTO todo (task) VALUES ('one')").execute(&pool),
    )
    .await?;
    context::scope(
        todo(2),
        sqlx::query("INSERT INTO todo (task) VALUES ('two')").execute(&pool),
    )
    .await?;
    context::scope(
        todo(1),
        sqlx::query("UPDATE todo SET is_completed = true WHERE id = 1").execute(&pool),
    )
    .await?;
    db.exec("DELETE FROM todo WHERE id = 2").await?;
    context::scope(
        ctx(json!({"user_id": 1, "endpoint": "/note"})),
        sqlx::query("INSERT INTO note VALUES (1, repeat('x', 200))").execute(&pool),
    )
    .await?;
    wait_for_changes(&db, 5).await?;
    worker.stop().await?;
    // The note was written three days ago, as far as the audit trail knows.
    db.exec("UPDATE changes SET committed_at = committed_at - interval '3 days' WHERE \"table\" = 'note'")
        .await?;

    let everything = json_changes(&db, &[]).await?;
    ensure!(
        summary(&everything)
            == [
                s("todo", "2", Delete),
                s("todo", "1", Update),
                s("todo", "2", Create),
                s("todo", "1", Create),
                s("note", "1", Create),
            ],
        "{everything:#?}"
    );
    let update = &everything[1];
    ensure!(update.before == json!({"id": 1, "task": "one", "is_completed": false}));
    ensure!(update.after == json!({"id": 1, "task": "one", "is_completed": true}));
    ensure!(update.context["user_id"] == 1 && update.context["endpoint"] == "/todo");
    ensure!(everything[0].context == json!({}));
    ensure!(
        everything
            .iter()
            .all(|c| c.database == db.name && c.schema == "public")
    );

    let cases: Vec<(Vec<&str>, Vec<Summary>)> = vec![
        (
            vec!["--table", "todo"],
            vec![
                s("todo", "2", Delete),
                s("todo", "1", Update),
                s("todo", "2", Create),
                s("todo", "1", Create),
            ],
        ),
        (vec!["--table", "public.note"], vec![s("note", "1", Create)]),
        (vec!["--table", "other.todo"], vec![]),
        (
            vec!["--table", "todo", "--pk", "1"],
            vec![s("todo", "1", Update), s("todo", "1", Create)],
        ),
        (
            vec!["--pk", "1"],
            vec![
                s("todo", "1", Update),
                s("todo", "1", Create),
                s("note", "1", Create),
            ],
        ),
        (vec!["--operation", "update"], vec![s("todo", "1", Update)]),
        (
            vec!["--operation", "INSERT", "--table", "todo"],
            vec![s("todo", "2", Create), s("todo", "1", Create)],
        ),
        (
            vec!["--context", "user_id=1"],
            vec![
                s("todo", "1", Update),
                s("todo", "1", Create),
                s("note", "1", Create),
            ],
        ),
        // A number is not its string.
        (vec!["--context", "user_id=\"1\""], vec![]),
        (
            vec!["--context", "user_id=1", "endpoint=/note"],
            vec![s("note", "1", Create)],
        ),
        (
            vec!["--since", "1d"],
            vec![
                s("todo", "2", Delete),
                s("todo", "1", Update),
                s("todo", "2", Create),
                s("todo", "1", Create),
            ],
        ),
        (vec!["--until", "1d"], vec![s("note", "1", Create)]),
        (
            vec!["--limit", "2"],
            vec![s("todo", "2", Delete), s("todo", "1", Update)],
        ),
        (
            vec!["--limit", "1", "--context", "user_id=1"],
            vec![s("todo", "1", Update)],
        ),
    ];
    for (args, expected) in cases {
        let found = json_changes(&db, &args).await?;
        ensure!(summary(&found) == expected, "{args:?}: {found:#?}");
    }
    // An absolute --since, as `bemi changes` prints timestamps.
    let since = everything[2]
        .committed_at
        .format("%Y-%m-%d %H:%M:%S%.6f+00")
        .to_string();
    let recent = json_changes(&db, &["--since", &since]).await?;
    ensure!(
        summary(&recent)
            == [
                s("todo", "2", Delete),
                s("todo", "1", Update),
                s("todo", "2", Create)
            ],
        "{recent:#?}"
    );

    // Filters from the environment (lists comma-separated), and the destination URL winning
    // over DATABASE_URL.
    let from_env = json_changes_with(
        &db,
        &[],
        &[
            ("BEMI_CHANGES_CONTEXT", "user_id=1,endpoint=/todo"),
            ("BEMI_CHANGES_OPERATION", "CREATE"),
        ],
    )
    .await?;
    ensure!(
        summary(&from_env) == [s("todo", "1", Create)],
        "{from_env:#?}"
    );
    let elsewhere = bemi(
        &["changes", "--json", "--table", "note"],
        &[
            ("DATABASE_URL", "postgres://nobody:x@127.0.0.1:1/nothing"),
            ("BEMI_DESTINATION_URL", db.url.as_str()),
        ],
    )
    .await?
    .success()?;
    ensure!(elsewhere.stdout.lines().count() == 1, "{elsewhere:#?}");

    // The table.
    let table = bemi(&["changes"], &[("DATABASE_URL", db.url.as_str())])
        .await?
        .success()?;
    let lines: Vec<&str> = table.stdout.lines().collect();
    ensure!(lines.len() == 8, "{}", table.stdout);
    let headers: Vec<&str> = lines[0].split('|').map(str::trim).collect();
    ensure!(
        headers
            == [
                "primary_key",
                "table",
                "operation",
                "before",
                "after",
                "context",
                "committed_at"
            ],
        "{}",
        lines[0]
    );
    ensure!(
        lines[1].starts_with("-------------+-------+-----------+"),
        "{}",
        lines[1]
    );
    ensure!(lines[7] == "(5 rows)", "{}", table.stdout);
    let cells = |line: &str| -> Vec<String> {
        line.split(" | ")
            .map(|cell| cell.trim().to_owned())
            .collect()
    };
    let delete = cells(lines[2]);
    ensure!(
        delete[..4]
            == [
                "2",
                "todo",
                "DELETE",
                r#"{"id": 2, "task": "two", "is_completed": false}"#
            ],
        "{delete:?}"
    );
    ensure!(delete[4] == "{}" && delete[5] == "{}", "{delete:?}");
    let committed = everything[0]
        .committed_at
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    ensure!(
        delete[6].starts_with(&committed) && delete[6].ends_with("+00"),
        "{delete:?}"
    );
    let update_row = cells(lines[3]);
    // The app's keys first, the library's long SQL key last.
    ensure!(
        update_row[5].starts_with(r#"{"user_id": 1, "endpoint": "/todo", "SQL": "UPDATE todo SET"#),
        "{update_row:?}"
    );
    let note = cells(lines[6]);
    ensure!(note[1] == "note", "{note:?}");
    // A 200-character body is cut to fit, with an ellipsis.
    ensure!(
        note[4].starts_with(r#"{"id": 1, "body": "xxxx"#)
            && note[4].ends_with('…')
            && note[4].chars().count() == 60,
        "{note:?}"
    );

    let one = bemi(
        &["changes", "--table", "todo", "--operation", "update"],
        &[("DATABASE_URL", db.url.as_str())],
    )
    .await?
    .success()?;
    ensure!(one.stdout.ends_with("(1 row)\n"), "{}", one.stdout);

    let bad_since = bemi(
        &["changes", "--since", "the day before"],
        &[("DATABASE_URL", db.url.as_str())],
    )
    .await?;
    ensure!(bad_since.status.code() == Some(2), "{bad_since:#?}");
    ensure!(
        bad_since.stderr.contains("2024-05-01T12:00:00Z"),
        "{}",
        bad_since.stderr
    );

    let empty = cluster.database("cli_changes_none").await?;
    let no_table = bemi(&["changes"], &[("DATABASE_URL", empty.url.as_str())]).await?;
    ensure!(no_table.status.code() == Some(1), "{no_table:#?}");
    ensure!(
        no_table.stderr.contains("no `changes` table") && no_table.stderr.contains("bemi worker"),
        "{}",
        no_table.stderr
    );
    Ok(())
}
e2e_test!(changes_filters_in_table_and_json_output);

async fn changes_follow_prints_changes_made_after_it_started(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.tracked_database("cli_follow", TODO_TABLE).await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    db.exec("INSERT INTO todo (task) VALUES ('before')").await?;
    wait_for_changes(&db, 1).await?;

    let env = [("DATABASE_URL", db.url.as_str())];
    let mut json = Background::start(
        &[
            "changes",
            "--follow",
            "--json",
            "--table",
            "todo",
            "--poll-interval",
            "100ms",
        ],
        &env,
    )?;
    let mut pretty = Background::start(
        &[
            "changes",
            "--follow",
            "--limit",
            "0",
            "--poll-interval",
            "100ms",
        ],
        &env,
    )?;
    let timeout = Duration::from_secs(60);
    // The JSON follower first shows the change that was already there.
    let first = json
        .line_where("the existing change", timeout, |_| true)
        .await?;
    let first: Change = serde_json::from_str(&first)?;
    ensure!(first.after["task"] == "before", "{first:#?}");
    // The table follower shows its header, and nothing from before it started.
    pretty
        .line_where("the header rule", timeout, |line| line.starts_with("----"))
        .await?;

    let pool = db.bemi_pool();
    context::scope(
        ctx(json!({"user_id": 187234})),
        sqlx::query("INSERT INTO todo (task) VALUES ('after')").execute(&pool),
    )
    .await?;
    db.exec("UPDATE todo SET is_completed = true WHERE task = 'after'")
        .await?;

    let created = json
        .line_where("the new change", timeout, |line| line.contains("CREATE"))
        .await?;
    let created: Change = serde_json::from_str(&created)?;
    ensure!(created.after["task"] == "after", "{created:#?}");
    ensure!(created.context["user_id"] == 187234, "{created:#?}");
    let updated = json
        .line_where("the update", timeout, |line| line.contains("UPDATE"))
        .await?;
    let updated: Change = serde_json::from_str(&updated)?;
    ensure!(updated.primary_key == created.primary_key, "{updated:#?}");
    ensure!(
        json.lines.len() == 3,
        "each change once, in order: {:#?}",
        json.lines
    );

    let row = pretty
        .line_where("the new row", timeout, |line| line.contains("UPDATE"))
        .await?;
    ensure!(row.contains("| todo"), "{row}");
    ensure!(pretty.lines.len() == 4, "{:#?}", pretty.lines);
    ensure!(
        pretty.lines[2].contains("CREATE") && pretty.lines[2].contains(r#""task": "after""#),
        "{:#?}",
        pretty.lines
    );
    ensure!(
        !pretty
            .lines
            .iter()
            .any(|line| line.contains(r#""task": "before""#)),
        "--limit 0 showed an old change: {:#?}",
        pretty.lines
    );

    // Ctrl-C stops a follower cleanly.
    for follower in [&mut json, &mut pretty] {
        follower.interrupt().await?;
    }
    worker.stop().await?;
    Ok(())
}
e2e_test!(changes_follow_prints_changes_made_after_it_started);

/// `bemi changes --follow --json --limit 1`, polling every 100 ms, against `db`.
fn follow_json(db: &TestDb) -> anyhow::Result<Background> {
    Background::start(
        &[
            "changes",
            "--follow",
            "--json",
            "--limit",
            "1",
            "--poll-interval",
            "100ms",
        ],
        &[("DATABASE_URL", db.url.as_str())],
    )
}

/// The `task` of the after-image of a printed JSON change.
fn task_of(line: &str) -> anyhow::Result<String> {
    let change: Change = serde_json::from_str(line)?;
    Ok(change.after["task"].as_str().unwrap_or_default().to_owned())
}

/// Writes a change into `changes` as the worker would: of table `todo`, committed `ago` before
/// now, at `position`.
async fn store_change(db: &TestDb, task: &str, ago: &str, position: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO changes (primary_key, after, database, schema, \"table\", operation, \
                              committed_at, queued_at, transaction_id, position) \
         VALUES ($1, jsonb_build_object('task', $1::text), current_database(), 'public', 'todo', \
                 'CREATE', now() - $2::interval, now(), $3, $3)",
    )
    .bind(task)
    .bind(ago)
    .bind(position)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Two transactions committing at once can reach the WAL, and so the worker, in the opposite
/// order of their commit times: the follower still prints the one with the earlier time, once.
async fn changes_follow_prints_a_change_that_arrives_after_a_later_one(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("cli_follow_order").await?;
    let mut conn = db.pool.acquire().await?;
    schema::create(&mut conn, Layout::Plain).await?;
    drop(conn);
    store_change(&db, "existing", "10 seconds", 1).await?;

    let mut json = follow_json(&db)?;
    let timeout = Duration::from_secs(60);

    // Once it shows the newest change, it is following.
    json.line_where("the existing change", timeout, |line| {
        line.contains("existing")
    })
    .await?;
    store_change(&db, "later", "0 seconds", 30).await?;
    let line = json
        .line_where("the later change", timeout, |line| line.contains("later"))
        .await?;
    ensure!(task_of(&line)? == "later");
    // Committed a second before the one printed, but stored after it.
    store_change(&db, "earlier", "1 second", 20).await?;
    json.line_where("the earlier change", timeout, |line| {
        line.contains("earlier")
    })
    .await?;
    store_change(&db, "last", "0 seconds", 40).await?;
    json.line_where("the last change", timeout, |line| line.contains("last"))
        .await?;

    let tasks = json
        .lines
        .iter()
        .map(|line| task_of(line))
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(
        tasks == ["existing", "later", "earlier", "last"],
        "each change once: {tasks:?}"
    );
    json.interrupt().await?;
    Ok(())
}
e2e_test!(changes_follow_prints_a_change_that_arrives_after_a_later_one);

/// After a large transaction (20 000 changes with one `committed_at`, each with a 4 kB
/// after-image), a follower keeps printing new changes — a later one and one that arrives
/// late — each once, and never an old one again; it reads the large transaction by cursor
/// only, so its memory stays far below the 80 MB of those changes.
async fn changes_follow_after_a_large_transaction_prints_only_new_changes(
    cluster: Arc<TestCluster>,
) -> TestResult {
    const LARGE: i64 = 20_000;

    let db = cluster.database("cli_follow_large").await?;
    let mut conn = db.pool.acquire().await?;
    schema::create(&mut conn, Layout::Plain).await?;
    drop(conn);
    sqlx::query(
        "INSERT INTO changes (primary_key, after, database, schema, \"table\", operation, \
                              committed_at, queued_at, transaction_id, position) \
         SELECT g::text, jsonb_build_object('task', 'large ' || g, 'notes', repeat('x', 4000)), \
                current_database(), 'public', 'todo', 'CREATE', now() - interval '2 seconds', \
                now(), 7, g \
         FROM generate_series(1, $1::bigint) AS g",
    )
    .bind(LARGE)
    .execute(&db.pool)
    .await?;

    let mut json = follow_json(&db)?;
    let timeout = Duration::from_secs(60);
    // The newest change of the large transaction (the last in the audit trail's order).
    json.line_where("the newest existing change", timeout, |_| true)
        .await?;
    // A new change, then one committed a second before it (after the large transaction) that
    // reaches the audit trail after it, then another new one: each after the previous one
    // was printed, with many polls over the large transaction's window in between.
    store_change(&db, "new", "0 seconds", LARGE + 20).await?;
    json.line_where("the new change", timeout, |line| line.contains("\"new\""))
        .await?;
    sqlx::query(
        "INSERT INTO changes (primary_key, after, database, schema, \"table\", operation, \
                              committed_at, queued_at, transaction_id, position) \
         SELECT 'late', jsonb_build_object('task', 'late'), database, schema, \"table\", \
                'CREATE', committed_at - interval '1 second', now(), 8, $1 \
         FROM changes WHERE primary_key = 'new'",
    )
    .bind(LARGE + 10)
    .execute(&db.pool)
    .await?;
    json.line_where("the late change", timeout, |line| line.contains("\"late\""))
        .await?;
    store_change(&db, "newer", "0 seconds", LARGE + 30).await?;
    json.line_where("the newer change", timeout, |line| {
        line.contains("\"newer\"")
    })
    .await?;

    let tasks = json
        .lines
        .iter()
        .map(|line| task_of(line))
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(
        tasks
            == [
                format!("large {LARGE}"),
                "new".into(),
                "late".into(),
                "newer".into()
            ],
        "each new change once, no old one again: {tasks:?}"
    );
    // Peak memory: a follower that read the large transaction's 80 MB in full, at start or at
    // a poll, would be far above this.
    let pid = json.pid().context("the follower exited")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    ensure!(
        peak_kb < 40 * 1024,
        "the follower's peak memory is {peak_kb} kB"
    );
    json.interrupt().await?;
    Ok(())
}
e2e_test!(changes_follow_after_a_large_transaction_prints_only_new_changes);
