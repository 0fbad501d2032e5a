//! Support for the framework tests: the todo apps (and the tests' own apps) served on 127.0.0.1
//! over real TCP, an HTTP client, a status check, and the task of a todo row in the WAL (grouped
//! by `bemi_tests::wal::transactions`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use actix_web::dev::ServiceRequest;
use anyhow::{Context as _, ensure};
use bemi_tests::wal::Txn;
use bemi_tokio_postgres::BemiClient;
use serde_json::Value;

/// An app listening on 127.0.0.1; stopped by [`Served::stop`] (or, less gracefully, on drop).
pub(crate) struct Served {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    stop: Stop,
}

enum Stop {
    Axum(tokio::task::JoinHandle<std::io::Result<()>>),
    Actix(actix_web::dev::ServerHandle),
}

impl Served {
    /// `base` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server.
    pub(crate) async fn stop(self) {
        match &self.stop {
            Stop::Axum(task) => task.abort(),
            Stop::Actix(handle) => handle.stop(false).await,
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        match &self.stop {
            Stop::Axum(task) => task.abort(),
            // The stop command is sent when `stop` is called; the future only waits for it.
            Stop::Actix(handle) => drop(handle.stop(false)),
        }
    }
}

async fn loopback_listener() -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves an axum router on 127.0.0.1 (a free port). Handlers may extract the client's address
/// (`ConnectInfo<SocketAddr>`).
pub(crate) async fn axum(router: axum::Router) -> anyhow::Result<Served> {
    let (listener, addr) = loopback_listener().await?;
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move { axum::serve(listener, service).await });
    Ok(Served {
        base: format!("http://{addr}"),
        stop: Stop::Axum(task),
    })
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

/// The `task` column of a test_decoding row of `todo`.
pub(crate) fn task_of(data: &str) -> anyhow::Result<String> {
    let (_, rest) = data
        .split_once("task[text]:'")
        .with_context(|| format!("no task in {data}"))?;
    // test_decoding doubles quotes inside text values.
    let mut task = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                task.push('\'');
            } else {
                return Ok(task);
            }
        } else {
            task.push(c);
        }
    }
    anyhow::bail!("unterminated task in {data}")
}
