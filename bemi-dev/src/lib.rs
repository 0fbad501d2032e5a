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
//! - [`fuzz`] (feature `fuzz`): runs a property on generated inputs for a time budget.
//!
//! ```no_run
//! let pg = bemi_dev::EphemeralPostgres::start()?;
//! println!("DATABASE_URL={}", pg.url());
//! # Ok::<(), bemi_dev::LaunchError>(())
//! ```

#[cfg(feature = "fuzz")]
pub mod fuzz;
mod pgbouncer;
mod postgres;
mod process;

pub use pgbouncer::{Pgbouncer, PoolMode};
pub use postgres::{DevDatabase, EphemeralPostgres, LaunchError, LaunchOptions, ServerTls};
