//! Capture through NATS JetStream (feature `nats`): the worker publishes each committed
//! transaction into a JetStream stream instead of writing `changes`, and one or more
//! [`Store`]s write the stream into `changes`.
//!
//! ```text
//! PostgreSQL ──WAL──► bemi worker --sink nats://… ──► stream "bemi" (file storage,
//!                                                      subjects bemi.changes.<partition>)
//!                                                          │
//!                          changes ◄── bemi store --from nats://… (one or more processes)
//! ```
//!
//! - **Capture** ([`WorkerConfig::nats`](crate::WorkerConfig::nats)): each transaction (each
//!   chunk of a large one) becomes one message per partition it touches, with a `Nats-Msg-Id`
//!   made of its first change's unique key; the slot is confirmed only once the stream has
//!   acknowledged every message up to that position, so a crash republishes, and the stream
//!   de-duplicates within its duplicate window (2 min).
//! - **Store** ([`Store`]): one active writer per partition (a PostgreSQL advisory lock, held by
//!   the connection that writes), a durable pull consumer per partition, the stream sequence
//!   recorded in the same transaction as the rows, acknowledgements after the commit — so every
//!   change lands in `changes` exactly once (its unique key catches what the window misses), and
//!   all changes of a row (one partition) in commit order. Several stores share the partitions.
//! - **Server**: nats-server 2.9 or newer, with JetStream (`-js`). Only what 2.9 has is used:
//!   message-id de-duplication, one filter subject per consumer, a work-queue stream.

mod sink;
mod store;
pub(crate) mod wire;

use std::time::Duration;

use async_nats::jetstream::{self, stream};

pub(crate) use sink::NatsSink;
pub use store::{Store, StoreConfig, StoreMetrics};

use crate::error::WorkerError;

/// Partitions of a new stream, unless configured.
pub const DEFAULT_PARTITIONS: u32 = 8;

/// Where the change stream is.
///
/// ```
/// let nats = bemi_worker::nats::NatsConfig::new("nats://127.0.0.1:4222").stream("audit");
/// assert_eq!(nats.subject(3), "audit.changes.3");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// The server, `nats://HOST:PORT`.
    pub url: String,
    /// The stream's name (created if missing).
    pub stream: String,
    /// Partitions of the stream when the capture creates it (fixed afterwards: the stream's
    /// description records it).
    pub partitions: u32,
}

impl NatsConfig {
    /// The stream `bemi` on `url`, with [`DEFAULT_PARTITIONS`].
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "bemi".to_owned(),
            partitions: DEFAULT_PARTITIONS,
        }
    }

    /// Another stream name.
    #[must_use]
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = stream.into();
        self
    }

    /// Partitions for a stream the capture creates.
    #[must_use]
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// The subject of a partition.
    pub fn subject(&self, partition: u32) -> String {
        format!("{}.changes.{partition}", self.stream)
    }

    /// Checks the names before connecting.
    pub(crate) fn validate(&self) -> Result<(), WorkerError> {
        let valid = !self.stream.is_empty()
            && self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(WorkerError::InvalidConfig(format!(
                "stream name {:?}: use letters, digits, '-' and '_'",
                self.stream
            )));
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(WorkerError::InvalidConfig(format!(
                "{} partitions: use 1 to 1024",
                self.partitions
            )));
        }
        if !self.url.starts_with("nats://") {
            return Err(WorkerError::InvalidConfig(format!(
                "{:?} is not a NATS URL: write nats://HOST:PORT",
                self.url
            )));
        }
        Ok(())
    }
}

/// A connection to the server, checked: JetStream on, version 2.9 or newer.
pub(crate) struct Connection {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
}

/// Connects as `name`.
pub(crate) async fn connect(config: &NatsConfig, name: &str) -> Result<Connection, WorkerError> {
    config.validate()?;
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(config.url.as_str())
        .await
        .map_err(|error| WorkerError::Nats(format!("connecting to {}: {error}", config.url)))?;
    let info = client.server_info();
    check_server(&info.version, info.jetstream)?;
    let jetstream = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client.clone());
    Ok(Connection { client, jetstream })
}

/// Refuses a server that cannot do what the stream needs, naming the fix.
fn check_server(version: &str, jetstream: bool) -> Result<(), WorkerError> {
    let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
    let (major, minor) = (parts.next().flatten(), parts.next().flatten());
    match (major, minor) {
        (Some(major), Some(minor)) if (major, minor) >= (2, 9) => {}
        _ => {
            return Err(WorkerError::InvalidConfig(format!(
                "nats-server {version} is too old: the change stream needs 2.9 or newer \
                 (message de-duplication, pull consumers); upgrade it"
            )));
        }
    }
    if !jetstream {
        return Err(WorkerError::InvalidConfig(
            "nats-server runs without JetStream: start it with -js (or a `jetstream {}` block \
             in its configuration)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The stream's description, which records its partitions.
fn description(partitions: u32) -> String {
    format!("bemi-rs change stream; partitions={partitions}")
}

/// The partitions a stream's description records.
fn partitions_of(description: Option<&str>) -> Option<u32> {
    description?
        .strip_prefix("bemi-rs change stream; partitions=")?
        .parse()
        .ok()
}

/// The change stream and its partitions: created (file storage, work queue) if missing.
pub(crate) async fn ensure_stream(
    jetstream: &jetstream::Context,
    config: &NatsConfig,
) -> Result<(stream::Stream, u32), WorkerError> {
    let stream = match jetstream.get_stream(&config.stream).await {
        Ok(stream) => stream,
        Err(error) if is_stream_not_found(&error) => jetstream
            .create_stream(stream::Config {
                name: config.stream.clone(),
                description: Some(description(config.partitions)),
                subjects: vec![format!("{}.changes.*", config.stream)],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: Duration::from_secs(120),
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|error| {
                WorkerError::Nats(format!("creating the stream {:?}: {error}", config.stream))
            })?,
        Err(error) => {
            return Err(WorkerError::Nats(format!(
                "looking up the stream {:?}: {error}",
                config.stream
            )));
        }
    };
    let partitions =
        partitions_of(stream.cached_info().config.description.as_deref()).ok_or_else(|| {
            WorkerError::InvalidConfig(format!(
                "the stream {:?} exists but was not created by bemi (its description does not \
                 record partitions): give bemi a stream of its own with --stream",
                config.stream
            ))
        })?;
    Ok((stream, partitions))
}

fn is_stream_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_servers_and_servers_without_jetstream_are_refused_with_the_fix() {
        assert!(check_server("2.9.10", true).is_ok());
        assert!(check_server("2.10.1", true).is_ok());
        let old = check_server("2.8.4", true).unwrap_err().to_string();
        assert!(old.contains("2.9 or newer"), "{old}");
        let off = check_server("2.9.10", false).unwrap_err().to_string();
        assert!(off.contains("-js"), "{off}");
    }

    #[test]
    fn the_description_records_the_partitions() {
        assert_eq!(partitions_of(Some(&description(12))), Some(12));
        assert_eq!(partitions_of(Some("someone else's")), None);
        assert_eq!(partitions_of(None), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(NatsConfig::new("nats://127.0.0.1:4222").validate().is_ok());
        assert!(NatsConfig::new("http://x").validate().is_err());
        assert!(
            NatsConfig::new("nats://x")
                .stream("a.b")
                .validate()
                .is_err()
        );
        assert!(
            NatsConfig::new("nats://x")
                .partitions(0)
                .validate()
                .is_err()
        );
    }
}
