//! A TCP proxy on 127.0.0.1 that the tests (and the chaos runner) put between a client and a
//! server to inject network faults: responses held back, requests cut off after a number of
//! bytes, every connection closed at once.
//!
//! ```no_run
//! # async fn run(database_port: u16) -> anyhow::Result<()> {
//! use bemi_tests::proxy::FaultProxy;
//!
//! let proxy = FaultProxy::start(database_port).await?;
//! // Connect through `proxy.port()`; then, e.g., let requests run but keep their responses.
//! proxy.hold_responses();
//! proxy.release_responses();
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The size of one read from either side.
const CHUNK: usize = 64 * 1024;

/// A proxy from a free port on 127.0.0.1 to `127.0.0.1:upstream`, stopped on drop (with every
/// connection through it).
pub struct FaultProxy {
    port: u16,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

/// What the proxy does to its connections, shared with their tasks.
struct Faults {
    /// While true, the server's bytes are read but not passed on.
    hold_responses: watch::Sender<bool>,
    /// Bytes the server sent while responses were held back.
    held: AtomicUsize,
    /// The most bytes of all clients together passed on to the server; the rest waits until
    /// the limit is raised.
    request_limit: watch::Sender<usize>,
    /// Bytes of all clients passed on to the server so far.
    forwarded: AtomicUsize,
    /// Bumped to close every open connection.
    resets: watch::Sender<u64>,
    /// Milliseconds each chunk waits before it is passed on, either way (0: none).
    latency_ms: AtomicU64,
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:upstream` that passes everything on until told otherwise.
    ///
    /// # Errors
    ///
    /// When no port on 127.0.0.1 can be bound.
    pub async fn start(upstream: u16) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let faults = Arc::new(Faults {
            hold_responses: watch::channel(false).0,
            held: AtomicUsize::new(0),
            request_limit: watch::channel(usize::MAX).0,
            forwarded: AtomicUsize::new(0),
            resets: watch::channel(0).0,
            latency_ms: AtomicU64::new(0),
        });
        let task = tokio::spawn({
            let faults = Arc::clone(&faults);
            async move {
                let mut connections = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    // Finished connections are reaped as new ones come.
                    while connections.try_join_next().is_some() {}
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        continue;
                    };
                    connections.spawn(relay(client, server, Arc::clone(&faults)));
                }
            }
        });
        Ok(Self { port, faults, task })
    }

    /// A proxy in front of the server `url` names by its port on 127.0.0.1, and `url` through
    /// it.
    ///
    /// ```no_run
    /// # async fn run() -> anyhow::Result<()> {
    /// let (proxy, proxied) =
    ///     bemi_tests::proxy::FaultProxy::in_front_of("postgres://u@127.0.0.1:5432/app").await?;
    /// assert_eq!(proxied, format!("postgres://u@127.0.0.1:{}/app", proxy.port()));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// When `url` names no port, or no port on 127.0.0.1 can be bound.
    pub async fn in_front_of(url: &str) -> anyhow::Result<(Self, String)> {
        let authority = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest)
            .split(['/', '?'])
            .next()
            .unwrap_or_default();
        let host_port = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        let port: u16 = host_port
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .with_context(|| format!("no port in {url}"))?;
        let proxy = Self::start(port).await?;
        let proxied = proxy.url_for(url, port)?;
        Ok((proxy, proxied))
    }

    /// The proxy's port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `url` (e.g. `postgres://u:p@127.0.0.1:5432/db` or `nats://127.0.0.1:4222`) with its port
    /// replaced by the proxy's.
    ///
    /// # Errors
    ///
    /// When `url` does not name the upstream port as `:PORT` followed by `/` or its end.
    pub fn url_for(&self, url: &str, upstream: u16) -> anyhow::Result<String> {
        let (from, to) = (format!(":{upstream}"), format!(":{}", self.port));
        let at = url
            .match_indices(&from)
            .map(|(at, _)| at)
            .find(|&at| {
                matches!(
                    url.as_bytes().get(at + from.len()),
                    None | Some(b'/' | b'?')
                )
            })
            .with_context(|| format!("no port {upstream} in {url}"))?;
        let proxied = format!(
            "{}{to}{}",
            url.get(..at).unwrap_or_default(),
            url.get(at + from.len()..).unwrap_or_default()
        );
        ensure!(proxied != url, "no port to replace in {url}");
        Ok(proxied)
    }

    /// Delays every chunk of bytes by `latency` before it is passed on, either way (a slow
    /// network; `Duration::ZERO` ends it). Chunks of one direction stay in order.
    ///
    /// ```no_run
    /// # async fn run(proxy: bemi_tests::proxy::FaultProxy) {
    /// proxy.set_latency(std::time::Duration::from_millis(50));
    /// # }
    /// ```
    pub fn set_latency(&self, latency: Duration) {
        let millis = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.faults.latency_ms.store(millis, Ordering::Release);
    }

    /// Holds the server's responses back from now on (the requests still reach it and run).
    pub fn hold_responses(&self) {
        self.faults.held.store(0, Ordering::Release);
        self.faults.hold_responses.send_replace(true);
    }

    /// Lets the held responses, and the ones after them, through again.
    pub fn release_responses(&self) {
        self.faults.hold_responses.send_replace(false);
    }

    /// Bytes the server sent since [`FaultProxy::hold_responses`] (more than 0: it ran what it
    /// was sent).
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.faults.held.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` until the server has responded to something since
    /// [`FaultProxy::hold_responses`].
    ///
    /// # Errors
    ///
    /// When nothing was held back by then.
    pub async fn responded(&self, timeout: Duration) -> anyhow::Result<()> {
        crate::wait_until("a response held back", timeout, || async {
            Ok((self.held_bytes() > 0).then_some(()))
        })
        .await
    }

    /// Passes at most `bytes` more of the clients' bytes (all connections together) on to the
    /// server, then holds the rest until [`FaultProxy::pass_requests`]: a client cut off in the
    /// middle of what it sends. With [`FaultProxy::hold_responses`] too, a connection lost
    /// without either side closing it.
    pub fn cut_requests_after(&self, bytes: usize) {
        let forwarded = self.faults.forwarded.load(Ordering::Acquire);
        self.faults
            .request_limit
            .send_replace(forwarded.saturating_add(bytes));
    }

    /// Passes the clients' bytes on again, the held ones first.
    pub fn pass_requests(&self) {
        self.faults.request_limit.send_replace(usize::MAX);
    }

    /// Bytes of the clients passed on to the server so far.
    #[must_use]
    pub fn forwarded_bytes(&self) -> usize {
        self.faults.forwarded.load(Ordering::Acquire)
    }

    /// Closes every connection open through the proxy now (new ones are accepted).
    pub fn close_connections(&self) {
        self.faults.resets.send_modify(|resets| *resets += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every relay.
        self.task.abort();
    }
}

/// Relays one connection both ways under `faults` until both sides are done or it is closed.
impl Faults {
    /// Waits out the latency set, if any.
    async fn delay(&self) {
        let millis = self.latency_ms.load(Ordering::Acquire);
        if millis > 0 {
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
    }
}

async fn relay(client: TcpStream, server: TcpStream, faults: Arc<Faults>) {
    let mut reset = faults.resets.subscribe();
    let (from_client, to_client) = client.into_split();
    let (from_server, to_server) = server.into_split();
    let both_ways = async {
        tokio::join!(
            requests(from_client, to_server, &faults),
            responses(from_server, to_client, &faults)
        )
    };
    tokio::select! {
        _ = both_ways => {}
        _ = reset.changed() => {}
    }
}

/// Client to server, up to the request limit.
async fn requests(
    mut from_client: tokio::net::tcp::OwnedReadHalf,
    mut to_server: tokio::net::tcp::OwnedWriteHalf,
    faults: &Faults,
) {
    let mut limit = faults.request_limit.subscribe();
    let mut buffer = vec![0; CHUNK];
    loop {
        let left = limit
            .borrow_and_update()
            .saturating_sub(faults.forwarded.load(Ordering::Acquire));
        if left == 0 {
            // Cut off: the connection stays open, nothing more gets through until the limit
            // is raised.
            if limit.changed().await.is_err() {
                break;
            }
            continue;
        }
        let read = match from_client.read(&mut buffer[..left.min(CHUNK)]).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        faults.forwarded.fetch_add(read, Ordering::AcqRel);
        faults.delay().await;
        if to_server.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to_server.shutdown().await;
}

/// Server to client, held back while asked to.
async fn responses(
    mut from_server: tokio::net::tcp::OwnedReadHalf,
    mut to_client: tokio::net::tcp::OwnedWriteHalf,
    faults: &Faults,
) {
    let mut holding = faults.hold_responses.subscribe();
    let mut buffer = vec![0; CHUNK];
    loop {
        let read = match from_server.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                // A server that closed while responses are held: the client learns it only
                // when they are let through (as over a lost connection).
                let _ = holding.wait_for(|hold| !hold).await;
                break;
            }
            Ok(read) => read,
        };
        if *holding.borrow_and_update() {
            faults.held.fetch_add(read, Ordering::AcqRel);
        }
        let released = holding.wait_for(|hold| !hold).await.is_ok();
        faults.delay().await;
        if !released || to_client.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to_client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::FaultProxy;

    /// A round trip through the proxy with latency set takes at least the latency both ways,
    /// and the bytes arrive unchanged.
    #[tokio::test]
    async fn latency_delays_each_way() -> anyhow::Result<()> {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let upstream = echo.local_addr()?.port();
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = echo.accept().await {
                let mut buffer = [0; 5];
                if socket.read_exact(&mut buffer).await.is_ok() {
                    let _ = socket.write_all(&buffer).await;
                }
            }
        });
        let proxy = FaultProxy::start(upstream).await?;
        proxy.set_latency(Duration::from_millis(150));
        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port())).await?;
        let started = Instant::now();
        client.write_all(b"hello").await?;
        let mut answer = [0; 5];
        client.read_exact(&mut answer).await?;
        assert_eq!(&answer, b"hello");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        Ok(())
    }

    #[tokio::test]
    async fn in_front_of_a_url_it_replaces_the_port_only() -> anyhow::Result<()> {
        let (proxy, proxied) =
            FaultProxy::in_front_of("postgres://u:p%40ss@127.0.0.1:5999/app?sslmode=disable")
                .await?;
        assert_eq!(
            proxied,
            format!(
                "postgres://u:p%40ss@127.0.0.1:{}/app?sslmode=disable",
                proxy.port()
            )
        );
        let (proxy, proxied) = FaultProxy::in_front_of("nats://127.0.0.1:4999").await?;
        assert_eq!(proxied, format!("nats://127.0.0.1:{}", proxy.port()));
        assert!(
            FaultProxy::in_front_of("postgres://u@db/app")
                .await
                .is_err()
        );
        Ok(())
    }
}
