//! The todo app on actix-web, with the tokio-postgres adapter.
//!
//! [`app`] is the app: its [`routes`] behind the [`Bemi`] middleware whose closure is
//! [`request_context::for_actix`]. [`server`] serves it on a listener.
//!
//! ```no_run
//! # async fn run(client: tokio_postgres::Client) -> std::io::Result<()> {
//! let client = bemi_tokio_postgres::BemiClient::new(client);
//! let listener = std::net::TcpListener::bind("127.0.0.1:3000")?;
//! let server = bemi_examples::actix_app::server(client, listener, 2)?;
//! server.await
//! # }
//! ```

use std::fmt;
use std::net::TcpListener;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, ResponseError, web};
use bemi_actix::Bemi;
use bemi_tokio_postgres::BemiClient;
use serde_json::json;

use crate::request_context;
use crate::store;
use crate::todo::NewTodo;

/// The app: [`routes`] behind `Bemi::new(request_context::for_actix)`, with `client` as its
/// database.
///
/// ```no_run
/// # fn run(client: bemi_tokio_postgres::BemiClient) {
/// let client = actix_web::web::Data::new(client);
/// let server = actix_web::HttpServer::new(move || bemi_examples::actix_app::app(client.clone()));
/// # }
/// ```
pub fn app(
    client: web::Data<BemiClient>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(client)
        .wrap(Bemi::new(request_context::for_actix))
        .configure(routes)
}

/// The routes without the bemi middleware: `POST /todo`, `GET /todo`,
/// `PUT /todo/{id}/complete`, `DELETE /todo/{id}`. They need a `web::Data<BemiClient>`.
///
/// ```no_run
/// use actix_web::{App, dev::ServiceRequest, web};
/// use serde_json::json;
///
/// # fn run(client: bemi_tokio_postgres::BemiClient) {
/// let client = web::Data::new(client);
/// let app = App::new()
///     .app_data(client)
///     .wrap(bemi_actix::Bemi::new(|req: &ServiceRequest| json!({"path": req.path()})))
///     .configure(bemi_examples::actix_app::routes);
/// # }
/// ```
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/todo", web::post().to(create))
        .route("/todo", web::get().to(list))
        .route("/todo/{id}/complete", web::put().to(complete))
        .route("/todo/{id}", web::delete().to(remove));
}

/// An HTTP server of [`app`] on `listener` with `workers` worker threads. It does not catch
/// signals: stop it with its handle (`server.handle().stop(true)`).
///
/// ```no_run
/// # async fn run(client: bemi_tokio_postgres::BemiClient) -> std::io::Result<()> {
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let server = bemi_examples::actix_app::server(client, listener, 2)?;
/// let handle = server.handle();
/// tokio::spawn(server);
/// handle.stop(true).await;
/// # Ok(()) }
/// ```
pub fn server(
    client: BemiClient,
    listener: TcpListener,
    workers: usize,
) -> std::io::Result<Server> {
    let client = web::Data::new(client);
    Ok(HttpServer::new(move || app(client.clone()))
        .workers(workers)
        .disable_signals()
        .listen(listener)?
        .run())
}

async fn create(
    client: web::Data<BemiClient>,
    new: web::Json<NewTodo>,
) -> Result<HttpResponse, ApiError> {
    let todo = store::postgres::create(&client, &new.task).await?;
    Ok(HttpResponse::Created().json(todo))
}

async fn complete(
    client: web::Data<BemiClient>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    match store::postgres::complete(&client, *id).await? {
        Some(todo) => Ok(HttpResponse::Ok().json(todo)),
        None => Err(ApiError::NotFound),
    }
}

async fn remove(
    client: web::Data<BemiClient>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    if store::postgres::delete(&client, *id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound)
    }
}

async fn list(client: web::Data<BemiClient>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(store::postgres::list(&client).await?))
}

/// What a handler can fail with.
#[derive(Debug)]
enum ApiError {
    NotFound,
    Database(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Database(error)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("no such todo"),
            Self::Database(error) => write!(f, "database error: {error}"),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Database(error) = self {
            tracing::error!(%error, "database error");
        }
        HttpResponse::build(self.status_code()).json(json!({"error": self.to_string()}))
    }
}
