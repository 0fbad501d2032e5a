//! The request context: a JSON object carried in a tokio task-local.
//!
//! Every write made while a context is in scope is annotated with it (see [`crate::sql`]), so the
//! capture worker can store *who*, *where* and *how* next to each row change.
//!
//! - [`scope`] / [`sync_scope`] run a future or a closure inside a context; nested scopes shadow
//!   the outer one and restore it when they end.
//! - [`current`] / [`with_current`] read it.
//! - [`set`] replaces and [`merge`] shallow-merges it from inside a scope, e.g. after
//!   authentication or in a background job. Outside any scope they return [`NoScope`] and change
//!   nothing.
//! - [`ContextExt::in_current_context`] carries the current context into a task started with
//!   `tokio::spawn`, in the spirit of tracing's `Instrument::in_current_span`.
//! - [`RequestScope`] / [`RequestFuture`] are what the framework integrations share: a request's
//!   context from their closure's value, entered for the inner service's `call` and every poll.
//!
//! # Tasks do not inherit the context
//!
//! A tokio task-local belongs to one task. `tokio::spawn(fut)` and `tokio::task::spawn_blocking`
//! start with **no** context; wrap the future with [`ContextExt::in_current_context`], or capture
//! [`current`] and use [`sync_scope`] inside the blocking closure.
//!
//! ```
//! use bemi_core::context::{self, ContextExt};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let ctx = json!({"user_id": 187234, "endpoint": "/todo"});
//! context::scope(ctx.as_object().unwrap().clone(), async {
//!     context::merge(json!({"role": "admin"}).as_object().unwrap().clone()).unwrap();
//!
//!     let carried = tokio::spawn(async { context::current() }.in_current_context());
//!     let lost = tokio::spawn(async { context::current() });
//!
//!     assert_eq!(carried.await.unwrap().unwrap()["role"], "admin");
//!     assert_eq!(lost.await.unwrap(), None);
//! })
//! .await;
//! assert_eq!(context::current(), None);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use futures_core::Stream;
use serde_json::{Map, Value};
use tokio::task::futures::TaskLocalFuture;

/// A context: the JSON object that is attached to every write made inside its scope.
pub type Context = Map<String, Value>;

tokio::task_local! {
    static CURRENT: SharedContext;
}

/// Returned by [`set`] and [`merge`] when they are called outside of any context scope.
///
/// Nothing was changed. Run the code inside [`scope`] (or behind one of the framework layers)
/// to give it a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "no bemi context is in scope here: run this code inside bemi_core::context::scope (or a Bemi \
     layer), or carry the context into spawned tasks with ContextExt::in_current_context"
)]
pub struct NoScope;

/// Returned by [`Context`] conversions when a JSON value is not an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a bemi context must be a JSON object, got {kind}; return serde_json::json!({{...}})")]
pub struct NotAnObject {
    /// The JSON kind that was given instead (`"array"`, `"string"`, ...).
    pub kind: &'static str,
}

/// Turns a JSON value into a [`Context`].
///
/// `null` means "no context" (`Ok(None)`); any other non-object is an error.
///
/// ```
/// use bemi_core::context::into_context;
/// use serde_json::json;
///
/// assert!(into_context(json!({"user_id": 1})).unwrap().is_some());
/// assert_eq!(into_context(json!(null)).unwrap(), None);
/// assert!(into_context(json!([1, 2])).is_err());
/// ```
pub fn into_context(value: Value) -> Result<Option<Context>, NotAnObject> {
    match value {
        Value::Object(map) => Ok(Some(map)),
        Value::Null => Ok(None),
        other => Err(NotAnObject {
            kind: json_kind(&other),
        }),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A context that can be entered several times, sharing changes between the entries.
///
/// Framework layers use it to enter the same context for a service's synchronous `call` and for
/// every poll of the future it returns, so that a [`merge`] made in the handler is seen by all
/// later writes of the same request. Cloning shares the context; it does not copy it.
///
/// ```
/// use bemi_core::context::{self, SharedContext};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let shared = SharedContext::new(json!({"user_id": 1}).as_object().unwrap().clone());
/// shared.sync_scope(|| context::merge(json!({"step": "call"}).as_object().unwrap().clone()).unwrap());
/// let seen = shared.scope(async { context::current().unwrap() }).await;
/// assert_eq!(seen["step"], "call");
/// # }
/// ```
#[derive(Clone, Default)]
pub struct SharedContext(Arc<Mutex<Context>>);

impl SharedContext {
    /// Wraps a context so that it can be entered with [`SharedContext::scope`] and
    /// [`SharedContext::sync_scope`].
    ///
    /// ```
    /// let shared = bemi_core::context::SharedContext::new(Default::default());
    /// assert!(shared.snapshot().is_empty());
    /// ```
    pub fn new(context: Context) -> Self {
        Self(Arc::new(Mutex::new(context)))
    }

    /// Runs `future` with this context as the current one on every poll.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let shared = bemi_core::context::SharedContext::new(Default::default());
    /// assert!(shared.scope(async { bemi_core::context::current() }).await.is_some());
    /// # }
    /// ```
    pub fn scope<F: Future>(&self, future: F) -> Scoped<F> {
        CURRENT.scope(self.clone(), future)
    }

    /// Runs `f` with this context as the current one.
    ///
    /// ```
    /// let shared = bemi_core::context::SharedContext::new(Default::default());
    /// assert!(shared.sync_scope(bemi_core::context::current).is_some());
    /// ```
    pub fn sync_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }

    /// Runs every poll of `stream` with this context as the current one (like
    /// [`StreamContextExt`], but sharing this context instead of copying one).
    ///
    /// ```
    /// use bemi_core::context::{self, SharedContext};
    /// use futures_core::Stream;
    /// use serde_json::json;
    /// use std::pin::pin;
    /// use std::task::Poll;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let shared = SharedContext::new(json!({"subscription": 1}).as_object().unwrap().clone());
    /// let mut polls = 0;
    /// let ticks = std::iter::from_fn(move || {
    ///     polls += 1;
    ///     (polls <= 2).then(context::current)
    /// });
    /// let mut stream = pin!(shared.scope_stream(Iter(ticks)));
    /// while let Some(seen) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
    ///     assert_eq!(seen.unwrap()["subscription"], 1);
    /// }
    /// assert_eq!(context::current(), None);
    /// # }
    /// # struct Iter<I>(I);
    /// # impl<I: Iterator + Unpin> Stream for Iter<I> {
    /// #     type Item = I::Item;
    /// #     fn poll_next(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<Option<I::Item>> {
    /// #         Poll::Ready(self.0.next())
    /// #     }
    /// # }
    /// ```
    pub fn scope_stream<S: Stream>(&self, stream: S) -> ScopedStream<S> {
        ScopedStream {
            stream,
            context: Some(self.clone()),
        }
    }

    /// A copy of the context as it is now.
    ///
    /// ```
    /// let shared = bemi_core::context::SharedContext::new(Default::default());
    /// assert_eq!(shared.snapshot().len(), 0);
    /// ```
    pub fn snapshot(&self) -> Context {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Context> {
        // A panic while holding the lock cannot leave a map half-updated in a way that matters
        // more than losing the request's context, so keep using it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for SharedContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedContext").field(&*self.lock()).finish()
    }
}

/// The future returned by [`scope`], [`SharedContext::scope`] and [`ContextExt`]: it enters the
/// context around every poll of the inner future. A named type, no boxing.
pub type Scoped<F> = TaskLocalFuture<SharedContext, F>;

/// Runs `future` inside `context`.
///
/// ```
/// use bemi_core::context;
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let ctx = json!({"worker": "MyWorker"}).as_object().unwrap().clone();
/// let seen = context::scope(ctx, async { context::current() }).await;
/// assert_eq!(seen.unwrap()["worker"], "MyWorker");
/// # }
/// ```
pub fn scope<F: Future>(context: Context, future: F) -> Scoped<F> {
    SharedContext::new(context).scope(future)
}

/// Runs the closure `f` inside `context`; useful in `spawn_blocking` and synchronous code.
///
/// ```
/// use bemi_core::context;
/// use serde_json::json;
///
/// let ctx = json!({"job": "nightly"}).as_object().unwrap().clone();
/// let job = context::sync_scope(ctx, || context::current().unwrap()["job"].clone());
/// assert_eq!(job, "nightly");
/// ```
pub fn sync_scope<R>(context: Context, f: impl FnOnce() -> R) -> R {
    SharedContext::new(context).sync_scope(f)
}

/// A copy of the current context, or `None` outside of any scope.
///
/// ```
/// assert_eq!(bemi_core::context::current(), None);
/// ```
pub fn current() -> Option<Context> {
    CURRENT.try_with(SharedContext::snapshot).ok()
}

/// Calls `f` with the current context (or `None`) without copying it.
///
/// ```
/// let keys = bemi_core::context::with_current(|ctx| ctx.map(|c| c.len()));
/// assert_eq!(keys, None);
/// ```
pub fn with_current<R>(f: impl FnOnce(Option<&Context>) -> R) -> R {
    let mut f = Some(f);
    let inside = CURRENT.try_with(|shared| {
        let guard = shared.lock();
        (f.take().expect("called once"))(Some(&guard))
    });
    match inside {
        Ok(result) => result,
        Err(_) => (f.take().expect("called once"))(None),
    }
}

/// The shared context currently in scope, to enter it again elsewhere (e.g. from a framework
/// integration); `None` outside of any scope.
///
/// ```
/// assert!(bemi_core::context::current_shared().is_none());
/// ```
pub fn current_shared() -> Option<SharedContext> {
    CURRENT.try_with(SharedContext::clone).ok()
}

/// Replaces the current context with `context`.
///
/// Returns [`NoScope`] (and changes nothing) outside of a scope.
///
/// ```
/// use bemi_core::context;
/// use serde_json::json;
///
/// let replaced = context::sync_scope(Default::default(), || {
///     context::set(json!({"stage": "store"}).as_object().unwrap().clone()).unwrap();
///     context::current().unwrap()
/// });
/// assert_eq!(replaced["stage"], "store");
/// assert!(context::set(Default::default()).is_err());
/// ```
pub fn set(context: Context) -> Result<(), NoScope> {
    CURRENT
        .try_with(|shared| *shared.lock() = context)
        .map_err(|_| NoScope)
}

/// Shallow-merges `fields` into the current context: each top-level key of `fields` replaces the
/// key of the same name. This is the inline `bemiContext({...})` of Bemi's other libraries.
///
/// Returns [`NoScope`] (and changes nothing) outside of a scope.
///
/// ```
/// use bemi_core::context;
/// use serde_json::json;
///
/// let ctx = json!({"worker": "MyWorker", "stage": "fetch"}).as_object().unwrap().clone();
/// let merged = context::sync_scope(ctx, || {
///     context::merge(json!({"stage": "store"}).as_object().unwrap().clone()).unwrap();
///     context::current().unwrap()
/// });
/// assert_eq!(merged["worker"], "MyWorker");
/// assert_eq!(merged["stage"], "store");
/// ```
pub fn merge(fields: Context) -> Result<(), NoScope> {
    CURRENT
        .try_with(|shared| shared.lock().extend(fields))
        .map_err(|_| NoScope)
}

/// Carries a context into futures and streams that will run elsewhere, typically in a task
/// started with `tokio::spawn`.
///
/// The carried context is a **copy** taken when the method is called: changes made by the
/// spawned task do not leak back into the request, and later changes of the request are not seen
/// by the task.
///
/// ```
/// use bemi_core::context::{self, ContextExt};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let ctx = json!({"user_id": 7}).as_object().unwrap().clone();
/// let handle = context::scope(ctx, async {
///     tokio::spawn(async { context::current() }.in_current_context())
/// })
/// .await;
/// assert_eq!(handle.await.unwrap().unwrap()["user_id"], 7);
/// # }
/// ```
pub trait ContextExt: Sized {
    /// The wrapper that enters the context.
    type Output;

    /// Wraps `self` so that it runs inside a copy of the current context (or, outside of any
    /// scope, with no context at all).
    fn in_current_context(self) -> Self::Output;

    /// Wraps `self` so that it runs inside `context`.
    fn with_context(self, context: Context) -> Self::Output;
}

/// A future that runs inside a context, from [`ContextExt`]. Outside of any scope at the time
/// it was made, it runs the inner future with no context.
pub type WithContext<F> = MaybeScoped<F>;

pin_project_lite::pin_project! {
    /// A future that runs inside a context if it was given one, and with no context otherwise.
    #[project = MaybeScopedProj]
    pub enum MaybeScoped<F> {
        /// Runs inside a context.
        Scoped { #[pin] future: Scoped<F> },
        /// Runs with no context.
        Bare { #[pin] future: F },
    }
}

impl<F: Future> Future for MaybeScoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        match self.project() {
            MaybeScopedProj::Scoped { future } => future.poll(cx),
            MaybeScopedProj::Bare { future } => future.poll(cx),
        }
    }
}

impl<F: Future> ContextExt for F {
    type Output = WithContext<F>;

    fn in_current_context(self) -> Self::Output {
        match current() {
            Some(context) => self.with_context(context),
            None => MaybeScoped::Bare { future: self },
        }
    }

    fn with_context(self, context: Context) -> Self::Output {
        MaybeScoped::Scoped {
            future: scope(context, self),
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream that enters a context around every poll, from [`StreamContextExt`].
    #[derive(Debug)]
    pub struct ScopedStream<S> {
        #[pin]
        stream: S,
        context: Option<SharedContext>,
    }
}

impl<S: Stream> Stream for ScopedStream<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        match this.context {
            Some(shared) => shared.sync_scope(|| this.stream.poll_next(cx)),
            None => this.stream.poll_next(cx),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}

/// The [`ContextExt`] of streams: every poll of the stream runs inside the carried context.
///
/// ```
/// use bemi_core::context::{self, StreamContextExt};
/// use futures_core::Stream;
/// use serde_json::json;
/// use std::pin::pin;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let ctx = json!({"batch": 3}).as_object().unwrap().clone();
/// let stream = context::sync_scope(ctx, || {
///     futures_util_like::once(|| context::current()).in_current_context()
/// });
/// let mut stream = pin!(stream);
/// let item = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await;
/// assert_eq!(item.unwrap().unwrap()["batch"], 3);
/// # }
/// # mod futures_util_like {
/// #     use std::{pin::Pin, task::{Context, Poll}};
/// #     pub struct Once<F>(Option<F>);
/// #     impl<F> Unpin for Once<F> {}
/// #     pub fn once<F>(f: F) -> Once<F> { Once(Some(f)) }
/// #     impl<T, F: FnOnce() -> T> futures_core::Stream for Once<F> {
/// #         type Item = T;
/// #         fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
/// #             Poll::Ready(self.0.take().map(|f| f()))
/// #         }
/// #     }
/// # }
/// ```
pub trait StreamContextExt: Stream + Sized {
    /// Wraps the stream so that it is polled inside a copy of the current context.
    fn in_current_context(self) -> ScopedStream<Self> {
        ScopedStream {
            stream: self,
            context: current().map(SharedContext::new),
        }
    }

    /// Wraps the stream so that it is polled inside `context`.
    fn with_context(self, context: Context) -> ScopedStream<Self> {
        ScopedStream {
            stream: self,
            context: Some(SharedContext::new(context)),
        }
    }
}

impl<S: Stream> StreamContextExt for S {}

/// What a framework integration (a Tower layer, an actix-web middleware, ...) does with one
/// request: it turns the JSON value its user closure returned for the request into the request's
/// context, and runs the inner service inside it with [`RequestScope::call`].
///
/// The closure may return:
///
/// - a JSON **object**: the request's context;
/// - `null`: no context for this request (a context set by an outer scope, if any, stays);
/// - anything else (an array, a string, a number, a boolean): treated like `null`, and a
///   `tracing` warning names the integration and the kind that was returned. Never a panic.
///
/// ```
/// use bemi_core::context::{self, RequestScope};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let scope = RequestScope::new(json!({"endpoint": "/todo"}), "MyLayer");
/// let seen = scope.call(|| async { context::current() }).await;
/// assert_eq!(seen.unwrap()["endpoint"], "/todo");
///
/// // Not an object: no context, and a warning instead of a panic.
/// let scope = RequestScope::new(json!(["not", "an", "object"]), "MyLayer");
/// assert!(scope.context().is_none());
/// assert_eq!(scope.call(|| async { context::current() }).await, None);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct RequestScope {
    context: Option<SharedContext>,
}

impl RequestScope {
    /// The scope of a request whose closure returned `value`; `integration` names the layer or
    /// middleware in the warning logged for a non-object.
    ///
    /// ```
    /// let scope = bemi_core::context::RequestScope::new(serde_json::Value::Null, "MyLayer");
    /// assert!(scope.context().is_none());
    /// ```
    pub fn new(value: Value, integration: &'static str) -> Self {
        let context = match into_context(value) {
            Ok(context) => context.map(SharedContext::new),
            Err(error) => {
                tracing::warn!(
                    integration,
                    kind = error.kind,
                    "the {integration} closure returned a JSON {}, not an object: this request \
                     runs without a bemi context; return serde_json::json!({{...}}), or null for \
                     none",
                    error.kind
                );
                None
            }
        };
        Self { context }
    }

    /// The request's context, if it has one.
    ///
    /// ```
    /// use serde_json::json;
    ///
    /// let scope = bemi_core::context::RequestScope::new(json!({"user_id": 1}), "MyLayer");
    /// assert_eq!(scope.context().unwrap().snapshot()["user_id"], 1);
    /// ```
    pub fn context(&self) -> Option<&SharedContext> {
        self.context.as_ref()
    }

    /// Runs `call` (the inner service's synchronous `call`) inside the request's context, and
    /// returns its future wrapped so that every poll runs inside the same context: a [`merge`]
    /// made in either is seen by the other. Without a context, both run as they are.
    ///
    /// ```
    /// use bemi_core::context::{self, RequestScope};
    /// use serde_json::json;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let scope = RequestScope::new(json!({"endpoint": "/todo"}), "MyLayer");
    /// let future = scope.call(|| {
    ///     context::merge(json!({"in_call": true}).as_object().unwrap().clone()).unwrap();
    ///     async { context::current().unwrap() }
    /// });
    /// assert_eq!(future.await["in_call"], true);
    /// # }
    /// ```
    pub fn call<F: Future>(self, call: impl FnOnce() -> F) -> RequestFuture<F> {
        let inner = match self.context {
            Some(shared) => {
                let future = shared.sync_scope(call);
                MaybeScoped::Scoped {
                    future: shared.scope(future),
                }
            }
            None => MaybeScoped::Bare { future: call() },
        };
        RequestFuture { inner }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`RequestScope::call`]: the inner service's future, polled inside the
    /// request's context. A named type; nothing is boxed. The framework crates name it as their
    /// `ResponseFuture`.
    ///
    /// ```
    /// use bemi_core::context::{RequestFuture, RequestScope};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let future: RequestFuture<_> = RequestScope::default().call(|| async { 7 });
    /// assert_eq!(future.await, 7);
    /// # }
    /// ```
    pub struct RequestFuture<F> {
        #[pin]
        inner: MaybeScoped<F>,
    }
}

impl<F: Future> Future for RequestFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F> fmt::Debug for RequestFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestFuture").finish_non_exhaustive()
    }
}
