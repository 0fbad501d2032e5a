//! What tracking costs the application: P1 (the Tower layer), P2 (single-row inserts through the
//! adapter and the trigger), P3 (a large UPDATE: time and WAL).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bemi_axum::BemiLayer;
use bemi_core::carrier::Carrier;
use bemi_core::context;
use bemi_sqlx::BemiPool;
use bemi_tokio_postgres::BemiClient;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::env::{Env, Sizes};
use crate::report::{Goal, Row};
use crate::stats::{Variant, human, interleaved, rotated};

/// The most requests or inserts one round may make, whatever the time.
const MAX_OPERATIONS_PER_ROUND: u64 = 5_000_000;

/// The context closure of a typical app: user from a header, endpoint and method.
fn request_context(request: &http::Request<Body>) -> serde_json::Value {
    let user = request
        .headers()
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    json!({"user_id": user, "endpoint": request.uri().path(), "method": request.method().as_str()})
}

/// P1: requests/s of a write-free handler with `BemiLayer` ÷ without, same in-process HTTP/1
/// load generator over real TCP (16 keep-alive connections).
pub(crate) async fn p1_layer(sizes: &Sizes) -> anyhow::Result<Row> {
    let plain = serve(Router::new().route("/hello", get(|| async { "hello" }))).await?;
    let tracked = serve(
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .layer(BemiLayer::new(request_context)),
    )
    .await?;
    let (base, with) = interleaved(
        sizes.rounds,
        || load(plain, sizes.round_time),
        || load(tracked, sizes.round_time),
    )
    .await?;
    Ok(Row::ratio(
        "P1",
        "axum write-free handler, requests/s: with BemiLayer ÷ without",
        base.show("req/s"),
        with.show("req/s"),
        &with.ratios_to(&base),
        Goal::AtLeast(0.97),
    ))
}

async fn serve(app: Router) -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// Requests per second against `addr` for `duration`, over 16 keep-alive connections.
async fn load(addr: std::net::SocketAddr, duration: Duration) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..16u64 {
        let done = Arc::clone(&done);
        tasks.spawn(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await?;
            tokio::spawn(conn);
            while Instant::now() < deadline
                && done.load(Ordering::Relaxed) < MAX_OPERATIONS_PER_ROUND
            {
                let request = http::Request::get("/hello")
                    .header("host", "127.0.0.1")
                    .header("x-user-id", (187_000 + connection).to_string())
                    .body(Empty::new())?;
                let response = sender.send_request(request).await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "status {}",
                    response.status()
                );
                response.into_body().collect().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let started = Instant::now();
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

const TODO_COLUMNS: &str =
    "(id bigserial PRIMARY KEY, task text NOT NULL, is_completed boolean NOT NULL DEFAULT false)";

/// P2: single-row INSERTs per second, each in its own request context, into a table with the
/// trigger ÷ raw driver calls into a table without it; 4 concurrent writers (one connection
/// each), `synchronous_commit=off` so that CPU costs show. For sqlx and tokio-postgres, each
/// write on its own (autocommit) and in transactions of 5 writes, with the adapters' default
/// carriers (`Carrier::Auto`); sqlx's other carrier outside a transaction (the message) as a
/// reference. P2-latency times one connection's sequential writes.
pub(crate) async fn p2_inserts(env: &Env, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let db = env.database("bench_p2").await?;
    db.exec(&format!(
        "ALTER DATABASE bench_p2 SET synchronous_commit = off; \
         CREATE TABLE plain {TODO_COLUMNS}; CREATE TABLE tracked {TODO_COLUMNS};"
    ))
    .await?;
    bemi_sqlx::migration::migrate(&db.pool, Default::default()).await?;
    db.exec("DROP TRIGGER _bemi_statement_trigger ON plain")
        .await?;
    // New connections pick up synchronous_commit=off.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(WRITERS as u32)
        .connect(&db.url)
        .await?;
    // The default (`Carrier::Auto`): the comment outside a transaction, the message in one.
    let default = BemiPool::new(pool.clone());
    let message = BemiPool::new(pool.clone()).carrier(Carrier::Message);
    let mut raw_clients = Vec::new();
    let mut bemi_clients = Vec::new();
    for _ in 0..WRITERS {
        let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let statement = client.prepare(INSERT_PLAIN).await?;
        raw_clients.push(Arc::new(Mutex::new((client, statement))));
        let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let client = BemiClient::new(client);
        let statement = client.prepare(INSERT_TRACKED).await?;
        bemi_clients.push(Arc::new(Mutex::new((client, statement))));
    }
    // P2-latency's other shape for tokio-postgres (#27 item 3): `BEGIN` and the emission in one
    // simple-protocol query (the context a literal, parsed each time), then the prepared write
    // and `COMMIT` — what `transaction_pooler(true)` sends.
    let mut simple_clients = Vec::new();
    {
        let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let client = BemiClient::new(client).transaction_pooler(true);
        let statement = client.prepare(INSERT_TRACKED).await?;
        simple_clients.push(Arc::new(Mutex::new((client, statement))));
    }

    let time = sizes.round_time;
    let in_context = |n: u64| json!({"user_id": n, "endpoint": "/todo", "method": "POST"});
    let sqlx_auto = |pool: Option<BemiPool>| {
        let raw = pool_clone(&pool, &default);
        move |_: usize, n: u64| {
            let (raw, bemi) = (raw.clone(), pool.clone());
            async move {
                match bemi {
                    None => {
                        sqlx::query(INSERT_PLAIN)
                            .bind("Sleep")
                            .execute(&raw)
                            .await?
                    }
                    Some(bemi) => {
                        context::scope(in_context(n), async {
                            sqlx::query(INSERT_TRACKED)
                                .bind("Sleep")
                                .execute(&bemi)
                                .await
                        })
                        .await?
                    }
                };
                Ok(1)
            }
        }
    };
    let sqlx_tx = |tracked: bool| {
        let (raw, bemi) = (pool.clone(), default.clone());
        move |_: usize, n: u64| {
            let (raw, bemi) = (raw.clone(), bemi.clone());
            async move {
                if tracked {
                    context::scope(in_context(n), async {
                        let mut tx = bemi.begin().await?;
                        for _ in 0..TRANSACTION_WRITES {
                            sqlx::query(INSERT_TRACKED)
                                .bind("Sleep")
                                .execute(&mut tx)
                                .await?;
                        }
                        tx.commit().await
                    })
                    .await?;
                } else {
                    let mut tx = raw.begin().await?;
                    for _ in 0..TRANSACTION_WRITES {
                        sqlx::query(INSERT_PLAIN)
                            .bind("Sleep")
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                }
                Ok(TRANSACTION_WRITES)
            }
        }
    };
    let tokio_auto = |tracked: bool| {
        let (raw, bemi) = (raw_clients.clone(), bemi_clients.clone());
        move |writer: usize, n: u64| {
            let (raw, bemi) = (Arc::clone(&raw[writer]), Arc::clone(&bemi[writer]));
            async move {
                if tracked {
                    let guard = bemi.lock().await;
                    let (client, statement) = &*guard;
                    context::scope(in_context(n), client.execute(statement, &[&"Sleep"])).await?;
                } else {
                    let guard = raw.lock().await;
                    let (client, statement) = &*guard;
                    client.execute(statement, &[&"Sleep"]).await?;
                }
                Ok(1)
            }
        }
    };
    let tokio_auto_simple = || {
        let clients = simple_clients.clone();
        move |writer: usize, n: u64| {
            let client = Arc::clone(&clients[writer]);
            async move {
                let guard = client.lock().await;
                let (client, statement) = &*guard;
                context::scope(in_context(n), client.execute(statement, &[&"Sleep"])).await?;
                Ok(1)
            }
        }
    };
    let tokio_tx = |tracked: bool| {
        let (raw, bemi) = (raw_clients.clone(), bemi_clients.clone());
        move |writer: usize, n: u64| {
            let (raw, bemi) = (Arc::clone(&raw[writer]), Arc::clone(&bemi[writer]));
            async move {
                if tracked {
                    let mut guard = bemi.lock().await;
                    let (client, statement) = &mut *guard;
                    let statement = statement.clone();
                    context::scope(in_context(n), async {
                        let tx = client.transaction().await?;
                        for _ in 0..TRANSACTION_WRITES {
                            tx.execute(&statement, &[&"Sleep"]).await?;
                        }
                        tx.commit().await
                    })
                    .await?;
                } else {
                    let mut guard = raw.lock().await;
                    let (client, statement) = &mut *guard;
                    let statement = statement.clone();
                    let tx = client.transaction().await?;
                    for _ in 0..TRANSACTION_WRITES {
                        tx.execute(&statement, &[&"Sleep"]).await?;
                    }
                    tx.commit().await?;
                }
                Ok(TRANSACTION_WRITES)
            }
        }
    };

    // Writes the adapter does not see, into the tracked table: the trigger's own cost.
    let raw_tracked = |tagged: bool| {
        let raw = pool.clone();
        move |_: usize, _: u64| {
            let raw = raw.clone();
            async move {
                let sql = if tagged {
                    INSERT_TRACKED_SQLCOMMENTER
                } else {
                    INSERT_TRACKED
                };
                sqlx::query(sql).bind("Sleep").execute(&raw).await?;
                Ok(1)
            }
        }
    };

    macro_rules! variant {
        ($writers:expr, $op:expr) => {{
            let op = $op;
            let variant: Variant<'_> = Box::new(move || {
                let round: Round = Box::pin(inserts($writers, time, op.clone()));
                round
            });
            variant
        }};
    }
    let mut variants: Vec<Variant<'_>> = vec![
        variant!(WRITERS, sqlx_auto(None)),
        variant!(WRITERS, sqlx_auto(Some(default.clone()))),
        variant!(WRITERS, sqlx_auto(Some(message.clone()))),
        variant!(WRITERS, sqlx_tx(false)),
        variant!(WRITERS, sqlx_tx(true)),
        variant!(WRITERS, tokio_auto(false)),
        variant!(WRITERS, tokio_auto(true)),
        variant!(WRITERS, tokio_tx(false)),
        variant!(WRITERS, tokio_tx(true)),
        // P2-latency: one connection, sequential autocommit writes.
        variant!(1, sqlx_auto(None)),
        variant!(1, sqlx_auto(Some(default.clone()))),
        variant!(1, sqlx_auto(Some(message.clone()))),
        variant!(1, tokio_auto(false)),
        variant!(1, tokio_auto(true)),
        variant!(WRITERS, raw_tracked(false)),
        variant!(WRITERS, raw_tracked(true)),
        variant!(1, tokio_auto_simple()),
    ];
    let samples = rotated(sizes.rounds, &mut variants).await?;
    let tracked_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tracked")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(tracked_rows > 0, "the tracked variants inserted nothing");
    let row = |id: &str, what: &str, base: usize, with: usize, goal: Goal| {
        Row::ratio(
            id,
            what,
            samples[base].show("rows/s"),
            samples[with].show("rows/s"),
            &samples[with].ratios_to(&samples[base]),
            goal,
        )
    };
    // Latency: time per write, tracked ÷ untracked (the inverse of the rates).
    let latency = |what: &str, base: usize, with: usize, goal: Goal| {
        let per_write = |i: usize| 1e3 / samples[i].median();
        Row::ratio(
            "P2-latency",
            what,
            format!("{:.3} ms", per_write(base)),
            format!("{:.3} ms", per_write(with)),
            &samples[base].ratios_to(&samples[with]),
            goal,
        )
    };
    Ok(vec![
        row(
            "P2",
            "single-row INSERT/s, 4 writers, sqlx, autocommit: adapter (default: comment) + trigger ÷ raw sqlx, no trigger",
            0,
            1,
            Goal::AtLeast(0.90),
        ),
        row(
            "P2",
            "… sqlx, transactions of 5 writes (message)",
            3,
            4,
            Goal::AtLeast(0.90),
        ),
        row(
            "P2",
            "… tokio-postgres (prepared statement), autocommit",
            5,
            6,
            Goal::AtLeast(0.90),
        ),
        row(
            "P2",
            "… tokio-postgres (prepared statement), transactions of 5 writes",
            7,
            8,
            Goal::AtLeast(0.90),
        ),
        row(
            "P2-ref",
            "… sqlx, autocommit, the message carrier (BEGIN+emit, write, COMMIT) ÷ raw sqlx",
            0,
            2,
            Goal::None,
        ),
        row(
            "P2-ref",
            "… sqlx, autocommit, no context: the trigger alone (it finds no comment) ÷ no trigger",
            0,
            14,
            Goal::None,
        ),
        row(
            "P2-ref",
            "… the same with a sqlcommenter tag (the trigger emits it as the context) ÷ without",
            14,
            15,
            Goal::None,
        ),
        latency(
            "one connection, sequential autocommit writes, time per write: tokio-postgres, message (1 round trip: BEGIN+emit, write, COMMIT pipelined) ÷ raw (1)",
            12,
            13,
            Goal::AtMost(1.3),
        ),
        latency(
            "… tokio-postgres, the other shape: BEGIN and the emission in one simple query (a literal, parsed each time), the write, COMMIT ÷ raw (1)",
            12,
            16,
            Goal::None,
        ),
        latency(
            "… sqlx, default: comment (2 round trips: Parse/Describe, Bind/Execute; parsed each time) ÷ raw sqlx (1)",
            9,
            10,
            Goal::None,
        ),
        latency(
            "… sqlx, message (3 round trips: BEGIN+emit, write, COMMIT) ÷ raw sqlx (1)",
            9,
            11,
            Goal::None,
        ),
    ])
}

/// One measurement of a variant.
type Round = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<f64>> + Send>>;

/// Writers of P2, one connection each.
const WRITERS: usize = 4;
/// Writes per transaction in P2's transactional rows.
const TRANSACTION_WRITES: u64 = 5;
const INSERT_PLAIN: &str = "INSERT INTO plain (task) VALUES ($1)";
const INSERT_TRACKED: &str = "INSERT INTO tracked (task) VALUES ($1)";
/// As a Flask app's psycopg2 cursor with google-cloud-sqlcommenter sends it.
const INSERT_TRACKED_SQLCOMMENTER: &str = "INSERT INTO tracked (task) VALUES ($1) \
    /*controller='create_todo',framework='flask%3A3.1.3',route='/todo'*/";

/// The raw pool behind a bemi pool (or the default's).
fn pool_clone(pool: &Option<BemiPool>, default: &BemiPool) -> sqlx::PgPool {
    pool.as_ref().unwrap_or(default).inner().clone()
}

/// Rows per second of `writers` concurrent writers running `insert(writer, n)` (which returns
/// the rows it wrote) for `duration`.
async fn inserts<F, Fut>(writers: usize, duration: Duration, insert: F) -> anyhow::Result<f64>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let done = Arc::new(AtomicU64::new(0));
    let rows = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let (done, rows, insert) = (Arc::clone(&done), Arc::clone(&rows), insert.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline
                && done.load(Ordering::Relaxed) < MAX_OPERATIONS_PER_ROUND
            {
                let n = done.fetch_add(1, Ordering::Relaxed);
                rows.fetch_add(insert(writer, n).await?, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(rows.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// P3: a 50 000-row UPDATE with context and our statement trigger ÷ without trigger — time and
/// WAL bytes — and, as a reference, a per-row trigger emitting one message per row (the design
/// of Bemi's other libraries). All three tables are REPLICA IDENTITY FULL.
pub(crate) async fn p3_update(env: &Env, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let db = env.database("bench_p3").await?;
    let rows = sizes.update_rows;
    let table = "(id int PRIMARY KEY, n int NOT NULL, pad text NOT NULL)";
    db.exec(&format!(
        "CREATE TABLE plain {table}; CREATE TABLE tracked {table}; CREATE TABLE per_row {table};"
    ))
    .await?;
    bemi_sqlx::migration::migrate(&db.pool, Default::default()).await?;
    db.exec(&format!(
        "DROP TRIGGER _bemi_statement_trigger ON plain; \
         DROP TRIGGER _bemi_statement_trigger ON per_row; \
         CREATE FUNCTION bench_per_row_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ \
         DECLARE ctx text; \
         BEGIN \
           ctx := split_part(split_part(current_query(), '/*Bemi ', 2), ' Bemi*/', 1); \
           IF ctx <> '' THEN PERFORM pg_logical_emit_message(true, '_bemi', ctx); END IF; \
           RETURN NEW; \
         END $$; \
         CREATE TRIGGER per_row BEFORE INSERT OR UPDATE OR DELETE ON per_row \
           FOR EACH ROW EXECUTE FUNCTION bench_per_row_trigger(); \
         INSERT INTO plain SELECT i, 0, md5(i::text) FROM generate_series(1, {rows}) i; \
         INSERT INTO tracked SELECT * FROM plain; INSERT INTO per_row SELECT * FROM plain;"
    ))
    .await?;
    db.exec("VACUUM ANALYZE").await?;
    let bemi = BemiPool::new(db.pool.clone());
    let run = |table: &'static str, annotated: bool| {
        let (db, bemi) = (&db, bemi.clone());
        async move {
            db.exec(&format!("VACUUM {table}")).await?;
            let wal_before = db.wal_position().await?;
            let sql = format!("UPDATE {table} SET n = n + 1");
            let started = Instant::now();
            if annotated {
                let ctx = json!({"user_id": 187234, "endpoint": "/todo", "method": "PUT"});
                let ctx = ctx.as_object().cloned().unwrap_or_default();
                context::scope(ctx, async {
                    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&bemi).await
                })
                .await?;
            } else {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&db.pool)
                    .await?;
            }
            let seconds = started.elapsed().as_secs_f64();
            let wal = (db.wal_position().await? - wal_before) as f64;
            anyhow::Ok((seconds, wal))
        }
    };
    let (mut plain, mut tracked, mut per_row) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..sizes.rounds {
        // Rotate the order so that none always runs first.
        for step in 0..3 {
            match (round + step) % 3 {
                0 => plain.push(run("plain", false).await?),
                1 => tracked.push(run("tracked", true).await?),
                _ => per_row.push(run("per_row", true).await?),
            }
        }
    }
    let times = |v: &[(f64, f64)]| crate::stats::Samples(v.iter().map(|s| s.0 * 1000.0).collect());
    let wals =
        |v: &[(f64, f64)]| crate::stats::Samples(v.iter().map(|s| s.1 / 1024.0 / 1024.0).collect());
    let what = format!("{} row UPDATE", human(f64::from(rows)));
    Ok(vec![
        Row::ratio(
            "P3",
            &format!("{what}, time: statement trigger with context ÷ no trigger"),
            times(&plain).show("ms"),
            times(&tracked).show("ms"),
            &times(&tracked).ratios_to(&times(&plain)),
            Goal::AtMost(1.05),
        ),
        Row::ratio(
            "P3",
            &format!("{what}, WAL bytes: statement trigger with context ÷ no trigger"),
            wals(&plain).show("MiB"),
            wals(&tracked).show("MiB"),
            &wals(&tracked).ratios_to(&wals(&plain)),
            Goal::AtMost(1.05),
        ),
        Row::ratio(
            "P3-ref",
            &format!("{what}, time: per-row trigger (one message per row) ÷ no trigger"),
            times(&plain).show("ms"),
            times(&per_row).show("ms"),
            &times(&per_row).ratios_to(&times(&plain)),
            Goal::None,
        ),
        Row::ratio(
            "P3-ref",
            &format!("{what}, WAL bytes: per-row trigger ÷ no trigger"),
            wals(&plain).show("MiB"),
            wals(&per_row).show("MiB"),
            &wals(&per_row).ratios_to(&wals(&plain)),
            Goal::None,
        ),
    ])
}
