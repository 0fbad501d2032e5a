//! Background jobs with context: [`BemiJob`] wraps a Loco [`BackgroundWorker`] so that its
//! writes carry the job's context, and [`PerformLaterWithContext`] enqueues a job together with
//! the context of the code that enqueued it (a request's, a task's).
//!
//! The job's context ([`job_context`]) is the enqueuing context's keys, plus `job` (the
//! worker's class name) and `job_args` (its arguments as JSON):
//!
//! ```text
//! {"user_id": 187234, "endpoint": "/todo/7/archive", "method": "POST",
//!  "job": "ArchiveTodo", "job_args": {"id": 7}}
//! ```
//!
//! It travels with the job's arguments through Loco's queue (PostgreSQL, Redis, SQLite: it is
//! part of the JSON arguments) and is in scope around `perform`, in every worker mode
//! (`BackgroundQueue`, `BackgroundAsync`, `ForegroundBlocking`).
//!
//! ```no_run
//! use bemi_loco::{AppContextExt as _, BemiJob, PerformLaterWithContext as _};
//! use loco_rs::app::AppContext;
//! use loco_rs::bgworker::{BackgroundWorker, Queue};
//! use sea_orm::{ConnectionTrait as _, DbBackend, Statement};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct ArchiveArgs {
//!     id: i64,
//! }
//!
//! struct ArchiveTodo {
//!     ctx: AppContext,
//! }
//!
//! #[async_trait::async_trait]
//! impl BackgroundWorker<ArchiveArgs> for ArchiveTodo {
//!     fn build(ctx: &AppContext) -> Self {
//!         Self { ctx: ctx.clone() }
//!     }
//!
//!     async fn perform(&self, args: ArchiveArgs) -> loco_rs::Result<()> {
//!         let delete = Statement::from_sql_and_values(
//!             DbBackend::Postgres,
//!             "DELETE FROM todo WHERE id = $1",
//!             [args.id.into()],
//!         );
//!         // Carries {"job": "ArchiveTodo", "job_args": {"id": …}, …the request's keys}.
//!         self.ctx.bemi_db().execute_raw(delete).await?;
//!         Ok(())
//!     }
//! }
//!
//! // In `Hooks::connect_workers`: register the wrapper instead of the worker.
//! async fn connect_workers(ctx: &AppContext, queue: &Queue) -> loco_rs::Result<()> {
//!     queue.register(BemiJob::<ArchiveTodo>::build(ctx)).await
//! }
//!
//! // In a controller: enqueue with the request's context.
//! async fn archive(ctx: &AppContext, id: i64) -> loco_rs::Result<String> {
//!     ArchiveTodo::perform_later_with_context(ctx, ArchiveArgs { id }).await
//! }
//! ```

use async_trait::async_trait;
use bemi_core::Context;
use bemi_core::context;
use loco_rs::app::AppContext;
use loco_rs::bgworker::BackgroundWorker;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The key of the worker's class name in a job's context.
///
/// ```
/// assert_eq!(bemi_loco::job::JOB_KEY, "job");
/// ```
pub const JOB_KEY: &str = "job";

/// The key of the job's arguments in a job's context.
///
/// ```
/// assert_eq!(bemi_loco::job::JOB_ARGS_KEY, "job_args");
/// ```
pub const JOB_ARGS_KEY: &str = "job_args";

/// The context a job's writes carry: `enqueued_in`'s keys (the request's or task's context
/// when the job was enqueued; none without one), then [`JOB_KEY`] and [`JOB_ARGS_KEY`] (which
/// win over keys of the same name).
///
/// ```
/// use serde_json::json;
///
/// let request = bemi_tests_free_ctx(json!({"user_id": 7, "method": "POST"}));
/// let ctx = bemi_loco::job_context("ArchiveTodo", json!({"id": 3}), Some(&request));
/// assert_eq!(
///     serde_json::Value::Object(ctx),
///     json!({"user_id": 7, "method": "POST", "job": "ArchiveTodo", "job_args": {"id": 3}})
/// );
///
/// let alone = bemi_loco::job_context("ArchiveTodo", json!({"id": 3}), None);
/// assert_eq!(serde_json::Value::Object(alone), json!({"job": "ArchiveTodo", "job_args": {"id": 3}}));
/// # fn bemi_tests_free_ctx(value: serde_json::Value) -> bemi_core::Context {
/// #     match value { serde_json::Value::Object(map) => map, _ => unreachable!() }
/// # }
/// ```
#[must_use]
pub fn job_context(name: &str, args: Value, enqueued_in: Option<&Context>) -> Context {
    let mut context = enqueued_in.cloned().unwrap_or_default();
    context.insert(JOB_KEY.to_owned(), Value::from(name));
    context.insert(JOB_ARGS_KEY.to_owned(), args);
    context
}

/// A job's arguments with the context of the code that enqueued it, as they travel through
/// Loco's queue: `{"_bemi": <context or null>, "args": <the worker's arguments>}`.
///
/// Bare arguments (a job enqueued with the worker's own `perform_later`, or before the app
/// used [`BemiJob`]) read as arguments enqueued without a context.
///
/// ```
/// use bemi_loco::BemiArgs;
/// use serde_json::json;
///
/// let carried: BemiArgs<u32> = serde_json::from_value(json!({"_bemi": {"user_id": 7}, "args": 3})).unwrap();
/// assert_eq!(*carried.args(), 3);
/// assert_eq!(carried.enqueued_in().unwrap()["user_id"], 7);
///
/// let bare: BemiArgs<u32> = serde_json::from_value(json!(3)).unwrap();
/// assert_eq!((*bare.args(), bare.enqueued_in()), (3, None));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BemiArgs<A> {
    #[serde(rename = "_bemi")]
    enqueued_in: Option<Context>,
    args: A,
}

impl<A> BemiArgs<A> {
    /// `args` with the current context (none outside of any scope).
    ///
    /// ```
    /// use bemi_core::context;
    /// use serde_json::json;
    ///
    /// let carried = context::sync_scope(json!({"user_id": 7}), || bemi_loco::BemiArgs::new(3));
    /// assert_eq!(carried.enqueued_in().unwrap()["user_id"], 7);
    /// assert_eq!(bemi_loco::BemiArgs::new(3).enqueued_in(), None);
    /// ```
    #[must_use]
    pub fn new(args: A) -> Self {
        Self::with_context(args, context::current())
    }

    /// `args` with the given enqueuing context.
    ///
    /// ```
    /// let carried = bemi_loco::BemiArgs::with_context("nightly", None);
    /// assert_eq!(*carried.args(), "nightly");
    /// ```
    #[must_use]
    pub fn with_context(args: A, enqueued_in: Option<Context>) -> Self {
        Self { enqueued_in, args }
    }

    /// The worker's arguments.
    ///
    /// ```
    /// assert_eq!(*bemi_loco::BemiArgs::new(3).args(), 3);
    /// ```
    pub fn args(&self) -> &A {
        &self.args
    }

    /// The context the job was enqueued in.
    ///
    /// ```
    /// assert_eq!(bemi_loco::BemiArgs::new(3).enqueued_in(), None);
    /// ```
    pub fn enqueued_in(&self) -> Option<&Context> {
        self.enqueued_in.as_ref()
    }

    /// The worker's arguments and the enqueuing context.
    ///
    /// ```
    /// let (args, enqueued_in) = bemi_loco::BemiArgs::new(3).into_parts();
    /// assert_eq!((args, enqueued_in), (3, None));
    /// ```
    pub fn into_parts(self) -> (A, Option<Context>) {
        (self.args, self.enqueued_in)
    }
}

impl<'de, A: Deserialize<'de>> Deserialize<'de> for BemiArgs<A> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The carried form: both keys present (`_bemi` may be `null`); other keys (Loco's
        /// queue adds `error` to a failed job's data) are ignored.
        #[derive(Deserialize)]
        struct Carried<A> {
            #[serde(rename = "_bemi", deserialize_with = "Option::deserialize")]
            enqueued_in: Option<Context>,
            args: A,
        }

        /// The carried form first; anything else is bare arguments.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form<A> {
            Carried(Carried<A>),
            Bare(A),
        }

        Ok(match Form::deserialize(deserializer)? {
            Form::Carried(Carried { enqueued_in, args }) => Self { enqueued_in, args },
            Form::Bare(args) => Self {
                enqueued_in: None,
                args,
            },
        })
    }
}

/// A [`BackgroundWorker`] whose jobs run in their [`job_context`]: register it in place of the
/// worker (`queue.register(BemiJob::<W>::build(ctx))`), under the worker's own class name,
/// queue and tags. It takes [`BemiArgs`] (and bare arguments too).
///
/// ```no_run
/// use bemi_loco::BemiJob;
/// use loco_rs::bgworker::{BackgroundWorker, Queue};
///
/// # struct Nightly;
/// # #[async_trait::async_trait]
/// # impl BackgroundWorker<()> for Nightly {
/// #     fn build(_: &loco_rs::app::AppContext) -> Self { Nightly }
/// #     async fn perform(&self, _: ()) -> loco_rs::Result<()> { Ok(()) }
/// # }
/// async fn connect_workers(ctx: &loco_rs::app::AppContext, queue: &Queue) -> loco_rs::Result<()> {
///     queue.register(BemiJob::<Nightly>::build(ctx)).await
/// }
/// ```
pub struct BemiJob<W> {
    worker: W,
}

impl<W> BemiJob<W> {
    /// Wraps a worker.
    ///
    /// ```
    /// struct Nightly;
    /// let job = bemi_loco::BemiJob::new(Nightly);
    /// # let _ = job;
    /// ```
    pub fn new(worker: W) -> Self {
        Self { worker }
    }

    /// The wrapped worker.
    ///
    /// ```
    /// let job = bemi_loco::BemiJob::new(7);
    /// assert_eq!(*job.get_ref(), 7);
    /// ```
    pub fn get_ref(&self) -> &W {
        &self.worker
    }
}

impl<W> std::fmt::Debug for BemiJob<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BemiJob")
            .field("worker", &std::any::type_name::<W>())
            .finish()
    }
}

#[async_trait]
impl<W, A> BackgroundWorker<BemiArgs<A>> for BemiJob<W>
where
    W: BackgroundWorker<A> + 'static,
    A: Serialize + Send + Sync + 'static,
{
    fn queue() -> Option<String> {
        W::queue()
    }

    fn tags() -> Vec<String> {
        W::tags()
    }

    fn build(ctx: &AppContext) -> Self {
        Self::new(W::build(ctx))
    }

    fn class_name() -> String {
        W::class_name()
    }

    async fn perform(&self, carried: BemiArgs<A>) -> loco_rs::Result<()> {
        let (args, enqueued_in) = carried.into_parts();
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        let context = job_context(&W::class_name(), json, enqueued_in.as_ref());
        context::scope(context, self.worker.perform(args)).await
    }
}

/// Enqueues a job with the current context: `W::perform_later_with_context(ctx, args)` for
/// any worker `W` whose [`BemiJob`] is registered. In a request, the job's writes carry the
/// request's context (see [`job_context`]); outside of any scope, the job's own.
///
/// ```no_run
/// use bemi_loco::PerformLaterWithContext as _;
///
/// # struct Nightly;
/// # #[async_trait::async_trait]
/// # impl loco_rs::bgworker::BackgroundWorker<u32> for Nightly {
/// #     fn build(_: &loco_rs::app::AppContext) -> Self { Nightly }
/// #     async fn perform(&self, _: u32) -> loco_rs::Result<()> { Ok(()) }
/// # }
/// # async fn handler(ctx: loco_rs::app::AppContext) -> loco_rs::Result<()> {
/// let job_id = Nightly::perform_later_with_context(&ctx, 3).await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait PerformLaterWithContext<A>: BackgroundWorker<A> + Sized + 'static
where
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// [`BackgroundWorker::perform_later`] of [`BemiJob<Self>`], with the current context.
    async fn perform_later_with_context(ctx: &AppContext, args: A) -> loco_rs::Result<String> {
        let carried = BemiArgs::new(args);
        <BemiJob<Self> as BackgroundWorker<BemiArgs<A>>>::perform_later(ctx, carried).await
    }

    /// [`BackgroundWorker::perform_later_with_priority`] of [`BemiJob<Self>`], with the
    /// current context.
    async fn perform_later_with_context_and_priority(
        ctx: &AppContext,
        args: A,
        priority: Option<i32>,
    ) -> loco_rs::Result<String> {
        let carried = BemiArgs::new(args);
        <BemiJob<Self> as BackgroundWorker<BemiArgs<A>>>::perform_later_with_priority(
            ctx, carried, priority,
        )
        .await
    }
}

impl<W, A> PerformLaterWithContext<A> for W
where
    W: BackgroundWorker<A> + 'static,
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
{
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn carried_arguments_round_trip_through_json() {
        let Value::Object(ctx) = json!({"user_id": 7}) else {
            unreachable!()
        };
        let carried = BemiArgs::with_context(json!({"id": 3}), Some(ctx));
        let json = serde_json::to_value(&carried).unwrap();
        assert_eq!(json, json!({"_bemi": {"user_id": 7}, "args": {"id": 3}}));
        let back: BemiArgs<Value> = serde_json::from_value(json).unwrap();
        assert_eq!(back, carried);
    }

    #[test]
    fn bare_arguments_with_other_keys_stay_bare() {
        #[derive(Debug, Deserialize, PartialEq)]
        struct Args {
            args: u32,
            other: u32,
        }
        let bare: BemiArgs<Args> = serde_json::from_value(json!({"args": 1, "other": 2})).unwrap();
        assert_eq!(bare.enqueued_in(), None);
        assert_eq!(bare.args(), &Args { args: 1, other: 2 });
    }

    #[test]
    fn bare_arguments_with_an_args_key_stay_bare() {
        let bare: BemiArgs<Value> = serde_json::from_value(json!({"args": 1})).unwrap();
        assert_eq!(bare.enqueued_in(), None);
        assert_eq!(bare.args(), &json!({"args": 1}));
    }

    #[test]
    fn a_failed_jobs_error_key_is_ignored() {
        let json = json!({"_bemi": {"user_id": 7}, "args": 3, "error": "boom"});
        let carried: BemiArgs<u32> = serde_json::from_value(json).unwrap();
        assert_eq!(
            (*carried.args(), carried.enqueued_in().is_some()),
            (3, true)
        );
    }

    #[tokio::test]
    async fn perform_runs_in_the_job_context() {
        struct Seen;
        #[async_trait]
        impl BackgroundWorker<u32> for Seen {
            fn build(_: &AppContext) -> Self {
                Seen
            }
            async fn perform(&self, n: u32) -> loco_rs::Result<()> {
                let ctx = context::current().expect("a context");
                assert_eq!(
                    Value::Object(ctx),
                    json!({"user_id": 7, "job": "Seen", "job_args": n})
                );
                Ok(())
            }
        }
        let carried = context::scope(json!({"user_id": 7}), async { BemiArgs::new(5) }).await;
        BemiJob::new(Seen).perform(carried).await.unwrap();
    }
}
