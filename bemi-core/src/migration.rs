//! The SQL that installs tracking: statement-level triggers that turn the ` /*Bemi {json} Bemi*/`
//! comment of each write into one transactional `_bemi` logical-decoding message.
//!
//! [`up`] installs, [`down`] removes; both are plain SQL strings to put in your own migrations
//! (`bemi migration create` writes a sqlx-migrate pair), or to run with `bemi_sqlx::migration::migrate`
//! or `bemi migrate`. What `up` creates:
//!
//! - `_bemi_statement_trigger_func()`: the trigger. Once per statement and table it reads
//!   `current_query()`, takes the JSON of a trailing Bemi comment and emits it with
//!   `pg_logical_emit_message(true, '_bemi', json)`; for a statement without a comment after one
//!   with a context in the same transaction it emits `{}`, so that its rows do not inherit it.
//!   Its fast path (the comment at the very end, JSON without `*`, as the adapters write it) costs
//!   about as much as an empty trigger; other placements take a slower, careful path. It never
//!   fails a write: it calls only schema-qualified `pg_catalog` functions (so any `search_path`
//!   works, `''` and schema-per-tenant ones included) and checks every length it cuts with.
//! - `_bemi_create_triggers()`: installs the trigger `_bemi_statement_trigger` (BEFORE INSERT OR
//!   UPDATE OR DELETE OR TRUNCATE, FOR EACH STATEMENT) on every ordinary and partitioned table of
//!   every non-system schema, except unlogged, temporary and extension-owned tables and the
//!   capture worker's own tables (`changes`, `_bemi*`); sets REPLICA IDENTITY FULL when enabled.
//! - the event trigger `_bemi_create_table_trigger`, which does the same for tables created
//!   later. It needs superuser; without it the migration warns and new tables need
//!   `CALL _bemi_create_triggers();`.
//!
//! With [`MigrationOptions::comment_trigger`] off, tables are tracked (published, REPLICA
//! IDENTITY FULL) without the trigger: writes then pay nothing for tracking on the server, and
//! only contexts the adapters emit as messages ([`crate::carrier::Carrier::Message`]) reach the
//! audit trail — Bemi comments and sqlcommenter tags are ignored.
//!
//! ```
//! use bemi_core::migration::{self, MigrationOptions};
//!
//! assert!(migration::up().contains("CREATE OR REPLACE FUNCTION _bemi_statement_trigger_func()"));
//! let without_full = MigrationOptions::default().replica_identity_full(false).up();
//! assert!(without_full.contains("_bemi_track_table(created.objid, false, true)"));
//! assert!(migration::down().contains("DROP EVENT TRIGGER IF EXISTS _bemi_create_table_trigger"));
//! ```

const UP_TEMPLATE: &str = include_str!("migration.sql");
const DOWN: &str = include_str!("migration_down.sql");
const REPLICA_IDENTITY_PLACEHOLDER: &str = "{{REPLICA_IDENTITY_FULL}}";
const COMMENT_TRIGGER_PLACEHOLDER: &str = "{{COMMENT_TRIGGER}}";

/// The name of the trigger installed on every tracked table.
pub const TRIGGER_NAME: &str = "_bemi_statement_trigger";

/// Choices for the migration: [`Default`], then a setter per choice (more may come, hence
/// `#[non_exhaustive]`).
///
/// ```
/// use bemi_core::migration::MigrationOptions;
///
/// assert!(MigrationOptions::default().replica_identity_full);
/// let options = MigrationOptions::default().replica_identity_full(false);
/// assert!(!options.replica_identity_full);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationOptions {
    /// Set `REPLICA IDENTITY FULL` on every tracked table, now and for tables created later, so
    /// that updates and deletes carry the whole before-image. Default: `true`.
    pub replica_identity_full: bool,
    /// Install the statement trigger that turns a write's trailing ` /*Bemi {json} Bemi*/`
    /// comment (or sqlcommenter tag) into its context. Default: `true` — Bemi's comment format of
    /// its other languages. Off, the migration removes the trigger from tracked tables: every
    /// write then costs the server nothing for tracking, and only contexts that adapters emit
    /// as messages ([`Carrier::Message`](crate::carrier::Carrier::Message); set it on every
    /// adapter, since [`Carrier::Auto`](crate::carrier::Carrier::Auto) uses the comment for
    /// sqlx writes outside a transaction) reach the audit trail. Writes by tools that only
    /// comment (psql, other languages' Bemi libraries) are still captured, without context.
    pub comment_trigger: bool,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        Self {
            replica_identity_full: true,
            comment_trigger: true,
        }
    }
}

impl MigrationOptions {
    /// Sets [`replica_identity_full`](Self#structfield.replica_identity_full).
    ///
    /// ```
    /// let sql = bemi_core::migration::MigrationOptions::default().replica_identity_full(false).up();
    /// assert!(sql.contains("_bemi_track_table(created.objid, false, true)"));
    /// ```
    #[must_use]
    pub fn replica_identity_full(mut self, on: bool) -> Self {
        self.replica_identity_full = on;
        self
    }

    /// Sets [`comment_trigger`](Self#structfield.comment_trigger).
    ///
    /// ```
    /// let sql = bemi_core::migration::MigrationOptions::default().comment_trigger(false).up();
    /// assert!(sql.contains("_bemi_track_table(created.objid, true, false)"));
    /// assert!(sql.contains("comment_trigger boolean DEFAULT false"));
    /// ```
    #[must_use]
    pub fn comment_trigger(mut self, on: bool) -> Self {
        self.comment_trigger = on;
        self
    }

    /// The installing SQL for these options.
    ///
    /// ```
    /// let sql = bemi_core::migration::MigrationOptions::default().up();
    /// assert!(sql.contains("CALL _bemi_create_triggers();"));
    /// ```
    pub fn up(&self) -> String {
        let flag = |on: bool| if on { "true" } else { "false" };
        UP_TEMPLATE
            .replace(
                REPLICA_IDENTITY_PLACEHOLDER,
                flag(self.replica_identity_full),
            )
            .replace(COMMENT_TRIGGER_PLACEHOLDER, flag(self.comment_trigger))
    }
}

/// The installing SQL with the default options (REPLICA IDENTITY FULL on). Idempotent.
///
/// ```
/// assert!(bemi_core::migration::up().contains("pg_logical_emit_message(true, '_bemi'"));
/// ```
pub fn up() -> String {
    MigrationOptions::default().up()
}

/// The SQL that removes every object [`up`] created (REPLICA IDENTITY settings stay).
///
/// ```
/// assert!(bemi_core::migration::down().contains("DROP FUNCTION IF EXISTS _bemi_statement_trigger_func() CASCADE"));
/// ```
pub fn down() -> &'static str {
    DOWN
}
