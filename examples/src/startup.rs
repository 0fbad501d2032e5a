//! The scaffold of the example binaries: read `--addr`, find or start the database, create the
//! todo table, install bemi's triggers, serve the app until Ctrl-C. Each binary is one call:
//!
//! ```no_run
//! use bemi_examples::startup::{self, App, Example};
//!
//! fn main() -> std::process::ExitCode {
//!     startup::main(&Example {
//!         name: "todo-axum",
//!         path: "/todo",
//!         app: App::Axum(bemi_examples::axum_app::router),
//!     })
//! }
//! ```
//!
//! The steps are public too, to serve an example from a test or another program:
//!
//! ```no_run
//! use bemi_examples::startup::{self, App, Database, Example};
//!
//! # async fn run() -> Result<(), startup::StartupError> {
//! let example = Example { name: "todo-axum", path: "/todo", app: App::Axum(bemi_examples::axum_app::router) };
//! let database = Database::from_env().await?; // DATABASE_URL, or an embedded PostgreSQL
//! let listener = startup::listen("127.0.0.1:3000".parse().unwrap()).await?;
//! startup::serve(&example, &database.url(), listener, startup::ctrl_c()).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;

use bemi_dev::{DevDatabase, LaunchError};
use bemi_sqlx::BemiPool;
#[cfg(feature = "actix")]
use bemi_tokio_postgres::BemiClient;
use clap::Parser as _;
use sqlx::{Connection as _, PgPool};

use crate::todo;

/// How many connections the listening socket queues before they are accepted, for bursts of
/// connections.
///
/// ```
/// assert_eq!(bemi_examples::startup::BACKLOG, 1024);
/// ```
pub const BACKLOG: u32 = 1024;

/// An example binary: its name (in messages), the path its requests go to (in the start-up
/// log) and its app.
///
#[derive(Debug, Clone, Copy)]
pub struct Example {
    /// The binary's name, e.g. `todo-axum`.
    pub name: &'static str,
    /// The path of its API, e.g. `/todo`.
    pub path: &'static str,
    /// The app.
    pub app: App,
}

/// An app being made from the database URL.
pub type RouterFuture = Pin<Box<dyn Future<Output = Result<axum::Router, StartupError>> + Send>>;

/// Makes an app from the database URL.
pub type MakeRouter = fn(String) -> RouterFuture;

/// The app of an example.
///
/// ```
/// use bemi_examples::startup::App;
///
/// let axum = App::Axum(bemi_examples::axum_app::router);
/// # let _ = axum;
/// ```
#[derive(Debug, Clone, Copy)]
pub enum App {
    /// An axum app on the sqlx adapter, made from the pool.
    Axum(fn(BemiPool) -> axum::Router),
    /// An axum app on another database library, made from the database URL (once the table
    /// and tracking are in place).
    Router(MakeRouter),
    /// An actix-web server on the tokio-postgres adapter, made from the client, the listener
    /// and the number of worker threads (e.g. `crate::actix_app::server`).
    #[cfg(feature = "actix")]
    Actix(fn(BemiClient, std::net::TcpListener, usize) -> std::io::Result<actix_web::dev::Server>),
}

/// The whole of an example binary: logs, `--addr`, the database, serving until Ctrl-C. Errors
/// are printed as `NAME: error`, with a failing exit code.
///
/// ```no_run
/// use bemi_examples::startup::{self, App, Example};
///
/// fn main() -> std::process::ExitCode {
///     startup::main(&Example { name: "todo-axum", path: "/todo", app: App::Axum(bemi_examples::axum_app::router) })
/// }
/// ```
pub fn main(example: &Example) -> ExitCode {
    init_logging();
    // The app's sqlx connections may ask for sslmode=verify-ca (see bemi_worker::install_crypto_provider).
    bemi_worker::install_crypto_provider();
    let args = Args::parse();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartupError::Runtime)
        .and_then(|runtime| runtime.block_on(run(example, args)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}: {error}", example.name);
            ExitCode::FAILURE
        }
    }
}

/// Finds or starts the database, listens on `--addr` and [`serve`]s until Ctrl-C.
///
/// ```no_run
/// use bemi_examples::startup::{self, App, Args, Example};
/// use clap::Parser as _;
///
/// # async fn run() -> Result<(), startup::StartupError> {
/// let example = Example { name: "todo-axum", path: "/todo", app: App::Axum(bemi_examples::axum_app::router) };
/// startup::run(&example, Args::parse()).await
/// # }
/// ```
pub async fn run(example: &Example, args: Args) -> Result<(), StartupError> {
    let database = Database::from_env().await?;
    database.log_url(example.name);
    let listener = listen(args.addr).await?;
    serve(example, &database.url(), listener, ctrl_c()).await
}

/// Prepares the database of `url` ([`prepare_database`]), then serves the example's app on
/// `listener` until `shutdown` resolves (in-flight requests are finished first).
///
/// ```no_run
/// use bemi_examples::startup::{self, App, Example};
///
/// # async fn run(url: &str) -> Result<(), startup::StartupError> {
/// let example = Example { name: "todo-axum", path: "/todo", app: App::Axum(bemi_examples::axum_app::router) };
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// startup::serve(&example, url, listener, startup::ctrl_c()).await
/// # }
/// ```
pub async fn serve(
    example: &Example,
    url: &str,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let pool = prepare_database(url).await?;
    let addr = listener.local_addr().map_err(StartupError::Serve)?;
    let listening = || {
        tracing::info!(
            "{} listening on http://{addr}{}",
            example.name,
            example.path
        );
    };
    match example.app {
        App::Axum(router) => {
            let app = router(BemiPool::new(pool));
            listening();
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(StartupError::Serve)
        }
        App::Router(make) => {
            // The table and the triggers went through sqlx; requests use the app's library.
            pool.close().await;
            let app = make(url.to_owned()).await?;
            listening();
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(StartupError::Serve)
        }
        #[cfg(feature = "actix")]
        App::Actix(server) => {
            // The table and the triggers went through sqlx; requests use tokio-postgres.
            pool.close().await;
            let client = connect_tokio_postgres(url).await?;
            let listener = listener.into_std().map_err(StartupError::Serve)?;
            let workers = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
            let server = server(client, listener, workers).map_err(StartupError::Serve)?;
            let handle = server.handle();
            listening();
            let mut server = std::pin::pin!(server);
            tokio::select! {
                result = &mut server => result.map_err(StartupError::Serve),
                () = shutdown => {
                    // The server future carries out the stop: poll both.
                    let (result, ()) = tokio::join!(server, handle.stop(true));
                    result.map_err(StartupError::Serve)
                }
            }
        }
    }
}

/// The command line of the example binaries.
///
/// ```
/// use clap::Parser as _;
///
/// let args = bemi_examples::startup::Args::parse_from(["todo-axum", "--addr", "127.0.0.1:8080"]);
/// assert_eq!(args.addr.port(), 8080);
/// ```
#[derive(Debug, Clone, clap::Parser)]
#[command(
    about = "A todo app whose writes carry each request's context into the audit trail",
    long_about = None
)]
pub struct Args {
    /// The address to listen on.
    #[arg(long, env = "BEMI_EXAMPLE_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,
}

/// What can go wrong before an example serves requests.
///
/// ```
/// let error = bemi_examples::startup::StartupError::Listen {
///     addr: "127.0.0.1:3000".parse().unwrap(),
///     source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
/// };
/// assert!(error.to_string().contains("--addr"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The embedded PostgreSQL did not start.
    #[error(
        "could not start an embedded PostgreSQL ({0}); install the PostgreSQL server binaries \
         (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL to a server with \
         wal_level=logical"
    )]
    Launch(#[from] LaunchError),
    /// The thread that starts the embedded PostgreSQL failed.
    #[error("the embedded PostgreSQL launcher failed: {0}")]
    Launcher(#[from] tokio::task::JoinError),
    /// No connection to the database.
    #[error("could not connect to {url}: {source}; check DATABASE_URL")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// The driver's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The todo table or the triggers could not be installed.
    #[error(
        "could not create the todo table or install bemi's triggers: {0}; the database user \
         needs to own the table (a superuser also tracks tables created later)"
    )]
    Migrate(#[source] sqlx::Error),
    /// The address is taken or not ours.
    #[error("could not listen on {addr}: {source}; pass another --addr or set BEMI_EXAMPLE_ADDR")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed while serving.
    #[error("the server failed: {0}; see the log above, then start the app again")]
    Serve(#[source] std::io::Error),
    /// The async runtime could not be started.
    #[error("could not start the async runtime: {0}; check the process's thread and file limits")]
    Runtime(#[source] std::io::Error),
}

/// The database of an example: the server of `DATABASE_URL`, or an embedded PostgreSQL that
/// lives (and is removed) with this value.
///
/// ```no_run
/// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
/// let database = bemi_examples::startup::Database::from_env().await?;
/// println!("DATABASE_URL={}", database.url());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Database {
    dev: DevDatabase,
}

impl Database {
    /// `DATABASE_URL` when it is set, else a new embedded PostgreSQL (started on a blocking
    /// thread: it runs `initdb`).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
    /// let database = bemi_examples::startup::Database::from_env().await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_env() -> Result<Self, StartupError> {
        let dev = tokio::task::spawn_blocking(DevDatabase::from_env).await??;
        Ok(Self { dev })
    }

    /// The connection URL.
    ///
    /// ```no_run
    /// # async fn run(database: bemi_examples::startup::Database) {
    /// let url = database.url();
    /// # }
    /// ```
    pub fn url(&self) -> String {
        self.dev.url()
    }

    /// Whether this is an embedded PostgreSQL started by this process.
    ///
    /// ```no_run
    /// # async fn run(database: bemi_examples::startup::Database) {
    /// if database.is_embedded() {
    ///     println!("the database goes away when the app stops");
    /// }
    /// # }
    /// ```
    pub fn is_embedded(&self) -> bool {
        matches!(self.dev, DevDatabase::Ephemeral(_))
    }

    /// What to log about the database when `app` starts: an embedded database's whole URL
    /// (a throwaway cluster on 127.0.0.1 whose password is random, so that its changes can be
    /// captured and read while the app runs), or the `DATABASE_URL` server without the
    /// password.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
    /// let database = bemi_examples::startup::Database::from_env().await?;
    /// for line in database.describe("todo-axum") {
    ///     eprintln!("{line}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn describe(&self, app: &str) -> Vec<String> {
        let url = self.url();
        if self.is_embedded() {
            vec![
                format!(
                    "{app}: embedded PostgreSQL (wal_level=logical), removed when the app stops: \
                     DATABASE_URL={url}"
                ),
                format!(
                    "{app}: no capture worker runs in the app: with that DATABASE_URL, \
                     `bemi worker` (in another terminal) captures the changes into the `changes` \
                     table, and `bemi changes --table todo` prints them"
                ),
            ]
        } else {
            vec![format!(
                "{app}: database from DATABASE_URL ({}); a `bemi worker` on it (`bemi dev` runs \
                 one) captures the changes into the `changes` table",
                without_password(&url)
            )]
        }
    }

    /// Logs [`Database::describe`] at level INFO.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
    /// bemi_examples::startup::Database::from_env().await?.log_url("todo-axum");
    /// # Ok(()) }
    /// ```
    pub fn log_url(&self, app: &str) {
        for line in self.describe(app) {
            tracing::info!("{line}");
        }
    }
}

/// Connects, creates the todo table if it is missing and installs bemi's triggers
/// ([`bemi_sqlx::migration::migrate`]). Returns the (plain) pool.
///
/// ```no_run
/// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
/// let pool = bemi_examples::startup::prepare_database("postgres://localhost/app").await?;
/// let pool = bemi_sqlx::BemiPool::new(pool);
/// # Ok(()) }
/// ```
pub async fn prepare_database(url: &str) -> Result<PgPool, StartupError> {
    // One plain connection first: it fails at once with the driver's error, where the pool would
    // keep retrying until its acquire timeout.
    let probe = sqlx::PgConnection::connect(url)
        .await
        .map_err(|error| connect_error(url, error))?;
    probe
        .close()
        .await
        .map_err(|error| connect_error(url, error))?;
    let pool = PgPool::connect(url)
        .await
        .map_err(|error| connect_error(url, error))?;
    sqlx::raw_sql(todo::CREATE_TABLE)
        .execute(&pool)
        .await
        .map_err(StartupError::Migrate)?;
    bemi_sqlx::migration::migrate(&pool, Default::default())
        .await
        .map_err(StartupError::Migrate)?;
    Ok(pool)
}

/// A tokio-postgres client of `url` wrapped by bemi's adapter; its connection runs in a task
/// of the current runtime.
///
#[cfg(feature = "actix")]
pub async fn connect_tokio_postgres(url: &str) -> Result<BemiClient, StartupError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|error| connect_error(url, error))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::error!(%error, "the tokio-postgres connection ended");
        }
    });
    Ok(BemiClient::new(client))
}

/// A connection error that names the URL (without its password).
pub fn connect_error(
    url: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> StartupError {
    StartupError::Connect {
        url: without_password(url),
        source: Box::new(error),
    }
}

/// `url` with the password of its user info replaced by `***` (the `bemi` CLI's
/// [`without_password`](bemi_worker::without_password)); text that does not parse as a
/// URL is not shown at all (it could be a password).
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(_) => bemi_worker::without_password(url),
        Err(error) => format!("the database URL (not shown: it does not parse: {error})"),
    }
}

/// Logs to stderr at level INFO (bemi's warnings included; PostgreSQL's notices only from level
/// WARN), in colour only when stderr is a terminal.
///
/// ```no_run
/// bemi_examples::startup::init_logging();
/// ```
pub fn init_logging() {
    init_logging_at(tracing::Level::INFO);
}

/// Logs to stderr from `level` on (PostgreSQL's notices only from level WARN), in colour only
/// when stderr is a terminal: stdout stays the program's own output, and a log file or a pipe
/// gets no escape codes. Does nothing if the program already installed a subscriber.
///
/// ```no_run
/// // The demo: only warnings and errors, between its printed output.
/// bemi_examples::startup::init_logging_at(tracing::Level::WARN);
/// ```
pub fn init_logging_at(level: tracing::Level) {
    use std::io::IsTerminal as _;
    use tracing::Level;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;

    let filter = Targets::new()
        .with_default(level)
        .with_target("sqlx::postgres::notice", Level::WARN.min(level));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .try_init();
}

/// Resolves when the process gets Ctrl-C (SIGINT).
///
/// ```no_run
/// # async fn run(app: axum::Router, listener: tokio::net::TcpListener) -> std::io::Result<()> {
/// axum::serve(listener, app)
///     .with_graceful_shutdown(bemi_examples::startup::ctrl_c())
///     .await
/// # }
/// ```
pub async fn ctrl_c() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::error!(%error, "cannot listen for Ctrl-C; stop the app with SIGTERM");
        std::future::pending::<()>().await;
    }
}

/// Binds `addr` with a backlog of [`BACKLOG`] connections, for bursts of connections.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), bemi_examples::startup::StartupError> {
/// let listener = bemi_examples::startup::listen("127.0.0.1:0".parse().unwrap()).await?;
/// assert!(listener.local_addr().unwrap().ip().is_loopback());
/// # Ok(()) }
/// ```
pub async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartupError> {
    let bind = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted app can listen again at once.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    bind().map_err(|source| StartupError::Listen { addr, source })
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            without_password("postgres://bemi:secret@127.0.0.1:5432/app?sslmode=disable"),
            "postgres://bemi:***@127.0.0.1:5432/app?sslmode=disable"
        );
        assert_eq!(
            without_password("postgres://bemi@localhost/app"),
            "postgres://bemi@localhost/app"
        );
        assert_eq!(without_password("postgres:///app"), "postgres:///app");
        assert_eq!(
            without_password("postgres://bemi:p%40ss:w@[::1]/app"),
            "postgres://bemi:***@[::1]/app"
        );
        let unparsable = without_password("host=db password=secret");
        assert!(!unparsable.contains("secret"), "{unparsable}");
    }
}
