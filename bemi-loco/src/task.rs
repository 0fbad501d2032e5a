//! Loco tasks with context: [`BemiTask`] runs a [`Task`] in the context
//! `{"task": NAME, "task_vars": {…}}`, so that its writes (and the jobs it enqueues with
//! [`PerformLaterWithContext`](crate::PerformLaterWithContext)) say which task made them.
//!
//! ```no_run
//! use bemi_loco::BemiTask;
//! use loco_rs::task::Tasks;
//!
//! # struct PurgeCompleted;
//! # #[async_trait::async_trait]
//! # impl loco_rs::task::Task for PurgeCompleted {
//! #     fn task(&self) -> loco_rs::task::TaskInfo {
//! #         loco_rs::task::TaskInfo { name: "purge_completed".into(), detail: String::new() }
//! #     }
//! #     async fn run(&self, _: &loco_rs::app::AppContext, _: &loco_rs::task::Vars) -> loco_rs::Result<()> { Ok(()) }
//! # }
//! // In `Hooks::register_tasks`:
//! fn register_tasks(tasks: &mut Tasks) {
//!     tasks.register(BemiTask::new(PurgeCompleted));
//! }
//! ```

use async_trait::async_trait;
use bemi_core::{Context, context};
use loco_rs::app::AppContext;
use loco_rs::task::{Task, TaskInfo, Vars};
use serde_json::Value;

/// The key of the task's name in a task's context.
///
/// ```
/// assert_eq!(bemi_loco::task::TASK_KEY, "task");
/// ```
pub const TASK_KEY: &str = "task";

/// The key of the task's variables (`cargo loco task NAME key:value …`) in a task's context.
///
/// ```
/// assert_eq!(bemi_loco::task::TASK_VARS_KEY, "task_vars");
/// ```
pub const TASK_VARS_KEY: &str = "task_vars";

/// A [`Task`] that runs in the context `{"task": NAME, "task_vars": {KEY: VALUE, …}}`: register
/// it in place of the task.
///
/// ```
/// use loco_rs::task::{Task as _, TaskInfo};
///
/// # struct Nightly;
/// # #[async_trait::async_trait]
/// # impl loco_rs::task::Task for Nightly {
/// #     fn task(&self) -> TaskInfo { TaskInfo { name: "nightly".into(), detail: "d".into() } }
/// #     async fn run(&self, _: &loco_rs::app::AppContext, _: &loco_rs::task::Vars) -> loco_rs::Result<()> { Ok(()) }
/// # }
/// let task = bemi_loco::BemiTask::new(Nightly);
/// assert_eq!(task.task().name, "nightly");
/// ```
#[derive(Debug)]
pub struct BemiTask<T> {
    task: T,
}

impl<T> BemiTask<T> {
    /// Wraps a task.
    ///
    /// ```
    /// let task = bemi_loco::BemiTask::new(7);
    /// assert_eq!(*task.get_ref(), 7);
    /// ```
    pub fn new(task: T) -> Self {
        Self { task }
    }

    /// The wrapped task.
    ///
    /// ```
    /// assert_eq!(*bemi_loco::BemiTask::new("t").get_ref(), "t");
    /// ```
    pub fn get_ref(&self) -> &T {
        &self.task
    }
}

/// The context of the task `name` run with `vars`.
///
/// ```
/// use serde_json::json;
///
/// let vars = loco_rs::task::Vars::from_cli_args(vec![("dry_run".into(), "1".into())]);
/// let ctx = bemi_loco::task::task_context("purge_completed", &vars);
/// assert_eq!(
///     serde_json::Value::Object(ctx),
///     json!({"task": "purge_completed", "task_vars": {"dry_run": "1"}})
/// );
/// ```
#[must_use]
pub fn task_context(name: &str, vars: &Vars) -> Context {
    let vars = vars
        .cli
        .iter()
        .map(|(key, value)| (key.clone(), Value::from(value.as_str())))
        .collect();
    let mut context = Context::new();
    context.insert(TASK_KEY.to_owned(), Value::from(name));
    context.insert(TASK_VARS_KEY.to_owned(), Value::Object(vars));
    context
}

#[async_trait]
impl<T: Task> Task for BemiTask<T> {
    fn task(&self) -> TaskInfo {
        self.task.task()
    }

    async fn run(&self, app_context: &AppContext, vars: &Vars) -> loco_rs::Result<()> {
        let context = task_context(&self.task.task().name, vars);
        context::scope(context, self.task.run(app_context, vars)).await
    }
}
