//! # bemi-dev
//!
//! Throwaway services for developing and testing bemi-rs, started from the system's binaries
//! and removed when dropped. Every service listens on 127.0.0.1 only.
//!
//! - [`EphemeralPostgres`]: a PostgreSQL cluster with `wal_level=logical` on a free port, for
//!   the demo, `bemi dev`, the tests and the benchmarks; [`DevDatabase`] uses `DATABASE_URL`
//!   instead when it is set.
//!
//! ```no_run
//! let pg = bemi_dev::EphemeralPostgres::start()?;
//! println!("DATABASE_URL={}", pg.url());
//! # Ok::<(), bemi_dev::LaunchError>(())
//! ```

mod postgres;

pub use postgres::{DevDatabase, EphemeralPostgres, LaunchError, LaunchOptions, ServerTls};
