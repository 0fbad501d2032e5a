//! Running the `bemi` CLI as a child process: to completion, or in the background with its
//! stdout read line by line and its stderr collected.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bemi_tests::TestResult;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

/// The CLI binary of the tests' package.
pub(crate) const BEMI: &str = env!("CARGO_BIN_EXE_bemi-e2e");

/// How long a command that should finish may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a process may take to exit after SIGTERM or SIGINT.
const CLEAN_EXIT_DEADLINE: Duration = Duration::from_secs(90);

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr (logs and errors).
    pub stderr: String,
}

impl Output {
    /// Fails with the output unless the command exited with 0.
    pub(crate) fn success(self) -> anyhow::Result<Self> {
        if !self.status.success() {
            bail!("bemi failed ({}): {self:#?}", self.status);
        }
        Ok(self)
    }
}

/// `bemi` with `args` and `envs` (and none of the developer's `DATABASE_URL` / `BEMI_*`
/// settings), stdin closed.
fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BEMI);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let ours = key == "DATABASE_URL" || key == "RUST_LOG" || key.starts_with("BEMI_");
        // The launcher's binaries directory stays: `bemi dev` needs it.
        if ours && key != "BEMI_PG_BIN" {
            command.env_remove(key.as_ref());
        }
    }
    command
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `bemi args…` to completion (at most two minutes).
pub(crate) async fn bemi(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<Output> {
    let child = command(args, envs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {BEMI}"))?;
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("bemi {args:?} did not finish within {RUN_TIMEOUT:?}"))??;
    Ok(Output {
        status: output.status,
        stdout: String::from_utf8(output.stdout)?,
        stderr: String::from_utf8(output.stderr)?,
    })
}

/// A `bemi` process running in the background; killed when dropped.
pub(crate) struct Background {
    child: tokio::process::Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
    /// Every stdout line read so far.
    pub lines: Vec<String>,
}

impl Background {
    /// Starts `bemi args…`.
    pub(crate) fn start(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut child = command(args, envs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {BEMI}"))?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut stderr_pipe = child.stderr.take().context("stderr")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = tokio::spawn({
            let stderr = Arc::clone(&stderr);
            async move {
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = stderr_pipe.read(&mut buffer).await {
                    let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                    stderr
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push_str(&text);
                }
            }
        });
        Ok(Self {
            child,
            stdout,
            stderr,
            stderr_reader: Some(stderr_reader),
            lines: Vec::new(),
        })
    }

    /// What it printed on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads stdout until a line satisfies `wanted` (returned), failing after `timeout` or at
    /// the end of stdout.
    pub(crate) async fn line_where(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match tokio::time::timeout(left, self.stdout.next_line()).await {
                Ok(line) => line?,
                Err(_) => bail!(
                    "no {what} on stdout within {timeout:?}; stdout so far: {:#?}\nstderr: {}",
                    self.lines,
                    self.stderr()
                ),
            };
            let Some(line) = line else {
                bail!(
                    "stdout ended before {what}; stdout: {:#?}\nstderr: {}",
                    self.lines,
                    self.stderr()
                );
            };
            self.lines.push(line.clone());
            if wanted(&line) {
                return Ok(line);
            }
        }
    }

    /// The process id (while it runs).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub(crate) fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = self
            .child
            .id()
            .context("the process has already been reaped")?;
        // SAFETY: signalling our own child, which has not been reaped (it has an id).
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Waits for the process to exit (at most `timeout`) and for the rest of its stderr.
    pub(crate) async fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => bail!(
                "bemi did not exit within {timeout:?}; stderr: {}",
                self.stderr()
            ),
        };
        if let Some(reader) = self.stderr_reader.take() {
            tokio::time::timeout(Duration::from_secs(10), reader)
                .await
                .context("stderr stayed open after the process exited")??;
        }
        Ok(status)
    }

    /// Stops it with SIGTERM and fails unless it exits with status 0 within a minute (naming its
    /// stderr): how `bemi worker`, `store` and `ui` must end.
    pub(crate) async fn terminate(&mut self) -> TestResult {
        self.exit_cleanly_on(libc::SIGTERM).await
    }

    /// [`Background::terminate`]s each of `processes`, in order.
    pub(crate) async fn terminate_all(processes: &mut [&mut Background]) -> TestResult {
        for process in processes {
            process.terminate().await?;
        }
        Ok(())
    }

    /// Stops it with SIGINT (Ctrl-C) and fails unless it exits with status 0 within a minute.
    pub(crate) async fn interrupt(&mut self) -> TestResult {
        self.exit_cleanly_on(libc::SIGINT).await
    }

    async fn exit_cleanly_on(&mut self, signal: libc::c_int) -> TestResult {
        self.signal(signal)?;
        let status = self.wait(CLEAN_EXIT_DEADLINE).await?;
        ensure!(status.code() == Some(0), "{status}: {}", self.stderr());
        Ok(())
    }

    /// Kills it (SIGKILL) and reaps it.
    pub(crate) async fn kill(&mut self) -> TestResult {
        self.signal(libc::SIGKILL)?;
        self.wait(Duration::from_secs(30)).await?;
        Ok(())
    }

    /// Whether it has exited (without waiting).
    pub(crate) fn has_exited(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }
}

/// `url` with another user and password.
pub(crate) fn with_user(url: &str, user: &str, password: &str) -> anyhow::Result<String> {
    let start = url.find("://").context("not a URL")? + 3;
    let at = url[start..].find('@').context("the URL has no user")? + start;
    Ok(format!("{}{user}:{password}{}", &url[..start], &url[at..]))
}

/// A port of 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
