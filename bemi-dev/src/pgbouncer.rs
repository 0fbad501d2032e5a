//! A throwaway pgbouncer in front of a PostgreSQL server, for the tests of pooler safety.

use std::fs;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::LaunchError;
use crate::process::{Owner, Server, find_on_path, free_port, is_root, read_tail};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// When pgbouncer gives a server connection back to its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolMode {
    /// When the client disconnects.
    Session,
    /// At the end of each transaction (an implicit one ends at each `Sync`): the mode that
    /// breaks protocol-level assumptions of drivers, and the one to test with.
    Transaction,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
        }
    }
}

/// A pgbouncer (Debian's `pgbouncer` package) on a free port of 127.0.0.1, in front of the
/// server of `upstream`, stopped and removed when dropped. Clients connect without a password
/// (`auth_type = any`); pgbouncer logs in upstream with the URL's user and password.
///
/// ```no_run
/// use bemi_dev::{Pgbouncer, PoolMode};
///
/// let pg = bemi_dev::EphemeralPostgres::start()?;
/// let bouncer = Pgbouncer::start(&pg.url(), PoolMode::Transaction, 4)?;
/// println!("through pgbouncer: {}", bouncer.url_for("postgres"));
/// # Ok::<(), bemi_dev::LaunchError>(())
/// ```
#[derive(Debug)]
pub struct Pgbouncer {
    dir: tempfile::TempDir,
    port: u16,
    user: String,
    server: Option<Server>,
}

impl Pgbouncer {
    /// Starts pgbouncer in `pool_mode` with `pool_size` server connections per database and
    /// user, in front of the server of `upstream` (a `postgres://user:password@host:port/db`
    /// URL; its database is not used: every database is served).
    pub fn start(upstream: &str, pool_mode: PoolMode, pool_size: u32) -> Result<Self, LaunchError> {
        let binary = find_on_path("pgbouncer").ok_or(LaunchError::BinaryNotFound {
            program: "pgbouncer",
            package: "pgbouncer",
        })?;
        let upstream = url::Url::parse(upstream)
            .map_err(|error| LaunchError::InvalidUrl(error.to_string()))?;
        let host = upstream.host_str().unwrap_or("127.0.0.1").to_owned();
        let upstream_port = upstream.port().unwrap_or(5432);
        let user = percent_decode(upstream.username());
        let password = upstream.password().map(percent_decode).unwrap_or_default();
        let dir = tempfile::Builder::new()
            .prefix("bemi-pgbouncer-")
            .tempdir()?;
        let owner = if is_root() {
            Some(Owner::unprivileged().ok_or(LaunchError::NoUnprivilegedUser)?)
        } else {
            None
        };
        if let Some(owner) = &owner {
            owner.chown(dir.path())?;
        }
        let port = free_port()?;
        let config = dir.path().join("pgbouncer.ini");
        let log = dir.path().join("pgbouncer.log");
        fs::write(
            &config,
            format!(
                "[databases]\n\
                 * = host={host} port={upstream_port} user={user} password={password}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = any\n\
                 pool_mode = {mode}\n\
                 default_pool_size = {pool_size}\n\
                 max_client_conn = 1000\n\
                 ignore_startup_parameters = extra_float_digits,options,search_path\n\
                 logfile = {log}\n\
                 pidfile = {pid}\n",
                mode = pool_mode.as_str(),
                log = log.display(),
                pid = dir.path().join("pgbouncer.pid").display(),
            ),
        )?;
        if let Some(owner) = &owner {
            owner.chown(&config)?;
        }
        let mut command = Command::new(binary);
        command
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if let Some(owner) = &owner {
            command
                .uid(owner.uid)
                .gid(owner.gid)
                .current_dir(dir.path());
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let server = Server::spawn(command, "pgbouncer")?;
        let bouncer = Self {
            dir,
            port,
            user,
            server: Some(server),
        };
        bouncer.wait_until_ready(&log)?;
        Ok(bouncer)
    }

    /// The URL of `database` through pgbouncer (no password needed).
    #[must_use]
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}",
            self.user, self.port
        )
    }

    /// Its port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    fn wait_until_ready(&self, log: &Path) -> Result<(), LaunchError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            if self.server.as_ref().is_none_or(Server::has_exited) {
                break;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(LaunchError::ServiceNotReady {
            service: "pgbouncer",
            timeout: STARTUP_TIMEOUT,
            log: read_tail(log, 0),
        })
    }

    /// The end of its log (for test failures).
    #[must_use]
    pub fn log_tail(&self) -> String {
        read_tail(&self.dir.path().join("pgbouncer.log"), 0)
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take()
            && let Err(error) = server.stop()
        {
            tracing::warn!(%error, "could not stop pgbouncer cleanly");
        }
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}
