#![doc = include_str!("../README.md")]

pub mod chain;
mod change;
pub mod checkpoint;
mod follow;
#[cfg(test)]
mod fuzz;
pub mod jsonb_text;
mod query;
mod restore;
pub mod retention;
mod revert;
pub mod schema;
pub mod store;
pub mod time;
mod time_travel;
pub mod verify;

pub use bemi_core::protocol::{Operation, ParseOperationError, REDACTED, REVERT_OF_KEY};
pub use change::{Change, Cursor};
pub use follow::Follower;
pub use query::{ChangeQuery, ContextPairError, Order, holds_nul, parse_context_pair};
pub use restore::{
    DEFAULT_MAX_ROWS, RESTORE_TO_KEY, Restore, RestoreAction, RestoreError, RestorePlan,
    RestoreReport, RestoreStatement,
};
pub use revert::{
    Conflict, ConflictReason, DEFAULT_MAX_CHANGES, Revert, RevertError, RevertPlan, RevertReport,
    RevertStatement, RevertTarget,
};
pub use time_travel::{RowState, TablePageCursor, TimeTravel};
