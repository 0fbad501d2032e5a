//! A SaaS app that shows each of its customers that customer's own audit log: a todo API whose
//! rows belong to tenants, the capture worker in-process, and the audit trail's web UI mounted
//! twice — `/activity` for customers (their tenant only, the `internal_note` column and the
//! `ip` context key hidden, read-only; `/activity/feed` is the embeddable feed, `/activity/api/feed`
//! its JSON) and `/audit` for the app's own staff (everything, revert and restore). Run it with
//! `cargo run -p bemi-examples --features ui --example customer-audit-log`, then
//! `curl -X POST -H 'x-tenant-id: 42' -H 'x-user-id: 7' -H 'content-type: application/json' -d '{"task":"Buy milk","internal_note":"VIP"}' 127.0.0.1:3000/todo`
//! and `curl -H 'x-tenant-id: 42' 127.0.0.1:3000/activity/api/feed`. This example's
//! "authentication" is those headers; yours is a session.

use axum::extract::{Json, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::{Router, routing::post};
use bemi_axum::BemiLayer;
use bemi_sqlx::BemiPool;
use bemi_ui::{Access, Scope, UiOptions};
use serde_json::{Value, json};

/// Who is signed in, as the app's authentication leaves it in the request's extensions.
#[derive(Clone)]
struct CurrentUser {
    tenant_id: Option<i64>,
    user_id: Option<String>,
    staff: bool,
}

/// Stands in for a real authentication layer (sessions, JWTs, …).
async fn authenticate(mut request: Request, next: Next) -> Response {
    let user = current_user(request.headers());
    request.extensions_mut().insert(user);
    next.run(request).await
}

/// The signed-in user of these headers.
fn current_user(headers: &axum::http::HeaderMap) -> CurrentUser {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    CurrentUser {
        tenant_id: header("x-tenant-id").and_then(|t| t.parse().ok()),
        user_id: header("x-user-id"),
        staff: header("x-staff").is_some(),
    }
}

/// The customers' audit log: their tenant's changes of `todo` only, the internal note and the
/// client's address hidden, read-only.
fn customer_options() -> UiOptions {
    UiOptions::new().authorize(|parts| {
        let tenant = parts
            .extensions
            .get::<CurrentUser>()
            .and_then(|user| user.tenant_id);
        async move {
            match tenant {
                Some(tenant) => Access::read().scope(
                    Scope::new()
                        .context("tenant_id", tenant)
                        .tables(["todo"])
                        .hide_columns(["internal_note"])
                        .hide_context_keys(["ip"]),
                ),
                None => Access::unauthenticated(),
            }
        }
    })
}

/// The staff's audit trail: everything; they revert and restore, named in the context.
fn staff_options(source: sqlx::PgPool) -> UiOptions {
    UiOptions::new().source(source).authorize(|parts| {
        let user = parts.extensions.get::<CurrentUser>().cloned();
        async move {
            match user {
                Some(user) if user.staff => {
                    Access::revert().actor(json!({"user_id": user.user_id, "role": "staff"}))
                }
                _ => Access::denied(),
            }
        }
    })
}

/// `POST /todo {"task": "...", "internal_note": "..."}`: the INSERT carries the request's
/// context, the tenant in it.
async fn create(State(pool): State<BemiPool>, Json(body): Json<Value>) -> (StatusCode, String) {
    let inserted = sqlx::query_scalar::<_, i64>(
        "INSERT INTO todo (task, internal_note) VALUES ($1, $2) RETURNING id",
    )
    .bind(body["task"].as_str().unwrap_or("untitled"))
    .bind(body["internal_note"].as_str())
    .fetch_one(&pool)
    .await;
    match inserted {
        Ok(id) => (StatusCode::CREATED, json!({ "id": id }).to_string()),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let database = bemi_dev::DevDatabase::from_env()?;
    let url = database.url();
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS todo (id bigserial PRIMARY KEY, task text NOT NULL, \
         internal_note text)",
    )
    .execute(&pool)
    .await?;
    bemi_sqlx::migration::migrate(&pool, Default::default()).await?;
    let slot = std::env::var("BEMI_SLOT").unwrap_or_else(|_| "bemi".to_owned());
    let mut worker =
        bemi_worker::Worker::new(bemi_worker::WorkerConfig::new(&url).slot(slot)).spawn();
    // Serve once the worker streams: the writes from then on are captured.
    worker
        .wait_until_streaming(std::time::Duration::from_secs(60))
        .await?;

    let todo = Router::new()
        .route("/todo", post(create))
        .layer(BemiLayer::new(|request: &Request| {
            let user = request.extensions().get::<CurrentUser>();
            json!({
                "tenant_id": user.and_then(|u| u.tenant_id),
                "user_id": user.and_then(|u| u.user_id.clone()),
                "ip": request.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()),
            })
        }))
        .with_state(BemiPool::new(pool.clone()));
    let app = Router::new()
        .merge(todo)
        .nest(
            "/activity",
            bemi_ui::router(pool.clone(), customer_options()),
        )
        .nest("/audit", bemi_ui::router(pool.clone(), staff_options(pool)))
        .layer(axum::middleware::from_fn(authenticate));

    let addr = std::env::var("BEMI_EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "listening on http://{addr}/todo; customers' audit log on http://{addr}/activity, \
         staff's on http://{addr}/audit"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    worker.shutdown().await?;
    Ok(())
}
