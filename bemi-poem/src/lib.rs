//! # bemi-poem
//!
//! [poem](https://docs.rs/poem) middleware that gives every request a bemi context: each write
//! made while serving the request (through `bemi_sqlx::BemiPool` or
//! `bemi_tokio_postgres::BemiClient`) carries it into the audit trail.
//!
//! ```
//! use bemi_core::context;
//! use bemi_poem::Bemi;
//! use poem::{EndpointExt, Request, Route, handler, post, test::TestClient};
//! use serde_json::{Value, json};
//!
//! #[handler]
//! fn create_todo() -> String {
//!     // Writes through `BemiPool` here carry this context; a handler may add to it.
//!     context::merge(json!({"role": "admin"})).unwrap();
//!     Value::Object(context::current().unwrap()).to_string()
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let app = Route::new().at("/todo", post(create_todo)).with(Bemi::new(|req: &Request| {
//!     json!({
//!         "endpoint": req.uri().path(),
//!         "method": req.method().as_str(),
//!         "user_id": req.header("x-user-id"),
//!     })
//! }));
//! let response = TestClient::new(app).post("/todo").header("x-user-id", "187234").send().await;
//! response.assert_status_is_ok();
//! response
//!     .assert_json(json!({"endpoint": "/todo", "method": "POST", "user_id": "187234", "role": "admin"}))
//!     .await;
//! # }
//! ```
//!
//! The context is in scope for the inner endpoint's `call` and for every poll of the future it
//! returns; a [`bemi_core::context::merge`] in a handler is seen by the later writes of the same
//! request. Inside a context set by an enclosing middleware, the request's context replaces it
//! (it is not merged) until the request is done.
//!
//! poem's own `tower-compat` feature is no way in for `bemi_axum::BemiLayer`: its layers see
//! poem's requests, not `http::Request`s, so use this middleware.
//!
//! # What the closure may return
//!
//! - a JSON **object**: the request's context;
//! - `null`: no context for this request (a context set by an outer middleware, if any, stays);
//! - anything else (an array, a string, a number, a boolean): treated like `null`, and a
//!   `tracing` warning names the kind that was returned. The middleware never panics on it.
//!
//! # Route templates
//!
//! A middleware on the whole [`Route`](poem::Route) runs before the route is matched, so its
//! closure sees the request's path (`/todo/17`). Put it on the route's endpoint instead and the
//! closure can read the matched template, [`poem::PathPattern`]:
//!
//! ```
//! use bemi_core::context;
//! use bemi_poem::Bemi;
//! use poem::PathPattern;
//! use poem::{EndpointExt, Request, Route, handler, put, test::TestClient};
//! use serde_json::json;
//!
//! #[handler]
//! fn complete() -> String {
//!     context::current().unwrap()["endpoint"].to_string()
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let bemi = Bemi::new(|req: &Request| {
//!     json!({"endpoint": req.data::<PathPattern>().map(|pattern| &*pattern.0)})
//! });
//! let app = Route::new().at("/todo/:id/complete", put(complete).with(bemi));
//! let response = TestClient::new(app).put("/todo/17/complete").send().await;
//! response.assert_text(r#""/todo/:id/complete""#).await;
//! # }
//! ```
//!
//! # Spawned tasks and streaming response bodies
//!
//! The context belongs to the request's task. A future given to `tokio::spawn`, code run in
//! `spawn_blocking`, and a streaming body (`Body::from_bytes_stream`, SSE) — which the server
//! polls after the endpoint's future has finished — run **without** it. Wrap the future or the
//! stream with [`bemi_core::context::ContextExt::in_current_context`] inside the handler to carry a
//! copy of the context:
//!
//! ```
//! use bemi_core::context::ContextExt as _;
//! use poem::Body;
//!
//! /// `rows` produces the body (and may write while doing so).
//! fn export<S>(rows: S) -> Body
//! where
//!     S: futures_core::Stream<Item = std::io::Result<String>> + Send + 'static,
//! {
//!     // Writes made while the body is produced carry the request's context.
//!     Body::from_bytes_stream(rows.in_current_context())
//! }
//! ```

pub mod middleware;

pub use middleware::{Bemi, BemiEndpoint};
