//! The demo as a process, with stdout and stderr piped (not terminals): logs go to stderr without
//! colour codes, stdout is the program's own output.

use std::io::Read as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a binary may take to start PostgreSQL and serve, or to finish.
const PATIENCE: Duration = Duration::from_secs(120);

/// `program` without the developer's `DATABASE_URL` (so that it starts an embedded PostgreSQL)
/// and log settings.
fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    command
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for `child` to exit, at most [`PATIENCE`]; kills it past that.
fn wait(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_demo_prints_its_table_on_stdout_and_logs_nothing_there() {
    let mut child = command(env!("CARGO_BIN_EXE_demo"))
        .spawn()
        .expect("start the demo");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });
    let status = wait(&mut child);
    let stdout = out.join().unwrap().unwrap();
    let stderr = err.join().unwrap().unwrap();
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(stdout.contains("(5 rows)"), "{stdout}");
    // No log line, and no escape code, in the printed output.
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains(" INFO ") && !stdout.contains(" WARN "),
        "{stdout}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}
