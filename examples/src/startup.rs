//! What the example binaries do before serving: read `--addr`, find or start the database,
//! create the todo table, install bemi's triggers, and wait for Ctrl-C at the end.
//!
//! ```no_run
//! use bemi_examples::startup::{self, Database};
//!
//! # async fn run() -> Result<(), startup::StartupError> {
//! let database = Database::from_env().await?; // DATABASE_URL, or an embedded PostgreSQL
//! let pool = startup::prepare_database(&database.url()).await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;

use bemi_core::tokio_postgres::BemiClient;
use bemi_worker::launcher::{DevDatabase, LaunchError};
use sqlx::{Connection as _, PgPool};

use crate::todo;

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
}

/// Connects, creates the todo table if it is missing and installs bemi's triggers
/// ([`bemi_core::migration::migrate`]). Returns the (plain) pool.
///
/// ```no_run
/// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
/// let pool = bemi_examples::startup::prepare_database("postgres://localhost/app").await?;
/// let pool = bemi_core::sqlx::BemiPool::new(pool);
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
    bemi_core::migration::migrate(&pool, Default::default())
        .await
        .map_err(StartupError::Migrate)?;
    Ok(pool)
}

/// A tokio-postgres client of `url` wrapped by bemi's adapter; its connection runs in a task
/// of the current runtime.
///
/// ```no_run
/// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
/// let client = bemi_examples::startup::connect_tokio_postgres("postgres://localhost/app").await?;
/// # Ok(()) }
/// ```
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

fn connect_error(url: &str, error: impl std::error::Error + Send + Sync + 'static) -> StartupError {
    StartupError::Connect {
        url: without_password(url),
        source: Box::new(error),
    }
}

/// `url` with the password of its user info replaced by `***`.
fn without_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!(
                "{}{user}:***@{host}{}",
                &url[..scheme_end],
                &url[authority_end..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Logs to the terminal at level INFO (bemi's warnings included; PostgreSQL's notices only from
/// level WARN).
///
/// ```no_run
/// bemi_examples::startup::init_logging();
/// ```
pub fn init_logging() {
    use tracing::Level;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;

    let filter = Targets::new()
        .with_default(Level::INFO)
        .with_target("sqlx::postgres::notice", Level::WARN);
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
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

/// Binds `addr` (with a backlog of 1024, for bursts of connections).
///
/// ```no_run
/// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
/// let listener = bemi_examples::startup::listen("127.0.0.1:3000".parse().unwrap()).await?;
/// # Ok(()) }
/// ```
pub async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartupError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Listen { addr, source })
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
    }
}
