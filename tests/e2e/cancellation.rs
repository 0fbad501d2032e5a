//! Cancelled writes: a write future dropped at any await (a timeout, a `select!`) never leaves
//! its context to a later write of its transaction, and never hands a connection back in the
//! middle of the protocol or inside a transaction — in every async adapter: sqlx,
//! tokio-postgres (owned, and borrowed from deadpool and bb8), SeaORM and diesel-async. Sync
//! Diesel blocks its thread until a call returns, so it cannot be dropped mid-call: nothing to
//! test there.
//!
//! The regression tests drop a write right after its first poll (its requests sent, their
//! responses not read), or before it, at the moments that used to leak. The property tests run
//! random sequences of writes with context A, B or none, each maybe dropped by a tiny timeout or
//! after a few polls, in a transaction or not, then the pool's next user of the connection;
//! every committed row must have, by the stitching rule applied to the WAL, exactly the context
//! its write was given.

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bemi_core::carrier::Carrier;
use bemi_core::context;
use bemi_tests::proxy::FaultProxy;
use bemi_tests::{TestCluster, TestResult, WalEntry, ctx, todo_db};
use bemi_tokio_postgres::{BemiClient, BorrowedClient, BorrowedTransaction};
use futures_util::FutureExt as _;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

const INSERT: &str = "INSERT INTO todo (task) VALUES ($1)";
const INSERT_RETURNING: &str = "INSERT INTO todo (task) VALUES ($1) RETURNING id";

/// Cases of each property test, at most.
const CASES: u32 = 48;
/// Wall-clock budget of each property test: the cases left when it is spent are skipped.
const BUDGET: Duration = Duration::from_secs(20);

/// The context a write is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Given {
    A,
    B,
    Nothing,
}

impl Given {
    /// The value of the context's `ctx` key (none: no context).
    fn label(self) -> Option<&'static str> {
        match self {
            Given::A => Some("A"),
            Given::B => Some("B"),
            Given::Nothing => None,
        }
    }

    /// Runs `write` (made when first polled) with this context in scope.
    async fn scope<F: Future>(self, write: F) -> F::Output {
        match self.label() {
            Some(label) => context::scope(ctx(json!({ "ctx": label })), write).await,
            None => write.await,
        }
    }
}

/// How a write is cut short.
#[derive(Debug, Clone, Copy)]
enum Cancel {
    /// Awaited to the end.
    Never,
    /// Dropped after this many polls, with a yield to the runtime after each (0: never polled).
    AfterPolls(u8),
    /// Run under `tokio::time::timeout` of this many microseconds (0: `Duration::ZERO`), after
    /// a yield.
    Timeout(u16),
    /// Polled once while the [`Proxy`] of the test holds the responses back, and dropped once
    /// the server responded to what it sent (or after a while, if it sent nothing).
    WhileHeld,
}

tokio::task_local! {
    /// The proxy the connections of the running property test go through.
    static PROXY: Arc<Proxy>;
}

/// Runs `write` as `cancel` says: its output if it finished, `None` if it was dropped.
async fn run<F: Future>(write: F, cancel: Cancel) -> Option<F::Output> {
    match cancel {
        Cancel::Never => Some(write.await),
        Cancel::AfterPolls(polls) => {
            let mut write = pin!(write);
            for _ in 0..polls {
                if let Some(output) = write.as_mut().now_or_never() {
                    return Some(output);
                }
                tokio::task::yield_now().await;
            }
            None
        }
        Cancel::Timeout(micros) => {
            tokio::task::yield_now().await;
            tokio::time::timeout(Duration::from_micros(micros.into()), write)
                .await
                .ok()
        }
        Cancel::WhileHeld => {
            let proxy = PROXY.with(Arc::clone);
            proxy.hold();
            let output = write.now_or_never();
            if output.is_none() {
                // (A write waiting for its connection sent nothing: no response comes.)
                let _ = proxy.responded(Duration::from_millis(200)).await;
            }
            proxy.release();
            output
        }
    }
}

/// Polls `write` once (which sends what it sends on its first poll) and drops it; fails if it
/// finished in that poll.
fn drop_after_first_poll<F: Future<Output: std::fmt::Debug>>(write: F) -> anyhow::Result<()> {
    if let Some(output) = write.now_or_never() {
        anyhow::bail!("the write finished in its first poll, nothing was cancelled: {output:?}");
    }
    Ok(())
}

/// The test's database behind a [`FaultProxy`] whose responses (server to client) can be held
/// back: a write's requests reach the server and run, and its future stays pending on their
/// responses for as long as the test likes.
struct Proxy {
    /// `url` through the proxy.
    url: String,
    faults: FaultProxy,
}

impl Proxy {
    /// Starts a proxy to the database of `url` (a `postgres://…@host:port/…` URL).
    async fn start(url: &str) -> anyhow::Result<Self> {
        let (faults, url) = FaultProxy::in_front_of(url).await?;
        Ok(Self { url, faults })
    }

    /// Holds the server's responses back from now on.
    fn hold(&self) {
        self.faults.hold_responses();
    }

    /// Waits until the server has responded to something since [`Proxy::hold`] (so it ran
    /// it), for up to `timeout`.
    async fn responded(&self, timeout: Duration) -> anyhow::Result<()> {
        self.faults.responded(timeout).await
    }

    /// Lets the responses through again.
    fn release(&self) {
        self.faults.release_responses();
    }
}

/// A todo database of its own, a slot on its WAL, and a [`Proxy`] to it.
async fn proxied_todo_db(
    cluster: &TestCluster,
    hint: &str,
) -> anyhow::Result<(bemi_tests::TestDb, bemi_tests::WalSlot, Proxy)> {
    let db = todo_db(cluster, hint).await?;
    let slot = db.wal_slot().await?;
    let proxy = Proxy::start(&db.url).await?;
    Ok((db, slot, proxy))
}

/// Runs `write` until it waits on the server's responses, lets the server run what it sent,
/// and drops it before it sees a response.
async fn drop_while_held<F: Future<Output: std::fmt::Debug>>(
    proxy: &Proxy,
    write: F,
) -> anyhow::Result<()> {
    proxy.hold();
    drop_after_first_poll(write)?;
    proxy.responded(Duration::from_secs(10)).await?;
    proxy.release();
    Ok(())
}

/// The row changes of the committed transactions of `entries`, in order: the task each row was
/// written with, and the `ctx` of the context it takes by the stitching rule (the latest
/// `_bemi` message before it in its transaction; after none, or after `{}`: none).
fn attributed(entries: &[WalEntry]) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let rows = bemi_tests::wal::stitched_tasks(entries)?;
    Ok(rows
        .into_iter()
        .map(|(task, context)| {
            let given = context
                .as_ref()
                .and_then(|c| c.get("ctx")?.as_str().map(str::to_owned));
            (task, given)
        })
        .collect())
}

/// Asserts that the rows of the committed transactions of `entries` are exactly `expected`:
/// (task, `ctx` of its context), in order.
fn assert_rows(entries: &[WalEntry], expected: &[(&str, Option<&str>)]) -> anyhow::Result<()> {
    let rows = attributed(entries)?;
    let rows: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|(task, given)| (task.as_str(), given.as_deref()))
        .collect();
    ensure!(rows == expected, "rows {rows:?}, expected {expected:?}");
    Ok(())
}

/// A write of a case: its task, the context it was given, whether it finished.
#[derive(Debug)]
struct Written {
    task: String,
    given: Given,
    finished: bool,
}

/// The property: every committed row was written by one of `writes` and has exactly the
/// context it was given; every write that finished has its row.
fn judge(entries: &[WalEntry], writes: &[Written]) -> anyhow::Result<()> {
    let rows = attributed(entries)?;
    let mut seen = HashSet::new();
    for (task, got) in &rows {
        let write = writes
            .iter()
            .find(|write| &write.task == task)
            .with_context(|| format!("row {task} was not written here; rows {rows:?}"))?;
        ensure!(
            got.as_deref() == write.given.label(),
            "row {task} was given {:?} but takes {got:?}\nrows (task, ctx): {rows:?}\nwrites: \
             {writes:#?}",
            write.given
        );
        ensure!(seen.insert(task.clone()), "row {task} twice: {rows:?}");
    }
    for write in writes.iter().filter(|write| write.finished) {
        ensure!(
            seen.contains(&write.task),
            "{} finished but has no committed row: {rows:?}",
            write.task
        );
    }
    Ok(())
}

/// A random case: writes with a context and a way to be cut short, in one transaction or each
/// on its own, and a choice of the adapter's variant (carrier, method, pool) to read as each
/// test likes.
#[derive(Debug, Clone)]
struct Case {
    steps: Vec<(Given, Cancel)>,
    in_transaction: bool,
    variant: u8,
}

fn case() -> impl Strategy<Value = Case> {
    let given = prop_oneof![Just(Given::A), Just(Given::B), Just(Given::Nothing)];
    let cancel = prop_oneof![
        2 => Just(Cancel::Never),
        1 => (0u8..6).prop_map(Cancel::AfterPolls),
        2 => (0u16..2_000).prop_map(Cancel::Timeout),
        1 => Just(Cancel::WhileHeld),
    ];
    (vec((given, cancel), 1..12), any::<bool>(), any::<u8>()).prop_map(
        |(steps, in_transaction, variant)| Case {
            steps,
            in_transaction,
            variant,
        },
    )
}

/// Task names unique to the run.
fn next_task(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs `property` on random [`Case`]s — at most [`CASES`], for at most [`BUDGET`] — on the
/// e2e runtime, from proptest's synchronous runner, with `proxy` as the test's [`PROXY`].
async fn check_cases<F, Fut>(name: &'static str, proxy: Proxy, property: F) -> TestResult
where
    F: Fn(Case) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Handle::current();
    let proxy = Arc::new(proxy);
    let deadline = Instant::now() + BUDGET;
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&ran);
    let outcome = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases: CASES,
            failure_persistence: None,
            // Timing decides what a case does: a shrunk case may pass where the original
            // failed, so shrinking stays short.
            max_shrink_iters: 32,
            ..Config::default()
        });
        runner.run(&case(), |case| {
            if Instant::now() >= deadline {
                return Ok(());
            }
            counted.fetch_add(1, Ordering::Relaxed);
            runtime
                .block_on(PROXY.scope(Arc::clone(&proxy), property(case)))
                .map_err(|error| TestCaseError::fail(format!("{error:#}")))
        })
    })
    .await?;
    outcome.map_err(|error| anyhow::anyhow!("{name}: {error}"))?;
    let ran = ran.load(Ordering::Relaxed);
    ensure!(ran > 0, "{name}: no case ran within {BUDGET:?}");
    eprintln!("{name}: {ran} cases passed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Regression tests.

/// tokio-postgres: a write whose emission and statement were sent, dropped before their
/// responses, left its context in effect but unnoted (owned and borrowed transactions).
async fn tokio_postgres_write_dropped_after_it_was_sent_leaves_no_context_behind(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let (_db, slot, proxy) = proxied_todo_db(&cluster, "cancel_tokio_pg").await?;

    let mut client = BemiClient::new(tokio_postgres_client(&proxy.url).await?);
    let tx = client.transaction().await?;
    let insert = tx.prepare(INSERT).await?;
    // B (which prepares the emission), then a reset: no context in effect.
    Given::B
        .scope(async { tx.execute(&insert, &[&"b"]).await })
        .await?;
    tx.execute(&insert, &[&"reset"]).await?;
    drop_while_held(
        &proxy,
        Given::A.scope(async { tx.execute(&insert, &[&"dropped"]).await }),
    )
    .await?;
    tx.execute(&insert, &[&"after"]).await?;
    tx.commit().await?;

    let pool = deadpool(&proxy.url)?;
    let mut pooled = pool.get().await?;
    let tx = pooled.transaction().await?;
    let insert = tx.prepare_cached(INSERT).await?;
    let bemi = BorrowedTransaction::new(&tx);
    drop_while_held(
        &proxy,
        Given::A.scope(async { bemi.execute(&insert, &[&"borrowed dropped"]).await }),
    )
    .await?;
    bemi.execute(&insert, &[&"borrowed after"]).await?;
    drop(bemi);
    tx.commit().await?;

    assert_rows(
        &slot.read().await?,
        &[
            ("b", Some("B")),
            ("reset", None),
            ("dropped", Some("A")),
            ("after", None),
            ("borrowed dropped", Some("A")),
            ("borrowed after", None),
        ],
    )
}
e2e_test!(tokio_postgres_write_dropped_after_it_was_sent_leaves_no_context_behind);

/// tokio-postgres: a batch outside a transaction (`BEGIN` and the emission, the batch, then
/// `ROLLBACK` if it failed) dropped before its failure arrived left its transaction open and
/// aborted: the client's (and the pool's) next user failed.
async fn tokio_postgres_failed_batch_dropped_leaves_no_transaction_open(
    cluster: Arc<TestCluster>,
) -> TestResult {
    const FAILING: &str = "INSERT INTO todo (task) VALUES ('failing'); SELECT 1/0";
    let (_db, slot, proxy) = proxied_todo_db(&cluster, "cancel_batch").await?;

    let client = BemiClient::new(tokio_postgres_client(&proxy.url).await?);
    drop_while_held(
        &proxy,
        Given::A.scope(async { client.batch_execute(FAILING).await }),
    )
    .await?;
    client
        .execute(INSERT, &[&"after"])
        .await
        .context("the client's next write")?;

    let pool = deadpool(&proxy.url)?;
    {
        let pooled = pool.get().await?;
        let bemi = BorrowedClient::new(&pooled);
        drop_while_held(
            &proxy,
            Given::A.scope(async { bemi.batch_execute(FAILING).await }),
        )
        .await?;
    }
    let pooled = pool.get().await?;
    let bemi = BorrowedClient::new(&pooled);
    Given::B
        .scope(async { bemi.execute(INSERT, &[&"pool after"]).await })
        .await
        .context("the pool's next write")?;

    assert_rows(
        &slot.read().await?,
        &[("after", None), ("pool after", Some("B"))],
    )
}
e2e_test!(tokio_postgres_failed_batch_dropped_leaves_no_transaction_open);

/// diesel-async: a write without a context noted the reset it needed as done when its future
/// was made, so a future dropped before sending it left the earlier context in effect.
async fn diesel_async_write_dropped_before_its_reset_leaves_no_context_behind(
    cluster: Arc<TestCluster>,
) -> TestResult {
    use bemi_diesel::BemiAsyncPgConnection;
    use diesel_async::{AnsiTransactionManager, AsyncConnection as _, TransactionManager as _};

    let (_db, slot, proxy) = proxied_todo_db(&cluster, "cancel_diesel_reset").await?;
    let mut conn = BemiAsyncPgConnection::establish(&proxy.url).await?;
    AnsiTransactionManager::begin_transaction(&mut conn).await?;
    Given::A
        .scope(async { diesel_insert(&mut conn, "a", 0).await })
        .await?;
    drop(diesel_insert(&mut conn, "never", 0));
    drop_while_held(&proxy, diesel_insert(&mut conn, "dropped", 0)).await?;
    diesel_insert(&mut conn, "after", 0).await?;
    AnsiTransactionManager::commit_transaction(&mut conn).await?;
    let entries = slot.read().await?;
    let rows = attributed(&entries)?;
    // (The dropped write may or may not have run; if it did, after the reset.)
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|(task, _)| task != "dropped")
        .collect();
    ensure!(
        rows == [
            ("a".to_owned(), Some("A".to_owned())),
            ("after".to_owned(), None)
        ],
        "{rows:?}"
    );
    judge(
        &entries,
        &[
            written("a", Given::A, true),
            written("dropped", Given::Nothing, false),
            written("after", Given::Nothing, true),
        ],
    )
}
e2e_test!(diesel_async_write_dropped_before_its_reset_leaves_no_context_behind);

/// diesel-async: a write outside a transaction whose statement was not prepared yet was sent
/// after the `COMMIT` pipelined with it (its preparation took a round trip), so it ran on its
/// own, without its context.
async fn diesel_async_new_statement_outside_a_transaction_carries_its_context(
    cluster: Arc<TestCluster>,
) -> TestResult {
    use bemi_diesel::BemiAsyncPgConnection;
    use diesel_async::AsyncConnection as _;

    let db = todo_db(&cluster, "cancel_diesel_order").await?;
    let slot = db.wal_slot().await?;
    let mut conn = BemiAsyncPgConnection::establish(&db.url).await?;
    // `sql_query` is prepared anew each time; the DSL insert the first time.
    Given::A
        .scope(async { diesel_insert(&mut conn, "sql", 1).await })
        .await?;
    Given::B
        .scope(async { diesel_insert(&mut conn, "dsl", 0).await })
        .await?;
    Given::A
        .scope(async { diesel_insert(&mut conn, "dsl again", 0).await })
        .await?;
    assert_rows(
        &slot.read().await?,
        &[
            ("sql", Some("A")),
            ("dsl", Some("B")),
            ("dsl again", Some("A")),
        ],
    )
}
e2e_test!(diesel_async_new_statement_outside_a_transaction_carries_its_context);

/// diesel-async: a write outside a transaction dropped after `BEGIN` and its emission were
/// sent left that transaction open on the connection, and the next write without a context ran
/// inside it, after the dropped write's context.
async fn diesel_async_dropped_write_outside_a_transaction_leaves_none_open(
    cluster: Arc<TestCluster>,
) -> TestResult {
    use bemi_diesel::BemiAsyncPgConnection;
    use diesel_async::AsyncConnection as _;
    use diesel_async::pooled_connection::PoolableConnection as _;

    let (_db, slot, proxy) = proxied_todo_db(&cluster, "cancel_diesel_wrap").await?;
    let mut conn = BemiAsyncPgConnection::establish(&proxy.url).await?;
    // A statement prepared anew: its first poll sends `BEGIN` with the emission, and its
    // preparation.
    drop_while_held(
        &proxy,
        Given::A.scope(async { diesel_insert(&mut conn, "dropped", 1).await }),
    )
    .await?;
    ensure!(conn.is_broken(), "a pool must not take the connection back");
    diesel_insert(&mut conn, "after", 1).await?;
    ensure!(!conn.is_broken(), "the connection is usable again");
    Given::B
        .scope(async { diesel_insert(&mut conn, "b", 1).await })
        .await?;
    assert_rows(&slot.read().await?, &[("after", None), ("b", Some("B"))])
}
e2e_test!(diesel_async_dropped_write_outside_a_transaction_leaves_none_open);

/// Runs each of `steps`: a write of a new task (named after `prefix`) by `write`, in the step's
/// context, cut short as the step says; notes each in `writes`.
async fn run_steps<T, E: Into<anyhow::Error>>(
    steps: &[(Given, Cancel)],
    prefix: &str,
    writes: &mut Vec<Written>,
    mut write: impl AsyncFnMut(String) -> Result<T, E>,
) -> TestResult {
    for &(given, cancel) in steps {
        let task = next_task(prefix);
        let done = run(given.scope(write(task.clone())), cancel)
            .await
            .transpose()
            .map_err(Into::into)?;
        writes.push(written(&task, given, done.is_some()));
    }
    Ok(())
}

fn written(task: &str, given: Given, finished: bool) -> Written {
    Written {
        task: task.to_owned(),
        given,
        finished,
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests.

/// A tokio-postgres write by one of the methods (by `method`): `execute` of the text,
/// `query` of a `RETURNING` text, `execute` of a prepared statement, `batch_execute`.
macro_rules! tp_write {
    ($on:expr, $method:expr, $prepared:expr, $task:expr) => {{
        let (on, method, prepared, task): (_, u8, &tokio_postgres::Statement, String) =
            ($on, $method, $prepared, $task);
        async move {
            match method % 4 {
                0 => on.execute(INSERT, &[&task]).await.map(drop),
                1 => on.query(INSERT_RETURNING, &[&task]).await.map(drop),
                2 => on.execute(prepared, &[&task]).await.map(drop),
                _ => {
                    let sql = format!("INSERT INTO todo (task) VALUES ('{task}')");
                    on.batch_execute(&sql).await
                }
            }
        }
    }};
}

/// Writes `case`'s steps through an owned client, a deadpool client or a bb8 client (in one
/// transaction, or each on its own), then the next user of the client or the pool.
async fn tokio_postgres_cancelled_writes_keep_every_row_to_its_own_context(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "cancel_prop_tokio_pg").await?;
    let slot = Arc::new(db.wal_slot().await?);
    let proxy = Proxy::start(&db.url).await?;
    let owned = Arc::new(tokio::sync::Mutex::new(BemiClient::new(
        tokio_postgres_client(&proxy.url).await?,
    )));
    let deadpool = deadpool(&proxy.url)?;
    let manager = bb8_postgres::PostgresConnectionManager::new_from_stringlike(
        &proxy.url,
        tokio_postgres::NoTls,
    )?;
    let bb8 = bb8::Pool::builder().max_size(1).build(manager).await?;
    check_cases("tokio-postgres", proxy, move |case| {
        let (slot, owned, deadpool, bb8) = (
            Arc::clone(&slot),
            Arc::clone(&owned),
            deadpool.clone(),
            bb8.clone(),
        );
        async move {
            let method = case.variant / 3;
            let mut writes = Vec::new();
            match case.variant % 3 {
                0 => {
                    let mut client = owned.lock().await;
                    tp_owned_case(&mut client, &case, method, &mut writes).await?;
                    tp_owned_case(&mut client, &next_user(), method, &mut writes).await?;
                    let mut next = next_user();
                    next.in_transaction = false;
                    tp_owned_case(&mut client, &next, method, &mut writes).await?;
                }
                1 => {
                    let mut pooled = deadpool.get().await?;
                    tp_borrowed_case(&mut pooled, &case, method, &mut writes).await?;
                    drop(pooled);
                    let mut next = deadpool.get().await?;
                    tp_borrowed_case(&mut next, &next_user(), method, &mut writes).await?;
                }
                _ => {
                    let mut pooled = bb8.get().await?;
                    tp_borrowed_case(&mut pooled, &case, method, &mut writes).await?;
                    drop(pooled);
                    let mut next = bb8.get().await?;
                    tp_borrowed_case(&mut next, &next_user(), method, &mut writes).await?;
                }
            }
            judge(&slot.read().await?, &writes)
        }
    })
    .await
}
e2e_test!(tokio_postgres_cancelled_writes_keep_every_row_to_its_own_context);

/// What the next user of a connection does: B and nothing in a transaction, nothing cut
/// short.
fn next_user() -> Case {
    Case {
        steps: vec![(Given::B, Cancel::Never), (Given::Nothing, Cancel::Never)],
        in_transaction: true,
        variant: 0,
    }
}

async fn tp_owned_case(
    client: &mut BemiClient,
    case: &Case,
    method: u8,
    writes: &mut Vec<Written>,
) -> anyhow::Result<()> {
    let prepared = client.prepare(INSERT).await?;
    if case.in_transaction {
        let tx = client.transaction().await?;
        run_steps(&case.steps, "t", writes, async |task| {
            tp_write!(&tx, method, &prepared, task).await
        })
        .await?;
        tx.commit().await?;
    } else {
        run_steps(&case.steps, "t", writes, async |task| {
            tp_write!(&*client, method, &prepared, task).await
        })
        .await?;
    }
    Ok(())
}

async fn tp_borrowed_case(
    client: &mut tokio_postgres::Client,
    case: &Case,
    method: u8,
    writes: &mut Vec<Written>,
) -> anyhow::Result<()> {
    let prepared = client.prepare(INSERT).await?;
    if case.in_transaction {
        let tx = client.transaction().await?;
        let bemi = BorrowedTransaction::new(&tx);
        run_steps(&case.steps, "t", writes, async |task| {
            tp_write!(&bemi, method, &prepared, task).await
        })
        .await?;
        drop(bemi);
        tx.commit().await?;
    } else {
        let bemi = BorrowedClient::new(&*client);
        run_steps(&case.steps, "t", writes, async |task| {
            tp_write!(&bemi, method, &prepared, task).await
        })
        .await?;
    }
    Ok(())
}

/// A tokio-postgres client of `url` (its connection runs in a spawned task).
async fn tokio_postgres_client(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A one-connection deadpool of `url`.
fn deadpool(url: &str) -> anyhow::Result<deadpool_postgres::Pool> {
    let config: tokio_postgres::Config = url.parse()?;
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    Ok(deadpool_postgres::Pool::builder(manager)
        .max_size(1)
        .build()?)
}

/// A diesel-async insert of `task` by one of the methods (by `method`): the DSL's `execute`
/// (a cached statement), `sql_query` (prepared each time), the DSL's `get_result` (a load).
fn diesel_insert<'c>(
    conn: &'c mut bemi_diesel::BemiAsyncPgConnection,
    task: &str,
    method: u8,
) -> futures_util::future::BoxFuture<'c, diesel::QueryResult<()>> {
    use bemi_examples::store::diesel_schema::todo;
    use diesel::ExpressionMethods as _;
    use diesel_async::RunQueryDsl as _;

    let task = task.to_owned();
    match method % 3 {
        0 => diesel::insert_into(todo::table)
            .values(todo::task.eq(task))
            .execute(conn)
            .map(|done| done.map(drop))
            .boxed(),
        1 => diesel::sql_query(INSERT)
            .bind::<diesel::sql_types::Text, _>(task)
            .execute(conn)
            .map(|done| done.map(drop))
            .boxed(),
        _ => diesel::insert_into(todo::table)
            .values(todo::task.eq(task))
            .returning(todo::id)
            .get_result::<i64>(conn)
            .map(|done| done.map(drop))
            .boxed(),
    }
}

/// Writes `case`'s steps through a diesel-async connection — one of its own, or from a
/// one-connection bb8 pool — then the next user of the connection or the pool.
async fn diesel_async_cancelled_writes_keep_every_row_to_its_own_context(
    cluster: Arc<TestCluster>,
) -> TestResult {
    use bemi_diesel::BemiAsyncPgConnection;
    use diesel_async::AsyncConnection as _;
    use diesel_async::pooled_connection::AsyncDieselConnectionManager;

    let db = todo_db(&cluster, "cancel_prop_diesel").await?;
    let slot = Arc::new(db.wal_slot().await?);
    let proxy = Proxy::start(&db.url).await?;
    let own = Arc::new(tokio::sync::Mutex::new(
        BemiAsyncPgConnection::establish(&proxy.url).await?,
    ));
    let manager = AsyncDieselConnectionManager::<BemiAsyncPgConnection>::new(&proxy.url);
    let pool = bb8::Pool::builder().max_size(1).build(manager).await?;
    check_cases("diesel-async", proxy, move |case| {
        let (slot, own, pool) = (Arc::clone(&slot), Arc::clone(&own), pool.clone());
        async move {
            let method = case.variant / 2;
            let mut writes = Vec::new();
            let mut next = next_user();
            if case.variant % 2 == 0 {
                let mut conn = own.lock().await;
                diesel_case(&mut conn, &case, method, &mut writes).await?;
                diesel_case(&mut conn, &next, method, &mut writes).await?;
                next.in_transaction = false;
                diesel_case(&mut conn, &next, method, &mut writes).await?;
            } else {
                let mut conn = pool.get().await?;
                diesel_case(&mut conn, &case, method, &mut writes).await?;
                drop(conn);
                let mut conn = pool.get().await?;
                diesel_case(&mut conn, &next, method, &mut writes).await?;
                next.in_transaction = false;
                diesel_case(&mut conn, &next, method, &mut writes).await?;
            }
            judge(&slot.read().await?, &writes)
        }
    })
    .await
}
e2e_test!(diesel_async_cancelled_writes_keep_every_row_to_its_own_context);

async fn diesel_case(
    conn: &mut bemi_diesel::BemiAsyncPgConnection,
    case: &Case,
    method: u8,
    writes: &mut Vec<Written>,
) -> anyhow::Result<()> {
    use diesel_async::{AnsiTransactionManager, TransactionManager as _};

    if case.in_transaction {
        AnsiTransactionManager::begin_transaction(&mut *conn).await?;
    }
    run_steps(&case.steps, "d", writes, async |task| {
        diesel_insert(conn, &task, method).await
    })
    .await?;
    if case.in_transaction {
        AnsiTransactionManager::commit_transaction(&mut *conn).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// sqlx, on each line (`sqlx_0_9::`, `sqlx_0_8::`): the regression test and the property test.

crate::lines::sqlx_lines! {
    /// A one-connection sqlx pool of `url`, wrapped.
    async fn sqlx_pool(url: &str, carrier: Carrier) -> anyhow::Result<bemi_sqlx::BemiPool> {
        Ok(bemi_sqlx::BemiPool::connect_with(
            sqlx::postgres::PgPoolOptions::new().max_connections(1),
            url.parse()?,
        )
        .await?
        .carrier(carrier))
    }

    /// sqlx: a write dropped while its emission's response is awaited (the emission already sent
    /// and run) left its context in effect but unnoted, so the next write without a context did not
    /// reset it and inherited it.
    async fn sqlx_write_dropped_after_its_emission_leaves_no_context_behind(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        let db = todo_db(&cluster, "cancel_sqlx").await?;
        let proxy = Proxy::start(&db.url).await?;
        let pool = sqlx_pool(&proxy.url, Carrier::Message).await?;
        let slot = db.wal_slot().await?;
        // The emission's statement is prepared on the connection first, so that a later emission
        // goes out in one poll.
        let mut tx = pool.begin().await?;
        Given::A
            .scope(async { sqlx::query(INSERT).bind("warm").execute(&mut tx).await })
            .await?;
        tx.commit().await?;

        let mut tx = pool.begin().await?;
        drop_while_held(
            &proxy,
            Given::A.scope(async { sqlx::query(INSERT).bind("dropped").execute(&mut tx).await }),
        )
        .await?;
        sqlx::query(INSERT).bind("after").execute(&mut tx).await?;
        tx.commit().await?;
        assert_rows(&slot.read().await?, &[("warm", Some("A")), ("after", None)])
    }
    e2e_test!(sqlx_write_dropped_after_its_emission_leaves_no_context_behind);

    /// sqlx 0.8: a write outside a transaction (the message carrier's, in one of its own)
    /// dropped while its `BEGIN` was on its way left the server in a transaction sqlx did not
    /// count; the pool lent that connection to its next user, whose write ran in it and was
    /// lost. (sqlx 0.9.1 rolls it back; on 0.8 the adapter closes the connection.)
    async fn sqlx_write_dropped_during_its_begin_leaves_no_transaction_open(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        let db = todo_db(&cluster, "cancel_begin_sqlx").await?;
        let proxy = Proxy::start(&db.url).await?;
        let pool = sqlx_pool(&proxy.url, Carrier::Message).await?;
        let slot = db.wal_slot().await?;
        let mut conn = pool.acquire().await?;
        drop_while_held(
            &proxy,
            Given::A.scope(async { sqlx::query(INSERT).bind("dropped").execute(&mut conn).await }),
        )
        .await?;
        drop(conn);
        // The pool's next user, without the adapter.
        sqlx::query(INSERT)
            .bind("after")
            .execute(pool.inner())
            .await?;
        assert_rows(&slot.read().await?, &[("after", None)])
    }
    e2e_test!(sqlx_write_dropped_during_its_begin_leaves_no_transaction_open);

    /// Writes `case`'s steps through `pool` (in one transaction, or each on its own), then the
    /// pool's next user: a transaction with B and nothing, and B and nothing outside one.
    async fn sqlx_cancelled_writes_keep_every_row_to_its_own_context(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        let db = todo_db(&cluster, "cancel_prop_sqlx").await?;
        let slot = Arc::new(db.wal_slot().await?);
        let proxy = Proxy::start(&db.url).await?;
        let pools = Arc::new([
            sqlx_pool(&proxy.url, Carrier::Auto).await?,
            sqlx_pool(&proxy.url, Carrier::Message).await?,
            sqlx_pool(&proxy.url, Carrier::Comment).await?,
        ]);
        check_cases("sqlx", proxy, move |case| {
            let (slot, pools) = (Arc::clone(&slot), Arc::clone(&pools));
            async move {
                let pool = &pools[usize::from(case.variant % 3)];
                let returning = case.variant & 4 != 0;
                let mut writes = Vec::new();
                if case.in_transaction {
                    let mut tx = pool.begin().await?;
                    run_steps(&case.steps, "s", &mut writes, async |task| {
                        sqlx_write(Target::Tx(&mut tx), returning, task).await
                    })
                    .await?;
                    tx.commit().await?;
                } else {
                    run_steps(&case.steps, "s", &mut writes, async |task| {
                        sqlx_write(Target::Pool(pool), returning, task).await
                    })
                    .await?;
                }
                // The pool's next user of the connection.
                let mut tx = pool.begin().await?;
                for given in [Given::B, Given::Nothing] {
                    let task = next_task("next");
                    given
                        .scope(sqlx_write(Target::Tx(&mut tx), returning, task.clone()))
                        .await?;
                    writes.push(written(&task, given, true));
                }
                tx.commit().await?;
                for given in [Given::B, Given::Nothing] {
                    let task = next_task("next");
                    given
                        .scope(sqlx_write(Target::Pool(pool), returning, task.clone()))
                        .await?;
                    writes.push(written(&task, given, true));
                }
                judge(&slot.read().await?, &writes)
            }
        })
        .await
    }
    e2e_test!(sqlx_cancelled_writes_keep_every_row_to_its_own_context);

    /// Where a sqlx write of the property test runs.
    enum Target<'a> {
        Pool(&'a bemi_sqlx::BemiPool),
        Tx(&'a mut bemi_sqlx::BemiTransaction<'static>),
    }

    /// A sqlx insert of `task` (with `RETURNING` when `returning`).
    async fn sqlx_write(on: Target<'_>, returning: bool, task: String) -> Result<(), sqlx::Error> {
        let query = if returning { INSERT_RETURNING } else { INSERT };
        match on {
            Target::Pool(pool) => sqlx::query(query).bind(task).execute(pool).await,
            Target::Tx(tx) => sqlx::query(query).bind(task).execute(tx).await,
        }
        .map(drop)
    }
}

// ---------------------------------------------------------------------------------------------
// SeaORM, on each line (`seaorm_2::`, `seaorm_1::`): the regression test and the property test.

crate::lines::seaorm_lines! {
    /// SeaORM: a write dropped while its emission's response is awaited left its context in
    /// effect but unnoted.
    async fn seaorm_write_dropped_after_its_emission_leaves_no_context_behind(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        let db = todo_db(&cluster, "cancel_seaorm").await?;
        let proxy = Proxy::start(&db.url).await?;
        let orm = seaorm(&proxy.url).await?;
        let slot = db.wal_slot().await?;
        // The emission's and the insert's statements are cached on the connection first.
        let tx = orm.begin().await?;
        Given::A
            .scope(async { line::execute(&tx, seaorm_insert("warm")).await })
            .await?;
        tx.commit().await?;

        let tx = orm.begin().await?;
        drop_while_held(
            &proxy,
            Given::A.scope(async { line::execute(&tx, seaorm_insert("dropped")).await }),
        )
        .await?;
        line::execute(&tx, seaorm_insert("after")).await?;
        tx.commit().await?;
        assert_rows(&slot.read().await?, &[("warm", Some("A")), ("after", None)])
    }
    e2e_test!(seaorm_write_dropped_after_its_emission_leaves_no_context_behind);

    /// SeaORM 1.1 (sqlx 0.8): a write outside a transaction dropped while the `BEGIN` of the
    /// transaction it runs in was on its way left the server in that transaction; the pool's
    /// next user wrote in it and lost its write. A dropped write may still run (with its own
    /// context); the next write is committed.
    async fn seaorm_write_dropped_during_its_begin_leaves_no_transaction_open(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        let db = todo_db(&cluster, "cancel_begin_seaorm").await?;
        let proxy = Proxy::start(&db.url).await?;
        let orm = seaorm(&proxy.url).await?;
        let slot = db.wal_slot().await?;
        let mut writes = Vec::new();
        for n in 0..20 {
            let dropped = next_task("begin");
            let _ = run(
                Given::A.scope(line::execute(&orm, seaorm_insert(&dropped))),
                Cancel::AfterPolls(n % 4),
            )
            .await;
            writes.push(written(&dropped, Given::A, false));
            let after = next_task("after");
            line::execute(&orm, seaorm_insert(&after)).await?;
            writes.push(written(&after, Given::Nothing, true));
        }
        judge(&slot.read().await?, &writes)
    }
    e2e_test!(seaorm_write_dropped_during_its_begin_leaves_no_transaction_open);

    /// A one-connection SeaORM pool of `url`, wrapped.
    async fn seaorm(url: &str) -> anyhow::Result<bemi_seaorm::BemiConnection> {
        let mut options = sea_orm::ConnectOptions::new(url);
        options.max_connections(1).min_connections(1);
        Ok(bemi_seaorm::BemiConnection::new(
            sea_orm::Database::connect(options).await?,
        ))
    }

    fn seaorm_insert(task: &str) -> sea_orm::Statement {
        sea_orm::Statement::from_sql_and_values(sea_orm::DbBackend::Postgres, INSERT, [task.into()])
    }

    /// A SeaORM write by one of the methods (by `method`): `execute_raw`, `query_one_raw` of a
    /// `RETURNING` statement, `execute_unprepared`.
    async fn seaorm_write<C: sea_orm::ConnectionTrait>(
        on: &C,
        method: u8,
        task: String,
    ) -> Result<(), sea_orm::DbErr> {
        match method % 3 {
            0 => line::execute(on, seaorm_insert(&task)).await.map(drop),
            1 => line::query_one(
                on,
                sea_orm::Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    INSERT_RETURNING,
                    [task.into()],
                ),
            )
            .await
                .map(drop),
            _ => on
                .execute_unprepared(&format!("INSERT INTO todo (task) VALUES ('{task}')"))
                .await
                .map(drop),
        }
    }

    /// Writes `case`'s steps through a one-connection SeaORM pool, then the pool's next user.
    async fn seaorm_cancelled_writes_keep_every_row_to_its_own_context(
        cluster: Arc<TestCluster>,
    ) -> TestResult {
        let db = todo_db(&cluster, "cancel_prop_seaorm").await?;
        let slot = Arc::new(db.wal_slot().await?);
        let proxy = Proxy::start(&db.url).await?;
        let orm = seaorm(&proxy.url).await?;
        check_cases("SeaORM", proxy, move |case| {
            let (slot, orm) = (Arc::clone(&slot), orm.clone());
            async move {
                let method = case.variant;
                let mut writes = Vec::new();
                for (index, case) in [case, next_user()].iter().enumerate() {
                    // (The next user writes outside a transaction too.)
                    for in_transaction in [case.in_transaction, false].into_iter().take(1 + index) {
                        if in_transaction {
                            let tx = orm.begin().await?;
                            run_steps(&case.steps, "o", &mut writes, async |task| {
                                seaorm_write(&tx, method, task).await
                            })
                            .await?;
                            tx.commit().await?;
                        } else {
                            run_steps(&case.steps, "o", &mut writes, async |task| {
                                seaorm_write(&orm, method, task).await
                            })
                            .await?;
                        }
                    }
                }
                judge(&slot.read().await?, &writes)
            }
        })
        .await
    }
    e2e_test!(seaorm_cancelled_writes_keep_every_row_to_its_own_context);
}
