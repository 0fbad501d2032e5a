//! bemi-rs on async-graphql (over axum and sqlx), whole: the HTTP layer, the GraphQL
//! extension, the migration and a mutation whose write carries the request's and the
//! operation's context. Run it with `cargo run -p bemi-examples --features graphql --example graphql`
//! (`DATABASE_URL`, or an embedded PostgreSQL when it is unset), then
//! `curl 127.0.0.1:3000/graphql -H 'x-user-id: 42' -H 'content-type: application/json' -d '{"query":"mutation { createTodo(task: \"Sleep\") }"}'`.

use async_graphql::{Context, EmptySubscription, Object, Schema};
use axum::extract::State;
use axum::http::Request;
use axum::{Json, Router, body::Body, routing::post};
use bemi_async_graphql::BemiExtension;
use bemi_axum::BemiLayer;
use bemi_sqlx::BemiPool;
use serde_json::json;

struct Query;

#[Object]
impl Query {
    async fn version(&self) -> &str {
        "1"
    }
}

struct Mutation;

#[Object]
impl Mutation {
    /// Its INSERT carries `user_id`, `endpoint`, `operationName` and `variables`.
    async fn create_todo(&self, ctx: &Context<'_>, task: String) -> async_graphql::Result<i64> {
        let pool = ctx.data::<BemiPool>()?;
        let id = sqlx::query_scalar("INSERT INTO todo (task) VALUES ($1) RETURNING id")
            .bind(task)
            .fetch_one(pool)
            .await?;
        Ok(id)
    }
}

type TodoSchema = Schema<Query, Mutation, EmptySubscription>;

async fn graphql(
    State(schema): State<TodoSchema>,
    Json(request): Json<async_graphql::Request>,
) -> Json<async_graphql::Response> {
    Json(schema.execute(request).await)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database = bemi_dev::DevDatabase::from_env()?;
    let pool = sqlx::PgPool::connect(&database.url()).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS todo (id bigserial PRIMARY KEY, task text NOT NULL)")
        .execute(&pool)
        .await?;
    // 1. The migration.
    bemi_sqlx::migration::migrate(&pool, Default::default()).await?;

    // 2. The extension: each operation runs in the request's context plus its name and variables.
    let schema = Schema::build(Query, Mutation, EmptySubscription)
        .data(BemiPool::new(pool))
        .extension(BemiExtension::new())
        .finish();
    // 3. The HTTP layer: the request's context.
    let app = Router::new()
        .route("/graphql", post(graphql))
        .layer(BemiLayer::new(|request: &Request<Body>| {
            json!({
                "user_id": request.headers().get("x-user-id").and_then(|v| v.to_str().ok()),
                "endpoint": request.uri().path(),
            })
        }))
        .with_state(schema);

    let addr = std::env::var("BEMI_EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr}/graphql");
    axum::serve(listener, app).await?;
    Ok(())
}
