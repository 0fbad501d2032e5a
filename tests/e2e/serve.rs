//! Serving apps for the tests: one helper per framework (axum, actix-web, poem, salvo, Rocket,
//! tonic) that serves an app on 127.0.0.1 over real TCP until it is stopped or dropped; and for
//! the framework tests an HTTP client, a status check, and the task of a todo row in the WAL (grouped
//! by `bemi_tests::wal::transactions`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use actix_web::dev::ServiceRequest;
use anyhow::{Context as _, ensure};
use bemi_tests::wal::Txn;
use bemi_tokio_postgres::BemiClient;
use serde_json::Value;

/// An app listening on 127.0.0.1 (a free port), whatever its framework; stopped by
/// [`Served::stop`] (or, less gracefully, on drop).
pub(crate) struct Served {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    stop: Stop,
}

enum Stop {
    /// A server running as a tokio task (axum, poem, salvo, Rocket, tonic): aborted.
    Task(tokio::task::AbortHandle),
    /// An actix server (its own worker threads): stopped through its handle.
    Actix(actix_web::dev::ServerHandle),
}

impl Served {
    /// An app whose server runs as `task`, listening on `addr`.
    fn task<T: Send + 'static>(addr: SocketAddr, task: tokio::task::JoinHandle<T>) -> Self {
        Self {
            base: format!("http://{addr}"),
            stop: Stop::Task(task.abort_handle()),
        }
    }

    /// `base` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server.
    pub(crate) async fn stop(self) {
        match &self.stop {
            Stop::Task(task) => task.abort(),
            Stop::Actix(handle) => handle.stop(false).await,
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        match &self.stop {
            Stop::Task(task) => task.abort(),
            // The stop command is sent when `stop` is called; the future only waits for it.
            Stop::Actix(handle) => drop(handle.stop(false)),
        }
    }
}

/// A listener on 127.0.0.1, on a free port.
pub(crate) async fn loopback_listener() -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves an axum router on 127.0.0.1 (a free port). Handlers may extract the client's address
/// (`ConnectInfo<SocketAddr>`).
pub(crate) async fn axum(router: axum::Router) -> anyhow::Result<Served> {
    let (listener, _) = loopback_listener().await?;
    axum_on(listener, router)
}

/// [`axum`], as the base URL (`http://127.0.0.1:PORT`) and the server that stops on drop.
pub(crate) async fn axum_base(router: axum::Router) -> anyhow::Result<(String, Served)> {
    let served = axum(router).await?;
    Ok((served.base.clone(), served))
}

/// Serves an axum router on a listener the test bound itself (to know the port beforehand).
pub(crate) fn axum_on(
    listener: tokio::net::TcpListener,
    router: axum::Router,
) -> anyhow::Result<Served> {
    let addr = listener.local_addr()?;
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move { axum::serve(listener, service).await });
    Ok(Served::task(addr, task))
}

/// Serves a poem endpoint on 127.0.0.1 (a free port).
pub(crate) async fn poem(app: impl poem::Endpoint + 'static) -> anyhow::Result<Served> {
    let (listener, addr) = loopback_listener().await?;
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener)?;
    let task = tokio::spawn(async move {
        if let Err(error) = poem::Server::new_with_acceptor(acceptor).run(app).await {
            eprintln!("the poem server stopped: {error}");
        }
    });
    Ok(Served::task(addr, task))
}

/// Serves a salvo router on 127.0.0.1 (a free port), over HTTP/1.
pub(crate) async fn salvo(router: salvo::Router) -> anyhow::Result<Served> {
    let (listener, addr) = loopback_listener().await?;
    let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(listener)?;
    let task = tokio::spawn(salvo::Server::new(acceptor).serve(router));
    Ok(Served::task(addr, task))
}

/// How long Rocket may take to bind its listener.
const ROCKET_LIFTOFF_DEADLINE: Duration = Duration::from_secs(60);

/// Launches a Rocket app on 127.0.0.1 (a free port): `rocket` is built by the test from
/// [`rocket_config`], so that it listens on loopback, logs nothing and leaves the test process's
/// signals alone.
pub(crate) async fn rocket(rocket: rocket::Rocket<rocket::Build>) -> anyhow::Result<Served> {
    use rocket::fairing::AdHoc;

    let (bound, port) = tokio::sync::oneshot::channel();
    let bound = std::sync::Mutex::new(Some(bound));
    // Rocket writes the port it bound into its configuration, read at liftoff.
    let rocket = rocket.attach(AdHoc::on_liftoff("port", move |rocket| {
        let port = rocket.config().port;
        if let Some(bound) = bound.lock().ok().and_then(|mut bound| bound.take()) {
            let _ = bound.send(port);
        }
        Box::pin(async {})
    }));
    let task = tokio::spawn(async move {
        if let Err(error) = rocket.launch().await {
            eprintln!("the Rocket server stopped: {error}");
        }
    });
    let port = tokio::time::timeout(ROCKET_LIFTOFF_DEADLINE, port)
        .await
        .context("Rocket did not lift off in time")?
        .context("Rocket stopped before liftoff")?;
    Ok(Served::task(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        task,
    ))
}

/// Rocket's configuration for [`rocket`]: 127.0.0.1, a free port, no logs, no signal handlers.
pub(crate) fn rocket_config() -> rocket::Config {
    rocket::Config {
        address: Ipv4Addr::LOCALHOST.into(),
        port: 0,
        log_level: rocket::config::LogLevel::Off,
        // The test process's signals are not Rocket's.
        shutdown: rocket::config::Shutdown {
            ctrlc: false,
            signals: Default::default(),
            ..Default::default()
        },
        ..rocket::Config::debug_default()
    }
}

/// Serves a tonic server on 127.0.0.1 (a free port): `serve` is the router's
/// `serve_with_incoming`, given the listener's connections.
pub(crate) async fn tonic<F, Fut>(serve: F) -> anyhow::Result<Served>
where
    F: FnOnce(tonic::transport::server::TcpIncoming) -> Fut,
    Fut: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
{
    let (listener, addr) = loopback_listener().await?;
    let task = tokio::spawn(serve(tonic::transport::server::TcpIncoming::from(listener)));
    Ok(Served::task(addr, task))
}

/// Serves the actix todo app (its real middleware and routes) on 127.0.0.1 (a free port).
pub(crate) async fn actix_todo(client: BemiClient) -> anyhow::Result<Served> {
    let (listener, addr) = loopback_listener().await?;
    let server = bemi_examples::actix_app::server(client, listener.into_std()?, 2)?;
    actix(server, addr)
}

/// Serves an actix app of one `POST path` route on 127.0.0.1 (a free port), with one worker:
/// bemi's middleware with the examples' request context, and `client` as app data
/// (`web::Data<BemiClient>`).
pub(crate) async fn actix_post<F, Args>(
    client: BemiClient,
    path: &'static str,
    handler: F,
) -> anyhow::Result<Served>
where
    F: actix_web::Handler<Args> + Send,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    let client = actix_web::web::Data::new(client);
    let (listener, addr) = loopback_listener().await?;
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(client.clone())
            .wrap(bemi_actix::Bemi::new(|req: &ServiceRequest| {
                bemi_examples::request_context::for_actix(req)
            }))
            .route(path, actix_web::web::post().to(handler.clone()))
    })
    .workers(1)
    .disable_signals()
    .listen(listener.into_std()?)?
    .run();
    actix(server, addr)
}

/// Serves an actix server whose listener is bound to `addr`.
pub(crate) fn actix(server: actix_web::dev::Server, addr: SocketAddr) -> anyhow::Result<Served> {
    let handle = server.handle();
    tokio::spawn(server);
    Ok(Served {
        base: format!("http://{addr}"),
        stop: Stop::Actix(handle),
    })
}

/// An HTTP client with a deadline for every request.
pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// Fails, with the status and the body, unless `response` has the status `expected`.
pub(crate) async fn ensure_status(
    response: reqwest::Response,
    expected: reqwest::StatusCode,
) -> anyhow::Result<()> {
    let status = response.status();
    ensure!(status == expected, "{status}: {}", response.text().await?);
    Ok(())
}

/// Each transaction holds one `todo` row with the expected task and exactly the expected
/// `_bemi` message, in order (`txns` beyond `expected` are not looked at).
pub(crate) fn ensure_task_and_context_each(
    txns: &[Txn],
    expected: impl IntoIterator<Item = (&'static str, Value)>,
) -> anyhow::Result<()> {
    for (txn, (task, context)) in txns.iter().zip(expected) {
        ensure!(
            txn.rows.len() == 1 && task_of(&txn.rows[0].1)? == task,
            "expected the row {task}: {txn:?}"
        );
        ensure!(
            txn.messages == [context.clone()],
            "{task}: expected {context}, got {:?}",
            txn.messages
        );
    }
    Ok(())
}

pub(crate) use bemi_tests::wal::todo_task as task_of;
