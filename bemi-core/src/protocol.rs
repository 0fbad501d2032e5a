//! The names and bounds every part of bemi-rs agrees on: how a context travels from the
//! application to PostgreSQL and through the WAL, and how the `changes` table spells what it
//! stores. Bemi's packages for other languages use the same wire format.
//!
//! - A write carries its context as a trailing comment, [`COMMENT_START`] `{json}`
//!   [`COMMENT_END`], whose JSON never contains `*/` or `/*` (every `*` is written `\u002a`).
//! - The migration's trigger turns it into a transactional logical-decoding message with the
//!   prefix [`MESSAGE_PREFIX`], before the rows it describes.
//! - The capture worker stores each row change with the context of the latest such message of
//!   its transaction, in a row of `changes` whose `operation` is an [`Operation`].
//!
//! ```
//! use bemi_core::protocol::{COMMENT_END, COMMENT_START, Operation};
//!
//! let sql = format!("DELETE FROM todo {COMMENT_START}{{\"user_id\":1}}{COMMENT_END}");
//! assert_eq!(sql, r#"DELETE FROM todo /*Bemi {"user_id":1} Bemi*/"#);
//! assert_eq!("insert".parse::<Operation>(), Ok(Operation::Create));
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The opening of the comment that carries a context, as the trigger and Bemi's other
/// libraries expect it.
pub const COMMENT_START: &str = "/*Bemi ";

/// The closing of the comment that carries a context.
pub const COMMENT_END: &str = " Bemi*/";

/// The prefix of the logical-decoding messages that carry contexts.
pub const MESSAGE_PREFIX: &str = "_bemi";

/// The prefix of the logical-decoding messages in which the migration's trigger passes the body
/// of a statement's trailing [sqlcommenter](https://google.github.io/sqlcommenter/spec/)
/// comment (`/*key='value',…*/`) when the statement has no Bemi context; the capture worker
/// turns it into the rows' context.
pub const SQLCOMMENTER_MESSAGE_PREFIX: &str = "_bemi_sqlcommenter";

/// The setting that turns the trigger's reading of sqlcommenter comments off when `'off'`
/// (`ALTER DATABASE app SET bemi.sqlcommenter = 'off'`, or per role); on otherwise.
pub const SQLCOMMENTER_SETTING: &str = "bemi.sqlcommenter";

/// The key the library adds to every context: the statement's text (a user key of the same
/// name wins).
pub const SQL_KEY: &str = "SQL";

/// The `SQL` key holds at most this many bytes of the statement (cut at a character boundary,
/// with `…` appended when cut).
pub const MAX_SQL_KEY_BYTES: usize = 4096;

/// Contexts whose JSON is larger than this (1 MB, the bound of Bemi's other libraries) are
/// replaced by a marker under [`DROPPED_KEY`]; the write always proceeds.
pub const MAX_CONTEXT_BYTES: usize = 1_000_000;

/// The key of the marker that replaces an oversized context:
/// `{"_bemi_context_dropped": {"reason": "too large", "bytes": N, "limit_bytes": 1000000}, "SQL": …}`.
pub const DROPPED_KEY: &str = "_bemi_context_dropped";

/// The key of the marker the capture worker stores instead of a context message that is not a
/// JSON object: `{"_bemi_invalid_context": {"error": …, "text": …}}`.
pub const INVALID_CONTEXT_KEY: &str = "_bemi_invalid_context";

/// The comment that marks a publication as the capture worker's: the migration's event trigger
/// adds tables created later to such publications, so their first rows are captured.
pub const PUBLICATION_MARK: &str = "bemi-rs";

/// What the capture worker stores instead of a redacted column's value.
pub const REDACTED: &str = "[REDACTED]";

/// The context key of a revert's own writes: `{"revert_of": {...what was reverted...}}`.
pub const REVERT_OF_KEY: &str = "revert_of";

/// What a change did: the `operation` column of `changes`.
///
/// ```
/// use bemi_core::protocol::Operation;
///
/// assert_eq!("update".parse::<Operation>(), Ok(Operation::Update));
/// assert_eq!("INSERT".parse::<Operation>(), Ok(Operation::Create));
/// assert_eq!(Operation::Truncate.to_string(), "TRUNCATE");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    /// A row was inserted.
    Create,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
    /// A table was truncated (one change per table).
    Truncate,
}

impl Operation {
    /// Every operation, in the order above.
    pub const ALL: [Operation; 4] = [
        Operation::Create,
        Operation::Update,
        Operation::Delete,
        Operation::Truncate,
    ];

    /// The stored name: `CREATE`, `UPDATE`, `DELETE` or `TRUNCATE`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Truncate => "TRUNCATE",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = ParseOperationError;

    /// Case-insensitive; `INSERT` is accepted for `CREATE`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let upper = text.trim().to_ascii_uppercase();
        if upper == "INSERT" {
            return Ok(Operation::Create);
        }
        Operation::ALL
            .into_iter()
            .find(|operation| operation.as_str() == upper)
            .ok_or_else(|| ParseOperationError(text.to_owned()))
    }
}

/// A text that is not an [`Operation`].
///
/// ```
/// let error = "UPSERT".parse::<bemi_core::protocol::Operation>().unwrap_err();
/// assert!(error.to_string().contains("CREATE, UPDATE, DELETE or TRUNCATE"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation {0:?}: expected CREATE, UPDATE, DELETE or TRUNCATE (or INSERT)")]
pub struct ParseOperationError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip_through_their_names() {
        for operation in Operation::ALL {
            assert_eq!(operation.as_str().parse::<Operation>(), Ok(operation));
            assert_eq!(
                operation.as_str().to_lowercase().parse::<Operation>(),
                Ok(operation)
            );
            let json = serde_json::to_string(&operation).unwrap();
            assert_eq!(json, format!("\"{operation}\""));
        }
        assert!(" delete ".parse::<Operation>().is_ok());
        assert!("".parse::<Operation>().is_err());
    }

    #[test]
    fn the_comment_delimiters_are_comments_that_cannot_nest() {
        assert!(COMMENT_START.starts_with("/*") && !COMMENT_START.contains("*/"));
        assert!(COMMENT_END.ends_with("*/") && !COMMENT_END.contains("/*"));
    }
}
