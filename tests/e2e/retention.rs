//! Retention: `Pruner` removes exactly the changes older than its bound, in batches that leave
//! the table usable (inserts and reads go on, each within a 1 s lock timeout, while it runs);
//! on a table partitioned by month, months are created ahead of time (rows waiting in the
//! default partition move into their month) and old months are dropped whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bemi_audit::ChangeQuery;
use bemi_audit::retention::{PruneProgress, Pruner};
use bemi_audit::schema::{self, Layout};
use bemi_tests::{TestCluster, TestResult, wait_until};
use chrono::{DateTime, Utc};

/// Changes spread over the last 200 days (`$1` rows), in the table `todo`.
const FIXTURE: &str = "INSERT INTO changes (primary_key, after, context, database, schema, \"table\", \
       operation, committed_at, queued_at, transaction_id, position) \
     SELECT i::text, jsonb_build_object('id', i), '{}', 'app', 'public', 'todo', 'CREATE', \
            now() - (i % 200) * interval '1 day' - (i % 997) * interval '1 second', now(), i, i \
       FROM generate_series(1, $1) i";

/// Rows before the bound, and a digest of the ids of those after it.
async fn census(pool: &sqlx::PgPool, bound: DateTime<Utc>) -> anyhow::Result<(i64, i64, String)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE committed_at < $1), \
                count(*) FILTER (WHERE committed_at >= $1), \
                COALESCE(md5(string_agg(id::text, ',' ORDER BY id) FILTER (WHERE committed_at >= $1)), '') \
           FROM changes WHERE database = 'app'",
    )
    .bind(bound)
    .fetch_one(pool)
    .await?)
}

async fn prune_removes_only_older_changes_while_the_table_stays_usable(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("prune").await?;
    db.exec(schema::SCHEMA_SQL).await?;
    sqlx::query(FIXTURE).bind(120_000).execute(&db.pool).await?;
    let bound: DateTime<Utc> = sqlx::query_scalar("SELECT now() - interval '90 days'")
        .fetch_one(&db.pool)
        .await?;
    let (old, kept, digest) = census(&db.pool, bound).await?;
    ensure!(old > 50_000 && kept > 50_000, "{old} old, {kept} kept");

    // Inserts and reads on a connection of their own, until the prune is done.
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (pool, done, count) = (db.pool.clone(), Arc::clone(&done), Arc::clone(&count));
        async move {
            let mut conn = pool.acquire().await?;
            sqlx::raw_sql("SET lock_timeout = '1s'; SET statement_timeout = '5s'")
                .execute(&mut *conn)
                .await?;
            let mut ops: Vec<(Instant, Instant)> = Vec::new();
            for n in 0..200_000_i64 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let start = Instant::now();
                sqlx::query(
                    "INSERT INTO changes (primary_key, database, schema, \"table\", operation, \
                            committed_at, queued_at, transaction_id, position) \
                     VALUES ($1, 'concurrent', 'public', 'todo', 'CREATE', now(), now(), 0, $2)",
                )
                .bind(n.to_string())
                .bind(1_000_000 + n)
                .execute(&mut *conn)
                .await?;
                let newest = ChangeQuery::new()
                    .table("todo")
                    .limit(10)
                    .fetch(&mut *conn)
                    .await?;
                anyhow::ensure!(newest.len() == 10, "the read saw {} rows", newest.len());
                ops.push((start, Instant::now()));
                count.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::Ok(ops)
        }
    });
    wait_until(
        "the concurrent load to run",
        Duration::from_secs(30),
        || async { Ok((count.load(Ordering::SeqCst) >= 3).then_some(())) },
    )
    .await?;

    let mut batches: Vec<Instant> = Vec::new();
    let report = Pruner::new(bound)
        .batch_rows(500)
        .run(&db.pool, |progress| {
            if let PruneProgress::Batch { .. } = progress {
                batches.push(Instant::now());
            }
        })
        .await;
    done.store(true, Ordering::SeqCst);
    let ops = load.await.context("the load task")??;
    let report = report?;

    ensure!(report.deleted_rows == old as u64, "{report:?}, {old} old");
    ensure!(report.batches == (old as u64).div_ceil(500), "{report:?}");
    ensure!(report.dropped.is_empty() && !report.cancelled);
    let (old_left, kept_left, digest_left) = census(&db.pool, bound).await?;
    ensure!(old_left == 0, "{old_left} old rows left");
    ensure!(
        kept_left == kept && digest_left == digest,
        "rows after the bound changed"
    );
    let concurrent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM changes WHERE database = 'concurrent'")
            .fetch_one(&db.pool)
            .await?;
    ensure!(
        concurrent as usize == ops.len(),
        "{concurrent} of {} inserts kept",
        ops.len()
    );

    // Inserts and reads ran, and finished, while the prune was between its first and last
    // batch — none waited for it.
    let (first, last) = (batches[0], batches[batches.len() - 1]);
    let during = ops
        .iter()
        .filter(|(start, end)| *start > first && *end < last)
        .count();
    ensure!(
        during > 0,
        "no insert and read completed during the prune ({} ops)",
        ops.len()
    );
    let slowest = ops.iter().map(|(s, e)| *e - *s).max().unwrap_or_default();
    ensure!(
        slowest < Duration::from_secs(1),
        "an insert and read took {slowest:?}"
    );
    Ok(())
}
e2e_test!(prune_removes_only_older_changes_while_the_table_stays_usable);

async fn monthly_partitions_are_made_ahead_and_old_months_dropped_whole(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("partitions").await?;
    let mut conn = db.pool.acquire().await?;
    ensure!(schema::create(&mut conn, Layout::Monthly).await? == Layout::Monthly);
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await?;
    let names = |partitions: Vec<schema::Partition>| -> Vec<String> {
        partitions.into_iter().map(|p| p.name).collect()
    };
    let month = |offset| schema::partition_name(schema::month_bounds(now, offset).0);
    let created = names(schema::partitions(&mut conn).await?);
    ensure!(
        created == ["changes_default".to_owned(), month(0), month(1)],
        "{created:?}"
    );
    // Again, and asking for a plain table: harmless, still partitioned.
    ensure!(schema::create(&mut conn, Layout::Plain).await? == Layout::Monthly);
    ensure!(names(schema::partitions(&mut conn).await?) == created);

    // 200 days of changes, and one from 2001: all but the last two months land in the default
    // partition, until their months are created.
    sqlx::query(FIXTURE)
        .bind(20_000)
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(
        "INSERT INTO changes (database, schema, \"table\", operation, committed_at, queued_at, \
                              transaction_id, position) \
         VALUES ('app', 'public', 'todo', 'TRUNCATE', '2001-01-01', '2001-01-01', 0, 0)",
    )
    .execute(&mut *conn)
    .await?;
    let in_default: i64 = sqlx::query_scalar("SELECT count(*) FROM changes_default")
        .fetch_one(&mut *conn)
        .await?;
    ensure!(in_default > 10_000, "{in_default} in the default partition");
    let oldest = now - chrono::Duration::days(200);
    let made = schema::ensure_partitions(&mut conn, oldest, 7).await?;
    ensure!(made.len() >= 6, "{made:?}");
    let misplaced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM changes \
          WHERE tableoid::regclass::text <> to_char(committed_at AT TIME ZONE 'UTC', '\"changes_y\"YYYY\"m\"MM') \
            AND committed_at > '2002-01-01'",
    )
    .fetch_one(&mut *conn)
    .await?;
    ensure!(
        misplaced == 0,
        "{misplaced} rows outside their month's partition"
    );
    let in_default: i64 = sqlx::query_scalar("SELECT count(*) FROM changes_default")
        .fetch_one(&mut *conn)
        .await?;
    ensure!(in_default == 1, "{in_default} in the default partition");

    // Prune: the months wholly before the bound are dropped, the rest is deleted in batches.
    let bound = now - chrono::Duration::days(60);
    let (old, kept, digest) = census(&db.pool, bound).await?;
    let whole_months: Vec<String> = schema::partitions(&mut conn)
        .await?
        .into_iter()
        .filter(|p| p.to.is_some_and(|to| to <= bound))
        .map(|p| p.name)
        .collect();
    ensure!(whole_months.len() >= 4, "{whole_months:?}");
    let rows_in_whole_months: i64 =
        sqlx::query_scalar("SELECT count(*) FROM changes WHERE tableoid::regclass::text = ANY($1)")
            .bind(&whole_months)
            .fetch_one(&mut *conn)
            .await?;
    drop(conn);
    let report = Pruner::new(bound)
        .batch_rows(700)
        .run(&db.pool, |_| {})
        .await?;
    ensure!(report.dropped == whole_months, "{report:?}");
    // The rest of the old rows: in the month that straddles the bound, and 2001's.
    ensure!(
        report.deleted_rows as i64 == old - rows_in_whole_months,
        "{report:?}: {old} old, {rows_in_whole_months} in whole months"
    );
    let (old_left, kept_left, digest_left) = census(&db.pool, bound).await?;
    ensure!(old_left == 0 && kept_left == kept && digest_left == digest);
    let gone: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_class WHERE relname = ANY($1)")
        .bind(&whole_months)
        .fetch_one(&db.pool)
        .await?;
    ensure!(gone == 0, "dropped partitions still exist");
    Ok(())
}
e2e_test!(monthly_partitions_are_made_ahead_and_old_months_dropped_whole);
