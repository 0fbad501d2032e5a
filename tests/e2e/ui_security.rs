//! The web UI secure by default, over real HTTP on 127.0.0.1 (issue 22): only its own `Host`
//! (DNS rebinding), writes only from its own origin with a CSRF token bound to the session and
//! the actor, `bemi ui`'s server-side sessions (never the token in a cookie, logout, expiry,
//! failed logins limited), live tails capped and ended when their caller loses access, and
//! reverts checked by the host app's policy and a default limit — nothing written when refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_core::context;
use bemi_tests::poll::wait_until;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestDb, TestResult, ctx, todo_db};
use bemi_ui::{Access, UiOptions};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::json;

use crate::serve;

/// The `Set-Cookie` header that sets `name`, whole.
pub(crate) fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// `name=value` of a `Set-Cookie` header.
pub(crate) fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_owned()
}

/// The CSRF token a page carries (`data-csrf`).
pub(crate) fn page_token(body: &str) -> anyhow::Result<String> {
    let start = body
        .find("data-csrf=\"")
        .context("no data-csrf on the page")?
        + 11;
    let end = body[start..].find('"').context("data-csrf unterminated")?;
    Ok(body[start..start + end].to_owned())
}

/// A page's CSRF cookie (`name=value`) and token, fetched with `headers`.
pub(crate) async fn csrf_pair(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    cookie_name: &str,
) -> anyhow::Result<(String, String)> {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let page = request.send().await?;
    let cookie = set_cookie(page.headers(), cookie_name)
        .map(|c| pair(&c))
        .context("no CSRF cookie")?;
    let token = page_token(&page.text().await?)?;
    Ok((cookie, token))
}

/// Starts a worker on `db` and writes two tasks in the context `{"user_id": "u1",
/// "request_id": "r-1"}` (one request), once both are in `changes`.
pub(crate) async fn two_tasks_captured(db: &TestDb) -> anyhow::Result<RunningWorker> {
    let worker = RunningWorker::start(worker_config(db)).await?;
    let pool = db.bemi_pool();
    context::scope(ctx(json!({"user_id": "u1", "request_id": "r-1"})), async {
        sqlx::query("INSERT INTO todo (task) VALUES ('Sleep'), ('Eat')")
            .execute(&pool)
            .await
    })
    .await?;
    wait_for_changes(db, 2).await?;
    Ok(worker)
}

/// How many rows `todo` holds.
pub(crate) async fn todo_rows(db: &TestDb) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM todo")
        .fetch_one(&db.pool)
        .await?)
}

async fn the_ui_serves_only_its_own_host_and_origin_and_reverts_within_policy(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "ui_security").await?;
    let worker = two_tasks_captured(&db).await?;
    let todo_count = || todo_rows(&db);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    // DNS rebinding: without a token only loopback names are served — the exports included.
    let (open, _stop_open) =
        serve::axum_base(bemi_ui::router(db.pool.clone(), UiOptions::new())).await?;
    let port = open.rsplit(':').next().context("a port")?.to_owned();
    for path in ["/", "/export.ndjson", "/api/changes", "/assets/bemi.js"] {
        let rebound = client
            .get(format!("{open}{path}"))
            .header("host", format!("attacker.example:{port}"))
            .send()
            .await?;
        ensure!(
            rebound.status() == StatusCode::MISDIRECTED_REQUEST,
            "{path}: {}",
            rebound.status()
        );
        ensure!(rebound.text().await?.contains("--public-url"), "{path}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("[::1]:{port}"),
    ] {
        let ok = client
            .get(format!("{open}/export.ndjson"))
            .header("host", &host)
            .send()
            .await?;
        ensure!(ok.status() == StatusCode::OK, "{host}: {}", ok.status());
    }
    // A public URL names the one host served; https makes the cookies __Host- and Secure.
    let (public, _stop_public) = serve::axum_base(bemi_ui::router(
        db.pool.clone(),
        UiOptions::new().public_url("https://audit.example.com")?,
    ))
    .await?;
    let named = client
        .get(format!("{public}/"))
        .header("host", "audit.example.com")
        .send()
        .await?;
    ensure!(named.status() == StatusCode::OK, "{}", named.status());
    let cookie = set_cookie(named.headers(), "__Host-bemi_csrf").context("__Host- cookie")?;
    for attribute in ["Path=/;", "HttpOnly", "SameSite=Strict", "Secure"] {
        ensure!(cookie.contains(attribute), "{attribute}: {cookie}");
    }
    let loopback = client.get(format!("{public}/")).send().await?;
    ensure!(loopback.status() == StatusCode::MISDIRECTED_REQUEST);

    // A host app's router where everyone may revert (like `bemi dev`), the actor from a header.
    let options = UiOptions::new()
        .authorize(|parts| {
            let user = parts
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("anonymous")
                .to_owned();
            async move { Access::revert().actor(json!({"user_id": user})) }
        })
        .revert_policy(|check| {
            if check.actor().get("user_id") == Some(&json!("intern"))
                && check.tables().contains_key("public.todo")
            {
                return Err("interns may not revert todo: ask an admin".into());
            }
            Ok(())
        })
        .max_revert_changes(1);
    let (base, _stop) = serve::axum_base(bemi_ui::router(db.pool.clone(), options)).await?;
    // A user's CSRF cookie and token, from the UI's page.
    let csrf_of = async |user: &str| {
        csrf_pair(
            &client,
            &format!("{base}/"),
            &[("x-user", user)],
            "bemi_csrf",
        )
        .await
    };
    let (cookie, token) = csrf_of("admin").await?;
    let first: uuid::Uuid = sqlx::query_scalar("SELECT id FROM changes ORDER BY position LIMIT 1")
        .fetch_one(&db.pool)
        .await?;
    let post = |user: &str, cookie: &str, token: &str, site: Option<&str>, origin: Option<&str>| {
        let mut request = client
            .post(format!("{base}/api/revert"))
            .header("x-user", user)
            .header("cookie", cookie)
            .header("x-csrf-token", token)
            .json(&json!({"change": first, "dry_run": false}));
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    // A sibling subdomain (same-site), another site, no origin at all, an origin of another
    // port: refused.
    for (site, origin) in [
        (Some("same-site"), Some("http://evil.127.0.0.1.nip.example")),
        (Some("cross-site"), None),
        (None, None),
        (None, Some("http://127.0.0.1:1")),
        (Some("none"), Some(base.as_str())),
    ] {
        let response = post("admin", &cookie, &token, site, origin).await?;
        ensure!(
            response.status() == StatusCode::FORBIDDEN,
            "{site:?} {origin:?}: {}",
            response.status()
        );
        ensure!(response.text().await?.contains("CSRF"));
    }
    // A second cookie planted by a sibling subdomain (sent first): the sibling's posts are
    // refused above, and the user's own page still works with it (below).
    let (other_cookie, _) = csrf_of("admin").await?;
    let planted = format!("{other_cookie}; {cookie}");
    // Another user's cookie and token (the attacker's own): bound to that user, refused.
    let (mallory_cookie, mallory_token) = csrf_of("mallory").await?;
    let response = post(
        "admin",
        &mallory_cookie,
        &mallory_token,
        Some("same-origin"),
        None,
    )
    .await?;
    ensure!(
        response.status() == StatusCode::FORBIDDEN,
        "another actor's token"
    );
    ensure!(todo_count().await? == 2, "a refused request wrote");

    // The policy sees the plan and the actor: the intern is refused, in the dry run too.
    let (intern_cookie, intern_token) = csrf_of("intern").await?;
    let refused = post(
        "intern",
        &intern_cookie,
        &intern_token,
        Some("same-origin"),
        None,
    )
    .await?;
    ensure!(
        refused.status() == StatusCode::FORBIDDEN,
        "{}",
        refused.status()
    );
    ensure!(refused.text().await?.contains("ask an admin"));
    // The UI's limit (here 1 change): a request of two changes is refused, naming the CLI.
    let too_many = client
        .post(format!("{base}/api/revert"))
        .header("x-user", "admin")
        .header("cookie", &cookie)
        .header("x-csrf-token", &token)
        .header("origin", &base)
        .json(&json!({"context": {"request_id": "r-1"}, "dry_run": false}))
        .send()
        .await?;
    ensure!(
        too_many.status() == StatusCode::FORBIDDEN,
        "{}",
        too_many.status()
    );
    ensure!(too_many.text().await?.contains("--max-changes"));
    ensure!(todo_count().await? == 2, "a refused revert wrote");

    // The admin from the UI's own origin: written (a planted cookie next to its own changes
    // nothing).
    let done = post("admin", &planted, &token, None, Some(base.as_str())).await?;
    ensure!(
        done.status() == StatusCode::OK,
        "{}: {}",
        done.status(),
        done.text().await?
    );
    ensure!(todo_count().await? == 1);
    wait_for_changes(&db, 3).await?;
    worker.stop().await?;
    Ok(())
}
e2e_test!(the_ui_serves_only_its_own_host_and_origin_and_reverts_within_policy);

async fn bemi_ui_sessions_are_server_side_expire_log_out_and_limit_failed_logins(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("ui_sessions").await?;
    let mut conn = db.pool.acquire().await?;
    bemi_audit::schema::prepare(&mut conn).await?;
    drop(conn);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let host = "audit.example.com";
    let origin = "https://audit.example.com";
    let (base, _stop) = serve::axum_base(bemi_ui::router(
        db.pool.clone(),
        UiOptions::new().token("s3cret", false).public_url(origin)?,
    ))
    .await?;
    let login = |token: &'static str, cookie: String, csrf: String| {
        client
            .post(format!("{base}/login"))
            .header("host", host)
            .header("origin", origin)
            .header("cookie", cookie)
            .form(&[("token", token), ("csrf_token", csrf.as_str())])
            .send()
    };
    let (cookie, csrf) = csrf_pair(
        &client,
        &format!("{base}/login"),
        &[("host", host)],
        "__Host-bemi_csrf",
    )
    .await?;
    // The login exchanges the token for a random session id: Secure, HttpOnly, Strict, expiring.
    let signed_in = login("s3cret", cookie.clone(), csrf.clone()).await?;
    ensure!(
        signed_in.status() == StatusCode::SEE_OTHER,
        "{}",
        signed_in.status()
    );
    let session = set_cookie(signed_in.headers(), "__Host-bemi_session").context("a session")?;
    ensure!(
        !session.contains("s3cret"),
        "the token is in the cookie: {session}"
    );
    for attribute in [
        "Path=/;",
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Max-Age=43200",
    ] {
        ensure!(session.contains(attribute), "{attribute}: {session}");
    }
    let session = pair(&session);
    let id = session.split_once('=').map(|(_, v)| v).unwrap_or_default();
    ensure!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let open = |cookie: String| {
        client
            .get(format!("{base}/"))
            .header("host", host)
            .header("cookie", cookie)
            .send()
    };
    let page = open(session.clone()).await?;
    ensure!(page.status() == StatusCode::OK, "{}", page.status());
    let body = page.text().await?;
    ensure!(body.contains("id=\"logout\""), "no sign-out button");
    // A forged session id is no session.
    let forged = open(format!("__Host-bemi_session={}", "0".repeat(64))).await?;
    ensure!(forged.status() == StatusCode::UNAUTHORIZED);
    // Logout ends the session on the server: the old cookie no longer opens a page.
    let logout = client
        .post(format!("{base}/logout"))
        .header("host", host)
        .header("origin", origin)
        .header("cookie", &session)
        .form(&[("csrf_token", page_token(&body)?)])
        .send()
        .await?;
    ensure!(
        logout.status() == StatusCode::SEE_OTHER,
        "{}",
        logout.status()
    );
    ensure!(
        set_cookie(logout.headers(), "__Host-bemi_session")
            .is_some_and(|c| c.contains("Max-Age=0"))
    );
    ensure!(open(session.clone()).await?.status() == StatusCode::UNAUTHORIZED);

    // Failed logins: five, then 429 — even with the right token — for a while.
    for _ in 0..5 {
        let wrong = login("guess", cookie.clone(), csrf.clone()).await?;
        ensure!(
            wrong.status() == StatusCode::UNAUTHORIZED,
            "{}",
            wrong.status()
        );
    }
    let limited = login("s3cret", cookie.clone(), csrf.clone()).await?;
    ensure!(
        limited.status() == StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.status()
    );
    ensure!(limited.headers().contains_key("retry-after"));
    let bearer = client
        .get(format!("{base}/api/changes"))
        .header("host", host)
        .bearer_auth("s3cret")
        .send()
        .await?;
    ensure!(bearer.status() == StatusCode::TOO_MANY_REQUESTS);

    // Sessions expire.
    let (short, _stop_short) = serve::axum_base(bemi_ui::router(
        db.pool.clone(),
        UiOptions::new()
            .token("s3cret", false)
            .session_ttl(Duration::from_secs(2))
            .tail_recheck(Duration::from_millis(100)),
    ))
    .await?;
    let (cookie, csrf) = csrf_pair(&client, &format!("{short}/login"), &[], "bemi_csrf").await?;
    let signed_in = client
        .post(format!("{short}/login"))
        .header("origin", &short)
        .header("cookie", &cookie)
        .form(&[("token", "s3cret"), ("csrf_token", csrf.as_str())])
        .send()
        .await?;
    let session = set_cookie(signed_in.headers(), "bemi_session")
        .map(|c| pair(&c))
        .context("a session")?;
    // A live tail of the session streams until the session expires, then ends.
    let mut tail = client
        .get(format!("{short}/api/tail"))
        .header("cookie", &session)
        .send()
        .await?;
    ensure!(tail.status() == StatusCode::OK, "{}", tail.status());
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while tail.chunk().await?.is_some() {}
        anyhow::Ok(())
    })
    .await;
    ensure!(
        matches!(ended, Ok(Ok(()))),
        "the tail outlived its session: {ended:?}"
    );
    wait_until("the session to expire", Duration::from_secs(10), || async {
        let page = client
            .get(format!("{short}/"))
            .header("cookie", &session)
            .send()
            .await?;
        Ok((page.status() == StatusCode::UNAUTHORIZED).then_some(()))
    })
    .await?;
    Ok(())
}
e2e_test!(bemi_ui_sessions_are_server_side_expire_log_out_and_limit_failed_logins);

async fn live_tails_are_capped_and_end_when_their_caller_loses_access(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("ui_tails").await?;
    let mut conn = db.pool.acquire().await?;
    bemi_audit::schema::prepare(&mut conn).await?;
    drop(conn);
    let allowed = Arc::new(AtomicBool::new(true));
    let options = UiOptions::new()
        .authorize({
            let allowed = Arc::clone(&allowed);
            move |_| {
                let may = allowed.load(Ordering::SeqCst);
                async move {
                    if may {
                        Access::read()
                    } else {
                        Access::denied()
                    }
                }
            }
        })
        .max_tails(2)
        .tail_recheck(Duration::from_millis(100));
    let (base, _stop) = serve::axum_base(bemi_ui::router(db.pool.clone(), options)).await?;
    let client = reqwest::Client::new();
    let mut open = Vec::new();
    for _ in 0..2 {
        let tail = client.get(format!("{base}/api/tail")).send().await?;
        ensure!(tail.status() == StatusCode::OK, "{}", tail.status());
        open.push(tail);
    }
    let third = client.get(format!("{base}/api/tail")).send().await?;
    ensure!(
        third.status() == StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        third.status()
    );
    ensure!(third.text().await?.contains("max_tails"));

    // Access withdrawn: both streams end on their own.
    allowed.store(false, Ordering::SeqCst);
    for mut tail in open {
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            while tail.chunk().await?.is_some() {}
            anyhow::Ok(())
        })
        .await;
        ensure!(
            matches!(ended, Ok(Ok(()))),
            "a tail kept streaming: {ended:?}"
        );
    }
    // Their places are free again.
    allowed.store(true, Ordering::SeqCst);
    wait_until(
        "a free place among the tails",
        Duration::from_secs(10),
        || async {
            let tail = client.get(format!("{base}/api/tail")).send().await?;
            Ok((tail.status() == StatusCode::OK).then_some(()))
        },
    )
    .await?;
    Ok(())
}
e2e_test!(live_tails_are_capped_and_end_when_their_caller_loses_access);
