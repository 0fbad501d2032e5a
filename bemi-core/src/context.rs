//! The request context: a JSON object carried in a task-local.
//!
//! Every write made while a context is in scope carries it to PostgreSQL (see the adapters), so
//! the capture worker can store *who*, *where* and *how* next to each row change.
//!
//! - [`scope`] / [`sync_scope`] run a future or a closure inside a context; nested scopes shadow
//!   the outer one and restore it when they end.
//! - [`current`] / [`with_current`] read it.
//! - [`set`] replaces and [`merge`] shallow-merges it from inside a scope, e.g. after
//!   authentication or in a background job. Outside any scope they return [`NoScope`] and change
//!   nothing.
//! - [`ContextExt`] carries a context into futures and streams that run elsewhere (a task started
//!   with `tokio::spawn`), in the shape of tracing's `Instrument`.
//! - [`SharedContext`] is one context entered several times (a layer's `call` and every poll of
//!   its future), sharing changes between the entries; see [`integration`](crate::integration)
//!   for the rest of what framework integrations are built from.
//!
//! Each of them takes anything that converts into a context ([`IntoContext`]): the
//! `serde_json::Value` of `json!({...})`, a `Map`, or an `Option` of either.
//!
//! # Tasks do not inherit the context
//!
//! A task-local belongs to one task. `tokio::spawn(fut)` and `tokio::task::spawn_blocking`
//! start with **no** context; wrap the future with [`ContextExt::in_current_context`], or capture
//! [`current`] and use [`sync_scope`] inside the blocking closure.
//!
//! ```
//! use bemi_core::context::{self, ContextExt};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! context::scope(json!({"user_id": 187234, "endpoint": "/todo"}), async {
//!     context::merge(json!({"role": "admin"})).unwrap();
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
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures_core::Stream;
use serde_json::{Map, Value};

use crate::local::{self, Slot};

/// A context: the JSON object that is attached to every write made inside its scope.
pub type Context = Map<String, Value>;

/// What converts into a context: a JSON object (`json!({...})` or a [`Map`]), or nothing.
///
/// - a JSON **object** is the context;
/// - `null` and `None` mean "no context": [`scope`] then runs its future as it is (a context of
///   an enclosing scope, if any, stays), and [`merge`] adds nothing;
/// - any other JSON value (an array, a string, a number, a boolean) is a mistake that must not
///   break the request: it is treated like `null`, and a `tracing` warning names the kind that
///   was given. This is the one place that warns about it, for every layer and function.
///
/// ```
/// use bemi_core::context::IntoContext;
/// use serde_json::json;
///
/// assert!(json!({"user_id": 1}).into_context().is_some());
/// assert_eq!(json!(null).into_context(), None);
/// assert_eq!(json!(["not", "an", "object"]).into_context(), None); // and a warning
/// assert!(Some(json!({"user_id": 1})).into_context().is_some());
/// ```
pub trait IntoContext {
    /// The context, or `None` for no context.
    fn into_context(self) -> Option<Context>;
}

impl IntoContext for Context {
    fn into_context(self) -> Option<Context> {
        Some(self)
    }
}

impl IntoContext for Value {
    fn into_context(self) -> Option<Context> {
        match self {
            Value::Object(map) => Some(map),
            Value::Null => None,
            other => {
                let kind = json_kind(&other);
                tracing::warn!(
                    kind,
                    "a bemi context must be a JSON object, got a JSON {kind}: no context is set \
                     (writes here carry none); return serde_json::json!({{...}}), or null for none"
                );
                None
            }
        }
    }
}

impl<T: IntoContext> IntoContext for Option<T> {
    fn into_context(self) -> Option<Context> {
        self.and_then(IntoContext::into_context)
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

/// A context that can be entered several times, sharing changes between the entries: what the
/// task-local holds. Cloning shares the context; it does not copy it.
///
/// For integrations (also at [`integration::SharedContext`](crate::integration::SharedContext)):
/// a layer enters the same one for the inner service's `call` and for every poll of its future.
///
/// ```
/// use bemi_core::context::{self, SharedContext};
/// use serde_json::json;
///
/// let shared = SharedContext::new(json!({"user_id": 1}));
/// shared.sync_scope(|| context::merge(json!({"step": "call"})).unwrap());
/// assert_eq!(shared.snapshot()["step"], "call");
/// ```
#[derive(Clone, Default)]
pub struct SharedContext(Slot);

impl SharedContext {
    /// Wraps a context (an empty one if `context` converts to none) so that it can be entered
    /// with [`SharedContext::scope`] and [`SharedContext::sync_scope`].
    ///
    /// ```
    /// use bemi_core::context::SharedContext;
    ///
    /// let shared = SharedContext::new(serde_json::json!({"job": "import"}));
    /// assert_eq!(shared.snapshot()["job"], "import");
    /// ```
    pub fn new(context: impl IntoContext) -> Self {
        Self(Arc::new(Mutex::new(
            context.into_context().unwrap_or_default(),
        )))
    }

    /// The context currently in scope, shared (not copied), to enter it again elsewhere;
    /// `None` outside of any scope.
    ///
    /// ```
    /// use bemi_core::{context, integration::SharedContext};
    /// use serde_json::json;
    ///
    /// context::sync_scope(json!({"a": 1}), || {
    ///     let shared = SharedContext::current().unwrap();
    ///     context::merge(json!({"b": 2})).unwrap();
    ///     assert_eq!(shared.snapshot()["b"], 2);
    /// });
    /// ```
    #[must_use]
    pub fn current() -> Option<Self> {
        local::with(|slot| Self(Arc::clone(slot)))
    }

    /// Wraps a future or a stream so that every poll runs with this context as the current one.
    ///
    /// ```
    /// use bemi_core::{context, integration::SharedContext};
    /// use serde_json::json;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let shared = SharedContext::new(json!({"user_id": 1}));
    /// shared.sync_scope(|| context::merge(json!({"step": "call"})).unwrap());
    /// let seen = shared.scope(async { context::current().unwrap() }).await;
    /// assert_eq!(seen["step"], "call");
    /// # }
    /// ```
    pub fn scope<T>(&self, inner: T) -> WithContext<T> {
        WithContext::new(inner, Some(self.clone()))
    }

    /// Runs `f` with this context as the current one.
    ///
    /// ```
    /// use bemi_core::context::{self, SharedContext};
    ///
    /// let shared = SharedContext::new(serde_json::json!({"job": "nightly"}));
    /// assert_eq!(shared.sync_scope(context::current).unwrap()["job"], "nightly");
    /// ```
    pub fn sync_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        local::enter(Arc::clone(&self.0), f)
    }

    /// A copy of the context as it is now.
    ///
    /// ```
    /// let shared = bemi_core::context::SharedContext::new(serde_json::json!({"a": 1}));
    /// assert_eq!(shared.snapshot().len(), 1);
    /// ```
    #[must_use]
    pub fn snapshot(&self) -> Context {
        self.lock().clone()
    }

    /// A new shared context holding a copy of this one (changes to either are not seen by the
    /// other).
    ///
    /// ```
    /// use bemi_core::context::{self, SharedContext};
    /// use serde_json::json;
    ///
    /// let shared = SharedContext::new(json!({"a": 1}));
    /// let copy = shared.copy();
    /// copy.sync_scope(|| context::merge(json!({"b": 2})).unwrap());
    /// assert!(!shared.snapshot().contains_key("b"));
    /// ```
    #[must_use]
    pub fn copy(&self) -> Self {
        Self::new(self.snapshot())
    }

    fn lock(&self) -> MutexGuard<'_, Context> {
        local::lock(&self.0)
    }
}

impl fmt::Debug for SharedContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedContext").field(&*self.lock()).finish()
    }
}

/// Runs `future` inside `context` (with no new context if it converts to none, see
/// [`IntoContext`]).
///
/// ```
/// use bemi_core::context;
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let seen = context::scope(json!({"worker": "MyWorker"}), async { context::current() }).await;
/// assert_eq!(seen.unwrap()["worker"], "MyWorker");
/// # }
/// ```
pub fn scope<F: Future>(context: impl IntoContext, future: F) -> WithContext<F> {
    future.with_context(context)
}

/// Runs the closure `f` inside `context`; for `spawn_blocking` and synchronous code.
///
/// ```
/// use bemi_core::context;
/// use serde_json::json;
///
/// let job = context::sync_scope(json!({"job": "nightly"}), || context::current().unwrap()["job"].clone());
/// assert_eq!(job, "nightly");
/// ```
pub fn sync_scope<R>(context: impl IntoContext, f: impl FnOnce() -> R) -> R {
    match context.into_context() {
        Some(context) => SharedContext::new(context).sync_scope(f),
        None => f(),
    }
}

/// A copy of the current context, or `None` outside of any scope.
///
/// ```
/// assert_eq!(bemi_core::context::current(), None);
/// ```
#[must_use]
pub fn current() -> Option<Context> {
    local::with(|slot| local::lock(slot).clone())
}

/// Calls `f` with the current context (or `None`) without copying it.
///
/// ```
/// use bemi_core::context;
///
/// let keys = context::sync_scope(serde_json::json!({"a": 1}), || context::with_current(|c| c.map(|c| c.len())));
/// assert_eq!(keys, Some(1));
/// ```
pub fn with_current<R>(f: impl FnOnce(Option<&Context>) -> R) -> R {
    let mut f = Some(f);
    let inside = local::with(|slot| (f.take().expect("called once"))(Some(&local::lock(slot))));
    inside.unwrap_or_else(|| (f.take().expect("called once"))(None))
}

/// Replaces the current context with `context` (an empty one if it converts to none).
///
/// Returns [`NoScope`] (and changes nothing) outside of a scope.
///
/// ```
/// use bemi_core::context;
/// use serde_json::json;
///
/// let replaced = context::sync_scope(json!({"stage": "fetch", "batch": 1}), || {
///     context::set(json!({"stage": "store"})).unwrap();
///     context::current().unwrap()
/// });
/// assert_eq!(serde_json::Value::Object(replaced), json!({"stage": "store"}));
/// assert!(context::set(json!({})).is_err());
/// ```
pub fn set(context: impl IntoContext) -> Result<(), NoScope> {
    let context = context.into_context().unwrap_or_default();
    local::with(|slot| *local::lock(slot) = context).ok_or(NoScope)
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
/// let merged = context::sync_scope(json!({"worker": "MyWorker", "stage": "fetch"}), || {
///     context::merge(json!({"stage": "store"})).unwrap();
///     context::current().unwrap()
/// });
/// assert_eq!(merged["worker"], "MyWorker");
/// assert_eq!(merged["stage"], "store");
/// ```
pub fn merge(fields: impl IntoContext) -> Result<(), NoScope> {
    let fields = fields.into_context();
    local::with(|slot| {
        if let Some(fields) = fields {
            local::lock(slot).extend(fields);
        }
    })
    .ok_or(NoScope)
}

/// Carries a context into a future or a stream, typically one that will run in a task started
/// with `tokio::spawn`. Implemented for every type; the wrapper, [`WithContext`], is a future
/// when the inner value is one and a stream when it is one.
///
/// The carried context is a **copy**: changes made by the spawned task do not leak back into
/// the request, and later changes of the request are not seen by the task.
///
/// ```
/// use bemi_core::context::{self, ContextExt};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let handle = context::scope(json!({"user_id": 7}), async {
///     tokio::spawn(async { context::current() }.in_current_context())
/// })
/// .await;
/// assert_eq!(handle.await.unwrap().unwrap()["user_id"], 7);
///
/// let job = async { context::current() }.with_context(json!({"job": "nightly"}));
/// assert_eq!(job.await.unwrap()["job"], "nightly");
/// # }
/// ```
pub trait ContextExt: Sized {
    /// Wraps `self` so that it runs inside a copy of the current context (or, outside of any
    /// scope, as it is).
    fn in_current_context(self) -> WithContext<Self> {
        WithContext::new(self, SharedContext::current().map(|shared| shared.copy()))
    }

    /// Wraps `self` so that it runs inside `context` (as it is if that converts to none).
    fn with_context(self, context: impl IntoContext) -> WithContext<Self> {
        WithContext::new(self, context.into_context().map(SharedContext::new))
    }
}

impl<T> ContextExt for T {}

pin_project_lite::pin_project! {
    /// A future or a stream that is polled inside a context: from [`scope`], [`ContextExt`] and
    /// the framework integrations. A named type; nothing is boxed.
    ///
    /// ```
    /// use bemi_core::context::{ContextExt, WithContext};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let future: WithContext<_> = async { bemi_core::context::current() }.with_context(serde_json::json!({"a": 1}));
    /// assert_eq!(future.await.unwrap()["a"], 1);
    /// # }
    /// ```
    pub struct WithContext<T> {
        #[pin]
        inner: T,
        context: Option<SharedContext>,
    }
}

impl<T> WithContext<T> {
    pub(crate) fn new(inner: T, context: Option<SharedContext>) -> Self {
        Self { inner, context }
    }

    /// The context this value is polled in, if any (a copy).
    ///
    /// ```
    /// use bemi_core::context::ContextExt;
    ///
    /// let future = async {}.with_context(serde_json::json!({"a": 1}));
    /// assert_eq!(future.context().unwrap()["a"], 1);
    /// ```
    #[must_use]
    pub fn context(&self) -> Option<Context> {
        self.context.as_ref().map(SharedContext::snapshot)
    }

    /// Unwraps the inner future or stream.
    #[must_use]
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<F: Future> Future for WithContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match this.context {
            Some(shared) => shared.sync_scope(|| this.inner.poll(cx)),
            None => this.inner.poll(cx),
        }
    }
}

impl<S: Stream> Stream for WithContext<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        match this.context {
            Some(shared) => shared.sync_scope(|| this.inner.poll_next(cx)),
            None => this.inner.poll_next(cx),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<T> fmt::Debug for WithContext<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithContext")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}
