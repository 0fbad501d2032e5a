//! Keep-alive: over one HTTP/1.1 connection, user A writes (and enriches its context), then
//! user B writes, then a request without `x-user-id` writes. Each write's message carries only
//! its own request's context, through the axum layer and the actix middleware alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::routing::post;
use bemi_core::context;
use bemi_sqlx::BemiPool;
use bemi_tests::{TestCluster, TestResult, WalSlot};
use bemi_tokio_postgres::BemiClient;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::serve::{self, Served};

const INSERT: &str = "INSERT INTO todo (task) VALUES ($1)";

/// A request body `{"task": …, "merge": {…}}`: the task to insert, and fields the handler
/// merges into the context first.
fn parse(body: Value) -> Result<String, String> {
    let task = body["task"].as_str().ok_or("no task")?.to_owned();
    let fields = body
        .get("merge")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if !fields.is_empty() {
        context::merge(fields).map_err(|error| error.to_string())?;
    }
    Ok(task)
}

/// `POST /todo`: merges, inserts, answers with the client's address.
async fn axum_create(
    State(pool): State<BemiPool>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Json(body): axum::Json<Value>,
) -> Result<String, String> {
    let task = parse(body)?;
    sqlx::query(INSERT)
        .bind(task)
        .execute(&pool)
        .await
        .map_err(|error| error.to_string())?;
    Ok(peer.to_string())
}

/// `POST /todo`: merges, inserts, answers with the client's address.
async fn actix_create(
    request: actix_web::HttpRequest,
    client: actix_web::web::Data<BemiClient>,
    body: actix_web::web::Json<Value>,
) -> actix_web::Result<String> {
    let task = parse(body.into_inner()).map_err(actix_web::error::ErrorInternalServerError)?;
    client
        .execute(INSERT, &[&task])
        .await
        .map_err(actix_web::error::ErrorInternalServerError)?;
    let peer = request.peer_addr().context("no peer address");
    Ok(peer
        .map_err(actix_web::error::ErrorInternalServerError)?
        .to_string())
}

/// One HTTP/1.1 keep-alive connection, written by hand: a pooling client (reqwest) may open a
/// second connection when the next request is sent before the first connection is back in its
/// pool, and this test is about requests that share one.
struct OneConnection {
    stream: BufReader<TcpStream>,
    host: String,
}

impl OneConnection {
    async fn open(server: &Served) -> anyhow::Result<Self> {
        let host = server
            .base
            .strip_prefix("http://")
            .context("an http:// server")?
            .to_owned();
        let stream = TcpStream::connect(&host).await?;
        Ok(Self {
            stream: BufReader::new(stream),
            host,
        })
    }

    /// `POST path` with a JSON body (and `x-user-id` if given); the status and the body.
    async fn post(
        &mut self,
        path: &str,
        user: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<(u16, String)> {
        tokio::time::timeout(Duration::from_secs(60), self.exchange(path, user, body))
            .await
            .context("no answer within 60 s")?
    }

    async fn exchange(
        &mut self,
        path: &str,
        user: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<(u16, String)> {
        let body = body.to_string();
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n",
            self.host,
            body.len()
        );
        if let Some(user) = user {
            request.push_str(&format!("x-user-id: {user}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        self.stream.get_mut().write_all(request.as_bytes()).await?;

        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("status line {line:?}"))?;
        let mut length = None;
        for _ in 0..100 {
            line.clear();
            self.stream.read_line(&mut line).await?;
            if line == "\r\n" {
                let length = length.context("no content-length in the answer")?;
                let mut body = vec![0; length];
                self.stream.read_exact(&mut body).await?;
                return Ok((status, String::from_utf8(body)?));
            }
            let (name, value) = line.split_once(':').context("header line")?;
            let (name, value) = (name.to_ascii_lowercase(), value.trim());
            ensure!(
                !(name == "connection" && value.eq_ignore_ascii_case("close")),
                "the server closes the connection"
            );
            if name == "content-length" {
                length = Some(value.parse::<usize>()?);
            }
        }
        anyhow::bail!("more than 100 header lines")
    }
}

/// The three requests over one connection; every answer names the same client address.
async fn three_requests_over_one_connection(server: &Served) -> anyhow::Result<()> {
    let mut connection = OneConnection::open(server).await?;
    let requests = [
        (
            Some("1001"),
            json!({"task": "A", "merge": {"role": "admin"}}),
        ),
        (Some("1002"), json!({"task": "B"})),
        (None, json!({"task": "anonymous"})),
    ];
    let mut peers = Vec::new();
    for (user, body) in requests {
        let (status, text) = connection.post("/todo", user, &body).await?;
        ensure!(status == 200, "{body}: {status} {text}");
        peers.push(text);
    }
    ensure!(
        peers.iter().all(|peer| *peer == peers[0]),
        "the server saw more than one connection: {peers:?}"
    );
    Ok(())
}

/// Each message has exactly its own request's context, in order.
async fn assert_own_contexts(slot: &WalSlot) -> anyhow::Result<()> {
    let txns = slot.read_transactions().await?;
    let expected = [
        (
            "A",
            json!({"user_id": 1001, "endpoint": "/todo", "method": "POST", "role": "admin", "SQL": INSERT}),
        ),
        (
            "B",
            json!({"user_id": 1002, "endpoint": "/todo", "method": "POST", "SQL": INSERT}),
        ),
        (
            "anonymous",
            json!({"endpoint": "/todo", "method": "POST", "SQL": INSERT}),
        ),
    ];
    ensure!(
        txns.len() == expected.len(),
        "{} writes: {txns:#?}",
        txns.len()
    );
    serve::ensure_task_and_context_each(&txns, expected)
}

async fn axum_keep_alive_requests_keep_their_own_context(cluster: Arc<TestCluster>) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "axum_keep_alive").await?;
    let slot = db.wal_slot().await?;
    let app = axum::Router::new()
        .route("/todo", post(axum_create))
        .with_state(db.bemi_pool())
        .layer(bemi_axum::BemiLayer::new(
            bemi_examples::request_context::for_http::<Body>,
        ));
    let server = serve::axum(app).await?;
    three_requests_over_one_connection(&server).await?;
    server.stop().await;
    assert_own_contexts(&slot).await
}
e2e_test!(axum_keep_alive_requests_keep_their_own_context);

async fn actix_keep_alive_requests_keep_their_own_context(cluster: Arc<TestCluster>) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "actix_keep_alive").await?;
    let slot = db.wal_slot().await?;
    let client = BemiClient::new(db.tokio_postgres().await?);
    let server = serve::actix_post(client, "/todo", actix_create).await?;
    three_requests_over_one_connection(&server).await?;
    server.stop().await;
    assert_own_contexts(&slot).await
}
e2e_test!(actix_keep_alive_requests_keep_their_own_context);
