//! Running a service's server process for the lifetime of a value: unprivileged when we are
//! root, in its own process group, stopped with it — and killed by the kernel if this process
//! dies first.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};
use std::thread;
use std::time::Duration;

/// How long a stop may take per signal.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// A server process, started and waited for by a thread of its own: `PR_SET_PDEATHSIG` fires
/// when the *thread* that forked the child exits, so that thread must live as long as the server.
#[derive(Debug)]
pub(crate) struct Server {
    pid: libc::pid_t,
    exited: Mutex<mpsc::Receiver<io::Result<ExitStatus>>>,
}

impl Server {
    pub(crate) fn spawn(mut command: Command, name: &str) -> io::Result<Self> {
        let (pid_tx, pid_rx) = mpsc::channel();
        let (exit_tx, exit_rx) = mpsc::channel();
        thread::Builder::new()
            .name(format!("bemi-{name}"))
            .spawn(move || match command.spawn() {
                Ok(mut child) => {
                    let _ = pid_tx.send(Ok(child.id()));
                    let _ = exit_tx.send(child.wait());
                }
                Err(error) => {
                    let _ = pid_tx.send(Err(error));
                }
            })?;
        let pid = pid_rx
            .recv()
            .map_err(|_| io::Error::other(format!("the {name} launcher thread died")))??;
        Ok(Self {
            pid: libc::pid_t::try_from(pid).map_err(io::Error::other)?,
            exited: Mutex::new(exit_rx),
        })
    }

    fn exit_receiver(&self) -> MutexGuard<'_, mpsc::Receiver<io::Result<ExitStatus>>> {
        self.exited.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn has_exited(&self) -> bool {
        !matches!(
            self.exit_receiver().try_recv(),
            Err(mpsc::TryRecvError::Empty)
        )
    }

    /// SIGINT (a fast shutdown of PostgreSQL, a clean stop of pgbouncer and nats-server);
    /// SIGQUIT, then SIGKILL, if that takes too long.
    pub(crate) fn stop(self) -> io::Result<()> {
        for (signal, timeout) in [
            (libc::SIGINT, SHUTDOWN_TIMEOUT),
            (libc::SIGQUIT, SHUTDOWN_TIMEOUT),
            (libc::SIGKILL, SHUTDOWN_TIMEOUT),
        ] {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(self.pid, signal) };
            match self.exit_receiver().recv_timeout(timeout) {
                Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
            }
        }
        Err(io::Error::other(format!(
            "the process {} did not stop",
            self.pid
        )))
    }
}

impl Server {
    /// SIGQUIT (PostgreSQL's immediate shutdown: every backend aborted, crash recovery at the
    /// next start), SIGKILL if that takes too long; waits for the exit.
    pub(crate) fn quit(self) -> io::Result<()> {
        for signal in [libc::SIGQUIT, libc::SIGKILL] {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(self.pid, signal) };
            match self.exit_receiver().recv_timeout(SHUTDOWN_TIMEOUT) {
                Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
            }
        }
        Err(io::Error::other(format!(
            "the process {} did not stop",
            self.pid
        )))
    }

    /// SIGKILL, and waits for the exit: a crash, for the tests that need one.
    pub(crate) fn kill(self) -> io::Result<()> {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        match self.exit_receiver().recv_timeout(SHUTDOWN_TIMEOUT) {
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(io::Error::other(format!(
                "the process {} did not die",
                self.pid
            ))),
        }
    }
}

/// The user a service runs as when we are root (PostgreSQL and pgbouncer refuse root).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl Owner {
    pub(crate) fn unprivileged() -> Option<Self> {
        ["postgres", "nobody"].into_iter().find_map(Owner::lookup)
    }

    fn lookup(name: &str) -> Option<Self> {
        let name = CString::new(name).ok()?;
        // SAFETY: getpwnam returns NULL or a pointer to a static record that we copy at once;
        // the launcher does not call it concurrently with itself in a way that matters for uid/gid.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        if entry.is_null() {
            return None;
        }
        // SAFETY: non-null, points to a valid passwd record.
        let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
        (uid != 0).then_some(Self { uid, gid })
    }

    pub(crate) fn chown(&self, path: &Path) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
    }
}

/// The binary `program`: on `PATH`, or in `/usr/sbin` or `/usr/bin` (where Debian installs
/// servers, often not on a user's `PATH`).
pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A port of 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The end of a log file from `from` on.
pub(crate) fn read_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.seek(SeekFrom::Start(from));
        let _ = file.read_to_string(&mut text);
    }
    tail(&text, 4000)
}

/// The last `max` bytes of `text` (at a character boundary), trimmed.
pub(crate) fn tail(text: &str, max: usize) -> String {
    let start = text.ceil_char_boundary(text.len().saturating_sub(max));
    text.get(start..).unwrap_or_default().trim().to_owned()
}
