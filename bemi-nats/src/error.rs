//! The errors of the NATS sink and the store, a leaf module.

use bemi_worker::{SinkError, WorkerError};

/// Why the store (or the NATS sink) stopped or is retrying.
///
/// ```
/// use bemi_nats::NatsError;
///
/// let error = NatsError::InvalidConfig("stream name \"a.b\": use letters, digits, '-' and '_'".into());
/// assert!(!error.is_retryable());
/// assert!(NatsError::Nats("connection closed".into()).is_retryable());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The configuration cannot work (a URL, a name, a file, a server without JetStream).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// NATS JetStream trouble (connecting, publishing, consuming): retried.
    #[error("NATS: {0}")]
    Nats(String),
    /// The destination database (of the store): retried unless it names a configuration or
    /// privilege problem (see [`WorkerError::is_retryable`]).
    #[error(transparent)]
    Destination(WorkerError),
}

impl NatsError {
    /// An error of the destination database.
    pub(crate) fn destination(error: sqlx::Error) -> Self {
        NatsError::Destination(WorkerError::Destination(error))
    }

    /// Whether reconnecting (with backoff) may help.
    ///
    /// ```
    /// assert!(bemi_nats::NatsError::Nats("timed out".into()).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            NatsError::InvalidConfig(_) => false,
            NatsError::Nats(_) => true,
            NatsError::Destination(error) => error.is_retryable(),
        }
    }
}

impl From<NatsError> for SinkError {
    fn from(error: NatsError) -> Self {
        if error.is_retryable() {
            SinkError::retryable(error)
        } else {
            SinkError::fatal(error)
        }
    }
}
