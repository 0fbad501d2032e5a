//! The audit trail's web UI mounted in an axum app, behind the app's own authentication: the
//! todo API at `/todo`, the capture worker in-process, and the UI at `/audit`. Run it with
//! `cargo run -p bemi-examples --features ui --example axum-ui` (`DATABASE_URL`, or an embedded
//! PostgreSQL when it is unset), then
//! `curl -X POST -H 'x-user-id: 42' -d '{"task":"Sleep"}' -H 'content-type: application/json' 127.0.0.1:3000/todo`
//! and open `http://127.0.0.1:3000/audit` with a browser that sends `x-user-id: admin` (or any
//! user: read-only). This example's "authentication" is that header; yours is a session.

use axum::extract::{Json, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::{Router, routing::post};
use bemi_axum::BemiLayer;
use bemi_sqlx::BemiPool;
use bemi_ui::{Access, UiOptions};
use serde_json::{Value, json};

/// Who is signed in, as the app's authentication leaves it in the request's extensions.
#[derive(Clone)]
struct CurrentUser(String);

/// Stands in for a real authentication layer (sessions, JWTs, …).
async fn authenticate(mut request: Request, next: Next) -> Response {
    let user = request
        .headers()
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .map(|id| CurrentUser(id.to_owned()));
    if let Some(user) = user {
        request.extensions_mut().insert(user);
    }
    next.run(request).await
}

/// What each user may do on the audit pages: admins revert (and are named in the revert's
/// context), everyone else reads, nobody anonymous.
fn audit_options(source: sqlx::PgPool) -> UiOptions {
    UiOptions::new().source(source).authorize(|parts| {
        let user = parts.extensions.get::<CurrentUser>().map(|u| u.0.clone());
        async move {
            match user.as_deref() {
                Some("admin") => Access::revert().actor(json!({"user_id": "admin"})),
                Some(_) => Access::read(),
                None => Access::unauthenticated(),
            }
        }
    })
}

/// `POST /todo {"task": "..."}`: the INSERT carries the request's context.
async fn create(State(pool): State<BemiPool>, Json(body): Json<Value>) -> (StatusCode, String) {
    let inserted = sqlx::query_scalar::<_, i64>("INSERT INTO todo (task) VALUES ($1) RETURNING id")
        .bind(body["task"].as_str().unwrap_or("untitled"))
        .fetch_one(&pool)
        .await;
    match inserted {
        Ok(id) => (StatusCode::CREATED, json!({ "id": id }).to_string()),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The worker's and the UI's logs (info and up) on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let database = bemi_dev::DevDatabase::from_env()?;
    let url = database.url();
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS todo (id bigserial PRIMARY KEY, task text NOT NULL)")
        .execute(&pool)
        .await?;
    bemi_sqlx::migration::migrate(&pool, Default::default()).await?;

    // The capture worker, in this process: it fills `changes`, which the UI reads.
    // Its replication slot: `bemi`, or BEMI_SLOT (one per database of a server).
    let slot = std::env::var("BEMI_SLOT").unwrap_or_else(|_| "bemi".to_owned());
    let worker = bemi_worker::Worker::new(bemi_worker::WorkerConfig::new(&url).slot(slot)).spawn();

    let todo = Router::new()
        .route("/todo", post(create))
        .layer(BemiLayer::new(|request: &Request| {
            json!({
                "user_id": request.headers().get("x-user-id").and_then(|v| v.to_str().ok()),
                "endpoint": request.uri().path(),
                "method": request.method().as_str(),
            })
        }))
        .with_state(BemiPool::new(pool.clone()));
    let app = Router::new()
        .merge(todo)
        // The one line: the audit pages under /audit, behind the app's authentication.
        .nest("/audit", bemi_ui::router(pool.clone(), audit_options(pool)))
        .layer(axum::middleware::from_fn(authenticate));

    let addr = std::env::var("BEMI_EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr}/todo, the audit trail on http://{addr}/audit");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // The worker writes and confirms what it holds, then stops.
    worker.shutdown().await?;
    Ok(())
}
