//! tonic: `bemi_axum::BemiLayer` on a real gRPC server (HTTP/2, tonic's router) — the method
//! path and the caller's metadata become the context of every write a call makes, for unary
//! calls and for server-streaming calls whose stream writes while it is sent (with
//! `in_current_context`; without it, as the last method shows, those writes have no context).
//!
//! The service is written by hand over `tonic::server::Grpc` with prost messages, as the code
//! `tonic-build` generates would be: no `protoc` needed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::ensure;
use bemi_axum::BemiLayer;
use bemi_core::context::{self, ContextExt as _};
use bemi_sqlx::BemiPool;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestResult, todo_db};
use futures_util::{Stream, StreamExt as _};
use http::uri::PathAndQuery;
use serde_json::{Value, json};
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::serve;

const CLIENTS: usize = 200;
const STREAMED: u32 = 3;
const CREATE: &str = "/bemi.test.Todos/Create";
const CREATE_MANY: &str = "/bemi.test.Todos/CreateMany";
const CREATE_MANY_UNSCOPED: &str = "/bemi.test.Todos/CreateManyUnscoped";

#[derive(Clone, PartialEq, prost::Message)]
struct NewTodos {
    #[prost(string, tag = "1")]
    task: String,
    #[prost(uint32, tag = "2")]
    count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Created {
    #[prost(string, tag = "1")]
    task: String,
    /// The context the server saw, as JSON.
    #[prost(string, tag = "2")]
    context: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;
type CreatedStream = Pin<Box<dyn Stream<Item = Result<Created, Status>> + Send>>;

async fn insert(pool: &BemiPool, task: String) -> Result<Created, Status> {
    sqlx::query("INSERT INTO todo (task) VALUES ($1)")
        .bind(&task)
        .execute(pool)
        .await
        .map_err(|error| Status::internal(error.to_string()))?;
    let context = context::current().map_or(Value::Null, Value::Object);
    Ok(Created {
        task,
        context: context.to_string(),
    })
}

#[derive(Clone)]
struct Todos {
    pool: BemiPool,
}

impl NamedService for Todos {
    const NAME: &'static str = "bemi.test.Todos";
}

struct Create(BemiPool);

impl UnaryService<NewTodos> for Create {
    type Response = Created;
    type Future = BoxFuture<Response<Created>>;

    fn call(&mut self, request: Request<NewTodos>) -> Self::Future {
        let pool = self.0.clone();
        Box::pin(async move {
            Ok(Response::new(
                insert(&pool, request.into_inner().task).await?,
            ))
        })
    }
}

/// Writes one row per streamed message, while the stream is polled by the server — after the
/// handler (and the layer's future) returned.
struct CreateMany {
    pool: BemiPool,
    carry_context: bool,
}

impl ServerStreamingService<NewTodos> for CreateMany {
    type Response = Created;
    type ResponseStream = CreatedStream;
    type Future = BoxFuture<Response<CreatedStream>>;

    fn call(&mut self, request: Request<NewTodos>) -> Self::Future {
        let (pool, carry_context) = (self.pool.clone(), self.carry_context);
        Box::pin(async move {
            let NewTodos { task, count } = request.into_inner();
            let writes = futures_util::stream::iter(0..count).then(move |n| {
                let pool = pool.clone();
                let task = format!("{task} {n}");
                async move { insert(&pool, task).await }
            });
            let stream: CreatedStream = if carry_context {
                Box::pin(writes.in_current_context())
            } else {
                Box::pin(writes)
            };
            Ok(Response::new(stream))
        })
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Todos {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move {
            let codec = ProstCodec::<Created, NewTodos>::default;
            let streaming = |carry_context| CreateMany {
                pool: pool.clone(),
                carry_context,
            };
            Ok(match request.uri().path() {
                CREATE => {
                    Grpc::new(codec())
                        .unary(Create(pool.clone()), request)
                        .await
                }
                CREATE_MANY => {
                    Grpc::new(codec())
                        .server_streaming(streaming(true), request)
                        .await
                }
                CREATE_MANY_UNSCOPED => {
                    Grpc::new(codec())
                        .server_streaming(streaming(false), request)
                        .await
                }
                path => Status::unimplemented(path.to_owned()).into_http(),
            })
        })
    }
}

/// One client: its own HTTP/2 connection, one call of each method, with its user in metadata.
async fn client(base: &str, n: usize) -> anyhow::Result<Vec<Created>> {
    let channel = tonic::transport::Endpoint::from_shared(base.to_owned())?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let codec = ProstCodec::<NewTodos, Created>::default;
    let request = |task: &str, count| {
        let mut request = Request::new(NewTodos {
            task: format!("user-{n} {task}"),
            count,
        });
        request
            .metadata_mut()
            .insert("x-user-id", format!("user-{n}").parse().expect("ASCII"));
        request
    };
    let mut created = Vec::new();
    grpc.ready().await?;
    let unary = grpc
        .unary(
            request("unary", 1),
            PathAndQuery::from_static(CREATE),
            codec(),
        )
        .await?;
    created.push(unary.into_inner());
    for (method, task) in [(CREATE_MANY, "stream"), (CREATE_MANY_UNSCOPED, "unscoped")] {
        grpc.ready().await?;
        let mut stream = grpc
            .server_streaming(
                request(task, STREAMED),
                PathAndQuery::from_static(method),
                codec(),
            )
            .await?
            .into_inner();
        while let Some(message) = stream.message().await? {
            created.push(message);
        }
    }
    Ok(created)
}

async fn unary_and_streaming_calls_of_200_clients_carry_their_own_context(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "grpc_tonic").await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let layer = BemiLayer::new(|request: &http::Request<tonic::body::Body>| {
        json!({
            "grpc_method": request.uri().path(),
            "user_id": request.headers().get("x-user-id").and_then(|v| v.to_str().ok()),
        })
    });
    let router = tonic::transport::Server::builder()
        .layer(layer)
        .add_service(Todos {
            pool: db.bemi_pool(),
        });
    let server = serve::tonic(|incoming| router.serve_with_incoming(incoming)).await?;

    let calls = (0..CLIENTS).map(|n| client(&server.base, n));
    let replies = futures_util::future::try_join_all(calls).await?;
    server.stop().await;

    // What the handlers saw.
    for (n, replies) in replies.iter().enumerate() {
        ensure!(replies.len() == 1 + 2 * STREAMED as usize, "{replies:?}");
        for reply in &replies[..=STREAMED as usize] {
            let seen: Value = serde_json::from_str(&reply.context)?;
            ensure!(seen["user_id"] == format!("user-{n}"), "{reply:?}");
        }
    }
    // What the audit trail stored: every row with its own call's user and method.
    let expected_rows = CLIENTS * (1 + 2 * STREAMED as usize);
    let changes = wait_for_changes(&db, expected_rows).await?;
    worker.stop().await?;
    ensure!(changes.len() == expected_rows, "{} changes", changes.len());
    let mut per_method: HashMap<&str, usize> = HashMap::new();
    for change in &changes {
        let task = change.after["task"].as_str().unwrap_or_default();
        let (user, kind) = task.split_once(' ').unwrap_or_default();
        let method = match kind.split(' ').next() {
            Some("unary") => CREATE,
            Some("stream") => CREATE_MANY,
            _ => {
                // The stream without `in_current_context`: its writes run outside the call.
                ensure!(change.context == json!({}), "{change:?}");
                *per_method.entry(CREATE_MANY_UNSCOPED).or_default() += 1;
                continue;
            }
        };
        let context = &change.context;
        ensure!(
            context["user_id"] == user && context["grpc_method"] == method,
            "{task}: {context}"
        );
        *per_method.entry(method).or_default() += 1;
    }
    ensure!(
        per_method
            == HashMap::from([
                (CREATE, CLIENTS),
                (CREATE_MANY, CLIENTS * STREAMED as usize),
                (CREATE_MANY_UNSCOPED, CLIENTS * STREAMED as usize),
            ]),
        "{per_method:?}"
    );
    Ok(())
}
e2e_test!(unary_and_streaming_calls_of_200_clients_carry_their_own_context);
