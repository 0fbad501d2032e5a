//! # bemi-axum
//!
//! A Tower layer that gives every request a bemi context: each write made while serving the
//! request (through `bemi_sqlx::BemiPool` or `bemi_tokio_postgres::BemiClient`)
//! carries it into the audit trail. It works for axum (`Router::layer`, `Router::route_layer`,
//! `MethodRouter::layer`) and for any Tower service of [`http::Request`]s.
//!
//! ```
//! use axum::{Router, body::Body, routing::post};
//! use bemi_axum::BemiLayer;
//! use http::Request;
//! use serde_json::json;
//!
//! fn app() -> Router {
//!     Router::new()
//!         .route("/todo", post(|| async { "created" }))
//!         .layer(BemiLayer::new(|req: &Request<Body>| {
//!             json!({"endpoint": req.uri().path(), "method": req.method().as_str()})
//!         }))
//! }
//! # let _ = app();
//! ```
//!
//! See [`layer`] for what the layer guarantees.

pub mod layer;

pub use layer::{Bemi, BemiLayer, ResponseFuture};
