//! The sqlx and tokio-postgres adapters put exactly one `_bemi` message, with the request's
//! context, into the WAL before the rows of each write.

use std::sync::Arc;

use anyhow::ensure;
use bemi_core::carrier::Carrier;
use bemi_core::context;
use bemi_tests::wal::{bemi_contexts, changes};
use bemi_tests::{TestCluster, TestResult, WalEntry, ctx, todo_db};
use bemi_tokio_postgres::BemiClient;
use serde_json::{Value, json};

/// `expected` plus the `SQL` key the library adds.
fn with_sql(expected: &Value, sql: &str) -> Value {
    let mut value = expected.clone();
    value["SQL"] = json!(sql);
    value
}

/// Asserts the WAL holds, per transaction, exactly: BEGIN, one `_bemi` message equal to the
/// expected context, `rows` row changes of `operation`, COMMIT.
fn assert_message_then_rows(
    entries: &[WalEntry],
    expected: &[(Value, usize, &str)],
) -> anyhow::Result<()> {
    let mut rest = entries;
    for (context, rows, operation) in expected {
        ensure!(
            rest.first() == Some(&WalEntry::Begin),
            "expected BEGIN in {rest:#?}"
        );
        let message = match rest.get(1) {
            Some(WalEntry::Message {
                transactional: true,
                prefix,
                content,
            }) if prefix == "_bemi" => serde_json::from_str::<Value>(content)?,
            other => {
                anyhow::bail!("expected a transactional _bemi message, got {other:?} in {rest:#?}")
            }
        };
        ensure!(
            &message == context,
            "message {message} != expected {context}"
        );
        for i in 0..*rows {
            match rest.get(2 + i) {
                Some(WalEntry::Change { operation: op, .. }) if op == operation => {}
                other => anyhow::bail!("expected row {i} as {operation}, got {other:?}"),
            }
        }
        ensure!(
            rest.get(2 + rows) == Some(&WalEntry::Commit),
            "expected COMMIT after the rows"
        );
        rest = &rest[3 + rows..];
    }
    ensure!(rest.is_empty(), "unexpected WAL entries: {rest:#?}");
    Ok(())
}

// The sqlx adapter's tests, on each sqlx line (`sqlx_0_9::`, `sqlx_0_8::`).
crate::lines::sqlx_lines! {
    use self::sqlx::Executor as _;

    async fn sqlx_pool_write_emits_one_message_before_the_row(cluster: Arc<TestCluster>) -> TestResult {
        let db = todo_db(&cluster, "sqlx_pool").await?;
        let slot = db.wal_slot().await?;
        let pool = line::bemi_pool(&db).await?;
        let request = json!({"user_id": 187234, "endpoint": "/todo", "method": "POST"});
        let sql = "INSERT INTO todo (task) VALUES ($1)";
        context::scope(ctx(request.clone()), async {
            sqlx::query(sql).bind("Sleep").execute(&pool).await
        })
        .await?;
        assert_message_then_rows(
            &slot.read().await?,
            &[(with_sql(&request, sql), 1, "INSERT")],
        )?;
        let task: String = sqlx::query_scalar("SELECT task FROM todo")
            .fetch_one(pool.inner())
            .await?;
        ensure!(task == "Sleep");
        Ok(())
    }
    e2e_test!(sqlx_pool_write_emits_one_message_before_the_row);

    async fn sqlx_transaction_and_connection_writes_carry_the_context(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        let db = todo_db(&cluster, "sqlx_tx").await?;
        let pool = line::bemi_pool(&db).await?;
        sqlx::query("INSERT INTO todo (task) VALUES ('Eat')")
            .execute(pool.inner())
            .await?;
        let slot = db.wal_slot().await?;
        let request = json!({"user_id": 1, "endpoint": "/todo/1/complete", "method": "PUT"});
        let (update, delete) = (
            "UPDATE todo SET is_completed = true WHERE task = $1",
            "DELETE FROM todo WHERE task = $1",
        );
        context::scope(ctx(request.clone()), async {
            let mut tx = pool.begin().await?;
            sqlx::query(update).bind("Eat").execute(&mut tx).await?;
            tx.commit().await?;
            let mut conn = pool.acquire().await?;
            sqlx::query(delete).bind("Eat").execute(&mut conn).await?;
            anyhow::Ok(())
        })
        .await?;
        assert_message_then_rows(
            &slot.read().await?,
            &[
                (with_sql(&request, update), 1, "UPDATE"),
                (with_sql(&request, delete), 1, "DELETE"),
            ],
        )
    }
    e2e_test!(sqlx_transaction_and_connection_writes_carry_the_context);

    async fn large_update_and_truncate_emit_one_message_each(cluster: Arc<TestCluster>) -> TestResult {
        let db = todo_db(&cluster, "large_update").await?;
        db.exec("INSERT INTO todo (task) SELECT 'task ' || n FROM generate_series(1, 20000) n")
            .await?;
        let slot = db.wal_slot().await?;
        let pool = line::bemi_pool(&db).await?;
        let request = json!({"job": "complete-all"});
        let (update, truncate) = ("UPDATE todo SET is_completed = true", "TRUNCATE todo");
        context::scope(ctx(request.clone()), async {
            pool.execute(update).await?;
            pool.execute(truncate).await
        })
        .await?;
        assert_message_then_rows(
            &slot.read().await?,
            &[
                (with_sql(&request, update), 20_000, "UPDATE"),
                (with_sql(&request, truncate), 1, "TRUNCATE"),
            ],
        )
    }
    e2e_test!(large_update_and_truncate_emit_one_message_each);

    async fn transaction_with_contexts_a_b_none_emits_a_b_reset(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        let db = todo_db(&cluster, "a_b_none").await?;
        let slot = db.wal_slot().await?;
        let pool = line::bemi_pool(&db).await?;
        let insert = "INSERT INTO todo (task) VALUES ($1)";
        let (a, b) = (json!({"ctx": "A"}), json!({"ctx": "B"}));
        let mut tx = pool.begin().await?;
        context::scope(
            ctx(a.clone()),
            sqlx::query(insert).bind("a").execute(&mut tx),
        )
        .await?;
        context::scope(
            ctx(b.clone()),
            sqlx::query(insert).bind("b").execute(&mut tx),
        )
        .await?;
        sqlx::query(insert).bind("none").execute(&mut tx).await?;
        tx.commit().await?;

        let entries = slot.read().await?;
        let contexts = bemi_contexts(&entries)?;
        ensure!(
            contexts == [with_sql(&a, insert), with_sql(&b, insert), json!({})],
            "messages: {contexts:?}"
        );
        // Each message precedes the row it belongs to.
        let order: Vec<&str> = entries
            .iter()
            .filter_map(|e| match e {
                WalEntry::Message { .. } => Some("message"),
                WalEntry::Change { .. } => Some("row"),
                _ => None,
            })
            .collect();
        ensure!(
            order == ["message", "row", "message", "row", "message", "row"],
            "{order:?}"
        );
        Ok(())
    }
    e2e_test!(transaction_with_contexts_a_b_none_emits_a_b_reset);

    async fn writes_without_context_emit_no_message(cluster: Arc<TestCluster>) -> TestResult {
        let db = todo_db(&cluster, "no_context").await?;
        let slot = db.wal_slot().await?;
        let pool = line::bemi_pool(&db).await?;
        sqlx::query("INSERT INTO todo (task) VALUES ($1)")
            .bind("adapter, no scope")
            .execute(&pool)
            .await?;
        BemiClient::new(db.tokio_postgres().await?)
            .execute(
                "INSERT INTO todo (task) VALUES ($1)",
                &[&"tokio-postgres, no scope"],
            )
            .await?;
        db.exec("INSERT INTO todo (task) VALUES ('direct SQL'); UPDATE todo SET is_completed = true")
            .await?;
        // Direct SQL inside a scope does not pass through an adapter either.
        context::scope(ctx(json!({"user_id": 1})), async {
            sqlx::query("DELETE FROM todo WHERE task = 'direct SQL'")
                .execute(pool.inner())
                .await
        })
        .await?;
        let entries = slot.read().await?;
        ensure!(bemi_contexts(&entries)?.is_empty(), "{entries:#?}");
        ensure!(changes(&entries).len() == 7, "{entries:#?}");
        Ok(())
    }
    e2e_test!(writes_without_context_emit_no_message);

    async fn annotated_writes_do_not_fill_the_statement_cache(cluster: Arc<TestCluster>) -> TestResult {
        let db = todo_db(&cluster, "stmt_cache").await?;
        let slot = db.wal_slot().await?;
        let pool = line::bemi_pool(&db).await?;
        let mut conn = pool.acquire().await?;
        let count = "SELECT count(*) FROM pg_prepared_statements";
        let read = "SELECT count(*) FROM todo WHERE id > $1";
        let before: i64 = sqlx::query_scalar(count)
            .fetch_one(&mut **conn.inner_mut())
            .await?;
        for i in 0..1000_i64 {
            context::scope(ctx(json!({"request_id": i})), async {
                sqlx::query("INSERT INTO todo (task) VALUES ($1)")
                    .bind(format!("t{i}"))
                    .execute(&mut conn)
                    .await?;
                sqlx::query_scalar::<_, i64>(read)
                    .bind(i)
                    .fetch_one(&mut conn)
                    .await
            })
            .await?;
        }
        let after: i64 = sqlx::query_scalar(count)
            .fetch_one(&mut **conn.inner_mut())
            .await?;
        ensure!(
            after <= before + 3,
            "prepared statements grew from {before} to {after}"
        );
        // The read (same text every time) is in the cache: reads keep it.
        let cached: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_prepared_statements WHERE statement = $1)",
        )
        .bind(read)
        .fetch_one(&mut **conn.inner_mut())
        .await?;
        ensure!(cached, "the read was not cached");
        let contexts = bemi_contexts(&slot.read().await?)?;
        ensure!(contexts.len() == 1000, "{} messages", contexts.len());
        for (i, context) in contexts.iter().enumerate() {
            ensure!(context["request_id"] == json!(i), "message {i}: {context}");
        }
        Ok(())
    }
    e2e_test!(annotated_writes_do_not_fill_the_statement_cache);

    async fn simple_protocol_queries_stay_simple(cluster: Arc<TestCluster>) -> TestResult {
        let db = todo_db(&cluster, "simple_protocol").await?;
        let slot = db.wal_slot().await?;
        // Two statements in one string only run with the simple query protocol.
        let batch = "INSERT INTO todo (task) VALUES ('one'); INSERT INTO todo (task) VALUES ('two')";
        let request = json!({"user_id": 5});
        let expected = with_sql(&request, batch);
        let shape = |entries: &[WalEntry]| -> Vec<&'static str> {
            entries
                .iter()
                .map(|e| match e {
                    WalEntry::Begin => "begin",
                    WalEntry::Message { .. } => "message",
                    WalEntry::Change { .. } => "row",
                    WalEntry::Commit => "commit",
                })
                .collect()
        };

        // The message carrier: the batch's one message, in the transaction it runs in.
        let pool: bemi_sqlx::BemiPool = line::bemi_pool(&db).await?.carrier(Carrier::Message);
        context::scope(request.clone(), pool.execute(batch)).await?;
        let entries = slot.read().await?;
        ensure!(
            shape(&entries) == ["begin", "message", "row", "row", "commit"],
            "{entries:#?}"
        );
        ensure!(
            bemi_contexts(&entries)? == [expected.clone()],
            "{entries:#?}"
        );

        // The comment carrier (also sqlx's default outside a transaction): one implicit
        // transaction; each statement's rows follow its own message, emitted by the trigger.
        let pool = line::bemi_pool(&db).await?;
        context::scope(request.clone(), pool.execute(batch)).await?;
        let entries = slot.read().await?;
        ensure!(
            shape(&entries) == ["begin", "message", "row", "message", "row", "commit"],
            "{entries:#?}"
        );
        ensure!(
            bemi_contexts(&entries)? == [expected.clone(), expected],
            "{entries:#?}"
        );
        Ok(())
    }
    e2e_test!(simple_protocol_queries_stay_simple);

    async fn pre_prepared_statements_carry_the_context(cluster: Arc<TestCluster>) -> TestResult {
        let db = todo_db(&cluster, "prepared").await?;
        let slot = db.wal_slot().await?;

        // tokio-postgres: a Statement's text is not known here, so its message has no SQL key.
        let client = BemiClient::new(db.tokio_postgres().await?);
        let statement = client
            .prepare("INSERT INTO todo (task) VALUES ($1)")
            .await?;
        for user in [9, 10] {
            context::scope(
                json!({"user_id": user}),
                client.execute(&statement, &[&"prepared"]),
            )
            .await?;
        }
        let entries = slot.read().await?;
        ensure!(changes(&entries).len() == 2, "{entries:#?}");
        ensure!(
            bemi_contexts(&entries)? == [json!({"user_id": 9}), json!({"user_id": 10})],
            "{entries:#?}"
        );

        // sqlx: a prepared statement keeps its SQL, so the message has it.
        let pool = line::bemi_pool(&db).await?;
        let sql = "INSERT INTO todo (task) VALUES ($1)";
        let prepared = pool
            .inner()
            .prepare(line::to_prepare(sql))
            .await?;
        context::scope(json!({"user_id": 11}), async {
            sqlx::Statement::query(&prepared)
                .bind("sqlx")
                .execute(&pool)
                .await
        })
        .await?;
        ensure!(
            bemi_contexts(&slot.read().await?)? == [with_sql(&json!({"user_id": 11}), sql)],
            "sqlx prepared"
        );

        // With the comment carrier, a prepared statement cannot carry a context (documented).
        let client = BemiClient::new(db.tokio_postgres().await?).carrier(Carrier::Comment);
        let statement = client.prepare(sql).await?;
        context::scope(
            json!({"user_id": 12}),
            client.execute(&statement, &[&"comment"]),
        )
        .await?;
        let entries = slot.read().await?;
        ensure!(changes(&entries).len() == 1);
        ensure!(bemi_contexts(&entries)?.is_empty(), "{entries:#?}");
        Ok(())
    }
    e2e_test!(pre_prepared_statements_carry_the_context);
}

async fn tokio_postgres_client_and_transaction_writes_carry_the_context(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "tokio_pg").await?;
    let mut client = BemiClient::new(db.tokio_postgres().await?);
    let slot = db.wal_slot().await?;
    let request = json!({"user_id": 187234, "endpoint": "/todo", "method": "POST"});
    let statements = [
        "INSERT INTO todo (task) VALUES ($1)",
        "INSERT INTO todo (task) VALUES ($1) RETURNING id",
        "UPDATE todo SET is_completed = true WHERE task = $1 RETURNING id",
        "DELETE FROM todo WHERE task = $1 RETURNING id",
        "INSERT INTO todo (task) VALUES ('Batch')",
        "UPDATE todo SET task = $1 WHERE task = 'Batch'",
    ];
    context::scope(ctx(request.clone()), async {
        client.execute(statements[0], &[&"Sleep"]).await?;
        let rows = client.query(statements[1], &[&"Eat"]).await?;
        anyhow::ensure!(rows.len() == 1);
        client
            .query_one(&statements[2].to_owned(), &[&"Sleep"])
            .await?;
        anyhow::ensure!(client.query_opt(statements[3], &[&"Eat"]).await?.is_some());
        client.batch_execute(statements[4]).await?;
        let tx = client.transaction().await?;
        tx.execute(statements[5], &[&"Repeat"]).await?;
        tx.commit().await?;
        anyhow::Ok(())
    })
    .await?;
    let operations = ["INSERT", "INSERT", "UPDATE", "DELETE", "INSERT", "UPDATE"];
    let expected: Vec<_> = statements
        .iter()
        .zip(operations)
        .map(|(sql, op)| (with_sql(&request, sql), 1, op))
        .collect();
    assert_message_then_rows(&slot.read().await?, &expected)
}
e2e_test!(tokio_postgres_client_and_transaction_writes_carry_the_context);

async fn comments_placed_by_other_bemi_libraries_are_understood(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "other_libraries").await?;
    let slot = db.wal_slot().await?;
    // Direct SQL as Bemi's other libraries write it: before a trailing semicolon (Django), with
    // '*' in the JSON (TypeORM does not escape), after SQL that mentions '/*Bemi ' in a string,
    // followed by whitespace.
    for sql in [
        r#"INSERT INTO todo (task) VALUES ('a') /*Bemi {"n": 1} Bemi*/;"#,
        r#"INSERT INTO todo (task) VALUES ('b') /*Bemi {"path": "a*b", "n": 2} Bemi*/"#,
        r#"INSERT INTO todo (task) VALUES ('/*Bemi not a comment') /*Bemi {"n": 3} Bemi*/"#,
        "INSERT INTO todo (task) VALUES ('d') /*Bemi {\"n\": 4} Bemi*/ \n ",
        r#"INSERT INTO todo (task) VALUES ('e') /*Bemi  Bemi*/"#,
    ] {
        db.exec(sql).await?;
    }
    let contexts = bemi_contexts(&slot.read().await?)?;
    ensure!(
        contexts
            == [
                json!({"n": 1}),
                json!({"path": "a*b", "n": 2}),
                json!({"n": 3}),
                json!({"n": 4})
            ],
        "{contexts:?}"
    );
    Ok(())
}
e2e_test!(comments_placed_by_other_bemi_libraries_are_understood);
