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

use std::fmt;
use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::dev::{Service, ServiceRequest, Transform};
use bemi_core::IntoContext;
use bemi_core::integration::{RequestScope, WithContext};

/// actix-web middleware that runs each request inside the context returned by its closure.
///
/// The closure gets the [`ServiceRequest`] (before the inner service sees it) and returns its
/// context: anything [`IntoContext`] takes (`json!({...})`, a `Map`, an `Option`); see the
/// [crate docs](crate) for what it may return.
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
pub struct Bemi<F> {
    make_context: Arc<F>,
}

impl<F> Bemi<F> {
    /// Middleware whose requests run inside the context `make_context` returns for them.
    ///
    /// ```
    /// use actix_web::dev::ServiceRequest;
    /// use serde_json::json;
    ///
    /// let middleware = bemi_actix::Bemi::new(|req: &ServiceRequest| json!({"endpoint": req.path()}));
    /// # let _ = middleware;
    /// ```
    pub fn new<C>(make_context: F) -> Self
    where
        F: Fn(&ServiceRequest) -> C,
        C: IntoContext,
    {
        Self {
            make_context: Arc::new(make_context),
        }
    }
}

impl<F> Clone for Bemi<F> {
    fn clone(&self) -> Self {
        Self {
            make_context: Arc::clone(&self.make_context),
        }
    }
}

impl<F> fmt::Debug for Bemi<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bemi").finish_non_exhaustive()
    }
}

impl<S, F, C> Transform<S, ServiceRequest> for Bemi<F>
where
    S: Service<ServiceRequest>,
    F: Fn(&ServiceRequest) -> C,
    C: IntoContext,
{
    type Response = S::Response;
    type Error = S::Error;
    type Transform = BemiMiddleware<S, F>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(BemiMiddleware {
            service,
            make_context: Arc::clone(&self.make_context),
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
pub struct BemiMiddleware<S, F> {
    service: S,
    make_context: Arc<F>,
}

impl<S, F> fmt::Debug for BemiMiddleware<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BemiMiddleware").finish_non_exhaustive()
    }
}

impl<S, F, C> Service<ServiceRequest> for BemiMiddleware<S, F>
where
    S: Service<ServiceRequest>,
    F: Fn(&ServiceRequest) -> C,
    C: IntoContext,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        // The same shared context for `call` and the future: a `merge` made in either is seen by
        // the other.
        RequestScope::new((self.make_context)(&request)).call(|| self.service.call(request))
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
}
