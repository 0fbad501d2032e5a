//! The todo app on Loco 1.2 (`todo-loco`): Loco's controllers, SeaORM through
//! `ctx.bemi_db()`, and a background job run by Loco's PostgreSQL queue — wired with bemi by one
//! initializer ([`bemi_loco::BemiInitializer`]), the job wrapper ([`bemi_loco::BemiJob`]) and
//! the task wrapper ([`bemi_loco::BemiTask`]).
//!
//! The REST interface of the other todo apps, plus `POST /todo/{id}/archive` → 202
//! `{"job_id": …}`: it enqueues an [`ArchiveTodo`] job, which deletes the todo (its history
//! stays in the audit trail) in the context `{user_id, endpoint, method}` of the request that
//! enqueued it plus `{"job": "ArchiveTodo", "job_args": {"id": …}}`. The task
//! `archive_completed` ([`ArchiveCompleted`]) enqueues one for every completed todo, in the
//! context `{"task": "archive_completed", "task_vars": {…}}`.
//!
//! The configuration is made in code ([`config`]): the database of `DATABASE_URL` for SeaORM
//! and for Loco's job queue (the table `pg_loco_queue`), `workers.mode: BackgroundQueue`.
//!
//! ```no_run
//! # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
//! let app = bemi_examples::loco_app::boot("postgres://localhost/app").await?;
//! let worker = bemi_examples::loco_app::start_worker(&app.ctx);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//! axum::serve(listener, app.router).await.unwrap();
//! # Ok(()) }
//! ```

use std::path::Path as FsPath;

use async_trait::async_trait;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bemi_loco::{AppContextExt as _, BemiInitializer, BemiJob, BemiTask, PerformLaterWithContext};
use loco_rs::app::{AppContext, Hooks, Initializer};
use loco_rs::bgworker::{BackgroundWorker, Queue};
use loco_rs::boot::{BootResult, StartMode};
use loco_rs::config::Config;
use loco_rs::controller::{AppRoutes, Routes, format};
use loco_rs::environment::Environment;
use loco_rs::task::{Task, TaskInfo, Tasks, Vars};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::request_context;
use crate::startup::{RouterFuture, StartupError, connect_error};
use crate::todo::{NewTodo, TodoStore as _};

/// The Loco app: its hooks.
#[derive(Debug, Clone, Copy)]
pub struct App;

#[async_trait]
impl Hooks for App {
    fn app_name() -> &'static str {
        "todo-loco"
    }

    /// Boots without Loco's migrator (the scaffold creates the table): the context, the job
    /// queue's table, then Loco's own start-up (initializers, routes, workers).
    async fn boot(
        mode: StartMode,
        environment: &Environment,
        config: Config,
    ) -> loco_rs::Result<BootResult> {
        let ctx = loco_rs::boot::create_context::<Self>(environment, config).await?;
        if let (Some(queue), Some(config)) = (&ctx.queue_provider, &ctx.config.queue) {
            loco_rs::bgworker::converge(queue, config).await?;
        }
        loco_rs::boot::run_app::<Self>(&mode, ctx).await
    }

    /// bemi's one initializer: the request layer and the wrapped connection.
    async fn initializers(_ctx: &AppContext) -> loco_rs::Result<Vec<Box<dyn Initializer>>> {
        Ok(vec![Box::new(BemiInitializer::new(
            request_context::for_http::<axum::body::Body>,
        ))])
    }

    fn routes(_ctx: &AppContext) -> AppRoutes {
        AppRoutes::empty().add_route(
            Routes::new()
                .prefix("todo")
                .add("/", axum::routing::get(list).post(create))
                .add("/{id}/complete", axum::routing::put(complete))
                .add("/{id}", axum::routing::delete(remove))
                .add("/{id}/archive", axum::routing::post(archive)),
        )
    }

    async fn connect_workers(ctx: &AppContext, queue: &Queue) -> loco_rs::Result<()> {
        queue.register(BemiJob::<ArchiveTodo>::build(ctx)).await
    }

    fn register_tasks(tasks: &mut Tasks) {
        tasks.register(BemiTask::new(ArchiveCompleted));
    }

    async fn truncate(_ctx: &AppContext) -> loco_rs::Result<()> {
        Ok(())
    }

    async fn seed(_ctx: &AppContext, _path: &FsPath) -> loco_rs::Result<()> {
        Ok(())
    }
}

async fn create(
    State(ctx): State<AppContext>,
    Json(new): Json<NewTodo>,
) -> loco_rs::Result<axum::response::Response> {
    let todo = ctx.bemi_db().create(&new.task).await?;
    format::render().status(StatusCode::CREATED).json(todo)
}

async fn complete(
    State(ctx): State<AppContext>,
    Path(id): Path<i64>,
) -> loco_rs::Result<axum::response::Response> {
    match ctx.bemi_db().complete(id).await? {
        Some(todo) => format::json(todo),
        None => Err(loco_rs::Error::NotFound),
    }
}

async fn remove(
    State(ctx): State<AppContext>,
    Path(id): Path<i64>,
) -> loco_rs::Result<axum::response::Response> {
    if ctx.bemi_db().delete(id).await? {
        format::render().status(StatusCode::NO_CONTENT).empty()
    } else {
        Err(loco_rs::Error::NotFound)
    }
}

async fn list(State(ctx): State<AppContext>) -> loco_rs::Result<axum::response::Response> {
    format::json(ctx.bemi_db().list().await?)
}

/// `POST /todo/{id}/archive`: enqueues [`ArchiveTodo`] with the request's context.
async fn archive(
    State(ctx): State<AppContext>,
    Path(id): Path<i64>,
) -> loco_rs::Result<axum::response::Response> {
    let job_id = ArchiveTodo::perform_later_with_context(&ctx, ArchiveArgs { id }).await?;
    format::render()
        .status(StatusCode::ACCEPTED)
        .json(json!({"job_id": job_id}))
}

/// The arguments of [`ArchiveTodo`].
///
/// ```
/// let args: bemi_examples::loco_app::ArchiveArgs = serde_json::from_str(r#"{"id": 7}"#).unwrap();
/// assert_eq!(args.id, 7);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveArgs {
    /// The todo to archive.
    pub id: i64,
}

/// The background job: deletes the todo (archived: gone from the list, kept in the audit
/// trail). Registered as `BemiJob<ArchiveTodo>`, so its write carries the job's context.
pub struct ArchiveTodo {
    ctx: AppContext,
}

#[async_trait]
impl BackgroundWorker<ArchiveArgs> for ArchiveTodo {
    fn build(ctx: &AppContext) -> Self {
        Self { ctx: ctx.clone() }
    }

    async fn perform(&self, args: ArchiveArgs) -> loco_rs::Result<()> {
        if !self.ctx.bemi_db().delete(args.id).await? {
            tracing::info!(id = args.id, "nothing to archive: no such todo");
        }
        Ok(())
    }
}

/// The task `archive_completed`: enqueues an [`ArchiveTodo`] job for every completed todo.
/// Registered as `BemiTask<ArchiveCompleted>`: the jobs carry the task's context.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveCompleted;

#[async_trait]
impl Task for ArchiveCompleted {
    fn task(&self) -> TaskInfo {
        TaskInfo {
            name: "archive_completed".to_owned(),
            detail: "archive every completed todo (in background jobs)".to_owned(),
        }
    }

    async fn run(&self, ctx: &AppContext, _vars: &Vars) -> loco_rs::Result<()> {
        for todo in ctx.bemi_db().list().await? {
            if todo.is_completed {
                ArchiveTodo::perform_later_with_context(ctx, ArchiveArgs { id: todo.id }).await?;
            }
        }
        Ok(())
    }
}

/// The configuration of the app on the database of `url`: SeaORM's pool and Loco's
/// PostgreSQL job queue on it, jobs run by queue workers (`BackgroundQueue`), Loco's own
/// logging off (the binary logs through `tracing-subscriber`).
///
/// ```
/// let config = bemi_examples::loco_app::config("postgres://localhost/app").unwrap();
/// assert_eq!(config.database.uri, "postgres://localhost/app");
/// ```
pub fn config(url: &str) -> Result<Config, serde_json::Error> {
    serde_json::from_value(json!({
        "logger": {"enable": false, "level": "info", "format": "compact"},
        "server": {"binding": "127.0.0.1", "port": 3000, "host": "http://127.0.0.1"},
        "database": {
            "uri": url,
            "enable_logging": false,
            "min_connections": 1,
            "max_connections": 20,
            "connect_timeout": 5000,
            "idle_timeout": 60000,
            // A burst of requests waits for a connection rather than failing.
            "acquire_timeout": 120_000,
        },
        // Loco's queue defaults (500 ms to get a connection, idle ones closed after 500 ms) fail
        // polls on a busy machine ("pool timed out"): kept connections, 5 s to get one.
        "queue": {
            "kind": "Postgres",
            "uri": url,
            "max_connections": 5,
            "connect_timeout": 5000,
            "idle_timeout": 60000,
            "num_workers": 2,
            "poll_interval_sec": 1,
        },
        "workers": {"mode": "BackgroundQueue"},
    }))
}

/// The booted app: the router (with bemi's layer) and the context (with the wrapped
/// connection and the job queue).
pub struct LocoApp {
    /// The router, ready to serve.
    pub router: axum::Router,
    /// Loco's context.
    pub ctx: AppContext,
}

/// Boots the app on the database of `url` in Loco's `ServerAndWorker` mode (routes, and the
/// workers registered with the queue); [`start_worker`] runs the queue.
///
/// ```no_run
/// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
/// let app = bemi_examples::loco_app::boot("postgres://localhost/app").await?;
/// # Ok(()) }
/// ```
pub async fn boot(url: &str) -> Result<LocoApp, StartupError> {
    let config = config(url).map_err(|error| connect_error(url, error))?;
    let booted = App::boot(
        StartMode::ServerAndWorker,
        &Environment::Development,
        config,
    )
    .await
    .map_err(|error| connect_error(url, error))?;
    let router = booted
        .router
        .ok_or_else(|| connect_error(url, loco_rs::Error::string("Loco made no router")))?;
    Ok(LocoApp {
        router,
        ctx: booted.app_context,
    })
}

/// Runs Loco's job queue (the PostgreSQL queue's workers) in a task until
/// [`stop_worker`]; jobs enqueued before it starts wait in the queue.
///
/// ```no_run
/// # async fn run(app: bemi_examples::loco_app::LocoApp) {
/// let worker = bemi_examples::loco_app::start_worker(&app.ctx);
/// bemi_examples::loco_app::stop_worker(&app.ctx, worker).await;
/// # }
/// ```
pub fn start_worker(ctx: &AppContext) -> tokio::task::JoinHandle<()> {
    let queue = ctx.queue_provider.clone();
    tokio::spawn(async move {
        let Some(queue) = queue else {
            tracing::error!("no job queue: jobs are not run");
            return;
        };
        if let Err(error) = queue.run(Vec::new()).await {
            tracing::error!(%error, "the job queue stopped");
        }
    })
}

/// Asks the job queue to stop (jobs being run are finished) and waits for it.
///
/// ```no_run
/// # async fn run(app: bemi_examples::loco_app::LocoApp) {
/// let worker = bemi_examples::loco_app::start_worker(&app.ctx);
/// bemi_examples::loco_app::stop_worker(&app.ctx, worker).await;
/// # }
/// ```
pub async fn stop_worker(ctx: &AppContext, worker: tokio::task::JoinHandle<()>) {
    if let Some(queue) = &ctx.queue_provider
        && let Err(error) = queue.shutdown()
    {
        tracing::error!(%error, "could not stop the job queue");
    }
    if let Err(error) = worker.await {
        tracing::error!(%error, "the job queue's task failed");
    }
}

/// Runs the task `name` (e.g. `archive_completed`) as `cargo loco task` would.
///
/// ```no_run
/// # async fn run(app: bemi_examples::loco_app::LocoApp) -> loco_rs::Result<()> {
/// bemi_examples::loco_app::run_task(&app.ctx, "archive_completed").await?;
/// # Ok(()) }
/// ```
pub async fn run_task(ctx: &AppContext, name: &str) -> loco_rs::Result<()> {
    loco_rs::boot::run_task::<App>(ctx, Some(&name.to_owned()), &Vars::default()).await
}

/// The app for the example scaffold (`todo-loco`): [`boot`], and the job queue running in the
/// background ([`start_worker`]) for as long as the process.
///
/// ```no_run
/// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
/// let app = bemi_examples::loco_app::router("postgres://localhost/app".into()).await?;
/// # Ok(()) }
/// ```
pub fn router(url: String) -> RouterFuture {
    Box::pin(async move {
        let app = boot(&url).await?;
        drop(start_worker(&app.ctx));
        Ok(app.router)
    })
}
