//! The workload: concurrent writers and a DDL task, every choice from the seed. Each
//! transaction declares its context to the oracle (`bemi_chaos.context`, local to the
//! transaction) and carries the same context to bemi by a trailing comment, through the sqlx
//! adapter, through the tokio-postgres adapter, or not at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bemi_sqlx::BemiPool;
use bemi_tokio_postgres::BemiClient;
use serde_json::json;
use sqlx::{AssertSqlSafe, PgPool};

use crate::oracle;
use crate::rng::Rng;

/// The workload's tables (besides `chaos_events`, which the DDL task drops and recreates).
pub(crate) const TABLES: &str = "
CREATE TABLE chaos_accounts (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    balance numeric(20, 4) NOT NULL,
    tags text[] NOT NULL,
    updated_at timestamptz NOT NULL,
    note text
);
CREATE TABLE chaos_lines (
    order_id int,
    line_no int,
    sku text NOT NULL,
    qty int NOT NULL,
    price numeric NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
";

/// The table that DDL changes mid-stream.
pub(crate) const EVENTS: &str = "CREATE TABLE chaos_events (id bigserial PRIMARY KEY, \
    kind text NOT NULL, payload jsonb NOT NULL, at timestamp NOT NULL)";

/// How a transaction carries its context to bemi.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// ` /*Bemi {json} Bemi*/` after each statement, on a plain sqlx pool.
    Comment,
    /// `BemiPool` (the sqlx adapter) inside `bemi_core::context::scope`.
    Adapter,
    /// `BemiClient` (the tokio-postgres adapter) inside `bemi_core::context::scope`; its
    /// rolled-back savepoints are the adapter's nested transactions.
    TokioPostgres,
    /// No context at all (plain SQL): `changes` must show none.
    Nothing,
}

/// What one writer did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WriterStats {
    /// Transactions committed.
    pub(crate) commits: u64,
    /// Transactions that failed (faults, deadlocks, a dropped table): rolled back.
    pub(crate) failures: u64,
}

/// The most transactions one writer runs, whatever the time budget.
const MAX_TRANSACTIONS: u64 = 2_000_000;

/// Where a writer's transactions go.
#[derive(Clone)]
pub(crate) struct Connections {
    /// A plain sqlx pool (comments, or nothing).
    pub(crate) plain: PgPool,
    /// The sqlx adapter's pool.
    pub(crate) adapter: BemiPool,
    /// The source's URL, for each writer's own tokio-postgres connection.
    pub(crate) url: String,
    /// While set, writers and the DDL task start nothing new (the runner drains the pipeline).
    pub(crate) paused: Arc<AtomicBool>,
    /// Transactions (and DDL) under way: the runner drains once none is.
    pub(crate) active: Arc<AtomicUsize>,
}

/// Counts a transaction under way in `active` while it lives.
struct Active<'a>(&'a AtomicUsize);

impl<'a> Active<'a> {
    fn new(active: &'a AtomicUsize) -> Self {
        active.fetch_add(1, Ordering::SeqCst);
        Self(active)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits while `paused` is set (and `stop` is not).
async fn wait_while_paused(paused: &AtomicBool, stop: &AtomicBool) {
    while paused.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A writer's tokio-postgres connection through the adapter, opened again once it broke (a
/// PostgreSQL restart, a terminated backend).
struct TokioPostgres {
    url: String,
    client: Option<BemiClient>,
}

impl TokioPostgres {
    async fn client(&mut self) -> Result<&mut BemiClient, tokio_postgres::Error> {
        if self.client.as_ref().is_none_or(|c| c.inner().is_closed()) {
            let (client, connection) =
                tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            self.client = Some(BemiClient::new(client));
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

/// Writer number `n`: transactions until `stop` or `deadline`.
pub(crate) async fn writer(
    n: u64,
    mut rng: Rng,
    connections: Connections,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> WriterStats {
    let name = format!("w{n}");
    let mut stats = WriterStats::default();
    let mut ids = 0u64;
    let mut tokio_postgres = TokioPostgres {
        url: connections.url.clone(),
        client: None,
    };
    for seq in 1..=MAX_TRANSACTIONS {
        wait_while_paused(&connections.paused, &stop).await;
        let active = Active::new(&connections.active);
        // Paused meanwhile: the runner may already wait for this writer to be idle.
        if connections.paused.load(Ordering::SeqCst) {
            drop(active);
            continue;
        }
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        let via = rng.weighted(&[
            (Via::Comment, 35),
            (Via::Adapter, 30),
            (Via::TokioPostgres, 25),
            (Via::Nothing, 10),
        ]);
        let context = match via {
            Via::Comment => json!({"writer": name, "seq": seq, "via": "comment"}),
            Via::Adapter => json!({"writer": name, "seq": seq, "via": "sqlx"}),
            Via::TokioPostgres => json!({"writer": name, "seq": seq, "via": "tokio-postgres"}),
            Via::Nothing => json!({}),
        };
        let steps = plan(&mut rng, n, seq, &mut ids);
        let scope = || match context.clone() {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a JSON object"),
        };
        let result = match via {
            Via::Adapter => bemi_core::context::scope(
                scope(),
                run_adapter(&connections.adapter, &context, &steps),
            )
            .await
            .map_err(|e| e.to_string()),
            Via::TokioPostgres => bemi_core::context::scope(
                scope(),
                run_tokio_postgres(&mut tokio_postgres, &context, &steps),
            )
            .await
            .map_err(|e| e.to_string()),
            Via::Comment => run_plain(&connections.plain, &context, &steps, true)
                .await
                .map_err(|e| e.to_string()),
            Via::Nothing => run_plain(&connections.plain, &context, &steps, false)
                .await
                .map_err(|e| e.to_string()),
        };
        drop(active);
        match result {
            Ok(()) => stats.commits += 1,
            Err(_) => {
                stats.failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Leaves the two cores some room for the worker.
        tokio::time::sleep(Duration::from_millis(rng.range(0, 20))).await;
    }
    stats
}

/// One step of a transaction.
#[derive(Debug, Clone)]
enum Step {
    /// A statement.
    Sql(String),
    /// Statements inside a savepoint that is rolled back.
    RolledBack(Vec<String>),
}

/// The statements of one transaction of writer `n`.
fn plan(rng: &mut Rng, n: u64, seq: u64, ids: &mut u64) -> Vec<Step> {
    let count = rng.weighted(&[(1, 50), (2, 25), (4, 20), (8, 5)]);
    let mut steps = Vec::new();
    for _ in 0..count {
        let statement = statement(rng, n, seq, ids);
        if rng.chance(100) {
            let undone = statement_in_savepoint(rng, n, seq, ids);
            steps.push(Step::RolledBack(vec![undone]));
        }
        steps.push(Step::Sql(statement));
    }
    steps
}

/// A statement whose effect a savepoint rollback undoes.
fn statement_in_savepoint(rng: &mut Rng, n: u64, seq: u64, ids: &mut u64) -> String {
    let statement = statement(rng, n, seq, ids);
    if statement.starts_with("TRUNCATE") {
        format!(
            "DELETE FROM chaos_lines WHERE order_id = {}",
            order_id(n, seq)
        )
    } else {
        statement
    }
}

/// Order ids of writer `n` (disjoint between writers).
fn order_id(n: u64, seq: u64) -> u64 {
    n * 10_000_000 + seq % 10_000_000
}

/// A server-made text of `blocks` × 32 characters that does not compress away (TOAST-sized
/// from a few hundred blocks; beyond 1 MB from 33 000).
fn note(blocks: u64) -> String {
    format!(
        "(SELECT string_agg(md5(g::text || random()::text), '') FROM generate_series(1, {blocks}) g)"
    )
}

#[allow(clippy::too_many_lines)]
fn statement(rng: &mut Rng, n: u64, seq: u64, ids: &mut u64) -> String {
    let base = n * 1_000_000_000;
    // A row of this writer or, now and then, another writer's (contention).
    let some_account = |rng: &mut Rng, ids: u64| {
        let owner = if rng.chance(200) { rng.range(1, 4) } else { n };
        owner * 1_000_000_000 + rng.range(1, ids.max(1))
    };
    let kind = rng.weighted(&[
        ("insert_account", 20),
        ("update_account", 20),
        ("update_note", 5),
        ("delete_account", 6),
        ("merge_accounts", 4),
        ("insert_lines", 14),
        ("update_lines", 8),
        ("delete_lines", 4),
        ("truncate_lines", 1),
        ("insert_event", 10),
        ("update_event", 6),
        ("delete_event", 3),
    ]);
    match kind {
        "insert_account" => {
            let rows = rng.range(1, 5);
            let values: Vec<String> = (0..rows)
                .map(|_| {
                    *ids += 1;
                    let note = if rng.chance(5) {
                        note(34_000)
                    } else if rng.chance(200) {
                        note(rng.range(100, 600))
                    } else if rng.chance(500) {
                        format!("'note {seq}'")
                    } else {
                        "NULL".to_owned()
                    };
                    format!(
                        "({}, 'owner {n}', {}.{:04}, ARRAY['t{}', 'x y', 'q\"uote'], \
                         now() - interval '{} seconds', {note})",
                        base + *ids,
                        rng.range(0, 100_000),
                        rng.range(0, 9999),
                        rng.range(0, 9),
                        rng.range(0, 100_000),
                    )
                })
                .collect();
            format!(
                "INSERT INTO chaos_accounts (id, owner, balance, tags, updated_at, note) VALUES {}",
                values.join(", ")
            )
        }
        "update_account" => format!(
            "UPDATE chaos_accounts SET balance = balance + {}.25, updated_at = now(), \
             tags = tags[1:3] || ARRAY['s{seq}'] WHERE id IN \
             (SELECT id FROM chaos_accounts WHERE id >= {} ORDER BY id LIMIT {})",
            rng.range(0, 50),
            some_account(rng, *ids),
            rng.range(1, 4)
        ),
        "update_note" => format!(
            "UPDATE chaos_accounts SET note = {} WHERE id = {}",
            note(rng.range(1, 300)),
            some_account(rng, *ids)
        ),
        "delete_account" => format!(
            "DELETE FROM chaos_accounts WHERE id IN \
             (SELECT id FROM chaos_accounts WHERE id >= {} ORDER BY id LIMIT {})",
            some_account(rng, *ids),
            rng.range(1, 2)
        ),
        "merge_accounts" => {
            let from = base + rng.range(1, *ids + 5);
            format!(
                "MERGE INTO chaos_accounts t USING \
                 (SELECT id FROM generate_series({from}::bigint, {}::bigint) id) s ON t.id = s.id \
                 WHEN MATCHED AND t.id % 3 = 0 THEN DELETE \
                 WHEN MATCHED THEN UPDATE SET balance = t.balance - 1, owner = 'merged' \
                 WHEN NOT MATCHED THEN INSERT (id, owner, balance, tags, updated_at) \
                 VALUES (s.id, 'merge', 0, '{{}}', '2024-02-29 12:00:00.123456+00')",
                from + rng.range(0, 4)
            )
        }
        "insert_lines" => {
            let lines = if rng.chance(2) {
                100_000
            } else if rng.chance(30) {
                rng.range(500, 5_000)
            } else {
                rng.range(1, 20)
            };
            format!(
                "INSERT INTO chaos_lines (order_id, line_no, sku, qty, price) \
                 SELECT {}, g, 'sku-' || g, g % 7, g * 1.10 FROM generate_series(1, {lines}) g \
                 ON CONFLICT DO NOTHING",
                order_id(n, seq)
            )
        }
        "update_lines" => format!(
            "UPDATE chaos_lines SET qty = qty + 1, price = price * 2 \
             WHERE order_id = {} AND line_no <= {}",
            order_id(n, rng.range(seq.saturating_sub(50), seq)),
            rng.range(1, 5)
        ),
        "delete_lines" => format!(
            "DELETE FROM chaos_lines WHERE order_id = {}",
            order_id(n, rng.range(seq.saturating_sub(50), seq))
        ),
        "truncate_lines" => "TRUNCATE chaos_lines".to_owned(),
        "insert_event" => format!(
            "INSERT INTO chaos_events (kind, payload, at) VALUES \
             ('k{}', '{{\"n\": {seq}, \"nested\": {{\"a\": [1, 2.5, null]}}}}', \
             '2026-01-0{} 0{}:00:00.5')",
            rng.range(0, 3),
            rng.range(1, 9),
            rng.range(0, 9)
        ),
        "update_event" => format!(
            "UPDATE chaos_events SET payload = payload || '{{\"u\": {seq}}}' WHERE id IN \
             (SELECT id FROM chaos_events ORDER BY id DESC LIMIT {})",
            rng.range(1, 3)
        ),
        _ => "DELETE FROM chaos_events WHERE id IN \
              (SELECT id FROM chaos_events ORDER BY id LIMIT 1)"
            .to_owned(),
    }
}

/// Declares `context` to the oracle (`{}`: none) for the rest of the transaction.
const DECLARE: &str = "SELECT set_config('bemi_chaos.context', $1, true)";

/// A transaction on a plain pool; with `comment`, each statement carries the context as
/// Bemi's trailing comment.
async fn run_plain(
    pool: &PgPool,
    context: &serde_json::Value,
    steps: &[Step],
    comment: bool,
) -> Result<(), sqlx::Error> {
    let suffix = if comment {
        format!(" /*Bemi {context} Bemi*/")
    } else {
        String::new()
    };
    let mut tx = pool.begin().await?;
    sqlx::query(DECLARE)
        .bind(context.to_string())
        .execute(&mut *tx)
        .await?;
    for step in steps {
        match step {
            Step::Sql(sql) => {
                sqlx::query(AssertSqlSafe(format!("{sql}{suffix}")))
                    .persistent(false)
                    .execute(&mut *tx)
                    .await?;
            }
            Step::RolledBack(statements) => {
                sqlx::query("SAVEPOINT chaos").execute(&mut *tx).await?;
                for sql in statements {
                    sqlx::query(AssertSqlSafe(format!("{sql}{suffix}")))
                        .persistent(false)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("ROLLBACK TO SAVEPOINT chaos")
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await
}

/// A transaction through the sqlx adapter (the context is the caller's task-local scope).
async fn run_adapter(
    pool: &BemiPool,
    context: &serde_json::Value,
    steps: &[Step],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(DECLARE)
        .bind(context.to_string())
        .execute(&mut tx)
        .await?;
    for step in steps {
        match step {
            Step::Sql(sql) => {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .persistent(false)
                    .execute(&mut tx)
                    .await?;
            }
            Step::RolledBack(statements) => {
                sqlx::query("SAVEPOINT chaos").execute(&mut tx).await?;
                for sql in statements {
                    sqlx::query(AssertSqlSafe(sql.clone()))
                        .persistent(false)
                        .execute(&mut tx)
                        .await?;
                }
                sqlx::query("ROLLBACK TO SAVEPOINT chaos")
                    .execute(&mut tx)
                    .await?;
            }
        }
    }
    tx.commit().await
}

/// A transaction through the tokio-postgres adapter (the context is the caller's task-local
/// scope); a rolled-back savepoint is the adapter's nested transaction.
async fn run_tokio_postgres(
    connection: &mut TokioPostgres,
    context: &serde_json::Value,
    steps: &[Step],
) -> Result<(), tokio_postgres::Error> {
    let client = connection.client().await?;
    let mut tx = client.transaction().await?;
    tx.inner().execute(DECLARE, &[&context.to_string()]).await?;
    for step in steps {
        match step {
            Step::Sql(sql) => {
                tx.execute(sql.as_str(), &[]).await?;
            }
            Step::RolledBack(statements) => {
                let nested = tx.transaction().await?;
                for sql in statements {
                    nested.execute(sql.as_str(), &[]).await?;
                }
                nested.rollback().await?;
            }
        }
    }
    tx.commit().await
}

/// DDL mid-stream on `chaos_events`, every 10–30 s until `stop` or `deadline`: add, rename and
/// drop a column; change the primary key (`(id)` ⇄ `(id, kind)`); drop and recreate the table
/// (with the oracle's triggers).
pub(crate) async fn ddl(
    mut rng: Rng,
    pool: PgPool,
    paused: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    started: Instant,
) -> u64 {
    let mut current: Vec<String> = Vec::new();
    // Whether the primary key is `(id, kind)` rather than `(id)`.
    let mut composite_key = false;
    let mut done = 0u64;
    for n in 1..=10_000u64 {
        let pause = Instant::now() + Duration::from_millis(rng.range(10_000, 30_000));
        while Instant::now() < pause {
            if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        wait_while_paused(&paused, &stop).await;
        let under_way = Active::new(&active);
        if paused.load(Ordering::SeqCst) {
            continue;
        }
        let kind = if current.is_empty() {
            rng.weighted(&[("add", 4), ("key", 2), ("recreate", 1)])
        } else {
            rng.weighted(&[
                ("add", 2),
                ("rename", 2),
                ("drop", 2),
                ("key", 2),
                ("recreate", 1),
            ])
        };
        let mut key_after = composite_key;
        // The columns after this DDL, kept only if it commits.
        let mut after = current.clone();
        let columns = &mut after;
        let sql = match kind {
            "add" => {
                columns.push(format!("extra_{n}"));
                format!("ALTER TABLE chaos_events ADD COLUMN extra_{n} int DEFAULT {n}")
            }
            "rename" => {
                let at = usize::try_from(rng.range(0, columns.len() as u64 - 1)).unwrap_or(0);
                let from = std::mem::replace(&mut columns[at], format!("renamed_{n}"));
                format!("ALTER TABLE chaos_events RENAME COLUMN {from} TO renamed_{n}")
            }
            "drop" => {
                let at = usize::try_from(rng.range(0, columns.len() as u64 - 1)).unwrap_or(0);
                let column = columns.remove(at);
                format!("ALTER TABLE chaos_events DROP COLUMN {column}")
            }
            "key" => {
                key_after = !composite_key;
                let key = if key_after { "id, kind" } else { "id" };
                format!(
                    "ALTER TABLE chaos_events DROP CONSTRAINT chaos_events_pkey, \
                     ADD PRIMARY KEY ({key})"
                )
            }
            _ => {
                columns.clear();
                key_after = false;
                format!(
                    "DROP TABLE chaos_events; {EVENTS}; {}",
                    oracle::attach("chaos_events")
                )
            }
        };
        let at = started.elapsed().as_secs_f64();
        let outcome = run_ddl(&pool, &sql).await;
        drop(under_way);
        match outcome {
            Ok(()) => {
                done += 1;
                current = after;
                composite_key = key_after;
                println!("[{at:7.1}s] ddl: {sql}");
            }
            Err(error) => println!("[{at:7.1}s] ddl failed (rolled back): {sql}: {error}"),
        }
    }
    done
}

/// `sql` in one transaction that waits at most 5 s for its locks.
async fn run_ddl(pool: &PgPool, sql: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '5s'; {sql}"
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
