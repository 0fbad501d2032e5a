//! The replication connection (the capture loop sees it through
//! [`ReplicationSource`](crate::capture::ReplicationSource)).
//!
//! The implementation, [`PgWireSource`], uses the pgwire-replication crate for the wire
//! protocol (authentication, CopyBoth streaming, keepalive replies, standby status updates). It
//! only ever reports positions we [`confirm`](PgWireSource::confirm), so the slot never
//! moves past what the destination has committed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, TlsConfig};
use sqlx::postgres::PgConnectOptions;

use crate::error::WorkerError;
use crate::tls::TlsSettings;

/// One event of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceEvent {
    /// A transaction starts; it committed at `commit_lsn` and `commit_time` (µs since the
    /// PostgreSQL epoch).
    Begin {
        /// LSN of its commit record.
        commit_lsn: u64,
        /// Its transaction id: the stream's 32 bits from [`PgWireSource`], the full 64-bit id
        /// once the worker's source has extended it (see `crate::xid`).
        xid: u64,
        /// Commit time.
        commit_time: i64,
    },
    /// A raw pgoutput message (Relation, Type, Origin, Insert, Update, Delete, Truncate).
    Data {
        /// LSN of the change (0 for Relation and Type messages).
        position: u64,
        /// When the server sent it (µs since the PostgreSQL epoch).
        sent_at: i64,
        /// The message.
        data: Bytes,
    },
    /// A logical-decoding message (`pg_logical_emit_message`).
    Message {
        /// Part of a transaction (else delivered at once).
        transactional: bool,
        /// Its LSN.
        lsn: u64,
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: Bytes,
    },
    /// The transaction ends.
    Commit {
        /// LSN of the commit record.
        commit_lsn: u64,
        /// LSN just past the commit record: the position to confirm once it is applied.
        end_lsn: u64,
    },
    /// The server is alive; everything before `wal_end` has been sent.
    KeepAlive {
        /// The server's sent position.
        wal_end: u64,
    },
}

/// How to reach the source database, taken apart from its URL.
#[derive(Clone)]
pub(crate) struct SourceConnection {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
    tls: TlsConfig,
}

impl std::fmt::Debug for SourceConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConnection")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl SourceConnection {
    /// Parses a `postgres://user:password@host:port/database?sslmode=…` URL (the password may
    /// also come from `PGPASSWORD`).
    ///
    /// TLS follows the URL's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`, as the worker's
    /// other connections do (see [`crate::tls`]).
    pub(crate) fn from_url(url: &str) -> Result<Self, WorkerError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| WorkerError::InvalidConfig(format!("source URL: {e}")))?;
        let parsed = url::Url::parse(url)
            .map_err(|e| WorkerError::InvalidConfig(format!("source URL: {e}")))?;
        // As sqlx reads it (so both kinds of connection log in alike): the `password` query
        // parameter, else the URL's user part, else PGPASSWORD.
        let password = parsed
            .query_pairs()
            .find(|(key, _)| key == "password")
            .map(|(_, value)| value.into_owned())
            .or_else(|| parsed.password().map(percent_decode))
            .or_else(|| std::env::var("PGPASSWORD").ok())
            .unwrap_or_default();
        let database = options
            .get_database()
            .unwrap_or(options.get_username())
            .to_owned();
        if options.get_socket().is_some() || options.get_host().starts_with('/') {
            return Err(WorkerError::InvalidConfig(
                "the replication connection needs a TCP host in the source URL (unix sockets \
                 are not supported)"
                    .to_owned(),
            ));
        }
        let tls = TlsSettings::from_url(url)?.replication()?;
        Ok(Self {
            host: options.get_host().to_owned(),
            port: options.get_port(),
            user: options.get_username().to_owned(),
            password,
            database,
            tls,
        })
    }

    /// The source database's name.
    pub(crate) fn database(&self) -> &str {
        &self.database
    }

    /// How the replication connection uses TLS.
    #[cfg(test)]
    pub(crate) fn tls(&self) -> &TlsConfig {
        &self.tls
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map_or_else(|| text.to_owned(), |(_, value)| value.into_owned())
}

/// [`ReplicationSource`] over pgwire-replication.
pub(crate) struct PgWireSource {
    client: ReplicationClient,
    confirmed: AtomicU64,
}

impl std::fmt::Debug for PgWireSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWireSource").finish_non_exhaustive()
    }
}

impl PgWireSource {
    /// Starts streaming `slot` (pgoutput, `messages 'true'`) for `publication` from `start_lsn`
    /// (0: the slot's confirmed position). The session runs with ISO dates in UTC, exact floats
    /// and hex bytea, which the JSON conversion relies on.
    pub(crate) async fn start(
        source: &SourceConnection,
        slot: &str,
        publication: &str,
        start_lsn: u64,
    ) -> Result<Self, WorkerError> {
        let config = ReplicationConfig::new(
            source.host.clone(),
            source.user.clone(),
            source.password.clone(),
            source.database.clone(),
            slot.to_owned(),
            publication,
        )
        .with_port(source.port)
        .with_tls(source.tls.clone())
        .with_start_lsn(Lsn(start_lsn))
        .with_status_interval(Duration::from_secs(1))
        .with_wakeup_interval(Duration::from_secs(2))
        .with_buffer_size(4096)
        .with_application_name("bemi-worker")
        .with_options(
            "-c datestyle=ISO -c timezone=UTC -c intervalstyle=iso_8601 \
             -c extra_float_digits=3 -c bytea_output=hex",
        );
        let mut client = ReplicationClient::connect(config)
            .await
            .map_err(WorkerError::replication)?;
        client
            .wait_started()
            .await
            .map_err(WorkerError::replication)?;
        Ok(Self {
            client,
            confirmed: AtomicU64::new(start_lsn),
        })
    }
}

impl PgWireSource {
    /// The next event; `None` when the stream ended.
    pub(crate) async fn recv(&mut self) -> Result<Option<SourceEvent>, WorkerError> {
        use pgwire_replication::ReplicationEvent as E;
        loop {
            let event = match self.client.recv().await {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(None),
                Err(error) => return Err(WorkerError::replication(error)),
            };
            return Ok(Some(match event {
                E::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => SourceEvent::Begin {
                    commit_lsn: final_lsn.0,
                    xid: u64::from(xid),
                    commit_time: commit_time_micros,
                },
                E::XLogData {
                    wal_start,
                    server_time_micros,
                    data,
                    ..
                } => SourceEvent::Data {
                    position: wal_start.0,
                    sent_at: server_time_micros,
                    data,
                },
                E::Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                } => SourceEvent::Message {
                    transactional,
                    lsn: lsn.0,
                    prefix,
                    content,
                },
                E::Commit { lsn, end_lsn, .. } => SourceEvent::Commit {
                    commit_lsn: lsn.0,
                    end_lsn: end_lsn.0,
                },
                E::KeepAlive { wal_end, .. } => SourceEvent::KeepAlive { wal_end: wal_end.0 },
                // We never ask for a stop position.
                E::StoppedAt { .. } => continue,
            }));
        }
    }

    /// Confirms that everything before `lsn` is durably applied; the slot may advance to it.
    pub(crate) fn confirm(&self, lsn: u64) {
        self.confirmed.fetch_max(lsn, Ordering::Relaxed);
        self.client.update_applied_lsn(Lsn(lsn));
    }

    /// Ends the stream, after giving the last confirmation up to `timeout` to reach the server.
    pub(crate) async fn shutdown(&mut self, timeout: Duration) {
        // pgwire-replication sends no last status update when it stops: wait until our last
        // confirmation went out with a periodic one (every second).
        let metrics = self.client.metrics();
        let target = Lsn(self.confirmed.load(Ordering::Relaxed));
        let deadline = tokio::time::Instant::now() + timeout;
        while metrics.last_applied_lsn() < target
            && self.client.is_running()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(error) = self.client.shutdown().await {
            tracing::debug!(%error, "replication connection ended with an error at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PgWireSource, SourceConnection};

    /// The worker's other connections check the certificate before the replication connection
    /// opens, so this one is tested on its own: against a TLS-only server whose certificate
    /// another CA signed, it refuses, and says so as an error not worth retrying.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_replication_connection_refuses_a_certificate_it_cannot_verify() {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

        let authority = || {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let (ca, stranger) = (authority(), authority());
        let key = KeyPair::generate().unwrap();
        let certificate = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let files = tempfile::tempdir().unwrap();
        let stranger_path = files.path().join("stranger.pem");
        std::fs::write(&stranger_path, stranger.pem()).unwrap();
        let options =
            bemi_dev::LaunchOptions::default().tls_only(certificate.pem(), key.serialize_pem());
        let pg =
            tokio::task::spawn_blocking(move || bemi_dev::EphemeralPostgres::start_with(options))
                .await
                .unwrap()
                .unwrap();

        let url = format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            pg.url().replace("127.0.0.1", "localhost"),
            stranger_path.display()
        );
        let source = SourceConnection::from_url(&url).unwrap();
        match PgWireSource::start(&source, "bemi", "bemi", 0).await {
            Ok(_) => panic!("the replication connection trusted an unknown CA"),
            Err(error) => assert!(
                !error.is_retryable() && error.to_string().contains("certificate"),
                "{error}"
            ),
        }
        tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
    }

    #[test]
    fn a_percent_encoded_password_and_a_port_parse_from_the_url() {
        let source = SourceConnection::from_url("postgres://bemi:s%40cret@db:6543/app").unwrap();
        assert_eq!(source.database(), "app");
    }

    #[test]
    fn verify_full_checks_the_host_name() {
        use crate::source::SourceConnection;

        let source =
            SourceConnection::from_url("postgres://u@db.internal/app?sslmode=verify-full").unwrap();
        assert!(source.tls().mode.verifies_hostname());
    }
}
