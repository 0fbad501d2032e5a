//! The `bemi` command-line tool: install tracking, run the capture worker, read the audit trail,
//! and start a throwaway development database.
//!
//! | command | what it does |
//! |---|---|
//! | `bemi migration sql [--down]` | prints the migration that installs (removes) tracking |
//! | `bemi migration create DIR` | writes it as a sqlx-migrate pair `DIR/<timestamp>_bemi.{up,down}.sql` |
//! | `bemi migrate` | applies it to `DATABASE_URL` (idempotent) |
//! | `bemi worker` | captures changes into the `changes` table until SIGINT/SIGTERM |
//! | `bemi changes` | prints captured changes: a table, `--json` lines, `--follow` |
//! | `bemi history TABLE PK` | everything that happened to one row, oldest first |
//! | `bemi at TABLE [PK] TIME` | a row, or the whole table, as it was at an instant |
//! | `bemi revert` | undoes a change, a transaction or a request (`--context`), `--dry-run`, `--force` |
//! | `bemi prune --older-than 90d` | removes old changes in short batches (drops old partitions) |
//! | `bemi dev` | an ephemeral PostgreSQL with tracking and a worker, until Ctrl-C |
//!
//! Every flag can also be set with an environment variable (`DATABASE_URL`,
//! `BEMI_DESTINATION_URL`, `BEMI_SLOT`, …; lists comma-separated); `bemi help COMMAND` lists them.
//!
//! Another binary can offer the same tool with [`main`]:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     bemi_worker::cli::main()
//! }
//! ```

mod at;
mod audit_db;
pub mod changes;
mod dev;
mod history;
pub mod migration;
mod prune;
mod revert;
pub mod rows_table;
pub mod shutdown;
pub mod table;
pub mod tail;
pub mod time;
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
/// let cli = bemi_worker::cli::Cli::try_parse_from(["bemi", "migration", "sql", "--down"]).unwrap();
/// assert!(bemi_worker::cli::Cli::try_parse_from(["bemi", "unknown"]).is_err());
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
    /// Print captured changes, newest first.
    Changes(changes::ChangesArgs),
    /// Print everything that happened to one row, oldest first.
    History(history::HistoryArgs),
    /// Print a row, or a whole table, as it was at an instant: `bemi at TABLE [PK] TIME`.
    At(at::AtArgs),
    /// Undo a change, a transaction, or every change of a request, in DATABASE_URL.
    Revert(revert::RevertArgs),
    /// Remove changes older than a bound, in short batches (drops old monthly partitions).
    Prune(prune::PruneArgs),
    /// Start a throwaway PostgreSQL with tracking and a worker; Ctrl-C stops it and removes it.
    Dev(dev::DevArgs),
}

/// Runs the `bemi` tool with the process's arguments: parses them, sets up logging on stderr,
/// runs the command on a new tokio runtime, and prints an error (which says what to do next)
/// before returning a failure code. Exit codes: 0 success, 1 error, 2 bad arguments.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     bemi_worker::cli::main()
/// }
/// ```
pub fn main() -> ExitCode {
    crate::tls::install_crypto_provider();
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
            ExitCode::FAILURE
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
/// let cli = bemi_worker::cli::Cli::parse_from(["bemi", "changes", "--table", "todo", "--limit", "5"]);
/// bemi_worker::cli::run(cli).await?;
/// # Ok(()) }
/// ```
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migration { command } => migration::run_migration(command),
        Command::Migrate(args) => migration::run_migrate(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Changes(args) => changes::run(args).await,
        Command::History(args) => history::run(args).await,
        Command::At(args) => at::run(args).await,
        Command::Revert(args) => revert::run(args).await,
        Command::Prune(args) => prune::run(args).await,
        Command::Dev(args) => dev::run(args).await,
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
                without_password(url)
            )
        })
}

/// `url` with its passwords replaced by `***`, for logs and messages: the one of the user
/// info (`user:PASSWORD@`) and the values of the `password` and `sslpassword` query
/// parameters (their names compared as libpq and sqlx read them: percent-decoded; here in any
/// case). Everything else is kept as written.
///
/// ```
/// use bemi_worker::cli::without_password;
///
/// assert_eq!(without_password("postgres://bemi:s3cret@db:5432/app"), "postgres://bemi:***@db:5432/app");
/// assert_eq!(
///     without_password("postgres://bemi@db/app?password=s3cret&sslmode=require"),
///     "postgres://bemi@db/app?password=***&sslmode=require"
/// );
/// assert_eq!(without_password("postgres://db/app"), "postgres://db/app");
/// ```
pub fn without_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    // The user info ends at the last `@` of the URL, so that a password with an unencoded `/`,
    // `#`, `?` or `@` is masked whole (an `@` in a query value masks more, never less).
    let user_info_end = url[scheme_end..].rfind('@').map(|i| scheme_end + i);
    let host_start = user_info_end.unwrap_or(scheme_end);
    let (before_query, query) = match url[host_start..].find('?') {
        Some(i) => url.split_at(host_start + i),
        None => (url, ""),
    };
    let mut masked = String::with_capacity(url.len() + 8);
    let colon = user_info_end.and_then(|end| url[scheme_end..end].find(':'));
    match (user_info_end, colon) {
        (Some(end), Some(colon)) => {
            masked.push_str(&url[..scheme_end + colon]);
            masked.push_str(":***");
            masked.push_str(&before_query[end..]);
        }
        _ => masked.push_str(before_query),
    }
    let Some(query) = query.strip_prefix('?') else {
        return masked;
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    masked.push('?');
    let mut hid_one = false;
    for (i, parameter) in query.split('&').enumerate() {
        if i > 0 {
            masked.push('&');
        }
        match parameter.split_once('=') {
            Some((name, _)) if is_password_parameter(name) => {
                masked.push_str(name);
                masked.push_str("=***");
                hid_one = true;
            }
            _ => masked.push_str(parameter),
        }
    }
    if let Some(fragment) = fragment {
        masked.push('#');
        // An unencoded `#` in a password value starts a "fragment" that is the rest of it.
        masked.push_str(if hid_one { "***" } else { fragment });
    }
    masked
}

/// Whether a URL query parameter's name (as written) is a password's.
fn is_password_parameter(name: &str) -> bool {
    let decoded: String = url::form_urlencoded::parse(name.as_bytes())
        .map(|(key, _)| key.into_owned())
        .collect();
    ["password", "sslpassword"]
        .iter()
        .any(|secret| decoded.trim().eq_ignore_ascii_case(secret))
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

    use super::{Cli, without_password};

    #[test]
    fn passwords_of_the_user_info_and_of_the_query_are_hidden() {
        let cases = [
            (
                "postgres://bemi:s3cret@db:5432/app?sslmode=require",
                "postgres://bemi:***@db:5432/app?sslmode=require",
            ),
            (
                "postgres://u@h/db?password=SECRET&sslmode=require",
                "postgres://u@h/db?password=***&sslmode=require",
            ),
            (
                "postgres://h/db?sslmode=verify-full&password=SECRET",
                "postgres://h/db?sslmode=verify-full&password=***",
            ),
            (
                "postgres://u:one@h/db?user=u&password=two&sslpassword=three&application_name=x",
                "postgres://u:***@h/db?user=u&password=***&sslpassword=***&application_name=x",
            ),
            // Names as libpq and sqlx decode them.
            (
                "postgres://h/db?pass%77ord=SECRET&Password=SECRET",
                "postgres://h/db?pass%77ord=***&Password=***",
            ),
            // A password with unencoded `/`, `#` or `@` is hidden whole.
            ("postgres://u:se/cr#e@t@h/db", "postgres://u:***@h/db"),
            // … and `?`; a `#` in a password value starts the "fragment": hidden too.
            ("postgres://u:Se?cret1@h/db", "postgres://u:***@h/db"),
            (
                "postgres://h/db?password=SECRET#frag",
                "postgres://h/db?password=***#***",
            ),
            (
                "postgres://h/db?sslmode=require#frag",
                "postgres://h/db?sslmode=require#frag",
            ),
            // Nothing to hide: unchanged.
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h/db?", "postgres://h/db?"),
            (
                "postgres://h/db?sslmode=require&passwordless=1",
                "postgres://h/db?sslmode=require&passwordless=1",
            ),
            ("postgres://h/db?password", "postgres://h/db?password"),
            ("not a url", "not a url"),
        ];
        for (url, expected) in cases {
            let masked = without_password(url);
            assert_eq!(masked, expected, "{url}");
            assert!(
                !masked.contains("SECRET") && !masked.contains("s3cret"),
                "{masked}"
            );
        }
    }

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
