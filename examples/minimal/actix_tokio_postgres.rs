//! bemi-rs on actix-web and tokio-postgres, whole: the middleware, the migration and a write
//! that carries its request's context. Run it with
//! `cargo run -p bemi-examples --features actix --example actix-tokio-postgres`
//! (`DATABASE_URL`, or an embedded PostgreSQL when it is unset), then
//! `curl -X POST -H 'x-user-id: 42' 127.0.0.1:3000/todo/Sleep`.

use actix_web::dev::ServiceRequest;
use actix_web::{App, HttpResponse, HttpServer, web};
use bemi_actix::Bemi;
use bemi_tokio_postgres::BemiClient;
use serde_json::{Value, json};

/// The context of each request: who, which endpoint, which method.
fn request_context(request: &ServiceRequest) -> Value {
    json!({
        "user_id": request.headers().get("x-user-id").and_then(|v| v.to_str().ok()),
        "endpoint": request.path(),
        "method": request.method().as_str(),
    })
}

/// `POST /todo/{task}`: the INSERT carries the request's context.
async fn create(client: web::Data<BemiClient>, task: web::Path<String>) -> HttpResponse {
    let sql = "INSERT INTO todo (task) VALUES ($1) RETURNING id";
    match client.query_one(sql, &[&task.into_inner()]).await {
        Ok(row) => HttpResponse::Created().json(json!({ "id": row.get::<_, i64>(0) })),
        Err(error) => HttpResponse::InternalServerError().body(error.to_string()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Your database; here DATABASE_URL or a throwaway one.
    let database = bemi_dev::DevDatabase::from_env()?;
    let (client, connection) =
        tokio_postgres::connect(&database.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS todo (id bigserial PRIMARY KEY, task text NOT NULL)",
        )
        .await?;

    // 1. The migration: triggers that put each write's context into the WAL.
    client.batch_execute(&bemi_core::migration::up()).await?;

    // 2. The wrapper: writes through `BemiClient` carry the request's context.
    let client = web::Data::new(BemiClient::new(client));
    let addr = std::env::var("BEMI_EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    println!("listening on http://{addr}/todo");
    HttpServer::new(move || {
        App::new()
            .app_data(client.clone())
            // 3. The middleware: every request runs inside the context its closure returns.
            .wrap(Bemi::new(request_context))
            .route("/todo/{task}", web::post().to(create))
    })
    .bind(&addr)?
    .run()
    .await?;
    Ok(())
}
