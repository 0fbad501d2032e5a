//! End-to-end tests of bemi-rs against a real PostgreSQL (see `bemi_tests` for the set-up).
//!
//! One binary with a custom main (libtest-mimic): the shared cluster starts on first use and is
//! stopped and deleted when every test is done. Each test runs on its own tokio runtime with a
//! deadline, and gets its own database.
//!
//! A test registers itself: `e2e_test!(name);` after an `async fn name(cluster:
//! Arc<TestCluster>) -> TestResult` in any module of this directory (`e2e_test!(name, ignored);`
//! for one too slow for every run). Its name is `module::name`, the filter `cargo test -p
//! bemi-tests --test e2e -- module::` runs a module's tests.

// Test code: a slice at a wrong index fails the test that made it (the library crates are
// held to checked slicing).
#![allow(clippy::string_slice)]

/// Registers an end-to-end test: `e2e_test!(name);` after its `async fn name(cluster:
/// Arc<TestCluster>) -> TestResult`, or `e2e_test!(name, ignored);` for a test too slow for every
/// run (`cargo test --release -p bemi-tests --test e2e -- --ignored NAME`).
macro_rules! e2e_test {
    ($test:ident) => {
        e2e_test!(@register $test, false);
    };
    ($test:ident, ignored) => {
        e2e_test!(@register $test, true);
    };
    (@register $test:ident, $ignored:expr) => {
        inventory::submit! {
            $crate::E2eTest {
                module: module_path!(),
                name: stringify!($test),
                ignored: $ignored,
                run: |cluster| Box::pin($test(cluster)),
            }
        }
    };
}

mod adapters;
mod audit_filters;
mod audit_query;
mod cancellation;
mod capture_rules;
mod carrier;
mod chain_text;
mod chaos_regressions;
mod cli_audit;
mod cli_changes;
mod cli_dev;
mod cli_migration;
mod cli_support;
mod cli_ui;
mod cli_worker;
mod context_isolation;
mod demo;
mod emit_once;
mod enrichment;
mod fuzz;
mod grpc;
mod hostile;
mod hostile_input;
mod keep_alive;
mod launcher;
mod lines;
mod loco;
mod migration;
mod minimal_examples;
mod nats;
mod open_files;
mod orm_apps;
mod outage;
mod pgbouncer;
mod pools;
mod restore;
mod retention;
mod revert;
mod schema_history;
mod serve;
mod spawned_tasks;
mod sqlcommenter;
mod standby;
mod startup;
mod tamper;
mod time_travel;
mod tls;
mod todo_apps;
mod todo_hostile;
mod todo_load;
mod trace_ids;
mod tracking_never_fails;
mod transaction_identity;
mod ui_browser;
mod ui_browser_scope;
mod ui_http;
mod ui_scope;
mod ui_security;
mod ui_verify;
mod web_frameworks;
mod worker_capture;
mod worker_crash;
mod worker_hazards;
mod worker_large;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bemi_tests::{TestCluster, TestResult};
use libtest_mimic::{Arguments, Failed, Trial};

/// Every test must finish within this time.
const TEST_TIMEOUT: Duration = Duration::from_secs(600);

type TestFuture = Pin<Box<dyn Future<Output = TestResult> + Send>>;

/// One registered test (see [`e2e_test!`]).
struct E2eTest {
    /// `module_path!()` where it was registered: `e2e::MODULE`.
    module: &'static str,
    name: &'static str,
    ignored: bool,
    run: fn(Arc<TestCluster>) -> TestFuture,
}

inventory::collect!(E2eTest);

impl E2eTest {
    /// `module::name`, as filters select it.
    fn full_name(&self) -> String {
        let module = self.module.strip_prefix("e2e::").unwrap_or(self.module);
        format!("{module}::{}", self.name)
    }
}

/// Every registered test, by name (the order the runner starts them in).
fn registered_tests() -> Vec<&'static E2eTest> {
    let mut tests: Vec<_> = inventory::iter::<E2eTest>.into_iter().collect();
    tests.sort_by_key(|test| test.full_name());
    tests
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    // The load tests hold more sockets than the common soft limit of 1 024 open files.
    open_files::raise_to_hard_limit();
    let mut args = Arguments::from_args();
    // Most tests wait on PostgreSQL, not on the CPU.
    args.test_threads.get_or_insert(4);
    let cluster = Arc::new(TestCluster::new());
    let trials = registered_tests()
        .into_iter()
        .map(|test| {
            let cluster = Arc::clone(&cluster);
            let run_test = test.run;
            Trial::test(test.full_name(), move || run(run_test, cluster))
                .with_ignored_flag(test.ignored)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    cluster.cleanup();
    drop(cluster);
    conclusion.exit();
}

fn run(test: fn(Arc<TestCluster>) -> TestFuture, cluster: Arc<TestCluster>) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
    // A fuzz target runs for its budget (BEMI_FUZZ_SECONDS) on top.
    let timeout = TEST_TIMEOUT + bemi_fuzz::budget().unwrap_or_default();
    let outcome = runtime.block_on(async { tokio::time::timeout(timeout, test(cluster)).await });
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("{error:?}").into()),
        Err(_) => Err(format!("timed out after {timeout:?}").into()),
    }
}
