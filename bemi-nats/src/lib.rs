#![doc = include_str!("../README.md")]

mod connection;
mod error;
mod secrets;
mod sink;
mod store;
mod wire;

pub use connection::{DEFAULT_PARTITIONS, NatsConfig};
pub use error::NatsError;
pub use secrets::without_nats_secrets;
pub use sink::{NatsSink, NatsSinkMetrics, NatsWriter};
pub use store::{Store, StoreConfig, StoreMetrics};
