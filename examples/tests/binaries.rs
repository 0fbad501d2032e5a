//! The demo and an example app as processes, with stdout and stderr piped (not terminals): logs
//! go to stderr without colour codes, stdout is the program's own output, and an example on an
//! embedded PostgreSQL logs a URL that connects to it.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
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
    // The embedded database is gone: the hint says so, and how to keep one.
    assert!(
        stdout.contains("removed as the demo exits") && stdout.contains("bemi-cli -- dev"),
        "{stdout}"
    );
}

#[test]
fn an_example_on_an_embedded_database_logs_a_url_that_connects_to_it() {
    let mut child = command(env!("CARGO_BIN_EXE_todo-axum"))
        .args(["--addr", "127.0.0.1:0"])
        .spawn()
        .expect("start todo-axum");
    let mut stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut log = Vec::new();
    while !log
        .iter()
        .any(|line: &String| line.contains("listening on"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(error) => {
                let _ = child.kill();
                panic!("todo-axum did not start serving ({error}); stderr: {log:#?}");
            }
        }
    }
    let url = log
        .iter()
        .find_map(|line| line.split("DATABASE_URL=").nth(1))
        .map_or_else(
            || panic!("no DATABASE_URL in the log: {log:#?}"),
            |rest| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            },
        );
    assert!(!log.iter().any(|line| line.contains('\u{1b}')), "{log:#?}");

    // The URL is whole (password included) and reaches a server ready for `bemi worker`.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let wal_level: Result<String, sqlx::Error> = runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await?;
        let level = sqlx::query_scalar("SHOW wal_level")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        Ok(level)
    });

    // Ctrl-C: the app stops and removes the embedded database.
    let pid = child.id().to_string();
    let signalled = Command::new("kill").args(["-INT", &pid]).status();
    let status = wait(&mut child);
    assert_eq!(wal_level.unwrap(), "logical", "{url}");
    assert!(signalled.unwrap().success());
    assert!(status.success(), "{status}; stderr: {log:#?}");
    let mut printed = String::new();
    stdout.read_to_string(&mut printed).unwrap();
    assert!(printed.is_empty(), "stdout: {printed}");
}
