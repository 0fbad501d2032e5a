//! # bemi-worker
//!
//! The capture worker of bemi-rs as a library: it reads the source database's WAL through
//! logical replication (pgoutput), stitches every row change to the context of the statement
//! that made it, and writes the `changes` table exactly once. The `bemi worker` command
//! (crate `bemi-cli`) runs it; embed it to run it in your own process.
//!
//! ```no_run
//! use bemi_worker::{Worker, WorkerConfig};
//!
//! # async fn run() -> Result<(), bemi_worker::WorkerError> {
//! let config = WorkerConfig::new("postgres://bemi:secret@127.0.0.1/app")
//!     .exclude_tables(["public.sessions"])
//!     .redact(["users.password_hash"]);
//! let worker = Worker::new(config).spawn();
//! let metrics = worker.metrics(); // counters and gauges, e.g. for your own /metrics
//! // … e.g. on SIGTERM:
//! worker.shutdown().await?;
//! println!("stored {} changes", metrics.changes_written());
//! # Ok(()) }
//! ```
//!
//! Inside, one session is a replication source (the slot's stream), the stitching of rows to
//! their contexts, and a sink that stores what it is given and reports the position it holds;
//! the position is confirmed to the slot only after the sink holds it. Other sinks than the
//! `changes` table plug in through the [`sink`] module's traits (`bemi-nats` publishes into a
//! NATS JetStream stream).

mod assembler;
mod capture;
mod catalog;
mod config;
mod destination;
mod error;
#[cfg(test)]
mod fuzz;
mod handoff;
mod json_value;
mod lsn;
mod masked_url;
mod metrics;
mod pgoutput;
mod rows;
mod schema_history;
mod setup;
pub mod sink;
mod source;
mod sqlcommenter;
mod tls;
mod worker;
mod xid;

pub use bemi_audit::schema::ImageIndexes;
pub use config::{IgnoredColumns, Redactions, TableFilter, WorkerConfig};
pub use error::{DecodeError, ReplicationError, SinkError, StreamError, WorkerError};
pub use masked_url::without_password;
pub use metrics::{Timing, WorkerMetrics};
pub use tls::install_crypto_provider;
pub use worker::{Worker, WorkerHandle};

/// The crate's README, compiled as a doc test so that its example stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
