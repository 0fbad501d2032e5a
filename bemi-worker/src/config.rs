//! What the worker captures and where it writes: [`WorkerConfig`], table filters and column
//! redaction.
//!
//! ```
//! use bemi_worker::WorkerConfig;
//!
//! let config = WorkerConfig::new("postgres://bemi@db/app")
//!     .tables(["public.*"])
//!     .exclude_tables(["public.sessions"])
//!     .redact(["users.password_hash"]);
//! assert!(config.filter.includes("public", "todo"));
//! assert!(!config.filter.includes("public", "sessions"));
//! assert!(config.redactions.is_redacted("public", "users", "password_hash"));
//! ```

use std::time::Duration;

/// Everything the worker needs to run: [`new`](Self::new) gives the defaults, and a setter
/// (or the public field) changes each.
///
/// ```
/// use std::time::Duration;
///
/// let config = bemi_worker::WorkerConfig::new("postgres://bemi@db/app")
///     .destination("postgres://bemi@audit-db/audit")
///     .slot("bemi_app")
///     .publication("bemi_app")
///     .heartbeat_interval(Duration::from_secs(5));
/// assert_eq!(config.destination_url(), "postgres://bemi@audit-db/audit");
/// assert_eq!(config.slot, "bemi_app");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The database whose changes are captured (it needs `wal_level=logical`).
    pub source_url: String,
    /// Where the `changes` table lives; `None` means the source database.
    pub destination_url: Option<String>,
    /// The logical replication slot (created if missing).
    pub slot: String,
    /// The publication (created if missing, and kept in sync with the tables to capture).
    pub publication: String,
    /// Which tables to capture.
    pub filter: TableFilter,
    /// Columns whose values are replaced by [`REDACTED`](Redactions::MARKER).
    pub redactions: Redactions,
    /// Columns whose changes alone do not make an UPDATE worth storing (e.g. `*.updated_at`).
    pub ignored_columns: IgnoredColumns,
    /// Whether an UPDATE whose row is the same before and after is left out (default: yes).
    pub skip_unchanged_updates: bool,
    /// How often an idle source gets a heartbeat, so that the slot keeps advancing, and how
    /// often the publication is checked for new tables.
    pub heartbeat_interval: Duration,
    /// The most rows written to the destination in one transaction.
    pub max_batch_rows: usize,
    /// Rows of one source transaction buffered before they are handed to the writer: a large
    /// transaction is written in chunks of this size, so memory stays bounded.
    pub chunk_rows: usize,
    /// Destination connections writing batches at once (their commits stay in stream order).
    pub writer_connections: usize,
    /// Whether `changes` keeps its GIN indexes on `before` and `after` (created if missing) or
    /// goes without them (dropped if present): their upkeep is much of a stored change's cost.
    pub image_indexes: bemi_audit::schema::ImageIndexes,
    /// When the chain's head is signed, and with which key (default: no key, no interval
    /// checkpoints; the hash chain itself is always on).
    pub checkpoints: bemi_audit::checkpoint::CheckpointPolicy,
    /// The applications' context key: each stored context then says whether it was signed
    /// with it (`_bemi_signature`: `valid`, `unsigned`, `forged`). Default: none.
    pub context_key: Option<bemi_core::signing::ContextKey>,
}

impl WorkerConfig {
    /// A configuration with the defaults: slot and publication `bemi`, every table, no
    /// redaction, destination = source, a 10 s heartbeat.
    ///
    /// ```
    /// let config = bemi_worker::WorkerConfig::new("postgres://localhost/app");
    /// assert_eq!(config.slot, "bemi");
    /// assert_eq!(config.destination_url(), "postgres://localhost/app");
    /// ```
    pub fn new(source_url: impl Into<String>) -> Self {
        Self {
            source_url: source_url.into(),
            destination_url: None,
            slot: "bemi".to_owned(),
            publication: "bemi".to_owned(),
            filter: TableFilter::default(),
            redactions: Redactions::default(),
            ignored_columns: IgnoredColumns::default(),
            skip_unchanged_updates: true,
            heartbeat_interval: Duration::from_secs(10),
            max_batch_rows: 10_000,
            chunk_rows: 2_000,
            writer_connections: 2,
            image_indexes: bemi_audit::schema::ImageIndexes::Keep,
            checkpoints: bemi_audit::checkpoint::CheckpointPolicy::default(),
            context_key: None,
        }
    }

    /// The destination's URL (the source's when none was given).
    ///
    /// ```
    /// let config = bemi_worker::WorkerConfig::new("postgres://a/app");
    /// assert_eq!(config.destination_url(), "postgres://a/app");
    /// ```
    pub fn destination_url(&self) -> &str {
        self.destination_url.as_deref().unwrap_or(&self.source_url)
    }

    /// Only capture tables matching one of these globs (`schema.table`, or `table` in any
    /// schema; `*` and `?` wildcards).
    ///
    /// ```
    /// let config = bemi_worker::WorkerConfig::new("postgres://a/app").tables(["todo"]);
    /// assert!(config.filter.includes("public", "todo"));
    /// ```
    pub fn tables<I: IntoIterator<Item = S>, S: Into<String>>(mut self, globs: I) -> Self {
        self.filter.include = globs.into_iter().map(Into::into).collect();
        self
    }

    /// Never capture tables matching one of these globs.
    ///
    /// ```
    /// let config = bemi_worker::WorkerConfig::new("postgres://a/app").exclude_tables(["audit_*"]);
    /// assert!(!config.filter.includes("public", "audit_log"));
    /// ```
    pub fn exclude_tables<I: IntoIterator<Item = S>, S: Into<String>>(mut self, globs: I) -> Self {
        self.filter.exclude = globs.into_iter().map(Into::into).collect();
        self
    }

    /// Store a fixed marker instead of these columns' values (`table.column` or
    /// `schema.table.column`).
    ///
    /// ```
    /// let config = bemi_worker::WorkerConfig::new("postgres://a/app").redact(["users.ssn"]);
    /// assert!(config.redactions.is_redacted("public", "users", "ssn"));
    /// ```
    pub fn redact<I: IntoIterator<Item = S>, S: Into<String>>(mut self, columns: I) -> Self {
        self.redactions = Redactions::new(columns);
        self
    }

    /// Leave out an UPDATE when every column it changed matches one of these globs
    /// (`table.column` or `schema.table.column`; `*` and `?` wildcards). When it changed
    /// another column too, it is stored whole, the ignored columns included. INSERTs, DELETEs,
    /// TRUNCATEs and UPDATEs that change a primary key are always stored.
    ///
    /// ```
    /// let config = bemi_worker::WorkerConfig::new("postgres://a/app")
    ///     .ignore_columns(["*.updated_at", "orders.*_cached_counter"]);
    /// assert!(config.ignored_columns.is_ignored("public", "todo", "updated_at"));
    /// assert!(config.ignored_columns.is_ignored("sales", "orders", "items_cached_counter"));
    /// assert!(!config.ignored_columns.is_ignored("public", "todo", "task"));
    /// ```
    pub fn ignore_columns<I: IntoIterator<Item = S>, S: Into<String>>(mut self, globs: I) -> Self {
        self.ignored_columns = IgnoredColumns::new(globs);
        self
    }

    /// Whether to leave out UPDATEs that leave their row as it was (default `true`). Such an
    /// UPDATE can only be recognised with the whole before-image: on a table without `REPLICA
    /// IDENTITY FULL` every UPDATE is stored.
    ///
    /// ```
    /// let config = bemi_worker::WorkerConfig::new("postgres://a/app").skip_unchanged_updates(false);
    /// assert!(!config.skip_unchanged_updates);
    /// ```
    #[must_use]
    pub fn skip_unchanged_updates(mut self, skip: bool) -> Self {
        self.skip_unchanged_updates = skip;
        self
    }

    /// Writes `changes` into this database instead of the source.
    ///
    /// ```
    /// let config = bemi_worker::WorkerConfig::new("postgres://a/app").destination("postgres://b/audit");
    /// assert_eq!(config.destination_url(), "postgres://b/audit");
    /// ```
    #[must_use]
    pub fn destination(mut self, url: impl Into<String>) -> Self {
        self.destination_url = Some(url.into());
        self
    }

    /// The replication slot (default `bemi`; one per worker).
    ///
    /// ```
    /// assert_eq!(bemi_worker::WorkerConfig::new("postgres://a/app").slot("bemi_app").slot, "bemi_app");
    /// ```
    #[must_use]
    pub fn slot(mut self, slot: impl Into<String>) -> Self {
        self.slot = slot.into();
        self
    }

    /// The publication (default `bemi`).
    ///
    /// ```
    /// let config = bemi_worker::WorkerConfig::new("postgres://a/app").publication("audit");
    /// assert_eq!(config.publication, "audit");
    /// ```
    #[must_use]
    pub fn publication(mut self, publication: impl Into<String>) -> Self {
        self.publication = publication.into();
        self
    }

    /// How often an idle source gets a heartbeat and the publication is checked (default
    /// 10 s).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = bemi_worker::WorkerConfig::new("postgres://a/app").heartbeat_interval(Duration::from_secs(1));
    /// assert_eq!(config.heartbeat_interval, Duration::from_secs(1));
    /// ```
    #[must_use]
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// The most rows written to the destination in one transaction (default 10 000).
    ///
    /// ```
    /// assert_eq!(bemi_worker::WorkerConfig::new("postgres://a/app").max_batch_rows(500).max_batch_rows, 500);
    /// ```
    #[must_use]
    pub fn max_batch_rows(mut self, rows: usize) -> Self {
        self.max_batch_rows = rows;
        self
    }

    /// Rows of a large transaction handed over at once (default 2 000).
    ///
    /// ```
    /// assert_eq!(bemi_worker::WorkerConfig::new("postgres://a/app").chunk_rows(100).chunk_rows, 100);
    /// ```
    #[must_use]
    pub fn chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = rows;
        self
    }

    /// Destination connections writing batches at once (default 2).
    ///
    /// ```
    /// assert_eq!(bemi_worker::WorkerConfig::new("postgres://a/app").writer_connections(4).writer_connections, 4);
    /// ```
    #[must_use]
    pub fn writer_connections(mut self, connections: usize) -> Self {
        self.writer_connections = connections;
        self
    }

    /// Keep or drop the GIN indexes on `before` and `after` of `changes` (default keep).
    ///
    /// ```
    /// use bemi_worker::{ImageIndexes, WorkerConfig};
    ///
    /// let config = WorkerConfig::new("postgres://a/app").image_indexes(ImageIndexes::Drop);
    /// assert_eq!(config.image_indexes, ImageIndexes::Drop);
    /// ```
    #[must_use]
    pub fn image_indexes(mut self, indexes: bemi_audit::schema::ImageIndexes) -> Self {
        self.image_indexes = indexes;
        self
    }

    /// Signs the hash chain's head with `policy`'s key every N changes or T seconds
    /// (`_bemi_checkpoints`, and the policy's file if any).
    ///
    /// ```
    /// use bemi_audit::checkpoint::{CheckpointPolicy, SigningKey};
    /// use bemi_worker::WorkerConfig;
    ///
    /// let key = SigningKey::generate().unwrap();
    /// let config = WorkerConfig::new("postgres://a/app")
    ///     .checkpoints(CheckpointPolicy::new(Some(key)).every_changes(1_000));
    /// assert_eq!(config.checkpoints.every_changes, 1_000);
    /// ```
    #[must_use]
    pub fn checkpoints(mut self, policy: bemi_audit::checkpoint::CheckpointPolicy) -> Self {
        self.checkpoints = policy;
        self
    }

    /// Checks signed contexts with the applications' context key (see
    /// [`bemi_core::signing`]).
    ///
    /// ```
    /// use bemi_core::signing::ContextKey;
    /// use bemi_worker::WorkerConfig;
    ///
    /// let config = WorkerConfig::new("postgres://a/app").context_key(Some(ContextKey::new(b"secret")));
    /// assert!(config.context_key.is_some());
    /// ```
    #[must_use]
    pub fn context_key(mut self, key: Option<bemi_core::signing::ContextKey>) -> Self {
        self.context_key = key;
        self
    }

    /// Replaces the redactions (see [`redact`](Self::redact) for globs).
    ///
    /// ```
    /// use bemi_worker::{Redactions, WorkerConfig};
    ///
    /// let config = WorkerConfig::new("postgres://a/app").redactions(Redactions::new(["users.ssn"]));
    /// assert!(config.redactions.is_redacted("public", "users", "ssn"));
    /// ```
    #[must_use]
    pub fn redactions(mut self, redactions: Redactions) -> Self {
        self.redactions = redactions;
        self
    }

    /// Replaces the ignored columns (see [`ignore_columns`](Self::ignore_columns) for globs).
    ///
    /// ```
    /// use bemi_worker::{IgnoredColumns, WorkerConfig};
    ///
    /// let config = WorkerConfig::new("postgres://a/app").ignored_columns(IgnoredColumns::new(["*.updated_at"]));
    /// assert!(config.ignored_columns.is_ignored("public", "todo", "updated_at"));
    /// ```
    #[must_use]
    pub fn ignored_columns(mut self, columns: IgnoredColumns) -> Self {
        self.ignored_columns = columns;
        self
    }

    /// The capture rules in one line, for the worker's start-up log.
    pub(crate) fn rules_summary(&self) -> String {
        let ignored = if self.ignored_columns.is_empty() {
            "none".to_owned()
        } else {
            self.ignored_columns.globs().join(", ")
        };
        format!(
            "ignored columns: {ignored}; unchanged updates: {}",
            if self.skip_unchanged_updates {
                "skipped"
            } else {
                "stored"
            }
        )
    }
}

/// Columns whose changes alone do not make an UPDATE worth storing: globs of `table.column` or
/// `schema.table.column`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IgnoredColumns {
    globs: Vec<String>,
}

impl IgnoredColumns {
    /// The rules of `globs`; see [`IgnoredColumns::parse_strict`] for checked input.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(globs: I) -> Self {
        Self {
            globs: globs.into_iter().map(Into::into).collect(),
        }
    }

    /// Checks every glob (`table.column` or `schema.table.column`, no empty part): the CLI's
    /// `--ignore-columns`.
    ///
    /// ```
    /// assert!(bemi_worker::IgnoredColumns::parse_strict(&["*.updated_at".into()]).is_ok());
    /// assert!(bemi_worker::IgnoredColumns::parse_strict(&["updated_at".into()]).is_err());
    /// ```
    pub fn parse_strict(globs: &[String]) -> Result<Self, String> {
        for glob in globs {
            let dots = glob.matches('.').count();
            if !(1..=2).contains(&dots) || glob.split('.').any(str::is_empty) {
                return Err(format!(
                    "--ignore-columns {glob:?}: expected TABLE.COLUMN or SCHEMA.TABLE.COLUMN \
                     (globs allowed, e.g. *.updated_at)"
                ));
            }
        }
        Ok(Self::new(globs.iter().cloned()))
    }

    /// Whether there is no rule.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.globs.is_empty()
    }

    /// The globs, as given.
    #[must_use]
    pub fn globs(&self) -> &[String] {
        &self.globs
    }

    /// Whether `schema.table.column` matches a rule.
    #[must_use]
    pub fn is_ignored(&self, schema: &str, table: &str, column: &str) -> bool {
        self.globs.iter().any(|glob| {
            let parts: Vec<&str> = glob.split('.').collect();
            match parts.as_slice() {
                [t, c] => glob_matches(t, table) && glob_matches(c, column),
                [s, t, c] => {
                    glob_matches(s, schema) && glob_matches(t, table) && glob_matches(c, column)
                }
                _ => false,
            }
        })
    }
}

/// Which tables are captured: those matching an include glob (all, when there is none) and no
/// exclude glob.
///
/// ```
/// let mut filter = bemi_worker::TableFilter::default();
/// filter.include = vec!["billing.*".into()];
/// filter.exclude = vec!["*.tmp_*".into()];
/// assert!(filter.includes("billing", "invoice"));
/// assert!(!filter.includes("billing", "tmp_import"));
/// assert!(!filter.includes("public", "todo"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableFilter {
    /// Globs of tables to capture; empty means every table.
    pub include: Vec<String>,
    /// Globs of tables never to capture.
    pub exclude: Vec<String>,
}

impl TableFilter {
    /// Whether `schema.table` is captured.
    ///
    /// ```
    /// assert!(bemi_worker::TableFilter::default().includes("public", "todo"));
    /// ```
    pub fn includes(&self, schema: &str, table: &str) -> bool {
        let matches = |glob: &String| table_glob_matches(glob, schema, table);
        (self.include.is_empty() || self.include.iter().any(matches))
            && !self.exclude.iter().any(matches)
    }
}

/// `schema.table` globs match the qualified name; a glob without a dot matches the table name in
/// any schema.
fn table_glob_matches(glob: &str, schema: &str, table: &str) -> bool {
    match glob.split_once('.') {
        Some((schema_glob, table_glob)) => {
            glob_matches(schema_glob, schema) && glob_matches(table_glob, table)
        }
        None => glob_matches(glob, table),
    }
}

/// Shell-style glob: `*` matches any run of characters, `?` one character.
pub(crate) fn glob_matches(glob: &str, text: &str) -> bool {
    let (glob, text): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    let (mut g, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some('*') => {
                backtrack = Some((g, t));
                g += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    g = star + 1;
                    t = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

/// Columns whose values are never stored.
///
/// ```
/// let redactions = bemi_worker::Redactions::new(["users.password_hash", "billing.card.number"]);
/// assert!(redactions.is_redacted("public", "users", "password_hash"));
/// assert!(redactions.is_redacted("billing", "card", "number"));
/// assert!(!redactions.is_redacted("public", "card", "number"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redactions {
    columns: Vec<(Option<String>, String, String)>,
}

impl Redactions {
    /// The JSON value stored instead of a redacted column's value.
    /// It is [`bemi_audit::REDACTED`], which a revert refuses to write back.
    pub const MARKER: &'static str = bemi_audit::REDACTED;

    /// Parses `table.column` and `schema.table.column` entries; other entries are ignored.
    ///
    /// ```
    /// let redactions = bemi_worker::Redactions::new(["users.email"]);
    /// assert!(!redactions.is_empty());
    /// ```
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(entries: I) -> Self {
        let columns = entries
            .into_iter()
            .filter_map(|entry| {
                let entry: String = entry.into();
                let parts: Vec<&str> = entry.split('.').collect();
                match parts.as_slice() {
                    [table, column] => Some((None, (*table).to_owned(), (*column).to_owned())),
                    [schema, table, column] => Some((
                        Some((*schema).to_owned()),
                        (*table).to_owned(),
                        (*column).to_owned(),
                    )),
                    _ => None,
                }
            })
            .collect();
        Self { columns }
    }

    /// Whether there is nothing to redact.
    ///
    /// ```
    /// assert!(bemi_worker::Redactions::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Whether the column's values are redacted.
    ///
    /// ```
    /// let redactions = bemi_worker::Redactions::new(["users.email"]);
    /// assert!(redactions.is_redacted("app", "users", "email"));
    /// ```
    pub fn is_redacted(&self, schema: &str, table: &str, column: &str) -> bool {
        self.columns
            .iter()
            .any(|(s, t, c)| s.as_deref().is_none_or(|s| s == schema) && t == table && c == column)
    }

    /// Validates entries, for the CLI: every entry must be `table.column` or
    /// `schema.table.column`.
    ///
    /// ```
    /// assert!(bemi_worker::Redactions::parse_strict(&["users".into()]).is_err());
    /// ```
    pub fn parse_strict(entries: &[String]) -> Result<Self, String> {
        for entry in entries {
            let dots = entry.matches('.').count();
            if !(1..=2).contains(&dots) || entry.split('.').any(str::is_empty) {
                return Err(format!(
                    "--redact {entry:?}: expected TABLE.COLUMN or SCHEMA.TABLE.COLUMN"
                ));
            }
        }
        Ok(Self::new(entries.iter().cloned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_runs_and_single_characters() {
        assert!(glob_matches("to*", "todo"));
        assert!(glob_matches("t?do", "todo"));
        assert!(!glob_matches("to", "todo"));
    }

    #[test]
    fn globs() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*_log", "audit_log"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(glob_matches("**", "x"));
        assert!(!glob_matches("?", ""));
    }

    #[test]
    fn qualified_and_unqualified_table_globs() {
        let filter = TableFilter {
            include: vec!["public.*".into(), "invoice".into()],
            exclude: vec!["public.secret*".into()],
        };
        assert!(filter.includes("public", "todo"));
        assert!(filter.includes("billing", "invoice"));
        assert!(!filter.includes("billing", "payment"));
        assert!(!filter.includes("public", "secrets"));
    }
}
