//! The audit trail (feature `sqlx`): the rows of the `changes` table the capture worker writes
//! ([`Change`]), a query builder over them ([`ChangeQuery`]), time travel ([`TimeTravel`]: a
//! row or a whole table as it was at an instant, a row's history) and [`Revert`] (undo a
//! change, a transaction or a whole request in the source database).
//!
//! Every filter is a bound parameter; results come newest first by default and are paged with a
//! keyset cursor (never `OFFSET`), so the next page costs the same as the first however deep
//! you go.
//!
//! ```no_run
//! use bemi_core::audit::{ChangeQuery, Operation};
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
mod query;
mod revert;
mod time_travel;

pub use change::{Change, Cursor, Operation, ParseOperationError};
pub use query::{ChangeQuery, ContextPairError, Order, parse_context_pair};
pub use revert::{
    Conflict, ConflictReason, DEFAULT_MAX_CHANGES, REDACTED, REVERT_OF_KEY, Revert, RevertError,
    RevertPlan, RevertReport, RevertStatement, RevertTarget,
};
pub use time_travel::{RowState, TimeTravel};
