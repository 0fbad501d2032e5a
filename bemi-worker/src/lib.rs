#![doc = include_str!("../README.md")]

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
mod signed_context;
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
