//! Which changes `bemi changes --follow` has printed, so that each is printed exactly once even
//! when changes reach the audit trail out of `committed_at` order.
//!
//! PostgreSQL takes a transaction's commit time just before it writes the commit record, so of
//! two transactions committing at once, the one with the earlier `committed_at` can come later
//! in the WAL — and the worker writes changes in WAL order. A follower that only asked for
//! changes after the newest one it printed would skip the late one for good. So each poll looks
//! again at a window of commit time ([`Tail::LOOKBACK`]) before the newest change seen, and
//! [`Tail`] remembers which changes of that window it has already printed.

use std::collections::HashMap;

use bemi_core::audit::{Change, Cursor};
use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

/// The changes of the look-back window seen so far, and the newest commit time among them.
///
/// ```
/// use bemi_worker::cli::tail::Tail;
///
/// let mut tail = Tail::default();
/// // Nothing seen yet: read from the beginning.
/// assert_eq!(tail.read_from(), None);
/// ```
#[derive(Debug, Default)]
pub struct Tail {
    newest: Option<DateTime<Utc>>,
    seen: HashMap<Uuid, DateTime<Utc>>,
}

impl Tail {
    /// How far back in commit time, from the newest change seen, each poll looks again. The
    /// inversions it covers last from microseconds to, on an overloaded server, a moment; a
    /// change later than this behind its neighbours is not printed.
    pub const LOOKBACK: TimeDelta = TimeDelta::seconds(5);

    /// Records a change; `true` the first time it is seen, `false` again (or when it is older
    /// than the window, where it was seen before the window moved on).
    pub fn admit(&mut self, change: &Change) -> bool {
        if self.horizon().is_some_and(|h| change.committed_at < h) {
            return false;
        }
        if self.seen.insert(change.id, change.committed_at).is_some() {
            return false;
        }
        if self
            .newest
            .is_none_or(|newest| change.committed_at > newest)
        {
            self.newest = Some(change.committed_at);
            self.forget_before_horizon();
        }
        true
    }

    /// Where the next poll starts reading (oldest first, after this cursor): the start of the
    /// look-back window, or the beginning when nothing has been seen.
    pub fn read_from(&self) -> Option<Cursor> {
        self.horizon().map(|committed_at| Cursor {
            committed_at,
            position: i64::MIN,
            id: Uuid::nil(),
        })
    }

    /// How many changes are remembered (those of the window).
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    fn horizon(&self) -> Option<DateTime<Utc>> {
        self.newest.map(|newest| newest - Self::LOOKBACK)
    }

    fn forget_before_horizon(&mut self) {
        if let Some(horizon) = self.horizon() {
            self.seen.retain(|_, committed_at| *committed_at >= horizon);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(id: u128, seconds: i64) -> Change {
        let committed_at = DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap();
        serde_json::from_value(json!({
            "id": Uuid::from_u128(id), "primary_key": "1", "before": {}, "after": {"id": 1},
            "context": {}, "database": "app", "schema": "public", "table": "todo",
            "operation": "CREATE", "committed_at": committed_at, "queued_at": committed_at,
            "created_at": committed_at, "transaction_id": 1, "position": id as i64
        }))
        .unwrap()
    }

    #[test]
    fn each_change_is_admitted_once() {
        let mut tail = Tail::default();
        assert!(tail.admit(&change(1, 0)));
        assert!(!tail.admit(&change(1, 0)));
        assert!(tail.admit(&change(2, 0)));
    }

    #[test]
    fn a_change_committed_earlier_but_arriving_later_is_admitted() {
        let mut tail = Tail::default();
        assert!(tail.admit(&change(2, 10)));
        assert!(tail.admit(&change(1, 9)));
        assert_eq!(
            tail.read_from().unwrap().committed_at,
            change(2, 10).committed_at - Tail::LOOKBACK
        );
    }

    #[test]
    fn the_window_moves_with_the_newest_change_and_forgets_what_it_left() {
        let mut tail = Tail::default();
        assert!(tail.admit(&change(1, 0)));
        assert!(tail.admit(&change(2, 3)));
        assert_eq!(tail.remembered(), 2);
        assert!(tail.admit(&change(3, 7)));
        // Change 1 (t=0) is now before the window (7 - 5 = 2): forgotten, and not admitted again.
        assert_eq!(tail.remembered(), 2);
        assert!(!tail.admit(&change(1, 0)));
        assert!(!tail.admit(&change(2, 3)));
    }
}
