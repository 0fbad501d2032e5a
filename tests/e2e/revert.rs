//! `bemi_audit::Revert` against changes captured by a real worker: a whole request
//! (three writes to two tables, found by its context) is undone byte for byte, every type
//! included, and the revert is itself audited with `revert_of`; the revert of that revert (by
//! transaction) and of a single change (by id) work the same way. And the refusals: a change
//! not captured yet, a redacted value, a TRUNCATE, nothing matching.

use std::sync::Arc;

use anyhow::{Context as _, bail, ensure};
use bemi_audit::{ChangeQuery, ConflictReason, Operation, Revert, RevertError, parse_context_pair};
use bemi_core::context;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestDb, TestResult, ctx};
use serde_json::{Map, Value, json};

/// Both tables as text, every column as PostgreSQL prints it.
async fn snapshot(db: &TestDb) -> anyhow::Result<(String, String)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM account t), \
                (SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM entry t)",
    )
    .fetch_one(&db.pool)
    .await?)
}

fn filter(pair: &str) -> anyhow::Result<Map<String, Value>> {
    let (key, value) = parse_context_pair(pair)?;
    Ok(Map::from_iter([(key, value)]))
}

const TABLES: &str = r#"
CREATE TABLE account (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  owner text NOT NULL,
  balance numeric(20,6) NOT NULL,
  opened_at timestamptz NOT NULL,
  tags text[] NOT NULL,
  avatar bytea,
  meta json,
  doc jsonb,
  score float8,
  grid int[][],
  total numeric GENERATED ALWAYS AS (balance * 2) STORED
);
CREATE TABLE entry (
  id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  account_id bigint NOT NULL REFERENCES account,
  amount numeric NOT NULL,
  note text,
  at timestamp NOT NULL,
  score float8
);
INSERT INTO account (owner, balance, opened_at, tags, avatar, meta, doc, score, grid) VALUES
  ('ann', 1234567890123.123456, '2026-01-02 03:04:05.123456+00', '{a,"b c",NULL}', '\x00ff10',
   '{"v": 1, "nested": [1, 2.50]}', '{"k": [true, null], "s": "x\"y"}', 0.1, '{{1,2},{3,4}}'),
  ('bob', 5, '2026-02-03 00:00:00+00', '{}', NULL, NULL, NULL, 'NaN', NULL);
INSERT INTO entry (account_id, amount, note, at, score) VALUES
  (1, 10.000001, 'salary', '2026-01-05 12:00:00.5', '-Infinity'),
  (2, 3.14159265358979323846264338327950288, E'gift\nwith a line break', '2026-01-06 00:00:00', 1e-300);
"#;

async fn reverting_a_request_restores_both_tables_byte_for_byte(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.tracked_database("revert_request", TABLES).await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let pool = db.bemi_pool();
    let before_request = snapshot(&db).await?;

    // The request: three writes to two tables, each its own transaction.
    let request = ctx(json!({"request_id": "req-42", "user_id": 7}));
    context::scope(request, async {
        sqlx::query(
            "UPDATE account SET balance = balance - 10.5, tags = array_append(tags, 'spent'), \
                    meta = '{\"v\": 2}', avatar = '\\x01', score = 0.30000000000000004, \
                    opened_at = opened_at + interval '1 microsecond' WHERE id = 1",
        )
        .execute(&pool)
        .await?;
        sqlx::query(
            "INSERT INTO entry (account_id, amount, note, at) VALUES (1, -10.5, 'coffee', now())",
        )
        .execute(&pool)
        .await?;
        sqlx::query("DELETE FROM entry WHERE id = 2")
            .execute(&pool)
            .await?;
        Ok::<(), sqlx::Error>(())
    })
    .await?;
    let after_request = snapshot(&db).await?;
    ensure!(after_request != before_request);
    wait_for_changes(&db, 3).await?;

    // Found by its context; a dry run first.
    let revert = Revert::context(filter("request_id=req-42")?);
    let plan = revert.plan(&db.pool, &db.pool).await?;
    ensure!(
        plan.changes.len() == 3 && plan.conflicts.is_empty(),
        "{plan:#?}"
    );
    let script = plan.script();
    ensure!(
        script.find("INSERT INTO \"public\".\"entry\"")
            < script.find("DELETE FROM \"public\".\"entry\"")
            && script.find("DELETE FROM") < script.find("UPDATE \"public\".\"account\""),
        "not newest change first:\n{script}"
    );
    ensure!(script.contains("OVERRIDING SYSTEM VALUE"), "{script}");
    ensure!(snapshot(&db).await? == after_request, "the dry run wrote");

    // A policy sees the plan's tables before anything is written, and may refuse.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let refusing = revert.clone().policy({
        let seen = Arc::clone(&seen);
        move |plan| {
            seen.lock().unwrap().push(plan.tables.clone());
            Err("ledger entries are reverted by finance".into())
        }
    });
    match refusing.run(&db.pool, &db.pool).await {
        Err(RevertError::Refused { reason }) => {
            ensure!(reason.contains("finance"), "{reason}");
        }
        other => bail!("the policy did not refuse: {other:?}"),
    }
    let tables = seen.lock().unwrap().clone();
    ensure!(
        tables.len() == 1
            && tables[0].values().sum::<usize>() == 3
            && tables[0].contains_key("public.entry"),
        "{tables:?}"
    );
    ensure!(
        snapshot(&db).await? == after_request,
        "the refused revert wrote"
    );

    let report = revert.run(&db.pool, &db.pool).await?;
    ensure!(
        report.changes == 3 && report.rows_affected == 3,
        "{report:#?}"
    );
    let reverted = snapshot(&db).await?;
    ensure!(
        reverted == before_request,
        "not restored byte for byte:\n{reverted:#?}\nexpected:\n{before_request:#?}"
    );

    // The revert is audited, with revert_of, newest change first.
    wait_for_changes(&db, 6).await?;
    let revert_of = json!({"context": {"request_id": "req-42"}});
    let audited = ChangeQuery::new()
        .context("revert_of", revert_of.clone())
        .oldest_first()
        .fetch(&db.pool)
        .await?;
    let summary: Vec<(&str, Operation)> = audited
        .iter()
        .map(|c| (c.table.as_str(), c.operation))
        .collect();
    ensure!(
        summary
            == [
                ("entry", Operation::Create),
                ("entry", Operation::Delete),
                ("account", Operation::Update)
            ],
        "{audited:#?}"
    );
    ensure!(audited.iter().all(|c| {
        c.context["revert_of"] == revert_of
            && c.context["SQL"]
                .as_str()
                .is_some_and(|sql| sql.contains("jsonb_populate_record"))
    }));
    let revert_transaction = audited[0].transaction_id;
    ensure!(
        audited
            .iter()
            .all(|c| c.transaction_id == revert_transaction),
        "not one transaction"
    );

    // Reverting the revert (by transaction) brings the request's state back.
    let report = Revert::transaction(revert_transaction)
        .run(&db.pool, &db.pool)
        .await?;
    ensure!(report.changes == 3);
    ensure!(
        snapshot(&db).await? == after_request,
        "the revert of the revert differs"
    );
    wait_for_changes(&db, 9).await?;

    // And one change by id: the account's update again, alone.
    let update = ChangeQuery::new()
        .context("revert_of", json!({"transaction_id": revert_transaction}))
        .table("account")
        .fetch(&db.pool)
        .await?;
    let [update] = update.as_slice() else {
        bail!("{update:#?}");
    };
    let report = Revert::change(update.id).run(&db.pool, &db.pool).await?;
    ensure!(report.changes == 1 && report.statements.len() == 1);
    let (account, entry) = snapshot(&db).await?;
    ensure!(account == before_request.0 && entry == after_request.1);
    worker.stop().await?;
    Ok(())
}
e2e_test!(reverting_a_request_restores_both_tables_byte_for_byte);

async fn uncaptured_redacted_and_truncated_changes_are_refused_clearly(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("revert_refusals").await?;
    db.exec(
        "CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL); \
         CREATE TABLE profile (id int PRIMARY KEY, name text NOT NULL, ssn text NOT NULL); \
         CREATE TABLE scratch (id int PRIMARY KEY)",
    )
    .await?;
    db.migrate().await?;
    let worker = RunningWorker::start(worker_config(&db).redact(["profile.ssn"])).await?;
    db.exec(
        "INSERT INTO todo VALUES (1, 'Sleep'), (2, 'Eat'); \
         INSERT INTO profile VALUES (1, 'Ann', '123-45-6789'); \
         UPDATE profile SET name = 'Anne' WHERE id = 1; \
         INSERT INTO profile VALUES (2, 'Bob', '987-65-4321'); \
         DELETE FROM profile WHERE id = 2; \
         INSERT INTO scratch VALUES (1); TRUNCATE scratch",
    )
    .await?;
    wait_for_changes(&db, 8).await?;
    // From now on nothing is captured: the change below exists only in the database.
    worker.stop().await?;
    db.exec("UPDATE todo SET task = 'Eat later' WHERE id = 2")
        .await?;

    let change = |table: &'static str, pk: &'static str, operation: Operation| {
        let pool = db.pool.clone();
        async move {
            let found = ChangeQuery::new()
                .table(table)
                .primary_key(pk)
                .operation(operation)
                .fetch(&pool)
                .await?;
            found.into_iter().next().context("no such change")
        }
    };

    // Row 2 changed after its creation, but the audit trail does not know yet.
    let create_2 = change("todo", "2", Operation::Create).await?;
    match Revert::change(create_2.id).run(&db.pool, &db.pool).await {
        Err(RevertError::Conflicts(conflicts)) => {
            let [conflict] = conflicts.as_slice() else {
                bail!("{conflicts:#?}");
            };
            ensure!((conflict.table.as_str(), conflict.primary_key.as_str()) == ("todo", "2"));
            let ConflictReason::RowDiffers {
                current: Some(current),
            } = &conflict.reason
            else {
                bail!("{conflict:#?}");
            };
            ensure!(current["task"] == "Eat later", "{current}");
            ensure!(
                conflict.to_string().contains("not captured yet"),
                "{conflict}"
            );
        }
        other => bail!("expected a conflict, got {other:?}"),
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM todo")
        .fetch_one(&db.pool)
        .await?;
    ensure!(rows == 2, "the refused revert wrote");
    // Row 1 is as captured: its creation can be reverted.
    let create_1 = change("todo", "1", Operation::Create).await?;
    Revert::change(create_1.id).run(&db.pool, &db.pool).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM todo")
        .fetch_one(&db.pool)
        .await?;
    ensure!(rows == 1);

    // A DELETE whose before-image has a redacted value cannot be undone.
    let delete_2 = change("profile", "2", Operation::Delete).await?;
    ensure!(delete_2.before["ssn"] == bemi_audit::REDACTED);
    match Revert::change(delete_2.id)
        .force(true)
        .run(&db.pool, &db.pool)
        .await
    {
        Err(error @ RevertError::Unrevertable { .. }) => {
            let message = error.to_string();
            ensure!(
                message.contains("ssn") && message.contains("[REDACTED]"),
                "{message}"
            );
        }
        other => bail!("expected a refusal, got {other:?}"),
    }
    // An update that did not touch the redacted column can.
    let update_1 = change("profile", "1", Operation::Update).await?;
    Revert::change(update_1.id).run(&db.pool, &db.pool).await?;
    let person: (String, String) = sqlx::query_as("SELECT name, ssn FROM profile WHERE id = 1")
        .fetch_one(&db.pool)
        .await?;
    ensure!(
        person == ("Ann".to_owned(), "123-45-6789".to_owned()),
        "{person:?}"
    );

    // A TRUNCATE has no images.
    let truncate = ChangeQuery::new()
        .operation(Operation::Truncate)
        .fetch(&db.pool)
        .await?;
    let truncate = truncate.first().context("the TRUNCATE")?;
    match Revert::change(truncate.id).run(&db.pool, &db.pool).await {
        Err(error @ RevertError::Unrevertable { .. }) => {
            ensure!(error.to_string().contains("bemi at"), "{error}");
        }
        other => bail!("expected a refusal, got {other:?}"),
    }
    // Nothing matches.
    match Revert::context(filter("request_id=nope")?)
        .run(&db.pool, &db.pool)
        .await
    {
        Err(error @ RevertError::NothingToRevert { .. }) => {
            ensure!(error.to_string().contains("\"nope\""), "{error}");
        }
        other => bail!("expected nothing to revert, got {other:?}"),
    }
    Ok(())
}
e2e_test!(uncaptured_redacted_and_truncated_changes_are_refused_clearly);
