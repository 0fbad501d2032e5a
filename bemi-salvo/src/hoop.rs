//! The hoop ([`Bemi`]): a salvo [`Handler`] that runs the rest of the request's chain inside
//! the context its closure returns.
//!
//! ```
//! use std::sync::Arc;
//!
//! use bemi_core::context;
//! use bemi_salvo::Bemi;
//! use salvo::prelude::*;
//! use serde_json::json;
//!
//! #[handler]
//! async fn remove(depot: &mut Depot) {
//!     depot.insert("seen", context::current().unwrap()["method"].clone());
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // What a router does for a matched route: its hoops, then its goal.
//! let bemi = Bemi::new(|req: &Request| json!({"method": req.method().as_str()}));
//! let mut ctrl = FlowCtrl::new(vec![Arc::new(bemi), Arc::new(remove)]);
//! let (mut req, mut depot, mut res) = (Request::new(), Depot::new(), Response::new());
//! *req.method_mut() = salvo::http::Method::DELETE;
//! ctrl.call_next(&mut req, &mut depot, &mut res).await;
//! assert_eq!(depot.get::<serde_json::Value>("seen").unwrap(), "DELETE");
//! # }
//! ```

use bemi_core::IntoContext;
use bemi_core::integration::{ContextMaker, MakeContext};
use salvo::{Depot, FlowCtrl, Handler, Request, Response};

/// salvo hoop that runs each request's remaining chain inside the context its provider
/// returns.
///
/// The provider is a closure ([`Bemi::new`]) or any other [`MakeContext`] implementor
/// ([`Bemi::with_provider`]) that gets the [`Request`] (as it is when the hoop runs) and returns
/// its context: anything [`IntoContext`] takes (`json!({...})`, a `Map`, an `Option`); see the
/// [crate docs](crate) for what it may return. Add it with `Router::hoop` (matched routes) or
/// `Service::hoop` (every request). `M` is the provider's shared holder, [`ContextMaker`].
///
/// ```
/// use bemi_salvo::Bemi;
/// use salvo::prelude::*;
/// use serde_json::json;
///
/// #[handler]
/// async fn list() -> &'static str {
///     "[]"
/// }
///
/// let router = Router::new()
///     .hoop(Bemi::new(|req: &Request| {
///         json!({"endpoint": req.uri().path(), "method": req.method().as_str()})
///     }))
///     .push(Router::with_path("todo").get(list));
/// # let _ = router;
/// ```
#[derive(Clone, Debug)]
pub struct Bemi<M> {
    make_context: M,
}

impl<P> Bemi<ContextMaker<P>> {
    /// A hoop whose requests run inside the context the closure `make_context` returns for
    /// them.
    ///
    /// ```
    /// use salvo::Request;
    /// use serde_json::json;
    ///
    /// let hoop = bemi_salvo::Bemi::new(|req: &Request| json!({"user_id": req.header::<String>("x-user-id")}));
    /// # let _ = hoop;
    /// ```
    #[must_use]
    pub fn new<C>(make_context: P) -> Self
    where
        P: Fn(&Request) -> C + Send + Sync + 'static,
        C: IntoContext,
    {
        Self::with_provider(make_context)
    }

    /// A hoop whose requests run inside the context `provider` makes for them: any
    /// [`MakeContext`] implementor, e.g. a struct.
    ///
    /// ```
    /// use bemi_core::integration::MakeContext;
    /// use bemi_core::{Context, IntoContext as _};
    /// use salvo::Request;
    ///
    /// struct ByPath;
    /// impl MakeContext<Request> for ByPath {
    ///     fn make_context(&self, req: &Request) -> Option<Context> {
    ///         serde_json::json!({"endpoint": req.uri().path()}).into_context()
    ///     }
    /// }
    ///
    /// let hoop = bemi_salvo::Bemi::with_provider(ByPath);
    /// assert!(format!("{hoop:?}").contains("ByPath"));
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

#[salvo::async_trait]
impl<P> Handler for Bemi<ContextMaker<P>>
where
    P: MakeContext<Request> + Send + Sync + 'static,
{
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        // The rest of the chain runs inside the context: the same shared context for every poll,
        // so a `merge` made by a handler is seen by everything after it.
        self.make_context
            .request_scope(&*req)
            .call(|| ctrl.call_next(req, depot, res))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::panic::AssertUnwindSafe;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context as TaskContext, Poll};

    use bemi_core::context::{self, Context, ContextExt as _};
    use futures_util::FutureExt as _;
    use salvo::prelude::{Json, Listener as _, Router, Server, TcpListener, handler};
    use serde_json::{Value, json};

    use super::*;

    /// A goal that merges `{"step": "handler"}` across await points and stores the context it
    /// saw in the depot (`"seen"`) and in the response.
    #[handler]
    async fn probe(depot: &mut Depot, res: &mut Response) {
        tokio::task::yield_now().await;
        let _ = context::merge(json!({"step": "handler"}));
        tokio::task::yield_now().await;
        let seen = context::current().map(Value::Object);
        depot.insert("seen", seen.clone());
        res.render(Json(seen));
    }

    /// A hoop after bemi's: records the context it sees before and after the rest of the chain.
    #[handler]
    async fn later_hoop(
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        depot.insert("before", context::current().map(Value::Object));
        ctrl.call_next(req, depot, res).await;
        depot.insert("after", context::current().map(Value::Object));
    }

    /// Runs `handlers` as a router runs a matched route's chain; the depot afterwards.
    async fn run_chain(handlers: Vec<Arc<dyn Handler>>, path: &str) -> Depot {
        let mut ctrl = FlowCtrl::new(handlers);
        let mut req = Request::new();
        *req.uri_mut() = path.parse().unwrap();
        let (mut depot, mut res) = (Depot::new(), Response::new());
        ctrl.call_next(&mut req, &mut depot, &mut res).await;
        depot
    }

    fn seen(depot: &Depot, key: &str) -> Option<Value> {
        depot.get::<Option<Value>>(key).unwrap().clone()
    }

    fn path_hoop() -> Arc<dyn Handler> {
        Arc::new(Bemi::new(
            |req: &Request| json!({"endpoint": req.uri().path()}),
        ))
    }

    #[tokio::test]
    async fn the_rest_of_the_chain_runs_inside_the_context() {
        let depot = run_chain(
            vec![path_hoop(), Arc::new(later_hoop), Arc::new(probe)],
            "/todo",
        )
        .await;
        assert_eq!(seen(&depot, "before"), Some(json!({"endpoint": "/todo"})));
        let enriched = json!({"endpoint": "/todo", "step": "handler"});
        assert_eq!(seen(&depot, "seen"), Some(enriched.clone()));
        // A later hoop's post-processing sees the handler's enrichment.
        assert_eq!(seen(&depot, "after"), Some(enriched));
        assert_eq!(context::current(), None);
    }

    #[tokio::test]
    async fn hoops_before_it_have_no_context() {
        let depot = run_chain(
            vec![Arc::new(later_hoop), path_hoop(), Arc::new(probe)],
            "/todo",
        )
        .await;
        assert_eq!(seen(&depot, "before"), None);
        assert_eq!(seen(&depot, "after"), None);
        assert_eq!(
            seen(&depot, "seen"),
            Some(json!({"endpoint": "/todo", "step": "handler"}))
        );
    }

    #[tokio::test]
    async fn null_means_no_context_and_keeps_an_outer_one() {
        let null: Arc<dyn Handler> = Arc::new(Bemi::new(|_: &Request| Value::Null));
        let depot = run_chain(vec![Arc::clone(&null), Arc::new(probe)], "/").await;
        assert_eq!(seen(&depot, "seen"), None);

        let outer = json!({"job": "outer"});
        let depot = context::scope(outer, run_chain(vec![null, Arc::new(probe)], "/")).await;
        assert_eq!(
            seen(&depot, "seen"),
            Some(json!({"job": "outer", "step": "handler"}))
        );
    }

    #[tokio::test]
    async fn non_objects_mean_no_context_without_panicking() {
        for value in [json!([1, 2]), json!("user"), json!(187234), json!(true)] {
            let hoop = Arc::new(Bemi::new(move |_: &Request| value.clone()));
            let depot = run_chain(vec![hoop, Arc::new(probe)], "/").await;
            assert_eq!(seen(&depot, "seen"), None);
        }
    }

    #[tokio::test]
    async fn a_request_context_replaces_an_outer_one_until_it_is_done() {
        let outer = json!({"job": "outer"});
        let (depot, after) = context::scope(outer.clone(), async {
            let depot = run_chain(vec![path_hoop(), Arc::new(probe)], "/todo").await;
            (depot, context::current())
        })
        .await;
        assert_eq!(
            seen(&depot, "seen"),
            Some(json!({"endpoint": "/todo", "step": "handler"}))
        );
        assert_eq!(after.map(Value::Object), Some(outer));
    }

    #[handler]
    async fn panicking() {
        let _ = context::merge(json!({"leak": true}));
        tokio::task::yield_now().await;
        panic!("the handler panicked");
    }

    #[tokio::test]
    async fn a_panicking_handler_leaves_no_context_behind() {
        let outcome = AssertUnwindSafe(run_chain(vec![path_hoop(), Arc::new(panicking)], "/p"))
            .catch_unwind()
            .await;
        assert!(outcome.is_err());
        // Nothing is left in scope on this task (and thread)...
        assert_eq!(context::current(), None);
        // ...and the next request sees only its own context.
        let depot = run_chain(vec![path_hoop(), Arc::new(probe)], "/next").await;
        assert_eq!(
            seen(&depot, "seen"),
            Some(json!({"endpoint": "/next", "step": "handler"}))
        );
    }

    /// Serves `router` on 127.0.0.1 (a free port).
    async fn serve(router: Router) -> SocketAddr {
        let acceptor = TcpListener::new("127.0.0.1:0").bind().await;
        let addr = acceptor.local_addr().unwrap();
        tokio::spawn(Server::new(acceptor).serve(router));
        addr
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

    #[handler]
    async fn lost(res: &mut Response) {
        res.stream(ContextBody { done: false });
    }

    #[handler]
    async fn carried(res: &mut Response) {
        res.stream(ContextBody { done: false }.in_current_context());
    }

    #[tokio::test]
    async fn streaming_bodies_need_the_stream_helper() {
        let router = Router::new()
            .hoop(Bemi::new(
                |req: &Request| json!({"endpoint": req.uri().path()}),
            ))
            .push(Router::with_path("lost").get(lost))
            .push(Router::with_path("carried").get(carried));
        let addr = serve(router).await;
        let http = reqwest::Client::new();
        for (path, expected) in [
            ("/lost", "none"),
            ("/carried", r#"{"endpoint":"/carried"}"#),
        ] {
            let response = http.get(format!("http://{addr}{path}")).send().await;
            // The server polls the body after the chain has finished.
            assert_eq!(response.unwrap().text().await.unwrap(), expected, "{path}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_over_http_keep_their_own_context() {
        let router = Router::new()
            .hoop(Bemi::new(|req: &Request| {
                json!({"endpoint": req.uri().path(), "user_id": req.header::<String>("x-user-id")})
            }))
            .push(Router::with_path("user/{n}").post(probe));
        let addr = serve(router).await;
        let http = reqwest::Client::new();
        let mut tasks = Vec::new();
        for n in 0..100 {
            let request = http
                .post(format!("http://{addr}/user/{n}"))
                .header("x-user-id", n.to_string());
            tasks.push(tokio::spawn(async move {
                let text = request.send().await.unwrap().text().await.unwrap();
                (n, serde_json::from_str::<Option<Context>>(&text).unwrap())
            }));
        }
        for task in tasks {
            let (n, seen) = task.await.unwrap();
            assert_eq!(
                seen.map(Value::Object),
                Some(
                    json!({"endpoint": format!("/user/{n}"), "user_id": n.to_string(), "step": "handler"})
                )
            );
        }
    }

    #[tokio::test]
    async fn a_service_hoop_covers_unmatched_requests() {
        use salvo::Service;

        #[handler]
        async fn record(
            req: &mut Request,
            depot: &mut Depot,
            res: &mut Response,
            ctrl: &mut FlowCtrl,
        ) {
            ctrl.call_next(req, depot, res).await;
            res.render(Json(context::current()));
        }

        let router = Router::new().push(Router::with_path("todo").get(probe));
        let bemi = Bemi::new(|req: &Request| json!({"endpoint": req.uri().path()}));
        let service = Service::new(router).hoop(bemi).hoop(record);
        let acceptor = TcpListener::new("127.0.0.1:0").bind().await;
        let addr = acceptor.local_addr().unwrap();
        tokio::spawn(Server::new(acceptor).serve(service));
        let response = reqwest::get(format!("http://{addr}/nowhere"))
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        let seen: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(seen, json!({"endpoint": "/nowhere"}));
    }

    #[test]
    fn closures_need_no_type_annotation() {
        // `new` keeps its closure bound, so the request's type is inferred.
        let bemi = Bemi::new(|req| json!({"endpoint": req.uri().path()}));
        assert!(format!("{bemi:?}").contains("ContextMaker("));
    }
}
