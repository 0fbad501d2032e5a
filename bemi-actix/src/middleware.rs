//! The middleware factory ([`Bemi`]), the service it makes ([`BemiMiddleware`]) and that
//! service's response future ([`ResponseFuture`]).
//!
//! ```
//! use actix_web::{App, HttpResponse, dev::ServiceRequest, test, web};
//! use bemi_actix::Bemi;
//! use bemi_core::context;
//! use serde_json::json;
//!
//! # actix_web::rt::System::new().block_on(async {
//! let app = test::init_service(
//!     App::new()
//!         .wrap(Bemi::new(|req: &ServiceRequest| json!({"method": req.method().as_str()})))
//!         .route(
//!             "/todo",
//!             web::delete().to(|| async {
//!                 let method = context::current().unwrap()["method"].clone();
//!                 HttpResponse::Ok().json(method)
//!             }),
//!         ),
//! )
//! .await;
//! let request = test::TestRequest::delete().uri("/todo").to_request();
//! let method: String = test::call_and_read_body_json(&app, request).await;
//! assert_eq!(method, "DELETE");
//! # });
//! ```

use std::future::{Ready, ready};

use actix_web::dev::{Service, ServiceRequest, Transform};
use bemi_core::IntoContext;
use bemi_core::integration::{ContextMaker, MakeContext, WithContext};

/// actix-web middleware that runs each request inside the context its provider returns.
///
/// The provider is a closure ([`Bemi::new`]) or any other [`MakeContext`] implementor
/// ([`Bemi::with_provider`]) that gets the [`ServiceRequest`] (before the inner service sees
/// it) and returns its context: anything [`IntoContext`] takes (`json!({...})`, a `Map`, an `Option`); see the
/// [crate docs](crate) for what it may return. `M` is the provider's shared holder,
/// [`ContextMaker`]: cloning the middleware (once per worker, in `HttpServer::new`) is cheap,
/// and its `Debug` names the provider's type.
///
/// ```
/// use actix_web::{App, dev::ServiceRequest};
/// use serde_json::json;
///
/// let app = App::new().wrap(bemi_actix::Bemi::new(|req: &ServiceRequest| {
///     json!({"endpoint": req.path(), "method": req.method().as_str()})
/// }));
/// # let _ = app;
/// ```
///
/// A struct can provide the contexts too:
///
/// ```
/// use actix_web::{App, HttpResponse, dev::ServiceRequest, test, web};
/// use bemi_actix::Bemi;
/// use bemi_core::integration::MakeContext;
/// use bemi_core::{Context, IntoContext as _, context};
/// use serde_json::{Value, json};
///
/// /// Every request's context: the service's name and the caller's user id.
/// struct FromHeaders {
///     service: &'static str,
/// }
///
/// impl MakeContext<ServiceRequest> for FromHeaders {
///     fn make_context(&self, req: &ServiceRequest) -> Option<Context> {
///         let user = req.headers().get("x-user-id").and_then(|v| v.to_str().ok());
///         json!({"service": self.service, "user_id": user}).into_context()
///     }
/// }
///
/// # actix_web::rt::System::new().block_on(async {
/// let bemi = Bemi::with_provider(FromHeaders { service: "todo" });
/// assert!(format!("{bemi:?}").contains("FromHeaders"));
/// let app = test::init_service(App::new().wrap(bemi).route(
///     "/todo",
///     web::get().to(|| async { HttpResponse::Ok().json(context::current()) }),
/// ))
/// .await;
/// let request = test::TestRequest::get().uri("/todo").insert_header(("x-user-id", "187234"));
/// let seen: Value = test::call_and_read_body_json(&app, request.to_request()).await;
/// assert_eq!(seen, json!({"service": "todo", "user_id": "187234"}));
/// # });
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
    /// use actix_web::dev::ServiceRequest;
    /// use serde_json::json;
    ///
    /// let middleware = bemi_actix::Bemi::new(|req: &ServiceRequest| json!({"endpoint": req.path()}));
    /// # let _ = middleware;
    /// ```
    #[must_use]
    pub fn new<C>(make_context: P) -> Self
    where
        P: Fn(&ServiceRequest) -> C,
        C: IntoContext,
    {
        Self::with_provider(make_context)
    }

    /// Middleware whose requests run inside the context `provider` makes for them: any
    /// [`MakeContext`] implementor, e.g. a struct (see [`Bemi`]).
    ///
    /// ```
    /// use actix_web::dev::ServiceRequest;
    /// use bemi_core::integration::MakeContext;
    /// use bemi_core::{Context, IntoContext as _};
    ///
    /// struct ByPath;
    /// impl MakeContext<ServiceRequest> for ByPath {
    ///     fn make_context(&self, req: &ServiceRequest) -> Option<Context> {
    ///         serde_json::json!({"endpoint": req.path()}).into_context()
    ///     }
    /// }
    ///
    /// let middleware = bemi_actix::Bemi::with_provider(ByPath);
    /// # let _ = middleware;
    /// ```
    #[must_use]
    pub fn with_provider(provider: P) -> Self
    where
        P: MakeContext<ServiceRequest>,
    {
        Self {
            make_context: ContextMaker::new(provider),
        }
    }
}

impl<S, P> Transform<S, ServiceRequest> for Bemi<ContextMaker<P>>
where
    S: Service<ServiceRequest>,
    P: MakeContext<ServiceRequest>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Transform = BemiMiddleware<S, ContextMaker<P>>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(BemiMiddleware {
            service,
            make_context: self.make_context.clone(),
        }))
    }
}

/// The service made by [`Bemi`]: calls the inner service inside the request's context.
///
/// You do not build it yourself; `App::wrap(Bemi::new(...))` does.
///
/// ```
/// use actix_web::{App, HttpResponse, dev::ServiceRequest, test, web};
/// use serde_json::json;
///
/// # actix_web::rt::System::new().block_on(async {
/// // `init_service` returns the app's service, with a `BemiMiddleware` inside.
/// let app = test::init_service(
///     App::new()
///         .wrap(bemi_actix::Bemi::new(|_: &ServiceRequest| json!({})))
///         .route("/", web::get().to(HttpResponse::Ok)),
/// )
/// .await;
/// let response = test::call_service(&app, test::TestRequest::get().to_request()).await;
/// assert!(response.status().is_success());
/// # });
/// ```
#[derive(Debug)]
pub struct BemiMiddleware<S, M> {
    service: S,
    make_context: M,
}

impl<S, P> Service<ServiceRequest> for BemiMiddleware<S, ContextMaker<P>>
where
    S: Service<ServiceRequest>,
    P: MakeContext<ServiceRequest>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        // The same shared context for `call` and the future: a `merge` made in either is seen by
        // the other.
        self.make_context
            .call(request, |request| self.service.call(request))
    }
}

/// The response future of [`BemiMiddleware`]: the inner service's future, polled inside the
/// request's context. A named type; nothing is boxed. (It is bemi-core's
/// [`WithContext`], shared by every framework crate.)
///
/// ```
/// use actix_web::dev::{Service, ServiceRequest};
/// use actix_web::{App, HttpResponse, test, web};
/// use serde_json::json;
///
/// # actix_web::rt::System::new().block_on(async {
/// let app = test::init_service(
///     App::new()
///         .wrap(bemi_actix::Bemi::new(|_: &ServiceRequest| json!({"job": "x"})))
///         .route("/", web::get().to(HttpResponse::Ok)),
/// )
/// .await;
/// // Somewhere inside this future, a `bemi_actix::ResponseFuture` enters the context.
/// let response = app.call(test::TestRequest::get().to_request()).await.unwrap();
/// assert!(response.status().is_success());
/// # });
/// ```
pub type ResponseFuture<F> = WithContext<F>;

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::panic::AssertUnwindSafe;
    use std::pin::Pin;
    use std::task::{Context as TaskContext, Poll};

    use actix_web::web::Bytes;
    use actix_web::{App, HttpResponse, test, web};
    use bemi_core::context::{self, ContextExt as _};
    use futures_util::FutureExt as _;
    use serde_json::{Value, json};

    use super::*;

    /// Reports the context seen in the handler after merging `{"step": "handler"}` across an
    /// await point.
    async fn probe() -> HttpResponse {
        actix_web::rt::task::yield_now().await;
        let _ = context::merge(json!({"step": "handler"}));
        actix_web::rt::task::yield_now().await;
        HttpResponse::Ok().json(context::current())
    }

    async fn seen_with(make_context: impl Fn(&ServiceRequest) -> Value + 'static) -> Value {
        let app = test::init_service(
            App::new()
                .wrap(Bemi::new(make_context))
                .route("/probe/{n}", web::get().to(probe)),
        )
        .await;
        let request = test::TestRequest::get().uri("/probe/1").to_request();
        test::call_and_read_body_json(&app, request).await
    }

    #[test]
    fn context_is_in_scope_and_enrichment_is_kept() {
        actix_web::rt::System::new().block_on(async {
            let seen = seen_with(|req: &ServiceRequest| json!({"endpoint": req.path()})).await;
            assert_eq!(seen, json!({"endpoint": "/probe/1", "step": "handler"}));
            assert_eq!(context::current(), None);
        });
    }

    #[test]
    fn null_and_non_objects_mean_no_context() {
        actix_web::rt::System::new().block_on(async {
            for value in [
                json!(null),
                json!([1]),
                json!("user"),
                json!(3),
                json!(false),
            ] {
                let seen = seen_with(move |_: &ServiceRequest| value.clone()).await;
                assert_eq!(seen, Value::Null);
            }
        });
    }

    #[test]
    fn a_panicking_handler_leaves_no_context_behind() {
        actix_web::rt::System::new().block_on(async {
            let app = test::init_service(
                App::new()
                    .wrap(Bemi::new(
                        |req: &ServiceRequest| json!({"endpoint": req.path()}),
                    ))
                    .route(
                        "/panic",
                        web::get().to(|| async {
                            let _ = context::merge(json!({"leak": true}));
                            actix_web::rt::task::yield_now().await;
                            panic!("the handler panicked");
                            #[allow(unreachable_code)]
                            HttpResponse::Ok().finish()
                        }),
                    )
                    .route("/probe/{n}", web::get().to(probe)),
            )
            .await;
            let request = test::TestRequest::get().uri("/panic").to_request();
            assert!(
                AssertUnwindSafe(app.call(request))
                    .catch_unwind()
                    .await
                    .is_err()
            );
            // Nothing is left in scope on this thread...
            assert_eq!(context::current(), None);
            // ...and the next request on the same app sees only its own context.
            let request = test::TestRequest::get().uri("/probe/2").to_request();
            let seen: Value = test::call_and_read_body_json(&app, request).await;
            assert_eq!(seen, json!({"endpoint": "/probe/2", "step": "handler"}));
        });
    }

    /// A body stream that yields, once, the context it is polled in (or `none`).
    struct ContextBody {
        done: bool,
    }

    impl futures_core::Stream for ContextBody {
        type Item = Result<Bytes, Infallible>;

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

    #[test]
    fn streaming_bodies_need_the_stream_helper() {
        actix_web::rt::System::new().block_on(async {
            let app = test::init_service(
                App::new()
                    .wrap(Bemi::new(
                        |req: &ServiceRequest| json!({"endpoint": req.path()}),
                    ))
                    .route(
                        "/lost",
                        web::get().to(|| async {
                            HttpResponse::Ok().streaming(ContextBody { done: false })
                        }),
                    )
                    .route(
                        "/carried",
                        web::get().to(|| async {
                            HttpResponse::Ok()
                                .streaming(ContextBody { done: false }.in_current_context())
                        }),
                    ),
            )
            .await;
            for (path, expected) in [
                ("/lost", "none"),
                ("/carried", r#"{"endpoint":"/carried"}"#),
            ] {
                let request = test::TestRequest::get().uri(path).to_request();
                // The body is read after the response future has finished, as the server does.
                let body = test::call_and_read_body(&app, request).await;
                assert_eq!(body, expected, "{path}");
            }
        });
    }

    #[test]
    fn closures_need_no_type_annotation_and_debug_names_the_provider() {
        // `new` keeps its closure bound, so the request's type is inferred.
        let bemi = Bemi::new(|req| json!({"endpoint": req.path()}));
        assert!(format!("{bemi:?}").starts_with("Bemi { make_context: ContextMaker("));

        struct Fixed;
        impl MakeContext<ServiceRequest> for Fixed {
            fn make_context(&self, _: &ServiceRequest) -> Option<context::Context> {
                None
            }
        }
        let bemi = Bemi::with_provider(Fixed);
        assert!(format!("{bemi:?}").contains("Fixed"), "{bemi:?}");
    }
}
