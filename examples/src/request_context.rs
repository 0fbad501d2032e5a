//! The context of a request: `user_id` (from the `x-user-id` header; a JSON number when it is
//! one), `endpoint` (the request path) and `method`.
//!
//! ```
//! use bemi_examples::request_context;
//! use serde_json::json;
//!
//! let request = axum::http::Request::post("/todo").header("x-user-id", "187234").body(()).unwrap();
//! assert_eq!(
//!     request_context::for_http(&request),
//!     json!({"user_id": 187234, "endpoint": "/todo", "method": "POST"})
//! );
//! ```

use serde_json::{Map, Value};

/// The header that names the user.
///
/// ```
/// assert_eq!(bemi_examples::request_context::USER_HEADER, "x-user-id");
/// ```
pub const USER_HEADER: &str = "x-user-id";

/// The context of a request, from its parts. A missing (or non-text) user header leaves out
/// `user_id`.
///
/// ```
/// use serde_json::json;
///
/// let ctx = bemi_examples::request_context::from_parts("/todo/1", "DELETE", Some("alice"));
/// assert_eq!(ctx, json!({"user_id": "alice", "endpoint": "/todo/1", "method": "DELETE"}));
/// ```
pub fn from_parts(path: &str, method: &str, user: Option<&str>) -> Value {
    let mut context = Map::new();
    if let Some(user) = user {
        let user_id = match user.trim().parse::<i64>() {
            Ok(number) => Value::from(number),
            Err(_) => Value::from(user),
        };
        context.insert("user_id".to_owned(), user_id);
    }
    context.insert("endpoint".to_owned(), Value::from(path));
    context.insert("method".to_owned(), Value::from(method));
    Value::Object(context)
}

/// The context of an `http` request: the closure of the axum and GraphQL apps' `BemiLayer`.
///
/// ```
/// let request = axum::http::Request::get("/todo").body(()).unwrap();
/// let ctx = bemi_examples::request_context::for_http(&request);
/// assert_eq!(ctx["method"], "GET");
/// ```
pub fn for_http<B>(request: &axum::http::Request<B>) -> Value {
    let user = request
        .headers()
        .get(USER_HEADER)
        .and_then(|value| value.to_str().ok());
    from_parts(request.uri().path(), request.method().as_str(), user)
}

/// The context of an actix-web request: the closure of the actix app's `Bemi` middleware.
///
/// ```
/// let request = actix_web::test::TestRequest::put()
///     .uri("/todo/1/complete")
///     .insert_header(("x-user-id", "7"))
///     .to_srv_request();
/// let ctx = bemi_examples::request_context::for_actix(&request);
/// assert_eq!(ctx["user_id"], 7);
/// assert_eq!(ctx["endpoint"], "/todo/1/complete");
/// ```
#[cfg(feature = "actix")]
pub fn for_actix(request: &actix_web::dev::ServiceRequest) -> Value {
    let user = request
        .headers()
        .get(USER_HEADER)
        .and_then(|value| value.to_str().ok());
    from_parts(request.path(), request.method().as_str(), user)
}
