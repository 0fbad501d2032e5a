//! `--metrics-addr`: the Prometheus metrics of `bemi worker`, `bemi dev` and `bemi store` over
//! HTTP (any path, `GET` only). Only the binary serves them: the libraries render them
//! (`WorkerMetrics::render`, `StoreMetrics::render`, `NatsSinkMetrics::render`) for a process
//! that embeds them to serve its own way.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Listens on `addr` (before the worker starts, so that a taken address stops the command).
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("could not serve metrics on {addr}"))
}

/// Serves what `render` gives on `listener` until `shutdown`.
pub(crate) fn spawn(
    listener: TcpListener,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics");
    }
    let router = axum::Router::new().fallback(move |method: Method| {
        let render = render.clone();
        async move {
            if method == Method::GET {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, CONTENT_TYPE)],
                    render(),
                )
                    .into_response()
            } else {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    [(header::CONTENT_TYPE, CONTENT_TYPE)],
                    "GET only\n".to_owned(),
                )
                    .into_response()
            }
        }
    });
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    });
}
