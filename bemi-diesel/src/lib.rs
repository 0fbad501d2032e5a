//! # bemi-diesel
//!
//! Diesel for bemi-rs: connections whose writes carry the context in scope.
//!
//! - [`BemiPgConnection`] (feature `sync`): wraps a Diesel `PgConnection` (Diesel 2.3 or
//!   2.4). Diesel is synchronous and runs on blocking threads (`spawn_blocking`,
//!   deadpool-diesel's `interact`), where the request's task-local context is not: carry it
//!   there with [`with_context`] (or [`in_context`]).
//! - [`BemiAsyncPgConnection`] (feature `async`): wraps diesel-async's `AsyncPgConnection`
//!   (diesel-async 0.9); poolable with bb8 or deadpool (`AsyncDieselConnectionManager`).
//!
//! Both implement Diesel's connection traits, so queries keep their shape
//! (`diesel::insert_into(todo).values(..).execute(&mut conn)`), transactions included.
//!
//! # How the context travels
//!
//! Through the message carrier of `bemi_core::carrier`: the wrapper renders each statement's
//! SQL, and before a write emits the context as the `_bemi` message in the write's
//! transaction. In a transaction, the emission goes just before the write (pipelined with it
//! by diesel-async); outside one, the write is wrapped: `BEGIN` and the emission in one simple
//! query (pipelined with the write by diesel-async), the write, then `COMMIT` once the write
//! ran. The write's statement is untouched, so Diesel's prepared-statement cache keeps working.
//! In a transaction, a write without a context after one with a context emits `{}` first, so
//! that its rows do not inherit it.
//!
//! # Cancellation
//!
//! A diesel-async write's future may be dropped at any await (a timeout, `select!`): a later
//! write in the same transaction never carries a context it was not given (a context is noted
//! as in effect when its emission is planned, a reset only once it completed); a wrapped write
//! dropped midway leaves its transaction open only until the connection's next statement,
//! which rolls it back first, and a pool does not take the connection back (it is broken, as
//! diesel-async's own transaction manager marks a connection whose `BEGIN`/`COMMIT` was
//! dropped). Diesel's sync connection blocks its thread until a call returns (dropping the
//! future of `interact` or `spawn_blocking` does not stop it): it cannot be cancelled mid-call.
//!
//! The wrappers do not implement `Deref` to the inner connection (diesel-async's blanket
//! implementations for `DerefMut` connections would route queries past the wrapper):
//! `inner_mut` reaches it, and queries through it carry no context.

#[cfg(feature = "async")]
mod async_pg;
mod plan;
#[cfg(feature = "sync")]
mod sync_pg;

#[cfg(feature = "async")]
pub use async_pg::BemiAsyncPgConnection;
#[cfg(feature = "sync")]
pub use sync_pg::BemiPgConnection;

/// Carries the current context (of the calling task) into `f`, a closure of a connection that
/// may run on another thread: deadpool-diesel's `interact`, r2d2 behind `spawn_blocking` or
/// `web::block`. Call it where the context is (in the request's task); the closure it returns
/// runs `f` in that context wherever it is called. Without it, the blocking thread has no
/// context and the writes carry none.
///
/// ```no_run
/// # #[cfg(feature = "sync")]
/// # mod example {
/// use bemi_diesel::BemiPgConnection;
/// use diesel::RunQueryDsl as _;
///
/// # async fn run(pool: deadpool_diesel::Pool<deadpool_diesel::Manager<BemiPgConnection>>) -> Result<(), Box<dyn std::error::Error>> {
/// let conn = pool.get().await?;
/// conn.interact(bemi_diesel::with_context(|conn: &mut BemiPgConnection| {
///     diesel::sql_query("DELETE FROM todo WHERE id = 1").execute(conn)
/// }))
/// .await??;
/// # Ok(()) }
/// # }
/// ```
pub fn with_context<C: ?Sized, R>(f: impl FnOnce(&mut C) -> R) -> impl FnOnce(&mut C) -> R {
    let context = bemi_core::context::current();
    move |conn| bemi_core::context::sync_scope(context, || f(conn))
}

/// [`with_context`] for a closure without arguments (`tokio::task::spawn_blocking`).
///
/// ```
/// use bemi_core::context;
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let user = context::scope(json!({"user_id": 7}), async {
///     let work = bemi_diesel::in_context(|| context::current().map(|c| c["user_id"].clone()));
///     tokio::task::spawn_blocking(work).await.unwrap()
/// })
/// .await;
/// assert_eq!(user, Some(json!(7)));
/// # }
/// ```
pub fn in_context<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    let context = bemi_core::context::current();
    move || bemi_core::context::sync_scope(context, f)
}
