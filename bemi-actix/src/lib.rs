//! # bemi-actix
//!
//! actix-web middleware that gives every request a bemi context: each write made while serving
//! the request (through `bemi_tokio_postgres::BemiClient` or `bemi_sqlx::BemiPool`)
//! carries it into the audit trail.
//!
//! ```
//! use actix_web::{App, HttpResponse, dev::ServiceRequest, test, web};
//! use bemi_actix::Bemi;
//! use bemi_core::context;
//! use serde_json::{Value, json};
//!
//! async fn create_todo() -> HttpResponse {
//!     // Writes through `BemiClient` here carry this context; a handler may add to it.
//!     context::merge(json!({"role": "admin"})).unwrap();
//!     HttpResponse::Created().json(Value::Object(context::current().unwrap()))
//! }
//!
//! # actix_web::rt::System::new().block_on(async {
//! let app = test::init_service(
//!     App::new()
//!         .wrap(Bemi::new(|req: &ServiceRequest| {
//!             json!({
//!                 "endpoint": req.path(),
//!                 "method": req.method().as_str(),
//!                 "user_id": req.headers().get("x-user-id").and_then(|v| v.to_str().ok()),
//!             })
//!         }))
//!         .route("/todo", web::post().to(create_todo)),
//! )
//! .await;
//! let request = test::TestRequest::post().uri("/todo").insert_header(("x-user-id", "187234"));
//! let seen: Value = test::call_and_read_body_json(&app, request.to_request()).await;
//! assert_eq!(
//!     seen,
//!     json!({"endpoint": "/todo", "method": "POST", "user_id": "187234", "role": "admin"})
//! );
//! # });
//! ```
//!
//! The context is in scope for the inner service's `call` and for every poll of the response
//! future it returns; a [`bemi_core::context::merge`] in a handler is seen by the later writes of
//! the same request.
//!
//! # What the closure may return
//!
//! - a JSON **object**: the request's context;
//! - `null`: no context for this request;
//! - anything else (an array, a string, a number, a boolean): treated like `null`, and a
//!   `tracing` warning names the kind that was returned. The middleware never panics on it.
//!
//! # `web::block`, `spawn_blocking` and spawned tasks
//!
//! The context belongs to the request's task. A closure given to `web::block` runs on a thread
//! of the blocking pool **without** it, and so do tasks started with `actix_web::rt::spawn` or
//! `tokio::spawn`. Capture the context before leaving the request and enter it again with
//! [`bemi_core::context::sync_scope`] (blocking code) or
//! [`bemi_core::context::ContextExt::with_context`] / `in_current_context` (futures):
//!
//! ```
//! use actix_web::{App, HttpResponse, dev::ServiceRequest, test, web};
//! use bemi_actix::Bemi;
//! use bemi_core::context;
//! use serde_json::json;
//!
//! async fn report() -> actix_web::Result<HttpResponse> {
//!     // Without help, the blocking closure has no context.
//!     let lost = web::block(context::current).await?;
//!
//!     // Carried: capture it here, enter it there.
//!     let captured = context::current();
//!     let carried = web::block(move || match captured {
//!         Some(ctx) => context::sync_scope(ctx, || {
//!             // Blocking writes made here carry the request's context.
//!             context::current()
//!         }),
//!         None => None,
//!     })
//!     .await?;
//!
//!     Ok(HttpResponse::Ok().json(json!({"lost": lost, "carried": carried})))
//! }
//!
//! # actix_web::rt::System::new().block_on(async {
//! let app = test::init_service(
//!     App::new()
//!         .wrap(Bemi::new(|req: &ServiceRequest| json!({"endpoint": req.path()})))
//!         .route("/report", web::get().to(report)),
//! )
//! .await;
//! let request = test::TestRequest::get().uri("/report").to_request();
//! let seen: serde_json::Value = test::call_and_read_body_json(&app, request).await;
//! assert_eq!(seen, json!({"lost": null, "carried": {"endpoint": "/report"}}));
//! # });
//! ```

//!
//! # Streaming response bodies
//!
//! A body given to `HttpResponse::streaming` is polled by the server after the middleware's
//! future has finished, outside the request's context. Wrap the stream in the handler with
//! [`bemi_core::context::ContextExt::in_current_context`] to carry a copy of it:
//!
//! ```
//! use actix_web::{HttpResponse, web::Bytes};
//! use bemi_core::context::ContextExt as _;
//!
//! /// `rows` produces the body (and may write while doing so).
//! fn export<S>(rows: S) -> HttpResponse
//! where
//!     S: futures_core::Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
//! {
//!     // Writes made while the body is produced carry the request's context.
//!     HttpResponse::Ok().streaming(rows.in_current_context())
//! }
//! ```

pub mod middleware;

pub use middleware::{Bemi, BemiMiddleware, ResponseFuture};
