//! `bemi-chaos`: a seeded fault-injection run of the whole pipeline — the real `bemi worker`
//! (and, with `--nats`, nats-server and two `bemi store` processes) under a random workload and
//! random faults — judged by an independent oracle (a plain row-level trigger). See the book's
//! "Chaos runs" page.
//!
//! ```text
//! cargo run -p bemi-chaos -- --seed 1 --minutes 2 [--nats] [--writers N] [--bemi PATH] [--log-dir DIR]
//! ```

mod compare;
mod oracle;
mod procs;
mod rng;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bemi_dev::{EphemeralPostgres, NatsServer};
use bemi_tests::proxy::FaultProxy;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

use crate::procs::{BemiCommand, Proc};
use crate::rng::Rng;

/// A seeded chaos run of the real `bemi` processes, judged by an independent oracle.
/// PostgreSQL: a throwaway cluster of the launcher, or DATABASE_URL (a superuser, on a server
/// with wal_level=logical).
#[derive(Debug, clap::Parser)]
#[command(name = "bemi-chaos")]
struct Args {
    /// The seed of the workload's and the faults' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long the workload and the faults run, in minutes (more than 0, at most a day).
    #[arg(long, default_value_t = 1.0, value_parser = minutes)]
    minutes: f64,
    /// Through NATS JetStream: nats-server, `bemi worker --sink` and two `bemi store`s.
    #[arg(long)]
    nats: bool,
    /// Concurrent writers (by default 2 to 4, from the seed).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=16))]
    writers: Option<u64>,
    /// A built `bemi` binary (by default this executable runs the `bemi` CLI).
    #[arg(long, env = "BEMI_CHAOS_BEMI")]
    bemi: Option<PathBuf>,
    /// Where each process's log goes (by default a new temporary directory).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// `--minutes`: a number of minutes, more than 0 and at most a day.
fn minutes(text: &str) -> Result<f64, String> {
    let minutes: f64 = text
        .parse()
        .map_err(|_| format!("not a number: {text:?}"))?;
    if minutes > 0.0 && minutes <= 24.0 * 60.0 {
        Ok(minutes)
    } else {
        Err("more than 0, at most a day (1440)".to_owned())
    }
}

fn main() -> ExitCode {
    if std::env::var_os(procs::AS_BEMI).is_some() {
        return bemi_cli::main();
    }
    // A malformed argument: clap's error, naming the flag, and exit code 2.
    let args = <Args as clap::Parser>::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let seed = args.seed;
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("chaos run FAILED; reproduce with --seed {seed}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error:#}\nchaos run of seed {seed} could not complete");
            ExitCode::FAILURE
        }
    }
}

/// The faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillWorker,
    TermWorker,
    PostgresRestart,
    PostgresCrash,
    DestinationDown,
    HoldResponses,
    CutRequests,
    CloseConnections,
    Latency,
    KillStore,
    KillNats,
    NatsHoldResponses,
    NatsCutRequests,
    NatsCloseConnections,
    NatsLatency,
    StreamDeleted,
}

impl Fault {
    /// The proxy a network fault goes through: to PostgreSQL, or (`Nats…`) to nats-server.
    fn proxy<'p>(
        self,
        postgres: &'p FaultProxy,
        nats: Option<&'p FaultProxy>,
    ) -> anyhow::Result<&'p FaultProxy> {
        match self {
            Self::NatsHoldResponses
            | Self::NatsCutRequests
            | Self::NatsCloseConnections
            | Self::NatsLatency => nats.context("a NATS fault in a run without NATS"),
            _ => Ok(postgres),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::KillWorker => "kill -9 worker",
            Self::TermWorker => "SIGTERM worker",
            Self::PostgresRestart => "PostgreSQL fast restart",
            Self::PostgresCrash => "PostgreSQL immediate shutdown and restart (crash recovery)",
            Self::DestinationDown => "destination unavailable",
            Self::HoldResponses => "proxy: PostgreSQL's responses held",
            Self::CutRequests => "proxy: worker's requests cut",
            Self::CloseConnections => "proxy: connections closed",
            Self::Latency => "proxy: latency to PostgreSQL",
            Self::KillStore => "kill -9 store",
            Self::KillNats => "kill -9 nats-server",
            Self::NatsHoldResponses => "proxy: nats-server's responses held",
            Self::NatsCutRequests => "proxy: requests to nats-server cut",
            Self::NatsCloseConnections => "proxy: NATS connections closed",
            Self::NatsLatency => "proxy: latency to nats-server",
            Self::StreamDeleted => "JetStream stream to be deleted once the pipeline drained",
        }
    }
}

/// Where the run's databases are.
struct Databases {
    /// The launcher's cluster (None with DATABASE_URL: no PostgreSQL restarts then).
    cluster: Option<EphemeralPostgres>,
    admin: String,
    source: String,
    destination: String,
    destination_name: String,
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let slash = base
        .rfind('/')
        .filter(|&at| at > "postgres://".len())
        .with_context(|| "DATABASE_URL names no database (postgres://user:pass@host:port/db)")?;
    let mut out = format!("{}/{database}", base.get(..slash).unwrap_or_default());
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

async fn databases() -> anyhow::Result<Databases> {
    let (cluster, admin, source) = if let Ok(url) = std::env::var("DATABASE_URL") {
        (None, with_database(&url, "postgres")?, url)
    } else {
        let cluster = tokio::task::spawn_blocking(EphemeralPostgres::start)
            .await?
            .context("starting PostgreSQL (the launcher)")?;
        let (admin, source) = (cluster.url(), cluster.url_for("chaos"));
        (Some(cluster), admin, source)
    };
    let admin_pool = PgPool::connect(&admin)
        .await
        .context("connecting to PostgreSQL")?;
    let destination_name = "chaos_destination".to_owned();
    if cluster.is_some() {
        sqlx::query("CREATE DATABASE chaos")
            .execute(&admin_pool)
            .await?;
    }
    sqlx::query("DROP DATABASE IF EXISTS chaos_destination WITH (FORCE)")
        .execute(&admin_pool)
        .await?;
    sqlx::query("CREATE DATABASE chaos_destination")
        .execute(&admin_pool)
        .await?;
    admin_pool.close().await;
    let destination = with_database(&source, &destination_name)?;
    Ok(Databases {
        cluster,
        admin,
        source,
        destination,
        destination_name,
    })
}

/// How long quiescing may take.
/// The JetStream stream of the run (bemi's default name).
const NATS_STREAM: &str = "bemi";
/// The most partitions a stream of the run may have (bemi's default is 8).
const MAX_PARTITIONS: u32 = 64;
/// How long the pipeline may take to drain before a stream deletion.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(300);
/// No progress for this long while quiescing, the slot behind: the pipeline is stuck.
const STALL: Duration = Duration::from_secs(60);

/// The last `lines` lines of the file at `path` (each cut to 300 characters).
fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| match line.char_indices().nth(300) {
            Some((cut, _)) => format!("  {}…", line.get(..cut).unwrap_or_default()),
            None => format!("  {line}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Seconds since the run started, for the log lines.
fn at(started: Instant) -> String {
    format!("[{:7.1}s]", started.elapsed().as_secs_f64())
}

/// Polls `check` every 500 ms until it returns true, failing after `timeout`.
async fn poll<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The run's processes and services under fault.
struct Services {
    /// The worker through the fault proxy and a standby on the same slot, reaching PostgreSQL
    /// directly: whichever streams, the other takes over when it dies or stops answering.
    workers: [Proc; 2],
    stores: Vec<Proc>,
    nats: Option<NatsServer>,
}

impl Services {
    /// Restarts what exited on its own, naming it.
    fn revive(&mut self, started: Instant) -> anyhow::Result<()> {
        for proc in self.workers.iter_mut().chain(self.stores.iter_mut()) {
            if let Some(status) = proc.revive()? {
                println!(
                    "{} {} exited on its own ({status}); restarted (log: {})",
                    at(started),
                    proc.name,
                    proc.log().display()
                );
            }
        }
        Ok(())
    }

    /// Waits `duration`, restarting what exits meanwhile.
    async fn wait(&mut self, duration: Duration, started: Instant) -> anyhow::Result<()> {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.revive(started)?;
            tokio::time::sleep(Duration::from_millis(250).min(until - Instant::now())).await;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_lines)]
async fn run(args: Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut rng = Rng::new(args.seed);
    let bemi = BemiCommand::new(args.bemi.clone())?;
    let log_dir = match &args.log_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!(
            "bemi-chaos-seed{}-{}",
            args.seed,
            std::process::id()
        )),
    };
    std::fs::create_dir_all(&log_dir)?;
    let writers = args.writers.unwrap_or_else(|| rng.range(2, 4));
    println!(
        "bemi-chaos: seed {}, {} minutes, {} writers, {}; logs in {}",
        args.seed,
        args.minutes,
        writers,
        if args.nats {
            "through NATS (two stores)"
        } else {
            "direct"
        },
        log_dir.display()
    );

    let mut dbs = databases().await?;
    let source = PgPoolOptions::new()
        .max_connections(12)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&dbs.source)
        .await
        .context("connecting to the source database")?;
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect(&dbs.admin)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS chaos_accounts, chaos_lines, chaos_events, chaos_oracle; \
         DROP FUNCTION IF EXISTS chaos_oracle_row, chaos_oracle_truncate, chaos_oracle_seq, \
             chaos_oracle_context; \
         {}; {}; {}; {}; {}; {}",
        workload::TABLES,
        workload::EVENTS,
        oracle::INSTALL,
        oracle::attach("chaos_accounts"),
        oracle::attach("chaos_lines"),
        oracle::attach("chaos_events"),
    )))
    .execute(&source)
    .await
    .context("creating the workload's tables and the oracle")?;
    let _ = sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = 'chaos' AND NOT active",
    )
    .execute(&source)
    .await;
    let env = |url: &str| vec![("DATABASE_URL".to_owned(), url.to_owned())];
    bemi.run(&["migrate"], &env(&dbs.source), Duration::from_secs(120))
        .await
        .context("bemi migrate")?;

    // The worker reaches PostgreSQL through the fault proxy.
    let (proxy, worker_url) = FaultProxy::in_front_of(&dbs.source).await?;
    let mut nats = None;
    // Both ways of the worker's UPDATE filter, by seed: the default leaves out UPDATEs that
    // change nothing (the oracle then does too).
    let skip_unchanged_updates = args.seed % 2 == 1;
    let mut worker_args = vec![
        "worker",
        "--skip-unchanged-updates",
        if skip_unchanged_updates {
            "true"
        } else {
            "false"
        },
        "--destination-url",
        &dbs.destination,
        "--slot",
        "chaos",
        "--publication",
        "chaos",
        "--exclude-tables",
        "chaos_oracle",
        "--heartbeat-interval",
        "1s",
    ];
    // The worker and the stores reach nats-server through a fault proxy of their own.
    let nats_url;
    let mut nats_proxy = None;
    if args.nats {
        let server = tokio::task::spawn_blocking(NatsServer::start)
            .await?
            .context("starting nats-server")?;
        let proxy;
        (proxy, nats_url) = FaultProxy::in_front_of(&server.url()).await?;
        nats_proxy = Some(proxy);
        nats = Some(server);
        worker_args.extend(["--sink", nats_url.as_str()]);
    } else {
        nats_url = String::new();
    }
    let mut worker_env = env(&worker_url);
    worker_env.push(("RUST_LOG".to_owned(), log_filter()));
    let worker = Proc::start("worker", &bemi, &worker_args, worker_env, &log_dir)?;
    // The standby: the same worker, straight to PostgreSQL.
    let mut standby_env = env(&dbs.source);
    standby_env.push(("RUST_LOG".to_owned(), log_filter()));
    let standby = Proc::start("standby", &bemi, &worker_args, standby_env, &log_dir)?;
    poll(
        "the worker to create its slot",
        Duration::from_secs(60),
        || async {
            Ok(sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'chaos'",
            )
            .fetch_one(&source)
            .await?
                > 0)
        },
    )
    .await
    .with_context(|| format!("see {}", log_dir.join("worker.log").display()))?;
    let mut stores = Vec::new();
    if args.nats {
        for n in 1..=2 {
            let store_args = [
                "store",
                "--from",
                nats_url.as_str(),
                "--destination-url",
                &dbs.destination,
            ];
            let store_env = vec![("RUST_LOG".to_owned(), log_filter())];
            stores.push(Proc::start(
                &format!("store-{n}"),
                &bemi,
                &store_args,
                store_env,
                &log_dir,
            )?);
        }
    }
    let mut services = Services {
        workers: [worker, standby],
        stores,
        nats,
    };
    println!(
        "{} worker streaming; workload and faults start",
        at(started)
    );

    // The workload.
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let deadline = Instant::now() + duration;
    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let active = Arc::new(AtomicUsize::new(0));
    let mut streams_deleted = 0u32;
    let mut unclean_exits = 0u32;
    let destination = PgPoolOptions::new()
        .max_connections(2)
        .connect(&dbs.destination)
        .await?;
    let adapter = bemi_sqlx::BemiPool::new(
        PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&dbs.source)
            .await?,
    );
    let connections = workload::Connections {
        plain: source.clone(),
        adapter,
        url: dbs.source.clone(),
        paused: Arc::clone(&paused),
        active: Arc::clone(&active),
    };
    let mut tasks = Vec::new();
    for n in 1..=writers {
        tasks.push(tokio::spawn(workload::writer(
            n,
            rng.fork(n),
            connections.clone(),
            Arc::clone(&stop),
            deadline,
        )));
    }
    let ddl = tokio::spawn(workload::ddl(
        rng.fork(100),
        source.clone(),
        Arc::clone(&paused),
        Arc::clone(&active),
        Arc::clone(&stop),
        deadline,
        started,
    ));

    // The faults.
    let mut faults: BTreeMap<Fault, u32> = BTreeMap::new();
    let mut kinds = vec![
        (Fault::KillWorker, 3),
        (Fault::TermWorker, 2),
        (Fault::DestinationDown, 2),
        (Fault::HoldResponses, 2),
        (Fault::CutRequests, 2),
        (Fault::CloseConnections, 2),
        (Fault::Latency, 2),
    ];
    if dbs.cluster.is_some() {
        kinds.extend([(Fault::PostgresRestart, 1), (Fault::PostgresCrash, 1)]);
    } else {
        println!(
            "PostgreSQL restarts skipped: DATABASE_URL names a server the runner does not own"
        );
    }
    if args.nats {
        kinds.extend([
            (Fault::KillStore, 3),
            (Fault::KillNats, 1),
            (Fault::NatsHoldResponses, 1),
            (Fault::NatsCutRequests, 1),
            (Fault::NatsCloseConnections, 1),
            (Fault::NatsLatency, 1),
            (Fault::StreamDeleted, 1),
        ]);
    }
    let mut faults_rng = rng.fork(200);
    for _ in 0..100_000 {
        let pause = Duration::from_millis(faults_rng.range(2_000, 8_000));
        if Instant::now() + pause >= deadline {
            break;
        }
        services.wait(pause, started).await?;
        let fault = faults_rng.weighted(&kinds);
        *faults.entry(fault).or_default() += 1;
        let lasting = Duration::from_millis(faults_rng.range(1_000, 10_000));
        match fault {
            Fault::KillWorker => {
                let worker = &mut services.workers[usize::from(faults_rng.chance(2))];
                let outcome = worker
                    .restart_after(libc::SIGKILL, Duration::from_secs(10))
                    .await?;
                println!(
                    "{} fault: {} {} ({outcome}); restarted",
                    at(started),
                    fault.name(),
                    worker.name
                );
            }
            Fault::TermWorker => {
                let worker = &mut services.workers[usize::from(faults_rng.chance(2))];
                println!("{} fault: {} {}", at(started), fault.name(), worker.name);
                let outcome = worker
                    .restart_after(libc::SIGTERM, Duration::from_secs(60))
                    .await?;
                println!("{} {} {outcome}; restarted", at(started), worker.name);
                // Every SIGTERM must end a worker cleanly, whatever it was doing.
                if outcome != "exited: exit status: 0" {
                    unclean_exits += 1;
                    println!(
                        "{} LOUD: SIGTERM did not end {} cleanly",
                        at(started),
                        worker.name
                    );
                }
            }
            Fault::KillStore => {
                let n = usize::try_from(faults_rng.range(0, 1)).unwrap_or(0);
                let store = &mut services.stores[n];
                let outcome = store
                    .restart_after(libc::SIGKILL, Duration::from_secs(10))
                    .await?;
                println!(
                    "{} fault: {} {} ({outcome}); restarted",
                    at(started),
                    fault.name(),
                    store.name
                );
            }
            Fault::KillNats => {
                println!("{} fault: {} for {lasting:?}", at(started), fault.name());
                if let Some(server) = services.nats.as_mut() {
                    tokio::task::block_in_place(|| server.kill())?;
                    services.wait(lasting, started).await?;
                    if let Some(server) = services.nats.as_mut() {
                        tokio::task::block_in_place(|| server.start_again())?;
                    }
                }
                println!("{} nats-server back", at(started));
            }
            Fault::PostgresRestart | Fault::PostgresCrash => {
                println!("{} fault: {}", at(started), fault.name());
                if let Some(cluster) = dbs.cluster.as_mut() {
                    tokio::task::block_in_place(|| -> anyhow::Result<()> {
                        if fault == Fault::PostgresCrash {
                            cluster.crash_server()?;
                        } else {
                            cluster.stop_server()?;
                        }
                        cluster.start_server()?;
                        Ok(())
                    })
                    .context(fault.name())?;
                }
                println!("{} PostgreSQL back", at(started));
            }
            Fault::DestinationDown => {
                println!("{} fault: {} for {lasting:?}", at(started), fault.name());
                let name = &dbs.destination_name;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
                     SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )))
                .execute(&admin)
                .await?;
                services.wait(lasting, started).await?;
                sqlx::query(AssertSqlSafe(format!(
                    "ALTER DATABASE {name} ALLOW_CONNECTIONS true"
                )))
                .execute(&admin)
                .await?;
                println!("{} destination back", at(started));
            }
            Fault::HoldResponses | Fault::NatsHoldResponses => {
                let target = fault.proxy(&proxy, nats_proxy.as_ref())?;
                println!("{} fault: {} for {lasting:?}", at(started), fault.name());
                target.hold_responses();
                services.wait(lasting, started).await?;
                target.release_responses();
                println!("{} responses pass again", at(started));
            }
            Fault::CutRequests | Fault::NatsCutRequests => {
                let target = fault.proxy(&proxy, nats_proxy.as_ref())?;
                let bytes = usize::try_from(faults_rng.range(0, 4096)).unwrap_or(0);
                println!(
                    "{} fault: {} after {bytes} bytes, for {lasting:?}",
                    at(started),
                    fault.name()
                );
                target.cut_requests_after(bytes);
                services.wait(lasting, started).await?;
                target.cut_requests_after(usize::MAX);
                // The cut connections never resume: closing them lets the clients reconnect.
                target.close_connections();
                println!("{} requests pass again", at(started));
            }
            Fault::CloseConnections | Fault::NatsCloseConnections => {
                fault
                    .proxy(&proxy, nats_proxy.as_ref())?
                    .close_connections();
                println!("{} fault: {}", at(started), fault.name());
            }
            Fault::Latency | Fault::NatsLatency => {
                let target = fault.proxy(&proxy, nats_proxy.as_ref())?;
                let latency = Duration::from_millis(faults_rng.range(5, 200));
                println!(
                    "{} fault: {} of {latency:?} per chunk, for {lasting:?}",
                    at(started),
                    fault.name()
                );
                target.set_latency(latency);
                services.wait(lasting, started).await?;
                target.set_latency(Duration::ZERO);
                println!("{} latency gone", at(started));
            }
            Fault::StreamDeleted => {
                println!("{} fault: {}", at(started), fault.name());
                paused.store(true, Ordering::Relaxed);
                let drained = drain(&mut services, &active, &source, &destination, started).await?
                    && stream_stored(&nats_url, &destination, started).await?;
                if drained {
                    let client = async_nats::connect(nats_url.as_str())
                        .await
                        .context("connecting to NATS to delete the stream")?;
                    // (No stream at all — deleted before, nothing published since — is an
                    // error here: said, not fatal.)
                    match async_nats::jetstream::new(client)
                        .delete_stream(NATS_STREAM)
                        .await
                    {
                        Ok(_) => {
                            streams_deleted += 1;
                            println!("{} stream `{NATS_STREAM}` deleted", at(started));
                        }
                        Err(error) => {
                            println!("{} the stream was not deleted: {error}", at(started));
                        }
                    }
                } else {
                    println!(
                        "{} the pipeline did not drain within {DRAIN_TIMEOUT:?}; the stream \
                         is left alone",
                        at(started)
                    );
                }
                paused.store(false, Ordering::Relaxed);
            }
        }
    }

    // Quiesce: the workload stops, faults are off, the processes run.
    stop.store(true, Ordering::Relaxed);
    let mut commits = 0;
    let mut failures = 0;
    for task in tasks {
        let stats = tokio::time::timeout(Duration::from_secs(300), task)
            .await
            .context("a writer did not stop within 5 minutes")??;
        commits += stats.commits;
        failures += stats.failures;
    }
    let ddl_done = ddl.await?;
    println!(
        "{} workload stopped: {commits} transactions committed, {failures} failed (rolled back), {ddl_done} DDL",
        at(started)
    );
    proxy.release_responses();
    proxy.cut_requests_after(usize::MAX);
    proxy.set_latency(Duration::ZERO);
    if let Some(nats_proxy) = &nats_proxy {
        nats_proxy.set_latency(Duration::ZERO);
        nats_proxy.release_responses();
        nats_proxy.cut_requests_after(usize::MAX);
    }
    services.revive(started)?;
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&source)
        .await?;
    let mut last = (-1i64, String::new());
    let mut stable = 0;
    let mut progress_at = Instant::now();
    let mut stuck = 0u32;
    let stream_check = if nats_url.is_empty() {
        None
    } else {
        let client = async_nats::connect(nats_url.as_str())
            .await
            .context("connecting to NATS to check the stream")?;
        Some(async_nats::jetstream::new(client))
    };
    let quiesced = {
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        loop {
            services.revive(started)?;
            let slot: Option<(String, bool)> = sqlx::query_as(
                "SELECT confirmed_flush_lsn::text, confirmed_flush_lsn >= $1::pg_lsn \
                 FROM pg_replication_slots WHERE slot_name = 'chaos'",
            )
            .bind(&target)
            .fetch_optional(&source)
            .await?;
            let Some((confirmed_at, confirmed)) = slot else {
                println!("{} LOUD: the replication slot `chaos` is gone", at(started));
                break false;
            };
            let count: i64 =
                sqlx::query_scalar("SELECT count(*) FROM changes WHERE \"table\" LIKE 'chaos\\_%'")
                    .fetch_one(&destination)
                    .await
                    .unwrap_or(-1);
            // Heartbeats move the slot on while nothing else happens: `changes` alone says
            // when it is complete; either moving is progress.
            if count == last.0 && count >= 0 {
                stable += 1;
            } else {
                stable = 0;
            }
            if (count, &confirmed_at) != (last.0, &last.1) {
                progress_at = Instant::now();
            }
            last = (count, confirmed_at.clone());
            // Through NATS, the slot is confirmed once the stream has a change: every
            // partition must also be stored up to its last message.
            let stored = match &stream_check {
                Some(jetstream) if confirmed && stable >= 10 => {
                    stream_stored_now(jetstream, &destination).await == Some(true)
                }
                _ => true,
            };
            if confirmed && stable >= 10 && stored {
                break stuck == 0;
            }
            if (!confirmed || !stored) && progress_at.elapsed() >= STALL {
                // A defect: the pipeline stopped without exiting. Said loudly (the run fails),
                // then the worker is killed so that what it stored can still be judged.
                stuck += 1;
                println!(
                    "{} LOUD: STUCK: no progress for {STALL:?} with every fault off (slot confirmed \
                     up to {confirmed_at}, target {target}, {count} changes; every stream \
                     partition stored: {stored})",
                    at(started),
                );
                for worker in &services.workers {
                    println!(
                        "last lines of {}:\n{}",
                        worker.log().display(),
                        tail(worker.log(), 15)
                    );
                }
                for store in &services.stores {
                    println!(
                        "last lines of {}:\n{}",
                        store.log().display(),
                        tail(store.log(), 8)
                    );
                }
                for worker in &mut services.workers {
                    let outcome = worker
                        .restart_after(libc::SIGKILL, Duration::from_secs(10))
                        .await?;
                    println!(
                        "{} {} killed ({outcome}) and restarted",
                        at(started),
                        worker.name
                    );
                }
                progress_at = Instant::now();
            }
            if Instant::now() >= deadline {
                println!(
                    "{} did not quiesce within {QUIESCE_TIMEOUT:?} (slot confirmed up to \
                     {confirmed_at}, target {target}: {confirmed}; {count} changes)",
                    at(started)
                );
                break false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    println!(
        "{} quiesced: {quiesced} ({} changes stored; the pipeline was stuck {stuck} times)",
        at(started),
        last.0
    );

    // Judgement.
    let committed = oracle::committed(&source, skip_unchanged_updates).await?;
    let captured = oracle::captured(&destination).await?;
    let mismatches = compare::compare(&committed, &captured);
    for mismatch in mismatches.iter().take(200) {
        println!("MISMATCH (seed {}): {mismatch}", args.seed);
    }
    if mismatches.len() > 200 {
        println!("… and {} more mismatches", mismatches.len() - 200);
    }
    if !mismatches.is_empty() {
        // What the worker kept of its position and the schema history: where a lost key or a
        // misplaced version comes from.
        let history: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT 'history', relid::text, lsn::text,                     (SELECT string_agg(c->>'name', ',') FROM jsonb_array_elements(schema::jsonb->'columns') c)                FROM _bemi_worker_schema              UNION ALL              SELECT 'state', slot, last_lsn::text,                     coalesce(partial_commit_lsn::text || ' at ' || partial_position::text, '')                FROM _bemi_worker_state ORDER BY 1, 2, 3",
        )
        .fetch_all(&destination)
        .await
        .unwrap_or_default();
        for (what, id, lsn, detail) in history {
            println!("{what}: {id} {lsn} {detail}");
        }
    }
    let mut kinds_of_mismatch: BTreeMap<String, usize> = BTreeMap::new();
    for mismatch in &mismatches {
        *kinds_of_mismatch.entry(mismatch.kind()).or_default() += 1;
    }

    // The hash chain over `changes` must be intact through every fault (exactly-once and the
    // chain's continuity hold together): `bemi verify`, as an auditor would run it.
    let chain_started = Instant::now();
    // A debug build on two busy cores re-hashes some 1 000 changes a second: 2 minutes, and a
    // minute more per 25 000 changes (a 20-minute run stores ~700 000).
    let verify_timeout = Duration::from_secs(120 + 60 * (captured.len() as u64 / 25_000));
    let chain = bemi
        .run(
            &["verify", "--destination-url", &dbs.destination],
            &[("RUST_LOG".to_owned(), "warn".to_owned())],
            verify_timeout,
        )
        .await;
    match &chain {
        Ok(()) => println!(
            "{} bemi verify: every chain intact ({:?})",
            at(started),
            chain_started.elapsed()
        ),
        Err(error) => println!("{} LOUD: bemi verify found a break: {error:#}", at(started)),
    }

    // What cannot be survived must be said: the slot dropped while no worker runs, then one
    // started again must report it (changes committed meanwhile are not captured).
    let slot_loss_reported = lose_the_slot(&mut services, &source, started).await?;

    for proc in services
        .workers
        .iter_mut()
        .chain(services.stores.iter_mut())
    {
        let _ = proc.signal(libc::SIGTERM);
    }
    let exits: u32 = services
        .workers
        .iter()
        .chain(&services.stores)
        .map(|proc| proc.unexpected_exits)
        .sum();
    println!("--- summary");
    println!("seed: {}", args.seed);
    println!("minutes: {}", args.minutes);
    println!("mode: {}", if args.nats { "nats" } else { "direct" });
    println!(
        "writers: {writers}; transactions committed: {commits}, failed: {failures}; DDL: {ddl_done}"
    );
    let injected: Vec<String> = faults
        .iter()
        .map(|(fault, count)| format!("{}: {count}", fault.name()))
        .collect();
    println!(
        "faults injected ({}): {}",
        faults.values().sum::<u32>(),
        injected.join(", ")
    );
    println!("processes that exited on their own (restarted): {exits}");
    println!(
        "changes compared: {} committed (oracle), {} in changes",
        committed.len(),
        captured.len()
    );
    println!("mismatches: {}", mismatches.len());
    for (kind, count) in &kinds_of_mismatch {
        println!("  {kind}: {count}");
    }
    // A deleted stream must be said loudly by the stores (each partition that sees the new
    // stream warns), never passed over in silence.
    let resets_reported: usize = services
        .stores
        .iter()
        .map(|store| {
            std::fs::read_to_string(store.log())
                .unwrap_or_default()
                .matches("was deleted and created again")
                .count()
        })
        .sum();
    let resets_loud = streams_deleted == 0 || resets_reported >= 1;
    if args.nats {
        println!(
            "streams deleted: {streams_deleted}; resets the stores reported: {resets_reported}{}",
            if resets_loud {
                ""
            } else {
                " — LOUD: a deleted stream went unreported"
            }
        );
    }
    println!(
        "SIGTERMs that did not end a worker cleanly: {unclean_exits}{}",
        if unclean_exits == 0 { "" } else { " — LOUD" }
    );
    println!(
        "a dropped slot reported by the worker: {}",
        if slot_loss_reported {
            "yes"
        } else {
            "NO — LOUD: the loss went unreported"
        }
    );
    println!("logs: {}", log_dir.display());
    Ok(quiesced
        && mismatches.is_empty()
        && chain.is_ok()
        && resets_loud
        && unclean_exits == 0
        && slot_loss_reported)
}

/// The `RUST_LOG` of the processes the runner starts: the runner's own `RUST_LOG` when set
/// (e.g. `info,bemi_worker=debug` to follow a failing seed), else `info`.
fn log_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned())
}

/// With the workload paused: waits until the slot confirmed everything written so far and
/// `changes` stopped growing (every message the stream held is stored); whether it did within
/// [`DRAIN_TIMEOUT`].
async fn drain(
    services: &mut Services,
    active: &AtomicUsize,
    source: &PgPool,
    destination: &PgPool,
    started: Instant,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    // The writers finish the transactions they are in (a bulk insert may take a while).
    while active.load(Ordering::SeqCst) > 0 {
        if Instant::now() >= deadline {
            println!(
                "{} {} writers still in a transaction after {DRAIN_TIMEOUT:?}",
                at(started),
                active.load(Ordering::SeqCst)
            );
            return Ok(false);
        }
        services.wait(Duration::from_millis(100), started).await?;
    }
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(source)
        .await?;
    let (mut last, mut stable) = (-1i64, 0);
    while Instant::now() < deadline {
        services.wait(Duration::from_millis(500), started).await?;
        let confirmed: bool = sqlx::query_scalar(
            "SELECT coalesce(bool_or(confirmed_flush_lsn >= $1::pg_lsn), false) \
               FROM pg_replication_slots WHERE slot_name = 'chaos'",
        )
        .bind(&target)
        .fetch_one(source)
        .await?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM changes")
            .fetch_one(destination)
            .await
            .unwrap_or(-1);
        stable = if count == last && count >= 0 {
            stable + 1
        } else {
            0
        };
        last = count;
        if confirmed && stable >= 4 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            println!(
                "{} not drained: the slot confirmed up to {target}: {confirmed}; {count} changes \
                 ({stable} polls unchanged)",
                at(started)
            );
        }
    }
    Ok(false)
}

/// Stops both workers, drops the slot, starts the standby alone again and waits (up to a
/// minute) for it to report the lost slot; whether it did.
async fn lose_the_slot(
    services: &mut Services,
    source: &PgPool,
    started: Instant,
) -> anyhow::Result<bool> {
    const REPORTED: &str = "did not exist and was created now";
    for worker in &mut services.workers {
        let outcome = worker.stop(libc::SIGTERM, Duration::from_secs(60)).await?;
        println!("{} {} stopped ({outcome})", at(started), worker.name);
    }
    // The walsender of a stopped worker may take a moment to notice.
    poll(
        "the slot to be released",
        Duration::from_secs(60),
        || async {
            Ok(!sqlx::query_scalar::<_, bool>(
                "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots \
              WHERE slot_name = 'chaos'",
            )
            .fetch_one(source)
            .await?)
        },
    )
    .await?;
    sqlx::query("SELECT pg_drop_replication_slot('chaos')")
        .execute(source)
        .await
        .context("dropping the slot")?;
    println!("{} slot `chaos` dropped", at(started));
    let standby = &mut services.workers[1];
    let before = std::fs::read_to_string(standby.log())
        .unwrap_or_default()
        .matches(REPORTED)
        .count();
    standby.start_again()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let now = std::fs::read_to_string(standby.log())
            .unwrap_or_default()
            .matches(REPORTED)
            .count();
        if now > before {
            println!("{} {} reported the lost slot", at(started), standby.name);
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(false)
}

/// Whether every message of the stream is stored, polled for up to [`DRAIN_TIMEOUT`] (see
/// [`stream_stored_now`]).
async fn stream_stored(
    nats_url: &str,
    destination: &PgPool,
    started: Instant,
) -> anyhow::Result<bool> {
    let client = async_nats::connect(nats_url)
        .await
        .context("connecting to NATS to check the stream")?;
    let jetstream = async_nats::jetstream::new(client);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < deadline {
        if stream_stored_now(&jetstream, destination).await == Some(true) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{} the stores did not reach the stream's end within {DRAIN_TIMEOUT:?}",
        at(started)
    );
    Ok(false)
}

/// Whether every message of the stream is stored: for each partition, the store's recorded
/// position — of this very stream, not one deleted before — reaches its last message. (A
/// stable `changes` count is not enough: a partition whose store was just killed waits for
/// another store to take it over, and a store that cannot write a partition retries forever.)
/// `None` when NATS gave no answer: fails closed — an error (the runner's own connection goes
/// through the fault proxy) is never taken for "no stream" or "an empty partition" (a
/// 20-minute run deleted a stream that held ~65 s of changes after such an answer, it seems).
async fn stream_stored_now(
    jetstream: &async_nats::jetstream::Context,
    destination: &PgPool,
) -> Option<bool> {
    let mut stream = match jetstream.get_stream(NATS_STREAM).await {
        Ok(stream) => stream,
        // No stream (deleted, and nothing published since): nothing to store.
        Err(error)
            if matches!(error.kind(), GetStreamErrorKind::JetStream(ref e)
                if e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Some(true);
        }
        Err(_) => return None,
    };
    let created = stream.info().await.ok()?.created.to_string();
    let positions: Vec<(i32, i64, String)> = sqlx::query_as(
        "SELECT partition, last_sequence, stream_created FROM _bemi_store_state \
          WHERE stream = $1",
    )
    .bind(NATS_STREAM)
    .fetch_all(destination)
    .await
    .ok()?;
    for partition in 0..MAX_PARTITIONS {
        let subject = format!("{NATS_STREAM}.changes.{partition}");
        let last = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(last) => last,
            // An empty partition has nothing to store.
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
            Err(_) => return None,
        };
        let position = positions
            .iter()
            .find(|(p, _, of)| u32::try_from(*p) == Ok(partition) && *of == created)
            .map_or(0, |(_, sequence, _)| u64::try_from(*sequence).unwrap_or(0));
        if position < last.sequence {
            return Some(false);
        }
    }
    Some(true)
}
