//! The task-local that holds the current context: the one place it is declared, entered and
//! read. A leaf: it imports nothing else of this crate, so that [`context`](crate::context) and
//! [`integration`](crate::integration) both build on it without importing each other.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};

/// The value in scope: one context, shared (not copied) by every entry of the same scope, so
/// that a change made in one entry is seen by the others.
pub(crate) type Slot = Arc<Mutex<Map<String, Value>>>;

tokio::task_local! {
    /// The context in scope on this task.
    static CURRENT: Slot;
}

/// Runs `f` with `slot` as the current context.
pub(crate) fn enter<R>(slot: Slot, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(slot, f)
}

/// Calls `f` with the current context's slot; `None` (and `f` is not called) outside of any
/// scope.
pub(crate) fn with<R>(f: impl FnOnce(&Slot) -> R) -> Option<R> {
    CURRENT.try_with(f).ok()
}

/// Locks a slot's context.
pub(crate) fn lock(slot: &Slot) -> MutexGuard<'_, Map<String, Value>> {
    // A panic while holding the lock cannot leave a map half-updated in a way that matters
    // more than losing the request's context, so keep using it.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}
