//! P2-cpu: what a tracked write costs the database server, as CPU time per write from `/proc`
//! (see [`crate::cpu`]), for each adapter (sqlx, tokio-postgres, SeaORM, diesel-async) × (each
//! write on its own, transactions of 5 writes): the adapter's tracked writes into a table with
//! the trigger ÷ the same library's raw writes into a table without it. The client's CPU per
//! write is reported beside it.
//!
//! Beside them, **the limit rows**: the least server work any per-statement context can cost,
//! measured with pgbench on prepared statements — the emission (`pg_logical_emit_message`) and
//! the INSERT pipelined in one Sync (one implicit transaction, no `BEGIN`/`COMMIT` statements)
//! ÷ the INSERT alone; and for transactions of 5 writes, one emission per transaction. The goal
//! of every adapter row is to stay within 10 % of its limit row.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bemi_core::context;
use bemi_diesel::BemiAsyncPgConnection;
use bemi_sqlx::BemiPool;
use bemi_tokio_postgres::BemiClient;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use sea_orm::{
    ConnectionTrait as _, DbBackend, Statement, TransactionSession as _, TransactionTrait as _,
};
use serde_json::json;
use tokio::sync::Mutex;

use crate::cpu::{CpuMeter, CpuTime};
use crate::env::{Env, Sizes};
use crate::report::{Goal, Row};
use crate::stats::{Samples, human};

/// Concurrent writers (one connection each).
const WRITERS: usize = 4;
/// Writes per transaction in the transactional rows.
const TRANSACTION_WRITES: u64 = 5;
/// The most writes one writer makes in a round, whatever the time.
const MAX_WRITES_PER_ROUND: u64 = 2_000_000;
const INSERT_PLAIN: &str = "INSERT INTO plain (task) VALUES ($1)";
const INSERT_TRACKED: &str = "INSERT INTO tracked (task) VALUES ($1)";
const TODO_COLUMNS: &str =
    "(id bigserial PRIMARY KEY, task text NOT NULL, is_completed boolean NOT NULL DEFAULT false)";

/// One round of one variant: rows written, and the CPU they cost.
#[derive(Debug, Clone, Copy)]
struct Measured {
    rows: u64,
    used: CpuTime,
}

impl Measured {
    fn server_us_per_row(&self) -> f64 {
        self.used.server * 1e6 / self.rows.max(1) as f64
    }

    fn client_us_per_row(&self) -> f64 {
        self.used.client * 1e6 / self.rows.max(1) as f64
    }
}

/// A way to write, tracked or not: `write(writer, n)` writes and returns its row count.
type Write = Arc<
    dyn Fn(usize, u64) -> futures_util::future::BoxFuture<'static, anyhow::Result<u64>>
        + Send
        + Sync,
>;

/// One adapter × mode: its raw writes and its tracked writes.
struct Pair {
    what: &'static str,
    transactions: bool,
    /// Whether contexts carry the `SQL` key while this pair is measured
    /// ([`bemi_core::sql::set_sql_key`]).
    sql_key: bool,
    /// Whether the writes of a transaction share one context (then it is emitted once).
    contexts_repeat: bool,
    /// A reference row: no goal.
    reference: bool,
    raw: Write,
    tracked: Write,
}

/// Five different INSERT statements (into `plain` and into `tracked`), for the transactions
/// whose writes differ in their SQL (with the `SQL` key, each write's context differs).
const FIVE_PLAIN: [&str; 5] = [
    "INSERT INTO plain (task) VALUES ($1)",
    "INSERT INTO plain (task, is_completed) VALUES ($1, false)",
    "INSERT INTO plain (is_completed, task) VALUES (false, $1)",
    "INSERT INTO plain (task, is_completed) VALUES ($1, true)",
    "INSERT INTO plain (is_completed, task) VALUES (true, $1)",
];
const FIVE_TRACKED: [&str; 5] = [
    "INSERT INTO tracked (task) VALUES ($1)",
    "INSERT INTO tracked (task, is_completed) VALUES ($1, false)",
    "INSERT INTO tracked (is_completed, task) VALUES (false, $1)",
    "INSERT INTO tracked (task, is_completed) VALUES ($1, true)",
    "INSERT INTO tracked (is_completed, task) VALUES (true, $1)",
];

pub(crate) async fn p2_cpu(env: &Env, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let db = env.database("bench_p2_cpu").await?;
    db.exec(&format!(
        "ALTER DATABASE bench_p2_cpu SET synchronous_commit = off; \
         CREATE TABLE plain {TODO_COLUMNS}; CREATE TABLE tracked {TODO_COLUMNS};"
    ))
    .await?;
    bemi_sqlx::migration::migrate(&db.pool, Default::default()).await?;
    db.exec("DROP TRIGGER _bemi_statement_trigger ON plain")
        .await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&db.pool)
        .await?;
    let Some(meter) = CpuMeter::for_backend(backend) else {
        eprintln!("P2-cpu: the server is not on this machine; skipped");
        return Ok(Vec::new());
    };

    let pairs = pairs(&db.url).await?;
    let mut rows = Vec::new();
    for limit in limits(env, &db.url, sizes, meter).await? {
        rows.push(limit);
    }
    let limit_ratio = |transactions: bool| {
        rows.get(usize::from(transactions))
            .and_then(|row: &Row| row.ratio)
            .map(|(median, _, _)| median)
    };
    let (autocommit_limit, transaction_limit) = (limit_ratio(false), limit_ratio(true));
    for pair in pairs {
        bemi_core::sql::set_sql_key(pair.sql_key);
        let (mut raw, mut tracked) = (Vec::new(), Vec::new());
        for round in 0..sizes.rounds {
            // Alternate which goes first.
            for tracked_first in [round % 2 == 1, round % 2 == 0] {
                if tracked_first {
                    tracked.push(measure(meter, sizes.round_time, &pair.tracked).await?);
                } else {
                    raw.push(measure(meter, sizes.round_time, &pair.raw).await?);
                }
            }
        }
        let server = |m: &[Measured]| Samples(m.iter().map(Measured::server_us_per_row).collect());
        let client = |m: &[Measured]| Samples(m.iter().map(Measured::client_us_per_row).collect());
        bemi_core::sql::set_sql_key(true);
        let limit = if pair.transactions {
            transaction_limit
        } else {
            autocommit_limit
        };
        let goal = match (pair.transactions, pair.contexts_repeat, limit) {
            _ if pair.reference => Goal::None,
            // Five contexts per transaction: what the SQL key costs (a reference row).
            (true, false, _) => Goal::None,
            // One context per transaction, emitted once: within 10 % of the limit, and at
            // most 1.05.
            (true, true, Some(limit)) => Goal::AtMost(round_up(limit * 1.10).min(1.05)),
            (_, _, Some(limit)) => Goal::AtMost(round_up(limit * 1.10)),
            (_, _, None) => Goal::None,
        };
        rows.push(Row::ratio(
            "P2-cpu",
            &format!(
                "server CPU per write, {WRITERS} writers, {}: tracked ÷ raw (client CPU per write: {} → {} µs)",
                pair.what,
                human(client(&raw).median()),
                human(client(&tracked).median()),
            ),
            server(&raw).show("µs"),
            server(&tracked).show("µs"),
            &server(&tracked).ratios_to(&server(&raw)),
            goal,
        ));
    }
    Ok(rows)
}

/// Rounds a goal up to two decimals, so that the table shows the bound that was applied.
fn round_up(value: f64) -> f64 {
    (value * 100.0).ceil() / 100.0
}

/// Runs `write` on [`WRITERS`] writers for `duration`; the rows and the CPU they cost.
async fn measure(meter: CpuMeter, duration: Duration, write: &Write) -> anyhow::Result<Measured> {
    let rows = Arc::new(AtomicU64::new(0));
    let before = meter.read();
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let (rows, write) = (Arc::clone(&rows), Arc::clone(write));
        tasks.spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline && n < MAX_WRITES_PER_ROUND {
                rows.fetch_add(write(writer, n).await?, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let used = meter.read() - before;
    Ok(Measured {
        rows: rows.load(Ordering::Relaxed),
        used,
    })
}

/// The context of a typical request.
fn request(n: u64) -> serde_json::Value {
    json!({"user_id": n, "endpoint": "/todo", "method": "POST"})
}

/// The adapter × mode pairs: each adapter's writes on their own and in transactions of 5, and
/// sqlx's transactions of 5 different statements with and without the `SQL` key.
async fn pairs(url: &str) -> anyhow::Result<Vec<Pair>> {
    let mut pairs = Vec::new();

    // sqlx: a pool of WRITERS connections, BemiPool around the same pool.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(WRITERS as u32)
        .connect(url)
        .await?;
    let bemi = BemiPool::new(pool.clone());
    for transactions in [false, true] {
        let (raw_pool, bemi_pool) = (pool.clone(), bemi.clone());
        pairs.push(Pair {
            what: if transactions {
                "sqlx, transactions of 5 writes"
            } else {
                "sqlx, each write on its own"
            },
            transactions,
            sql_key: true,
            contexts_repeat: true,
            reference: false,
            raw: Arc::new(move |_, _| {
                let pool = raw_pool.clone();
                Box::pin(async move {
                    if transactions {
                        let mut tx = pool.begin().await?;
                        for _ in 0..TRANSACTION_WRITES {
                            sqlx::query(INSERT_PLAIN)
                                .bind("Sleep")
                                .execute(&mut *tx)
                                .await?;
                        }
                        tx.commit().await?;
                        Ok(TRANSACTION_WRITES)
                    } else {
                        sqlx::query(INSERT_PLAIN)
                            .bind("Sleep")
                            .execute(&pool)
                            .await?;
                        Ok(1)
                    }
                })
            }),
            tracked: Arc::new(move |_, n| {
                let pool = bemi_pool.clone();
                Box::pin(context::scope(request(n), async move {
                    if transactions {
                        let mut tx = pool.begin().await?;
                        for _ in 0..TRANSACTION_WRITES {
                            sqlx::query(INSERT_TRACKED)
                                .bind("Sleep")
                                .execute(&mut tx)
                                .await?;
                        }
                        tx.commit().await?;
                        Ok(TRANSACTION_WRITES)
                    } else {
                        sqlx::query(INSERT_TRACKED)
                            .bind("Sleep")
                            .execute(&pool)
                            .await?;
                        Ok(1)
                    }
                }))
            }),
        });
    }

    // Writes without a context (a job, a migration, a psql session): on a table with the
    // comment trigger (`tracked`) against one without it (`plain`, like a table migrated with
    // `comment_trigger(false)`) — what such a write pays for the trigger; a reference row.
    {
        // Single-row inserts of `sql` through the raw pool, no context.
        let single_writes = |sql: &'static str| -> Write {
            let pool = pool.clone();
            Arc::new(move |_, _| {
                let pool = pool.clone();
                Box::pin(async move {
                    sqlx::query(sql).bind("Sleep").execute(&pool).await?;
                    Ok(1)
                })
            })
        };
        pairs.push(Pair {
            what: "sqlx, writes without a context, each on its own: the comment trigger ÷ none (`comment_trigger(false)`)",
            transactions: false,
            sql_key: true,
            contexts_repeat: true,
            reference: true,
            raw: single_writes(INSERT_PLAIN),
            tracked: single_writes(INSERT_TRACKED),
        });
    }

    // sqlx, transactions of five different statements: with the SQL key every write's context
    // differs (five emissions); without it they are one context (one emission).
    for sql_key in [true, false] {
        let (raw_pool, bemi_pool) = (pool.clone(), bemi.clone());
        pairs.push(Pair {
            what: if sql_key {
                "sqlx, transactions of 5 different statements, SQL key on"
            } else {
                "sqlx, transactions of 5 different statements, SQL key off"
            },
            transactions: true,
            sql_key,
            // With the SQL key each write's context differs.
            contexts_repeat: !sql_key,
            reference: false,
            raw: Arc::new(move |_, _| {
                let pool = raw_pool.clone();
                Box::pin(async move {
                    let mut tx = pool.begin().await?;
                    for sql in FIVE_PLAIN {
                        sqlx::query(sql).bind("Sleep").execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(FIVE_PLAIN.len() as u64)
                })
            }),
            tracked: Arc::new(move |_, n| {
                let pool = bemi_pool.clone();
                Box::pin(context::scope(request(n), async move {
                    let mut tx = pool.begin().await?;
                    for sql in FIVE_TRACKED {
                        sqlx::query(sql).bind("Sleep").execute(&mut tx).await?;
                    }
                    tx.commit().await?;
                    Ok(FIVE_TRACKED.len() as u64)
                }))
            }),
        });
    }

    // tokio-postgres: one client per writer, each with its prepared statement.
    let mut raw_clients = Vec::new();
    let mut bemi_clients = Vec::new();
    for _ in 0..WRITERS {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let statement = client.prepare(INSERT_PLAIN).await?;
        raw_clients.push(Arc::new(Mutex::new((client, statement))));
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let client = BemiClient::new(client);
        let statement = client.prepare(INSERT_TRACKED).await?;
        bemi_clients.push(Arc::new(Mutex::new((client, statement))));
    }
    for transactions in [false, true] {
        let (raw, bemi) = (raw_clients.clone(), bemi_clients.clone());
        pairs.push(Pair {
            what: if transactions {
                "tokio-postgres, transactions of 5 writes"
            } else {
                "tokio-postgres, each write on its own"
            },
            transactions,
            sql_key: true,
            contexts_repeat: true,
            reference: false,
            raw: Arc::new(move |writer, _| {
                let client = Arc::clone(&raw[writer]);
                Box::pin(async move {
                    let mut guard = client.lock().await;
                    let (client, statement) = &mut *guard;
                    if transactions {
                        let statement = statement.clone();
                        let tx = client.transaction().await?;
                        for _ in 0..TRANSACTION_WRITES {
                            tx.execute(&statement, &[&"Sleep"]).await?;
                        }
                        tx.commit().await?;
                        Ok(TRANSACTION_WRITES)
                    } else {
                        client.execute(&*statement, &[&"Sleep"]).await?;
                        Ok(1)
                    }
                })
            }),
            tracked: Arc::new(move |writer, n| {
                let client = Arc::clone(&bemi[writer]);
                Box::pin(context::scope(request(n), async move {
                    let mut guard = client.lock().await;
                    let (client, statement) = &mut *guard;
                    if transactions {
                        let statement = statement.clone();
                        let tx = client.transaction().await?;
                        for _ in 0..TRANSACTION_WRITES {
                            tx.execute(&statement, &[&"Sleep"]).await?;
                        }
                        tx.commit().await?;
                        Ok(TRANSACTION_WRITES)
                    } else {
                        client.execute(&*statement, &[&"Sleep"]).await?;
                        Ok(1)
                    }
                }))
            }),
        });
    }

    // SeaORM: a pool of WRITERS connections, BemiConnection around the same pool.
    let mut options = sea_orm::ConnectOptions::new(url.to_owned());
    options.max_connections(WRITERS as u32).sqlx_logging(false);
    let orm = sea_orm::Database::connect(options).await?;
    let bemi_orm = bemi_seaorm::BemiConnection::new(orm.clone());
    let statement =
        |sql: &str| Statement::from_sql_and_values(DbBackend::Postgres, sql, ["Sleep".into()]);
    for transactions in [false, true] {
        let (raw, bemi) = (orm.clone(), bemi_orm.clone());
        pairs.push(Pair {
            what: if transactions {
                "SeaORM, transactions of 5 writes"
            } else {
                "SeaORM, each write on its own"
            },
            transactions,
            sql_key: true,
            contexts_repeat: true,
            reference: false,
            raw: Arc::new(move |_, _| {
                let conn = raw.clone();
                Box::pin(async move {
                    if transactions {
                        let tx = conn.begin().await?;
                        for _ in 0..TRANSACTION_WRITES {
                            tx.execute_raw(statement(INSERT_PLAIN)).await?;
                        }
                        tx.commit().await?;
                        Ok(TRANSACTION_WRITES)
                    } else {
                        conn.execute_raw(statement(INSERT_PLAIN)).await?;
                        Ok(1)
                    }
                })
            }),
            tracked: Arc::new(move |_, n| {
                let conn = bemi.clone();
                Box::pin(context::scope(request(n), async move {
                    if transactions {
                        let tx = conn.begin().await?;
                        for _ in 0..TRANSACTION_WRITES {
                            tx.execute_raw(statement(INSERT_TRACKED)).await?;
                        }
                        tx.commit().await?;
                        Ok(TRANSACTION_WRITES)
                    } else {
                        conn.execute_raw(statement(INSERT_TRACKED)).await?;
                        Ok(1)
                    }
                }))
            }),
        });
    }

    // diesel-async: one connection per writer.
    let mut raw_diesel = Vec::new();
    let mut bemi_diesel = Vec::new();
    for _ in 0..WRITERS {
        raw_diesel.push(Arc::new(Mutex::new(
            AsyncPgConnection::establish(url).await?,
        )));
        bemi_diesel.push(Arc::new(Mutex::new(
            BemiAsyncPgConnection::establish(url).await?,
        )));
    }
    for transactions in [false, true] {
        let (raw, bemi) = (raw_diesel.clone(), bemi_diesel.clone());
        pairs.push(Pair {
            what: if transactions {
                "diesel-async, transactions of 5 writes"
            } else {
                "diesel-async, each write on its own"
            },
            transactions,
            sql_key: true,
            contexts_repeat: true,
            reference: false,
            raw: Arc::new(move |writer, _| {
                let conn = Arc::clone(&raw[writer]);
                Box::pin(async move {
                    let mut conn = conn.lock().await;
                    diesel_writes(&mut *conn, INSERT_PLAIN, transactions).await
                })
            }),
            tracked: Arc::new(move |writer, n| {
                let conn = Arc::clone(&bemi[writer]);
                Box::pin(context::scope(request(n), async move {
                    let mut conn = conn.lock().await;
                    diesel_writes(&mut *conn, INSERT_TRACKED, transactions).await
                }))
            }),
        });
    }
    Ok(pairs)
}

/// One write, or a transaction of [`TRANSACTION_WRITES`], through a diesel-async connection
/// (the transaction by its transaction manager, as `AsyncConnection::transaction` does).
async fn diesel_writes<C>(
    conn: &mut C,
    sql: &'static str,
    transactions: bool,
) -> anyhow::Result<u64>
where
    C: diesel_async::AsyncConnection<Backend = diesel::pg::Pg> + Send,
{
    use diesel_async::TransactionManager as _;

    if !transactions {
        diesel::sql_query(sql)
            .bind::<diesel::sql_types::Text, _>("Sleep")
            .execute(conn)
            .await?;
        return Ok(1);
    }
    C::TransactionManager::begin_transaction(conn).await?;
    for _ in 0..TRANSACTION_WRITES {
        diesel::sql_query(sql)
            .bind::<diesel::sql_types::Text, _>("Sleep")
            .execute(conn)
            .await?;
    }
    C::TransactionManager::commit_transaction(conn).await?;
    Ok(TRANSACTION_WRITES)
}

/// The limit rows: pgbench, prepared statements, [`WRITERS`] clients, alternating rounds.
async fn limits(env: &Env, url: &str, sizes: &Sizes, meter: CpuMeter) -> anyhow::Result<Vec<Row>> {
    let context = r#"{"user_id": 187234, "endpoint": "/todo", "method": "POST"}"#;
    let emit = format!("SELECT pg_logical_emit_message(true, '_bemi', '{context}');\n");
    let insert = "INSERT INTO plain (task) VALUES ('Sleep');\n";
    let scripts = [
        (
            "each write on its own: the emission and the INSERT pipelined in one Sync ÷ the INSERT alone",
            insert.to_owned(),
            format!("\\startpipeline\n{emit}{insert}\\endpipeline\n"),
            1,
        ),
        (
            "transactions of 5 writes: one emission per transaction ÷ none",
            format!("BEGIN;\n{}COMMIT;\n", insert.repeat(5)),
            format!("BEGIN;\n{emit}{}COMMIT;\n", insert.repeat(5)),
            TRANSACTION_WRITES,
        ),
    ];
    let dir = std::env::temp_dir().join(format!("bemi-bench-pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pgbench = env
        .bin_dir()
        .map_or_else(|| "pgbench".into(), |dir| dir.join("pgbench"));
    let mut rows = Vec::new();
    for (index, (what, base, with, writes)) in scripts.into_iter().enumerate() {
        let base_file = dir.join(format!("base{index}.sql"));
        let with_file = dir.join(format!("with{index}.sql"));
        std::fs::write(&base_file, base)?;
        std::fs::write(&with_file, with)?;
        let (mut plain, mut emitting) = (Samples::default(), Samples::default());
        for round in 0..sizes.rounds {
            for emitting_first in [round % 2 == 1, round % 2 == 0] {
                let (file, samples) = if emitting_first {
                    (&with_file, &mut emitting)
                } else {
                    (&base_file, &mut plain)
                };
                let children = meter.children();
                let before = meter.read();
                let transactions = run_pgbench(&pgbench, url, file, sizes.round_time).await?;
                meter.settle(children, Duration::from_secs(10)).await;
                let used = meter.read() - before;
                samples
                    .0
                    .push(used.server * 1e6 / (transactions * writes).max(1) as f64);
            }
        }
        rows.push(Row::ratio(
            "P2-cpu-limit",
            &format!("server CPU per write, pgbench, {WRITERS} clients, {what}"),
            plain.show("µs"),
            emitting.show("µs"),
            &emitting.ratios_to(&plain),
            Goal::None,
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// Runs one pgbench round; the transactions it processed.
async fn run_pgbench(
    pgbench: &std::path::Path,
    url: &str,
    script: &std::path::Path,
    duration: Duration,
) -> anyhow::Result<u64> {
    let seconds = duration.as_secs().max(1).to_string();
    let output = tokio::process::Command::new(pgbench)
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &WRITERS.to_string(),
            "-j",
            "2",
            "-T",
        ])
        .arg(&seconds)
        .arg("-f")
        .arg(script)
        .arg(url)
        .output()
        .await
        .map_err(|error| anyhow::anyhow!("could not run {}: {error}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("number of transactions actually processed: ")
                .and_then(|rest| rest.split('/').next())
                .and_then(|n| n.trim().parse().ok())
        })
        .ok_or_else(|| anyhow::anyhow!("pgbench printed no transaction count: {stdout}"))
}
