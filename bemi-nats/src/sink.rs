//! The capture's side: a [`Sink`] that publishes the worker's changes into the change stream.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self};
use bemi_worker::SinkError;
use bemi_worker::sink::{Piece, Sink, SinkSession, SinkWriter};

use crate::connection::{NatsConfig, connect, ensure_stream};
use crate::error::NatsError;
use crate::wire;

/// Publishes not awaited at once, at most: enough to fill the connection, far below the
/// client's limit of acknowledgements in flight (5 000), past which a publish would wait for
/// ever.
const PUBLISH_WINDOW: usize = 256;

/// The change stream as the worker's sink: each transaction (each chunk of a large one)
/// becomes one message per partition it touches, with a `Nats-Msg-Id` made of its first
/// change's unique key, so that the stream de-duplicates a transaction published again.
///
/// ```no_run
/// use bemi_nats::{NatsConfig, NatsSink};
/// use bemi_worker::{Worker, WorkerConfig};
///
/// # async fn run() -> Result<(), bemi_worker::WorkerError> {
/// let sink = NatsSink::new(NatsConfig::new("nats://127.0.0.1:4222"));
/// let metrics = sink.metrics();
/// let worker = Worker::with_sink(WorkerConfig::new("postgres://bemi@127.0.0.1/app"), sink).spawn();
/// // …
/// worker.shutdown().await?;
/// println!("{}", metrics.render());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NatsSink {
    config: NatsConfig,
    metrics: Arc<NatsSinkMetrics>,
}

impl NatsSink {
    /// Publishes into the stream of `config` (created if missing, with its partitions).
    ///
    /// ```
    /// use bemi_nats::{NatsConfig, NatsSink};
    ///
    /// let sink = NatsSink::new(NatsConfig::new("nats://127.0.0.1:4222").stream("audit"));
    /// assert_eq!(sink.config().stream, "audit");
    /// assert_eq!(sink.metrics().messages_published(), 0);
    /// ```
    pub fn new(config: NatsConfig) -> Self {
        Self {
            config,
            metrics: Arc::default(),
        }
    }

    /// Its metrics (the worker's own cover the rest).
    pub fn metrics(&self) -> Arc<NatsSinkMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The stream's configuration.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }
}

/// Counters of a [`NatsSink`].
///
/// ```
/// let metrics = bemi_nats::NatsSinkMetrics::default();
/// assert_eq!(metrics.messages_published(), 0);
/// assert!(metrics.render().contains("bemi_nats_messages_published_total 0"));
/// ```
#[derive(Debug, Default)]
pub struct NatsSinkMetrics {
    messages: AtomicU64,
    duplicates: AtomicU64,
}

impl NatsSinkMetrics {
    /// Messages published into the stream and acknowledged.
    pub fn messages_published(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Published messages the stream already held (republished after a restart).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(512);
        for (name, help, value) in [
            (
                "bemi_nats_messages_published_total",
                "Messages published into the NATS change stream and acknowledged.",
                self.messages_published(),
            ),
            (
                "bemi_nats_duplicates_total",
                "Published messages the stream already held (republished after a restart).",
                self.duplicates(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out
    }

    fn record_published(&self, messages: u64, duplicates: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
    }
}

/// Publishes the batches of one session, one at a time: what [`NatsSink`] opens (the worker
/// drives it).
///
/// ```
/// fn is_the_sinks_writer(_: Option<bemi_nats::NatsWriter>)
/// where
///     bemi_nats::NatsSink: bemi_worker::sink::Sink<Writer = bemi_nats::NatsWriter>,
/// {
/// }
/// is_the_sinks_writer(None);
/// ```
#[derive(Debug)]
pub struct NatsWriter {
    jetstream: jetstream::Context,
    config: NatsConfig,
    partitions: u32,
    max_payload: usize,
    /// The source cluster's system identifier, sent with each message.
    source: Option<Arc<str>>,
    database: Arc<str>,
    metrics: Arc<NatsSinkMetrics>,
}

impl Sink for NatsSink {
    type Writer = NatsWriter;

    /// Connects to the server and the stream (created if missing).
    async fn open(&self, session: &SinkSession<'_>) -> Result<NatsWriter, SinkError> {
        let config = &self.config;
        let connection = connect(config, "bemi-worker").await?;
        let (_, partitions) = ensure_stream(&connection.jetstream, config).await?;
        tracing::info!(
            stream = %config.stream,
            partitions,
            server = %connection.client.server_info().version,
            "publishing changes to NATS JetStream"
        );
        Ok(NatsWriter {
            max_payload: connection.client.server_info().max_payload,
            jetstream: connection.jetstream,
            config: config.clone(),
            partitions,
            source: session.source_id().map(Arc::from),
            database: session.database().into(),
            metrics: Arc::clone(&self.metrics),
        })
    }
}

impl SinkWriter for NatsWriter {
    async fn write(&mut self, pieces: &[Piece]) -> Result<u64, SinkError> {
        Ok(self.publish(pieces).await?)
    }
}

impl NatsWriter {
    /// Publishes `pieces` and waits for every acknowledgement. Returns how many changes the
    /// stream took as new.
    async fn publish(&mut self, pieces: &[Piece]) -> Result<u64, NatsError> {
        let mut in_flight: VecDeque<(PublishAckFuture, usize)> = VecDeque::new();
        let mut outcome = Outcome::default();
        for piece in pieces {
            let messages = wire::encode(
                self.source.as_deref(),
                &self.database,
                piece.commit_lsn,
                &piece.rows,
                self.partitions,
                self.max_payload,
            );
            for message in messages {
                let mut publish = PublishMessage::build()
                    .payload(message.payload.into())
                    .message_id(&message.id);
                if let Some(part) = &message.part {
                    // A part of a change too large for one message: the store joins them.
                    publish = publish
                        .header(wire::PART_HEADER, format!("{}/{}", part.index, part.count))
                        .header(wire::WHOLE_HEADER, part.whole.as_str());
                }
                let ack = self
                    .jetstream
                    .send_publish(self.config.subject(message.partition), publish)
                    .await
                    .map_err(|error| NatsError::Nats(format!("publishing: {error}")))?;
                in_flight.push_back((ack, message.changes));
                if in_flight.len() >= PUBLISH_WINDOW
                    && let Some(oldest) = in_flight.pop_front()
                {
                    outcome.settle(oldest).await?;
                }
            }
        }
        while let Some(oldest) = in_flight.pop_front() {
            outcome.settle(oldest).await?;
        }
        self.metrics
            .record_published(outcome.messages, outcome.duplicates);
        if outcome.duplicates > 0 {
            tracing::info!(
                duplicates = outcome.duplicates,
                "the stream already held some of these messages (a republish after a restart)"
            );
        }
        Ok(outcome.new_changes)
    }
}

/// What the acknowledgements of a batch said.
#[derive(Debug, Default)]
struct Outcome {
    messages: u64,
    duplicates: u64,
    new_changes: u64,
}

impl Outcome {
    async fn settle(&mut self, (ack, changes): (PublishAckFuture, usize)) -> Result<(), NatsError> {
        let ack = ack.await.map_err(|error| {
            NatsError::Nats(format!("waiting for a publish acknowledgement: {error}"))
        })?;
        self.messages += 1;
        if ack.duplicate {
            self.duplicates += 1;
        } else {
            self.new_changes += changes as u64;
        }
        Ok(())
    }
}
