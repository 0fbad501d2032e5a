//! Where captured changes go: the extension point for destinations other than the `changes`
//! table (e.g. `bemi-nats`'s JetStream stream).
//!
//! A [`Sink`] is opened at the start of every session (and again after each reconnect) and
//! gives a [`SinkWriter`], which is handed the rows of the stream in order, a batch at a time.
//! A batch's position is confirmed to the replication slot only after
//! [`write`](SinkWriter::write) returned `Ok`: a sink that crashed, failed or was stopped gets
//! the transactions after the last confirmed position again, whole, so it must take a
//! transaction written twice as one (e.g. by an id made of its first change's transaction
//! and position). The worker keeps the schema history of a capture into a sink in
//! the source database (`_bemi_worker_schema`).
//!
//! ```
//! use bemi_worker::sink::{Piece, Sink, SinkSession, SinkWriter};
//! use bemi_worker::SinkError;
//!
//! /// Prints each change.
//! struct Print;
//!
//! struct PrintWriter {
//!     database: String,
//! }
//!
//! impl Sink for Print {
//!     type Writer = PrintWriter;
//!
//!     async fn open(&self, session: &SinkSession<'_>) -> Result<PrintWriter, SinkError> {
//!         Ok(PrintWriter { database: session.database().to_owned() })
//!     }
//! }
//!
//! impl SinkWriter for PrintWriter {
//!     async fn write(&mut self, pieces: &[Piece]) -> Result<u64, SinkError> {
//!         let mut written = 0;
//!         for row in pieces.iter().flat_map(|piece| &piece.rows) {
//!             println!("{} {}.{}: {}", self.database, row.schema, row.table, row.after);
//!             written += 1;
//!         }
//!         Ok(written)
//!     }
//! }
//!
//! # fn spawn() {
//! // Then: bemi_worker::Worker::with_sink(config, Print).spawn()
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sqlx::{Connection as _, PgConnection};
use tokio::sync::oneshot;

pub use crate::assembler::Piece;
use crate::assembler::ResumePoint;
use crate::capture::{Output, OutputWriter, PreviousCommit};
use crate::error::{SinkError, WorkerError};
pub use crate::rows::ChangeRow;

/// Appends `text` to `out` as a JSON string, escaped the way the worker writes the JSON of a
/// [`ChangeRow`] (so a sink that frames rows in JSON of its own stays consistent with it).
///
/// ```
/// let mut out = String::new();
/// bemi_worker::sink::push_json_string(&mut out, "say \"hi\"\n");
/// assert_eq!(out, r#""say \"hi\"\n""#);
/// ```
pub fn push_json_string(out: &mut String, text: &str) {
    crate::json_value::write_string(out, text);
}
pub use crate::schema_history::SchemaVersion;
use crate::schema_history::{self, TableSchema};

/// A destination for captured changes, opened once per session.
pub trait Sink: Send + Sync + 'static {
    /// What writes the session's batches.
    type Writer: SinkWriter;

    /// Connects (and checks what must be there) for one session of the worker; an error
    /// ends the session (retried when [`SinkError::is_retryable`]).
    fn open(
        &self,
        session: &SinkSession<'_>,
    ) -> impl Future<Output = Result<Self::Writer, SinkError>> + Send;
}

/// Writes the batches of one session, one at a time, in stream order.
pub trait SinkWriter: Send + Sized + 'static {
    /// Stores the rows of `pieces` (pieces of transactions, in commit order; a large
    /// transaction comes in several pieces) durably, and returns how many changes were new.
    /// The worker confirms their position to the slot once this returns `Ok`.
    fn write(&mut self, pieces: &[Piece]) -> impl Future<Output = Result<u64, SinkError>> + Send;

    /// Ends the session (after the last batch, or when the worker only
    /// [prepares](crate::Worker::prepare)). Nothing by default.
    fn close(self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What a session tells a [`Sink`] it opens: which source database and slot the changes come
/// from.
///
/// ```
/// let session = bemi_worker::sink::SinkSession::new(Some("7321"), "app", "bemi");
/// assert_eq!((session.source_id(), session.database(), session.slot()), (Some("7321"), "app", "bemi"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SinkSession<'a> {
    source_id: Option<&'a str>,
    database: &'a str,
    slot: &'a str,
}

impl<'a> SinkSession<'a> {
    /// A session on `database` through `slot`, of the cluster `source_id` (its system
    /// identifier, when the server gives it).
    pub fn new(source_id: Option<&'a str>, database: &'a str, slot: &'a str) -> Self {
        Self {
            source_id,
            database,
            slot,
        }
    }

    /// The source cluster's system identifier (`None` where a server does not tell it).
    pub fn source_id(&self) -> Option<&'a str> {
        self.source_id
    }

    /// The source database's name.
    pub fn database(&self) -> &'a str {
        self.database
    }

    /// The replication slot.
    pub fn slot(&self) -> &'a str {
        self.slot
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`Sink`] behind a pointer (the worker holds any sink).
pub(crate) trait DynSink: Send + Sync {
    fn open<'a>(
        &'a self,
        session: &'a SinkSession<'a>,
    ) -> BoxFuture<'a, Result<Box<dyn DynWriter>, SinkError>>;
}

impl<S: Sink> DynSink for S {
    fn open<'a>(
        &'a self,
        session: &'a SinkSession<'a>,
    ) -> BoxFuture<'a, Result<Box<dyn DynWriter>, SinkError>> {
        Box::pin(async move {
            let writer = Sink::open(self, session).await?;
            Ok(Box::new(writer) as Box<dyn DynWriter>)
        })
    }
}

/// A [`SinkWriter`] behind a pointer.
pub(crate) trait DynWriter: Send {
    fn write<'a>(&'a mut self, pieces: &'a [Piece]) -> BoxFuture<'a, Result<u64, SinkError>>;
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

impl<W: SinkWriter> DynWriter for W {
    fn write<'a>(&'a mut self, pieces: &'a [Piece]) -> BoxFuture<'a, Result<u64, SinkError>> {
        Box::pin(SinkWriter::write(self, pieces))
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(SinkWriter::close(*self))
    }
}

/// A user's sink as the capture loop's output: one writer, and the schema history kept in the
/// source through `history` (stored after each batch the sink took).
pub(crate) struct SinkOutput {
    writer: Box<dyn DynWriter>,
    history: PgConnection,
    database: Arc<str>,
    slot: Arc<str>,
}

impl SinkOutput {
    /// Wraps `writer`; `history` is a connection to the source, whose history table is
    /// created if missing.
    pub(crate) async fn new(
        writer: Box<dyn DynWriter>,
        mut history: PgConnection,
        database: &str,
        slot: &str,
    ) -> Result<Self, WorkerError> {
        sqlx::raw_sql(schema_history::TABLE_SQL)
            .execute(&mut history)
            .await
            .map_err(WorkerError::Source)?;
        Ok(Self {
            writer,
            history,
            database: database.into(),
            slot: slot.into(),
        })
    }

    /// The stored schema history up to `start_lsn`.
    pub(crate) async fn schema_history(
        &mut self,
        start_lsn: u64,
    ) -> Result<Vec<(u64, TableSchema)>, WorkerError> {
        schema_history::load(&mut self.history, &self.database, &self.slot, start_lsn)
            .await
            .map_err(WorkerError::Source)
    }

    /// Stores versions of the schema history read outside the stream.
    pub(crate) async fn store_schemas(
        &mut self,
        versions: &[SchemaVersion],
    ) -> Result<(), WorkerError> {
        schema_history::insert(&mut self.history, &self.database, &self.slot, versions)
            .await
            .map_err(WorkerError::Source)
    }

    /// Closes the sink and the source connection.
    pub(crate) async fn close(self) {
        self.writer.close().await;
        let _ = self.history.close().await;
    }

    async fn write_batch(
        &mut self,
        pieces: &[Piece],
        previous: Option<PreviousCommit>,
    ) -> Result<u64, WorkerError> {
        if let Some(previous) = previous
            && !previous.await.unwrap_or(false)
        {
            return Err(SinkError::retryable(
                "an earlier batch was not written; this one waits for the retry",
            )
            .into());
        }
        let written = self.writer.write(pieces).await?;
        let schemas: Vec<SchemaVersion> = pieces
            .iter()
            .flat_map(|piece| piece.schemas.iter().cloned())
            .collect();
        self.store_schemas(&schemas).await?;
        Ok(written)
    }
}

impl Output for SinkOutput {
    type Writer = Self;

    /// The slot's confirmed position: a transaction is always given to the sink again whole.
    fn resume_point(&self) -> ResumePoint {
        ResumePoint::default()
    }

    /// One writer: batches are written in stream order.
    fn into_writers(self) -> Vec<Self> {
        vec![self]
    }
}

impl OutputWriter for SinkOutput {
    async fn write(
        mut self,
        pieces: &[Piece],
        _resume: ResumePoint,
        previous: Option<PreviousCommit>,
        committed: oneshot::Sender<bool>,
    ) -> (Self, Result<u64, WorkerError>) {
        let result = self.write_batch(pieces, previous).await;
        let _ = committed.send(result.is_ok());
        (self, result)
    }
}
