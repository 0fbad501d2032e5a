//! The `changes` table (plain, or partitioned by month on `committed_at`), its indexes, and the
//! monthly partitions.
//!
//! Every query of the audit trail is served by an index, or refines one that is:
//!
//! | filter | index |
//! |---|---|
//! | id | `changes_pkey` |
//! | time range, newest / oldest first, keyset pages, retention | `changes_committed_at_idx` |
//! | table, table + primary key (history, time travel, TRUNCATEs: `primary_key IS NULL`) | `changes_table_primary_key_idx` |
//! | transaction id | `changes_transaction_id_idx` |
//! | context / before / after containment (`@>`) | GIN `jsonb_path_ops` on each |
//! | schema, database, operation, "a field changed" | refinements |
//!
//! **Partitioned by month** ([`Layout::Monthly`], `bemi worker --partition-by month`): the same
//! columns and indexes, with `committed_at` in the primary key and the unique key (PostgreSQL
//! requires the partition key in both), a partition per month named `changes_yYYYYmMM`, and a
//! default partition as a safety net. Partitions are created ahead of time — the current and
//! the next month — when the worker starts and every hour while it runs, by attaching a new
//! table ([`ensure_partitions`]): attaching takes a lock that the writer's inserts into the
//! current month do not wait for. Retention then drops whole months
//! ([`crate::retention`]) instead of deleting rows.
//!
//! ```no_run
//! use bemi_audit::schema::{self, Layout};
//!
//! # async fn run(mut conn: sqlx::PgConnection) -> Result<(), bemi_audit::schema::SchemaError> {
//! // Before the worker first starts: a partitioned `changes` table.
//! let layout = schema::create(&mut conn, Layout::Monthly).await?;
//! assert_eq!(layout, Layout::Monthly);
//! # Ok(()) }
//! ```

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike as _, NaiveDate, TimeZone as _, Utc};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// The columns of `changes`, shared by both layouts.
macro_rules! changes_columns {
    () => {
        r#"
  id uuid NOT NULL DEFAULT gen_random_uuid(),
  primary_key text,
  before jsonb NOT NULL DEFAULT '{}',
  after jsonb NOT NULL DEFAULT '{}',
  context jsonb NOT NULL DEFAULT '{}',
  database text NOT NULL,
  schema text NOT NULL,
  "table" text NOT NULL,
  operation text NOT NULL CHECK (operation IN ('CREATE', 'UPDATE', 'DELETE', 'TRUNCATE')),
  committed_at timestamptz NOT NULL,
  queued_at timestamptz NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  transaction_id bigint NOT NULL,
  position bigint NOT NULL,
  source text NOT NULL DEFAULT '',
  chain text,
  chain_seq bigint,
  chain_hash bytea,
  chain_fields bytea,"#
    };
}

/// The indexes of `changes`, shared by both layouts, and what was added since the first
/// version, for a table an older worker made: the column `source` (its rows keep `''`,
/// unknown), and `source` in the unique key — without it, two source clusters whose databases
/// share a name could store changes at the same position, and the second would be taken for a
/// re-delivery of the first and dropped. Rebuilding the key locks `changes` while it builds,
/// once. Idempotent.
macro_rules! indexes {
    () => {
        r#"
ALTER TABLE changes ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT '';
ALTER TABLE changes ADD COLUMN IF NOT EXISTS chain text;
ALTER TABLE changes ADD COLUMN IF NOT EXISTS chain_seq bigint;
ALTER TABLE changes ADD COLUMN IF NOT EXISTS chain_hash bytea;
ALTER TABLE changes ADD COLUMN IF NOT EXISTS chain_fields bytea;
DO $bemi$ BEGIN
  IF NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_constraint k
      JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey)
     WHERE k.conrelid = 'changes'::regclass AND k.conname = 'changes_position_key'
       AND a.attname = 'source'
  ) THEN
    RAISE NOTICE 'bemi: adding the source cluster to the unique key of changes (once)';
    ALTER TABLE changes DROP CONSTRAINT IF EXISTS changes_position_key;
    IF (SELECT relkind FROM pg_catalog.pg_class WHERE oid = 'changes'::regclass) = 'p' THEN
      ALTER TABLE changes ADD CONSTRAINT changes_position_key
        UNIQUE (position, "table", schema, database, operation, source, committed_at);
    ELSE
      ALTER TABLE changes ADD CONSTRAINT changes_position_key
        UNIQUE (position, "table", schema, database, operation, source);
    END IF;
  END IF;
END $bemi$;
CREATE INDEX IF NOT EXISTS changes_committed_at_idx ON changes (committed_at);
CREATE INDEX IF NOT EXISTS changes_table_primary_key_idx ON changes ("table", primary_key, committed_at);
CREATE INDEX IF NOT EXISTS changes_transaction_id_idx ON changes (transaction_id);
CREATE INDEX IF NOT EXISTS changes_context_idx ON changes USING gin (context jsonb_path_ops);
CREATE INDEX IF NOT EXISTS changes_before_idx ON changes USING gin (before jsonb_path_ops);
CREATE INDEX IF NOT EXISTS changes_after_idx ON changes USING gin (after jsonb_path_ops);
CREATE INDEX IF NOT EXISTS changes_chain_idx ON changes (chain, chain_seq);
"#
    };
}

/// The plain `changes` table and its indexes. Idempotent: on an
/// existing table (plain or partitioned) it adds what is missing.
pub const SCHEMA_SQL: &str = concat!(
    "CREATE TABLE IF NOT EXISTS changes (",
    changes_columns!(),
    r#"
  CONSTRAINT changes_pkey PRIMARY KEY (id),
  CONSTRAINT changes_position_key UNIQUE (position, "table", schema, database, operation, source)
);"#,
    indexes!()
);

/// `changes` partitioned by month on `committed_at`, with a default partition, the same
/// indexes. Idempotent. The monthly partitions are created by
/// [`ensure_partitions`].
pub const PARTITIONED_SCHEMA_SQL: &str = concat!(
    "CREATE TABLE IF NOT EXISTS changes (",
    changes_columns!(),
    r#"
  CONSTRAINT changes_pkey PRIMARY KEY (id, committed_at),
  CONSTRAINT changes_position_key UNIQUE (position, "table", schema, database, operation, source, committed_at)
) PARTITION BY RANGE (committed_at);
DO $bemi$ BEGIN
  IF to_regclass('changes_default') IS NULL THEN
    -- Created under a `_bemi` name, which the migration's event trigger leaves alone.
    CREATE TABLE _bemi_changes_default PARTITION OF changes DEFAULT;
    ALTER TABLE _bemi_changes_default RENAME TO changes_default;
  END IF;
END $bemi$;"#,
    indexes!()
);

/// The names [`PARTITIONED_SCHEMA_SQL`] gives its indexes and constraints: a new partitioned
/// table cannot have them if another table (an old `changes` renamed) still does.
const INDEX_NAMES: [&str; 9] = [
    "changes_pkey",
    "changes_position_key",
    "changes_committed_at_idx",
    "changes_table_primary_key_idx",
    "changes_transaction_id_idx",
    "changes_context_idx",
    "changes_before_idx",
    "changes_after_idx",
    "changes_chain_idx",
];

/// The lock that serializes schema changes of the destination (the worker's start takes it too).
const SCHEMA_LOCK_SQL: &str =
    "SELECT pg_advisory_xact_lock(hashtext('bemi-rs destination schema'))";

/// How many months after the current one get a partition ahead of time.
pub const MONTHS_AHEAD: u32 = 1;

/// How often the running worker makes sure the partitions exist.
pub const PARTITION_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// How long partition maintenance waits for a lock on `changes` before giving up (and trying
/// again later), so that it never queues the writer behind it for long.
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '5s'";

/// How `changes` is laid out.
///
/// ```
/// use bemi_audit::schema::Layout;
///
/// assert_eq!("month".parse::<Layout>(), Ok(Layout::Monthly));
/// assert_eq!("none".parse::<Layout>(), Ok(Layout::Plain));
/// assert!("week".parse::<Layout>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Layout {
    /// One table.
    #[default]
    Plain,
    /// Partitioned by month on `committed_at`.
    Monthly,
}

impl FromStr for Layout {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" | "no" | "off" => Ok(Layout::Plain),
            "month" | "monthly" => Ok(Layout::Monthly),
            _ => Err(format!(
                "{text:?} is not a partitioning: write `month` (one partition per month) or \
                 `none`"
            )),
        }
    }
}

/// Why the `changes` table could not be set up as asked.
///
/// ```
/// let error = bemi_audit::schema::SchemaError::NotPartitioned;
/// assert!(error.to_string().contains("SET SCHEMA"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A query failed.
    #[error("could not set up the changes table: {0}")]
    Database(#[from] sqlx::Error),
    /// Partitioning was asked for, but a plain `changes` table exists.
    #[error(
        "the changes table exists and is not partitioned; partitioning applies to a new table. \
         To start a partitioned one, stop the worker and move the old table aside with its \
         indexes (`CREATE SCHEMA IF NOT EXISTS bemi_archive; ALTER TABLE changes SET SCHEMA \
         bemi_archive;`), start the worker with --partition-by month, and copy back what you \
         want to keep (`INSERT INTO changes SELECT * FROM bemi_archive.changes WHERE …`)"
    )]
    NotPartitioned,
    /// An index or constraint name of the new table is taken by another table.
    #[error(
        "cannot create the partitioned changes table: the name {0} is taken by an index of \
         another table (an old changes table renamed?); rename that index, or move the old \
         table to another schema (`ALTER TABLE … SET SCHEMA …` moves its indexes along)"
    )]
    NameTaken(String),
}

/// The layout of the existing `changes` table (as the search path finds it), or `None`.
///
/// ```no_run
/// # async fn run(mut conn: sqlx::PgConnection) -> Result<(), sqlx::Error> {
/// let layout = bemi_audit::schema::layout(&mut conn).await?;
/// # Ok(()) }
/// ```
pub async fn layout(conn: &mut PgConnection) -> Result<Option<Layout>, sqlx::Error> {
    let kind: Option<String> =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = to_regclass('changes')")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(kind.map(|kind| {
        if kind == "p" {
            Layout::Monthly
        } else {
            Layout::Plain
        }
    }))
}

/// Creates the `changes` table with `layout` if it does not exist, adds missing indexes, and, when partitioned, the partitions of the current and next
/// month. Returns the table's layout: a partitioned table stays partitioned when
/// [`Layout::Plain`] is asked for; a plain one cannot become partitioned
/// ([`SchemaError::NotPartitioned`]).
///
/// ```no_run
/// # async fn run(mut conn: sqlx::PgConnection) -> Result<(), bemi_audit::schema::SchemaError> {
/// bemi_audit::schema::create(&mut conn, bemi_audit::schema::Layout::Monthly).await?;
/// # Ok(()) }
/// ```
pub async fn create(conn: &mut PgConnection, wanted: Layout) -> Result<Layout, SchemaError> {
    let mut tx = conn.begin().await?;
    sqlx::query(SCHEMA_LOCK_SQL).execute(&mut *tx).await?;
    let existing = layout(&mut tx).await?;
    let actual = match (existing, wanted) {
        (Some(Layout::Plain), Layout::Monthly) => return Err(SchemaError::NotPartitioned),
        (Some(layout), _) => layout,
        (None, layout) => layout,
    };
    match (existing, actual) {
        (None, Layout::Monthly) => {
            let taken: Option<String> = sqlx::query_scalar(
                "SELECT relname::text FROM pg_class \
                  WHERE relname = ANY($1) \
                    AND relnamespace = current_schema()::regnamespace LIMIT 1",
            )
            .bind(INDEX_NAMES)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(name) = taken {
                return Err(SchemaError::NameTaken(name));
            }
            sqlx::raw_sql(PARTITIONED_SCHEMA_SQL)
                .execute(&mut *tx)
                .await?;
        }
        _ => {
            sqlx::raw_sql(SCHEMA_SQL).execute(&mut *tx).await?;
        }
    }
    sqlx::raw_sql(crate::chain::TABLES_SQL)
        .execute(&mut *tx)
        .await?;
    if actual == Layout::Monthly {
        ensure_partitions(&mut tx, Utc::now(), MONTHS_AHEAD).await?;
    }
    tx.commit().await?;
    Ok(actual)
}

/// What a writer of the audit trail runs when it connects, inside a transaction of its own:
/// takes the schema lock (until the caller's transaction ends), creates the plain table if
/// there is none, adds missing indexes, and, for a partitioned table, the partitions of the
/// current and next month (best effort: a failure there is logged, and the default partition
/// takes the rows).
///
/// ```no_run
/// # async fn run(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
/// use sqlx::Connection as _;
///
/// let mut tx = conn.begin().await?;
/// bemi_audit::schema::prepare(&mut tx).await?;
/// // ... the writer's own tables ...
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn prepare(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    prepare_with(conn, ImageIndexes::Keep).await
}

/// Whether `changes` has the GIN indexes on `before` and `after` (`changes_before_idx`,
/// `changes_after_idx`), which serve the image filters (`--before`, `--after`,
/// `ChangeQuery::before_contains`) and cost every stored change their upkeep (see
/// BENCHMARKS.md, P4-choice). Without them those filters scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageIndexes {
    /// Create them if missing (the default).
    #[default]
    Keep,
    /// Drop them if present, and never create them.
    Drop,
}

/// [`prepare`], choosing whether the image indexes exist.
///
/// ```no_run
/// # async fn run(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
/// use bemi_audit::schema::{ImageIndexes, prepare_with};
/// use sqlx::Connection as _;
///
/// let mut tx = conn.begin().await?;
/// prepare_with(&mut tx, ImageIndexes::Drop).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn prepare_with(
    conn: &mut PgConnection,
    image_indexes: ImageIndexes,
) -> Result<(), sqlx::Error> {
    sqlx::query(SCHEMA_LOCK_SQL).execute(&mut *conn).await?;
    match image_indexes {
        ImageIndexes::Keep => {
            sqlx::raw_sql(SCHEMA_SQL).execute(&mut *conn).await?;
        }
        ImageIndexes::Drop => {
            let without_images: String = SCHEMA_SQL
                .lines()
                .filter(|line| {
                    !line.contains("changes_before_idx") && !line.contains("changes_after_idx")
                })
                .collect::<Vec<_>>()
                .join("\n");
            sqlx::raw_sql(AssertSqlSafe(without_images))
                .execute(&mut *conn)
                .await?;
            sqlx::raw_sql(
                "DROP INDEX IF EXISTS changes_before_idx; DROP INDEX IF EXISTS changes_after_idx",
            )
            .execute(&mut *conn)
            .await?;
        }
    }
    sqlx::raw_sql(crate::chain::TABLES_SQL)
        .execute(&mut *conn)
        .await?;
    if layout(conn).await? == Some(Layout::Monthly) {
        let mut savepoint = conn.begin().await?;
        match ensure_partitions(&mut savepoint, Utc::now(), MONTHS_AHEAD).await {
            Ok(_) => savepoint.commit().await?,
            Err(error) => {
                savepoint.rollback().await?;
                tracing::warn!(%error, "could not create the next partitions of changes; rows go to changes_default until they exist");
            }
        }
    }
    Ok(())
}

/// One partition of `changes`.
///
/// ```no_run
/// # async fn run(mut conn: sqlx::PgConnection) -> Result<(), sqlx::Error> {
/// for partition in bemi_audit::schema::partitions(&mut conn).await? {
///     println!("{} {:?}..{:?}", partition.name, partition.from, partition.to);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Its name, quoted and schema-qualified as needed (as `regclass` prints it).
    pub name: String,
    /// The first instant it holds (`None`: the default partition or `MINVALUE`).
    pub from: Option<DateTime<Utc>>,
    /// The instant it stops before (`None`: the default partition or `MAXVALUE`).
    pub to: Option<DateTime<Utc>>,
    /// Whether it is the default partition.
    pub is_default: bool,
}

/// The partitions of a partitioned `changes` table, oldest first (the default partition first).
///
/// ```no_run
/// # async fn run(mut conn: sqlx::PgConnection) -> Result<(), sqlx::Error> {
/// let months = bemi_audit::schema::partitions(&mut conn).await?.len();
/// # Ok(()) }
/// ```
pub async fn partitions(conn: &mut PgConnection) -> Result<Vec<Partition>, sqlx::Error> {
    type Row = (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>, bool);
    // The bounds as pg_get_expr prints them, e.g. FOR VALUES FROM ('2026-05-01 00:00:00+00')
    // TO ('2026-06-01 00:00:00+00'): the literals carry their offset, so casting them back is
    // exact whatever the session's time zone.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.oid::regclass::text, \
                (regexp_match(b.bound, 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz, \
                (regexp_match(b.bound, 'TO \\(''([^'']+)''\\)'))[1]::timestamptz, \
                b.bound = 'DEFAULT' \
           FROM pg_inherits i \
           JOIN pg_class c ON c.oid = i.inhrelid \
           CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS bound) b \
          WHERE i.inhparent = to_regclass('changes') \
          ORDER BY 2 NULLS FIRST",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, from, to, is_default)| Partition {
            name,
            from,
            to,
            is_default,
        })
        .collect())
}

/// The name of the partition of the month starting at `month`: `changes_y2026m05`.
///
/// ```
/// let month = chrono::NaiveDate::from_ymd_opt(2026, 5, 1).unwrap();
/// assert_eq!(bemi_audit::schema::partition_name(month), "changes_y2026m05");
/// ```
pub fn partition_name(month: NaiveDate) -> String {
    format!("changes_y{:04}m{:02}", month.year(), month.month())
}

/// The first day of the month `offset` months after the month of `instant` (UTC), and of the
/// month after that.
///
/// ```
/// use chrono::{NaiveDate, TimeZone, Utc};
///
/// let instant = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
/// let (from, to) = bemi_audit::schema::month_bounds(instant, 1);
/// assert_eq!(from, NaiveDate::from_ymd_opt(2027, 1, 1).unwrap());
/// assert_eq!(to, NaiveDate::from_ymd_opt(2027, 2, 1).unwrap());
/// ```
pub fn month_bounds(instant: DateTime<Utc>, offset: u32) -> (NaiveDate, NaiveDate) {
    let first = |months: u32| {
        let index = instant.year() * 12 + instant.month0() as i32 + months as i32;
        NaiveDate::from_ymd_opt(index.div_euclid(12), index.rem_euclid(12) as u32 + 1, 1)
            .unwrap_or(NaiveDate::MAX)
    };
    (first(offset), first(offset + 1))
}

/// Makes sure the months of `now` and the `months_ahead` after it have partitions (for a
/// partitioned `changes`; does nothing otherwise). Returns the names of those it created.
///
/// A missing month is created as a table of its own, filled with the month's rows the default
/// partition holds (if any), and attached: attaching waits only for writes to the default
/// partition, never for the writer's inserts into the current month; and it waits at most 5 s
/// for its locks (then it fails, and is tried again later).
///
/// ```no_run
/// # async fn run(mut conn: sqlx::PgConnection) -> Result<(), sqlx::Error> {
/// let created = bemi_audit::schema::ensure_partitions(&mut conn, chrono::Utc::now(), 1).await?;
/// # Ok(()) }
/// ```
pub async fn ensure_partitions(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    months_ahead: u32,
) -> Result<Vec<String>, sqlx::Error> {
    if layout(conn).await? != Some(Layout::Monthly) {
        return Ok(Vec::new());
    }
    let mut created = Vec::new();
    for offset in 0..=months_ahead {
        let (from, to) = month_bounds(now, offset);
        if !covered(&partitions(conn).await?, from, to) && attach_month(conn, from, to).await? {
            created.push(partition_name(from));
        }
    }
    Ok(created)
}

/// Whether a partition other than the default one holds part of `[from, to)`.
fn covered(existing: &[Partition], from: NaiveDate, to: NaiveDate) -> bool {
    let (from, to) = (midnight(from), midnight(to));
    existing.iter().any(|p| {
        !p.is_default && p.from.is_none_or(|start| start < to) && p.to.is_none_or(|end| end > from)
    })
}

/// Creates, fills (from the default partition) and attaches the partition of the month
/// `[from, to)`, in one transaction (or savepoint). `false` when, once it holds the schema lock,
/// the month turns out to exist already (another session made it meanwhile).
async fn attach_month(
    conn: &mut PgConnection,
    month: NaiveDate,
    next_month: NaiveDate,
) -> Result<bool, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query(LOCK_TIMEOUT).execute(&mut *tx).await?;
    sqlx::query(SCHEMA_LOCK_SQL).execute(&mut *tx).await?;
    if covered(&partitions(&mut tx).await?, month, next_month) {
        return Ok(false);
    }
    let (from, to) = (midnight(month), midnight(next_month));
    // The statements name tables and take literal bounds, which DDL cannot take as parameters:
    // the server writes them, quoting with %I and %L. The table is created under a `_bemi`
    // name, which the migration's event trigger leaves alone (a table created under its own
    // name would be added to the publication, and the worker would capture its own writes),
    // and renamed before it is attached.
    let statements: Vec<Option<String>> = sqlx::query_scalar(
        "WITH parent AS ( \
           SELECT n.nspname AS schema, to_regclass('changes')::text AS name \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
            WHERE c.oid = to_regclass('changes')), \
         fallback AS ( \
           SELECT (SELECT c.oid::regclass::text FROM pg_inherits i \
                     JOIN pg_class c ON c.oid = i.inhrelid \
                    WHERE i.inhparent = to_regclass('changes') \
                      AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT') AS name) \
         SELECT unnest(ARRAY[ \
           format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', \
                  parent.schema, '_bemi_' || $1, parent.name), \
           format('ALTER TABLE %I.%I RENAME TO %I', parent.schema, '_bemi_' || $1, $1), \
           CASE WHEN fallback.name IS NOT NULL THEN \
             format('WITH moved AS (DELETE FROM %s WHERE committed_at >= %L AND committed_at < %L \
                     RETURNING *) INSERT INTO %I.%I SELECT * FROM moved', \
                    fallback.name, $2::timestamptz, $3::timestamptz, parent.schema, $1) END, \
           format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)', \
                  parent.name, parent.schema, $1, $2::timestamptz, $3::timestamptz)]) \
           FROM parent, fallback",
    )
    .bind(partition_name(month))
    .bind(from)
    .bind(to)
    .fetch_all(&mut *tx)
    .await?;
    for statement in statements.into_iter().flatten() {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// Keeps the partitions of a partitioned `changes` ahead of time until `shutdown`: checks now
/// and then every `every` ([`PARTITION_CHECK_INTERVAL`] in `bemi worker`). Failures are
/// logged and tried again at the next check; the default partition holds rows meanwhile.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) {
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// tokio::spawn(bemi_audit::schema::maintain_partitions(
///     pool,
///     bemi_audit::schema::PARTITION_CHECK_INTERVAL,
///     shutdown.clone(),
/// ));
/// # }
/// ```
pub async fn maintain_partitions(pool: PgPool, every: Duration, shutdown: CancellationToken) {
    loop {
        let result = async {
            let mut conn = pool.acquire().await?;
            ensure_partitions(&mut conn, Utc::now(), MONTHS_AHEAD).await
        }
        .await;
        match result {
            Ok(created) if !created.is_empty() => {
                tracing::info!(partitions = ?created, "created partitions of changes");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(
                %error,
                "could not create the next partitions of changes; trying again later"
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_bounds_cross_years_and_offsets() {
        let at = Utc.with_ymd_and_hms(2026, 11, 15, 8, 0, 0).unwrap();
        let day = |y, m| NaiveDate::from_ymd_opt(y, m, 1).unwrap();
        assert_eq!(month_bounds(at, 0), (day(2026, 11), day(2026, 12)));
        assert_eq!(month_bounds(at, 1), (day(2026, 12), day(2027, 1)));
        assert_eq!(month_bounds(at, 2), (day(2027, 1), day(2027, 2)));
        assert_eq!(partition_name(day(2027, 1)), "changes_y2027m01");
    }

    #[test]
    fn a_month_is_covered_by_any_overlapping_partition_but_the_default() {
        let day = |y, m| NaiveDate::from_ymd_opt(y, m, 1).unwrap();
        let partition = |from: Option<NaiveDate>, to: Option<NaiveDate>, is_default| Partition {
            name: "p".into(),
            from: from.map(midnight),
            to: to.map(midnight),
            is_default,
        };
        let may = (day(2026, 5), day(2026, 6));
        assert!(!covered(&[partition(None, None, true)], may.0, may.1));
        assert!(covered(
            &[partition(Some(may.0), Some(may.1), false)],
            may.0,
            may.1
        ));
        // A quarter that holds May, and MINVALUE..June.
        assert!(covered(
            &[partition(Some(day(2026, 4)), Some(day(2026, 7)), false)],
            may.0,
            may.1
        ));
        assert!(covered(
            &[partition(None, Some(day(2026, 6)), false)],
            may.0,
            may.1
        ));
        // April and June only touch May's bounds.
        let neighbours = [
            partition(Some(day(2026, 4)), Some(may.0), false),
            partition(Some(may.1), Some(day(2026, 7)), false),
        ];
        assert!(!covered(&neighbours, may.0, may.1));
    }

    #[test]
    fn both_layouts_have_the_same_columns_and_indexes() {
        for sql in [SCHEMA_SQL, PARTITIONED_SCHEMA_SQL] {
            for name in INDEX_NAMES {
                assert!(sql.contains(name), "{name}");
            }
            assert!(sql.contains("CREATE TABLE IF NOT EXISTS changes ("));
        }
        assert!(PARTITIONED_SCHEMA_SQL.contains("PRIMARY KEY (id, committed_at)"));
    }
}
