//! Why a revert did not happen, and the rows it would have overwritten.

use std::fmt;

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::change::Change;

/// A row that changed after the changes being reverted: reverting would overwrite (or trip
/// over) that later change.
///
/// ```
/// use bemi_audit::{Conflict, ConflictReason};
///
/// let conflict = Conflict {
///     schema: "public".into(),
///     table: "todo".into(),
///     primary_key: "1".into(),
///     reason: ConflictReason::RowDiffers { current: None },
/// };
/// assert!(conflict.to_string().starts_with("public.todo 1: "));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    /// The row's schema.
    pub schema: String,
    /// The row's table.
    pub table: String,
    /// The row's primary key, as stored in `changes`.
    pub primary_key: String,
    /// What happened to it.
    pub reason: ConflictReason,
}

/// How a row changed after the changes being reverted.
///
/// ```
/// use bemi_audit::ConflictReason;
///
/// let reason = ConflictReason::RowDiffers { current: Some(serde_json::json!({"id": 1})) };
/// assert!(matches!(reason, ConflictReason::RowDiffers { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum ConflictReason {
    /// The audit trail has a later change of the row (or a TRUNCATE of its table) that is not
    /// being reverted: the first one.
    ChangedLater {
        /// The later change.
        change: Box<Change>,
    },
    /// The row in the source database is not as the last change being reverted left it: it
    /// was changed since, and the change is not in the audit trail yet (the worker is behind)
    /// or was never captured.
    RowDiffers {
        /// The row now (`None`: it does not exist), as `to_jsonb` shows it.
        current: Option<Value>,
    },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} {}: ", self.schema, self.table, self.primary_key)?;
        match &self.reason {
            ConflictReason::ChangedLater { change } => write!(
                f,
                "changed again by change {} ({} committed at {}, context {})",
                change.id,
                change.operation,
                change.committed_at.to_rfc3339(),
                change.context
            ),
            ConflictReason::RowDiffers { current: None } => f.write_str(
                "the row no longer exists in the database, though the audit trail's last \
                 change left it there (changed since, not captured yet?)",
            ),
            ConflictReason::RowDiffers { current: Some(row) } => write!(
                f,
                "the row in the database is not as the audit trail's last change left it \
                 (changed since, not captured yet?): it is now {row}"
            ),
        }
    }
}

/// Why a revert was refused or failed. Nothing was written in any case.
///
/// ```
/// use bemi_audit::RevertError;
///
/// let error = RevertError::NothingToRevert { filter: "request_id = \"r1\"".into() };
/// assert!(error.to_string().contains("no captured change"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevertError {
    /// A query failed.
    #[error("database error while reverting: {0}")]
    Database(#[from] sqlx::Error),
    /// No change matched.
    #[error(
        "no captured change of this database matches {filter}: check the filter with \
         `bemi changes`, and that the worker has caught up"
    )]
    NothingToRevert {
        /// The filter, for the message.
        filter: String,
    },
    /// The revert's policy ([`Revert::policy`](crate::Revert::policy)) refused the plan:
    /// nothing was written.
    #[error("the revert was refused, nothing was written: {reason}")]
    Refused {
        /// The policy's message.
        reason: String,
    },
    /// More changes matched than allowed.
    #[error(
        "more than {max} changes match: narrow the filter (e.g. with a time range) or raise \
         the limit (--max-changes, Revert::max_changes)"
    )]
    TooMany {
        /// The limit.
        max: u64,
    },
    /// A transaction id matched changes of several transactions: of several source clusters
    /// whose databases share a name, or 32-bit ids stored before full ids were.
    #[error(
        "transaction id {transaction_id} matches {commits} different transactions (of the \
         source clusters {sources:?}): name the cluster (--source, Revert::source) or add a \
         time range (--since/--until) that holds only the one you mean"
    )]
    AmbiguousTransaction {
        /// The id.
        transaction_id: i64,
        /// How many commits it matched.
        commits: usize,
        /// The source clusters of the matched changes.
        sources: Vec<String>,
    },
    /// A change cannot be undone from the audit trail.
    #[error("change {change} ({row}) cannot be reverted: {reason}")]
    Unrevertable {
        /// The change.
        change: Uuid,
        /// `schema.table key`
        row: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// Rows changed after the changes being reverted.
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<Conflict>),
    /// A statement did not touch exactly one row (the row changed while reverting).
    #[error(
        "reverting change {change} ({row}) touched {rows} rows instead of 1; nothing was \
         written: look at the row's history (`bemi history`) and try again"
    )]
    UnexpectedRows {
        /// The change.
        change: Uuid,
        /// `schema.table key`
        row: String,
        /// How many rows the statement touched.
        rows: u64,
    },
}

fn conflicts_message(conflicts: &[Conflict]) -> String {
    let mut text = format!(
        "not reverted: {} row{} changed after the changes being reverted, and reverting would \
         overwrite {}; nothing was written:",
        conflicts.len(),
        if conflicts.len() == 1 { "" } else { "s" },
        if conflicts.len() == 1 { "it" } else { "them" },
    );
    for conflict in conflicts {
        text.push_str("\n  - ");
        text.push_str(&conflict.to_string());
    }
    text.push_str(
        "\nRevert the later changes too (see `bemi history TABLE KEY`), or force the revert \
         (--force, Revert::force) to overwrite them.",
    );
    text
}
