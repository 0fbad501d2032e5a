//! What tracking costs the application: P1 (the Tower layer), P2 (single-row inserts through the
//! adapter and the trigger), P3 (a large UPDATE: time and WAL).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bemi_axum::BemiLayer;
use bemi_core::context;
use bemi_core::sqlx::BemiPool;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

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
        with.median() / base.median(),
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

/// P2: single-row INSERTs per second through the sqlx adapter, each in its own request context,
/// with the trigger ÷ raw sqlx into a table without trigger; 4 concurrent writers,
/// `synchronous_commit=off` so that CPU costs show.
pub(crate) async fn p2_inserts(env: &Env, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let db = env.database("bench_p2").await?;
    db.exec(&format!(
        "ALTER DATABASE bench_p2 SET synchronous_commit = off; \
         CREATE TABLE plain {TODO_COLUMNS}; CREATE TABLE tracked {TODO_COLUMNS};"
    ))
    .await?;
    bemi_core::migration::migrate(&db.pool, Default::default()).await?;
    db.exec("DROP TRIGGER _bemi_statement_trigger ON plain")
        .await?;
    // New connections pick up synchronous_commit=off.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&db.url)
        .await?;
    let bemi = BemiPool::new(pool.clone());
    let raw = |unique_text: bool| {
        let pool = pool.clone();
        move |n: u64| {
            let pool = pool.clone();
            async move {
                if unique_text {
                    // A text of its own, as every annotated write has: no statement cache.
                    let sql = format!("INSERT INTO plain (task) VALUES ($1) /* {n} */");
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind("Sleep")
                        .persistent(false)
                        .execute(&pool)
                        .await
                } else {
                    sqlx::query("INSERT INTO plain (task) VALUES ($1)")
                        .bind("Sleep")
                        .execute(&pool)
                        .await
                }
            }
        }
    };
    let annotated = |table: &'static str| {
        let bemi = bemi.clone();
        move |n: u64| {
            let bemi = bemi.clone();
            let ctx = json!({"user_id": n, "endpoint": "/todo", "method": "POST"});
            let ctx = ctx.as_object().cloned().unwrap_or_default();
            let sql = if table == "plain" {
                "INSERT INTO plain (task) VALUES ($1)"
            } else {
                "INSERT INTO tracked (task) VALUES ($1)"
            };
            context::scope(ctx, async move {
                sqlx::query(sql).bind("Sleep").execute(&bemi).await
            })
        }
    };
    let time = sizes.round_time;
    let mut variants: Vec<Variant<'_>> = vec![
        Box::new(move || Box::pin(inserts(time, raw(false)))),
        Box::new(move || Box::pin(inserts(time, raw(true)))),
        Box::new(move || Box::pin(inserts(time, annotated("plain")))),
        Box::new(move || Box::pin(inserts(time, annotated("tracked")))),
    ];
    let samples = rotated(sizes.rounds, &mut variants).await?;
    let [base, unprepared, comment, with] = [0, 1, 2, 3].map(|i| samples[i].clone());
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM tracked")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(messages > 0, "the tracked variant inserted nothing");
    let reference = |what: &str, samples: &crate::stats::Samples| {
        Row::ratio(
            "P2-ref",
            what,
            base.show("rows/s"),
            samples.show("rows/s"),
            samples.median() / base.median(),
            Goal::None,
        )
    };
    Ok(vec![
        Row::ratio(
            "P2",
            "single-row INSERT/s, 4 writers: sqlx adapter with context + trigger ÷ raw sqlx, no trigger",
            base.show("rows/s"),
            with.show("rows/s"),
            with.median() / base.median(),
            Goal::AtLeast(0.90),
        ),
        reference(
            "… raw sqlx, a new statement text each time (parsed, not cached) ÷ raw sqlx",
            &unprepared,
        ),
        reference(
            "… sqlx adapter with context, table without trigger ÷ raw sqlx",
            &comment,
        ),
    ])
}

/// Inserts per second of 4 concurrent writers running `insert` for `duration`.
async fn inserts<F, Fut>(duration: Duration, insert: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<sqlx::postgres::PgQueryResult, sqlx::Error>> + Send + 'static,
{
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (done, insert) = (Arc::clone(&done), insert.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline
                && done.load(Ordering::Relaxed) < MAX_OPERATIONS_PER_ROUND
            {
                let n = done.fetch_add(1, Ordering::Relaxed);
                insert(n).await?;
            }
            Ok::<_, sqlx::Error>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
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
    bemi_core::migration::migrate(&db.pool, Default::default()).await?;
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
            times(&tracked).median() / times(&plain).median(),
            Goal::AtMost(1.05),
        ),
        Row::ratio(
            "P3",
            &format!("{what}, WAL bytes: statement trigger with context ÷ no trigger"),
            wals(&plain).show("MiB"),
            wals(&tracked).show("MiB"),
            wals(&tracked).median() / wals(&plain).median(),
            Goal::AtMost(1.05),
        ),
        Row::ratio(
            "P3-ref",
            &format!("{what}, time: per-row trigger (one message per row) ÷ no trigger"),
            times(&plain).show("ms"),
            times(&per_row).show("ms"),
            times(&per_row).median() / times(&plain).median(),
            Goal::None,
        ),
        Row::ratio(
            "P3-ref",
            &format!("{what}, WAL bytes: per-row trigger ÷ no trigger"),
            wals(&plain).show("MiB"),
            wals(&per_row).show("MiB"),
            wals(&per_row).median() / wals(&plain).median(),
            Goal::None,
        ),
    ])
}
