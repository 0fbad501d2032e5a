//! bemi-rs on axum and sqlx, whole: the layer, the migration and a write that carries its
//! request's context. Run it with `cargo run -p bemi-examples --example axum-sqlx`
//! (`DATABASE_URL`, or an embedded PostgreSQL when it is unset), then
//! `curl -X POST -H 'x-user-id: 42' -d '{"task":"Sleep"}' -H 'content-type: application/json' 127.0.0.1:3000/todo`
//! and run `bemi worker` against the same database to fill `changes`.

use axum::extract::{Json, State};
use axum::http::{Request, StatusCode};
use axum::{Router, body::Body, routing::post};
use bemi_axum::BemiLayer;
use bemi_sqlx::BemiPool;
use serde_json::{Value, json};

/// The context of each request: who, which endpoint, which method.
fn request_context(request: &Request<Body>) -> Value {
    json!({
        "user_id": request.headers().get("x-user-id").and_then(|v| v.to_str().ok()),
        "endpoint": request.uri().path(),
        "method": request.method().as_str(),
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
    // Your database; here DATABASE_URL or a throwaway one.
    let database = bemi_dev::DevDatabase::from_env()?;
    let pool = sqlx::PgPool::connect(&database.url()).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS todo (id bigserial PRIMARY KEY, task text NOT NULL)")
        .execute(&pool)
        .await?;

    // 1. The migration: triggers that put each write's context into the WAL.
    bemi_sqlx::migration::migrate(&pool, Default::default()).await?;

    // 2. The layer: every request runs inside the context its closure returns.
    // 3. The wrapper: writes through `BemiPool` carry that context.
    let app = Router::new()
        .route("/todo", post(create))
        .layer(BemiLayer::new(request_context))
        .with_state(BemiPool::new(pool));

    let addr = std::env::var("BEMI_EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr}/todo");
    axum::serve(listener, app).await?;
    Ok(())
}
