//! The worker's errors. Each one a user can hit says what to do next; [`WorkerError::is_retryable`]
//! tells passing trouble (connections, restarts) from misconfiguration.

use pgwire_replication::PgWireError;

use crate::assembler::StreamError;
use crate::pgoutput::DecodeError;

/// Why the worker stopped or is retrying.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The source's `wal_level` is not `logical`.
    #[error(
        "the source database has wal_level = {found}, but capturing changes needs wal_level = \
         logical: run `ALTER SYSTEM SET wal_level = logical;` as a superuser and restart \
         PostgreSQL (managed services: set rds.logical_replication = 1 on RDS/Aurora, \
         cloudsql.logical_decoding = on on Cloud SQL, wal_level = logical on Azure)"
    )]
    WalLevel {
        /// The current setting.
        found: String,
    },
    /// The role may not use replication.
    #[error(
        "the role {role:?} may not start logical replication: run `ALTER ROLE \"{role}\" WITH \
         REPLICATION;` as a superuser (RDS/Aurora: `GRANT rds_replication TO \"{role}\";`), or \
         connect as a role that has it"
    )]
    NoReplicationPrivilege {
        /// The role of the source URL.
        role: String,
    },
    /// The replication slot lost WAL it still needed.
    #[error(
        "the replication slot {slot:?} is lost (wal_status = lost): PostgreSQL removed WAL it \
         had not yet delivered, so the changes in that gap cannot be recovered. Drop it with \
         `SELECT pg_drop_replication_slot('{slot}');` and start the worker again (it creates a \
         new slot and captures from then on); raise max_slot_wal_keep_size or keep the worker \
         running to avoid this"
    )]
    SlotLost {
        /// The slot.
        slot: String,
    },
    /// The slot exists but cannot be used by this worker.
    #[error("the replication slot {slot:?} cannot be used: {detail}")]
    SlotUnusable {
        /// The slot.
        slot: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The server is older than PostgreSQL 14.
    #[error(
        "the source runs PostgreSQL {version}; bemi needs 14 or newer (for the `messages` option \
         of pgoutput): upgrade the server"
    )]
    ServerTooOld {
        /// `server_version`.
        version: String,
    },
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The publication could not be created or kept in sync.
    #[error(
        "could not set up the publication {publication:?}: {source}. The worker's role needs \
         CREATE on the database to create it and must own it and the tables to change it; \
         create it yourself (`CREATE PUBLICATION {publication} FOR ALL TABLES;`) or grant those \
         privileges"
    )]
    Publication {
        /// The publication.
        publication: String,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// An error talking to the source database.
    #[error("source database: {0}{hint}", hint = tls_hint(&.0.to_string()))]
    Source(#[source] sqlx::Error),
    /// An error talking to the destination database.
    #[error("destination database: {0}{hint}", hint = tls_hint(&.0.to_string()))]
    Destination(#[source] sqlx::Error),
    /// The replication connection failed.
    #[error("replication connection: {0}{hint}", hint = tls_hint(&.0.to_string()))]
    Replication(#[source] PgWireError),
    /// The replication stream ended although nobody asked it to.
    #[error("the replication stream ended unexpectedly")]
    StreamEnded,
    /// The stream broke the protocol.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A pgoutput message could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// NATS JetStream trouble (connecting, publishing, consuming): retried.
    #[error("NATS: {0}")]
    Nats(String),
    /// The metrics endpoint could not listen.
    #[error("could not serve metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl WorkerError {
    /// Whether reconnecting (with backoff) may help: connection failures, server restarts,
    /// a slot still held by a previous connection. Misconfiguration is not retried.
    ///
    /// ```
    /// use bemi_worker::WorkerError;
    ///
    /// assert!(!WorkerError::WalLevel { found: "replica".into() }.is_retryable());
    /// assert!(WorkerError::StreamEnded.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::WalLevel { .. }
            | WorkerError::NoReplicationPrivilege { .. }
            | WorkerError::SlotLost { .. }
            | WorkerError::SlotUnusable { .. }
            | WorkerError::ServerTooOld { .. }
            | WorkerError::InvalidConfig(_)
            | WorkerError::Metrics { .. } => false,
            WorkerError::Publication { source, .. } => sql_is_retryable(source),
            WorkerError::Source(error) | WorkerError::Destination(error) => sql_is_retryable(error),
            WorkerError::Replication(error) => crate::source::is_retryable(error),
            WorkerError::StreamEnded
            | WorkerError::Stream(_)
            | WorkerError::Decode(_)
            | WorkerError::Nats(_) => true,
        }
    }
}

/// Whether an I/O error is TLS refusing the connection (rustls reports through `io::Error`).
fn is_tls_refusal(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// What to change in the URL when a connection failed over TLS, or without it at a server that
/// only takes TLS; nothing for other errors.
pub(crate) fn tls_hint(message: &str) -> &'static str {
    let message = message.to_lowercase();
    if message.contains("no pg_hba.conf entry") && message.contains("no encryption") {
        " (the server accepts only TLS connections from here: add sslmode=verify-full, or \
         sslmode=require, to the URL)"
    } else if message.contains("tls") || message.contains("certificate") {
        " (check the URL's TLS settings: sslmode=verify-full checks the server's certificate \
         against sslrootcert — the PEM file of the CA that signed it, Mozilla's roots without \
         it — and its host name; verify-ca skips the name, require encrypts without checking, \
         disable turns TLS off)"
    } else {
        ""
    }
}

/// Connection trouble, shutdowns, and transient server states are worth retrying; errors that
/// say the configuration or the privileges are wrong are not.
fn sql_is_retryable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => false,
        // A certificate that does not verify (or another TLS refusal) stays so until the URL
        // or the server changes.
        sqlx::Error::Io(io) if is_tls_refusal(io) => false,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 28: invalid authorization; 42501: insufficient privilege; 3D000: no such database;
            // 42602: an invalid name (e.g. of the slot).
            !(code.starts_with("28") || code == "42501" || code == "3D000" || code == "42602")
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::tls_hint;

    #[test]
    fn tls_failures_name_the_url_setting_to_change() {
        assert!(tls_hint("no pg_hba.conf entry for host \"127.0.0.1\", user \"bemi\", database \"app\", no encryption").contains("sslmode=verify-full"));
        assert!(
            tls_hint("error with TLS: invalid peer certificate: UnknownIssuer")
                .contains("sslrootcert")
        );
        assert_eq!(tls_hint("connection refused"), "");
    }
}
