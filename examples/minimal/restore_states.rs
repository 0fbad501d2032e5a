//! Test states with `bemi_audit::Restore`: a project tracker's two tables (tasks reference
//! projects) go through three states; the program puts them back to state 1, forward to state
//! 3 and back to state 2, printing the tables each time. Run it with
//! `cargo run -p bemi-examples --example restore-states` (`DATABASE_URL`, or an embedded
//! PostgreSQL when it is unset). The same from a shell: `bemi restore project task --to TIME`.

use std::time::Duration;

use bemi_audit::Restore;
use bemi_core::context;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS project (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
CREATE TABLE IF NOT EXISTS task (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  project_id bigint NOT NULL REFERENCES project,
  title text NOT NULL,
  done boolean NOT NULL DEFAULT false
);";

/// The states, each the SQL that leads to it.
const STATES: [&str; 3] = [
    "INSERT INTO project (name) VALUES ('website');
     INSERT INTO task (project_id, title) VALUES (1, 'draft'), (1, 'review');",
    "UPDATE task SET done = true WHERE title = 'draft';
     INSERT INTO project (name) VALUES ('mobile app');
     INSERT INTO task (project_id, title) VALUES (2, 'prototype');",
    "DELETE FROM task WHERE project_id = 2; DELETE FROM project WHERE id = 2;
     UPDATE project SET name = 'website v2' WHERE id = 1;",
];

/// Both tables, one line per row.
async fn show(pool: &PgPool, label: &str) -> Result<String, sqlx::Error> {
    let text: String = sqlx::query_scalar(
        "SELECT coalesce((SELECT string_agg(p::text, ' ' ORDER BY id) FROM project p), '') \
         || ' | ' || coalesce((SELECT string_agg(t::text, ' ' ORDER BY id) FROM task t), '')",
    )
    .fetch_one(pool)
    .await?;
    println!("{label:<22} {text}");
    Ok(text)
}

/// Waits until the worker has stored every change made so far (the restore reads the trail).
async fn caught_up(pool: &PgPool, at_least: i64) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stored: Option<i64> = sqlx::query_scalar(
            "SELECT CASE WHEN to_regclass('changes') IS NULL THEN NULL ELSE \
             (SELECT count(*) FROM changes) END",
        )
        .fetch_one(pool)
        .await?;
        if stored.unwrap_or(0) >= at_least {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the worker did not store the changes within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stored(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM changes")
        .fetch_one(pool)
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database = bemi_dev::DevDatabase::from_env()?;
    let url = database.url();
    let pool = PgPool::connect(&url).await?;
    sqlx::raw_sql(TABLES).execute(&pool).await?;
    bemi_sqlx::migration::migrate(&pool, Default::default()).await?;
    let slot = std::env::var("BEMI_SLOT").unwrap_or_else(|_| "bemi_restore_example".to_owned());
    let mut worker =
        bemi_worker::Worker::new(bemi_worker::WorkerConfig::new(&url).slot(slot)).spawn();
    worker.wait_until_streaming(Duration::from_secs(60)).await?;

    // The states, and the instant after each.
    let mut instants: Vec<DateTime<Utc>> = Vec::new();
    let mut expected = Vec::new();
    for (i, sql) in STATES.into_iter().enumerate() {
        sqlx::raw_sql(sql).execute(&pool).await?;
        instants.push(
            sqlx::query_scalar("SELECT clock_timestamp()")
                .fetch_one(&pool)
                .await?,
        );
        expected.push(show(&pool, &format!("state {}", i + 1)).await?);
    }
    caught_up(&pool, 9).await?;

    // Back to 1, forward to 3, back to 2: each restore's writes are captured too (with the
    // context {"restore_to": …, "user": "example"}), so the next one starts from the trail.
    for state in [0, 2, 1] {
        let restore = Restore::new(["project", "task"], instants[state]);
        print!("{}", restore.plan(&pool, &pool).await?.script());
        let before = stored(&pool).await?;
        let report = context::scope(
            context::Context::from_iter([("user".to_owned(), json!("example"))]),
            restore.run(&pool, &pool),
        )
        .await?;
        let now = show(&pool, &format!("restored to state {}", state + 1)).await?;
        if now != expected[state] {
            return Err(format!("not state {}: {now}", state + 1).into());
        }
        caught_up(&pool, before + i64::try_from(report.rows_affected)?).await?;
    }
    worker.shutdown().await?;
    Ok(())
}
