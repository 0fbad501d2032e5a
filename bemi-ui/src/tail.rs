//! The live tail's shared poller: one task per router watches the `changes` table and wakes
//! every open tail when something new arrives (a broadcast), so that idle tails cost nothing and
//! the number of open tails is capped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::request::Parts;
use bemi_audit::{ChangeQuery, Follower};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

/// How a tail finds out, while it streams, whether its caller may still read.
#[derive(Debug, Clone)]
pub(crate) enum Recheck {
    /// A bearer token: valid as long as the process runs.
    Never,
    /// `bemi ui`'s session with this id: ends at logout or expiry.
    Session(String),
    /// The host app's callback, asked again with the request's head.
    Callback(Arc<Parts>),
}

/// The poller and the cap on open tails.
pub(crate) struct TailHub {
    audit: PgPool,
    interval: Duration,
    ticks: broadcast::Sender<()>,
    running: Arc<Mutex<bool>>,
    slots: Arc<Semaphore>,
    max: usize,
}

/// An open tail's place: its permit (released when the stream ends) and its wake-ups.
pub(crate) struct Subscription {
    pub(crate) _permit: OwnedSemaphorePermit,
    pub(crate) ticks: broadcast::Receiver<()>,
}

impl TailHub {
    pub(crate) fn new(audit: PgPool, interval: Duration, max: usize) -> Self {
        Self {
            audit,
            interval,
            ticks: broadcast::channel(16).0,
            running: Arc::new(Mutex::new(false)),
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The cap on open tails.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// A place among the open tails (`None` when all are taken); starts the poller if it is
    /// not running.
    pub(crate) fn join(&self) -> Option<Subscription> {
        let permit = Arc::clone(&self.slots).try_acquire_owned().ok()?;
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ticks = self.ticks.subscribe();
        if !*running {
            *running = true;
            tokio::spawn(poll(
                self.audit.clone(),
                self.ticks.clone(),
                Arc::clone(&self.running),
                self.interval,
            ));
        }
        Some(Subscription {
            _permit: permit,
            ticks,
        })
    }
}

/// Polls every `interval` while any tail listens; wakes them when new changes arrived. Stops
/// when the last tail has gone.
async fn poll(
    audit: PgPool,
    ticks: broadcast::Sender<()>,
    running: Arc<Mutex<bool>>,
    interval: Duration,
) {
    let mut follower: Option<Follower> = None;
    loop {
        {
            let mut running = running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if ticks.receiver_count() == 0 {
                *running = false;
                return;
            }
        }
        let Some(current) = follower.as_mut() else {
            match Follower::start(audit.clone(), ChangeQuery::new(), 0).await {
                Ok((started, _)) => {
                    follower = Some(started);
                    // Whatever arrived before this poller started: let the tails look.
                    let _ = ticks.send(());
                }
                Err(error) => {
                    tracing::warn!(%error, "bemi-ui: the live tail could not read; retrying");
                    tokio::time::sleep(interval).await;
                }
            }
            continue;
        };
        match current.next_page().await {
            Ok(page) if !page.is_empty() => {
                let _ = ticks.send(());
            }
            Ok(_) => tokio::time::sleep(interval).await,
            Err(error) => {
                tracing::warn!(%error, "bemi-ui: the live tail could not read; retrying");
                follower = None;
                tokio::time::sleep(interval).await;
            }
        }
    }
}
