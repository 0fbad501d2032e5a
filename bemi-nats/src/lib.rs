//! # bemi-nats
//!
//! Capture through NATS JetStream: the worker publishes each committed transaction into a
//! JetStream stream instead of writing `changes` (a [`NatsSink`], the worker's
//! [`Sink`](bemi_worker::sink::Sink)), and one or more [`Store`]s write the stream into
//! `changes`.
//!
//! ```text
//! PostgreSQL ──WAL──► bemi worker --sink nats://… ──► stream "bemi" (file storage,
//!                                                      subjects bemi.changes.<partition>)
//!                                                          │
//!                          changes ◄── bemi store --from nats://… (one or more processes)
//! ```
//!
//! - **Capture** ([`NatsSink`]): each transaction (each
//!   chunk of a large one) becomes one message per partition it touches, with a `Nats-Msg-Id`
//!   made of its first change's unique key; the slot is confirmed only once the stream has
//!   acknowledged every message up to that position, so a crash republishes, and the stream
//!   de-duplicates within its duplicate window (2 min). A change larger than the server's
//!   `max_payload` goes in consecutive parts, which the store joins before storing it.
//! - **Store** ([`Store`]): one active writer per partition (a PostgreSQL advisory lock, held by
//!   the connection that writes), a durable pull consumer per partition, the stream sequence
//!   recorded in the same transaction as the rows, acknowledgements after the commit — so every
//!   change lands in `changes` exactly once (its unique key catches what the window misses), and
//!   all changes of a row (one partition) in commit order. Several stores share the partitions.
//!   What the destination refuses for its content is set aside in `_bemi_store_rejected`; a
//!   stream created again is noticed (its creation time is recorded) and stored whole.
//! - **Server**: nats-server 2.9 or newer, with JetStream (`-js`). Only what 2.9 has is used:
//!   message-id de-duplication, one filter subject per consumer, a work-queue stream.
//! - **Credentials and TLS**: a user and password (`nats://user:pass@host:port`) or a token
//!   (`nats://token@host:port`) in the URL, a credentials file (JWT and nkey) or an nkey seed
//!   file, `tls://` with a CA file and a client certificate: see [`NatsConfig`]. The URL is
//!   shown only without its secrets ([`without_nats_secrets`]).

//!
//! ```no_run
//! use bemi_nats::{NatsConfig, NatsSink, Store, StoreConfig};
//! use bemi_worker::{Worker, WorkerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let nats = NatsConfig::new("nats://127.0.0.1:4222").stream("audit");
//! // The capture: the source's changes into the stream.
//! let config = WorkerConfig::new("postgres://bemi@127.0.0.1/app");
//! let worker = Worker::with_sink(config, NatsSink::new(nats.clone())).spawn();
//! // A store (one or more processes): the stream into `changes`.
//! let store = Store::new(StoreConfig::new(nats, "postgres://bemi@127.0.0.1/audit"));
//! let stop = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(async move { store.run(stop).await });
//! worker.shutdown().await?;
//! # Ok(()) }
//! ```

/// The crate's README, compiled as a doc test so that its example stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

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
