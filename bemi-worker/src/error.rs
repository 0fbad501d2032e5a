//! The worker's errors, a leaf module: each one a user can hit says what to do next;
//! [`WorkerError::is_retryable`] tells passing trouble (connections, restarts) from
//! misconfiguration. Every type a variant holds is public ([`StreamError`], [`DecodeError`],
//! [`ReplicationError`], [`SinkError`]) or `sqlx::Error`.

use std::fmt;

use pgwire_replication::PgWireError;

/// Why the worker stopped or is retrying.
///
/// ```
/// use bemi_worker::WorkerError;
///
/// fn advice(error: &WorkerError) -> &'static str {
///     match error {
///         WorkerError::WalLevel { .. } => "set wal_level = logical",
///         error if error.is_retryable() => "wait: the worker reconnects",
///         _ => "read the message: it names the fix",
///     }
/// }
/// assert_eq!(advice(&WorkerError::StreamEnded), "wait: the worker reconnects");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    Replication(#[source] ReplicationError),
    /// The replication stream ended although nobody asked it to.
    #[error("the replication stream ended unexpectedly")]
    StreamEnded,
    /// The stream broke the protocol.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A pgoutput message could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The sink (see [`Sink`](crate::sink::Sink)) failed: retried unless the sink said it
    /// cannot work ([`SinkError::is_retryable`]).
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The worker did not stream within the time it was given
    /// ([`WorkerHandle::wait_until_streaming`](crate::WorkerHandle::wait_until_streaming)).
    #[error(
        "the worker did not start streaming within {waited:?}; run with \
         RUST_LOG=bemi_worker=debug to see why"
    )]
    NotStreaming {
        /// How long it was given.
        waited: std::time::Duration,
    },
    /// The worker's task ended without an answer (it panicked, or its runtime shut down).
    #[error("the capture worker's task failed: {0}")]
    Task(String),
}

impl WorkerError {
    /// A replication connection failure.
    pub(crate) fn replication(error: PgWireError) -> Self {
        WorkerError::Replication(ReplicationError(error))
    }

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
            | WorkerError::Task(_) => false,
            WorkerError::NotStreaming { .. } => true,
            WorkerError::Publication { source, .. } => sql_is_retryable(source),
            WorkerError::Source(error) | WorkerError::Destination(error) => sql_is_retryable(error),
            WorkerError::Replication(error) => error.is_retryable(),
            WorkerError::Sink(error) => error.is_retryable(),
            WorkerError::StreamEnded | WorkerError::Stream(_) | WorkerError::Decode(_) => true,
        }
    }
}

/// A replication connection failure (of the pgwire-replication client, kept opaque).
///
/// ```
/// use bemi_worker::WorkerError;
///
/// fn passing(error: &WorkerError) -> bool {
///     match error {
///         WorkerError::Replication(replication) => replication.is_retryable(),
///         other => other.is_retryable(),
///     }
/// }
/// assert!(passing(&WorkerError::StreamEnded));
/// ```
#[derive(Debug)]
pub struct ReplicationError(PgWireError);

impl ReplicationError {
    /// Whether reconnecting may help: not for refused credentials or privileges, nor for a
    /// certificate that does not verify.
    pub fn is_retryable(&self) -> bool {
        replication_is_retryable(&self.0)
    }
}

impl fmt::Display for ReplicationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ReplicationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Whether a replication error is worth retrying (connection trouble, server restarts, a slot
/// still held by a previous connection) rather than a configuration problem.
fn replication_is_retryable(error: &PgWireError) -> bool {
    match error {
        PgWireError::Auth(_) => false,
        // A certificate that does not verify, TLS settings that cannot work, or a server
        // without TLS stay so; a handshake cut short (e.g. by a restart) is worth retrying.
        PgWireError::Tls(message) => {
            let message = message.to_lowercase();
            ![
                "certificate",
                "config error",
                "does not support tls",
                "received fatal alert",
                "unknownca",
            ]
            .iter()
            .any(|cause| message.contains(cause))
        }
        PgWireError::Server(message) => {
            !(message.contains("SQLSTATE 28") || message.contains("SQLSTATE 42501"))
        }
        _ => true,
    }
}

/// A failure of a [`Sink`](crate::sink::Sink): its cause, and whether retrying (the worker
/// reconnects with backoff and resumes from the last confirmed position) may help.
///
/// ```
/// use bemi_worker::SinkError;
///
/// let passing = SinkError::retryable("the broker did not answer");
/// assert!(passing.is_retryable());
/// let fatal = SinkError::fatal("the stream name has a dot: use letters and digits");
/// assert!(!fatal.is_retryable());
/// assert_eq!(fatal.to_string(), "the stream name has a dot: use letters and digits");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct SinkError {
    retryable: bool,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkError {
    /// Passing trouble (a connection, a timeout): the worker reconnects and writes again.
    pub fn retryable(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            retryable: true,
            source: source.into(),
        }
    }

    /// Trouble that retrying cannot fix (a configuration): the worker stops with it.
    pub fn fatal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            retryable: false,
            source: source.into(),
        }
    }

    /// Whether the worker retries after it.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The cause, e.g. to downcast to the sink's own error type.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

/// A protocol violation in the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A change outside a transaction.
    #[error("replication stream: a change arrived outside of a transaction")]
    NoTransaction,
    /// A change for a relation that was never described.
    #[error("replication stream: a change for relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
}

/// A malformed or unsupported pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message ended early.
    #[error("pgoutput message truncated while reading {0}")]
    Truncated(&'static str),
    /// A byte that is not valid where it was found.
    #[error("unexpected byte {byte:#04x} in pgoutput message while reading {what}")]
    Unexpected {
        /// What was being read.
        what: &'static str,
        /// The byte.
        byte: u8,
    },
    /// A string that is not valid UTF-8.
    #[error("pgoutput {0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
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
