//! Trace ids (bemi-core feature `opentelemetry`): an axum app traced through `tracing` and
//! `tracing-opentelemetry` into a real OpenTelemetry SDK tracer provider; each stored change's
//! `trace_id` / `span_id` are those of the spans its request exported, continuing the trace of
//! a `traceparent` header when the client sent one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::post;
use bemi_axum::BemiLayer;
use bemi_core::context;
use bemi_sqlx::BemiPool;
use bemi_tests::poll::wait_until;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestResult, ctx, todo_db};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

const REQUESTS: usize = 40;

/// Reads W3C trace context from request headers.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The request's span, child of the caller's trace when it sent one.
async fn request_span(request: Request, next: Next) -> Response {
    let user = request
        .headers()
        .get("x-user-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracing::info_span!("request", user_id = %user);
    let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
    let _ = span.set_parent(parent);
    next.run(request).instrument(span).await
}

async fn create_todo(State(pool): State<BemiPool>, task: String) -> StatusCode {
    let insert = async {
        sqlx::query("INSERT INTO todo (task) VALUES ($1)")
            .bind(task)
            .execute(&pool)
            .await
    };
    match insert.instrument(tracing::info_span!("insert_todo")).await {
        Ok(_) => StatusCode::CREATED,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn trace_id_of(request: usize) -> String {
    format!("{:032x}", 0xb3_u128 << 64 | request as u128)
}

async fn a_changes_trace_id_is_the_one_its_request_exported(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "trace_ids").await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();

    // The app runs on a thread of its own, whose default subscriber exports to the provider.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tracer = provider.tracer("bemi-e2e");
    let url = db.url.clone();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        let _default = tracing::subscriber::set_default(subscriber);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let pool = BemiPool::connect(&url).await?;
            let app = Router::new()
                .route("/todo", post(create_todo))
                .with_state(pool)
                .layer(BemiLayer::new(|req: &Request<Body>| {
                    json!({"user_id": req.headers().get("x-user-id").and_then(|v| v.to_str().ok())})
                }))
                .layer(axum::middleware::from_fn(request_span));
            axum::serve(tokio::net::TcpListener::from_std(listener)?, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await?;
            anyhow::Ok(())
        })
    });

    let client = reqwest::Client::new();
    let sends = (0..REQUESTS).map(|n| {
        let mut request = client
            .post(format!("http://{address}/todo"))
            .header("x-user-id", format!("user-{n}"))
            .body(format!("task {n}"));
        if n.is_multiple_of(2) {
            request = request.header(
                "traceparent",
                format!("00-{}-{:016x}-01", trace_id_of(n), n + 1),
            );
        }
        async move { request.send().await?.error_for_status() }
    });
    for response in futures_util::future::join_all(sends).await {
        response?;
    }
    // A write with a context but outside any span gets no ids.
    context::scope(
        ctx(json!({"user_id": "no span"})),
        sqlx::query("INSERT INTO todo (task) VALUES ('untraced')").execute(&db.bemi_pool()),
    )
    .await?;

    let changes = wait_for_changes(&db, REQUESTS + 1).await?;
    worker.stop().await?;
    let spans = wait_until(
        "every request's spans to be exported",
        Duration::from_secs(30),
        || async {
            let spans = exporter.get_finished_spans()?;
            Ok((spans.len() >= 2 * REQUESTS).then_some(spans))
        },
    )
    .await?;
    let _ = stop.send(());
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the app's thread panicked"))??;

    let request_of_user: HashMap<String, &SpanData> = spans
        .iter()
        .filter(|span| span.name == "request")
        .filter_map(|span| {
            let user = span
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "user_id")?;
            Some((user.value.as_str().into_owned(), span))
        })
        .collect();
    ensure!(request_of_user.len() == REQUESTS, "{spans:#?}");
    for change in &changes {
        let user = change.context["user_id"].as_str().unwrap_or_default();
        if user == "no span" {
            ensure!(change.context.get("trace_id").is_none(), "{change:?}");
            continue;
        }
        let request = request_of_user
            .get(user)
            .with_context(|| format!("no request span for {user}"))?;
        let insert = spans
            .iter()
            .find(|span| {
                span.name == "insert_todo" && span.parent_span_id == request.span_context.span_id()
            })
            .with_context(|| format!("no insert span under {user}'s request"))?;
        let trace_id = request.span_context.trace_id().to_string();
        ensure!(
            change.context["trace_id"] == trace_id.as_str()
                && change.context["span_id"] == insert.span_context.span_id().to_string().as_str(),
            "{user}: stored {} / {}, exported {trace_id} / {}",
            change.context["trace_id"],
            change.context["span_id"],
            insert.span_context.span_id()
        );
        let n: usize = user.trim_start_matches("user-").parse()?;
        if n.is_multiple_of(2) {
            ensure!(
                trace_id == trace_id_of(n),
                "{user} did not continue the caller's trace"
            );
        }
    }
    provider.shutdown()?;
    Ok(())
}
e2e_test!(a_changes_trace_id_is_the_one_its_request_exported);
