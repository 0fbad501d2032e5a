//! The ephemeral cluster: logical WAL, an unprivileged server process when started as root,
//! nothing left behind on drop.

use std::net::TcpStream;
use std::sync::Arc;

use anyhow::ensure;
use bemi_dev::EphemeralPostgres;
use bemi_tests::{TestCluster, TestResult};
use sqlx::Connection;

async fn ephemeral_cluster_is_logical_unprivileged_and_removed_on_drop(
    _cluster: Arc<TestCluster>,
) -> TestResult {
    let pg = tokio::task::spawn_blocking(EphemeralPostgres::start).await??;
    let mut conn = sqlx::PgConnection::connect(&pg.url()).await?;
    let wal_level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(&mut conn)
        .await?;
    ensure!(wal_level == "logical");
    let data_dir: String = sqlx::query_scalar("SHOW data_directory")
        .fetch_one(&mut conn)
        .await?;
    let listen: String = sqlx::query_scalar("SHOW listen_addresses")
        .fetch_one(&mut conn)
        .await?;
    ensure!(listen == "127.0.0.1", "listens on {listen}");
    let backend_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await?;
    let status = std::fs::read_to_string(format!("/proc/{backend_pid}/status"))?;
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default()
        .to_owned();
    // SAFETY: geteuid has no preconditions.
    let we_are_root = unsafe { libc::geteuid() } == 0;
    if we_are_root {
        let uid = uid_line.split_whitespace().nth(1).unwrap_or("0");
        ensure!(uid != "0", "the server runs as root: {uid_line}");
    }
    conn.close().await?;

    let port = pg.port();
    ensure!(std::path::Path::new(&data_dir).exists());
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    ensure!(
        !std::path::Path::new(&data_dir).exists(),
        "{data_dir} is still there"
    );
    ensure!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts connections"
    );
    Ok(())
}
e2e_test!(ephemeral_cluster_is_logical_unprivileged_and_removed_on_drop);
