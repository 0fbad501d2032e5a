//! The `bemi` processes of a run (worker, stores): started, signalled, restarted; their output
//! appended to one log file each.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// Set in the environment of the runner's own executable when it is to act as `bemi`.
pub(crate) const AS_BEMI: &str = "BEMI_CHAOS_AS_BEMI";

/// How the `bemi` CLI is started: a built binary, or this executable acting as it.
#[derive(Debug, Clone)]
pub(crate) struct BemiCommand {
    program: PathBuf,
    as_bemi: bool,
}

impl BemiCommand {
    /// `bemi` at `path`, or (without one) this executable, which runs `bemi_cli::main`.
    pub(crate) fn new(path: Option<PathBuf>) -> anyhow::Result<Self> {
        Ok(match path {
            Some(program) => Self {
                program,
                as_bemi: false,
            },
            None => Self {
                program: std::env::current_exe().context("finding the runner's executable")?,
                as_bemi: true,
            },
        })
    }

    fn command(&self, args: &[String], envs: &[(String, String)]) -> Command {
        let mut command = Command::new(&self.program);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key == "DATABASE_URL" || (key.starts_with("BEMI_") && key != "BEMI_PG_BIN") {
                command.env_remove(key.as_ref());
            }
        }
        if self.as_bemi {
            command.env(AS_BEMI, "1");
        }
        command
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs `bemi args…` to completion (at most `timeout`), failing with its output unless it
    /// exits with 0.
    pub(crate) async fn run(
        &self,
        args: &[&str],
        envs: &[(String, String)],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
        let child = self
            .command(&args, envs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting bemi")?;
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .with_context(|| format!("bemi {args:?} did not finish within {timeout:?}"))??;
        anyhow::ensure!(
            output.status.success(),
            "bemi {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }
}

/// A `bemi` process that the runner keeps running (and kills on drop).
pub(crate) struct Proc {
    /// Its name in the report (`worker`, `store-1`).
    pub(crate) name: String,
    bemi: BemiCommand,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// How often it exited without being asked to.
    pub(crate) unexpected_exits: u32,
}

impl Proc {
    /// Starts `bemi args…` with `envs`, its output appended to `dir/name.log`.
    pub(crate) fn start(
        name: &str,
        bemi: &BemiCommand,
        args: &[&str],
        envs: Vec<(String, String)>,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut proc = Self {
            name: name.to_owned(),
            bemi: bemi.clone(),
            args: args.iter().map(|&a| a.to_owned()).collect(),
            envs,
            log: dir.join(format!("{name}.log")),
            child: None,
            unexpected_exits: 0,
        };
        proc.spawn()?;
        Ok(proc)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = self
            .bemi
            .command(&self.args, &self.envs)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Sends `signal` to it (while it runs).
    pub(crate) fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .with_context(|| format!("{} is not running", self.name))?;
        let pid = libc::pid_t::try_from(pid)?;
        // SAFETY: signalling our own child, which has not been reaped (it has an id).
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Sends `signal`, waits up to `timeout` for the exit (then kills it), and starts it again.
    pub(crate) async fn restart_after(
        &mut self,
        signal: libc::c_int,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let outcome = self.stop(signal, timeout).await?;
        self.spawn()?;
        Ok(outcome)
    }

    /// Sends `signal` and waits up to `timeout` for the exit (then kills it); it stays stopped
    /// until [`start_again`](Self::start_again). How it exited.
    pub(crate) async fn stop(
        &mut self,
        signal: libc::c_int,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.signal(signal)?;
        let mut outcome = String::new();
        if let Some(mut child) = self.child.take() {
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(status) => outcome = format!("exited: {}", status?),
                Err(_) => {
                    outcome = format!("did not exit within {timeout:?}: killed");
                    child.kill().await?;
                }
            }
        }
        Ok(outcome)
    }

    /// Starts it again after [`stop`](Self::stop).
    pub(crate) fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }

    /// Starts it again if it exited on its own (returning how it exited).
    pub(crate) fn revive(&mut self) -> anyhow::Result<Option<String>> {
        let exited = match self.child.as_mut() {
            Some(child) => child.try_wait()?,
            None => None,
        };
        match exited {
            Some(status) => {
                self.unexpected_exits += 1;
                self.spawn()?;
                Ok(Some(status.to_string()))
            }
            None => Ok(None),
        }
    }

    /// Its log file.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }
}
