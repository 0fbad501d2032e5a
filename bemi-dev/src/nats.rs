//! A throwaway nats-server with JetStream, for the tests of the NATS sink and `bemi store`.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::LaunchError;
use crate::process::{Server, find_on_path, free_port, read_tail};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A nats-server (Debian's `nats-server` package) with JetStream on a free port of
/// 127.0.0.1, its storage in a temporary directory; stopped and removed when dropped. It can be
/// stopped, killed and started again on the same port with the same storage, as a restart.
///
/// ```no_run
/// let mut nats = bemi_dev::NatsServer::start()?;
/// println!("NATS at {}", nats.url());
/// nats.kill()?;
/// nats.start_again()?; // the same port, the same streams
/// # Ok::<(), bemi_dev::LaunchError>(())
/// ```
#[derive(Debug)]
pub struct NatsServer {
    dir: tempfile::TempDir,
    binary: PathBuf,
    port: u16,
    /// A configuration file (authorization, TLS), if started with one.
    config: Option<PathBuf>,
    server: Option<Server>,
}

impl NatsServer {
    /// Starts a server (`nats-server` on `PATH`, or under `/usr/sbin`).
    pub fn start() -> Result<Self, LaunchError> {
        Self::start_inner(None)
    }

    /// Starts a server with `config` (nats-server's configuration format) besides JetStream,
    /// the port and the storage: e.g. an `authorization { … }` or a `tls { … }` block.
    ///
    /// ```no_run
    /// let nats = bemi_dev::NatsServer::start_with_config(
    ///     r#"authorization { user: "bemi", password: "s3cret" }"#,
    /// )?;
    /// let url = format!("nats://bemi:s3cret@127.0.0.1:{}", nats.port());
    /// # Ok::<(), bemi_dev::LaunchError>(())
    /// ```
    pub fn start_with_config(config: &str) -> Result<Self, LaunchError> {
        Self::start_inner(Some(config))
    }

    fn start_inner(config: Option<&str>) -> Result<Self, LaunchError> {
        let binary = find_on_path("nats-server").ok_or(LaunchError::BinaryNotFound {
            program: "nats-server",
            package: "nats-server",
        })?;
        let dir = tempfile::Builder::new().prefix("bemi-nats-").tempdir()?;
        let config = match config {
            Some(text) => {
                let path = dir.path().join("nats-server.conf");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let mut nats = Self {
            dir,
            binary,
            port: free_port()?,
            config,
            server: None,
        };
        nats.start_again()?;
        Ok(nats)
    }

    /// Its URL, `nats://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts it (again) on its port with its storage; a no-op while it runs.
    pub fn start_again(&mut self) -> Result<(), LaunchError> {
        if self
            .server
            .as_ref()
            .is_some_and(|server| !server.has_exited())
        {
            return Ok(());
        }
        let log = self.dir.path().join("nats-server.log");
        let mut command = Command::new(&self.binary);
        command
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .arg("-l")
            .arg(&log);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.server = Some(Server::spawn(command, "nats-server")?);
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
            service: "nats-server",
            timeout: STARTUP_TIMEOUT,
            log: read_tail(&log, 0),
        })
    }

    /// Stops it cleanly (SIGINT), keeping its storage.
    pub fn stop(&mut self) -> Result<(), LaunchError> {
        if let Some(server) = self.server.take() {
            server.stop()?;
        }
        Ok(())
    }

    /// Kills it (SIGKILL), keeping its storage: a crash.
    pub fn kill(&mut self) -> Result<(), LaunchError> {
        if let Some(server) = self.server.take() {
            server.kill()?;
        }
        Ok(())
    }

    /// The end of its log (for test failures).
    #[must_use]
    pub fn log_tail(&self) -> String {
        read_tail(&self.dir.path().join("nats-server.log"), 0)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::warn!(%error, "could not stop nats-server cleanly");
        }
    }
}
