//! P8: the web UI's server time on a large audit trail — the filtered change list, a row's
//! timeline and page 1 of the unfiltered list, each the 95th percentile of many requests to the
//! router (in-process: the time the server spends, from request to the last byte of the page).

use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::StreamExt as _;
use http::Request;
use tower::ServiceExt as _;

use crate::env::{Env, Sizes};
use crate::report::{Goal, Row, Verdict};
use crate::stats::human;

/// The synthetic audit trail, changes `$2..=$3` of `$1`: three tables, 50 000 rows, 1 000 users,
/// one change per 100 ms of the last `$1 / 10` seconds.
const GENERATE: &str = "INSERT INTO changes (primary_key, before, after, context, database, schema, \
     \"table\", operation, committed_at, queued_at, transaction_id, position) \
   SELECT (i % 50000)::text, \
          CASE WHEN i % 4 = 0 THEN '{}'::jsonb \
               ELSE jsonb_build_object('id', i % 50000, 'task', 'task ' || (i - 1), 'done', false) END, \
          jsonb_build_object('id', i % 50000, 'task', 'task ' || i, 'done', i % 2 = 0), \
          jsonb_build_object('user_id', i % 1000, 'endpoint', '/todo/' || (i % 50000), \
                             'method', 'PUT', 'SQL', 'UPDATE todo SET task = $1 WHERE id = $2'), \
          'app', 'public', (ARRAY['todo', 'invoice', 'payment'])[i % 3 + 1], \
          CASE WHEN i % 4 = 0 THEN 'CREATE' ELSE 'UPDATE' END, \
          now() - make_interval(secs => ($1 - i) / 10.0), now() - make_interval(secs => ($1 - i) / 10.0), \
          i / 3, i \
     FROM generate_series($2::int8, $3::int8) AS i";

/// P8's three rows.
pub(crate) async fn p8_ui(env: &Env, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let db = env.database("bench_p8").await?;
    let mut conn = db.pool.acquire().await?;
    bemi_audit::schema::prepare(&mut conn).await?;
    let started = Instant::now();
    let total = i64::from(sizes.ui_changes);
    for first in (1..=total).step_by(100_000) {
        sqlx::query(GENERATE)
            .bind(total)
            .bind(first)
            .bind((first + 99_999).min(total))
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("ANALYZE changes").execute(&mut *conn).await?;
    drop(conn);
    eprintln!(
        "  {} changes written in {:.0?}",
        sizes.ui_changes,
        started.elapsed()
    );

    // Requests name a loopback Host: without a token or public URL the UI answers no other.
    let router = bemi_ui::router(db.pool.clone(), bemi_ui::UiOptions::new());
    let pages = [
        (
            "filtered change list (one user's changes, newest first)",
            "/?context=user_id%3D42",
        ),
        ("a row's timeline", "/rows/todo/12345"),
        ("page 1 of the unfiltered change list", "/"),
    ];
    let mut rows = Vec::new();
    for (what, path) in pages {
        let mut times = Vec::with_capacity(sizes.ui_requests);
        for n in 0..sizes.ui_requests + 3 {
            let request = Request::get(path)
                .header("host", "127.0.0.1")
                .body(Body::empty())?;
            let started = Instant::now();
            let response = router.clone().oneshot(request).await?;
            anyhow::ensure!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
            let body = axum::body::to_bytes(response.into_body(), 64 << 20).await?;
            let elapsed = started.elapsed();
            anyhow::ensure!(body.len() > 1_000, "{path}: an empty page");
            // The first requests warm the pool and PostgreSQL's caches.
            if n >= 3 {
                times.push(elapsed);
            }
        }
        let p95 = percentile(&mut times, 0.95).as_secs_f64() * 1e3;
        rows.push(Row {
            id: "P8".to_owned(),
            what: format!(
                "web UI server time, p95 of {} requests, {} changes: {what}",
                sizes.ui_requests, sizes.ui_changes
            ),
            baseline: "—".to_owned(),
            tracked: format!("{} ms", human(p95)),
            ratio: None,
            goal: Goal::Text("≤ 50 ms"),
            verdict: Verdict::of(p95 <= 50.0),
        });
    }
    rows.push(export_memory(&router, sizes).await?);
    Ok(rows)
}

/// The NDJSON export of every change, read as it streams: how much the process's resident
/// memory grows meanwhile (the export reads 1 000 changes per query, so it should not).
async fn export_memory(router: &axum::Router, sizes: &Sizes) -> anyhow::Result<Row> {
    let before = resident_kib()?;
    let mut peak = before;
    let started = Instant::now();
    let request = Request::get("/export.ndjson")
        .header("host", "127.0.0.1")
        .body(Body::empty())?;
    let response = router.clone().oneshot(request).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "export: {}",
        response.status()
    );
    let mut body = response.into_body().into_data_stream();
    let (mut lines, mut chunks) = (0_u64, 0_u64);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        lines += chunk.iter().filter(|byte| **byte == b'\n').count() as u64;
        chunks += 1;
        if chunks % 16 == 0 {
            peak = peak.max(resident_kib()?);
        }
    }
    peak = peak.max(resident_kib()?);
    anyhow::ensure!(
        lines == u64::from(sizes.ui_changes),
        "the export held {lines} changes, not {}",
        sizes.ui_changes
    );
    let growth_mib = (peak.saturating_sub(before)) as f64 / 1024.0;
    Ok(Row {
        id: "P8-export".to_owned(),
        what: format!(
            "web UI: `/export.ndjson` of all {} changes, read as it streams: growth of the process's resident memory",
            sizes.ui_changes
        ),
        baseline: format!("{lines} lines in {:.1} s", started.elapsed().as_secs_f64()),
        tracked: format!("{} MiB", human(growth_mib)),
        ratio: None,
        goal: Goal::Text("flat: ≤ 64 MiB"),
        verdict: Verdict::of(growth_mib <= 64.0),
    })
}

/// This process's resident memory (`VmRSS`), in KiB.
fn resident_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/self/status"))
}

fn percentile(times: &mut [Duration], q: f64) -> Duration {
    times.sort_unstable();
    let rank = ((times.len() as f64) * q).ceil() as usize;
    times[rank.clamp(1, times.len()) - 1]
}
