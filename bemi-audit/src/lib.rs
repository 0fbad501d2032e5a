//! # bemi-audit
//!
//! The audit trail: the `changes` table the capture worker writes, and everything that reads
//! it. This crate owns the table's contract — its DDL ([`schema`]), its rows ([`Change`]), how
//! new rows are inserted ([`store`]) — and the read side on top:
//!
//! - [`ChangeQuery`]: filters, keyset pages, streams; every filter a bound parameter served by
//!   an index;
//! - [`Change::diff`], [`TimeTravel`] (a row or a whole table as it was at an instant, a row's
//!   history) and [`Revert`] (undo a change, a transaction or a request, with a conflict check);
//! - [`Follower`]: new changes as they are captured, each once (`bemi changes --follow`, the
//!   web UI's live tail);
//! - [`retention`]: pruning old changes.
//!
//! Results come newest first by default and are paged with a keyset cursor (never `OFFSET`), so
//! the next page costs the same as the first however deep you go.
//!
//! ```no_run
//! use bemi_audit::{ChangeQuery, Operation};
//!
//! # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
//! // What user 187234 did to todo 26, newest first, 20 at a time.
//! let query = ChangeQuery::new()
//!     .table("todo")
//!     .primary_key("26")
//!     .context("user_id", 187234)
//!     .limit(20);
//! let page = query.fetch(&pool).await?;
//! for change in &page {
//!     println!("{} {} {}", change.committed_at, change.operation, change.after);
//! }
//! // The next 20: continue after the last row of this page.
//! if let Some(last) = page.last() {
//!     let next = query.clone().after(last.cursor()).fetch(&pool).await?;
//! }
//! // Only the deletes, oldest first.
//! let deletes = ChangeQuery::new()
//!     .operation(Operation::Delete)
//!     .oldest_first()
//!     .fetch(&pool)
//!     .await?;
//! # Ok(()) }
//! ```

mod change;
mod follow;
#[cfg(test)]
mod fuzz;
mod query;
pub mod retention;
mod revert;
pub mod schema;
pub mod store;
pub mod time;
mod time_travel;

pub use bemi_core::protocol::{Operation, ParseOperationError, REDACTED, REVERT_OF_KEY};
pub use change::{Change, Cursor};
pub use follow::Follower;
pub use query::{ChangeQuery, ContextPairError, Order, holds_nul, parse_context_pair};
pub use revert::{
    Conflict, ConflictReason, DEFAULT_MAX_CHANGES, Revert, RevertError, RevertPlan, RevertReport,
    RevertStatement, RevertTarget,
};
pub use time_travel::{RowState, TablePageCursor, TimeTravel};
