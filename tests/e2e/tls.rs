//! The worker against a server that, like many managed databases, takes TCP connections only
//! over TLS: it streams with the certificate verified (`sslmode=verify-full`), and fails fast,
//! naming the URL setting to fix, without TLS or with a certificate it cannot verify.

use std::sync::Arc;

use anyhow::ensure;
use bemi_dev::LaunchOptions;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TODO_TABLE, TestCluster, TestResult, private_cluster, private_database};
use bemi_worker::WorkerError;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::cli_support::bemi;
use crate::worker_hazards::fatal_error;

/// A certificate authority, as its certificate (PEM) and the issuer that signs with it.
fn certificate_authority(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A certificate for `localhost` signed by `ca`, and its key, both PEM.
fn server_certificate(ca: &CertifiedIssuer<'_, KeyPair>) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let certificate = CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, ca)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

async fn the_worker_streams_over_verified_tls_and_names_the_fix_when_tls_fails(
    _cluster: Arc<TestCluster>,
) -> TestResult {
    let ca = certificate_authority("bemi test CA")?;
    let stranger = certificate_authority("another CA")?;
    let (cert, key) = server_certificate(&ca)?;
    let files = tempfile::tempdir()?;
    let ca_path = files.path().join("ca.pem");
    let stranger_path = files.path().join("stranger.pem");
    std::fs::write(&ca_path, ca.pem())?;
    std::fs::write(&stranger_path, stranger.pem())?;

    let pg = private_cluster(LaunchOptions::default().tls_only(cert, key)).await?;
    let db = private_database(&pg, "tls_app").await?;
    db.exec(TODO_TABLE).await?;
    db.migrate().await?;
    let url_with = |query: &str| {
        format!(
            "{}?{query}",
            pg.url_for(&db.name).replace("127.0.0.1", "localhost")
        )
    };

    // Verified: the chain up to the CA, and the host name.
    let mut config = worker_config(&db);
    config.source_url = url_with(&format!(
        "sslmode=verify-full&sslrootcert={}",
        ca_path.display()
    ));
    let worker = RunningWorker::start(config).await?;
    db.exec("INSERT INTO todo (task) VALUES ('over TLS')")
        .await?;
    let changes = wait_for_changes(&db, 1).await?;
    ensure!(changes[0].after["task"] == "over TLS", "{changes:#?}");
    let replication_over_tls: Vec<bool> = sqlx::query_scalar(
        "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_replication USING (pid) \
         WHERE application_name = 'bemi-worker'",
    )
    .fetch_all(&db.pool)
    .await?;
    ensure!(
        replication_over_tls == [true],
        "the replication connection's TLS: {replication_over_tls:?}"
    );
    worker.stop().await?;

    // Without TLS, the server refuses; the error says what to put in the URL.
    let mut config = worker_config(&db);
    config.source_url = url_with("sslmode=disable");
    let error = fatal_error(config).await?;
    let message = error.to_string();
    ensure!(
        message.contains("no encryption") && message.contains("sslmode=verify-full"),
        "{message}"
    );

    // A certificate signed by a CA other than the one named: refused, not trusted.
    let mut config = worker_config(&db);
    config.source_url = url_with(&format!(
        "sslmode=verify-full&sslrootcert={}",
        stranger_path.display()
    ));
    let error = fatal_error(config).await?;
    let message = error.to_string();
    ensure!(!error.is_retryable(), "{message}");
    ensure!(
        matches!(error, WorkerError::Source(_)) && message.contains("sslrootcert"),
        "{message}"
    );

    // verify-ca: the worker refuses it (its replication connection cannot skip the name), and
    // names the mode to use; the CLI's connections take it (once, this panicked in rustls).
    let verify_ca = url_with(&format!(
        "sslmode=verify-ca&sslrootcert={}",
        ca_path.display()
    ));
    let mut config = worker_config(&db);
    config.source_url = verify_ca.clone();
    let message = fatal_error(config).await?.to_string();
    ensure!(message.contains("sslmode=verify-full"), "{message}");
    let output = bemi(&["changes", "--json", "--destination-url", &verify_ca], &[])
        .await?
        .success()?;
    ensure!(output.stdout.contains("over TLS"), "{output:#?}");

    // A certificate file that is not there stops the worker at once, naming the setting.
    let mut config = worker_config(&db);
    config.source_url = url_with("sslmode=verify-full&sslrootcert=/nowhere/ca.pem");
    let message = fatal_error(config).await?.to_string();
    ensure!(message.contains("sslrootcert=/nowhere/ca.pem"), "{message}");

    db.pool.close().await;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}
e2e_test!(the_worker_streams_over_verified_tls_and_names_the_fix_when_tls_fails);
