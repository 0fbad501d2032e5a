//! # bemi-dev
//!
//! Throwaway services for developing and testing bemi-rs, started from the system's binaries
//! and removed when dropped. Every service listens on 127.0.0.1 only.
//!
//! - [`EphemeralPostgres`]: a PostgreSQL cluster with `wal_level=logical` on a free port, for
//!   the demo, `bemi dev`, the tests and the benchmarks; [`DevDatabase`] uses `DATABASE_URL`
//!   instead when it is set.
//! - [`Pgbouncer`]: a pgbouncer (Debian's `pgbouncer`) in front of such a server, in
//!   transaction pooling mode for the tests of pooler safety.
//! - [`NatsServer`]: a nats-server (Debian's `nats-server`) with JetStream, which can be
//!   stopped, killed and started again, for the tests of the NATS sink and `bemi store`.
//!
//! ```no_run
//! let pg = bemi_dev::EphemeralPostgres::start()?;
//! println!("DATABASE_URL={}", pg.url());
//! # Ok::<(), bemi_dev::LaunchError>(())
//! ```

mod nats;
mod pgbouncer;
mod postgres;
mod process;

pub use nats::NatsServer;
pub use pgbouncer::{Pgbouncer, PoolMode};
pub use postgres::{DevDatabase, EphemeralPostgres, LaunchError, LaunchOptions, ServerTls};
