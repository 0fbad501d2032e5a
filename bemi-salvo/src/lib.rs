//! # bemi-salvo
//!
//! A [salvo](https://docs.rs/salvo) hoop (middleware) that gives every request a bemi context:
//! each write made while serving the request (through `bemi_sqlx::BemiPool` or
//! `bemi_tokio_postgres::BemiClient`) carries it into the audit trail.
//!
//! ```
//! use bemi_core::context;
//! use bemi_salvo::Bemi;
//! use salvo::prelude::*;
//! use serde_json::{Value, json};
//!
//! #[handler]
//! async fn create_todo(res: &mut Response) {
//!     // Writes through `BemiPool` here carry this context; a handler may add to it.
//!     context::merge(json!({"role": "admin"})).unwrap();
//!     res.render(Json(Value::Object(context::current().unwrap())));
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let router = Router::new()
//!     .hoop(Bemi::new(|req: &Request| {
//!         json!({
//!             "endpoint": req.uri().path(),
//!             "method": req.method().as_str(),
//!             "user_id": req.header::<String>("x-user-id"),
//!         })
//!     }))
//!     .push(Router::with_path("todo").post(create_todo));
//!
//! let acceptor = TcpListener::new("127.0.0.1:0").bind().await;
//! let addr = acceptor.local_addr().unwrap();
//! tokio::spawn(Server::new(acceptor).serve(router));
//!
//! let response = reqwest::Client::new()
//!     .post(format!("http://{addr}/todo"))
//!     .header("x-user-id", "187234")
//!     .send()
//!     .await
//!     .unwrap();
//! let seen: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
//! assert_eq!(
//!     seen,
//!     json!({"endpoint": "/todo", "method": "POST", "user_id": "187234", "role": "admin"})
//! );
//! # }
//! ```
//!
//! The hoop runs the rest of the request's chain — the hoops after it and the goal handler —
//! with `FlowCtrl::call_next` inside the request's context, so a
//! [`bemi_core::context::merge`] in a handler or a later hoop is seen by the later writes of the
//! same request. Hoops that run **before** it, router filters and catchers (the error pages
//! written after the chain) have no context.
//!
//! - `Router::hoop` runs for the routes that matched; to give 404s and other unmatched requests a
//!   context too, put the hoop on the service: `Service::new(router).hoop(Bemi::new(...))`.
//! - Prefer this hoop to `bemi_axum::BemiLayer` through salvo's `tower-compat`. The compat
//!   adapter (in `salvo_extra`) keeps the layer's context in 1.0 but loses it in 1.1, where it
//!   runs the rest of the chain outside the layer's future; it also needs a
//!   `tower::buffer::Buffer` worker task. This hoop behaves the same on salvo 1.0 and 1.1.
//!
//! # What the closure may return
//!
//! - a JSON **object**: the request's context;
//! - `null`: no context for this request (a context set by an outer scope, if any, stays);
//! - anything else (an array, a string, a number, a boolean): treated like `null`, and a
//!   `tracing` warning names the kind that was returned. The hoop never panics on it.
//!
//! # Route templates
//!
//! With salvo's `matched-path` feature, `Request::matched_path` holds the template of the route
//! that matched (`todo/{id}/complete`) by the time the hoops run:
//!
//! ```
//! use bemi_core::context;
//! use bemi_salvo::Bemi;
//! use salvo::prelude::*;
//! use serde_json::json;
//!
//! #[handler]
//! async fn complete(res: &mut Response) {
//!     res.render(context::current().unwrap()["endpoint"].to_string());
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let router = Router::new()
//!     .hoop(Bemi::new(|req: &Request| json!({"endpoint": format!("/{}", req.matched_path())})))
//!     .push(Router::with_path("todo/{id}/complete").put(complete));
//! let acceptor = TcpListener::new("127.0.0.1:0").bind().await;
//! let addr = acceptor.local_addr().unwrap();
//! tokio::spawn(Server::new(acceptor).serve(router));
//!
//! let response = reqwest::Client::new().put(format!("http://{addr}/todo/17/complete")).send().await;
//! assert_eq!(response.unwrap().text().await.unwrap(), r#""/todo/{id}/complete""#);
//! # }
//! ```
//!
//! # Spawned tasks and streaming response bodies
//!
//! The context belongs to the request's task. A future given to `tokio::spawn`, code run in
//! `spawn_blocking`, and a streaming body (`Response::stream`, SSE) — which the server polls after
//! the chain has finished — run **without** it. Wrap the future or the stream with
//! [`bemi_core::context::ContextExt::in_current_context`] inside the handler to carry a copy of the
//! context:
//!
//! ```
//! use bemi_core::context::ContextExt as _;
//! use salvo::Response;
//!
//! /// `rows` produces the body (and may write while doing so).
//! fn export<S>(res: &mut Response, rows: S)
//! where
//!     S: futures_core::Stream<Item = Result<String, std::io::Error>> + Send + 'static,
//! {
//!     // Writes made while the body is produced carry the request's context.
//!     res.stream(rows.in_current_context());
//! }
//! ```

pub mod hoop;

pub use hoop::Bemi;
