//! The todo app on axum, with the sqlx adapter.
//!
//! [`router`] is the app: its routes behind a [`BemiLayer`] whose closure is
//! [`request_context::for_http`]. [`routes`] are the same routes without the layer, to put your
//! own layer in front.
//!
//! ```no_run
//! # async fn run(pool: sqlx::PgPool) -> std::io::Result<()> {
//! let app = bemi_examples::axum_app::router(bemi_sqlx::BemiPool::new(pool));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use bemi_axum::BemiLayer;
use bemi_sqlx::BemiPool;
use serde_json::json;

use crate::request_context;
use crate::todo::{NewTodo, Todo, TodoStore};

/// The app: [`routes`] behind `BemiLayer::new(request_context::for_http)`, on the sqlx
/// adapter.
///
/// ```no_run
/// # fn run(pool: sqlx::PgPool) {
/// let app: axum::Router = bemi_examples::axum_app::router(bemi_sqlx::BemiPool::new(pool));
/// # }
/// ```
pub fn router(pool: BemiPool) -> Router {
    router_for(pool)
}

/// The app on any [`TodoStore`] (the SeaORM, Diesel and pool apps use this).
///
/// ```no_run
/// # fn run(pool: sqlx::PgPool) {
/// let app = bemi_examples::axum_app::router_for(bemi_sqlx::BemiPool::new(pool));
/// # }
/// ```
pub fn router_for<S: TodoStore>(store: S) -> Router {
    routes(store).layer(BemiLayer::new(request_context::for_http::<Body>))
}

/// The routes without a bemi layer: `POST /todo`, `GET /todo`, `PUT /todo/{id}/complete`,
/// `DELETE /todo/{id}`.
///
/// ```no_run
/// use axum::body::Body;
/// use bemi_axum::BemiLayer;
/// use serde_json::json;
///
/// # fn run(pool: sqlx::PgPool) {
/// let app = bemi_examples::axum_app::routes(bemi_sqlx::BemiPool::new(pool))
///     .layer(BemiLayer::new(|req: &axum::http::Request<Body>| json!({"path": req.uri().path()})));
/// # }
/// ```
pub fn routes<S: TodoStore>(store: S) -> Router {
    Router::new()
        .route("/todo", get(list::<S>).post(create::<S>))
        .route("/todo/{id}/complete", put(complete::<S>))
        .route("/todo/{id}", delete(remove::<S>))
        .with_state(store)
}

async fn create<S: TodoStore>(
    State(store): State<S>,
    Json(new): Json<NewTodo>,
) -> Result<(StatusCode, Json<Todo>), ApiError> {
    let todo = store.create(&new.task).await.map_err(ApiError::database)?;
    Ok((StatusCode::CREATED, Json(todo)))
}

async fn complete<S: TodoStore>(
    State(store): State<S>,
    Path(id): Path<i64>,
) -> Result<Json<Todo>, ApiError> {
    let todo = store.complete(id).await.map_err(ApiError::database)?;
    todo.map(Json).ok_or(ApiError::NotFound)
}

async fn remove<S: TodoStore>(
    State(store): State<S>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    if store.delete(id).await.map_err(ApiError::database)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

async fn list<S: TodoStore>(State(store): State<S>) -> Result<Json<Vec<Todo>>, ApiError> {
    Ok(Json(store.list().await.map_err(ApiError::database)?))
}

/// What a handler can fail with.
enum ApiError {
    NotFound,
    Database(String),
}

impl ApiError {
    fn database(error: impl std::fmt::Display) -> Self {
        Self::Database(error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "no such todo"})),
            )
                .into_response(),
            Self::Database(error) => {
                tracing::error!(%error, "database error");
                let body = Json(json!({"error": format!("database error: {error}")}));
                (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
            }
        }
    }
}
