#![doc = include_str!("../README.md")]

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
