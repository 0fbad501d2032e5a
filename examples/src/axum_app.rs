//! The todo app on axum, with the sqlx adapter.
//!
//! [`router`] is the app: its routes behind a [`BemiLayer`] whose closure is
//! [`request_context::for_http`]. [`routes`] are the same routes without the layer, to put your
//! own layer in front.
//!
//! ```no_run
//! # async fn run(pool: sqlx::PgPool) -> std::io::Result<()> {
//! let app = bemi_examples::axum_app::router(bemi_core::sqlx::BemiPool::new(pool));
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
use bemi_core::sqlx::BemiPool;
use serde_json::json;

use crate::request_context;
use crate::store;
use crate::todo::{NewTodo, Todo};

/// The app: [`routes`] behind `BemiLayer::new(request_context::for_http)`.
///
/// ```no_run
/// # fn run(pool: sqlx::PgPool) {
/// let app: axum::Router = bemi_examples::axum_app::router(bemi_core::sqlx::BemiPool::new(pool));
/// # }
/// ```
pub fn router(pool: BemiPool) -> Router {
    routes(pool).layer(BemiLayer::new(request_context::for_http::<Body>))
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
/// let app = bemi_examples::axum_app::routes(bemi_core::sqlx::BemiPool::new(pool))
///     .layer(BemiLayer::new(|req: &axum::http::Request<Body>| json!({"path": req.uri().path()})));
/// # }
/// ```
pub fn routes(pool: BemiPool) -> Router {
    Router::new()
        .route("/todo", get(list).post(create))
        .route("/todo/{id}/complete", put(complete))
        .route("/todo/{id}", delete(remove))
        .with_state(pool)
}

async fn create(
    State(pool): State<BemiPool>,
    Json(new): Json<NewTodo>,
) -> Result<(StatusCode, Json<Todo>), ApiError> {
    let todo = store::sqlx::create(&pool, &new.task).await?;
    Ok((StatusCode::CREATED, Json(todo)))
}

async fn complete(
    State(pool): State<BemiPool>,
    Path(id): Path<i64>,
) -> Result<Json<Todo>, ApiError> {
    let todo = store::sqlx::complete(&pool, id).await?;
    todo.map(Json).ok_or(ApiError::NotFound)
}

async fn remove(State(pool): State<BemiPool>, Path(id): Path<i64>) -> Result<StatusCode, ApiError> {
    if store::sqlx::delete(&pool, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

async fn list(State(pool): State<BemiPool>) -> Result<Json<Vec<Todo>>, ApiError> {
    Ok(Json(store::sqlx::list(&pool).await?))
}

/// What a handler can fail with.
enum ApiError {
    NotFound,
    Database(sqlx::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
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
