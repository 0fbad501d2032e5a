//! An ephemeral PostgreSQL cluster for development, the demo and tests.
//!
//! [`EphemeralPostgres::start`] finds the system's PostgreSQL server binaries (on `PATH`, or
//! under `/usr/lib/postgresql/*/bin`), creates a cluster in a temporary directory with
//! `wal_level=logical`, starts it on a free port of 127.0.0.1 and removes everything when it is
//! dropped. Started as root, it runs the server as the unprivileged `postgres` user (or `nobody`),
//! because `initdb` refuses to run as root. The server also exits if this process dies.
//!
//! [`DevDatabase::from_env`] uses `DATABASE_URL` instead when it is set.
//!
//! ```no_run
//! use bemi_dev::EphemeralPostgres;
//!
//! let pg = EphemeralPostgres::start().expect("PostgreSQL binaries are installed");
//! println!("DATABASE_URL={}", pg.url());
//! // ... connect, migrate, run the worker ...
//! drop(pg); // stops the server and removes its data
//! ```

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{Owner, Server, free_port, is_root, read_tail, tail};

/// How long a start or a stop may take before it is an error.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Oldest PostgreSQL with the `messages` option of pgoutput.
const MIN_MAJOR_VERSION: u32 = 14;
const SUPERUSER: &str = "postgres";

/// Why an ephemeral cluster could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH or under \
         /usr/lib/postgresql/*/bin. Install PostgreSQL {MIN_MAJOR_VERSION} or newer \
         (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; \
         macOS: `brew install postgresql`), set BEMI_PG_BIN to the directory that holds them, \
         or set DATABASE_URL to an existing server with wal_level=logical"
    )]
    BinariesNotFound,
    /// The binaries are too old.
    #[error(
        "PostgreSQL {found} at {bin_dir} is too old: bemi needs {MIN_MAJOR_VERSION} or newer \
         (pgoutput messages); install a newer server or set BEMI_PG_BIN"
    )]
    TooOld {
        /// The version found.
        found: String,
        /// Where it was found.
        bin_dir: PathBuf,
    },
    /// Running as root and no unprivileged user exists to run the server as.
    #[error(
        "running as root, and neither a `postgres` nor a `nobody` user exists to run the \
         server as (initdb refuses root): create one, e.g. `useradd --system postgres`"
    )]
    NoUnprivilegedUser,
    /// A command of the cluster's set-up failed.
    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of what it printed.
        output: String,
    },
    /// The server did not become ready.
    #[error("PostgreSQL did not start within {timeout:?}; its log ends with:\n{log}")]
    NotReady {
        /// How long we waited.
        timeout: Duration,
        /// The tail of the server log.
        log: String,
    },
    /// A service's program was not found.
    #[error(
        "{program} was not found on PATH or in /usr/sbin: install it (Debian/Ubuntu: \
         `apt-get install {package}`)"
    )]
    BinaryNotFound {
        /// The program.
        program: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// A service other than PostgreSQL did not become ready.
    #[error("{service} did not start within {timeout:?}; its log ends with:\n{log}")]
    ServiceNotReady {
        /// Which service.
        service: &'static str,
        /// How long we waited.
        timeout: Duration,
        /// The tail of its log.
        log: String,
    },
    /// A URL given to a launcher does not parse.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// File system or process errors.
    #[error("could not set up the ephemeral service: {0}")]
    Io(#[from] io::Error),
}

/// Settings of an ephemeral cluster.
///
/// ```
/// use bemi_dev::LaunchOptions;
///
/// let options = LaunchOptions::default().setting("wal_level", "replica");
/// assert!(options.settings.iter().any(|(k, v)| k == "wal_level" && v == "replica"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LaunchOptions {
    /// Server settings passed with `-c name=value`; later entries win.
    pub settings: Vec<(String, String)>,
    /// A certificate to serve TLS with, and TCP connections only over TLS
    /// ([`tls_only`](Self::tls_only)).
    pub tls: Option<ServerTls>,
}

/// The server's certificate chain and private key, both PEM.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerTls {
    /// The certificate (and any intermediates), PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl Default for LaunchOptions {
    fn default() -> Self {
        let settings = [
            ("wal_level", "logical"),
            ("max_replication_slots", "256"),
            ("max_wal_senders", "128"),
            ("max_connections", "300"),
            // A throwaway cluster: durability across OS crashes does not matter, speed does.
            ("fsync", "off"),
            ("full_page_writes", "off"),
            ("shared_buffers", "128MB"),
            ("log_min_messages", "warning"),
        ];
        Self {
            settings: settings
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            tls: None,
        }
    }
}

impl LaunchOptions {
    /// Adds (or overrides) one server setting.
    ///
    /// ```
    /// let options = bemi_dev::LaunchOptions::default().setting("work_mem", "64MB");
    /// assert_eq!(options.settings.last().unwrap().1, "64MB");
    /// ```
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Serves TLS with this certificate and key (PEM) and refuses TCP connections without it
    /// (`hostssl` lines in `pg_hba.conf`), like a managed database that requires TLS. For
    /// testing clients' TLS settings.
    ///
    /// ```
    /// let options = bemi_dev::LaunchOptions::default()
    ///     .tls_only("-----BEGIN CERTIFICATE-----…", "-----BEGIN PRIVATE KEY-----…");
    /// assert!(options.tls.is_some());
    /// ```
    pub fn tls_only(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        self.tls = Some(ServerTls {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        });
        self.setting("ssl", "on")
    }
}

/// A running, temporary PostgreSQL cluster; stopped and deleted on drop.
///
/// ```no_run
/// let pg = bemi_dev::EphemeralPostgres::start()?;
/// assert!(pg.url().starts_with("postgres://postgres:"));
/// # Ok::<(), bemi_dev::LaunchError>(())
/// ```
#[derive(Debug)]
pub struct EphemeralPostgres {
    // Declared before `dir` so that the server stops before its directory is removed.
    server: Option<Server>,
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    owner: Option<Owner>,
    options: LaunchOptions,
    port: u16,
    password: String,
}

impl EphemeralPostgres {
    /// Starts a cluster with the default [`LaunchOptions`]. Blocks for a second or two; from async
    /// code, call it in `tokio::task::spawn_blocking`.
    ///
    /// ```no_run
    /// let pg = bemi_dev::EphemeralPostgres::start()?;
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn start() -> Result<Self, LaunchError> {
        Self::start_with(LaunchOptions::default())
    }

    /// Starts a cluster with `options`.
    ///
    /// ```no_run
    /// use bemi_dev::{EphemeralPostgres, LaunchOptions};
    ///
    /// let replica_only = EphemeralPostgres::start_with(LaunchOptions::default().setting("wal_level", "replica"))?;
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn start_with(options: LaunchOptions) -> Result<Self, LaunchError> {
        let bin_dir = find_bin_dir()?;
        check_version(&bin_dir)?;
        let owner = if is_root() {
            Some(Owner::unprivileged().ok_or(LaunchError::NoUnprivilegedUser)?)
        } else {
            None
        };
        let dir = tempfile::Builder::new().prefix("bemi-pg-").tempdir()?;
        let password = random_password()?;
        let mut cluster = Self {
            server: None,
            bin_dir,
            owner,
            options,
            port: 0,
            password,
            dir,
        };
        cluster.init()?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// A superuser URL of the `postgres` database.
    ///
    /// ```no_run
    /// # let pg = bemi_dev::EphemeralPostgres::start()?;
    /// let url = pg.url();
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// A superuser URL of `database` on this cluster.
    ///
    /// ```no_run
    /// # let pg = bemi_dev::EphemeralPostgres::start()?;
    /// let url = pg.url_for("app");
    /// assert!(url.ends_with("/app"));
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// The TCP port on 127.0.0.1.
    ///
    /// ```no_run
    /// # let pg = bemi_dev::EphemeralPostgres::start()?;
    /// assert!(pg.port() > 0);
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server binaries in use.
    ///
    /// ```no_run
    /// # let pg = bemi_dev::EphemeralPostgres::start()?;
    /// assert!(pg.bin_dir().join("postgres").exists());
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Stops the server (fast shutdown), keeping its data; [`start_server`](Self::start_server)
    /// starts it again on the same port. Used to test reconnects.
    ///
    /// ```no_run
    /// # let mut pg = bemi_dev::EphemeralPostgres::start()?;
    /// pg.stop_server()?;
    /// pg.start_server()?;
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn stop_server(&mut self) -> Result<(), LaunchError> {
        match self.server.take() {
            Some(server) => Ok(server.stop()?),
            None => Ok(()),
        }
    }

    /// Stops the server the way a power cut would look to its clients (immediate shutdown:
    /// no checkpoint, every connection dropped, crash recovery at the next
    /// [`start_server`](Self::start_server)), keeping its data.
    ///
    /// ```no_run
    /// # let mut pg = bemi_dev::EphemeralPostgres::start()?;
    /// pg.crash_server()?;
    /// pg.start_server()?;
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn crash_server(&mut self) -> Result<(), LaunchError> {
        match self.server.take() {
            Some(server) => Ok(server.quit()?),
            None => Ok(()),
        }
    }

    /// Starts the server if it is not running (on the same port once it has one).
    ///
    /// ```no_run
    /// # let mut pg = bemi_dev::EphemeralPostgres::start()?;
    /// pg.start_server()?; // already running: nothing to do
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn start_server(&mut self) -> Result<(), LaunchError> {
        if self.server.is_some() {
            return Ok(());
        }
        let fixed_port = self.port != 0;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if !fixed_port {
                self.port = free_port()?;
            }
            match self.spawn_server() {
                Ok(server) => {
                    self.server = Some(server);
                    return Ok(());
                }
                // Another process may have taken the port between our probe and the bind.
                Err(error) if !fixed_port && attempts < 5 => {
                    tracing::debug!(%error, "retrying PostgreSQL start on another port");
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Moves the cluster's transaction id counter into epoch `epoch` (`pg_resetwal -e`, the
    /// server stopped and started again): from then on every 64-bit transaction id is at least
    /// `epoch << 32`, as on a cluster whose 32-bit ids have wrapped around `epoch` times. Used
    /// to test what depends on the full transaction id.
    ///
    /// ```no_run
    /// # let mut pg = bemi_dev::EphemeralPostgres::start()?;
    /// pg.set_transaction_epoch(3)?; // pg_current_xact_id() >= 3 << 32
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn set_transaction_epoch(&mut self, epoch: u32) -> Result<(), LaunchError> {
        self.stop_server()?;
        let mut command = self.command("pg_resetwal");
        command
            .arg("-e")
            .arg(epoch.to_string())
            .arg("-D")
            .arg(self.data_dir());
        run(command)?;
        self.start_server()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn init(&self) -> Result<(), LaunchError> {
        let pwfile = self.dir.path().join("pwfile");
        fs::write(&pwfile, &self.password)?;
        if let Some(owner) = &self.owner {
            // The parent must be enterable by the server's user; the data stays private to it.
            fs::set_permissions(self.dir.path(), fs::Permissions::from_mode(0o755))?;
            owner.chown(&pwfile)?;
            fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
            let log = self.log_path();
            fs::write(&log, "")?;
            owner.chown(&log)?;
            owner.chown(self.dir.path())?;
        }
        let mut initdb = self.command("initdb");
        initdb
            .arg("--pgdata")
            .arg(self.data_dir())
            .args(["--username", SUPERUSER, "--auth", "scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--encoding", "UTF8", "--locale", "C", "--no-sync"]);
        run(initdb)?;
        fs::remove_file(pwfile)?;
        if let Some(tls) = &self.options.tls {
            self.install_tls(tls)?;
        }
        Ok(())
    }

    /// Writes the certificate and key where `ssl = on` looks for them (`server.crt` and
    /// `server.key` in the data directory, the key private to the server's user), and turns the
    /// TCP lines of `pg_hba.conf` into TLS-only ones.
    fn install_tls(&self, tls: &ServerTls) -> Result<(), LaunchError> {
        let data = self.data_dir();
        for (name, contents) in [("server.crt", &tls.cert_pem), ("server.key", &tls.key_pem)] {
            let path = data.join(name);
            fs::write(&path, contents)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            if let Some(owner) = &self.owner {
                owner.chown(&path)?;
            }
        }
        let hba_path = data.join("pg_hba.conf");
        let hba: String = fs::read_to_string(&hba_path)?
            .lines()
            .map(|line| match line.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{line}\n"),
            })
            .collect();
        fs::write(&hba_path, hba)?;
        Ok(())
    }

    fn spawn_server(&self) -> Result<Server, LaunchError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let log_start = log.metadata()?.len();
        let mut postgres = self.command("postgres");
        postgres
            .arg("-D")
            .arg(self.data_dir())
            .args(["-c", &format!("port={}", self.port)])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ));
        for (name, value) in &self.options.settings {
            postgres.arg("-c").arg(format!("{name}={value}"));
        }
        postgres
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C in the terminal reaches us, and we stop it cleanly.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            postgres.pre_exec(|| {
                // Immediate shutdown if the thread that started the server (which lives as long
                // as the server) dies with this process.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let server = Server::spawn(postgres, "postgres")?;
        match self.wait_until_ready(&server, log_start) {
            Ok(()) => Ok(server),
            Err(error) => {
                let _ = server.stop();
                Err(error)
            }
        }
    }

    fn wait_until_ready(&self, server: &Server, log_start: u64) -> Result<(), LaunchError> {
        let pid_file = self.data_dir().join("postmaster.pid");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            if server.has_exited() {
                break;
            }
            // The 8th line of postmaster.pid is the server status; "ready" once it accepts
            // connections (this is what pg_ctl -w waits for).
            if let Ok(contents) = fs::read_to_string(&pid_file)
                && contents.lines().nth(7).map(str::trim) == Some("ready")
            {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(LaunchError::NotReady {
            timeout: STARTUP_TIMEOUT,
            log: read_tail(&self.log_path(), log_start),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        command.env_remove("PGDATA").env("LC_ALL", "C");
        if let Some(owner) = &self.owner {
            command
                .uid(owner.uid)
                .gid(owner.gid)
                .current_dir(self.dir.path());
        }
        command
    }
}

impl Drop for EphemeralPostgres {
    fn drop(&mut self) {
        if let Err(error) = self.stop_server() {
            tracing::warn!(%error, "could not stop the ephemeral PostgreSQL cleanly");
        }
    }
}

/// `BEMI_PG_BIN`, then the directory of `initdb` on PATH, then the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Result<PathBuf, LaunchError> {
    find_bin_dir_in(
        std::env::var_os("BEMI_PG_BIN").map(PathBuf::from),
        std::env::var_os("PATH"),
        Path::new("/usr/lib/postgresql"),
    )
}

/// [`find_bin_dir`] with its inputs given: the override directory, `PATH`, and the directory of
/// versioned installations.
fn find_bin_dir_in(
    explicit: Option<PathBuf>,
    path: Option<std::ffi::OsString>,
    versions_dir: &Path,
) -> Result<PathBuf, LaunchError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = explicit {
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(LaunchError::BinariesNotFound)
        };
    }
    let on_path = path
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("initdb"))
        .filter(|initdb| initdb.is_file())
        // /usr/local/bin/initdb is often a symlink into the versioned directory.
        .filter_map(|initdb| fs::canonicalize(initdb).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|dir| has_server(dir));
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir(versions_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versioned.sort();
    versioned
        .pop()
        .map(|(_, dir)| dir)
        .ok_or(LaunchError::BinariesNotFound)
}

fn check_version(bin_dir: &Path) -> Result<(), LaunchError> {
    let output = Command::new(bin_dir.join("postgres"))
        .arg("--version")
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let version = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_owned();
    let major: u32 = version
        .split(['.', 'b', 'r'])
        .next()
        .and_then(|major| major.parse().ok())
        .unwrap_or(0);
    if major < MIN_MAJOR_VERSION {
        return Err(LaunchError::TooOld {
            found: version,
            bin_dir: bin_dir.to_owned(),
        });
    }
    Ok(())
}

fn run(mut command: Command) -> Result<(), LaunchError> {
    let output = command.output()?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Err(LaunchError::CommandFailed {
        command: format!("{command:?}"),
        status: output.status.to_string(),
        output: tail(&text, 2000),
    })
}

fn random_password() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The database for the demo and `bemi dev`: the server of `DATABASE_URL` if it is set, or an
/// ephemeral cluster.
///
/// ```no_run
/// let db = bemi_dev::DevDatabase::from_env()?;
/// println!("using {}", db.url());
/// # Ok::<(), bemi_dev::LaunchError>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum DevDatabase {
    /// An existing server, from `DATABASE_URL`.
    External(String),
    /// A cluster started for this process.
    Ephemeral(EphemeralPostgres),
}

impl DevDatabase {
    /// `DATABASE_URL` when set (and not empty), else a new [`EphemeralPostgres`].
    ///
    /// ```no_run
    /// let db = bemi_dev::DevDatabase::from_env()?;
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn from_env() -> Result<Self, LaunchError> {
        Self::from_var("DATABASE_URL")
    }

    /// Like [`from_env`](Self::from_env) with another variable.
    ///
    /// ```no_run
    /// let db = bemi_dev::DevDatabase::from_var("BEMI_TEST_DATABASE_URL")?;
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn from_var(name: &str) -> Result<Self, LaunchError> {
        match std::env::var(name) {
            Ok(url) if !url.trim().is_empty() => Ok(Self::External(url)),
            _ => EphemeralPostgres::start().map(Self::Ephemeral),
        }
    }

    /// The connection URL.
    ///
    /// ```no_run
    /// # let db = bemi_dev::DevDatabase::from_env()?;
    /// let url = db.url();
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn url(&self) -> String {
        match self {
            Self::External(url) => url.clone(),
            Self::Ephemeral(pg) => pg.url(),
        }
    }

    /// The connection URL of another database on the same server: [`url`](Self::url) with its
    /// database replaced (query parameters kept).
    ///
    /// ```
    /// use bemi_dev::DevDatabase;
    ///
    /// let db = DevDatabase::External("postgres://bemi:pw@db:5432/postgres?sslmode=disable".into());
    /// assert_eq!(db.url_for("app"), "postgres://bemi:pw@db:5432/app?sslmode=disable");
    /// let db = DevDatabase::External("postgres://bemi@db".into());
    /// assert_eq!(db.url_for("app"), "postgres://bemi@db/app");
    /// ```
    pub fn url_for(&self, database: &str) -> String {
        match self {
            Self::External(url) => with_database(url, database),
            Self::Ephemeral(pg) => pg.url_for(database),
        }
    }
}

/// `url` with its database replaced by `database` (query parameters kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base
        .get(authority_start..)
        .and_then(|authority| authority.find('/'))
        .map_or(base.len(), |i| authority_start + i);
    let (before_path, _) = base.split_at_checked(path_start).unwrap_or((base, ""));
    let mut result = format!("{before_path}/{database}");
    if let Some(query) = query {
        result.push('?');
        result.push_str(query);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_install(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        for binary in ["initdb", "postgres"] {
            fs::write(dir.join(binary), "").unwrap();
        }
    }

    #[test]
    fn no_binaries_is_an_error_that_names_the_package() {
        let empty = tempfile::tempdir().unwrap();
        let error = find_bin_dir_in(None, Some(empty.path().into()), empty.path()).unwrap_err();
        assert!(matches!(error, LaunchError::BinariesNotFound));
        let message = error.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
        // An override that does not hold the binaries is an error too, not a fallback.
        let error = find_bin_dir_in(Some(empty.path().into()), None, empty.path()).unwrap_err();
        assert!(matches!(error, LaunchError::BinariesNotFound));
    }

    #[test]
    fn the_newest_versioned_installation_wins_after_path() {
        let root = tempfile::tempdir().unwrap();
        let versions = root.path().join("postgresql");
        for version in ["14", "16", "9"] {
            fake_install(&versions.join(version).join("bin"));
        }
        let found = find_bin_dir_in(None, None, &versions).unwrap();
        assert_eq!(found, versions.join("16").join("bin"));

        let on_path = root.path().join("custom").join("bin");
        fake_install(&on_path);
        let found = find_bin_dir_in(None, Some(on_path.clone().into()), &versions).unwrap();
        assert_eq!(found, fs::canonicalize(&on_path).unwrap());
    }
}
