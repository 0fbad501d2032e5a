//! poem, salvo and Rocket over real HTTP on 127.0.0.1, writing to a real PostgreSQL: 1 000
//! concurrent requests with distinct `x-user-id` through each framework's bemi integration, every
//! write's `_bemi` message read back from the WAL. And what salvo's `tower-compat` adapter does with
//! `bemi_axum::BemiLayer`, next to the native hoop, on salvo 1.1.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_core::context;
use bemi_examples::request_context::{USER_HEADER, from_parts};
use bemi_sqlx::BemiPool;
use bemi_tests::{TestCluster, TestResult, WalSlot};
use bemi_tokio_postgres::BemiClient;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::open_files;
use crate::serve::{self, Served};

/// The write of every request (one row, its id back).
const INSERT: &str = "INSERT INTO todo (task) VALUES ($1) RETURNING id";
/// How many requests in a burst; each is its own user.
const REQUESTS: i64 = 1000;
/// The whole burst must be answered within this time.
const BURST_DEADLINE: Duration = Duration::from_secs(180);
/// Open files a burst needs: both ends of every connection, plus room for the database
/// connections, the cluster and the tests that run at the same time.
const OPEN_FILES: libc::rlim_t = 2 * REQUESTS as libc::rlim_t + 512;

/// The task of a request body `{"task": "…"}`.
fn task_of_body(body: &Value) -> Option<String> {
    body["task"].as_str().map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------
// poem: `bemi_poem::Bemi` on the route, the handler writes through `BemiPool` (sqlx).

/// `POST /todo {"task": …}`: enriches the context, inserts, answers 201 with the id.
#[poem::handler]
async fn poem_create(
    pool: poem::web::Data<&BemiPool>,
    poem::web::Json(body): poem::web::Json<Value>,
) -> poem::Result<(StatusCode, String)> {
    let bad_request = |error: String| poem::Error::from_string(error, StatusCode::BAD_REQUEST);
    let task = task_of_body(&body).ok_or_else(|| bad_request("no task".to_owned()))?;
    // A merge in the handler is seen by the write that follows.
    context::merge(json!({"framework": "poem"})).map_err(|error| bad_request(error.to_string()))?;
    let id: i64 = sqlx::query_scalar(INSERT)
        .bind(task)
        .fetch_one(*pool)
        .await
        .map_err(poem::error::InternalServerError)?;
    Ok((StatusCode::CREATED, id.to_string()))
}

async fn serve_poem(pool: BemiPool) -> anyhow::Result<Served> {
    use poem::EndpointExt as _;

    let app = poem::Route::new()
        .at("/todo", poem::post(poem_create))
        .with(bemi_poem::Bemi::new(|req: &poem::Request| {
            from_parts(
                req.uri().path(),
                req.method().as_str(),
                req.header(USER_HEADER),
            )
        }))
        .data(pool);
    serve::poem(app).await
}

// ---------------------------------------------------------------------------------------------
// salvo: `bemi_salvo::Bemi` as a hoop (and, for comparison, `bemi_axum::BemiLayer` through
// salvo's `tower-compat`), the goal writes through `BemiClient` (tokio-postgres).

/// `POST …/todo {"task": …}`: enriches the context, inserts, answers 201 with the id.
struct SalvoCreate(Arc<BemiClient>);

#[salvo::async_trait]
impl salvo::Handler for SalvoCreate {
    async fn handle(
        &self,
        req: &mut salvo::Request,
        _depot: &mut salvo::Depot,
        res: &mut salvo::Response,
        _ctrl: &mut salvo::FlowCtrl,
    ) {
        let outcome = async {
            let body: Value = req.parse_json().await.context("a JSON body")?;
            let task = task_of_body(&body).context("no task")?;
            // A merge in the handler is seen by the write that follows. Without a context in
            // scope it fails: then the write carries none, which the WAL check reports.
            let _ = context::merge(json!({"framework": "salvo"}));
            let row = self.0.query_one(INSERT, &[&task]).await?;
            anyhow::Ok(row.get::<_, i64>(0))
        };
        match outcome.await {
            Ok(id) => {
                res.status_code(StatusCode::CREATED);
                res.render(id.to_string());
            }
            Err(error) => {
                res.status_code(StatusCode::INTERNAL_SERVER_ERROR);
                res.render(format!("{error:#}"));
            }
        }
    }
}

/// The examples' context of a salvo request.
fn salvo_context(req: &salvo::Request) -> Value {
    let user = req.headers().get(USER_HEADER).and_then(|v| v.to_str().ok());
    from_parts(req.uri().path(), req.method().as_str(), user)
}

// ---------------------------------------------------------------------------------------------
// Rocket: the routes' handlers wrapped by `bemi_rocket::with_bemi`, the handler writes through
// `BemiPool` (sqlx).

/// `POST /todo {"task": …}`: enriches the context, inserts, answers 201 with the id.
#[rocket::post("/todo", data = "<body>")]
async fn rocket_create(
    pool: &rocket::State<BemiPool>,
    body: String,
) -> (rocket::http::Status, String) {
    let outcome = async {
        let body: Value = serde_json::from_str(&body)?;
        let task = task_of_body(&body).context("no task")?;
        // A merge in the handler is seen by the write that follows.
        context::merge(json!({"framework": "rocket"}))?;
        let id: i64 = sqlx::query_scalar(INSERT)
            .bind(task)
            .fetch_one(pool.inner())
            .await?;
        anyhow::Ok(id)
    };
    match outcome.await {
        Ok(id) => (rocket::http::Status::Created, id.to_string()),
        Err(error) => (
            rocket::http::Status::InternalServerError,
            format!("{error:#}"),
        ),
    }
}

async fn serve_rocket(pool: BemiPool) -> anyhow::Result<Served> {
    let routes = bemi_rocket::with_bemi(
        rocket::routes![rocket_create],
        |req: &rocket::Request<'_>| {
            from_parts(
                req.uri().path().as_str(),
                req.method().as_str(),
                req.headers().get_one(USER_HEADER),
            )
        },
    );
    serve::rocket(
        rocket::custom(serve::rocket_config())
            .manage(pool)
            .mount("/", routes),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// The burst and the check of the WAL.

/// Sends `POST {base}{path_of(user)} {"task": "load-N"}` as user N, for every user at once, and
/// waits, with a deadline, until every one is answered with 201.
async fn burst(base: &str, path_of: impl Fn(i64) -> &'static str) -> TestResult {
    open_files::ensure_at_least(OPEN_FILES, "the burst of 1 000 concurrent requests")?;
    let http = serve::client()?;
    let mut requests = tokio::task::JoinSet::new();
    for user in 1..=REQUESTS {
        let request = http
            .post(format!("{base}{}", path_of(user)))
            .header(USER_HEADER, user.to_string())
            .json(&json!({"task": format!("load-{user}")}));
        requests.spawn(async move { (user, request.send().await) });
    }
    tokio::time::timeout(BURST_DEADLINE, async {
        while let Some(joined) = requests.join_next().await {
            let (user, response) = joined?;
            let response = response.with_context(|| format!("request of user {user}"))?;
            serve::ensure_status(response, StatusCode::CREATED)
                .await
                .with_context(|| format!("user {user}"))?;
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("{REQUESTS} requests not answered within {BURST_DEADLINE:?}"))?
}

/// What the write of one user's request carried.
#[derive(Debug, Clone, PartialEq)]
enum Carried {
    /// Exactly the expected context (the closure's, the handler's merge and `SQL`).
    Own,
    /// No `_bemi` message at all.
    Nothing,
    /// Something else: another request's context, several messages, a wrong `SQL`.
    Other(Vec<Value>),
}

/// Reads the WAL: every transaction holds one row `load-N`, each N once, 1 ≤ N ≤ REQUESTS; for
/// each N, what its write carried compared with `expected(N)` (plus `SQL`: [`INSERT`]).
async fn carried_by_user(
    slot: &WalSlot,
    expected: impl Fn(i64) -> Value,
) -> anyhow::Result<BTreeMap<i64, Carried>> {
    let mut carried = BTreeMap::new();
    for txn in slot.read_transactions().await? {
        ensure!(txn.rows.len() == 1, "one row per request: {txn:?}");
        let task = serve::task_of(&txn.rows[0].1)?;
        let user: i64 = task
            .strip_prefix("load-")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("task {task}"))?;
        let mut own = expected(user);
        own["SQL"] = json!(INSERT);
        let outcome = match txn.messages.as_slice() {
            [] => Carried::Nothing,
            [message] if *message == own => Carried::Own,
            messages => Carried::Other(messages.to_vec()),
        };
        ensure!(
            carried.insert(user, outcome).is_none(),
            "user {user} wrote twice"
        );
    }
    ensure!(
        carried.len() as i64 == REQUESTS
            && carried.keys().all(|user| (1..=REQUESTS).contains(user)),
        "{} of {REQUESTS} writes: {:?}",
        carried.len(),
        carried.keys().collect::<Vec<_>>()
    );
    Ok(carried)
}

/// Fails unless every user's write carried exactly its own context.
fn ensure_all_own(carried: &BTreeMap<i64, Carried>) -> TestResult {
    let wrong: Vec<_> = carried
        .iter()
        .filter(|(_, outcome)| **outcome != Carried::Own)
        .take(5)
        .collect();
    ensure!(
        wrong.is_empty(),
        "writes without their own context, e.g. {wrong:?}"
    );
    Ok(())
}

/// The context the examples' closure makes for user N's `POST path`, with a framework's merge.
fn expected_context(path: &str, user: i64, framework: &str) -> Value {
    let mut context = from_parts(path, "POST", Some(&user.to_string()));
    context["framework"] = json!(framework);
    context
}

// ---------------------------------------------------------------------------------------------
// The tests.

async fn poem_app_keeps_1000_concurrent_contexts_apart(cluster: Arc<TestCluster>) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "poem_load").await?;
    let slot = db.wal_slot().await?;
    let server = serve_poem(db.bemi_pool()).await?;
    burst(&server.base, |_| "/todo").await?;
    drop(server);
    let carried = carried_by_user(&slot, |user| expected_context("/todo", user, "poem")).await?;
    ensure_all_own(&carried)
}
e2e_test!(poem_app_keeps_1000_concurrent_contexts_apart);

async fn salvo_app_keeps_1000_concurrent_contexts_apart(cluster: Arc<TestCluster>) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "salvo_load").await?;
    let slot = db.wal_slot().await?;
    let client = Arc::new(BemiClient::new(db.tokio_postgres().await?));
    let router = salvo::Router::new()
        .hoop(bemi_salvo::Bemi::new(salvo_context))
        .push(salvo::Router::with_path("todo").post(SalvoCreate(client)));
    let server = serve::salvo(router).await?;
    burst(&server.base, |_| "/todo").await?;
    drop(server);
    let carried = carried_by_user(&slot, |user| expected_context("/todo", user, "salvo")).await?;
    ensure_all_own(&carried)
}
e2e_test!(salvo_app_keeps_1000_concurrent_contexts_apart);

async fn rocket_app_keeps_1000_concurrent_contexts_apart(cluster: Arc<TestCluster>) -> TestResult {
    let db = bemi_tests::todo_db(&cluster, "rocket_load").await?;
    let slot = db.wal_slot().await?;
    let server = serve_rocket(db.bemi_pool()).await?;
    burst(&server.base, |_| "/todo").await?;
    drop(server);
    let carried = carried_by_user(&slot, |user| expected_context("/todo", user, "rocket")).await?;
    ensure_all_own(&carried)
}
e2e_test!(rocket_app_keeps_1000_concurrent_contexts_apart);

/// Which route of the compat test user N's request takes: every tenth user the control route
/// without any integration, the other odd users the compat route, the other even users the
/// native one.
fn compat_test_route(user: i64) -> &'static str {
    if user % 10 == 0 {
        "/bare/todo"
    } else if user % 2 == 1 {
        "/compat/todo"
    } else {
        "/native/todo"
    }
}

/// How many writes of `outcomes` carried (their own context, nothing, something else).
fn tally<'a>(outcomes: impl IntoIterator<Item = &'a Carried>) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for outcome in outcomes {
        match outcome {
            Carried::Own => counts.0 += 1,
            Carried::Nothing => counts.1 += 1,
            Carried::Other(_) => counts.2 += 1,
        }
    }
    counts
}

/// One salvo app, three routes with the same goal: `/native/todo` behind `bemi_salvo::Bemi`,
/// `/compat/todo` behind `bemi_axum::BemiLayer` adapted by salvo's `tower-compat`
/// (`TowerLayerCompat::compat`) with the same closure, and `/bare/todo` with no integration at
/// all (the control: its writes must carry nothing, which shows that the check sees a lost
/// context). 1 000 concurrent requests spread over the three ([`compat_test_route`]).
///
/// On salvo 1.1 (salvo_extra 1.1.0) the compat adapter **loses** the context: the layer's inner
/// service (`FlowCtrlService`) only hands the request over a channel, and the rest of the chain
/// (`ctrl.call_next`, the goal) runs in the other branch of the adapter's `select!`, outside the
/// future the layer returns, so the layer's task-local scope never covers the goal. The native
/// hoop runs `call_next` inside its own scope and keeps every write's context. (On salvo_extra
/// 1.0.1 the adapter ran the chain inside the layer's future and kept the context: 500 of 500.)
/// So this test pins down what 1.1 does — every compat write carries nothing, every native write
/// its own context — and fails, with the tally, if a salvo release changes either.
async fn salvo_tower_compat_on_1_1_loses_the_context_the_native_hoop_keeps(
    cluster: Arc<TestCluster>,
) -> TestResult {
    use salvo::prelude::TowerLayerCompat as _;

    let db = bemi_tests::todo_db(&cluster, "salvo_compat").await?;
    let slot = db.wal_slot().await?;
    let client = Arc::new(BemiClient::new(db.tokio_postgres().await?));
    let layer = bemi_axum::BemiLayer::new(|req: &salvo::hyper::Request<salvo::http::ReqBody>| {
        let user = req.headers().get(USER_HEADER).and_then(|v| v.to_str().ok());
        from_parts(req.uri().path(), req.method().as_str(), user)
    });
    let create = || salvo::Router::with_path("todo").post(SalvoCreate(Arc::clone(&client)));
    let router = salvo::Router::new()
        .push(
            salvo::Router::with_path("native")
                .hoop(bemi_salvo::Bemi::new(salvo_context))
                .push(create()),
        )
        .push(
            salvo::Router::with_path("compat")
                // `compat` starts the Buffer's worker task: it needs the runtime.
                .hoop(layer.compat())
                .push(create()),
        )
        .push(salvo::Router::with_path("bare").push(create()));
    let server = serve::salvo(router).await?;
    burst(&server.base, compat_test_route).await?;
    drop(server);
    let carried = carried_by_user(&slot, |user| {
        expected_context(compat_test_route(user), user, "salvo")
    })
    .await?;

    let on = |route: &str| {
        carried
            .iter()
            .filter(|(user, _)| compat_test_route(**user) == route)
            .map(|(_, outcome)| outcome)
            .collect::<Vec<_>>()
    };
    let (native, compat, bare) = (on("/native/todo"), on("/compat/todo"), on("/bare/todo"));
    eprintln!(
        "writes carrying (their own context, nothing, something else): native hoop {:?}, \
         tower-compat {:?}, no integration {:?}",
        tally(native.iter().copied()),
        tally(compat.iter().copied()),
        tally(bare.iter().copied()),
    );
    ensure!(
        tally(bare.iter().copied()) == (0, bare.len(), 0),
        "the control route without an integration: {bare:?}"
    );
    ensure!(
        tally(native.iter().copied()) == (native.len(), 0, 0),
        "the native hoop: {:?}",
        native
            .iter()
            .filter(|c| ***c != Carried::Own)
            .take(5)
            .collect::<Vec<_>>()
    );
    ensure!(
        tally(compat.iter().copied()) == (0, compat.len(), 0),
        "salvo's tower-compat route: with salvo_extra 1.1 the chain runs outside the layer's \
         future, so no write should carry a context; a salvo release changed that. What the \
         writes carried (own, nothing, other): {:?}",
        tally(compat.iter().copied())
    );
    Ok(())
}
e2e_test!(salvo_tower_compat_on_1_1_loses_the_context_the_native_hoop_keeps);
