//! The layer ([`BemiLayer`]), the service it makes ([`Bemi`]) and that service's response
//! future ([`ResponseFuture`]).
//!
//! For each request the layer calls your closure with the request, and runs the inner service
//! inside the JSON object it returns: the context is in scope for the inner service's synchronous
//! `call` and for every poll of the response future it returns. A handler can enrich the context
//! with [`bemi_core::context::merge`] (after authentication, say); the later writes of the same
//! request see the change. Inside a context set by an enclosing layer, the request's context
//! replaces it (it is not merged) until the request is done.
//!
//! ```
//! use axum::{Router, body::Body, routing::post};
//! use bemi_axum::BemiLayer;
//! use bemi_core::context;
//! use http::{Request, StatusCode};
//! use serde_json::{Value, json};
//! use tower::ServiceExt as _;
//!
//! async fn create_todo() -> String {
//!     // Writes through `BemiPool` here carry this context; a handler may add to it.
//!     context::merge(json!({"role": "admin"})).unwrap();
//!     Value::Object(context::current().unwrap()).to_string()
//! }
//!
//! fn app() -> Router {
//!     Router::new()
//!         .route("/todo", post(create_todo))
//!         .layer(BemiLayer::new(|req: &Request<Body>| {
//!             json!({
//!                 "endpoint": req.uri().path(),
//!                 "method": req.method().as_str(),
//!                 "user_id": req.headers().get("x-user-id").and_then(|v| v.to_str().ok()),
//!             })
//!         }))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let request = Request::post("/todo").header("x-user-id", "187234").body(Body::empty()).unwrap();
//! let response = app().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
//! let seen: Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(
//!     seen,
//!     json!({"endpoint": "/todo", "method": "POST", "user_id": "187234", "role": "admin"})
//! );
//! # }
//! ```
//!
//! # What the closure may return
//!
//! - a JSON **object**: the request's context;
//! - `null`: no context for this request (a context set by an outer layer, if any, stays);
//! - anything else (an array, a string, a number, a boolean): treated like `null`, and a
//!   `tracing` warning names the kind that was returned. The layer never panics on it.
//!
//! # Tasks started by the handler
//!
//! The context belongs to the request's task. A future given to `tokio::spawn` or code run in
//! `spawn_blocking` starts without one: wrap the future with
//! [`bemi_core::context::ContextExt::in_current_context`], or capture
//! [`bemi_core::context::current`] and use [`bemi_core::context::sync_scope`] in the closure.

use std::task::{Context as TaskContext, Poll};

use bemi_core::integration::{ContextMaker, MakeContext, WithContext};
use http::Request;
use tower_layer::Layer;
use tower_service::Service;

/// A Tower layer that runs each request inside the context its provider returns.
///
/// The provider is a closure or any other [`MakeContext`] implementor
/// ([`BemiLayer::with_provider`]) that gets the request (`&http::Request<B>`, before the inner
/// service sees it) and returns its context: anything
/// [`IntoContext`](bemi_core::IntoContext) takes (`json!({...})`, a `Map`, an `Option`); see the
/// [module docs](self) for what it may return. `M` is the provider's shared holder,
/// [`ContextMaker`]: cloning the layer is cheap, and its `Debug` names the provider's type.
///
/// ```
/// use axum::{Router, body::Body, routing::get};
/// use bemi_axum::BemiLayer;
/// use http::Request;
/// use serde_json::json;
///
/// let app: Router = Router::new()
///     .route("/todo", get(|| async { "[]" }))
///     .route_layer(BemiLayer::new(|req: &Request<Body>| json!({"endpoint": req.uri().path()})));
/// ```
///
/// A struct can provide the contexts too:
///
/// ```
/// use axum::{Router, body::Body, routing::get};
/// use bemi_axum::BemiLayer;
/// use bemi_core::integration::MakeContext;
/// use bemi_core::{Context, IntoContext as _};
/// use http::{Request, StatusCode};
/// use serde_json::json;
/// use tower::ServiceExt as _;
///
/// /// Every request's context: the service's name and the caller's user id.
/// struct FromHeaders {
///     service: &'static str,
/// }
///
/// impl<B> MakeContext<Request<B>> for FromHeaders {
///     fn make_context(&self, req: &Request<B>) -> Option<Context> {
///         let user = req.headers().get("x-user-id").and_then(|v| v.to_str().ok());
///         json!({"service": self.service, "user_id": user}).into_context()
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = BemiLayer::with_provider(FromHeaders { service: "todo" });
/// assert!(format!("{layer:?}").contains("FromHeaders"));
/// let app = Router::new()
///     .route("/todo", get(|| async {
///         serde_json::Value::Object(bemi_core::context::current().unwrap()).to_string()
///     }))
///     .layer(layer);
/// let request = Request::get("/todo").header("x-user-id", "187234").body(Body::empty()).unwrap();
/// let response = app.oneshot(request).await.unwrap();
/// assert_eq!(response.status(), StatusCode::OK);
/// let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
/// assert_eq!(body, r#"{"service":"todo","user_id":"187234"}"#);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct BemiLayer<M> {
    make_context: M,
}

impl<P> BemiLayer<ContextMaker<P>> {
    /// A layer whose requests run inside the context `make_context` returns for them (a
    /// closure `Fn(&http::Request<B>) -> impl IntoContext`, or any other [`MakeContext`]
    /// implementor).
    ///
    /// ```
    /// use bemi_axum::BemiLayer;
    /// use serde_json::json;
    ///
    /// let layer = BemiLayer::new(|req: &http::Request<String>| json!({"method": req.method().as_str()}));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn new(make_context: P) -> Self {
        Self {
            make_context: ContextMaker::new(make_context),
        }
    }

    /// A layer whose requests run inside the context `provider` makes for them: the same as
    /// [`BemiLayer::new`] (which takes any provider too), named as in the other framework
    /// crates, whose `new` takes closures.
    ///
    /// ```
    /// use bemi_axum::BemiLayer;
    /// use bemi_core::integration::MakeContext;
    /// use bemi_core::{Context, IntoContext as _};
    ///
    /// struct ByPath;
    /// impl<B> MakeContext<http::Request<B>> for ByPath {
    ///     fn make_context(&self, req: &http::Request<B>) -> Option<Context> {
    ///         serde_json::json!({"endpoint": req.uri().path()}).into_context()
    ///     }
    /// }
    ///
    /// let layer = BemiLayer::with_provider(ByPath);
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn with_provider(provider: P) -> Self {
        Self::new(provider)
    }
}

impl<S, M: Clone> Layer<S> for BemiLayer<M> {
    type Service = Bemi<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Bemi {
            inner,
            make_context: self.make_context.clone(),
        }
    }
}

/// The service made by [`BemiLayer`]: calls the inner service inside the request's context.
///
/// ```
/// use bemi_axum::Bemi;
/// use bemi_core::context;
/// use serde_json::json;
/// use tower::{ServiceExt as _, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(context::current()) });
/// let service = Bemi::new(inner, |req: &http::Request<()>| json!({"endpoint": req.uri().path()}));
/// let seen = service.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(seen.unwrap()["endpoint"], "/");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Bemi<S, M> {
    inner: S,
    make_context: M,
}

impl<S, P> Bemi<S, ContextMaker<P>> {
    /// Wraps `inner` so that its requests run inside the context `make_context` returns (a
    /// closure or any other [`MakeContext`] implementor).
    ///
    /// ```
    /// use serde_json::json;
    /// use tower::service_fn;
    ///
    /// let inner = service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(()) });
    /// let service = bemi_axum::Bemi::new(inner, |_: &http::Request<()>| json!({"job": "import"}));
    /// # let _ = service;
    /// ```
    #[must_use]
    pub fn new(inner: S, make_context: P) -> Self {
        Self {
            inner,
            make_context: ContextMaker::new(make_context),
        }
    }
}

impl<S, M> Bemi<S, M> {
    /// The wrapped service.
    ///
    /// ```
    /// # let inner = tower::service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(()) });
    /// # let service = bemi_axum::Bemi::new(inner, |_: &http::Request<()>| serde_json::Value::Null);
    /// let inner = service.get_ref();
    /// # let _ = inner;
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    ///
    /// ```
    /// # let inner = tower::service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(()) });
    /// # let mut service = bemi_axum::Bemi::new(inner, |_: &http::Request<()>| serde_json::Value::Null);
    /// let inner = service.get_mut();
    /// # let _ = inner;
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    ///
    /// ```
    /// # let inner = tower::service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(()) });
    /// # let service = bemi_axum::Bemi::new(inner, |_: &http::Request<()>| serde_json::Value::Null);
    /// let inner = service.into_inner();
    /// # let _ = inner;
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, B> Service<Request<B>> for Bemi<S, ContextMaker<P>>
where
    S: Service<Request<B>>,
    P: MakeContext<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The same shared context for `call` and the future: a `merge` made in either is seen by
        // the other.
        self.make_context
            .call(request, |request| self.inner.call(request))
    }
}

/// The response future of [`Bemi`]: the inner service's future, polled inside the request's
/// context. A named type; nothing is boxed. (It is bemi-core's
/// [`WithContext`], shared by every framework crate.)
///
/// ```
/// use bemi_axum::{Bemi, ResponseFuture};
/// use tower::Service as _;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = tower::service_fn(|_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(7) });
/// let mut service = Bemi::new(inner, |_: &http::Request<()>| serde_json::json!({}));
/// let future: ResponseFuture<_> = service.call(http::Request::new(()));
/// assert_eq!(future.await.unwrap(), 7);
/// # }
/// ```
pub type ResponseFuture<F> = WithContext<F>;

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Future;
    use std::panic::AssertUnwindSafe;
    use std::pin::Pin;

    use bemi_core::context::{self, Context};
    use futures_util::FutureExt as _;
    use serde_json::{Value, json};
    use tower::{ServiceExt as _, service_fn};

    use super::*;

    /// A service that reports the context seen in `call` and in the future, after merging
    /// `{"step": "handler"}` in the future.
    fn probe() -> impl Service<
        Request<()>,
        Response = (Option<Context>, Option<Context>),
        Error = Infallible,
        Future = impl Future + Send,
    > + Clone {
        service_fn(|_req: Request<()>| {
            let in_call = context::current();
            async move {
                tokio::task::yield_now().await;
                let _ = context::merge(json!({"step": "handler"}));
                tokio::task::yield_now().await;
                Ok::<_, Infallible>((in_call, context::current()))
            }
        })
    }

    #[tokio::test]
    async fn context_is_in_scope_for_call_and_every_poll() {
        let service = Bemi::new(
            probe(),
            |req: &Request<()>| json!({"endpoint": req.uri().path()}),
        );
        let (in_call, in_future) = service
            .oneshot(Request::get("/todo").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(in_call.unwrap()["endpoint"], "/todo");
        let in_future = in_future.unwrap();
        assert_eq!(in_future["endpoint"], "/todo");
        assert_eq!(in_future["step"], "handler");
        assert_eq!(context::current(), None);
    }

    #[tokio::test]
    async fn null_means_no_context_and_keeps_an_outer_one() {
        let service = Bemi::new(probe(), |_: &Request<()>| Value::Null);
        let (in_call, _) = service.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(in_call, None);

        let outer = json!({"job": "outer"});
        let (in_call, in_future) = context::scope(outer, service.oneshot(Request::new(())))
            .await
            .unwrap();
        assert_eq!(in_call.unwrap()["job"], "outer");
        assert_eq!(in_future.unwrap()["step"], "handler");
    }

    #[tokio::test]
    async fn non_objects_mean_no_context_without_panicking() {
        for value in [json!([1, 2]), json!("user"), json!(187234), json!(true)] {
            let service = Bemi::new(probe(), move |_: &Request<()>| value.clone());
            let (in_call, in_future) = service.oneshot(Request::new(())).await.unwrap();
            assert_eq!((in_call, in_future), (None, None));
        }
    }

    /// A body stream that yields, once, the context it is polled in (or `none`).
    struct ContextBody {
        done: bool,
    }

    impl futures_core::Stream for ContextBody {
        type Item = Result<axum::body::Bytes, Infallible>;

        fn poll_next(
            mut self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<Option<Self::Item>> {
            if std::mem::replace(&mut self.done, true) {
                return Poll::Ready(None);
            }
            let seen =
                context::current().map_or("none".to_owned(), |c| Value::Object(c).to_string());
            Poll::Ready(Some(Ok(seen.into())))
        }
    }

    #[tokio::test]
    async fn streaming_bodies_need_the_stream_helper() {
        use axum::body::Body;
        use axum::routing::get;
        use bemi_core::context::ContextExt as _;

        let app = axum::Router::new()
            .route(
                "/lost",
                get(|| async { Body::from_stream(ContextBody { done: false }) }),
            )
            .route(
                "/carried",
                get(|| async {
                    Body::from_stream(ContextBody { done: false }.in_current_context())
                }),
            )
            .layer(BemiLayer::new(
                |req: &Request<Body>| json!({"endpoint": req.uri().path()}),
            ));
        for (path, expected) in [
            ("/lost", "none"),
            ("/carried", r#"{"endpoint":"/carried"}"#),
        ] {
            let request = Request::get(path).body(Body::empty()).unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            // The server polls the body after the response future has finished.
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            assert_eq!(body, expected, "{path}");
        }
    }

    /// A service that panics in its future (after an await point) for `/panic-in-future`, in
    /// its synchronous `call` for `/panic-in-call`, and otherwise reports its context.
    #[derive(Clone)]
    struct Panicky;

    impl Service<Request<()>> for Panicky {
        type Response = Option<Context>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Option<Context>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<()>) -> Self::Future {
            match request.uri().path() {
                "/panic-in-call" => panic!("the inner service's call panicked"),
                "/panic-in-future" => Box::pin(async {
                    let _ = context::merge(json!({"leak": true}));
                    tokio::task::yield_now().await;
                    panic!("the inner service's future panicked")
                }),
                _ => Box::pin(async {
                    tokio::task::yield_now().await;
                    Ok(context::current())
                }),
            }
        }
    }

    #[tokio::test]
    async fn a_panicking_request_leaves_no_context_behind() {
        let service = Bemi::new(
            Panicky,
            |req: &Request<()>| json!({"path": req.uri().path()}),
        );
        for path in ["/panic-in-future", "/panic-in-call"] {
            let request = Request::get(path).body(()).unwrap();
            let mut panicking = service.clone();
            let outcome = AssertUnwindSafe(async move {
                // The synchronous `call` runs inside the poll, so a panic there is caught too.
                panicking.call(request).await
            })
            .catch_unwind()
            .await;
            assert!(outcome.is_err(), "{path} should have panicked");
            // Nothing is left in scope on this task (and thread)...
            assert_eq!(context::current(), None, "after {path}");
            // ...and the next request sees only its own context.
            let request = Request::get("/next").body(()).unwrap();
            let seen = service.clone().oneshot(request).await.unwrap();
            assert_eq!(seen.map(Value::Object), Some(json!({"path": "/next"})));
        }

        // Inside an outer scope, the outer context is back after the panic.
        let outer = json!({"job": "outer"});
        let after = context::scope(outer.clone(), async {
            let request = Request::get("/panic-in-future").body(()).unwrap();
            assert!(
                AssertUnwindSafe(service.clone().oneshot(request))
                    .catch_unwind()
                    .await
                    .is_err()
            );
            context::current()
        })
        .await;
        assert_eq!(after.map(Value::Object), Some(outer));
    }

    #[tokio::test]
    async fn concurrent_requests_keep_their_own_context() {
        let layer = BemiLayer::new(|req: &Request<()>| json!({"path": req.uri().path()}));
        let service = layer.layer(probe());
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..200 {
            let service = service.clone();
            tasks.spawn(async move {
                let request = Request::get(format!("/r/{n}")).body(()).unwrap();
                let (_, seen) = service.oneshot(request).await.unwrap();
                (n, seen.unwrap())
            });
        }
        while let Some(result) = tasks.join_next().await {
            let (n, seen) = result.unwrap();
            assert_eq!(seen["path"], format!("/r/{n}"));
        }
    }
}
