//! The todo app as a GraphQL server (async-graphql over axum), with the sqlx adapter.
//!
//! `POST /graphql` takes a GraphQL request (or a batch) as JSON. The schema:
//!
//! ```graphql
//! type Query { todos: [Todo!]! }
//! type Mutation {
//!   createTodo(task: String!): Todo!
//!   completeTodo(id: Int!): Todo
//!   deleteTodo(id: Int!): Boolean!
//! }
//! type Todo { id: Int! task: String! isCompleted: Boolean! }
//! ```
//!
//! Requests run behind `BemiLayer::new(request_context::for_http)` (`user_id`, `endpoint`,
//! `method`) and the schema has the [`BemiExtension`], which adds the operation's
//! `operationName` and `variables`, so a write made by `createTodo` carries all five.
//!
//! ```no_run
//! # async fn run(pool: sqlx::PgPool) -> std::io::Result<()> {
//! let app = bemi_examples::graphql_app::router(bemi_sqlx::BemiPool::new(pool));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

use async_graphql::{BatchRequest, BatchResponse, Context, EmptySubscription, Object, Schema};
use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use bemi_async_graphql::BemiExtension;
use bemi_axum::BemiLayer;
use bemi_sqlx::BemiPool;

use crate::request_context;
use crate::store;
use crate::todo::Todo;

/// The schema of the app.
///
/// ```no_run
/// # fn run(pool: sqlx::PgPool) {
/// let schema: bemi_examples::graphql_app::TodoSchema =
///     bemi_examples::graphql_app::schema(bemi_sqlx::BemiPool::new(pool));
/// # }
/// ```
pub type TodoSchema = Schema<Query, Mutation, EmptySubscription>;

/// The schema, with `pool` as its data and the [`BemiExtension`].
///
/// ```no_run
/// # fn run(pool: sqlx::PgPool) {
/// let schema = bemi_examples::graphql_app::schema(bemi_sqlx::BemiPool::new(pool));
/// println!("{}", schema.sdl());
/// # }
/// ```
pub fn schema(pool: BemiPool) -> TodoSchema {
    Schema::build(Query, Mutation, EmptySubscription)
        .data(pool)
        .extension(BemiExtension::new())
        .finish()
}

/// The app: `POST /graphql` behind `BemiLayer::new(request_context::for_http)`.
///
/// ```no_run
/// # fn run(pool: sqlx::PgPool) {
/// let app: axum::Router = bemi_examples::graphql_app::router(bemi_sqlx::BemiPool::new(pool));
/// # }
/// ```
pub fn router(pool: BemiPool) -> Router {
    Router::new()
        .route("/graphql", post(graphql))
        .with_state(schema(pool))
        .layer(BemiLayer::new(request_context::for_http::<Body>))
}

async fn graphql(
    State(schema): State<TodoSchema>,
    Json(request): Json<BatchRequest>,
) -> Json<BatchResponse> {
    Json(schema.execute_batch(request).await)
}

fn pool<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a BemiPool> {
    ctx.data::<BemiPool>()
}

/// The queries.
///
/// ```
/// # use async_graphql::{EmptySubscription, Schema};
/// # use bemi_examples::graphql_app::{Mutation, Query};
/// let sdl = Schema::build(Query, Mutation, EmptySubscription).finish().sdl();
/// assert!(sdl.contains("todos: [Todo!]!"));
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct Query;

#[Object]
impl Query {
    /// Every todo, oldest first.
    async fn todos(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Todo>> {
        Ok(store::sqlx::list(pool(ctx)?).await?)
    }
}

/// The mutations.
///
/// ```
/// # use async_graphql::{EmptySubscription, Schema};
/// # use bemi_examples::graphql_app::{Mutation, Query};
/// let sdl = Schema::build(Query, Mutation, EmptySubscription).finish().sdl();
/// assert!(sdl.contains("createTodo(task: String!): Todo!"));
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct Mutation;

#[Object]
impl Mutation {
    /// Creates a todo.
    async fn create_todo(&self, ctx: &Context<'_>, task: String) -> async_graphql::Result<Todo> {
        Ok(store::sqlx::create(pool(ctx)?, &task).await?)
    }

    /// Marks a todo completed; null when there is no such todo.
    async fn complete_todo(
        &self,
        ctx: &Context<'_>,
        id: i64,
    ) -> async_graphql::Result<Option<Todo>> {
        Ok(store::sqlx::complete(pool(ctx)?, id).await?)
    }

    /// Deletes a todo; false when there was no such todo.
    async fn delete_todo(&self, ctx: &Context<'_>, id: i64) -> async_graphql::Result<bool> {
        Ok(store::sqlx::delete(pool(ctx)?, id).await?)
    }
}
