//! One emission per context in a transaction, read back from the WAL: a write whose context is
//! the one already in effect emits nothing, and every row still takes its own context — for
//! each adapter. The same sequence of eight writes in one transaction:
//!
//! | task | statement | context | emits |
//! |---|---|---|---|
//! | a | `INSERT_A` | user 1 | user 1 (with `INSERT_A` as its `SQL`) |
//! | b | `INSERT_A` | user 1 | nothing: the same context |
//! | c | `INSERT_A` | user 1 with its own `SQL` key | it (differs from a's) |
//! | d | `INSERT_B` | the same | nothing: a user's `SQL` key wins, so the context is c's |
//! | e | `INSERT_A` | none | `{}` |
//! | f | `INSERT_A` | none | nothing |
//! | g | `INSERT_A` with its own `/*Bemi {"user_id":9} Bemi*/` | c's | c's, then the trigger user 9 |
//! | h | `INSERT_A` | c's | c's again: g's comment changed the context unseen |
//!
//! Six messages; without the rule eight writes would emit eight (nine with the trigger's), and an
//! adapter that forgot g's comment would give h user 9's context.

use std::sync::Arc;

use anyhow::ensure;
use bemi_core::context;
use bemi_tests::wal::{WalEntry, WalSlot};
use bemi_tests::{TestCluster, TestResult, todo_db};
use serde_json::{Value, json};

const INSERT_A: &str = "INSERT INTO todo (task) VALUES ($1)";
const INSERT_B: &str = "INSERT INTO todo (task, is_completed) VALUES ($1, false)";
const INSERT_OWN_COMMENT: &str =
    "INSERT INTO todo (task) VALUES ($1) /*Bemi {\"user_id\":9} Bemi*/";

/// The eight writes: task, statement, context.
fn steps() -> Vec<(&'static str, &'static str, Option<Value>)> {
    let user = || Some(json!({"user_id": 1}));
    let own_sql = || Some(json!({"user_id": 1, "SQL": "the request's own"}));
    vec![
        ("a", INSERT_A, user()),
        ("b", INSERT_A, user()),
        ("c", INSERT_A, own_sql()),
        ("d", INSERT_B, own_sql()),
        ("e", INSERT_A, None),
        ("f", INSERT_A, None),
        ("g", INSERT_OWN_COMMENT, own_sql()),
        ("h", INSERT_A, own_sql()),
    ]
}

/// Checks what one run of [`steps`] in one transaction left in the WAL.
async fn judge(slot: &WalSlot, adapter: &str) -> TestResult {
    let entries = slot.read().await?;
    let transactions = entries
        .iter()
        .filter(|entry| **entry == WalEntry::Begin)
        .count();
    ensure!(transactions == 1, "{adapter}: {transactions} transactions");
    let rows = bemi_tests::wal::stitched_contexts(&entries)?;
    let user = json!({"user_id": 1});
    let expected: Vec<(String, Value)> = [
        ("a", &user),
        ("b", &user),
        ("c", &user),
        ("d", &user),
        ("e", &json!({})),
        ("f", &json!({})),
        ("g", &json!({"user_id": 9})),
        ("h", &user),
    ]
    .into_iter()
    .map(|(task, context)| (task.to_owned(), context.clone()))
    .collect();
    ensure!(rows == expected, "{adapter}: {rows:#?}");
    let messages = bemi_tests::wal::bemi_messages(&entries);
    ensure!(
        messages.len() == 6,
        "{adapter}: {} messages, not 6: {messages:#?}",
        messages.len()
    );
    Ok(())
}

/// Runs `write` in the step's context (or none).
async fn in_step_context<F: Future>(context: Option<Value>, write: F) -> F::Output {
    match context {
        Some(context) => context::scope(context, write).await,
        None => write.await,
    }
}

async fn tokio_postgres_emits_each_context_once(cluster: Arc<TestCluster>) -> TestResult {
    let db = todo_db(&cluster, "emit_once_tokio_postgres").await?;
    let slot = db.wal_slot().await?;
    let mut client = bemi_tokio_postgres::BemiClient::new(db.tokio_postgres().await?);
    let tx = client.transaction().await?;
    for (task, sql, context) in steps() {
        in_step_context(context, tx.execute(sql, &[&task])).await?;
    }
    tx.commit().await?;
    judge(&slot, "tokio-postgres").await
}
e2e_test!(tokio_postgres_emits_each_context_once);

async fn diesel_async_emits_each_context_once(cluster: Arc<TestCluster>) -> TestResult {
    use diesel_async::{AsyncConnection as _, RunQueryDsl as _, TransactionManager as _};
    type Manager =
        <bemi_diesel::BemiAsyncPgConnection as diesel_async::AsyncConnection>::TransactionManager;

    let db = todo_db(&cluster, "emit_once_diesel_async").await?;
    let slot = db.wal_slot().await?;
    let mut conn = bemi_diesel::BemiAsyncPgConnection::establish(&db.url).await?;
    Manager::begin_transaction(&mut conn).await?;
    for (task, sql, context) in steps() {
        // (diesel-async plans a write when its future is made: made in the context.)
        let write = async {
            diesel::sql_query(sql)
                .bind::<diesel::sql_types::Text, _>(task)
                .execute(&mut conn)
                .await
        };
        in_step_context(context, write).await?;
    }
    Manager::commit_transaction(&mut conn).await?;
    judge(&slot, "diesel-async").await
}
e2e_test!(diesel_async_emits_each_context_once);

async fn diesel_emits_each_context_once(cluster: Arc<TestCluster>) -> TestResult {
    use diesel::RunQueryDsl as _;
    use diesel::connection::{Connection as _, TransactionManager as _};
    type Manager = <bemi_diesel::BemiPgConnection as diesel::Connection>::TransactionManager;

    let db = todo_db(&cluster, "emit_once_diesel").await?;
    let slot = db.wal_slot().await?;
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut conn = bemi_diesel::BemiPgConnection::establish(&url)?;
        Manager::begin_transaction(&mut conn)?;
        for (task, sql, context) in steps() {
            let mut write = || {
                diesel::sql_query(sql)
                    .bind::<diesel::sql_types::Text, _>(task)
                    .execute(&mut conn)
            };
            match context {
                Some(context) => context::sync_scope(context, write)?,
                None => write()?,
            };
        }
        Manager::commit_transaction(&mut conn)?;
        Ok(())
    })
    .await??;
    judge(&slot, "diesel").await
}
e2e_test!(diesel_emits_each_context_once);

crate::lines::sqlx_lines! {
    async fn sqlx_emits_each_context_once(cluster: Arc<TestCluster>) -> TestResult {
        let db = todo_db(&cluster, "emit_once_sqlx").await?;
        let slot = db.wal_slot().await?;
        let pool = line::bemi_pool(&db).await?;
        let mut tx = pool.begin().await?;
        for (task, sql, context) in steps() {
            in_step_context(context, sqlx::query(sql).bind(task).execute(&mut tx)).await?;
        }
        tx.commit().await?;
        judge(&slot, "sqlx").await
    }
    e2e_test!(sqlx_emits_each_context_once);
}

crate::lines::seaorm_lines! {
    async fn seaorm_emits_each_context_once(cluster: Arc<TestCluster>) -> TestResult {
        let db = todo_db(&cluster, "emit_once_seaorm").await?;
        let slot = db.wal_slot().await?;
        let orm = bemi_seaorm::BemiConnection::new(sea_orm::Database::connect(&db.url).await?);
        let tx = orm.begin().await?;
        for (task, sql, context) in steps() {
            let statement = sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                sql,
                [task.into()],
            );
            in_step_context(context, line::execute(&tx, statement)).await?;
        }
        tx.commit().await?;
        judge(&slot, "SeaORM").await
    }
    e2e_test!(seaorm_emits_each_context_once);
}

/// A transaction whose writes carry no context sends nothing of bemi's: not even the emission's
/// prepared statement (it is prepared on a connection's first emission).
async fn tokio_postgres_transaction_without_contexts_prepares_nothing(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "emit_once_no_context").await?;
    let slot = db.wal_slot().await?;
    let mut client = bemi_tokio_postgres::BemiClient::new(db.tokio_postgres().await?);
    let tx = client.transaction().await?;
    for task in ["a", "b"] {
        tx.execute(INSERT_A, &[&task]).await?;
    }
    let emissions_prepared: i64 = tx
        .query_one(
            // (Spelled apart, so that this query, prepared too, does not count itself.)
            "SELECT count(*) FROM pg_prepared_statements \
              WHERE statement LIKE '%pg_logical_' || 'emit_message%'",
            &[],
        )
        .await?
        .get(0);
    tx.commit().await?;
    ensure!(
        emissions_prepared == 0,
        "{emissions_prepared} emission statements prepared"
    );
    let entries = slot.read().await?;
    ensure!(bemi_tests::wal::bemi_messages(&entries).is_empty());
    ensure!(bemi_tests::wal::changes(&entries).len() == 2);
    Ok(())
}
e2e_test!(tokio_postgres_transaction_without_contexts_prepares_nothing);
