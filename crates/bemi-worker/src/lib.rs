//! # bemi-worker
//!
//! The capture worker of bemi-rs and its tools:
//!
//! - [`launcher`]: an ephemeral PostgreSQL cluster (`wal_level=logical`) for development, the
//!   demo and tests.

pub mod launcher;
