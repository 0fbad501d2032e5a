//! # bemi-worker
//!
//! The capture worker of bemi-rs: it reads the source database's WAL through logical
//! replication (pgoutput), stitches every row change to the context of the statement that made
//! it, and writes the `changes` table exactly once.
//!
//! - [`worker`]: the capture loop ([`worker::Worker`]);
//! - [`config`]: what to capture and where to write;
//! - [`source`], [`pgoutput`], [`catalog`], [`json_value`], [`rows`], [`assembler`]: from the
//!   replication stream to rows;
//! - [`destination`]: the `changes` table and the worker's position, written together;
//! - [`schema`]: the `changes` table's layout (plain or partitioned by month) and indexes;
//!   [`retention`]: pruning old changes;
//! - [`setup`]: checks, publication and slot; [`metrics`]: Prometheus metrics; [`tls`]: the
//!   URL's TLS settings for every connection;
//! - [`launcher`]: an ephemeral PostgreSQL cluster (`wal_level=logical`) for development, the
//!   demo and tests.
//! - [`cli`] (feature `cli`, on by default): the `bemi` command-line tool (`migration`,
//!   `migrate`, `worker`, `changes`, `history`, `at`, `revert`, `prune`, `dev`).

pub mod assembler;
pub mod catalog;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod destination;
pub mod error;
pub mod handoff;
pub mod json_value;
pub mod launcher;
pub mod metrics;
pub mod pgoutput;
pub mod retention;
pub mod rows;
pub mod schema;
pub mod setup;
pub mod source;
pub mod tls;
pub mod worker;
