//! For authors of framework integrations: what a Tower layer, an actix-web middleware or a
//! GraphQL extension does with each request.
//!
//! An integration runs its user's closure for the request, turns the result into a
//! [`RequestScope`], and runs the inner service's synchronous `call` **and** every poll of the
//! future it returns inside the same [`SharedContext`] — so that a
//! [`merge`](crate::context::merge) made in either is seen by all later writes of the request.
//! The future it returns is a [`WithContext`]: a named type, nothing boxed, which the
//! integration names as its `ResponseFuture`.
//!
//! ```
//! use bemi_core::context;
//! use bemi_core::integration::RequestScope;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // In a middleware's `call`: the closure's value for this request.
//! let scope = RequestScope::new(json!({"endpoint": "/todo"}));
//! let response = scope.call(|| {
//!     // The inner service's `call` runs inside the context...
//!     context::merge(json!({"in_call": true})).unwrap();
//!     // ...and so does every poll of its future.
//!     async { context::current().unwrap() }
//! });
//! let seen = response.await;
//! assert_eq!(seen["endpoint"], "/todo");
//! assert_eq!(seen["in_call"], true);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use crate::context::WithContext;
use crate::context::{CURRENT, Context, IntoContext};

/// A context that can be entered several times, sharing changes between the entries. Cloning
/// shares the context; it does not copy it.
#[derive(Clone, Default)]
pub struct SharedContext(Arc<Mutex<Context>>);

impl SharedContext {
    /// Wraps a context (an empty one if `context` converts to none) so that it can be entered
    /// with [`SharedContext::scope`] and [`SharedContext::sync_scope`].
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
        CURRENT.try_with(SharedContext::clone).ok()
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
    pub fn sync_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }

    /// A copy of the context as it is now.
    #[must_use]
    pub fn snapshot(&self) -> Context {
        self.lock().clone()
    }

    /// A new shared context holding a copy of this one (changes to either are not seen by the
    /// other).
    #[must_use]
    pub fn copy(&self) -> Self {
        Self::new(self.snapshot())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Context> {
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

/// One request's context, from the value its integration's closure returned (see
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
    /// The scope of a request whose closure returned `context`.
    pub fn new(context: impl IntoContext) -> Self {
        Self {
            context: context.into_context().map(SharedContext::new),
        }
    }

    /// The request's context, if it has one.
    #[must_use]
    pub fn context(&self) -> Option<&SharedContext> {
        self.context.as_ref()
    }

    /// Runs `call` (the inner service's synchronous `call`) inside the request's context, and
    /// returns its future wrapped so that every poll runs inside the same context. Without a
    /// context, both run as they are (an enclosing scope's context, if any, stays).
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
