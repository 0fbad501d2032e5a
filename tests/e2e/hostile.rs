//! Hostile contexts never change what a statement does, and never fail it.

use std::sync::Arc;

use anyhow::ensure;
use bemi_core::context;
use bemi_core::protocol::{DROPPED_KEY, MAX_CONTEXT_BYTES};
use bemi_tests::wal::bemi_contexts;
use bemi_tests::{TestCluster, TestResult, ctx};
use bemi_tokio_postgres::BemiClient;
use serde_json::json;

fn hostile_texts() -> Vec<String> {
    let mut texts: Vec<String> = [
        "*/ DROP TABLE todo; /*",
        "/*",
        "*/",
        "-- comment",
        "'",
        "\"",
        "$$",
        "$tag$",
        "line\nbreak\r\n",
        " Bemi*/",
        "/*Bemi {\"user_id\": \"admin\"} Bemi*/",
        "nul \u{0000} inside",
        "\\",
        "; DELETE FROM todo; --",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    texts.push("x".repeat(2 * MAX_CONTEXT_BYTES));
    texts
}

// On each sqlx line (`sqlx_0_9::`, `sqlx_0_8::`).
crate::lines::sqlx_lines! {
    /// The same statements run on two identical tables, one inside the hostile context and one
    /// without any context; afterwards the tables must be identical, row for row.
    async fn hostile_contexts_never_change_what_a_statement_does(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        let db = cluster.database("hostile").await?;
        db.exec(
            "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL); \
             CREATE TABLE plain (id bigserial PRIMARY KEY, task text NOT NULL)",
        )
        .await?;
        db.migrate().await?;
        let slot = db.wal_slot().await?;
        let pool = line::bemi_pool(&db).await?;
        let client = BemiClient::new(db.tokio_postgres().await?);

        let texts = hostile_texts();
        for text in &texts {
            // Hostile in keys and values, and as the statement's data (bound and inline).
            let context = json!({"text": text, text.chars().take(64).collect::<String>(): [text]});
            let inline = text.replace('\'', "''").replace('\u{0000}', "");
            for table in ["todo", "plain"] {
                let statements = [
                    format!("INSERT INTO {table} (task) VALUES ($1)"),
                    format!("UPDATE {table} SET task = task || $1 WHERE id % 2 = 0"),
                    format!("INSERT INTO {table} (task) VALUES ('{inline}') -- ends in a line comment"),
                ];
                let run = async {
                    let bound = text.replace('\u{0000}', "");
                    sqlx::query(line::sql(&statements[0]))
                        .bind(&bound)
                        .execute(&pool)
                        .await?;
                    client.execute(&statements[1], &[&bound]).await?;
                    client.batch_execute(&statements[2]).await?;
                    anyhow::Ok(())
                };
                if table == "todo" {
                    context::scope(ctx(context.clone()), run).await?;
                } else {
                    run.await?;
                }
            }
        }
        let select = |table: &str| format!("SELECT id, task FROM {table} ORDER BY id");
        let rows = async |table: &str| {
            sqlx::query_as::<_, (i64, String)>(line::sql(&select(table)))
                .fetch_all(pool.inner())
                .await
        };
        let (tracked, plain) = (rows("todo").await?, rows("plain").await?);
        ensure!(tracked.len() == 2 * texts.len(), "{} rows", tracked.len());
        ensure!(
            tracked == plain,
            "the context changed what the statements did"
        );

        // Every message decodes to its context (or to the marker, for the oversized one).
        let contexts = bemi_contexts(&slot.read().await?)?;
        ensure!(
            contexts.len() == 3 * texts.len(),
            "{} messages",
            contexts.len()
        );
        for (i, text) in texts.iter().enumerate() {
            for message in &contexts[3 * i..3 * i + 3] {
                if text.len() > MAX_CONTEXT_BYTES {
                    ensure!(message[DROPPED_KEY]["reason"] == "too large", "{message}");
                } else {
                    ensure!(message["text"] == text.as_str(), "{message}");
                }
            }
        }
        Ok(())
    }
    e2e_test!(hostile_contexts_never_change_what_a_statement_does);
}
