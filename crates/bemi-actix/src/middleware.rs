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
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use actix_web::dev::{Service, ServiceRequest, Transform};
use bemi_core::context::{self, MaybeScoped, SharedContext};
use serde_json::Value;

/// actix-web middleware that runs each request inside the context returned by its closure.
///
/// The closure gets the [`ServiceRequest`] (before the inner service sees it) and returns a
/// [`serde_json::Value`]; see the [crate docs](crate) for what it may return.
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
    pub fn new(make_context: F) -> Self
    where
        F: Fn(&ServiceRequest) -> Value,
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

impl<S, F> Transform<S, ServiceRequest> for Bemi<F>
where
    S: Service<ServiceRequest>,
    F: Fn(&ServiceRequest) -> Value,
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

impl<S, F> Service<ServiceRequest> for BemiMiddleware<S, F>
where
    S: Service<ServiceRequest>,
    F: Fn(&ServiceRequest) -> Value,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let inner = match request_context((self.make_context)(&request)) {
            Some(shared) => {
                // The same shared context for `call` and the future: a `merge` made in either
                // is seen by the other.
                let future = shared.sync_scope(|| self.service.call(request));
                MaybeScoped::Scoped {
                    future: shared.scope(future),
                }
            }
            None => MaybeScoped::Bare {
                future: self.service.call(request),
            },
        };
        ResponseFuture { inner }
    }
}

/// The context for a request from what the closure returned; `None` (with a warning for a
/// non-object) when there is none.
fn request_context(value: Value) -> Option<SharedContext> {
    match context::into_context(value) {
        Ok(context) => context.map(SharedContext::new),
        Err(error) => {
            tracing::warn!(
                kind = error.kind,
                "the bemi_actix::Bemi closure returned a JSON {}, not an object: this request \
                 runs without a bemi context; return serde_json::json!({{...}}), or null for none",
                error.kind
            );
            None
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`BemiMiddleware`]: the inner service's future, polled inside the
    /// request's context. A named type; nothing is boxed.
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
    pub struct ResponseFuture<F> {
        #[pin]
        inner: MaybeScoped<F>,
    }
}

impl<F: Future> Future for ResponseFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use actix_web::{App, HttpResponse, test, web};
    use bemi_core::context;
    use serde_json::json;

    use super::*;

    /// Reports the context seen in the handler after merging `{"step": "handler"}` across an
    /// await point.
    async fn probe() -> HttpResponse {
        actix_web::rt::task::yield_now().await;
        let _ = context::merge(json!({"step": "handler"}).as_object().unwrap().clone());
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
}
