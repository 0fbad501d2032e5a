//! The web UI's per-request scope over HTTP: an authorization matrix. Two tenants of a host
//! app each see, on every endpoint (list, detail by id, row timeline, table as of, user
//! activity, activity feed, JSON API, both exports, live tail, revert), their own changes only — ids, keys,
//! transactions and contexts guessed across tenants are a 404 or an empty list, never a leak —
//! and the hidden column and context key appear in no body or export.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bemi_core::context;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestResult, ctx};
use bemi_ui::{Access, Scope, UiOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::serve;
use crate::ui_security::csrf_pair;

const TABLES: &str = "
CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, secret text);
CREATE TABLE invoice (id bigserial PRIMARY KEY, amount int NOT NULL);
";

/// One stored change: id, transaction, table, key, context.
type Stored = (Uuid, i64, String, Option<String>, Value);

/// What only a tenant's own pages may show, and what no page may show.
fn markers(tenant: i64) -> [String; 2] {
    [format!("task-of-{tenant}"), format!("inv-{tenant}")]
}
const HIDDEN_VALUES: [&str; 4] = ["s42-secret", "s43-secret", "plain-secret", "10.0.0."];

async fn every_endpoint_shows_a_tenant_its_own_changes_only_and_never_hidden_fields(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.tracked_database("ui_scope", TABLES).await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let pool = db.bemi_pool();
    for tenant in [42_i64, 43] {
        let scope = ctx(
            json!({"tenant_id": tenant, "user_id": tenant - 41, "ip": format!("10.0.0.{tenant}")}),
        );
        context::scope(scope, async {
            sqlx::query("INSERT INTO todo (task, secret) VALUES ($1, $2)")
                .bind(format!("task-of-{tenant}"))
                .bind(format!("s{tenant}-secret"))
                .execute(&pool)
                .await?;
            sqlx::query("UPDATE todo SET task = task || ' (edited)' WHERE task = $1")
                .bind(format!("task-of-{tenant}"))
                .execute(&pool)
                .await?;
            // A table outside the scope's table set, in the tenant's own context.
            sqlx::query("INSERT INTO invoice (amount) VALUES ($1)")
                .bind(i32::try_from(tenant)?)
                .execute(&pool)
                .await?;
            anyhow::Ok(())
        })
        .await?;
    }
    // Plain SQL, no context: inside no tenant's scope.
    db.exec("INSERT INTO todo (task, secret) VALUES ('plain-task', 'plain-secret')")
        .await?;
    wait_for_changes(&db, 7).await?;
    let stored: Vec<Stored> =
        sqlx::query_as("SELECT id, transaction_id, \"table\", primary_key, context FROM changes")
            .fetch_all(&db.pool)
            .await?;
    let own = |tenant: i64| -> BTreeSet<Uuid> {
        stored
            .iter()
            .filter(|(_, _, table, _, context)| table == "todo" && context["tenant_id"] == tenant)
            .map(|c| c.0)
            .collect()
    };
    ensure!(own(42).len() == 2 && own(43).len() == 2, "{stored:#?}");

    let options = UiOptions::new().authorize(|parts| {
        let tenant: Option<i64> = parts
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        async move {
            match tenant {
                Some(tenant) => Access::revert()
                    .actor(json!({"support_for": tenant}))
                    .scope(
                        Scope::new()
                            .context("tenant_id", tenant)
                            .tables(["todo"])
                            .hide_columns(["secret"])
                            .hide_context_keys(["ip"]),
                    ),
                // The host app's own staff: everything (the matrix's baseline).
                None => Access::read(),
            }
        }
    });
    let (base, _stop) = serve::axum_base(bemi_ui::router(db.pool.clone(), options)).await?;
    let client = reqwest::Client::new();

    // The baseline sees every change: the data the tenants must not see is there.
    let everything: Value = client
        .get(format!("{base}/api/changes?limit=100"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(everything["changes"].as_array().map(Vec::len) == Some(stored.len()));
    ensure!(everything.to_string().contains("s43-secret"));
    // The feed may be framed by the host app's own pages; every other page by none.
    for (path, frames) in [("/feed", "SAMEORIGIN"), ("/", "DENY")] {
        let response = client.get(format!("{base}{path}")).send().await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        ensure!(
            header("x-frame-options") == frames,
            "{path}: {}",
            header("x-frame-options")
        );
        let ancestors = if frames == "DENY" { "'none'" } else { "'self'" };
        ensure!(
            header("content-security-policy").ends_with(&format!("frame-ancestors {ancestors}")),
            "{path}: {}",
            header("content-security-policy")
        );
    }

    for (tenant, other) in [(42_i64, 43_i64), (43, 42)] {
        let header = tenant.to_string();
        let get = |path: String| {
            let request = client
                .get(format!("{base}{path}"))
                .header("x-tenant", &header);
            async move {
                let response = request.send().await?;
                let status = response.status();
                anyhow::Ok((status, response.text().await?))
            }
        };
        let mut bodies: Vec<(String, String)> = Vec::new();
        // Every change by id: its own are shown, every other is a 404 (as a missing id).
        for (id, _, _, _, _) in &stored {
            let path = format!("/changes/{id}");
            let (status, body) = get(path.clone()).await?;
            let wanted = if own(tenant).contains(id) {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            expect(tenant, &mut bodies, path, wanted, body, status)?;
        }
        let (status, body) = get(format!("/changes/{}", Uuid::new_v4())).await?;
        expect(
            tenant,
            &mut bodies,
            "/changes/<random>".into(),
            StatusCode::NOT_FOUND,
            body,
            status,
        )?;

        // Row timelines and tables as of: its own rows; guessed keys and other tables 404.
        for (_, _, table, pk, context) in &stored {
            let Some(pk) = pk else { continue };
            let path = format!("/rows/{table}/{pk}");
            let (status, body) = get(path.clone()).await?;
            let mine = table == "todo" && context["tenant_id"] == tenant;
            let wanted = if mine {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            expect(tenant, &mut bodies, path, wanted, body, status)?;
        }
        let (status, body) = get("/tables/todo".into()).await?;
        ensure!(
            body.contains(&format!("task-of-{tenant} (edited)")),
            "{body}"
        );
        expect(
            tenant,
            &mut bodies,
            "/tables/todo".into(),
            StatusCode::OK,
            body,
            status,
        )?;
        for table in ["invoice", "public.invoice"] {
            let (status, body) = get(format!("/tables/{table}")).await?;
            expect(
                tenant,
                &mut bodies,
                format!("/tables/{table}"),
                StatusCode::NOT_FOUND,
                body,
                status,
            )?;
        }

        // Lists: the JSON API, its filters (guessing the other tenant, the other table), the
        // HTML list, a user's activity, both exports.
        let api: Value = serde_json::from_str(&get("/api/changes?limit=100".into()).await?.1)?;
        let ids: BTreeSet<Uuid> = api["changes"]
            .as_array()
            .context("no changes")?
            .iter()
            .filter_map(|c| c["id"].as_str()?.parse().ok())
            .collect();
        ensure!(ids == own(tenant), "tenant {tenant}: {api}");
        ensure!(api.to_string().contains(bemi_ui::HIDDEN));
        bodies.push(("/api/changes".into(), api.to_string()));
        for query in [
            format!("context=tenant_id%3D{other}"),
            "table=invoice".to_owned(),
            format!("context=user_id%3D{}", other - 41),
            "operation=CREATE&table=public.invoice".to_owned(),
        ] {
            let path = format!("/api/changes?{query}");
            let (status, body) = get(path.clone()).await?;
            let api: Value = serde_json::from_str(&body)?;
            ensure!(
                api["changes"].as_array().is_some_and(Vec::is_empty),
                "tenant {tenant}: {path}: {body}"
            );
            expect(tenant, &mut bodies, path, StatusCode::OK, body, status)?;
        }
        // Filters on hidden fields would tell their values: 404.
        for query in [
            format!("context=ip%3D10.0.0.{other}"),
            "changed=secret".into(),
        ] {
            let path = format!("/api/changes?{query}");
            let (status, body) = get(path.clone()).await?;
            expect(
                tenant,
                &mut bodies,
                path,
                StatusCode::NOT_FOUND,
                body,
                status,
            )?;
        }
        for path in [
            "/".to_owned(),
            format!("/users/{}", tenant - 41),
            format!("/users/{}", other - 41),
            "/export.csv".to_owned(),
            "/export.ndjson".to_owned(),
            "/feed".to_owned(),
            "/api/feed".to_owned(),
        ] {
            let (status, body) = get(path.clone()).await?;
            expect(tenant, &mut bodies, path, StatusCode::OK, body, status)?;
        }
        let feed: Value = serde_json::from_str(&get("/api/feed".into()).await?.1)?;
        let lines: Vec<&str> = feed["entries"]
            .as_array()
            .context("no entries")?
            .iter()
            .filter_map(|e| e["line"].as_str())
            .collect();
        ensure!(
            lines.len() == own(tenant).len()
                && lines.contains(&format!("user {} changed todo {}: task 'task-of-{tenant}' → 'task-of-{tenant} (edited)'", tenant - 41, tenant - 41).as_str())
                && lines.iter().any(|l| l.contains("secret (hidden)")),
            "{lines:#?}"
        );
        let (_, ndjson) = get("/export.ndjson".into()).await?;
        ensure!(ndjson.lines().count() == own(tenant).len(), "{ndjson}");
        let (_, csv) = get("/export.csv".into()).await?;
        ensure!(csv.lines().count() == own(tenant).len() + 1, "{csv}");

        // The live tail's first events: its own changes only.
        let tail = tail_events(&client, &base, &header, own(tenant).len()).await?;
        bodies.push(("/api/tail".into(), tail));

        // Reverts of the other tenant's change, transaction, context, or of the other table:
        // 404, nothing written; its own: a dry run.
        let (cookie, token) = csrf_pair(
            &client,
            &format!("{base}/"),
            &[("x-tenant", header.as_str())],
            "bemi_csrf",
        )
        .await?;
        let revert = |body: Value| {
            client
                .post(format!("{base}/api/revert"))
                .header("x-tenant", &header)
                .header("cookie", &cookie)
                .header("origin", &base)
                .header("x-csrf-token", &token)
                .json(&body)
                .send()
        };
        for (id, transaction, table, _, context) in &stored {
            if own(tenant).contains(id) {
                continue;
            }
            for body in [
                json!({"change": id, "dry_run": false}),
                json!({"transaction": transaction, "dry_run": false}),
                json!({"context": context, "dry_run": false}),
            ] {
                if body["context"]
                    .as_object()
                    .is_some_and(serde_json::Map::is_empty)
                {
                    continue;
                }
                let response = revert(body.clone()).await?;
                let status = response.status();
                let text = response.text().await?;
                expect(
                    tenant,
                    &mut bodies,
                    format!("POST /api/revert {body} ({table})"),
                    StatusCode::NOT_FOUND,
                    text,
                    status,
                )?;
            }
        }
        let form = client
            .post(format!("{base}/revert"))
            .header("x-tenant", &header)
            .header("cookie", &cookie)
            .header("origin", &base)
            .form(&[
                ("change", other_change(&stored, other)?.to_string()),
                ("kind", "request".into()),
                ("dry_run", "0".into()),
                ("csrf_token", token.clone()),
            ])
            .send()
            .await?;
        ensure!(form.status() == StatusCode::NOT_FOUND, "{}", form.status());
        let mine = own(tenant).into_iter().next().context("no own change")?;
        let plan = revert(json!({"change": mine})).await?;
        ensure!(plan.status() == StatusCode::OK, "{}", plan.text().await?);
        bodies.push(("dry run".into(), plan.text().await?));

        // Nothing of the other tenant, and no hidden value, in any body.
        for (path, body) in &bodies {
            for marker in markers(other) {
                ensure!(
                    !body.contains(&marker),
                    "tenant {tenant}: {path} shows {marker}: {body}"
                );
            }
            ensure!(
                !body.contains("plain-task"),
                "tenant {tenant}: {path}: {body}"
            );
            for hidden in HIDDEN_VALUES {
                ensure!(
                    !body.contains(hidden),
                    "tenant {tenant}: {path} shows {hidden}: {body}"
                );
            }
        }
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM todo")
        .fetch_one(&db.pool)
        .await?;
    ensure!(rows == 3, "a refused revert wrote: {rows} rows");
    worker.stop().await?;
    Ok(())
}
e2e_test!(every_endpoint_shows_a_tenant_its_own_changes_only_and_never_hidden_fields);

/// Keeps `body` for the leak check; an error unless `got` is `status`.
fn expect(
    tenant: i64,
    bodies: &mut Vec<(String, String)>,
    path: String,
    status: StatusCode,
    body: String,
    got: StatusCode,
) -> anyhow::Result<()> {
    bodies.push((path.clone(), body.clone()));
    ensure!(
        got == status,
        "tenant {tenant}: {path}: {got}, expected {status}: {body}"
    );
    Ok(())
}

/// A change of `tenant`'s (in `todo`).
fn other_change(stored: &[Stored], tenant: i64) -> anyhow::Result<Uuid> {
    stored
        .iter()
        .find(|(_, _, table, _, context)| table == "todo" && context["tenant_id"] == tenant)
        .map(|c| c.0)
        .context("no change of the other tenant")
}

/// The live tail's text until it holds `count` change events (within a deadline).
async fn tail_events(
    client: &reqwest::Client,
    base: &str,
    tenant: &str,
    count: usize,
) -> anyhow::Result<String> {
    let mut response = client
        .get(format!("{base}/api/tail"))
        .header("x-tenant", tenant)
        .send()
        .await?
        .error_for_status()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while text.matches("event: change").count() < count {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .context("the live tail sent too few changes in 20 s")??;
        match chunk {
            Some(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            None => bail!("the live tail ended: {text}"),
        }
    }
    Ok(text)
}
