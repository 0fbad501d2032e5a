//! The web UI in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven over
//! WebDriver): filter by a user, open a diff, a row's timeline and a table as of a past instant,
//! dry-run and apply the revert of a request, watch a new change arrive in the live tail, and see
//! a hostile context rendered as text. Screenshots of each page go to
//! `target/tmp/ui-screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bemi_core::context;
use bemi_tests::poll::wait_until;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestResult, ctx, todo_db};
use bemi_ui::{Access, UiOptions};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::serve;
use crate::ui_security::csrf_pair;

/// A chromedriver on a free port of 127.0.0.1, killed on drop.
pub(crate) struct Chromedriver {
    url: String,
    _child: tokio::process::Child,
}

impl Chromedriver {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let binary = ["chromedriver", "/usr/bin/chromedriver"]
            .into_iter()
            .find(|candidate| {
                std::process::Command::new(candidate)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            })
            .context(
                "the browser tests need Chromium and its WebDriver: apt-get install chromium \
                 chromium-driver",
            )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = tokio::process::Command::new(binary)
            .args([
                format!("--port={port}"),
                "--allowed-ips=127.0.0.1".into(),
                "--log-level=WARNING".into(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver")?;
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        wait_until(
            "chromedriver to listen",
            Duration::from_secs(30),
            || async {
                Ok(reqwest::get(&status)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            },
        )
        .await?;
        Ok(Self { url, _child: child })
    }

    pub(crate) async fn browser(&self, profile: &std::path::Path) -> anyhow::Result<Client> {
        self.browser_with(profile, &[]).await
    }

    /// A browser with more command-line arguments (`--host-resolver-rules=…`).
    async fn browser_with(
        &self,
        profile: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Client> {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .context("no Chromium: apt-get install chromium")?;
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1366,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }
        });
        let mut capabilities = capabilities;
        if let Some(args) = capabilities["goog:chromeOptions"]["args"].as_array_mut() {
            args.extend(extra.iter().map(|arg| Value::String((*arg).to_owned())));
        }
        let Value::Object(capabilities) = capabilities else {
            bail!("capabilities are an object");
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        Ok(ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await?)
    }
}

fn screenshots() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub(crate) async fn screenshot(browser: &Client, name: &str) -> anyhow::Result<()> {
    let png = browser.screenshot().await?;
    std::fs::write(screenshots()?.join(format!("{name}.png")), png)?;
    Ok(())
}

/// The text of the first element `css` selects, waiting for it to exist.
pub(crate) async fn text_of(browser: &Client, css: &str) -> anyhow::Result<String> {
    let found = browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await;
    let element = match found {
        Ok(element) => element,
        Err(error) => {
            let url = browser.current_url().await.map(|u| u.to_string());
            bail!("no {css} on {url:?}: {error}");
        }
    };
    Ok(element.text().await?)
}

/// The link of the first change listed on the current page.
async fn first_change_link(browser: &Client) -> anyhow::Result<fantoccini::elements::Element> {
    Ok(browser.find(Locator::Css("tr.change td.time a")).await?)
}

/// Opens the change list at `url` and, from it, its first change.
async fn open_first_change(browser: &Client, url: &str) -> anyhow::Result<()> {
    browser.goto(url).await?;
    first_change_link(browser).await?.click().await?;
    Ok(())
}

async fn count(browser: &Client, css: &str) -> anyhow::Result<usize> {
    Ok(browser.find_all(Locator::Css(css)).await?.len())
}

async fn a_support_engineer_finds_diffs_history_and_reverts_a_request_in_chromium(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "ui_browser").await?;
    db.exec("ALTER TABLE todo ADD COLUMN secret text").await?;
    let worker = RunningWorker::start(worker_config(&db).redact(["todo.secret"])).await?;
    let pool = db.bemi_pool();
    let write = |context_value: Value, sql: &'static str| {
        let pool = pool.clone();
        async move {
            context::scope(ctx(context_value), sqlx::query(sql).execute(&pool)).await?;
            anyhow::Ok(())
        }
    };
    write(
        json!({"user_id": "alice", "request_id": "r-a1"}),
        "INSERT INTO todo (task) VALUES ('Buy milk'), ('Walk dog')",
    )
    .await?;
    wait_for_changes(&db, 2).await?;
    let before_bob = chrono::Utc::now();
    let mut tx = pool.begin().await?;
    context::scope(
        ctx(json!({"user_id": "bob", "request_id": "r-b1"})),
        async {
            sqlx::query("UPDATE todo SET task = 'Buy oat milk' WHERE id = 1")
                .execute(&mut tx)
                .await?;
            sqlx::query("DELETE FROM todo WHERE id = 2")
                .execute(&mut tx)
                .await
        },
    )
    .await?;
    tx.commit().await?;
    write(
        json!({
            "user_id": "<script>window.__xss=1</script>",
            "note": "\"><img src=x onerror=\"window.__xss=2\">",
            "link": "javascript:window.__xss=3",
        }),
        "INSERT INTO todo (task) VALUES ('<b>bold</b>')",
    )
    .await?;
    // A huge value and a redacted column.
    context::scope(
        ctx(json!({"user_id": "dave"})),
        sqlx::query("INSERT INTO todo (task, secret) VALUES ($1, $2)")
            .bind("x".repeat(300_000))
            .bind("hunter2")
            .execute(&pool),
    )
    .await?;
    wait_for_changes(&db, 6).await?;

    // The UI mounted in a host app at /audit, as a support engineer who may revert.
    let ui = bemi_ui::router(
        db.pool.clone(),
        UiOptions::new()
            .authorize(|_| async { Access::revert().actor(json!({"user_id": "support-1"})) }),
    );
    let (host, _stop) = serve::axum_base(axum::Router::new().nest("/audit", ui)).await?;
    let base = format!("{host}/audit");
    let driver = Chromedriver::start().await?;
    let profile = tempfile::tempdir()?;
    let browser = driver.browser(profile.path()).await?;
    let result = walk_through(&browser, &base, &db, &pool, before_bob).await;
    let _ = browser.close().await;
    result?;

    // The revert's writes: bob's request undone, as support-1.
    let changes = wait_for_changes(&db, 9).await?;
    worker.stop().await?;
    let reverts: Vec<&Value> = changes
        .iter()
        .filter(|c| c.context.get("revert_of").is_some())
        .map(|c| &c.context)
        .collect();
    ensure!(reverts.len() == 2, "{changes:#?}");
    for context in reverts {
        ensure!(
            context["user_id"] == "support-1"
                && context["revert_of"]["context"]["request_id"] == "r-b1",
            "{context}"
        );
    }
    Ok(())
}
e2e_test!(a_support_engineer_finds_diffs_history_and_reverts_a_request_in_chromium);

async fn walk_through(
    browser: &Client,
    base: &str,
    db: &bemi_tests::TestDb,
    pool: &bemi_sqlx::BemiPool,
    before_bob: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    // Filter by a user, with the form.
    browser.goto(base).await?;
    let context_input = browser
        .find(Locator::Css("form.filters input[name=context]"))
        .await?;
    context_input.send_keys("user_id=alice").await?;
    browser
        .find(Locator::Css("form.filters button[type=submit]"))
        .await?
        .click()
        .await?;
    wait_until("the filtered list", Duration::from_secs(20), || async {
        Ok(browser
            .current_url()
            .await?
            .as_str()
            .contains("context=user_id")
            .then_some(()))
    })
    .await?;
    ensure!(
        count(browser, "tr.change").await? == 2,
        "alice made two changes"
    );
    ensure!(
        text_of(browser, "table.changes")
            .await?
            .contains("request_id=r-a1")
    );
    screenshot(browser, "changes").await?;

    // Bob's UPDATE: its diff.
    open_first_change(
        browser,
        &format!("{base}?context=user_id%3Dbob&operation=UPDATE"),
    )
    .await?;
    let diff = text_of(browser, "table.diff").await?;
    ensure!(
        diff.contains("Buy milk") && diff.contains("Buy oat milk"),
        "{diff}"
    );
    let detail_url = browser.current_url().await?;
    screenshot(browser, "change").await?;

    // The row's timeline: alice's CREATE, bob's UPDATE.
    browser
        .find(Locator::LinkText("the row's timeline"))
        .await?
        .click()
        .await?;
    let timeline = text_of(browser, "ol.timeline").await?;
    ensure!(count(browser, "li.entry").await? == 2, "{timeline}");
    ensure!(
        timeline.contains("alice") && timeline.contains("bob"),
        "{timeline}"
    );
    screenshot(browser, "timeline").await?;

    // The table before bob's request: both of alice's rows, as she wrote them.
    let at = before_bob.format("%Y-%m-%dT%H:%M:%S%.6fZ");
    browser.goto(&format!("{base}/tables/todo?at={at}")).await?;
    let table = text_of(browser, "table.snapshot").await?;
    ensure!(
        count(browser, "table.snapshot tbody tr").await? == 2,
        "{table}"
    );
    ensure!(
        table.contains("Buy milk") && table.contains("Walk dog") && !table.contains("oat"),
        "{table}"
    );
    screenshot(browser, "table-as-of").await?;

    // Revert bob's request: the dry run first, then apply.
    browser.goto(detail_url.as_str()).await?;
    browser
        .find(Locator::Css("button[data-kind=request]"))
        .await?
        .click()
        .await?;
    let plan = text_of(browser, "#plan").await?;
    ensure!(plan.contains("UPDATE") && plan.contains("INSERT"), "{plan}");
    let unchanged: String = sqlx::query_scalar("SELECT task FROM todo WHERE id = 1")
        .fetch_one(&db.pool)
        .await?;
    ensure!(unchanged == "Buy oat milk", "the dry run wrote");
    screenshot(browser, "revert-dry-run").await?;
    browser.find(Locator::Css("#apply")).await?.click().await?;
    let done = text_of(browser, "p.done").await?;
    ensure!(done.contains("Reverted 2 changes"), "{done}");
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, task FROM todo WHERE id IN (1, 2) ORDER BY id")
            .fetch_all(&db.pool)
            .await?;
    ensure!(
        rows == [(1, "Buy milk".to_owned()), (2, "Walk dog".to_owned())],
        "{rows:?}"
    );

    // The live tail: a change made now appears without reloading.
    browser.goto(&format!("{base}/tail")).await?;
    wait_until("the tail to connect", Duration::from_secs(30), || async {
        Ok(text_of(browser, "#tail-status")
            .await?
            .starts_with("live")
            .then_some(()))
    })
    .await?;
    context::scope(
        ctx(json!({"user_id": "carol"})),
        sqlx::query("INSERT INTO todo (task) VALUES ('Call mom')").execute(pool),
    )
    .await?;
    wait_until(
        "carol's change in the tail",
        Duration::from_secs(30),
        || async {
            Ok(text_of(browser, "#tail tbody")
                .await?
                .contains("carol")
                .then_some(()))
        },
    )
    .await?;
    screenshot(browser, "live-tail").await?;

    // Hostile values: text on the page, never markup or script.
    for page in [
        base.to_owned(),
        format!("{base}?context=link%3Djavascript%3Awindow.__xss%3D3"),
    ] {
        browser.goto(&page).await?;
        let listed = text_of(browser, "table.changes").await?;
        ensure!(
            listed.contains("<script>window.__xss=1</script>"),
            "{listed}"
        );
        ensure!(
            count(
                browser,
                "table.changes img, table.changes b, table.changes script"
            )
            .await?
                == 0
        );
    }
    first_change_link(browser).await?.click().await?;
    let context_text = text_of(browser, "pre.json").await?;
    ensure!(
        context_text.contains("onerror") && context_text.contains("javascript:"),
        "{context_text}"
    );
    let executed = browser
        .execute("return window.__xss === undefined;", vec![])
        .await?;
    ensure!(
        executed == Value::Bool(true),
        "a hostile value ran as script"
    );
    ensure!(
        count(browser, "img, main b").await? == 0,
        "a hostile value became markup"
    );
    screenshot(browser, "hostile-context").await?;

    // A 300 000-character value is collapsed and cut; the redacted column stays redacted.
    open_first_change(browser, &format!("{base}?context=user_id%3Ddave")).await?;
    text_of(browser, "details.large summary").await?;
    let source = browser.source().await?;
    ensure!(
        source.len() < 200_000,
        "the page holds {} bytes",
        source.len()
    );
    ensure!(source.contains("[REDACTED]") && !source.contains("hunter2"));
    Ok(())
}

/// The attacker's pages: a form that posts itself to the UI (after planting a CSRF cookie for
/// the whole parent domain, with a longer path so that it is sent first), and a `fetch` with
/// `text/plain` (no preflight).
fn attacker(ui: &str, change: uuid::Uuid, planted: &str, token: &str) -> axum::Router {
    use axum::http::header::SET_COOKIE;
    use axum::response::{AppendHeaders, Html};
    let form = Html(format!(
        "<!doctype html><form id=f method=post action=\"{ui}/revert\">\
         <input type=hidden name=change value=\"{change}\">\
         <input type=hidden name=kind value=change>\
         <input type=hidden name=dry_run value=0>\
         <input type=hidden name=csrf_token value=\"{token}\"></form>\
         <script>document.getElementById('f').submit()</script>"
    ));
    let fetch = Html(format!(
        "<!doctype html><title>waiting</title><script>\
         fetch('{ui}/api/revert', {{method: 'POST', mode: 'no-cors', credentials: 'include', \
           headers: {{'content-type': 'text/plain'}}, \
           body: JSON.stringify({{change: '{change}', dry_run: false}})}})\
         .then(() => {{ document.title = 'sent'; }}, () => {{ document.title = 'failed'; }});\
         </script>"
    ));
    let plant = format!("{planted}; Domain=example.com; Path=/revert");
    axum::Router::new()
        .route(
            "/plant",
            axum::routing::get({
                let form = form.clone();
                move || async move { (AppendHeaders([(SET_COOKIE, plant)]), form) }
            }),
        )
        .route("/cross", axum::routing::get(move || async move { form }))
        .route("/fetch", axum::routing::get(move || async move { fetch }))
}

async fn a_sibling_subdomain_or_another_site_cannot_revert_in_chromium(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "ui_browser_csrf").await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let pool = db.bemi_pool();
    context::scope(
        ctx(json!({"user_id": "alice"})),
        sqlx::query("INSERT INTO todo (task) VALUES ('Sleep')").execute(&pool),
    )
    .await?;
    wait_for_changes(&db, 1).await?;
    let change: uuid::Uuid = sqlx::query_scalar("SELECT id FROM changes LIMIT 1")
        .fetch_one(&db.pool)
        .await?;
    let rows = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM todo")
            .fetch_one(&db.pool)
            .await?;
        anyhow::Ok(n)
    };

    // The UI at ui.example.com, where everyone may revert (like `bemi dev`); the attacker at a
    // sibling name (evil.example.com: same site — a name under a public suffix, so that
    // Chromium computes sites as for any deployment) and at another site (evil.example.org).
    // Chromium resolves all of them to 127.0.0.1: nothing leaves the machine.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let ui = format!("http://ui.example.com:{port}");
    let router = bemi_ui::router(
        db.pool.clone(),
        UiOptions::new()
            .public_url(&ui)?
            .authorize(|_| async { Access::revert().actor(json!({"reverted_by": "dev"})) }),
    );
    let _ui = serve::axum_on(listener, router)?;
    // The attacker's own visit to the UI: a CSRF cookie and its token.
    let (planted, token) = csrf_pair(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{port}/"),
        &[("host", &format!("ui.example.com:{port}"))],
        "bemi_csrf",
    )
    .await?;
    let (evil, _stop_evil) = serve::axum_base(attacker(&ui, change, &planted, &token)).await?;
    let evil_port = evil.rsplit(':').next().context("a port")?.to_owned();

    let driver = Chromedriver::start().await?;
    let profile = tempfile::tempdir()?;
    let browser = driver
        .browser_with(
            profile.path(),
            &[
                "--host-resolver-rules=MAP *.example.com 127.0.0.1, MAP *.example.org 127.0.0.1",
                "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
            ],
        )
        .await?;
    let result = async {
        // The victim uses the UI: it has its own CSRF cookie.
        browser.goto(&format!("{ui}/")).await?;
        text_of(&browser, "h1").await?;
        for attack in [
            format!("http://evil.example.com:{evil_port}/plant"),
            format!("http://evil.example.org:{evil_port}/cross"),
        ] {
            browser.goto(&attack).await?;
            wait_until("the form to post", Duration::from_secs(20), || async {
                Ok(browser
                    .current_url()
                    .await?
                    .as_str()
                    .starts_with(&format!("{ui}/revert"))
                    .then_some(()))
            })
            .await?;
            let page = browser.source().await?;
            ensure!(page.contains("CSRF"), "{attack}: {page}");
            ensure!(rows().await? == 1, "{attack}: the revert was written");
        }
        browser
            .goto(&format!("http://evil.example.com:{evil_port}/fetch"))
            .await?;
        wait_until("the fetch to finish", Duration::from_secs(20), || async {
            let title = browser.title().await?;
            Ok((title != "waiting").then_some(()))
        })
        .await?;
        ensure!(rows().await? == 1, "fetch: the revert was written");

        // From the UI's own page the same revert goes through.
        browser.goto(&format!("{ui}/changes/{change}")).await?;
        browser
            .find(Locator::Css("button[data-kind=change]"))
            .await?
            .click()
            .await?;
        text_of(&browser, "#plan").await?;
        browser.find(Locator::Css("#apply")).await?.click().await?;
        let done = text_of(&browser, "p.done").await?;
        ensure!(done.contains("Reverted 1 change"), "{done}");
        ensure!(rows().await? == 0);
        anyhow::Ok(())
    }
    .await;
    let _ = browser.close().await;
    result?;
    worker.stop().await?;
    Ok(())
}
e2e_test!(a_sibling_subdomain_or_another_site_cannot_revert_in_chromium);
