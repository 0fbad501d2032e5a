//! The web UI over real HTTP: the JSON API's filters against a model of 12 000 changes, the
//! exports' counts and quoting, and who may do what (401, 403, CSRF) — then a revert that writes
//! with the acting user.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use bemi_audit::Operation;
use bemi_audit::store::{ChangeBatch, NewChange};
use bemi_tests::worker::wait_for_changes;
use bemi_tests::{TestCluster, TestResult, todo_db};
use bemi_ui::{Access, UiOptions};
use chrono::{DateTime, TimeDelta, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::serve;
use crate::ui_security::{csrf_pair, todo_rows, two_tasks_captured};

const CHANGES: usize = 12_000;

/// One modelled change.
#[derive(Debug, Clone)]
struct Modelled {
    schema: &'static str,
    table: &'static str,
    pk: String,
    operation: Operation,
    before: Value,
    after: Value,
    context: Value,
    committed_at: DateTime<Utc>,
    transaction_id: i64,
    position: i64,
}

fn model(start: DateTime<Utc>) -> Vec<Modelled> {
    let tables = [
        ("public", "todo"),
        ("public", "invoice"),
        ("billing", "payment"),
    ];
    let endpoints = ["/todo", "/invoice", "/checkout"];
    (0..CHANGES)
        .map(|i| {
            let n = i as i64;
            let (schema, table) = tables[i % 3];
            let operation = [Operation::Create, Operation::Update, Operation::Update, Operation::Delete][i % 4];
            // Hostile text in every 50th row: quotes, commas, newlines, markup.
            let note = if i % 50 == 0 {
                format!("a \"quoted\", multi\nline <script>alert({i})</script> =cmd")
            } else {
                format!("note {i}")
            };
            let row = |status: &str, price: i64| json!({"id": n % 400, "status": status, "price": price, "note": note});
            let (before, after) = match operation {
                Operation::Create => (json!({}), row("new", n)),
                Operation::Delete => (row("paid", n), json!({})),
                _ if i % 3 == 0 => (row("new", n), row("paid", n)),
                _ => (row("new", n), row("new", n + 1)),
            };
            Modelled {
                schema,
                table,
                pk: (n % 400).to_string(),
                operation,
                before,
                after,
                context: json!({"user_id": n % 37, "endpoint": endpoints[(i / 3) % 3], "SQL": "…"}),
                committed_at: start + TimeDelta::milliseconds(n * 10),
                transaction_id: n / 4,
                position: n + 1,
            }
        })
        .collect()
}

async fn insert_model(db: &bemi_tests::TestDb, model: &[Modelled]) -> anyhow::Result<()> {
    let mut conn = db.pool.acquire().await?;
    bemi_audit::schema::prepare(&mut conn).await?;
    for chunk in model.chunks(2_000) {
        let texts: Vec<(String, String, String)> = chunk
            .iter()
            .map(|m| {
                (
                    m.before.to_string(),
                    m.after.to_string(),
                    m.context.to_string(),
                )
            })
            .collect();
        let mut batch = ChangeBatch::default();
        for (m, (before, after, context)) in chunk.iter().zip(&texts) {
            batch.push(NewChange {
                primary_key: Some(&m.pk),
                before,
                after,
                context,
                schema: m.schema,
                table: m.table,
                operation: m.operation,
                committed_at: m.committed_at,
                queued_at: m.committed_at,
                transaction_id: m.transaction_id,
                position: m.position,
            });
        }
        batch.insert("app", &mut conn).await?;
    }
    Ok(())
}

/// Every change `filters` matches, following `next` from page to page; their positions.
async fn all_pages(
    client: &reqwest::Client,
    base: &str,
    filters: &str,
) -> anyhow::Result<Vec<i64>> {
    let mut positions = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = format!("{base}/api/changes?limit=1000&{filters}");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = client
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for change in page["changes"].as_array().context("changes")? {
            positions.push(change["position"].as_i64().context("position")?);
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(positions),
        }
    }
    anyhow::bail!("more than 100 pages")
}

/// Which modelled changes a filter keeps.
type Filter = Box<dyn Fn(&Modelled) -> bool + Send + Sync>;

fn newest_first(model: &[Modelled], filter: impl Fn(&Modelled) -> bool) -> Vec<i64> {
    let mut positions: Vec<(DateTime<Utc>, i64)> = model
        .iter()
        .filter(|m| filter(m))
        .map(|m| (m.committed_at, m.position))
        .collect();
    positions.sort_unstable_by(|a, b| b.cmp(a));
    positions.into_iter().map(|(_, p)| p).collect()
}

fn changed(m: &Modelled, field: &str) -> bool {
    let get = |image: &Value| image.get(field).cloned().unwrap_or(Value::Null);
    get(&m.before) != get(&m.after)
}

async fn the_api_and_exports_return_exactly_the_modelled_changes(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("ui_api_model").await?;
    // Whole milliseconds: what PostgreSQL stores (µs) and the filters say are the same instants.
    let start =
        DateTime::from_timestamp_millis((Utc::now() - TimeDelta::hours(2)).timestamp_millis())
            .context("a time")?;
    let model = model(start);
    insert_model(&db, &model).await?;
    let (base, _stop) =
        serve::axum_base(bemi_ui::router(db.pool.clone(), UiOptions::new())).await?;
    let client = reqwest::Client::new();

    let at = |ms: i64| (start + TimeDelta::milliseconds(ms)).to_rfc3339();
    let (since, until) = (at(30_000), at(45_000));
    let cases: Vec<(String, Filter)> = vec![
        (String::new(), Box::new(|_| true)),
        ("table=invoice".into(), Box::new(|m| m.table == "invoice")),
        (
            "table=billing.payment&operation=UPDATE".into(),
            Box::new(|m| m.table == "payment" && m.operation == Operation::Update),
        ),
        (
            "context=user_id%3D5".into(),
            Box::new(|m| m.context["user_id"] == 5),
        ),
        (
            "context=user_id%3D5&context=endpoint%3D%2Finvoice".into(),
            Box::new(|m| m.context["user_id"] == 5 && m.context["endpoint"] == "/invoice"),
        ),
        (
            format!("since={}&until={}", urlencode(&since), urlencode(&until)),
            Box::new(move |m| {
                m.committed_at >= start + TimeDelta::milliseconds(30_000)
                    && m.committed_at < start + TimeDelta::milliseconds(45_000)
            }),
        ),
        ("changed=status".into(), Box::new(|m| changed(m, "status"))),
        (
            "transaction=100".into(),
            Box::new(|m| m.transaction_id == 100),
        ),
        (
            "table=todo&pk=42".into(),
            Box::new(|m| m.table == "todo" && m.pk == "42"),
        ),
        ("context=user_id%3D%225%22".into(), Box::new(|_| false)), // a string is not the number 5
    ];
    for (filters, expected) in &cases {
        let got = all_pages(&client, &base, filters).await?;
        let want = newest_first(&model, expected);
        ensure!(
            got == want,
            "{filters}: {} changes, the model has {}",
            got.len(),
            want.len()
        );
    }
    // A bad filter is a 400 that says what to write.
    let bad = client
        .get(format!("{base}/api/changes?operation=MERGE"))
        .send()
        .await?;
    ensure!(bad.status() == StatusCode::BAD_REQUEST);
    ensure!(bad.text().await?.contains("CREATE, UPDATE"));

    // Exports: every match, quoted so that a CSV reader gets the values back.
    let csv_text = client
        .get(format!("{base}/export.csv?table=invoice"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let mut exported = BTreeSet::new();
    for record in reader.records() {
        let record = record?;
        let position: i64 = record[8].parse()?;
        let modelled = &model[usize::try_from(position - 1)?];
        let after: Value = serde_json::from_str(&record[11])?;
        let before: Value = serde_json::from_str(&record[10])?;
        ensure!(
            after == modelled.after && before == modelled.before,
            "position {position}"
        );
        ensure!(&record[4] == "invoice" && &record[6] == modelled.operation.as_str());
        exported.insert(position);
    }
    let invoices: BTreeSet<i64> = newest_first(&model, |m| m.table == "invoice")
        .into_iter()
        .collect();
    ensure!(
        exported == invoices,
        "CSV: {} rows, the model has {}",
        exported.len(),
        invoices.len()
    );
    let ndjson = client
        .get(format!("{base}/export.ndjson"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut lines = 0;
    for line in ndjson.lines() {
        let change: bemi_audit::Change = serde_json::from_str(line)?;
        ensure!(change.after == model[usize::try_from(change.position - 1)?].after);
        lines += 1;
    }
    ensure!(lines == CHANGES, "NDJSON: {lines} lines");
    Ok(())
}
e2e_test!(the_api_and_exports_return_exactly_the_modelled_changes);

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn tokens_permissions_and_csrf_guard_every_request_and_reverts_name_the_actor(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "ui_access").await?;
    let worker = two_tasks_captured(&db).await?;
    let first: uuid::Uuid = sqlx::query_scalar("SELECT id FROM changes ORDER BY position LIMIT 1")
        .fetch_one(&db.pool)
        .await?;
    let client = reqwest::Client::new();
    let todo_count = || todo_rows(&db);

    // `bemi ui --token`: 401 without it, in the API and on pages.
    let (token_base, _stop_token) = serve::axum_base(bemi_ui::router(
        db.pool.clone(),
        UiOptions::new().token("s3cret", false),
    ))
    .await?;
    let anonymous = client
        .get(format!("{token_base}/api/changes"))
        .send()
        .await?;
    ensure!(anonymous.status() == StatusCode::UNAUTHORIZED);
    let page = client.get(format!("{token_base}/")).send().await?;
    ensure!(
        page.status() == StatusCode::UNAUTHORIZED && page.text().await?.contains("name=\"token\"")
    );
    let wrong = client
        .get(format!("{token_base}/export.csv"))
        .bearer_auth("s3cre")
        .send()
        .await?;
    ensure!(wrong.status() == StatusCode::UNAUTHORIZED);
    let right: Value = client
        .get(format!("{token_base}/api/changes"))
        .bearer_auth("s3cret")
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(right["changes"].as_array().map(Vec::len) == Some(2));
    // The login form opens a session; pages open with it.
    let (login_cookie, login_csrf) =
        csrf_pair(&client, &format!("{token_base}/login"), &[], "bemi_csrf").await?;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = no_redirects
        .post(format!("{token_base}/login"))
        .header("cookie", login_cookie)
        .header("origin", &token_base)
        .form(&[("token", "s3cret"), ("csrf_token", &login_csrf)])
        .send()
        .await?;
    ensure!(
        login.status() == StatusCode::SEE_OTHER,
        "{}",
        login.status()
    );
    let session = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("bemi_session="))
        .and_then(|v| v.split(';').next())
        .context("no session cookie")?
        .to_owned();
    let signed_in = client
        .get(format!("{token_base}/"))
        .header("cookie", &session)
        .send()
        .await?;
    ensure!(signed_in.status() == StatusCode::OK);
    // The token holder without --allow-revert: 403, nothing written.
    let refused = client
        .post(format!("{token_base}/api/revert"))
        .bearer_auth("s3cret")
        .json(&json!({"change": first, "dry_run": false}))
        .send()
        .await?;
    ensure!(
        refused.status() == StatusCode::FORBIDDEN,
        "{}",
        refused.status()
    );
    ensure!(todo_count().await? == 2);

    // A host app's router: the callback decides; cookies are the session, so CSRF applies.
    let options = UiOptions::new().authorize(|parts| {
        let role = parts
            .headers
            .get("x-role")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        async move {
            match role.as_deref() {
                Some("admin") => Access::revert().actor(json!({"user_id": "admin-7"})),
                Some("support") => Access::read(),
                Some("intern") => Access::denied(),
                _ => Access::unauthenticated(),
            }
        }
    });
    let (base, _stop) = serve::axum_base(bemi_ui::router(db.pool.clone(), options)).await?;
    let denied = client
        .get(format!("{base}/"))
        .header("x-role", "intern")
        .send()
        .await?;
    ensure!(denied.status() == StatusCode::FORBIDDEN);
    let (cookie, token) = csrf_pair(
        &client,
        &format!("{base}/"),
        &[("x-role", "admin")],
        "bemi_csrf",
    )
    .await?;
    let revert = |role: &'static str, csrf: Option<&str>| {
        let mut request = client
            .post(format!("{base}/api/revert"))
            .header("x-role", role)
            .header("cookie", &cookie)
            .header("origin", &base)
            .json(&json!({"context": {"request_id": "r-1"}, "dry_run": false}));
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.send()
    };
    // Read-only: 403 even with the CSRF token; nothing written.
    let response = revert("support", Some(&token)).await?;
    ensure!(response.status() == StatusCode::FORBIDDEN);
    // Revert permission without the CSRF token (or a wrong one): 403, nothing written.
    for csrf in [None, Some("0123456789abcdef0123456789abcdef")] {
        let response = revert("admin", csrf).await?;
        ensure!(response.status() == StatusCode::FORBIDDEN);
        ensure!(response.text().await?.contains("CSRF"));
    }
    ensure!(todo_count().await? == 2);
    // A form posted from another site: refused too.
    let cross = client
        .post(format!("{base}/revert"))
        .header("x-role", "admin")
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .form(&[
            ("change", first.to_string()),
            ("kind", "request".into()),
            ("dry_run", "0".into()),
            ("csrf_token", token.clone()),
        ])
        .send()
        .await?;
    ensure!(cross.status() == StatusCode::FORBIDDEN);
    ensure!(todo_count().await? == 2);

    // Allowed: the dry run writes nothing, the revert deletes both rows as admin-7.
    let plan: Value = client
        .post(format!("{base}/api/revert"))
        .header("x-role", "admin")
        .header("cookie", &cookie)
        .header("origin", &base)
        .header("x-csrf-token", &token)
        .json(&json!({"context": {"request_id": "r-1"}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(
        plan["dry_run"] == true && plan["plan"]["statements"].as_array().map(Vec::len) == Some(2)
    );
    ensure!(todo_count().await? == 2);
    let report: Value = revert("admin", Some(&token))
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(report["report"]["rows_affected"] == 2, "{report}");
    ensure!(todo_count().await? == 0);
    let changes = wait_for_changes(&db, 4).await?;
    worker.stop().await?;
    for delete in changes.iter().filter(|c| c.operation == "DELETE") {
        ensure!(
            delete.context["user_id"] == "admin-7",
            "{:?}",
            delete.context
        );
        ensure!(
            delete.context["revert_of"]["context"]["request_id"] == "r-1",
            "{:?}",
            delete.context
        );
    }
    Ok(())
}
e2e_test!(tokens_permissions_and_csrf_guard_every_request_and_reverts_name_the_actor);

async fn without_a_changes_table_the_ui_says_to_start_the_worker(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("ui_no_changes").await?;
    let (base, _stop) =
        serve::axum_base(bemi_ui::router(db.pool.clone(), UiOptions::new())).await?;
    for path in ["/", "/api/changes"] {
        let response = reqwest::get(format!("{base}{path}")).await?;
        ensure!(
            response.status() == StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            response.status()
        );
        ensure!(response.text().await?.contains("bemi worker"), "{path}");
    }
    Ok(())
}
e2e_test!(without_a_changes_table_the_ui_says_to_start_the_worker);
