//! Which changes `bemi changes --follow` has printed, so that each is printed exactly once even
//! when changes reach the audit trail out of `committed_at` order.
//!
//! PostgreSQL takes a transaction's commit time just before it writes the commit record, so of
//! two transactions committing at once, the one with the earlier `committed_at` can come later
//! in the WAL — and the worker writes changes in WAL order. A follower that only asked for
//! changes after the newest one it printed would skip the late one for good. So each poll
//! reads the changes after the newest one seen ([`Tail::last`]) in full, and looks again, by
//! cursor only, at the changes of a window of commit time ([`Tail::LOOKBACK`]) before it: the
//! ones there that [`Tail`] has not seen yet arrived late, and only those are read in full.
//!
//! The limit: a change that reaches the audit trail more than [`Tail::LOOKBACK`] of commit
//! time behind the newest change seen is not printed — e.g. the backlog that another
//! database's worker catches up on after a downtime, into a `changes` table shared with a busy
//! database. `bemi changes --since T` shows it.
//!
//! Memory is bounded by the window: [`Tail`] keeps the cursor of each change of the window
//! that it has seen (about 40 bytes each), and forgets them as the window moves on.

use std::collections::BTreeSet;

use bemi_core::audit::Cursor;
use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

/// The newest change seen, and which changes of the look-back window before it were seen.
///
/// ```
/// use bemi_worker::cli::tail::Tail;
///
/// let tail = Tail::default();
/// // Nothing seen yet: read from the beginning, and there is no window to look at again.
/// assert_eq!(tail.last(), None);
/// assert_eq!(tail.horizon(), None);
/// ```
#[derive(Debug, Default)]
pub struct Tail {
    last: Option<Cursor>,
    /// `(committed_at, id)` of the changes seen from the horizon on.
    seen: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl Tail {
    /// How far back in commit time, from the newest change seen, each poll looks again. The
    /// inversions it covers last from microseconds to, on an overloaded server, a moment; a
    /// change later than this behind its neighbours is not printed (see the module's doc).
    pub const LOOKBACK: TimeDelta = TimeDelta::seconds(5);

    /// Records a change, by its cursor ([`Change::cursor`](bemi_core::audit::Change::cursor)):
    /// `true` the first time it is seen, `false` again — or when it is older than the window,
    /// where it was seen, or is too late to print, before the window moved on.
    pub fn admit(&mut self, cursor: Cursor) -> bool {
        if self.horizon().is_some_and(|h| cursor.committed_at < h) {
            return false;
        }
        if !self.seen.insert((cursor.committed_at, cursor.id)) {
            return false;
        }
        if self.last.is_none_or(|last| cursor > last) {
            self.last = Some(cursor);
            self.forget_before_horizon();
        }
        true
    }

    /// Whether the change at `cursor` (of the window) was seen.
    pub fn has_seen(&self, cursor: &Cursor) -> bool {
        self.seen.contains(&(cursor.committed_at, cursor.id))
    }

    /// The newest change seen, in the audit trail's order (`committed_at`, `position`, `id`):
    /// the changes after it are new, and read in full. `None` when nothing was seen.
    pub fn last(&self) -> Option<Cursor> {
        self.last
    }

    /// Where the look-back window starts: [`Tail::LOOKBACK`] before the newest change seen.
    /// Changes from here up to [`Tail::last`] are looked at again, by cursor, each poll.
    pub fn horizon(&self) -> Option<DateTime<Utc>> {
        self.last.map(|last| last.committed_at - Self::LOOKBACK)
    }

    /// How many changes are remembered (those of the window).
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    fn forget_before_horizon(&mut self) {
        let Some(horizon) = self.horizon() else {
            return;
        };
        while self.seen.first().is_some_and(|(at, _)| *at < horizon) {
            self.seen.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(id: u128, seconds: i64) -> Cursor {
        Cursor {
            committed_at: DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap(),
            position: id as i64,
            id: Uuid::from_u128(id),
        }
    }

    #[test]
    fn each_change_is_admitted_once() {
        let mut tail = Tail::default();
        assert!(tail.admit(cursor(1, 0)));
        assert!(!tail.admit(cursor(1, 0)));
        assert!(tail.admit(cursor(2, 0)));
        assert!(tail.has_seen(&cursor(1, 0)) && tail.has_seen(&cursor(2, 0)));
        assert!(!tail.has_seen(&cursor(3, 0)));
        assert_eq!(tail.last(), Some(cursor(2, 0)));
    }

    #[test]
    fn a_change_committed_earlier_but_arriving_later_is_admitted() {
        let mut tail = Tail::default();
        assert!(tail.admit(cursor(2, 10)));
        assert!(tail.admit(cursor(1, 9)));
        // The newest change stays the last one: the late one is behind it.
        assert_eq!(tail.last(), Some(cursor(2, 10)));
        assert_eq!(
            tail.horizon(),
            Some(cursor(2, 10).committed_at - Tail::LOOKBACK)
        );
    }

    #[test]
    fn the_order_is_commit_time_then_position_then_id() {
        let mut tail = Tail::default();
        let at = cursor(0, 0).committed_at;
        let at_position = |position: i64, id: u128| Cursor {
            committed_at: at,
            position,
            id: Uuid::from_u128(id),
        };
        assert!(tail.admit(at_position(5, 1)));
        assert!(tail.admit(at_position(4, 9)));
        assert_eq!(tail.last(), Some(at_position(5, 1)));
        assert!(tail.admit(at_position(5, 2)));
        assert_eq!(tail.last(), Some(at_position(5, 2)));
    }

    #[test]
    fn the_window_moves_with_the_newest_change_and_forgets_what_it_left() {
        let mut tail = Tail::default();
        assert!(tail.admit(cursor(1, 0)));
        assert!(tail.admit(cursor(2, 3)));
        assert_eq!(tail.remembered(), 2);
        assert!(tail.admit(cursor(3, 7)));
        // Change 1 (t=0) is now before the window (7 - 5 = 2): forgotten, and not admitted again.
        assert_eq!(tail.remembered(), 2);
        assert!(!tail.has_seen(&cursor(1, 0)));
        assert!(!tail.admit(cursor(1, 0)));
        assert!(!tail.admit(cursor(2, 3)));
        // A change too late for the window is not admitted either.
        assert!(!tail.admit(cursor(4, 1)));
        assert_eq!(tail.remembered(), 2);
    }

    #[test]
    fn a_window_of_many_changes_is_forgotten_at_once() {
        let mut tail = Tail::default();
        for id in 0..10_000 {
            assert!(tail.admit(cursor(id, 0)));
        }
        assert_eq!(tail.remembered(), 10_000);
        assert!(tail.admit(cursor(10_000, 6)));
        assert_eq!(tail.remembered(), 1);
    }
}
