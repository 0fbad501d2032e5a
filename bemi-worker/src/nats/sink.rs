//! The capture's side: a [`Sink`] that publishes pieces into the change stream.

use std::collections::VecDeque;
use std::sync::Arc;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self};
use sqlx::{Connection as _, PgConnection};
use tokio::sync::oneshot;

use super::{NatsConfig, connect, ensure_stream, wire};
use crate::assembler::{Piece, ResumePoint};
use crate::capture::{PreviousCommit, Sink, SinkWriter};
use crate::error::WorkerError;
use crate::metrics::WorkerMetrics;
use crate::schema_history::{self, SchemaVersion, TableSchema};

/// Publishes not awaited at once, at most: enough to fill the connection, far below the
/// client's limit of acknowledgements in flight (5 000), past which a publish would wait for
/// ever.
const PUBLISH_WINDOW: usize = 256;

/// The change stream as the capture's sink, with the source connection that keeps the schema
/// history (a capture into NATS has no destination database of its own).
pub(crate) struct NatsSink {
    writer: NatsWriter,
}

/// Publishes batches, one at a time.
pub(crate) struct NatsWriter {
    jetstream: jetstream::Context,
    config: NatsConfig,
    partitions: u32,
    max_payload: usize,
    /// The source cluster's system identifier, sent with each message.
    source: Option<Arc<str>>,
    database: Arc<str>,
    slot: Arc<str>,
    history: PgConnection,
    metrics: Arc<WorkerMetrics>,
}

impl NatsSink {
    /// Connects to the server and the stream (created if missing), and to the source through
    /// `history` for the schema history of the worker of `slot` on `database`.
    pub(crate) async fn open(
        config: &NatsConfig,
        source: Option<&str>,
        database: &str,
        slot: &str,
        mut history: PgConnection,
        metrics: Arc<WorkerMetrics>,
    ) -> Result<Self, WorkerError> {
        let connection = connect(config, "bemi-worker").await?;
        let (_, partitions) = ensure_stream(&connection.jetstream, config).await?;
        sqlx::raw_sql(schema_history::TABLE_SQL)
            .execute(&mut history)
            .await
            .map_err(WorkerError::Source)?;
        metrics.record_nats_published(0, 0);
        tracing::info!(
            stream = %config.stream,
            partitions,
            server = %connection.client.server_info().version,
            "publishing changes to NATS JetStream"
        );
        Ok(Self {
            writer: NatsWriter {
                max_payload: connection.client.server_info().max_payload,
                jetstream: connection.jetstream,
                config: config.clone(),
                partitions,
                source: source.map(Arc::from),
                database: database.into(),
                slot: slot.into(),
                history,
                metrics,
            },
        })
    }

    /// The stored schema history up to `start_lsn`.
    pub(crate) async fn schema_history(
        &mut self,
        start_lsn: u64,
    ) -> Result<Vec<(u64, TableSchema)>, WorkerError> {
        let writer = &mut self.writer;
        schema_history::load(
            &mut writer.history,
            &writer.database,
            &writer.slot,
            start_lsn,
        )
        .await
        .map_err(WorkerError::Source)
    }

    /// Stores versions of the schema history read outside the stream.
    pub(crate) async fn store_schemas(
        &mut self,
        versions: &[SchemaVersion],
    ) -> Result<(), WorkerError> {
        let writer = &mut self.writer;
        schema_history::insert(
            &mut writer.history,
            &writer.database,
            &writer.slot,
            versions,
        )
        .await
        .map_err(WorkerError::Source)
    }

    /// Closes the source connection.
    pub(crate) async fn close(self) {
        let _ = self.writer.history.close().await;
    }
}

impl Sink for NatsSink {
    type Writer = NatsWriter;

    /// The slot's confirmed position: what the stream acknowledged. A transaction is always
    /// published again whole (its messages have the same ids, which the stream de-duplicates).
    fn resume_point(&self) -> ResumePoint {
        ResumePoint::default()
    }

    /// One writer: batches are published in stream order.
    fn into_writers(self) -> Vec<NatsWriter> {
        vec![self.writer]
    }
}

impl SinkWriter for NatsWriter {
    async fn write(
        mut self,
        pieces: &[Piece],
        _resume: ResumePoint,
        previous: Option<PreviousCommit>,
        committed: oneshot::Sender<bool>,
    ) -> (Self, Result<u64, WorkerError>) {
        let result = self.publish(pieces, previous).await;
        let _ = committed.send(result.is_ok());
        (self, result)
    }
}

impl NatsWriter {
    /// Publishes `pieces` and waits for every acknowledgement; then stores their schema
    /// versions. Returns how many changes the stream took as new.
    async fn publish(
        &mut self,
        pieces: &[Piece],
        previous: Option<PreviousCommit>,
    ) -> Result<u64, WorkerError> {
        if let Some(previous) = previous
            && !previous.await.unwrap_or(false)
        {
            return Err(WorkerError::Nats(
                "an earlier batch was not published; this one waits for the retry".to_owned(),
            ));
        }
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
                    .map_err(|error| WorkerError::Nats(format!("publishing: {error}")))?;
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
        let schemas: Vec<SchemaVersion> = pieces
            .iter()
            .flat_map(|piece| piece.schemas.iter().cloned())
            .collect();
        schema_history::insert(&mut self.history, &self.database, &self.slot, &schemas)
            .await
            .map_err(WorkerError::Source)?;
        self.metrics
            .record_nats_published(outcome.messages, outcome.duplicates);
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
    async fn settle(
        &mut self,
        (ack, changes): (PublishAckFuture, usize),
    ) -> Result<(), WorkerError> {
        let ack = ack.await.map_err(|error| {
            WorkerError::Nats(format!("waiting for a publish acknowledgement: {error}"))
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
