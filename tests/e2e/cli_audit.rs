//! `bemi history`, `bemi at`, `bemi revert`, `bemi prune`, the new `bemi changes` filters and
//! `bemi worker --partition-by month`, as processes, on changes captured by a real worker.

use std::sync::Arc;

use anyhow::{Context as _, ensure};
use bemi_audit::{Change, Operation};
use bemi_core::context;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TODO_TABLE, TestCluster, TestDb, TestResult, ctx};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::cli_support::{Background, Output, bemi, free_port};
use crate::cli_worker::wait_until_streaming;

/// `bemi args…` against `db` (as DATABASE_URL) with more environment variables.
async fn run(db: &TestDb, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut all = vec![("DATABASE_URL", db.url.as_str())];
    all.extend_from_slice(envs);
    bemi(args, &all).await
}

/// The JSON lines of a successful `bemi args…`.
async fn json_lines(
    db: &TestDb,
    args: &[&str],
    envs: &[(&str, &str)],
) -> anyhow::Result<Vec<Value>> {
    let output = run(db, args, envs).await?.success()?;
    output
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("line {line:?}")))
        .collect()
}

/// The changes printed by a successful `bemi args… --json`.
async fn json_changes(
    db: &TestDb,
    args: &[&str],
    envs: &[(&str, &str)],
) -> anyhow::Result<Vec<Change>> {
    json_lines(db, args, envs)
        .await?
        .into_iter()
        .map(|value| Ok(serde_json::from_value::<Change>(value)?))
        .collect()
}

fn operations(changes: &[Change]) -> Vec<Operation> {
    changes.iter().map(|c| c.operation).collect()
}

async fn now(db: &TestDb) -> anyhow::Result<String> {
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await?;
    Ok(now.to_rfc3339())
}

async fn history_at_and_the_new_changes_filters_from_the_command_line(
    cluster: Arc<TestCluster>,
) -> TestResult {
    use Operation::{Create, Delete, Update};

    let db = cluster.tracked_database("cli_audit", TODO_TABLE).await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let pool = db.bemi_pool();
    let t0 = now(&db).await?;
    context::scope(
        ctx(json!({"user_id": 1})),
        sqlx::query("INSERT INTO todo (task) VALUES ('Sleep')").execute(&pool),
    )
    .await?;
    let t1 = now(&db).await?;
    let mut tx = pool.begin().await?;
    let xid: i64 = sqlx::query_scalar("SELECT (txid_current() % 4294967296)::int8")
        .fetch_one(&mut tx)
        .await?;
    context::scope(
        ctx(json!({"user_id": 2})),
        sqlx::query("UPDATE todo SET is_completed = true WHERE id = 1").execute(&mut tx),
    )
    .await?;
    tx.commit().await?;
    let t2 = now(&db).await?;
    db.exec("INSERT INTO todo (task) VALUES ('Eat'); DELETE FROM todo WHERE id = 1")
        .await?;
    let t3 = now(&db).await?;
    wait_for_changes(&db, 4).await?;
    worker.stop().await?;

    // bemi history
    let history: Vec<Change> = json_changes(&db, &["history", "todo", "1", "--json"], &[]).await?;
    ensure!(
        operations(&history) == [Create, Update, Delete],
        "{history:#?}"
    );
    ensure!(history[1].context["user_id"] == 2);
    let table = run(&db, &["history", "public.todo", "1"], &[])
        .await?
        .success()?;
    ensure!(
        table.stdout.contains("| CREATE    |") && table.stdout.ends_with("(3 rows)\n"),
        "{}",
        table.stdout
    );
    let from_env: Vec<Change> = json_changes(
        &db,
        &["history", "todo", "2"],
        &[("BEMI_HISTORY_JSON", "1")],
    )
    .await?;
    ensure!(operations(&from_env) == [Create], "{from_env:#?}");
    // The table and the key are arguments only: an environment variable never shifts them.
    let shifted = run(&db, &["history", "2"], &[("BEMI_HISTORY_TABLE", "todo")]).await?;
    ensure!(
        shifted.status.code() == Some(2) && shifted.stderr.contains("<PK>"),
        "{shifted:#?}"
    );
    let shifted = run(
        &db,
        &["at", r#"["x",1]"#, "1s"],
        &[("BEMI_AT_TABLE", "todo")],
    )
    .await?;
    ensure!(
        shifted.status.code() == Some(1)
            && shifted.stdout.is_empty()
            && shifted.stderr.contains(r#"no change of table "[\"x\",1]""#),
        "{shifted:#?}"
    );
    let misspelt = run(&db, &["history", "tood", "1"], &[]).await?;
    ensure!(
        misspelt.status.code() == Some(1) && misspelt.stderr.contains("check the name"),
        "{misspelt:#?}"
    );

    // bemi at TABLE PK TIME
    let sleep = |done: bool| json!({"id": 1, "task": "Sleep", "is_completed": done});
    let at: Vec<Value> = json_lines(&db, &["at", "todo", "1", &t1, "--json"], &[]).await?;
    ensure!(at == [sleep(false)], "{at:?}");
    let at: Vec<Value> = json_lines(&db, &["at", "todo", "1", &t0, "--json"], &[]).await?;
    ensure!(at.is_empty(), "{at:?}");
    let pretty = run(&db, &["at", "todo", "1", &t2], &[]).await?.success()?;
    ensure!(
        pretty.stdout
            == " id | task  | is_completed\n----+-------+--------------\n 1  | Sleep | true\n(1 row)\n",
        "{}",
        pretty.stdout
    );
    let gone = run(&db, &["at", "todo", "1", &t3], &[]).await?.success()?;
    ensure!(gone.stdout == "(0 rows)\n", "{}", gone.stdout);

    // bemi at TABLE TIME: the whole table.
    let eat = json!({"id": 2, "task": "Eat", "is_completed": false});
    let whole: Vec<Value> = json_lines(&db, &["at", "todo", &t2, "--json"], &[]).await?;
    ensure!(whole == [sleep(true)], "{whole:?}");
    let whole: Vec<Value> = json_lines(&db, &["at", "todo", &t3, "--json"], &[]).await?;
    ensure!(whole == [eat.clone()], "{whole:?}");
    // "0s" ago: now.
    let whole: Vec<Value> =
        json_lines(&db, &["at", "todo", "0s"], &[("BEMI_AT_JSON", "true")]).await?;
    ensure!(whole == [eat], "{whole:?}");
    // Every form PostgreSQL prints, and the forms only PostgreSQL reads.
    let t1_instant = DateTime::parse_from_rfc3339(&t1)?;
    let india = chrono::FixedOffset::east_opt(5 * 3600 + 1800).expect("a valid offset");
    for t1 in [
        t1_instant
            .with_timezone(&india)
            .format("%Y-%m-%d %H:%M:%S%.f%:z")
            .to_string(),
        t1_instant
            .with_timezone(&india)
            .format("%Y-%m-%dT%H:%M:%S%.f%z")
            .to_string(),
        t1_instant
            .with_timezone(&Utc)
            .format("%Y-%m-%d %H:%M:%S%.f+00")
            .to_string(),
        t1_instant
            .with_timezone(&Utc)
            .format("%b %d %Y %H:%M:%S%.f UTC")
            .to_string(),
    ] {
        let at: Vec<Value> = json_lines(&db, &["at", "todo", "1", &t1, "--json"], &[]).await?;
        ensure!(at == [sleep(false)], "{t1}: {at:?}");
    }
    // A bad instant is a usage error (exit code 2): found by bemi before connecting, or by
    // PostgreSQL, which reads every form it knows.
    for args in [
        &["at", "todo", "someday"][..],
        &["at", "todo", "1", "someday"],
        &["changes", "--since", "last tuesday"],
        &["changes", "--until", "noon"],
        &["revert", "--context", "a=1", "--since", "last week"],
        &["prune", "--older-than", "ages"],
    ] {
        let bad = run(&db, args, &[]).await?;
        ensure!(
            bad.status.code() == Some(2) && bad.stderr.contains("2024-05-01T12:00:00Z"),
            "{args:?}: {bad:#?}"
        );
    }

    // bemi changes: the new filters.
    let xid = xid.to_string();
    /// (arguments, environment, expected (key, operation) newest first)
    type Case<'a> = (
        Vec<&'a str>,
        Vec<(&'a str, &'a str)>,
        Vec<(&'a str, Operation)>,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            vec!["--after", "is_completed=true"],
            vec![],
            vec![("1", Update)],
        ),
        (
            vec!["--before", "is_completed=true"],
            vec![],
            vec![("1", Delete)],
        ),
        (
            vec!["--before", "task=Sleep", "is_completed=false"],
            vec![],
            vec![("1", Update)],
        ),
        (
            vec!["--operation", "update"],
            vec![("BEMI_CHANGES_CHANGED", "is_completed")],
            vec![("1", Update)],
        ),
        (
            vec!["--changed", "task"],
            vec![],
            vec![("1", Delete), ("2", Create), ("1", Create)],
        ),
        (vec!["--transaction", &xid], vec![], vec![("1", Update)]),
        (vec!["--database", "elsewhere"], vec![], vec![]),
    ];
    for (args, envs, expected) in cases {
        let mut all = vec!["changes", "--json"];
        all.extend_from_slice(&args);
        let found: Vec<Change> = json_changes(&db, &all, &envs).await?;
        let summary: Vec<(&str, Operation)> = found
            .iter()
            .map(|c| (c.primary_key.as_deref().unwrap_or_default(), c.operation))
            .collect();
        ensure!(summary == expected, "{args:?} {envs:?}: {found:#?}");
    }

    // bemi prune: only what is older than the bound.
    db.exec("UPDATE changes SET committed_at = committed_at - interval '100 days' WHERE operation = 'CREATE'")
        .await?;
    let pruned = run(&db, &["prune", "--older-than", "90d"], &[])
        .await?
        .success()?;
    ensure!(
        pruned
            .stdout
            .starts_with("deleted 2 changes committed before"),
        "{}",
        pruned.stdout
    );
    let left: Vec<Change> = json_changes(&db, &["changes", "--json"], &[]).await?;
    ensure!(operations(&left) == [Delete, Update], "{left:#?}");

    // --destination-url alone (no DATABASE_URL) is where they read the audit trail, and it is
    // the URL flag their help and usage name.
    let destination = ["--destination-url", db.url.as_str()];
    for args in [
        &["history", "todo", "1", "--json"][..],
        &["at", "todo", "1", &t2, "--json"],
        &["changes", "--json"],
        &["prune", "--older-than", "1000d"],
    ] {
        let output = bemi(&[args, &destination[..]].concat(), &[])
            .await?
            .success()?;
        ensure!(!output.stdout.is_empty(), "{args:?}: {output:#?}");
    }
    for command in ["history", "at", "prune", "changes"] {
        let help = bemi(&[command, "--help"], &[]).await?.success()?;
        ensure!(
            help.stdout.contains("--destination-url <URL>")
                && !help.stdout.contains("--database-url"),
            "{command}: {}",
            help.stdout
        );
    }
    // A usage error's usage line names what was given, never a flag that is not read.
    let usage = run(&db, &["history", "todo"], &[]).await?;
    ensure!(
        usage.status.code() == Some(2)
            && usage.stderr.contains(" history <[SCHEMA.]TABLE> <PK>")
            && !usage.stderr.contains("--database-url"),
        "{usage:#?}"
    );
    Ok(())
}
e2e_test!(history_at_and_the_new_changes_filters_from_the_command_line);

async fn revert_refuses_a_conflict_naming_the_row_and_force_proceeds(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.tracked_database("cli_revert", TODO_TABLE).await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let pool = db.bemi_pool();
    context::scope(ctx(json!({"request_id": "r1", "user_id": 1})), async {
        sqlx::query("INSERT INTO todo (task) VALUES ('a')")
            .execute(&pool)
            .await?;
        sqlx::query("INSERT INTO todo (task) VALUES ('b')")
            .execute(&pool)
            .await
    })
    .await?;
    context::scope(
        ctx(json!({"request_id": "r2", "user_id": 2})),
        sqlx::query("UPDATE todo SET task = 'b2' WHERE id = 2").execute(&pool),
    )
    .await?;
    wait_for_changes(&db, 3).await?;
    let rows = || async {
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, task FROM todo ORDER BY id")
            .fetch_all(&db.pool)
            .await?;
        anyhow::Ok(rows)
    };
    let before = rows().await?;

    // Refused: row 2 changed after request r1 created it. The error names the row and the
    // later change's context.
    let refused = run(&db, &["revert", "--context", "request_id=r1"], &[]).await?;
    ensure!(refused.status.code() == Some(1), "{refused:#?}");
    ensure!(
        refused.stderr.contains("not reverted: 1 row changed")
            && refused
                .stderr
                .contains("public.todo 2: changed again by change")
            && refused.stderr.contains("\"request_id\":\"r2\"")
            && refused.stderr.contains("--force"),
        "{}",
        refused.stderr
    );
    ensure!(rows().await? == before, "the refused revert wrote");

    // The dry run prints the SQL and the conflict, and writes nothing.
    let dry = run(
        &db,
        &["revert", "--context", "request_id=r1", "--dry-run"],
        &[],
    )
    .await?
    .success()?;
    ensure!(
        dry.stdout
            .matches("DELETE FROM \"public\".\"todo\"")
            .count()
            == 2
            && dry.stdout.contains("BEGIN;")
            && dry.stdout.contains("-- 1 row changed afterwards")
            && dry.stdout.contains("public.todo 2")
            && dry
                .stdout
                .contains("$1 = {\"id\": 2, \"task\": \"b\", \"is_completed\": false}"),
        "{}",
        dry.stdout
    );
    ensure!(rows().await? == before, "the dry run wrote");

    // A limit below the match (--max-changes; its default, 10 000, is in --help): refused,
    // nothing written, naming the flag.
    let limited = run(
        &db,
        &[
            "revert",
            "--context",
            "request_id=r1",
            "--max-changes",
            "1",
            "--force",
        ],
        &[],
    )
    .await?;
    ensure!(limited.status.code() == Some(1), "{limited:#?}");
    ensure!(
        limited.stderr.contains("more than 1 changes match")
            && limited.stderr.contains("--max-changes"),
        "{}",
        limited.stderr
    );
    ensure!(rows().await? == before, "the refused revert wrote");
    let help = run(&db, &["revert", "--help"], &[]).await?.success()?;
    ensure!(help.stdout.contains("[default: 10000]"), "{}", help.stdout);

    // --force (from the environment) proceeds: both rows of request r1 are gone.
    let forced = run(
        &db,
        &["revert", "--context", "request_id=r1"],
        &[("BEMI_REVERT_FORCE", "true")],
    )
    .await?
    .success()?;
    ensure!(
        forced
            .stdout
            .starts_with("reverted 2 changes with 2 statements (2 rows written)"),
        "{}",
        forced.stdout
    );
    ensure!(rows().await?.is_empty());
    let changes = wait_for_changes(&db, 5).await?;
    let reverts: Vec<_> = changes
        .iter()
        .filter(|c| c.context["revert_of"] == json!({"context": {"request_id": "r1"}}))
        .collect();
    ensure!(
        reverts.len() == 2 && reverts.iter().all(|c| c.operation == "DELETE"),
        "{changes:#?}"
    );

    // The forced revert is one transaction: reverting it (by id, from the environment) brings
    // both rows back as they were.
    let transaction = reverts[0].transaction_id.to_string();
    let undone = run(
        &db,
        &["revert"],
        &[("BEMI_REVERT_TRANSACTION", &transaction)],
    )
    .await?
    .success()?;
    ensure!(
        undone.stdout.starts_with("reverted 2 changes"),
        "{}",
        undone.stdout
    );
    ensure!(rows().await? == before);
    // One change by id: the newest creation of row 1 (by that last revert).
    wait_for_changes(&db, 7).await?;
    let newest = json_changes(
        &db,
        &[
            "changes",
            "--json",
            "--table",
            "todo",
            "--pk",
            "1",
            "--operation",
            "create",
            "--limit",
            "1",
        ],
        &[],
    )
    .await?;
    let [create] = newest.as_slice() else {
        anyhow::bail!("{newest:#?}");
    };
    ensure!(create.context["revert_of"]["transaction_id"].to_string() == transaction);
    let one = run(&db, &["revert", "--change", &create.id.to_string()], &[])
        .await?
        .success()?;
    ensure!(
        one.stdout.starts_with("reverted 1 change with 1 statement"),
        "{}",
        one.stdout
    );
    ensure!(rows().await? == [(2, "b2".to_owned())]);
    worker.stop().await?;
    Ok(())
}
e2e_test!(revert_refuses_a_conflict_naming_the_row_and_force_proceeds);

async fn worker_partitions_by_month_and_prune_detaches_old_months(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster
        .tracked_database("cli_partitions", TODO_TABLE)
        .await?;
    let slot = format!("bemi_{}", db.name);
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let envs = [
        ("DATABASE_URL", db.url.as_str()),
        ("BEMI_SLOT", slot.as_str()),
        ("BEMI_METRICS_ADDR", metrics_addr.as_str()),
        ("BEMI_HEARTBEAT_INTERVAL", "500ms"),
    ];

    // A plain changes table is not converted: the error says how to move it aside.
    db.exec(bemi_audit::schema::SCHEMA_SQL).await?;
    let refused = bemi(&["worker", "--partition-by", "month"], &envs).await?;
    ensure!(
        refused.status.code() == Some(1)
            && refused.stderr.contains("ALTER TABLE changes SET SCHEMA"),
        "{refused:#?}"
    );
    db.exec(
        "CREATE SCHEMA IF NOT EXISTS bemi_archive; ALTER TABLE changes SET SCHEMA bemi_archive",
    )
    .await?;

    let mut worker = Background::start(
        &["worker"],
        &[envs.as_slice(), &[("BEMI_PARTITION_BY", "month")]].concat(),
    )?;
    wait_until_streaming(&metrics_addr, &mut worker).await?;
    let pool = db.bemi_pool();
    for task in ["a", "b", "c"] {
        sqlx::query("INSERT INTO todo (task) VALUES ($1)")
            .bind(task)
            .execute(&pool)
            .await?;
    }
    wait_for_changes(&db, 3).await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await?;
    let month = |offset| {
        bemi_audit::schema::partition_name(bemi_audit::schema::month_bounds(now, offset).0)
    };
    let homes: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tableoid::regclass::text FROM changes")
            .fetch_all(&db.pool)
            .await?;
    ensure!(homes == [month(0)], "captured into {homes:?}");
    let mut conn = db.pool.acquire().await?;
    let partitions: Vec<String> = bemi_audit::schema::partitions(&mut conn)
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    ensure!(
        partitions == ["changes_default".to_owned(), month(0), month(1)],
        "{partitions:?}"
    );

    // Months of an older deployment, then prune with --detach.
    bemi_audit::schema::ensure_partitions(&mut conn, now - chrono::Duration::days(150), 5).await?;
    db.exec(
        "INSERT INTO changes (primary_key, database, schema, \"table\", operation, committed_at, \
                              queued_at, transaction_id, position) \
         SELECT i::text, 'old', 'public', 'todo', 'CREATE', now() - i * interval '1 day', now(), 0, -i \
           FROM generate_series(1, 150) i",
    )
    .await?;
    drop(conn);
    let bound = now - chrono::Duration::days(60);
    let pruned = run(
        &db,
        &[
            "prune",
            "--older-than",
            "60d",
            "--detach",
            "--batch-rows",
            "7",
        ],
        &[],
    )
    .await?
    .success()?;
    ensure!(
        pruned.stdout.contains("; detached partitions "),
        "{}",
        pruned.stdout
    );
    let old_left: i64 = sqlx::query_scalar("SELECT count(*) FROM changes WHERE committed_at < $1")
        .bind(bound)
        .fetch_one(&db.pool)
        .await?;
    ensure!(old_left == 0, "{old_left} old changes left");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM changes WHERE database = $1")
        .bind(&db.name)
        .fetch_one(&db.pool)
        .await?;
    ensure!(kept == 3, "{kept} captured changes kept");
    // Detached months are tables of their own now, with their rows.
    let detached: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class \
          WHERE relname LIKE 'changes\\_y%' AND relkind = 'r' AND NOT relispartition \
          ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await?;
    ensure!(detached.len() >= 2, "{detached:?}");
    for name in &detached {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{name}\""
        )))
        .fetch_one(&db.pool)
        .await?;
        ensure!(rows > 0, "{name} is empty");
        ensure!(pruned.stdout.contains(name.as_str()), "{}", pruned.stdout);
    }
    // Neither the partitions nor the detached months are ever published (the worker would
    // capture its own writes): a publication sync adds none of them.
    bemi_worker::Worker::new(worker_config(&db))
        .prepare()
        .await?;
    let published: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'bemi' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await?;
    ensure!(published == ["todo"], "{published:?}");
    let own: i64 = sqlx::query_scalar("SELECT count(*) FROM changes WHERE \"table\" <> 'todo'")
        .fetch_one(&db.pool)
        .await?;
    ensure!(
        own == 0,
        "the worker captured {own} changes of other tables"
    );
    worker.terminate().await?;
    Ok(())
}
e2e_test!(worker_partitions_by_month_and_prune_detaches_old_months);

/// Numbers a double cannot hold — a long `numeric`, a `bigint` near its limit, a decimal
/// fraction with no binary form — come out of `bemi changes`, `history` and `at` digit for
/// digit, as the audit trail stores them.
async fn numbers_keep_every_digit_in_the_cli_output(cluster: Arc<TestCluster>) -> TestResult {
    const LONG: &str = "12345678901234567890.123456789012345678";
    const FRACTION: &str = "0.1000000000000000055511151231257827";
    const BIG: &str = "9223372036854775807";
    let db = cluster
        .tracked_database(
            "cli_digits",
            "CREATE TABLE ledger (id bigint PRIMARY KEY, amount numeric NOT NULL, big bigint)",
        )
        .await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    db.exec(&format!(
        "INSERT INTO ledger VALUES (1, {LONG}, {BIG}); \
         UPDATE ledger SET amount = {FRACTION} WHERE id = 1"
    ))
    .await?;
    wait_for_changes(&db, 2).await?;
    let at = now(&db).await?;

    let changes = run(&db, &["changes", "--json", "--table", "ledger"], &[])
        .await?
        .success()?
        .stdout;
    let history = run(&db, &["history", "ledger", "1", "--json"], &[])
        .await?
        .success()?
        .stdout;
    for (command, output) in [("changes", &changes), ("history", &history)] {
        for number in [LONG, FRACTION, BIG] {
            ensure!(
                output.contains(&format!(":{number}")),
                "bemi {command} lost digits of {number}: {output}"
            );
        }
    }
    let row = run(&db, &["at", "ledger", "1", &at, "--json"], &[])
        .await?
        .success()?
        .stdout;
    ensure!(
        row.contains(&format!(":{FRACTION}")) && row.contains(&format!(":{BIG}")),
        "bemi at lost digits: {row}"
    );
    worker.stop().await?;
    Ok(())
}
e2e_test!(numbers_keep_every_digit_in_the_cli_output);
