#![doc = include_str!("../README.md")]

mod at;
mod audit_db;
mod changes;
mod dev;
#[cfg(test)]
mod fuzz;
mod history;
mod metrics_server;
mod migration;
mod prune;
mod restore;
mod revert;
mod shutdown;
mod store;
mod text;
mod time;
mod ui;
mod verify;
mod worker;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::Parser;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The `bemi` command line.
///
/// ```
/// use clap::Parser as _;
///
/// let cli = bemi_cli::Cli::try_parse_from(["bemi", "migration", "sql", "--down"]).unwrap();
/// assert!(bemi_cli::Cli::try_parse_from(["bemi", "unknown"]).is_err());
/// ```
#[derive(Debug, Parser)]
#[command(
    name = "bemi",
    version,
    about = "Context-aware audit trails for PostgreSQL: install tracking, capture changes, read them",
    long_about = None,
    after_help = "Every flag can also be set with the environment variable shown in its help \
                  (lists comma-separated). Logs go to stderr; RUST_LOG changes their level \
                  (default: info)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the tracking migration, or write it as files for your migration tool.
    Migration {
        #[command(subcommand)]
        command: migration::MigrationCommand,
    },
    /// Install tracking (triggers, REPLICA IDENTITY FULL) in DATABASE_URL. Idempotent.
    Migrate(migration::MigrateArgs),
    /// Capture changes from DATABASE_URL into the `changes` table until SIGINT or SIGTERM.
    Worker(worker::WorkerArgs),
    /// Write a NATS JetStream change stream (from `bemi worker --sink`) into `changes`, until
    /// SIGINT or SIGTERM. Several can run at once: they share the stream's partitions.
    Store(store::StoreArgs),
    /// Print captured changes, newest first.
    Changes(changes::ChangesArgs),
    /// Print everything that happened to one row, oldest first.
    History(history::HistoryArgs),
    /// Print a row, or a whole table, as it was at an instant: `bemi at TABLE [PK] TIME`.
    At(at::AtArgs),
    /// Undo a change, a transaction, or every change of a request, in DATABASE_URL.
    Revert(revert::RevertArgs),
    /// Put tables back (or forward) to their state at an instant, in DATABASE_URL.
    Restore(restore::RestoreArgs),
    /// Remove changes older than a bound, in short batches (drops old monthly partitions).
    Prune(prune::PruneArgs),
    /// Start a throwaway PostgreSQL with tracking, a worker and the web UI; Ctrl-C stops it
    /// and removes it.
    Dev(dev::DevArgs),
    /// Serve the audit trail's web UI (127.0.0.1:8080 by default) until SIGINT or SIGTERM.
    Ui(ui::UiArgs),
    /// Check that the audit trail is unaltered: recompute its hash chain and check the signed
    /// checkpoints; exits non-zero naming the first break.
    Verify(verify::VerifyArgs),
    /// Make a key pair that signs the hash chain's checkpoints.
    Keygen(verify::KeygenArgs),
}

/// Runs the `bemi` tool with the process's arguments: parses them, sets up logging on stderr,
/// runs the command on a new tokio runtime, and prints an error (which says what to do next)
/// before returning a failure code. Exit codes: 0 success, 1 error, 2 bad arguments.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     bemi_cli::main()
/// }
/// ```
pub fn main() -> ExitCode {
    bemi_worker::install_crypto_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging();
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
    let result = runtime.block_on(run(cli));
    // Tasks still running (e.g. a metrics server) must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {error:#}");
            if error.downcast_ref::<time::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs a parsed command line; for embedding in an async program that has its own runtime and
/// logging.
///
/// ```no_run
/// use clap::Parser as _;
///
/// # async fn run() -> anyhow::Result<()> {
/// let cli = bemi_cli::Cli::parse_from(["bemi", "changes", "--table", "todo", "--limit", "5"]);
/// bemi_cli::run(cli).await?;
/// # Ok(()) }
/// ```
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migration { command } => migration::run_migration(command),
        Command::Migrate(args) => migration::run_migrate(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Store(args) => store::run(args).await,
        Command::Changes(args) => changes::run(args).await,
        Command::History(args) => history::run(args).await,
        Command::At(args) => at::run(args).await,
        Command::Revert(args) => revert::run(args).await,
        Command::Restore(args) => restore::run(args).await,
        Command::Prune(args) => prune::run(args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Ui(args) => ui::run(args).await,
        Command::Verify(args) => verify::run(args).await,
        Command::Keygen(args) => verify::keygen(&args),
    }
}

/// Logs to stderr, `info` unless `RUST_LOG` says otherwise. Does nothing if the program already
/// installed a subscriber.
fn init_logging() {
    use tracing_subscriber::EnvFilter;

    // PostgreSQL's NOTICEs ("… does not exist, skipping") are noise here; its WARNINGs are not.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal, never in a log file or a journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The source database, shared by the commands that need it.
#[derive(Debug, Clone, clap::Args)]
struct SourceArgs {
    /// The database whose changes are tracked (a PostgreSQL URL).
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
}

impl SourceArgs {
    fn url(&self) -> anyhow::Result<&str> {
        self.database_url
            .as_deref()
            .filter(|url| !url.trim().is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "no database given: set DATABASE_URL (or pass --database-url), e.g. \
                     DATABASE_URL=postgres://USER:PASSWORD@127.0.0.1:5432/DATABASE"
                )
            })
    }
}

/// A small pool; the error names the (password-less) URL and what to check.
async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(15))
        .connect(url)
        .await
        .map_err(|error| {
            anyhow!(
                "could not connect to {}: {error}. Check the URL, that the server is running and \
                 accepts connections from here, and the user's password",
                bemi_worker::without_password(url)
            )
        })
}

/// Writes `text` to stdout and flushes it.
fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// clap's parser for boolean flags set from the environment: `1`/`0`, `true`/`false`,
/// `yes`/`no`, `on`/`off`.
fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// The help of `bemi COMMAND`.
    fn help(command: &str) -> String {
        let mut bemi = Cli::command();
        bemi.build();
        let sub = bemi.find_subcommand_mut(command).unwrap();
        format!("{}\n{}", sub.render_usage(), sub.render_help())
    }

    #[test]
    fn audit_commands_name_the_destination_url_they_read() {
        for command in ["changes", "history", "at", "prune"] {
            let help = help(command);
            assert!(
                help.contains("--destination-url <URL>") && help.contains("BEMI_DESTINATION_URL"),
                "{command}: {help}"
            );
            // They read DATABASE_URL only as the default of --destination-url.
            assert!(!help.contains("--database-url"), "{command}: {help}");
            assert!(help.contains("default: the source database, DATABASE_URL"));
        }
        // `bemi revert` writes into the source and reads the audit trail: both.
        let revert = help("revert");
        assert!(
            revert.contains("--database-url <URL>") && revert.contains("--destination-url <URL>"),
            "{revert}"
        );
    }

    #[test]
    fn positional_arguments_are_not_read_from_the_environment() {
        for command in ["history", "at"] {
            let help = help(command);
            let arguments = help
                .split("Options:")
                .next()
                .and_then(|head| head.split("Arguments:").nth(1))
                .unwrap();
            assert!(!arguments.contains("env:"), "{command}: {arguments}");
        }
    }
}
