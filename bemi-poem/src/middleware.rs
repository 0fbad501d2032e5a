//! The middleware ([`Bemi`]) and the endpoint it makes ([`BemiEndpoint`]).
//!
//! ```
//! use bemi_core::context;
//! use bemi_poem::Bemi;
//! use poem::{EndpointExt, Request, delete, handler, test::TestClient};
//! use serde_json::json;
//!
//! #[handler]
//! fn remove() -> String {
//!     context::current().unwrap()["method"].to_string()
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let app = delete(remove).with(Bemi::new(|req: &Request| json!({"method": req.method().as_str()})));
//! TestClient::new(app).delete("/").send().await.assert_text(r#""DELETE""#).await;
//! # }
//! ```

use std::future::Future;

use bemi_core::IntoContext;
use bemi_core::integration::{ContextMaker, MakeContext};
use poem::{Endpoint, Middleware, Request};

/// poem middleware that runs each request inside the context its provider returns.
///
/// The provider is a closure ([`Bemi::new`]) or any other [`MakeContext`] implementor
/// ([`Bemi::with_provider`]) that gets the [`Request`] (before the inner endpoint sees it) and
/// returns its context: anything [`IntoContext`] takes (`json!({...})`, a `Map`, an `Option`); see the
/// [crate docs](crate) for what it may return. Use it with `EndpointExt::with` on a `Route`,
/// on a single route's endpoint, or on any other endpoint. `M` is the provider's shared holder,
/// [`ContextMaker`].
///
/// ```
/// use bemi_poem::Bemi;
/// use poem::{EndpointExt, Request, Route, get, handler};
/// use serde_json::json;
///
/// #[handler]
/// fn list() -> &'static str {
///     "[]"
/// }
///
/// let app = Route::new().at("/todo", get(list)).with(Bemi::new(|req: &Request| {
///     json!({"endpoint": req.uri().path(), "method": req.method().as_str()})
/// }));
/// # let _ = app;
/// ```
#[derive(Clone, Debug)]
pub struct Bemi<M> {
    make_context: M,
}

impl<P> Bemi<ContextMaker<P>> {
    /// Middleware whose requests run inside the context the closure `make_context` returns
    /// for them.
    ///
    /// ```
    /// use poem::Request;
    /// use serde_json::json;
    ///
    /// let middleware = bemi_poem::Bemi::new(|req: &Request| json!({"user_id": req.header("x-user-id")}));
    /// # let _ = middleware;
    /// ```
    #[must_use]
    pub fn new<C>(make_context: P) -> Self
    where
        P: Fn(&Request) -> C + Send + Sync + 'static,
        C: IntoContext,
    {
        Self::with_provider(make_context)
    }

    /// Middleware whose requests run inside the context `provider` makes for them: any
    /// [`MakeContext`] implementor, e.g. a struct.
    ///
    /// ```
    /// use bemi_core::integration::MakeContext;
    /// use bemi_core::{Context, IntoContext as _, context};
    /// use poem::{Endpoint, EndpointExt, Request, handler};
    ///
    /// /// Names the tenant of every request.
    /// struct Tenant(&'static str);
    /// impl MakeContext<Request> for Tenant {
    ///     fn make_context(&self, req: &Request) -> Option<Context> {
    ///         serde_json::json!({"tenant": self.0, "endpoint": req.uri().path()}).into_context()
    ///     }
    /// }
    ///
    /// #[handler]
    /// fn report() -> String {
    ///     context::current().unwrap()["tenant"].to_string()
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let endpoint = report.with(bemi_poem::Bemi::with_provider(Tenant("acme")));
    /// let response = endpoint.call(Request::default()).await.unwrap();
    /// assert_eq!(response.into_body().into_string().await.unwrap(), r#""acme""#);
    /// # }
    /// ```
    #[must_use]
    pub fn with_provider(provider: P) -> Self
    where
        P: MakeContext<Request> + Send + Sync + 'static,
    {
        Self {
            make_context: ContextMaker::new(provider),
        }
    }
}

impl<E, P> Middleware<E> for Bemi<ContextMaker<P>>
where
    E: Endpoint,
    P: MakeContext<Request> + Send + Sync + 'static,
{
    type Output = BemiEndpoint<E, ContextMaker<P>>;

    fn transform(&self, inner: E) -> Self::Output {
        BemiEndpoint {
            inner,
            make_context: self.make_context.clone(),
        }
    }
}

/// The endpoint made by [`Bemi`]: calls the inner endpoint inside the request's context.
///
/// You do not build it yourself; `endpoint.with(Bemi::new(...))` does.
///
/// ```
/// use bemi_core::context;
/// use bemi_poem::{Bemi, BemiEndpoint};
/// use poem::{Endpoint, EndpointExt, Request, handler};
/// use serde_json::json;
///
/// #[handler]
/// fn report() -> String {
///     context::current().unwrap()["job"].to_string()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let endpoint: BemiEndpoint<_, _> = report.with(Bemi::new(|_: &Request| json!({"job": "import"})));
/// let response = endpoint.call(Request::default()).await.unwrap();
/// assert_eq!(response.into_body().into_string().await.unwrap(), r#""import""#);
/// # }
/// ```
#[derive(Debug)]
pub struct BemiEndpoint<E, M> {
    inner: E,
    make_context: M,
}

impl<E, M> BemiEndpoint<E, M> {
    /// The wrapped endpoint.
    ///
    /// ```
    /// use poem::{EndpointExt, Request, handler};
    ///
    /// #[handler]
    /// fn index() {}
    ///
    /// let endpoint = index.with(bemi_poem::Bemi::new(|_: &Request| serde_json::Value::Null));
    /// let inner = endpoint.get_ref();
    /// # let _ = inner;
    /// ```
    pub fn get_ref(&self) -> &E {
        &self.inner
    }

    /// Unwraps the inner endpoint.
    ///
    /// ```
    /// use poem::{EndpointExt, Request, handler};
    ///
    /// #[handler]
    /// fn index() {}
    ///
    /// let endpoint = index.with(bemi_poem::Bemi::new(|_: &Request| serde_json::Value::Null));
    /// let inner = endpoint.into_inner();
    /// # let _ = inner;
    /// ```
    pub fn into_inner(self) -> E {
        self.inner
    }
}

impl<E, P> Endpoint for BemiEndpoint<E, ContextMaker<P>>
where
    E: Endpoint,
    P: MakeContext<Request> + Send + Sync,
{
    type Output = E::Output;

    fn call(&self, request: Request) -> impl Future<Output = poem::Result<E::Output>> + Send {
        // The same shared context for `call` and the future: a `merge` made in either is seen by
        // the other. (A `bemi_core::context::WithContext`: nothing is boxed.)
        self.make_context
            .call(request, |request| self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context as TaskContext, Poll};

    use bemi_core::context::{self, Context, ContextExt as _};
    use futures_util::FutureExt as _;
    use poem::PathPattern;
    use poem::http::StatusCode;
    use poem::test::TestClient;
    use poem::web::Json;
    use poem::{Body, EndpointExt as _, IntoResponse, Route, get, handler};
    use serde_json::{Value, json};

    use super::*;

    /// An endpoint that reports the context seen in its synchronous `call` and in its future,
    /// after merging `{"step": "handler"}` in the future across await points.
    struct Probe;

    impl Endpoint for Probe {
        type Output = Json<(Option<Context>, Option<Context>)>;

        fn call(&self, _: Request) -> impl Future<Output = poem::Result<Self::Output>> + Send {
            let in_call = context::current();
            async move {
                tokio::task::yield_now().await;
                let _ = context::merge(json!({"step": "handler"}));
                tokio::task::yield_now().await;
                Ok(Json((in_call, context::current())))
            }
        }
    }

    async fn seen_with(
        make_context: impl Fn(&Request) -> Value + Send + Sync + 'static,
        path: &str,
    ) -> (Option<Context>, Option<Context>) {
        let endpoint = Probe.with(Bemi::new(make_context));
        let Json(seen) = endpoint
            .call(Request::builder().uri_str(path).finish())
            .await
            .unwrap();
        seen
    }

    #[tokio::test]
    async fn context_is_in_scope_for_call_and_every_poll() {
        let (in_call, in_future) = seen_with(
            |req: &Request| json!({"endpoint": req.uri().path()}),
            "/todo",
        )
        .await;
        assert_eq!(
            in_call.map(Value::Object),
            Some(json!({"endpoint": "/todo"}))
        );
        assert_eq!(
            in_future.map(Value::Object),
            Some(json!({"endpoint": "/todo", "step": "handler"}))
        );
        assert_eq!(context::current(), None);
    }

    #[tokio::test]
    async fn null_means_no_context_and_keeps_an_outer_one() {
        let (in_call, in_future) = seen_with(|_: &Request| Value::Null, "/").await;
        assert_eq!((in_call, in_future), (None, None));

        let outer = json!({"job": "outer"});
        let (in_call, in_future) =
            context::scope(outer, seen_with(|_: &Request| Value::Null, "/")).await;
        assert_eq!(in_call.unwrap()["job"], "outer");
        assert_eq!(in_future.unwrap()["step"], "handler");
    }

    #[tokio::test]
    async fn non_objects_mean_no_context_without_panicking() {
        for value in [json!([1, 2]), json!("user"), json!(187234), json!(true)] {
            let seen = seen_with(move |_: &Request| value.clone(), "/").await;
            assert_eq!(seen, (None, None));
        }
    }

    #[tokio::test]
    async fn a_request_context_replaces_an_outer_one_until_it_is_done() {
        let outer = json!({"job": "outer"});
        let (in_request, after) = context::scope(outer.clone(), async {
            let seen = seen_with(|_: &Request| json!({"user_id": 1}), "/").await;
            (seen.1, context::current())
        })
        .await;
        assert_eq!(
            in_request.map(Value::Object),
            Some(json!({"user_id": 1, "step": "handler"}))
        );
        assert_eq!(after.map(Value::Object), Some(outer));
    }

    #[handler]
    fn report() -> Json<Option<Context>> {
        Json(context::current())
    }

    #[tokio::test]
    async fn through_a_route_with_errors_and_templates() {
        let outer = Bemi::new(
            |req: &Request| json!({"endpoint": req.uri().path(), "user_id": req.header("x-user-id")}),
        );
        let inner = Bemi::new(
            |req: &Request| json!({"template": req.data::<PathPattern>().map(|pattern| &*pattern.0)}),
        );
        let app = Route::new()
            .at("/todo/:id", get(report))
            .at("/templated/:id", get(report).with(inner))
            .with(outer);
        let client = TestClient::new(app);

        let response = client.get("/todo/7").header("x-user-id", "42").send().await;
        response.assert_status_is_ok();
        response
            .assert_json(json!({"endpoint": "/todo/7", "user_id": "42"}))
            .await;

        // The innermost middleware's context wins; the outer one's is not merged into it.
        let response = client.get("/templated/7").send().await;
        response
            .assert_json(json!({"template": "/templated/:id"}))
            .await;

        // A route that does not exist is an error passed through unchanged.
        let response = client.get("/nowhere").send().await;
        response.assert_status(StatusCode::NOT_FOUND);
    }

    /// A body stream that yields, once, the context it is polled in (or `none`).
    struct ContextBody {
        done: bool,
    }

    impl futures_core::Stream for ContextBody {
        type Item = Result<String, std::io::Error>;

        fn poll_next(
            mut self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<Option<Self::Item>> {
            if std::mem::replace(&mut self.done, true) {
                return Poll::Ready(None);
            }
            let seen =
                context::current().map_or("none".to_owned(), |c| Value::Object(c).to_string());
            Poll::Ready(Some(Ok(seen)))
        }
    }

    #[tokio::test]
    async fn streaming_bodies_need_the_stream_helper() {
        #[handler]
        fn lost() -> Body {
            Body::from_bytes_stream(ContextBody { done: false })
        }

        #[handler]
        fn carried() -> Body {
            Body::from_bytes_stream(ContextBody { done: false }.in_current_context())
        }

        let app = Route::new()
            .at("/lost", get(lost))
            .at("/carried", get(carried))
            .with(Bemi::new(
                |req: &Request| json!({"endpoint": req.uri().path()}),
            ));
        let client = TestClient::new(app);
        for (path, expected) in [
            ("/lost", "none"),
            ("/carried", r#"{"endpoint":"/carried"}"#),
        ] {
            // The body is read after the endpoint's future has finished, as the server does.
            client.get(path).send().await.assert_text(expected).await;
        }
    }

    /// An endpoint that panics in its future (after an await point) for `/panic-in-future`, in
    /// its synchronous `call` for `/panic-in-call`, and otherwise reports its context.
    struct Panicky;

    impl Endpoint for Panicky {
        type Output = poem::Response;

        fn call(
            &self,
            request: Request,
        ) -> impl Future<Output = poem::Result<Self::Output>> + Send {
            let path = request.uri().path().to_owned();
            assert_ne!(path, "/panic-in-call", "the inner endpoint's call panicked");
            async move {
                if path == "/panic-in-future" {
                    let _ = context::merge(json!({"leak": true}));
                    tokio::task::yield_now().await;
                    panic!("the inner endpoint's future panicked");
                }
                tokio::task::yield_now().await;
                Ok(Json(context::current()).into_response())
            }
        }
    }

    #[tokio::test]
    async fn a_panicking_request_leaves_no_context_behind() {
        let endpoint =
            Arc::new(Panicky.with(Bemi::new(|req: &Request| json!({"path": req.uri().path()}))));
        let call = |path: &'static str| {
            let endpoint = Arc::clone(&endpoint);
            // The synchronous `call` runs inside the poll, so a panic there is caught too.
            async move {
                endpoint
                    .call(Request::builder().uri_str(path).finish())
                    .await
            }
        };
        for path in ["/panic-in-future", "/panic-in-call"] {
            let outcome = AssertUnwindSafe(call(path)).catch_unwind().await;
            assert!(outcome.is_err(), "{path} should have panicked");
            // Nothing is left in scope on this task (and thread)...
            assert_eq!(context::current(), None, "after {path}");
            // ...and the next request sees only its own context.
            let body = call("/next").await.unwrap().into_body();
            let seen: Value = body.into_json().await.unwrap();
            assert_eq!(seen, json!({"path": "/next"}));
        }

        // Inside an outer scope, the outer context is back after the panic.
        let outer = json!({"job": "outer"});
        let after = context::scope(outer.clone(), async {
            let outcome = AssertUnwindSafe(call("/panic-in-future"))
                .catch_unwind()
                .await;
            assert!(outcome.is_err());
            context::current()
        })
        .await;
        assert_eq!(after.map(Value::Object), Some(outer));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_keep_their_own_context() {
        let endpoint =
            Arc::new(Probe.with(Bemi::new(|req: &Request| json!({"path": req.uri().path()}))));
        let mut tasks = Vec::new();
        for n in 0..200 {
            let endpoint = Arc::clone(&endpoint);
            tasks.push(tokio::spawn(async move {
                let path = format!("/user/{n}");
                let Json((in_call, in_future)) = endpoint
                    .call(Request::builder().uri_str(&path).finish())
                    .await
                    .unwrap();
                (path, in_call, in_future)
            }));
        }
        for task in tasks {
            let (path, in_call, in_future) = task.await.unwrap();
            assert_eq!(in_call.map(Value::Object), Some(json!({"path": path})));
            assert_eq!(
                in_future.map(Value::Object),
                Some(json!({"path": path, "step": "handler"}))
            );
        }
    }

    #[test]
    fn the_middleware_is_send_sync_and_clone() {
        fn assert_bounds<T: Send + Sync + Clone + 'static>(_: &T) {}
        let bemi = Bemi::new(|_: &Request| Value::Null);
        assert_bounds(&bemi);
    }

    #[test]
    fn closures_need_no_type_annotation() {
        // `new` keeps its closure bound, so the request's type is inferred.
        let bemi = Bemi::new(|req| json!({"endpoint": req.uri().path()}));
        assert!(format!("{bemi:?}").contains("ContextMaker("));
    }
}
