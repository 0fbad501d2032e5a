#![doc = include_str!("../README.md")]

use bemi_core::IntoContext;
use bemi_core::integration::{ContextMaker, MakeContext};
use rocket::route::{Handler, Outcome, Route};
use rocket::{Data, Request};

/// Wraps the handlers of `routes` so that each request runs inside the context the closure
/// `make_context` returns for it; mount the result. (For a [`MakeContext`] implementor that is
/// not a closure: `Bemi::with_provider(provider).wrap(routes)`.)
///
/// ```
/// use rocket::{Request, get, routes};
/// use serde_json::json;
///
/// #[get("/todo")]
/// fn list() -> &'static str {
///     "[]"
/// }
///
/// let routes = bemi_rocket::with_bemi(routes![list], |req: &Request<'_>| {
///     json!({"endpoint": req.uri().path().as_str(), "method": req.method().as_str()})
/// });
/// let rocket = rocket::build().mount("/", routes);
/// # let _ = rocket;
/// ```
#[must_use]
pub fn with_bemi<F, C>(routes: impl IntoIterator<Item = Route>, make_context: F) -> Vec<Route>
where
    F: Fn(&Request<'_>) -> C + Send + Sync + 'static,
    C: IntoContext,
{
    Bemi::new(make_context).wrap(routes)
}

/// A request-context provider, to wrap the handlers of several sets of routes with
/// ([`Bemi::wrap`]): a closure ([`Bemi::new`]) or any other [`MakeContext`] implementor
/// ([`Bemi::with_provider`]). `M` is the provider's shared holder, [`ContextMaker`].
///
/// ```
/// use rocket::{Request, get, routes};
/// use serde_json::json;
///
/// #[get("/todo")]
/// fn list() -> &'static str {
///     "[]"
/// }
///
/// #[get("/health")]
/// fn health() {}
///
/// let bemi = bemi_rocket::Bemi::new(|req: &Request<'_>| json!({"endpoint": req.uri().path().as_str()}));
/// let rocket = rocket::build()
///     .mount("/", bemi.wrap(routes![list]))
///     .mount("/admin", bemi.wrap(routes![health]));
/// # let _ = rocket;
/// ```
#[derive(Clone, Debug)]
pub struct Bemi<M> {
    make_context: M,
}

impl<P> Bemi<ContextMaker<P>> {
    /// Wrapping with this makes requests run inside the context the closure `make_context`
    /// returns for them.
    ///
    /// ```
    /// use rocket::Request;
    /// use serde_json::json;
    ///
    /// let bemi = bemi_rocket::Bemi::new(|req: &Request<'_>| json!({"user_id": req.headers().get_one("x-user-id")}));
    /// # let _ = bemi;
    /// ```
    #[must_use]
    pub fn new<C>(make_context: P) -> Self
    where
        P: Fn(&Request<'_>) -> C + Send + Sync + 'static,
        C: IntoContext,
    {
        Self::with_provider(make_context)
    }

    /// Wrapping with this makes requests run inside the context `provider` makes for them: any
    /// [`MakeContext`] implementor, e.g. a struct.
    ///
    /// ```
    /// use bemi_core::integration::MakeContext;
    /// use bemi_core::{Context, IntoContext as _};
    /// use rocket::{Request, get, routes};
    ///
    /// struct ByRoute;
    /// impl MakeContext<Request<'_>> for ByRoute {
    ///     fn make_context(&self, req: &Request<'_>) -> Option<Context> {
    ///         let route = req.route().map(|route| route.uri.path().to_string());
    ///         serde_json::json!({"endpoint": route}).into_context()
    ///     }
    /// }
    ///
    /// #[get("/todo")]
    /// fn list() -> &'static str {
    ///     "[]"
    /// }
    ///
    /// let rocket = rocket::build().mount("/", bemi_rocket::Bemi::with_provider(ByRoute).wrap(routes![list]));
    /// # let _ = rocket;
    /// ```
    #[must_use]
    pub fn with_provider(provider: P) -> Self
    where
        P: for<'r> MakeContext<Request<'r>> + Send + Sync + 'static,
    {
        Self {
            make_context: ContextMaker::new(provider),
        }
    }
}

impl<P> Bemi<ContextMaker<P>>
where
    P: for<'r> MakeContext<Request<'r>> + Send + Sync + 'static,
{
    /// `routes` with each handler wrapped: it runs inside the request's context.
    ///
    /// ```
    /// use bemi_core::context;
    /// use rocket::local::asynchronous::Client;
    /// use rocket::{Request, delete, routes};
    /// use serde_json::json;
    ///
    /// #[delete("/todo/<id>")]
    /// fn remove(id: u64) -> String {
    ///     format!("{id} {}", context::current().unwrap()["method"])
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let bemi = bemi_rocket::Bemi::new(|req: &Request<'_>| json!({"method": req.method().as_str()}));
    /// # let config = rocket::Config { log_level: rocket::config::LogLevel::Off, ..rocket::Config::debug_default() };
    /// let rocket = rocket::custom(config).mount("/", bemi.wrap(routes![remove]));
    /// let client = Client::tracked(rocket).await.unwrap();
    /// let response = client.delete("/todo/7").dispatch().await;
    /// assert_eq!(response.into_string().await.unwrap(), r#"7 "DELETE""#);
    /// # }
    /// ```
    #[must_use]
    pub fn wrap(&self, routes: impl IntoIterator<Item = Route>) -> Vec<Route> {
        routes
            .into_iter()
            .map(|mut route| {
                route.handler = Box::new(Scoped {
                    inner: route.handler,
                    make_context: self.make_context.clone(),
                });
                route
            })
            .collect()
    }
}

/// A route's handler, run inside the request's context.
#[derive(Clone)]
struct Scoped<M> {
    inner: Box<dyn Handler>,
    make_context: M,
}

#[rocket::async_trait]
impl<P> Handler for Scoped<ContextMaker<P>>
where
    P: for<'r> MakeContext<Request<'r>> + Send + Sync + 'static,
{
    async fn handle<'r>(&self, request: &'r Request<'_>, data: Data<'r>) -> Outcome<'r> {
        // The same shared context for the handler's synchronous call and every poll of its
        // future.
        self.make_context
            .request_scope(request)
            .call(|| self.inner.handle(request, data))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;
    use std::sync::Arc;

    use bemi_core::context::{self, ContextExt as _};
    use futures_util::FutureExt as _;
    use rocket::config::LogLevel;
    use rocket::http::{Header, Status};
    use rocket::local::asynchronous::Client;
    use rocket::request::{FromRequest, Outcome as RequestOutcome};
    use rocket::response::stream::TextStream;
    use rocket::{Build, Config, Rocket, get, routes};
    use serde_json::{Value, json};

    use super::*;

    fn quiet() -> Rocket<Build> {
        rocket::custom(Config {
            log_level: LogLevel::Off,
            ..Config::debug_default()
        })
    }

    fn seen() -> String {
        context::current().map_or("none".to_owned(), |c| Value::Object(c).to_string())
    }

    /// A request guard that records the context it runs in.
    struct GuardSaw(String);

    #[rocket::async_trait]
    impl<'r> FromRequest<'r> for GuardSaw {
        type Error = ();

        async fn from_request(_: &'r Request<'_>) -> RequestOutcome<Self, ()> {
            RequestOutcome::Success(GuardSaw(seen()))
        }
    }

    #[get("/probe/<n>")]
    async fn probe(n: u32, guard: GuardSaw) -> String {
        tokio::task::yield_now().await;
        let _ = context::merge(json!({"step": "handler", "n": n}));
        tokio::task::yield_now().await;
        format!("{} {}", guard.0, seen())
    }

    #[get("/lost")]
    fn lost() -> TextStream![String] {
        TextStream! { yield seen(); }
    }

    #[get("/carried")]
    fn carried() -> TextStream![String] {
        TextStream(futures_util::stream::once(async { seen() }).in_current_context())
    }

    #[get("/panic")]
    async fn panicking() -> &'static str {
        let _ = context::merge(json!({"leak": true}));
        tokio::task::yield_now().await;
        panic!("the handler panicked")
    }

    #[get("/unwrapped")]
    fn unwrapped() -> String {
        seen()
    }

    async fn client(
        make_context: impl Fn(&Request<'_>) -> Value + Send + Sync + 'static,
    ) -> Client {
        let routes = with_bemi(routes![probe, lost, carried, panicking], make_context);
        let rocket = quiet().mount("/", routes).mount("/", routes![unwrapped]);
        Client::tracked(rocket).await.unwrap()
    }

    async fn get(client: &Client, path: &str) -> (Status, String) {
        let response = client
            .get(path.to_owned())
            .header(Header::new("x-user-id", "42"))
            .dispatch()
            .await;
        let status = response.status();
        (status, response.into_string().await.unwrap_or_default())
    }

    fn endpoint(req: &Request<'_>) -> Value {
        json!({
            "endpoint": req.route().map(|route| route.uri.path()),
            "user_id": req.headers().get_one("x-user-id"),
        })
    }

    #[tokio::test]
    async fn guards_and_handler_run_inside_the_context() {
        let client = client(endpoint).await;
        let (status, body) = get(&client, "/probe/3").await;
        assert_eq!(status, Status::Ok);
        assert_eq!(
            body,
            r#"{"endpoint":"/probe/<n>","user_id":"42"} {"endpoint":"/probe/<n>","n":3,"step":"handler","user_id":"42"}"#
        );
        // A route mounted without the wrapper has no context.
        assert_eq!(get(&client, "/unwrapped").await.1, "none");
        assert_eq!(context::current(), None);
    }

    #[tokio::test]
    async fn null_and_non_objects_mean_no_context() {
        for value in [
            json!(null),
            json!([1]),
            json!("user"),
            json!(3),
            json!(false),
        ] {
            let client = client(move |_: &Request<'_>| value.clone()).await;
            let (_, body) = get(&client, "/probe/1").await;
            assert_eq!(body, "none none");
        }
    }

    #[tokio::test]
    async fn streaming_bodies_need_the_stream_helper() {
        let client = client(endpoint).await;
        assert_eq!(get(&client, "/lost").await.1, "none");
        assert_eq!(
            get(&client, "/carried").await.1,
            r#"{"endpoint":"/carried","user_id":"42"}"#
        );
    }

    #[tokio::test]
    async fn a_panicking_handler_leaves_no_context_behind() {
        let client = client(endpoint).await;
        // Rocket catches the handler's panic and answers 500.
        let outcome = AssertUnwindSafe(get(&client, "/panic"))
            .catch_unwind()
            .await;
        assert_eq!(
            outcome.map(|(status, _)| status).ok(),
            Some(Status::InternalServerError)
        );
        assert_eq!(context::current(), None);
        let (_, body) = get(&client, "/probe/2").await;
        assert!(
            body.starts_with(r#"{"endpoint":"/probe/<n>","user_id":"42"} "#),
            "{body}"
        );
        assert!(!body.contains("leak"), "{body}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_keep_their_own_context() {
        let client =
            Arc::new(client(|req: &Request<'_>| json!({"path": req.uri().path().as_str()})).await);
        let mut tasks = Vec::new();
        for n in 0..200 {
            let client = Arc::clone(&client);
            tasks.push(tokio::spawn(async move {
                let response = client.get(format!("/probe/{n}")).dispatch().await;
                (n, response.into_string().await.unwrap())
            }));
        }
        for task in tasks {
            let (n, body) = task.await.unwrap();
            assert_eq!(
                body,
                format!(
                    r#"{{"path":"/probe/{n}"}} {{"n":{n},"path":"/probe/{n}","step":"handler"}}"#
                )
            );
        }
    }

    #[test]
    fn closures_need_no_type_annotation() {
        // `new` and `with_bemi` keep their closure bound, so the request's type is inferred.
        let bemi = Bemi::new(|req| json!({"endpoint": req.uri().path().as_str()}));
        assert!(format!("{bemi:?}").contains("ContextMaker("));
        let routes = with_bemi(
            routes![unwrapped],
            |req| json!({"method": req.method().as_str()}),
        );
        assert_eq!(routes.len(), 1);
    }
}
