#![doc = include_str!("../README.md")]

mod nats;
mod pgbouncer;
mod postgres;
mod process;

pub use nats::NatsServer;
pub use pgbouncer::{Pgbouncer, PoolMode};
pub use postgres::{DevDatabase, EphemeralPostgres, LaunchError, LaunchOptions, ServerTls};
