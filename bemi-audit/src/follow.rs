//! Following the audit trail: new changes as they are captured, each exactly once ([`Follower`]).

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::Stream;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{Change, ChangeQuery, Cursor};

/// Follows a [`ChangeQuery`]: returns each matching change once, as it reaches the audit trail
/// (the engine of `bemi changes --follow` and of the web UI's live tail).
///
/// ```no_run
/// use bemi_audit::{ChangeQuery, Follower};
/// use futures_util::StreamExt as _;
/// use std::time::Duration;
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// // The 10 latest deletes of `todo`, oldest first, then every new one as it arrives.
/// let query = ChangeQuery::new().table("todo").operation(bemi_audit::Operation::Delete);
/// let (follower, latest) = Follower::start(pool, query, 10).await?;
/// for change in latest {
///     println!("{} {}", change.committed_at, change.before);
/// }
/// let mut pages = std::pin::pin!(follower.into_stream(Duration::from_secs(1)));
/// while let Some(page) = pages.next().await {
///     for change in page? {
///         println!("{} {}", change.committed_at, change.before);
///     }
/// }
/// # Ok(()) }
/// ```
///
/// # Late changes
///
/// PostgreSQL takes a transaction's commit time just before it writes the commit record, so of
/// two transactions committing at once, the one with the earlier `committed_at` can come later
/// in the WAL — and the worker writes changes in WAL order. A follower that only asked for
/// changes after the newest one it returned would skip the late one for good. So each poll
/// reads the changes after the newest one seen in full, and looks again, by cursor only, at the
/// changes of a window of commit time ([`Follower::LOOKBACK`]) before it: the ones there that it
/// has not returned yet arrived late, and only those are read in full.
///
/// The limit: a change that reaches the audit trail more than [`Follower::LOOKBACK`] of commit
/// time behind the newest change seen is not returned — e.g. the backlog that another
/// database's worker catches up on after a downtime, into a `changes` table shared with a busy
/// database. A query with `since` shows it.
///
/// Memory is bounded by the window: the follower keeps the cursor of each change of the window
/// that it has seen (about 40 bytes each), and forgets them as the window moves on; changes are
/// read in pages of [`Follower::PAGE_ROWS`].
#[derive(Debug)]
pub struct Follower {
    pool: PgPool,
    query: ChangeQuery,
    tail: Tail,
    /// Late changes found by this poll and not returned yet, oldest first.
    late: VecDeque<Cursor>,
    /// Whether this poll has looked at the window yet.
    window_checked: bool,
}

impl Follower {
    /// How far back in commit time, from the newest change seen, each poll looks again. The
    /// inversions it covers last from microseconds to, on an overloaded server, a moment.
    pub const LOOKBACK: TimeDelta = Tail::LOOKBACK;

    /// The most changes one page holds.
    pub const PAGE_ROWS: u64 = 1_000;

    /// Starts following `query` (its filters; its order and limit are ignored): returns the
    /// latest `latest` changes, oldest first, and a follower that has seen every change there
    /// is now, returned or not — both read in one snapshot, so that nothing committed in
    /// between is taken as seen.
    pub async fn start(
        pool: PgPool,
        query: ChangeQuery,
        latest: u64,
    ) -> Result<(Self, Vec<Change>), sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        // At least one change, to know where the window starts even when none is returned.
        let mut changes = query
            .clone()
            .order(crate::Order::NewestFirst)
            .limit(latest.max(1))
            .fetch(&mut *tx)
            .await?;
        let mut tail = Tail::default();
        if let Some(newest) = changes.first() {
            tail.admit(newest.cursor());
        }
        for cursor in window(&mut tx, &query, &tail).await? {
            tail.admit(cursor);
        }
        tx.commit().await?;
        changes.truncate(usize::try_from(latest).unwrap_or(usize::MAX));
        changes.reverse();
        let follower = Self {
            pool,
            query,
            tail,
            late: VecDeque::new(),
            window_checked: false,
        };
        Ok((follower, changes))
    }

    /// The next page of changes not returned yet: first those that arrived late, oldest first,
    /// then the changes after the newest one seen. Empty when there is nothing new: the next
    /// call starts a new poll.
    pub async fn next_page(&mut self) -> Result<Vec<Change>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        if !self.window_checked {
            let mut unseen = window(&mut conn, &self.query, &self.tail).await?;
            unseen.retain(|cursor| !self.tail.has_seen(cursor));
            unseen.sort();
            self.late = unseen.into();
            self.window_checked = true;
        }
        while !self.late.is_empty() {
            let take = self.late.len().min(Self::PAGE_ROWS as usize);
            let ids: Vec<Uuid> = self.late.drain(..take).map(|cursor| cursor.id).collect();
            let rows = fetch_by_id(&mut conn, &self.query, ids).await?;
            let admitted = self.admitted(rows);
            if !admitted.is_empty() {
                return Ok(admitted);
            }
        }
        let mut page = self.query.clone().oldest_first().limit(Self::PAGE_ROWS);
        if let Some(last) = self.tail.last() {
            page = page.after(last);
        }
        let rows = page.fetch(&mut *conn).await?;
        let full = rows.len() as u64 == Self::PAGE_ROWS;
        let admitted = self.admitted(rows);
        if !full {
            // Caught up: the next call starts a new poll.
            self.window_checked = false;
        }
        Ok(admitted)
    }

    /// Every new change from now on, in pages, polling every `interval` when there is nothing
    /// new. A failed read is an `Err` item; the stream goes on after it (from where it was).
    pub fn into_stream(
        self,
        interval: Duration,
    ) -> impl Stream<Item = Result<Vec<Change>, sqlx::Error>> + Send {
        futures_util::stream::unfold(self, move |mut follower| async move {
            loop {
                match follower.next_page().await {
                    Ok(page) if page.is_empty() => tokio::time::sleep(interval).await,
                    Ok(page) => return Some((Ok(page), follower)),
                    Err(error) => {
                        follower.window_checked = false;
                        tokio::time::sleep(interval).await;
                        return Some((Err(error), follower));
                    }
                }
            }
        })
    }

    /// How many changes of the look-back window the follower remembers.
    #[must_use]
    pub fn remembered(&self) -> usize {
        self.tail.remembered()
    }

    /// The changes of `rows` seen for the first time.
    fn admitted(&mut self, rows: Vec<Change>) -> Vec<Change> {
        rows.into_iter()
            .filter(|change| self.tail.admit(change.cursor()))
            .collect()
    }
}

/// The cursors of the changes of `query` in the tail's look-back window: from its horizon up
/// to and including the newest change it has seen (none when it has seen nothing). Read by
/// cursor only, so an idle follower after a large transaction (thousands of changes with one
/// `committed_at`) reads little each poll.
async fn window(
    conn: &mut PgConnection,
    query: &ChangeQuery,
    tail: &Tail,
) -> Result<Vec<Cursor>, sqlx::Error> {
    let (Some(horizon), Some(last)) = (tail.horizon(), tail.last()) else {
        return Ok(Vec::new());
    };
    let rows: Vec<(Uuid, DateTime<Utc>, i64)> = window_cursors(query, horizon, last)
        .build_query_as()
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, committed_at, position)| Cursor {
            committed_at,
            position,
            id,
        })
        .collect())
}

/// `(id, committed_at, position)` of the changes of `query` from `horizon` up to and including
/// `last`, unordered: the look-back window, by cursor only.
fn window_cursors(
    query: &ChangeQuery,
    horizon: DateTime<Utc>,
    last: Cursor,
) -> sqlx::QueryBuilder<sqlx::Postgres> {
    let mut builder = query.filter_builder("id, committed_at, position");
    builder
        .push(" AND committed_at >= ")
        .push_bind(horizon)
        .push(" AND committed_at <= ")
        .push_bind(last.committed_at)
        .push(" AND (committed_at, position, id) <= (")
        .push_bind(last.committed_at)
        .push(", ")
        .push_bind(last.position)
        .push(", ")
        .push_bind(last.id)
        .push(")");
    builder
}

/// The changes of `query` with these ids, oldest first.
async fn fetch_by_id(
    conn: &mut PgConnection,
    query: &ChangeQuery,
    ids: Vec<Uuid>,
) -> Result<Vec<Change>, sqlx::Error> {
    let mut builder = query.filter_builder("*");
    builder
        .push(" AND id = ANY(")
        .push_bind(ids)
        .push(") ORDER BY committed_at, position, id");
    builder.build_query_as::<Change>().fetch_all(conn).await
}

/// The newest change seen, and which changes of the look-back window before it were seen.
///
#[derive(Debug, Default)]
struct Tail {
    last: Option<Cursor>,
    /// `(committed_at, id)` of the changes seen from the horizon on.
    seen: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl Tail {
    /// How far back in commit time, from the newest change seen, each poll looks again. The
    /// inversions it covers last from microseconds to, on an overloaded server, a moment; a
    /// change later than this behind its neighbours is not printed (see the module's doc).
    const LOOKBACK: TimeDelta = TimeDelta::seconds(5);

    /// Records a change, by its cursor ([`Change::cursor`](bemi_audit::Change::cursor)):
    /// `true` the first time it is seen, `false` again — or when it is older than the window,
    /// where it was seen, or is too late to print, before the window moved on.
    fn admit(&mut self, cursor: Cursor) -> bool {
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
    fn has_seen(&self, cursor: &Cursor) -> bool {
        self.seen.contains(&(cursor.committed_at, cursor.id))
    }

    /// The newest change seen, in the audit trail's order (`committed_at`, `position`, `id`):
    /// the changes after it are new, and read in full. `None` when nothing was seen.
    fn last(&self) -> Option<Cursor> {
        self.last
    }

    /// Where the look-back window starts: [`Tail::LOOKBACK`] before the newest change seen.
    /// Changes from here up to [`Tail::last`] are looked at again, by cursor, each poll.
    fn horizon(&self) -> Option<DateTime<Utc>> {
        self.last.map(|last| last.committed_at - Self::LOOKBACK)
    }

    /// How many changes are remembered (those of the window).
    fn remembered(&self) -> usize {
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

    #[test]
    fn the_window_is_read_by_cursor_with_the_filters_and_no_sort() {
        let last = Cursor {
            committed_at: Utc::now(),
            position: 7,
            id: Uuid::nil(),
        };
        let query = ChangeQuery::new().table("todo").context("user_id", 1);
        let sql =
            window_cursors(&query, last.committed_at - Follower::LOOKBACK, last).into_string();
        assert_eq!(
            sql,
            r#"SELECT id, committed_at, position FROM changes WHERE "table" = $1 AND context @> $2 AND committed_at >= $3 AND committed_at <= $4 AND (committed_at, position, id) <= ($5, $6, $7)"#
        );
        assert!(!sql.contains("ORDER BY"), "{sql}");
    }

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
