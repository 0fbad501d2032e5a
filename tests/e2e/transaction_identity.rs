//! A change records its transaction exactly: the full 64-bit transaction id (the 32-bit id of
//! the replication stream repeats after a wraparound) and the source cluster (two clusters whose
//! databases share a name store into one destination). Reverts and the transaction list select
//! exactly one transaction.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_audit::{ChangeQuery, Revert, RevertError};
use bemi_dev::{EphemeralPostgres, LaunchOptions};
use bemi_tests::worker::{RunningWorker, stored_count, worker_config};
use bemi_tests::{TestCluster, TestDb, TestResult, private_cluster, private_database, wait_until};

/// Inserts a row in one transaction and returns the transaction's full id.
async fn insert_in_a_transaction(db: &TestDb, task: &str) -> anyhow::Result<i64> {
    let mut tx = db.pool.begin().await?;
    sqlx::query("INSERT INTO todo (task) VALUES ($1)")
        .bind(task)
        .execute(&mut *tx)
        .await?;
    let full: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(full)
}

/// Waits until `destination` holds `count` changes.
async fn wait_for_count(destination: &TestDb, count: i64) -> TestResult {
    wait_until(
        &format!("{count} changes in the destination"),
        Duration::from_secs(60),
        || async { Ok((stored_count(destination).await? >= Some(count)).then_some(())) },
    )
    .await
}

/// A private cluster whose transaction ids have wrapped around `epoch` times, with a `todo`
/// database named `name` and tracking installed.
async fn cluster_in_epoch(epoch: u32, name: &str) -> anyhow::Result<(EphemeralPostgres, TestDb)> {
    let mut pg = private_cluster(LaunchOptions::default()).await?;
    if epoch > 0 {
        pg = tokio::task::spawn_blocking(move || pg.set_transaction_epoch(epoch).map(|()| pg))
            .await??;
    }
    let db = private_database(&pg, name).await?;
    db.exec(bemi_tests::TODO_TABLE).await?;
    db.migrate().await?;
    Ok((pg, db))
}

async fn a_change_records_the_full_transaction_id_after_a_wraparound(
    _cluster: Arc<TestCluster>,
) -> TestResult {
    let (_pg, db) = cluster_in_epoch(3, "wrapped").await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let first = insert_in_a_transaction(&db, "first").await?;
    let second = insert_in_a_transaction(&db, "second").await?;
    ensure!(
        first >= 3 << 32,
        "the cluster's ids are not past the wraparound: {first}"
    );
    wait_for_count(&db, 2).await?;
    worker.stop().await?;

    let stored: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT after->>'task', transaction_id, source FROM changes ORDER BY position",
    )
    .fetch_all(&db.pool)
    .await?;
    let system_id: String =
        sqlx::query_scalar("SELECT system_identifier::text FROM pg_control_system()")
            .fetch_one(&db.pool)
            .await?;
    ensure!(
        stored
            == vec![
                ("first".to_owned(), first, Some(system_id.clone())),
                ("second".to_owned(), second, Some(system_id)),
            ],
        "stored {stored:?}, the transactions were {first} and {second}"
    );

    // Revert by the full id: exactly that transaction's change.
    let plan = Revert::transaction(second).plan(&db.pool, &db.pool).await?;
    ensure!(
        plan.changes.len() == 1,
        "the plan undoes {:?}",
        plan.changes
    );
    // The 32-bit id alone no longer names it.
    let low = second & 0xFFFF_FFFF;
    match Revert::transaction(low).plan(&db.pool, &db.pool).await {
        Err(RevertError::NothingToRevert { .. }) => Ok(()),
        other => anyhow::bail!("the 32-bit id {low} matched: {other:?}"),
    }
}
e2e_test!(a_change_records_the_full_transaction_id_after_a_wraparound);

async fn transaction_ids_that_wrapped_select_only_their_own_changes(
    cluster: Arc<TestCluster>,
) -> TestResult {
    // Fabricated: two transactions 2^32 apart, whose 32-bit ids are equal, as a table that
    // kept changes across a wraparound holds them.
    let db = bemi_tests::todo_db(&cluster, "wrapped_ids").await?;
    bemi_audit::schema::prepare(&mut *db.pool.acquire().await?).await?;
    let database = db.name.clone();
    let cluster: String =
        sqlx::query_scalar("SELECT system_identifier::text FROM pg_control_system()")
            .fetch_one(&db.pool)
            .await?;
    let early: i64 = 768;
    let late: i64 = (1 << 32) + 768;
    for (id, task, transaction) in [(1, "early", early), (2, "late", late)] {
        db.exec(&format!(
            "INSERT INTO todo (id, task) VALUES ({id}, '{task}x')"
        ))
        .await?;
        sqlx::query(
            "INSERT INTO changes (primary_key, before, after, context, database, schema, \
             \"table\", operation, committed_at, queued_at, transaction_id, position, source) \
             VALUES ($1, '{}', jsonb_build_object('id', $2::int, 'task', $3::text, \
             'is_completed', false), '{}', $4, 'public', 'todo', 'CREATE', now(), now(), $5, \
             $2::int, $6)",
        )
        .bind(id.to_string())
        .bind(id)
        .bind(task)
        .bind(&database)
        .bind(transaction)
        .bind(&cluster)
        .execute(&db.pool)
        .await?;
    }
    for (transaction, task) in [(early, "early"), (late, "late")] {
        let listed = ChangeQuery::new()
            .transaction_id(transaction)
            .source(Some(cluster.as_str()))
            .fetch(&db.pool)
            .await?;
        let tasks: Vec<&str> = listed
            .iter()
            .filter_map(|c| c.after["task"].as_str())
            .collect();
        ensure!(tasks == [task], "transaction {transaction} lists {tasks:?}");
        let plan = Revert::transaction(transaction)
            .plan(&db.pool, &db.pool)
            .await?;
        ensure!(plan.changes.len() == 1 && plan.changes[0] == listed[0].id);
    }
    // Changes stored before full ids were (no source) with the same 32-bit id in two
    // transactions: a revert refuses to mix them and says how to choose.
    sqlx::query(
        "UPDATE changes SET source = '', transaction_id = 768, \
                 committed_at = committed_at - make_interval(days => 7 * (primary_key::int))",
    )
    .execute(&db.pool)
    .await?;
    match Revert::transaction(768).plan(&db.pool, &db.pool).await {
        Err(RevertError::AmbiguousTransaction { commits: 2, .. }) => Ok(()),
        other => anyhow::bail!("a revert of a wrapped 32-bit id went ahead: {other:?}"),
    }
}
e2e_test!(transaction_ids_that_wrapped_select_only_their_own_changes);

async fn two_clusters_whose_databases_share_a_name_keep_their_transactions_apart(
    _cluster: Arc<TestCluster>,
) -> TestResult {
    let (_pg_a, a) = cluster_in_epoch(0, "shop").await?;
    let (_pg_b, b) = cluster_in_epoch(0, "shop").await?;
    let pg_audit = private_cluster(LaunchOptions::default()).await?;
    let destination = private_database(&pg_audit, "shared_audit").await?;
    let mut workers = Vec::new();
    for db in [&a, &b] {
        let mut config = worker_config(db);
        config.destination_url = Some(destination.url.clone());
        workers.push(RunningWorker::start(config).await?);
    }

    // Both clusters give a transaction the same id (fresh clusters are close: the one behind
    // uses up ids until they meet). Nothing else assigns ids on the sources meanwhile, but
    // try a few times in case.
    let mut stored = 0;
    let mut shared_id = None;
    for attempt in 0..5 {
        line_up_next_ids(&a, &b).await?;
        let in_a = insert_in_a_transaction(&a, &format!("in a {attempt}")).await?;
        let in_b = insert_in_a_transaction(&b, &format!("in b {attempt}")).await?;
        stored += 2;
        if in_a == in_b {
            shared_id = Some((in_a, attempt));
            break;
        }
    }
    let (in_a, attempt) = shared_id.context("the clusters' transaction ids never met")?;
    wait_for_count(&destination, stored).await?;
    for worker in workers {
        worker.stop().await?;
    }

    let source_of = |task: String| {
        let pool = destination.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT source FROM changes WHERE after->>'task' = $1",
            )
            .bind(&task)
            .fetch_one(&pool)
            .await?
            .with_context(|| format!("the change of {task:?} has no source"))
        }
    };
    let source_a = source_of(format!("in a {attempt}")).await?;
    let source_b = source_of(format!("in b {attempt}")).await?;
    ensure!(source_a != source_b, "both clusters stored as {source_a}");

    // The transaction list of a change: its own transaction only.
    let listed = ChangeQuery::new()
        .transaction_id(in_a)
        .source(Some(source_a.clone()))
        .database("shop")
        .fetch(&destination.pool)
        .await?;
    ensure!(
        listed.len() == 1 && listed[0].after["task"] == format!("in a {attempt}"),
        "{listed:?}"
    );

    // A revert in cluster a by the id alone takes only a's change: the revert is scoped to
    // the cluster of its source database, not just to the database's name.
    let plan = Revert::transaction(in_a)
        .plan(&destination.pool, &a.pool)
        .await?;
    ensure!(
        plan.changes.len() == 1 && plan.conflicts.is_empty(),
        "{plan:?}"
    );
    let report = Revert::transaction(in_a)
        .source(source_a)
        .run(&destination.pool, &a.pool)
        .await?;
    ensure!(report.changes == 1, "{report:?}");
    let left_a: i64 = sqlx::query_scalar("SELECT count(*) FROM todo")
        .fetch_one(&a.pool)
        .await?;
    let left_b: i64 = sqlx::query_scalar("SELECT count(*) FROM todo")
        .fetch_one(&b.pool)
        .await?;
    let written = i64::from(attempt) + 1;
    ensure!(
        (left_a, left_b) == (written - 1, written),
        "rows left: a {left_a}, b {left_b} of {written} each"
    );
    Ok(())
}
e2e_test!(two_clusters_whose_databases_share_a_name_keep_their_transactions_apart);

/// Uses up transaction ids on the cluster that is behind until both give the same next id.
async fn line_up_next_ids(a: &TestDb, b: &TestDb) -> TestResult {
    async fn next(db: &TestDb) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
                .fetch_one(&db.pool)
                .await?,
        )
    }
    for _ in 0..1_000 {
        let (next_a, next_b) = (next(a).await?, next(b).await?);
        if next_a == next_b {
            return Ok(());
        }
        let behind = if next_a < next_b { a } else { b };
        for _ in 0..(next_a - next_b).abs().min(1_000) {
            sqlx::query("SELECT pg_current_xact_id()")
                .execute(&behind.pool)
                .await?;
        }
    }
    anyhow::bail!("the clusters' next transaction ids did not meet")
}

async fn a_changes_table_of_an_older_worker_is_migrated_in_place(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("older_changes").await?;
    // The table as the previous release made it, with one change in it.
    db.exec(
        "CREATE TABLE changes (id uuid NOT NULL DEFAULT gen_random_uuid(), primary_key text, \
         before jsonb NOT NULL DEFAULT '{}', after jsonb NOT NULL DEFAULT '{}', \
         context jsonb NOT NULL DEFAULT '{}', database text NOT NULL, schema text NOT NULL, \
         \"table\" text NOT NULL, operation text NOT NULL, committed_at timestamptz NOT NULL, \
         queued_at timestamptz NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), \
         transaction_id bigint NOT NULL, position bigint NOT NULL, \
         CONSTRAINT changes_pkey PRIMARY KEY (id), \
         CONSTRAINT changes_position_key UNIQUE (position, \"table\", schema, database, operation)); \
         INSERT INTO changes (primary_key, database, schema, \"table\", operation, committed_at, \
         queued_at, transaction_id, position) \
         VALUES ('1', 'app', 'public', 'todo', 'CREATE', now(), now(), 768, 100)",
    )
    .await?;
    bemi_audit::schema::prepare(&mut *db.pool.acquire().await?).await?;
    let old = ChangeQuery::new().fetch(&db.pool).await?;
    ensure!(old.len() == 1 && old[0].source.is_none(), "{old:?}");
    // The same position, table and database from another cluster is a change of its own.
    let now = chrono::Utc::now();
    let mut batch = bemi_audit::store::ChangeBatch::default();
    batch.push(bemi_audit::store::NewChange {
        primary_key: Some("1"),
        before: "{}",
        after: "{}",
        context: "{}",
        schema: "public",
        table: "todo",
        operation: bemi_audit::Operation::Create,
        committed_at: now,
        queued_at: now,
        transaction_id: 768,
        position: 100,
    });
    let mut conn = db.pool.acquire().await?;
    ensure!(batch.insert_from(Some("7"), "app", &mut conn).await? == 1);
    ensure!(
        batch.insert_from(Some("7"), "app", &mut conn).await? == 0,
        "a re-delivery was kept"
    );
    ensure!(batch.insert_from(Some("8"), "app", &mut conn).await? == 1);
    ensure!(
        batch.insert("app", &mut conn).await? == 0,
        "the unknown source's copy was kept twice"
    );
    Ok(())
}
e2e_test!(a_changes_table_of_an_older_worker_is_migrated_in_place);
