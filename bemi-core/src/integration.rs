//! The integration kit: what a Tower layer, an actix-web middleware, a poem middleware, a salvo
//! hoop, a Rocket route wrapper or a GraphQL extension is built from.
//!
//! - [`MakeContext`]: the user's per-request context provider. Every closure
//!   `Fn(&Request) -> impl IntoContext` is one; a struct can be one too.
//! - [`ContextMaker`]: the one holder of a provider that integrations share: cheap to clone (an
//!   `Arc`), `Debug` whatever the provider (it prints the provider's type name), and it scopes a
//!   request's work in the context the provider makes for it.
//! - [`RequestScope`]: one request's context, entered for the inner service's synchronous
//!   `call` **and** every poll of the future it returns — the same [`SharedContext`], so that a
//!   [`merge`](crate::context::merge) made in either is seen by all later writes of the
//!   request. The future is a [`WithContext`]: a named type, nothing boxed, which an
//!   integration names as its `ResponseFuture`.
//!
//! An integration is then only its framework's glue:
//!
//! ```
//! use std::future::Future;
//!
//! use bemi_core::context;
//! use bemi_core::integration::{ContextMaker, MakeContext, WithContext};
//! use serde_json::json;
//!
//! /// A framework's request and its service (stand-ins for the real ones).
//! struct Request { path: &'static str }
//! trait Service { type Future: Future; fn call(&self, request: Request) -> Self::Future; }
//!
//! /// The middleware: the inner service and the user's provider.
//! struct Middleware<S, M> { inner: S, make_context: ContextMaker<M> }
//!
//! impl<S: Service, M: MakeContext<Request>> Service for Middleware<S, M> {
//!     type Future = WithContext<S::Future>;
//!
//!     fn call(&self, request: Request) -> Self::Future {
//!         self.make_context.call(request, |request| self.inner.call(request))
//!     }
//! }
//!
//! struct Handler;
//! impl Service for Handler {
//!     type Future = std::future::Ready<Option<context::Context>>;
//!     fn call(&self, _: Request) -> Self::Future { std::future::ready(context::current()) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let middleware = Middleware {
//!     inner: Handler,
//!     make_context: ContextMaker::new(|req: &Request| json!({"endpoint": req.path})),
//! };
//! let seen = middleware.call(Request { path: "/todo" }).await;
//! assert_eq!(seen.unwrap()["endpoint"], "/todo");
//! # }
//! ```

use std::any::type_name;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::context::{Context, IntoContext};
pub use crate::context::{SharedContext, WithContext};

/// A per-request context provider: what the user gives an integration (a layer, a middleware,
/// a hoop) to say which context each request's writes carry.
///
/// Every closure `Fn(&Request) -> C` where `C:` [`IntoContext`] (`json!({...})`, a `Map`, an
/// `Option` of either) is one, so `BemiLayer::new(|req: &Request<Body>| json!({...}))` just
/// works. Implement it on a struct when the provider has state or a name of its own:
///
/// ```
/// use bemi_core::integration::{ContextMaker, MakeContext};
/// use bemi_core::{Context, IntoContext as _};
/// use serde_json::json;
///
/// /// A request of some framework.
/// struct Request { user: Option<u64>, path: String }
///
/// /// Adds the service's name to every request's context.
/// struct FromRequest { service: &'static str }
///
/// impl MakeContext<Request> for FromRequest {
///     fn make_context(&self, req: &Request) -> Option<Context> {
///         json!({"service": self.service, "user_id": req.user, "endpoint": req.path}).into_context()
///     }
/// }
///
/// let request = Request { user: Some(187234), path: "/todo".to_owned() };
/// let context = FromRequest { service: "todo" }.make_context(&request).unwrap();
/// assert_eq!(context["user_id"], 187234);
///
/// // A closure is a provider too.
/// let by_path = |req: &Request| json!({"endpoint": req.path});
/// assert_eq!(by_path.make_context(&request).unwrap()["endpoint"], "/todo");
///
/// // Either goes into the holder integrations share.
/// let maker = ContextMaker::new(FromRequest { service: "todo" });
/// assert!(format!("{maker:?}").contains("FromRequest"));
/// ```
///
/// What the provider returns follows [`IntoContext`]: a JSON object is the request's context;
/// `None` (or `null`) means no context for the request (a context of an enclosing scope, if
/// any, stays); any other JSON value is treated like `null`, with a `tracing` warning.
pub trait MakeContext<Request: ?Sized> {
    /// The context of `request`, or `None` for no context.
    ///
    /// ```
    /// use bemi_core::integration::MakeContext as _;
    ///
    /// let provider = |path: &str| serde_json::json!({"endpoint": path});
    /// assert_eq!(provider.make_context("/todo").unwrap()["endpoint"], "/todo");
    /// ```
    fn make_context(&self, request: &Request) -> Option<Context>;
}

impl<Request, F, C> MakeContext<Request> for F
where
    Request: ?Sized,
    F: Fn(&Request) -> C,
    C: IntoContext,
{
    fn make_context(&self, request: &Request) -> Option<Context> {
        self(request).into_context()
    }
}

/// The holder of a [`MakeContext`] provider that every framework integration shares.
///
/// - cloning is cheap (the provider sits behind an `Arc`) and needs nothing of the provider,
///   so a layer or a middleware can be cloned per worker thread;
/// - `Debug` prints the provider's type name (closures have no `Debug`);
/// - [`ContextMaker::call`] and [`ContextMaker::request_scope`] make a request's context and
///   scope the request's work in it.
///
/// ```
/// use bemi_core::context;
/// use bemi_core::integration::ContextMaker;
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let maker = ContextMaker::new(|path: &String| json!({"endpoint": path}));
/// let seen = maker.call("/todo".to_owned(), |_path| async { context::current() }).await;
/// assert_eq!(seen.unwrap()["endpoint"], "/todo");
/// assert!(format!("{maker:?}").starts_with("ContextMaker("));
/// # }
/// ```
pub struct ContextMaker<M: ?Sized> {
    /// The provider's type name, for `Debug` (kept through [`ContextMaker::coerce`]).
    provider: &'static str,
    maker: Arc<M>,
}

impl<M> ContextMaker<M> {
    /// Holds `maker`, a closure or any other [`MakeContext`] implementor.
    ///
    /// ```
    /// use bemi_core::integration::ContextMaker;
    ///
    /// let maker = ContextMaker::new(|_: &()| serde_json::json!({"job": "import"}));
    /// # let _ = maker;
    /// ```
    #[must_use]
    pub fn new(maker: M) -> Self {
        Self {
            provider: type_name::<M>(),
            maker: Arc::new(maker),
        }
    }
}

impl<M: ?Sized> ContextMaker<M> {
    /// The provider.
    ///
    /// ```
    /// use bemi_core::integration::{ContextMaker, MakeContext as _};
    ///
    /// let maker = ContextMaker::new(|n: &u32| serde_json::json!({"n": n}));
    /// assert_eq!(maker.get_ref().make_context(&7).unwrap()["n"], 7);
    /// ```
    #[must_use]
    pub fn get_ref(&self) -> &M {
        &self.maker
    }

    /// The type name of the provider given to [`ContextMaker::new`] (as
    /// [`std::any::type_name`] spells it: for diagnostics, not a stable identifier).
    ///
    /// ```
    /// use bemi_core::integration::ContextMaker;
    ///
    /// fn by_user(user: &u64) -> serde_json::Value { serde_json::json!({"user_id": user}) }
    ///
    /// assert!(ContextMaker::new(by_user).provider_type_name().ends_with("by_user"));
    /// ```
    #[must_use]
    pub fn provider_type_name(&self) -> &'static str {
        self.provider
    }

    /// The scope of `request`: the provider's context for it, to enter with
    /// [`RequestScope::call`]. For integrations whose request stays borrowed while the work
    /// runs (a salvo hoop, a Rocket handler); [`ContextMaker::call`] is the short form.
    ///
    /// ```
    /// use bemi_core::context;
    /// use bemi_core::integration::ContextMaker;
    /// use serde_json::json;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let maker = ContextMaker::new(|path: &str| json!({"endpoint": path}));
    /// let mut path = String::from("/todo");
    /// let seen = maker
    ///     .request_scope(path.as_str())
    ///     .call(|| {
    ///         path.push_str("/7"); // the request is free again here
    ///         async { context::current() }
    ///     })
    ///     .await;
    /// assert_eq!(seen.unwrap()["endpoint"], "/todo");
    /// # }
    /// ```
    pub fn request_scope<Request>(&self, request: &Request) -> RequestScope
    where
        Request: ?Sized,
        M: MakeContext<Request>,
    {
        RequestScope::from_context(self.maker.make_context(request))
    }

    /// Makes `request`'s context, then runs `call(request)` (the inner service's synchronous
    /// `call`) inside it and returns its future wrapped so that every poll runs inside the same
    /// context. Without a context (the provider returned none), both run as they are.
    ///
    /// ```
    /// use bemi_core::context;
    /// use bemi_core::integration::ContextMaker;
    /// use serde_json::json;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let maker = ContextMaker::new(|user: &u64| json!({"user_id": user}));
    /// let seen = maker
    ///     .call(187234, |user| {
    ///         context::merge(json!({"in_call": user})).unwrap();
    ///         async { context::current().unwrap() }
    ///     })
    ///     .await;
    /// assert_eq!(seen["user_id"], 187234);
    /// assert_eq!(seen["in_call"], 187234);
    /// # }
    /// ```
    pub fn call<Request, F>(
        &self,
        request: Request,
        call: impl FnOnce(Request) -> F,
    ) -> WithContext<F>
    where
        M: MakeContext<Request>,
        F: Future,
    {
        self.request_scope(&request).call(|| call(request))
    }

    /// The same provider behind another static type, typically a trait object (`|maker| maker
    /// as Arc<dyn ...>`), so that one field can hold providers of any type. `Debug` still
    /// prints the original provider's type name.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use bemi_core::integration::{ContextMaker, MakeContext};
    ///
    /// type AnyMaker = dyn MakeContext<str> + Send + Sync;
    ///
    /// fn by_path(path: &str) -> serde_json::Value { serde_json::json!({"endpoint": path}) }
    ///
    /// let erased: ContextMaker<AnyMaker> =
    ///     ContextMaker::new(by_path).coerce(|maker| maker as Arc<AnyMaker>);
    /// assert_eq!(erased.get_ref().make_context("/todo").unwrap()["endpoint"], "/todo");
    /// assert!(erased.provider_type_name().ends_with("by_path"));
    /// ```
    #[must_use]
    pub fn coerce<N: ?Sized>(self, coerce: impl FnOnce(Arc<M>) -> Arc<N>) -> ContextMaker<N> {
        ContextMaker {
            provider: self.provider,
            maker: coerce(self.maker),
        }
    }
}

impl<M: ?Sized> Clone for ContextMaker<M> {
    fn clone(&self) -> Self {
        Self {
            provider: self.provider,
            maker: Arc::clone(&self.maker),
        }
    }
}

impl<M: ?Sized> fmt::Debug for ContextMaker<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ContextMaker")
            .field(&format_args!("{}", self.provider))
            .finish()
    }
}

/// One request's context, from the value its integration's provider returned (see
/// [`IntoContext`] for what it may be: a non-object is a warning and no context, never a
/// panic).
///
/// ```
/// use bemi_core::{context, integration::RequestScope};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let scope = RequestScope::new(json!(["not", "an", "object"]));
/// assert!(scope.context().is_none());
/// assert_eq!(scope.call(|| async { context::current() }).await, None);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct RequestScope {
    context: Option<SharedContext>,
}

impl RequestScope {
    /// The scope of a request whose provider returned `context`.
    ///
    /// ```
    /// use bemi_core::integration::RequestScope;
    ///
    /// let scope = RequestScope::new(serde_json::json!({"endpoint": "/todo"}));
    /// assert_eq!(scope.context().unwrap().snapshot()["endpoint"], "/todo");
    /// ```
    pub fn new(context: impl IntoContext) -> Self {
        Self::from_context(context.into_context())
    }

    fn from_context(context: Option<Context>) -> Self {
        Self {
            context: context.map(SharedContext::new),
        }
    }

    /// The request's context, if it has one.
    ///
    /// ```
    /// use bemi_core::integration::RequestScope;
    ///
    /// assert!(RequestScope::new(serde_json::Value::Null).context().is_none());
    /// ```
    #[must_use]
    pub fn context(&self) -> Option<&SharedContext> {
        self.context.as_ref()
    }

    /// Runs `call` (the inner service's synchronous `call`) inside the request's context, and
    /// returns its future wrapped so that every poll runs inside the same context. Without a
    /// context, both run as they are (an enclosing scope's context, if any, stays).
    ///
    /// ```
    /// use bemi_core::context;
    /// use bemi_core::integration::RequestScope;
    /// use serde_json::json;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let scope = RequestScope::new(json!({"endpoint": "/todo"}));
    /// let seen = scope
    ///     .call(|| {
    ///         // The inner service's `call` runs inside the context...
    ///         context::merge(json!({"in_call": true})).unwrap();
    ///         // ...and so does every poll of its future.
    ///         async { context::current().unwrap() }
    ///     })
    ///     .await;
    /// assert_eq!(seen["endpoint"], "/todo");
    /// assert_eq!(seen["in_call"], true);
    /// # }
    /// ```
    pub fn call<F: Future>(self, call: impl FnOnce() -> F) -> WithContext<F> {
        match self.context {
            Some(shared) => {
                let future = shared.sync_scope(call);
                WithContext::new(future, Some(shared))
            }
            None => WithContext::new(call(), None),
        }
    }
}
