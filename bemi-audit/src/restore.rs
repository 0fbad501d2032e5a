//! [`Restore`]: put tables back — or forward — to how they were at an instant, from the audit
//! trail.
//!
//! For each table the trail gives two states: the table as of the instant (the last change of
//! each row at or before it, as [`TimeTravel`](crate::TimeTravel) rebuilds it) and the table as
//! the trail last saw it. Their difference becomes the statements: a row inserted since is
//! deleted, a row deleted since is inserted again (its image as of the instant), a row updated
//! since gets back the values of the columns that differ. Rolling *forward* is the same call
//! with a later instant: a restore's own writes are captured like any other (with the context
//! `{"restore_to": …}`), so the state before a restore is one instant away.
//!
//! Before anything is written the restore checks that the trail can tell:
//!
//! - **The trail reaches back to the instant**: the source database has a captured change at
//!   or before it (tracking started later, or older changes were pruned: refused with
//!   [`RestoreError::TrailTooShort`]).
//! - **The table is as the trail last saw it**: every row of the live table is compared with the
//!   trail's current state. A row that differs (changed while capture was off, or not captured
//!   yet) is *drift*; a row the trail has never seen is *untracked*. Either refuses the restore
//!   ([`RestoreError::Drift`]) unless it is forced: then drifted rows are overwritten with their
//!   state as of the instant (their current values, listed in the plan, are what is lost) and
//!   untracked rows are kept as they are (listed too: the trail cannot say what they were).
//! - **Every table has a primary key** (else its rows cannot be found again).
//!
//! The statements run in one transaction of the source, after `LOCK TABLE … IN EXCLUSIVE MODE`
//! (reads go on, writes wait) and `SET CONSTRAINTS ALL DEFERRED`, in an order that respects the
//! foreign keys between the tables given: inserts parents first, then updates, then deletes
//! children first.
//!
//! ```no_run
//! use bemi_audit::Restore;
//!
//! # async fn run(audit: sqlx::PgPool, source: sqlx::PgPool) -> Result<(), bemi_audit::RestoreError> {
//! let before_the_demo = "2026-05-01T12:00:00Z".parse().unwrap();
//! let restore = Restore::new(["public.account", "public.entry"], before_the_demo);
//! print!("{}", restore.plan(&audit, &source).await?.script()); // a dry run
//! let report = restore.run(&audit, &source).await?;
//! println!("{} rows written", report.rows_affected);
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use crate::revert::catalog::{self, Table};
use crate::revert::statement::{key_match, missing_column, redacted_message, upsert};
use crate::{Conflict, ConflictReason};
use bemi_core::context;
use bemi_core::protocol::REDACTED;
use bemi_core::sql::{quote_ident, quote_table};
use bemi_sqlx::BemiPool;

/// The key of the context a restore's writes carry: `{"restore_to": "2026-05-01T12:00:00Z"}`.
pub const RESTORE_TO_KEY: &str = "restore_to";

/// At most this many rows (per table, in the trail's two states together) are compared unless
/// [`Restore::max_rows`] says otherwise.
pub const DEFAULT_MAX_ROWS: u64 = 200_000;

/// The last change of each row of one table at or before `{AT}` that left it existing (no
/// DELETE, no later TRUNCATE), with its image as text (numbers keep every digit). `$1` table,
/// `$2` schema, `$3` database, `$4` source cluster or NULL (then every source), `$6` keys or
/// NULL (every row). Served by the index `("table", primary_key, committed_at)`.
const STATE_SQL: &str = "SELECT s.primary_key, s.after FROM ( \
       SELECT DISTINCT ON (primary_key) primary_key, after, operation, committed_at, position \
         FROM changes \
        WHERE \"table\" = $1 AND schema = $2 AND database = $3 \
          AND ($4::text IS NULL OR source = '' OR source = $4) \
          AND primary_key IS NOT NULL AND committed_at <= {AT} \
          AND ($6::text[] IS NULL OR primary_key = ANY ($6::text[])) \
        ORDER BY primary_key, committed_at DESC, position DESC, id DESC \
     ) s \
     WHERE s.operation <> 'DELETE' \
       AND NOT COALESCE(( \
         SELECT (t.committed_at, t.position) > (s.committed_at, s.position) \
           FROM changes t \
          WHERE t.\"table\" = $1 AND t.schema = $2 AND t.database = $3 \
            AND ($4::text IS NULL OR t.source = '' OR t.source = $4) \
            AND t.primary_key IS NULL AND t.operation = 'TRUNCATE' AND t.committed_at <= {AT} \
          ORDER BY t.committed_at DESC, t.position DESC LIMIT 1), false)";

/// The earliest change of the source database in the trail. `$1` database, `$2` source
/// cluster or NULL.
const EARLIEST_SQL: &str = "SELECT min(committed_at) FROM changes \
     WHERE database = $1 AND ($2::text IS NULL OR source = '' OR source = $2)";

/// The foreign keys between tables: child schema, child table, parent schema, parent table.
const FOREIGN_KEYS_SQL: &str = "SELECT cn.nspname::text, cc.relname::text, pn.nspname::text, \
       pc.relname::text \
  FROM pg_constraint k \
  JOIN pg_class cc ON cc.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = cc.relnamespace \
  JOIN pg_class pc ON pc.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace \
 WHERE k.contype = 'f'";

/// A table name as the source's `search_path` resolves it.
const RESOLVE_SQL: &str = "SELECT n.nspname::text, c.relname::text \
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
 WHERE c.oid = to_regclass($1)";

/// The statements of the whole table's diff for one state pair. The state as of the instant
/// (`target`) and the trail's current state (`current`), joined by key, with the fields that
/// differ (compared as jsonb: exact).
fn diff_sql() -> String {
    let at = STATE_SQL.replace("{AT}", "$5");
    let now = STATE_SQL.replace("{AT}", "'infinity'::timestamptz");
    format!(
        "SELECT coalesce(a.primary_key, l.primary_key), a.after::text, l.after::text, \
                CASE WHEN a.primary_key IS NOT NULL AND l.primary_key IS NOT NULL THEN \
                  ARRAY(SELECT f FROM jsonb_object_keys(a.after || l.after) AS f \
                         WHERE a.after -> f IS DISTINCT FROM l.after -> f ORDER BY f) \
                END \
           FROM ({at}) a FULL JOIN ({now}) l ON a.primary_key = l.primary_key \
          ORDER BY 1 LIMIT $7"
    )
}

/// Restores tables to their state at an instant. Build it, then [`plan`](Self::plan) (a dry
/// run) or [`run`](Self::run) it.
///
/// ```
/// use bemi_audit::Restore;
///
/// let at = "2026-05-01T12:00:00Z".parse().unwrap();
/// let restore = Restore::new(["todo"], at).keys(["1", "2"]).force(true);
/// assert_eq!(restore.context_value(), serde_json::json!({"restore_to": "2026-05-01T12:00:00Z"}));
/// ```
#[derive(Clone)]
pub struct Restore {
    tables: Vec<String>,
    to: DateTime<Utc>,
    keys: Option<Vec<String>>,
    force: bool,
    max_rows: u64,
    policy: Option<Arc<PolicyFn>>,
}

/// A restore policy's check of a plan.
type PolicyFn = dyn Fn(&RestorePlan) -> Result<(), String> + Send + Sync;

impl fmt::Debug for Restore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Restore")
            .field("tables", &self.tables)
            .field("to", &self.to)
            .field("keys", &self.keys)
            .field("force", &self.force)
            .field("max_rows", &self.max_rows)
            .field("policy", &self.policy.is_some())
            .finish()
    }
}

impl Restore {
    /// Restores `tables` (`todo`, found on the source's `search_path`, or `public.todo`) to
    /// their state at `to`.
    ///
    /// ```
    /// let restore = bemi_audit::Restore::new(["account", "entry"], chrono::Utc::now());
    /// ```
    pub fn new<I, S>(tables: I, to: DateTime<Utc>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            tables: tables.into_iter().map(Into::into).collect(),
            to,
            keys: None,
            force: false,
            max_rows: DEFAULT_MAX_ROWS,
            policy: None,
        }
    }

    /// Only the rows with these primary keys (as stored in `changes`: `"26"`, or a JSON array
    /// for a composite key); the other rows are neither compared nor written. For one table.
    ///
    /// ```
    /// let restore = bemi_audit::Restore::new(["todo"], chrono::Utc::now()).keys(["26"]);
    /// ```
    #[must_use]
    pub fn keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.keys = Some(keys.into_iter().map(Into::into).collect());
        self
    }

    /// Restore even when rows changed in ways the trail did not see: rows that differ from the
    /// trail are overwritten (their current values are lost; the plan lists them), rows the
    /// trail never saw are kept as they are.
    ///
    /// ```
    /// let restore = bemi_audit::Restore::new(["todo"], chrono::Utc::now()).force(true);
    /// ```
    #[must_use]
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Refuse when a table's two states hold more than `max` rows together (they are compared
    /// in memory).
    ///
    /// ```
    /// let restore = bemi_audit::Restore::new(["todo"], chrono::Utc::now()).max_rows(1_000_000);
    /// ```
    #[must_use]
    pub fn max_rows(mut self, max: u64) -> Self {
        self.max_rows = max;
        self
    }

    /// A check of the plan that runs before anything is written, in [`plan`](Self::plan) and
    /// [`run`](Self::run); an `Err` refuses the restore with [`RestoreError::Refused`].
    ///
    /// ```
    /// let restore = bemi_audit::Restore::new(["invoice"], chrono::Utc::now())
    ///     .policy(|plan| if plan.statements.len() > 100 { Err("too big: ask ops".into()) } else { Ok(()) });
    /// ```
    #[must_use]
    pub fn policy<F>(mut self, policy: F) -> Self
    where
        F: Fn(&RestorePlan) -> Result<(), String> + Send + Sync + 'static,
    {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// The instant restored to.
    ///
    /// ```
    /// let at = chrono::Utc::now();
    /// assert_eq!(bemi_audit::Restore::new(["todo"], at).to(), at);
    /// ```
    pub fn to(&self) -> DateTime<Utc> {
        self.to
    }

    /// The context added to the restore's writes: `{"restore_to": <instant, RFC 3339>}`.
    ///
    /// ```
    /// let at = "2026-05-01T12:00:00.5Z".parse().unwrap();
    /// let value = bemi_audit::Restore::new(["todo"], at).context_value();
    /// assert_eq!(value["restore_to"], "2026-05-01T12:00:00.500000Z");
    /// ```
    pub fn context_value(&self) -> Value {
        json!({ RESTORE_TO_KEY: self.instant() })
    }

    fn instant(&self) -> String {
        let seconds = if self.to.timestamp_subsec_nanos() == 0 {
            SecondsFormat::Secs
        } else {
            SecondsFormat::Micros
        };
        self.to.to_rfc3339_opts(seconds, true)
    }

    /// Everything but the writes: the statements, the drift and the untracked rows (read
    /// without locking). A dry run; [`RestorePlan::script`] prints it. Errors for what no
    /// `--force` can fix (no primary key, a trail that does not reach back).
    ///
    /// `audit` reaches the `changes` table, `source` the database the changes came from.
    ///
    /// ```no_run
    /// # async fn run(audit: sqlx::PgPool, source: sqlx::PgPool) -> Result<(), bemi_audit::RestoreError> {
    /// let plan = bemi_audit::Restore::new(["todo"], chrono::Utc::now()).plan(&audit, &source).await?;
    /// print!("{}", plan.script());
    /// # Ok(()) }
    /// ```
    pub async fn plan(&self, audit: &PgPool, source: &PgPool) -> Result<RestorePlan, RestoreError> {
        let mut conn = source.acquire().await?;
        let plan = self.prepare(audit, &mut conn).await?;
        self.check_policy(&plan)?;
        Ok(plan)
    }

    /// Restores: locks the tables, compares them with the trail (refusing with
    /// [`RestoreError::Drift`] unless forced), then runs the statements in one transaction of
    /// `source` with the context `{"restore_to": …}` (added to the context in scope: the
    /// actor).
    ///
    /// ```no_run
    /// # async fn run(audit: sqlx::PgPool, source: sqlx::PgPool) -> Result<(), bemi_audit::RestoreError> {
    /// let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    /// let report = bemi_audit::Restore::new(["todo"], an_hour_ago).run(&audit, &source).await?;
    /// println!("{} statements", report.statements.len());
    /// # Ok(()) }
    /// ```
    pub async fn run(
        &self,
        audit: &PgPool,
        source: &PgPool,
    ) -> Result<RestoreReport, RestoreError> {
        let pool = BemiPool::new(source.clone());
        let mut tx = pool.begin().await?;
        // Which tables, first (unlocked), to lock them; then everything again under the lock.
        let tables = resolve(tx.inner_mut(), &self.tables).await?;
        let names: Vec<String> = tables
            .iter()
            .map(|t| quote_table(&t.schema, &t.name))
            .collect();
        if !names.is_empty() {
            let lock = format!("LOCK TABLE {} IN EXCLUSIVE MODE", names.join(", "));
            sqlx::query(AssertSqlSafe(lock))
                .execute(&mut **tx.inner_mut())
                .await?;
        }
        sqlx::query("SET CONSTRAINTS ALL DEFERRED")
            .execute(&mut **tx.inner_mut())
            .await?;
        let plan = self.prepare(audit, tx.inner_mut()).await?;
        if !self.force && (!plan.drift.is_empty() || !plan.untracked.is_empty()) {
            tx.rollback().await?;
            return Err(RestoreError::Drift {
                drift: plan.drift,
                untracked: plan.untracked,
            });
        }
        if let Err(refused) = self.check_policy(&plan) {
            tx.rollback().await?;
            return Err(refused);
        }
        let mut scope = context::current().unwrap_or_default();
        if let Value::Object(restore_to) = self.context_value() {
            scope.extend(restore_to);
        }
        let rows = context::scope(scope, async {
            let mut rows = 0;
            for statement in &plan.statements {
                let mut query = sqlx::query(AssertSqlSafe(statement.sql.clone()));
                for param in &statement.params {
                    query = query.bind(param.clone());
                }
                let touched =
                    query
                        .execute(&mut tx)
                        .await
                        .map_err(|error| RestoreError::Statement {
                            description: statement.description.clone(),
                            error,
                        })?;
                let touched = touched.rows_affected();
                let expected = touched == 1 || (statement.overwrites_drift && touched == 0);
                if !expected {
                    return Err(RestoreError::UnexpectedRows {
                        description: statement.description.clone(),
                        rows: touched,
                    });
                }
                rows += touched;
            }
            Ok::<u64, RestoreError>(rows)
        })
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                tx.rollback().await?;
                return Err(error);
            }
        };
        tx.commit().await?;
        Ok(RestoreReport {
            to: self.to,
            statements: plan.statements,
            rows_affected: rows,
            overwritten: plan.drift,
            kept: plan.untracked,
            context: self.context_value(),
        })
    }

    fn check_policy(&self, plan: &RestorePlan) -> Result<(), RestoreError> {
        match &self.policy {
            Some(policy) => policy(plan).map_err(|reason| RestoreError::Refused { reason }),
            None => Ok(()),
        }
    }

    /// The plan, reading the source through `conn`.
    async fn prepare(
        &self,
        audit: &PgPool,
        conn: &mut PgConnection,
    ) -> Result<RestorePlan, RestoreError> {
        if self.tables.is_empty() {
            return Err(RestoreError::NoTables);
        }
        if self.keys.is_some() && self.tables.len() != 1 {
            return Err(RestoreError::KeysNeedOneTable {
                tables: self.tables.len(),
            });
        }
        let database: String = sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(&mut *conn)
            .await?;
        let cluster: Option<String> = sqlx::query_scalar(
            "SELECT system_identifier::text FROM pg_catalog.pg_control_system()",
        )
        .fetch_optional(&mut *conn)
        .await
        .ok()
        .flatten();
        let tables = resolve(conn, &self.tables).await?;
        let tables = order_by_foreign_keys(conn, tables).await?;
        let earliest: Option<DateTime<Utc>> = sqlx::query_scalar(EARLIEST_SQL)
            .bind(&database)
            .bind(cluster.as_deref())
            .fetch_one(audit)
            .await?;
        if earliest.is_none_or(|earliest| earliest > self.to) {
            return Err(RestoreError::TrailTooShort {
                database,
                to: self.to,
                earliest,
            });
        }
        let mut plan = RestorePlan {
            to: self.to,
            tables: tables.iter().map(Table::display_name).collect(),
            statements: Vec::new(),
            drift: Vec::new(),
            untracked: Vec::new(),
            context: self.context_value(),
            forced: self.force,
        };
        let mut inserts = Vec::new();
        let mut updates = Vec::new();
        let mut deletes = Vec::new();
        for table in &tables {
            let rows = self
                .diff(audit, table, &database, cluster.as_deref())
                .await?;
            let live = compare_live(conn, table, &rows, self.keys.is_none()).await?;
            let drifted: BTreeSet<&str> =
                live.drift.iter().map(|c| c.primary_key.as_str()).collect();
            let mut table_inserts = Vec::new();
            let mut table_updates = Vec::new();
            let mut table_deletes = Vec::new();
            for row in &rows {
                let drift = drifted.contains(row.primary_key.as_str());
                match (&row.target, &row.current) {
                    (Some(target), _) if drift => {
                        table_inserts.push(insert(table, row, target, true)?);
                    }
                    (None, Some(current)) if drift => {
                        table_deletes.push(delete(table, row, current, true));
                    }
                    (None, None) => {}
                    (Some(target), None) => {
                        table_inserts.push(insert(table, row, target, false)?);
                    }
                    (None, Some(current)) => {
                        table_deletes.push(delete(table, row, current, false));
                    }
                    (Some(target), Some(current)) => {
                        if let Some(update) = update(table, row, target, current)? {
                            table_updates.push(update);
                        }
                    }
                }
            }
            inserts.push(table_inserts);
            updates.push(table_updates);
            deletes.push(table_deletes);
            plan.drift.extend(live.drift);
            plan.untracked.extend(live.untracked);
        }
        // Parents first for inserts and updates, children first for deletes.
        plan.statements.extend(inserts.into_iter().flatten());
        plan.statements.extend(updates.into_iter().flatten());
        plan.statements.extend(deletes.into_iter().rev().flatten());
        Ok(plan)
    }

    /// The table's rows whose state as of the instant or whose current state the trail has.
    async fn diff(
        &self,
        audit: &PgPool,
        table: &Table,
        database: &str,
        cluster: Option<&str>,
    ) -> Result<Vec<DiffRow>, RestoreError> {
        let limit = i64::try_from(self.max_rows.saturating_add(1)).unwrap_or(i64::MAX);
        let rows: Vec<DiffTuple> = sqlx::query_as(AssertSqlSafe(diff_sql()))
            .bind(&table.name)
            .bind(&table.schema)
            .bind(database)
            .bind(cluster)
            .bind(self.to)
            .bind(self.keys.as_deref())
            .bind(limit)
            .fetch_all(audit)
            .await?;
        if rows.len() as u64 > self.max_rows {
            return Err(RestoreError::TooMany {
                table: table.display_name(),
                max: self.max_rows,
            });
        }
        Ok(rows
            .into_iter()
            .map(|(primary_key, target, current, changed)| DiffRow {
                primary_key,
                target,
                current,
                changed: changed.unwrap_or_default(),
            })
            .collect())
    }
}

/// A row of [`diff_sql`]: key, image then, image now, fields that differ.
type DiffTuple = (String, Option<String>, Option<String>, Option<Vec<String>>);

/// One row of a table's diff: its image as of the instant and as the trail last saw it (as
/// stored, jsonb text), and the fields that differ.
struct DiffRow {
    primary_key: String,
    target: Option<String>,
    current: Option<String>,
    changed: Vec<String>,
}

impl DiffRow {
    fn name(&self, table: &Table) -> String {
        format!("{} {}", table.display_name(), self.primary_key)
    }
}

fn fields(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// The tables named, as the source resolves them, each with its catalog entry; refused when
/// one does not exist or has no primary key.
async fn resolve(conn: &mut PgConnection, names: &[String]) -> Result<Vec<Table>, RestoreError> {
    let mut tables: Vec<Table> = Vec::new();
    for name in names {
        let found: Option<(String, String)> = sqlx::query_as(RESOLVE_SQL)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .ok()
            .flatten();
        let Some((schema, relname)) = found else {
            return Err(RestoreError::UnknownTable {
                table: name.clone(),
            });
        };
        let Some(table) = catalog::describe(&mut *conn, &schema, &relname).await? else {
            return Err(RestoreError::UnknownTable {
                table: name.clone(),
            });
        };
        if table.primary_key.is_empty() {
            return Err(RestoreError::NoPrimaryKey {
                table: table.display_name(),
            });
        }
        if !tables
            .iter()
            .any(|t| t.schema == schema && t.name == relname)
        {
            tables.push(table);
        }
    }
    Ok(tables)
}

/// `tables` with parents before their children (foreign keys between them); a cycle keeps the
/// given order for the tables in it (deferrable constraints then wait for the commit).
async fn order_by_foreign_keys(
    conn: &mut PgConnection,
    tables: Vec<Table>,
) -> Result<Vec<Table>, RestoreError> {
    let keys: Vec<(String, String, String, String)> = sqlx::query_as(FOREIGN_KEYS_SQL)
        .fetch_all(&mut *conn)
        .await?;
    let index = |schema: &str, name: &str| {
        tables
            .iter()
            .position(|t| t.schema == schema && t.name == name)
    };
    // parents[i]: the tables (given) that table i references, itself excluded.
    let mut parents: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); tables.len()];
    for (cs, cn, ps, pn) in &keys {
        if let (Some(child), Some(parent)) = (index(cs, cn), index(ps, pn))
            && child != parent
        {
            parents[child].insert(parent);
        }
    }
    let mut order: Vec<usize> = Vec::new();
    while order.len() < tables.len() {
        let ready = (0..tables.len())
            .find(|i| !order.contains(i) && parents[*i].iter().all(|p| order.contains(p)));
        // A cycle: take the first remaining table as given.
        let next = ready.unwrap_or_else(|| {
            (0..tables.len())
                .find(|i| !order.contains(i))
                .unwrap_or_default()
        });
        order.push(next);
    }
    let mut tables: Vec<Option<Table>> = tables.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| tables[i].take()).collect())
}

/// What the live table holds that the trail does not say.
struct Live {
    drift: Vec<Conflict>,
    untracked: Vec<Conflict>,
}

/// Compares the live table with the trail's current state of the rows in `rows` (and, with
/// `whole_table`, finds the live rows the trail has no state for).
async fn compare_live(
    conn: &mut PgConnection,
    table: &Table,
    rows: &[DiffRow],
    whole_table: bool,
) -> Result<Live, RestoreError> {
    // The image that locates each row (its current one, else the one as of the instant) and
    // whether the trail says it exists now.
    let mut images = Vec::with_capacity(rows.len());
    let mut present = Vec::with_capacity(rows.len());
    for row in rows {
        let (image, exists) = match (&row.current, &row.target) {
            (Some(current), _) => (current, true),
            (None, Some(target)) => (target, false),
            (None, None) => continue,
        };
        images.push(serde_json::from_str::<Value>(image).unwrap_or(Value::Null));
        present.push(exists);
    }
    let keys: Vec<&str> = rows
        .iter()
        .filter(|r| r.current.is_some() || r.target.is_some())
        .map(|r| r.primary_key.as_str())
        .collect();
    let found: Vec<(Option<i64>, Option<String>, bool)> =
        sqlx::query_as(AssertSqlSafe(live_sql(table, whole_table)))
            .bind(Value::Array(images))
            .bind(&present)
            .fetch_all(&mut *conn)
            .await?;
    let mut live = Live {
        drift: Vec::new(),
        untracked: Vec::new(),
    };
    for (ordinal, row, same) in found {
        let current = row.map(|text| serde_json::from_str(&text).unwrap_or(Value::Null));
        let index = ordinal.and_then(|i| usize::try_from(i - 1).ok());
        match index.and_then(|i| Some((keys.get(i)?, present.get(i)?))) {
            Some((key, exists)) => {
                let as_expected = match &current {
                    Some(_) => *exists && same,
                    None => !*exists,
                };
                if !as_expected {
                    live.drift.push(Conflict {
                        schema: table.schema.clone(),
                        table: table.name.clone(),
                        primary_key: (*key).to_owned(),
                        reason: ConflictReason::RowDiffers { current },
                    });
                }
            }
            None => {
                let Some(row) = current else { continue };
                live.untracked.push(Conflict {
                    schema: table.schema.clone(),
                    table: table.name.clone(),
                    primary_key: key_text(table, &row),
                    reason: ConflictReason::RowDiffers { current: Some(row) },
                });
            }
        }
    }
    Ok(live)
}

/// A live row's key as `changes` stores it: the value (a string unquoted), or a JSON array for
/// a composite key.
fn key_text(table: &Table, row: &Value) -> String {
    let values: Vec<Value> = table
        .primary_key
        .iter()
        .map(|c| row.get(c).cloned().unwrap_or(Value::Null))
        .collect();
    match values.as_slice() {
        [Value::String(text)] => text.clone(),
        [value] => value.to_string(),
        _ => Value::Array(values).to_string(),
    }
}

/// The rows that are not as the trail says, each with its ordinal in `$1` (NULL: a live row
/// the trail has no state for), its live image (NULL: absent) and whether it equals the
/// trail's image (columns compared by their text output, json as jsonb; columns missing from
/// the image, redacted values and generated columns are left out).
fn live_sql(table: &Table, whole_table: bool) -> String {
    let target = quote_table(&table.schema, &table.name);
    let redacted = serde_json::to_string(REDACTED)
        .unwrap_or_default()
        .replace('\'', "''");
    let comparisons: Vec<String> = table
        .columns
        .iter()
        .filter(|c| !c.generated)
        .map(|c| {
            let name = quote_ident(&c.name);
            let literal = c.name.replace('\'', "''");
            let equal = if c.json {
                format!(
                    "to_jsonb(_bemi_target.{name})::text IS NOT DISTINCT FROM \
                     to_jsonb(_bemi_key.{name})::text"
                )
            } else {
                format!("_bemi_target.{name}::text IS NOT DISTINCT FROM _bemi_key.{name}::text")
            };
            format!(
                "(NOT (_bemi_key._bemi_img ? '{literal}') \
                  OR _bemi_key._bemi_img -> '{literal}' = '{redacted}'::jsonb OR {equal})"
            )
        })
        .collect();
    let same = if comparisons.is_empty() {
        "true".to_owned()
    } else {
        comparisons.join(" AND ")
    };
    let first_key = quote_ident(&table.primary_key[0]);
    format!(
        "WITH _bemi_trail AS ( \
           SELECT _bemi_e._bemi_i, _bemi_e._bemi_img, _bemi_r.* \
             FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS _bemi_e(_bemi_img, _bemi_i), \
                  LATERAL jsonb_populate_record(NULL::{target}, _bemi_e._bemi_img) AS _bemi_r) \
         SELECT _bemi_key._bemi_i, \
                CASE WHEN _bemi_target.{first_key} IS NOT NULL THEN to_jsonb(_bemi_target)::text END, \
                coalesce({same}, false) \
           FROM _bemi_trail AS _bemi_key {} JOIN {target} AS _bemi_target ON {} \
          WHERE _bemi_key._bemi_i IS NULL OR _bemi_target.{first_key} IS NULL \
             OR NOT ($2::boolean[])[_bemi_key._bemi_i::int4] OR NOT coalesce({same}, false)",
        if whole_table { "FULL" } else { "LEFT" },
        key_match(table),
    )
}

/// Inserts `target` (the row as of the instant); `force` makes it an upsert that overwrites a
/// drifted row.
fn insert(
    table: &Table,
    row: &DiffRow,
    target: &str,
    force: bool,
) -> Result<RestoreStatement, RestoreError> {
    let refuse = |reason: String| RestoreError::Unrestorable {
        row: row.name(table),
        reason,
    };
    let image = fields(target);
    let mut columns = Vec::new();
    for field in image.keys() {
        let Some(column) = table.column(field) else {
            return Err(refuse(missing_column(table, field)));
        };
        if !column.generated {
            columns.push(column);
        }
    }
    let redacted: Vec<&str> = columns
        .iter()
        .filter(|c| image[&c.name] == REDACTED)
        .map(|c| c.name.as_str())
        .collect();
    if !redacted.is_empty() {
        return Err(refuse(redacted_message(&redacted)));
    }
    let target_table = quote_table(&table.schema, &table.name);
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let overriding = if columns.iter().any(|c| c.identity_always) {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    let mut sql = format!(
        "INSERT INTO {target_table} ({}){overriding} SELECT {} \
         FROM jsonb_populate_record(NULL::{target_table}, $1::jsonb) AS _bemi_old",
        names.join(", "),
        names
            .iter()
            .map(|n| format!("_bemi_old.{n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    if force {
        sql.push_str(&upsert(table, &columns));
    }
    Ok(RestoreStatement {
        table: table.display_name(),
        primary_key: row.primary_key.clone(),
        action: RestoreAction::Insert,
        description: if force {
            format!(
                "{}: overwrite the row (it differs from the audit trail) with its state then",
                row.name(table)
            )
        } else {
            format!("{}: insert the row (deleted since)", row.name(table))
        },
        sql,
        params: vec![target.to_owned()],
        overwrites_drift: force,
    })
}

/// Deletes the row that `current` locates.
fn delete(table: &Table, row: &DiffRow, current: &str, force: bool) -> RestoreStatement {
    let target_table = quote_table(&table.schema, &table.name);
    RestoreStatement {
        table: table.display_name(),
        primary_key: row.primary_key.clone(),
        action: RestoreAction::Delete,
        description: format!("{}: delete the row (inserted since)", row.name(table)),
        sql: format!(
            "DELETE FROM {target_table} AS _bemi_target \
             USING jsonb_populate_record(NULL::{target_table}, $1::jsonb) AS _bemi_key \
             WHERE {}",
            key_match(table)
        ),
        params: vec![current.to_owned()],
        overwrites_drift: force,
    }
}

/// Sets back the columns that differ between `target` and `current`; `None` when none can be
/// (only columns added since differ).
fn update(
    table: &Table,
    row: &DiffRow,
    target: &str,
    current: &str,
) -> Result<Option<RestoreStatement>, RestoreError> {
    let refuse = |reason: String| RestoreError::Unrestorable {
        row: row.name(table),
        reason,
    };
    let then = fields(target);
    let mut restore = Vec::new();
    for field in &row.changed {
        let Some(value) = then.get(field) else {
            // Not in the image as of the instant (a column added since): left as it is.
            continue;
        };
        let Some(column) = table.column(field) else {
            return Err(refuse(missing_column(table, field)));
        };
        if column.generated {
            continue;
        }
        if column.identity_always {
            return Err(refuse(format!(
                "its identity column {field} (GENERATED ALWAYS) changed since, which an UPDATE \
                 cannot set back"
            )));
        }
        if value == REDACTED {
            return Err(refuse(redacted_message(&[field])));
        }
        restore.push(field.as_str());
    }
    if restore.is_empty() {
        return Ok(None);
    }
    let target_table = quote_table(&table.schema, &table.name);
    let sets: Vec<String> = restore
        .iter()
        .map(|f| {
            let name = quote_ident(f);
            format!("{name} = _bemi_old.{name}")
        })
        .collect();
    Ok(Some(RestoreStatement {
        table: table.display_name(),
        primary_key: row.primary_key.clone(),
        action: RestoreAction::Update,
        description: format!("{}: set back {}", row.name(table), restore.join(", ")),
        sql: format!(
            "UPDATE {target_table} AS _bemi_target SET {} \
             FROM jsonb_populate_record(NULL::{target_table}, $1::jsonb) AS _bemi_old, \
                  jsonb_populate_record(NULL::{target_table}, $2::jsonb) AS _bemi_key \
             WHERE {}",
            sets.join(", "),
            key_match(table)
        ),
        params: vec![target.to_owned(), current.to_owned()],
        overwrites_drift: false,
    }))
}

/// What a statement of a restore does to its row.
///
/// ```
/// assert_eq!(serde_json::to_value(bemi_audit::RestoreAction::Insert).unwrap(), "insert");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RestoreAction {
    /// The row did not exist any more: inserted (or, forced, upserted).
    Insert,
    /// Columns set back.
    Update,
    /// The row did not exist then: deleted.
    Delete,
}

/// One statement of a restore.
///
/// ```
/// # fn run(plan: bemi_audit::RestorePlan) {
/// for statement in &plan.statements {
///     println!("-- {}\n{};", statement.description, statement.sql);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RestoreStatement {
    /// `schema.table`.
    pub table: String,
    /// The row's primary key, as stored in `changes`.
    pub primary_key: String,
    /// Insert, update or delete.
    pub action: RestoreAction,
    /// What it does, e.g. `public.todo 3: set back task`.
    pub description: String,
    /// The SQL, with `$1`, `$2` for the parameters.
    pub sql: String,
    /// The parameters: JSON images, bound as `jsonb`.
    pub params: Vec<String>,
    /// It overwrites a row that differs from the trail (forced): it may touch no row.
    pub overwrites_drift: bool,
}

/// A dry run: what a restore would do.
///
/// ```no_run
/// # async fn run(audit: sqlx::PgPool, source: sqlx::PgPool) -> Result<(), bemi_audit::RestoreError> {
/// let plan = bemi_audit::Restore::new(["todo"], chrono::Utc::now()).plan(&audit, &source).await?;
/// println!("{} statements, {} rows drifted", plan.statements.len(), plan.drift.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RestorePlan {
    /// The instant restored to.
    pub to: DateTime<Utc>,
    /// The tables (`schema.table`), parents before children.
    pub tables: Vec<String>,
    /// The statements, in the order they run.
    pub statements: Vec<RestoreStatement>,
    /// Rows that are not as the trail last saw them (changed while capture was off, or not
    /// captured yet): the restore refuses unless forced, then overwrites them.
    pub drift: Vec<Conflict>,
    /// Rows the trail has never seen (written while capture was off, or their changes were
    /// pruned): the restore refuses unless forced, then keeps them as they are.
    pub untracked: Vec<Conflict>,
    /// The context added to the writes.
    pub context: Value,
    /// Whether the plan is for a forced restore.
    pub forced: bool,
}

impl RestorePlan {
    /// The plan as an SQL script for reading: the statements in one transaction, each with its
    /// parameters in comments, and the drift and untracked rows at the top.
    ///
    /// ```no_run
    /// # fn run(plan: bemi_audit::RestorePlan) {
    /// print!("{}", plan.script());
    /// # }
    /// ```
    pub fn script(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "-- Restore of {} to {} in {} statement{}, in one transaction.",
            self.tables.join(", "),
            self.context[RESTORE_TO_KEY].as_str().unwrap_or_default(),
            self.statements.len(),
            plural(self.statements.len()),
        );
        let _ = writeln!(
            text,
            "-- Each statement runs through the sqlx adapter with the context {}.",
            self.context
        );
        if !self.drift.is_empty() {
            let _ = writeln!(
                text,
                "-- {} row{} differ from the audit trail: {}",
                self.drift.len(),
                plural(self.drift.len()),
                if self.forced {
                    "forced, the restore overwrites them (their current values are lost)"
                } else {
                    "the restore refuses unless forced (--force)"
                }
            );
            for conflict in &self.drift {
                let _ = writeln!(text, "--   {conflict}");
            }
        }
        if !self.untracked.is_empty() {
            let _ = writeln!(
                text,
                "-- {} row{} are not in the audit trail: {}",
                self.untracked.len(),
                plural(self.untracked.len()),
                if self.forced {
                    "forced, the restore keeps them as they are"
                } else {
                    "the restore refuses unless forced (--force, which keeps them as they are)"
                }
            );
            for conflict in &self.untracked {
                let _ = writeln!(text, "--   {}", Untracked(conflict));
            }
        }
        text.push_str("BEGIN;\nSET CONSTRAINTS ALL DEFERRED;\n");
        for statement in &self.statements {
            let _ = writeln!(text, "\n-- {}", statement.description);
            let _ = writeln!(text, "{};", statement.sql);
            for (i, param) in statement.params.iter().enumerate() {
                let _ = writeln!(text, "--   ${} = {param}", i + 1);
            }
        }
        text.push_str("\nCOMMIT;\n");
        text
    }
}

/// An untracked row, for messages.
struct Untracked<'a>(&'a Conflict);

impl fmt::Display for Untracked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        write!(
            f,
            "{}.{} {}: in the table but not in the audit trail (written while capture was off, \
             or its changes were pruned)",
            c.schema, c.table, c.primary_key
        )?;
        if let ConflictReason::RowDiffers { current: Some(row) } = &c.reason {
            write!(f, ": {row}")?;
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// What a restore did.
///
/// ```no_run
/// # async fn run(audit: sqlx::PgPool, source: sqlx::PgPool) -> Result<(), bemi_audit::RestoreError> {
/// let report = bemi_audit::Restore::new(["todo"], chrono::Utc::now()).run(&audit, &source).await?;
/// println!("{} rows written", report.rows_affected);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The instant restored to.
    pub to: DateTime<Utc>,
    /// The statements that ran.
    pub statements: Vec<RestoreStatement>,
    /// How many rows they wrote.
    pub rows_affected: u64,
    /// The drifted rows a forced restore overwrote (empty otherwise).
    pub overwritten: Vec<Conflict>,
    /// The untracked rows a forced restore kept as they are (empty otherwise).
    pub kept: Vec<Conflict>,
    /// The context of the writes.
    pub context: Value,
}

/// Why a restore was refused or failed. Nothing was written in any case.
///
/// ```
/// use bemi_audit::RestoreError;
///
/// let error = RestoreError::NoPrimaryKey { table: "public.log".into() };
/// assert!(error.to_string().contains("no primary key"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// A query failed.
    #[error("database error while restoring: {0}")]
    Database(#[from] sqlx::Error),
    /// No table given.
    #[error("no table to restore: name at least one")]
    NoTables,
    /// Keys were given for several tables.
    #[error(
        "keys (--where-key) select rows of one table, but {tables} tables were given: restore \
         them one at a time"
    )]
    KeysNeedOneTable {
        /// How many tables were given.
        tables: usize,
    },
    /// A table does not exist in the source.
    #[error(
        "the table {table} does not exist in the source database (is DATABASE_URL the database \
         the changes came from? qualify the name with its schema: public.{table})"
    )]
    UnknownTable {
        /// The name given.
        table: String,
    },
    /// A table has no primary key.
    #[error(
        "{table} has no primary key, so the audit trail cannot tell its rows apart and they \
         cannot be found again: add a primary key, then restore to an instant after it was added"
    )]
    NoPrimaryKey {
        /// `schema.table`
        table: String,
    },
    /// The trail does not reach back to the instant.
    #[error("{}", trail_message(.database, .to, .earliest.as_ref()))]
    TrailTooShort {
        /// The source database.
        database: String,
        /// The instant asked for.
        to: DateTime<Utc>,
        /// The trail's first change of the database (`None`: it has none).
        earliest: Option<DateTime<Utc>>,
    },
    /// Rows changed in ways the trail did not see.
    #[error("{}", drift_message(.drift, .untracked))]
    Drift {
        /// Rows that differ from the trail's current state.
        drift: Vec<Conflict>,
        /// Rows the trail has never seen.
        untracked: Vec<Conflict>,
    },
    /// A row cannot be restored from the trail.
    #[error("{row} cannot be restored: {reason}")]
    Unrestorable {
        /// `schema.table key`
        row: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// Too many rows to compare.
    #[error(
        "{table} has more than {max} rows in the audit trail's states: restore some rows \
         (--where-key) or raise the limit (--max-rows, Restore::max_rows)"
    )]
    TooMany {
        /// `schema.table`
        table: String,
        /// The limit.
        max: u64,
    },
    /// The policy refused the plan.
    #[error("the restore was refused, nothing was written: {reason}")]
    Refused {
        /// The policy's message.
        reason: String,
    },
    /// A statement failed (e.g. a foreign key to a table not being restored).
    #[error(
        "the restore failed at \"{description}\" and wrote nothing: {error}. If a foreign key \
         names another table, restore that table too (give both)"
    )]
    Statement {
        /// The statement's description.
        description: String,
        /// The database's error.
        error: sqlx::Error,
    },
    /// A statement touched another number of rows than expected.
    #[error(
        "\"{description}\" touched {rows} rows instead of 1; nothing was written: look at the \
         row's history (`bemi history`) and try again"
    )]
    UnexpectedRows {
        /// The statement's description.
        description: String,
        /// How many rows it touched.
        rows: u64,
    },
}

fn trail_message(database: &str, to: &DateTime<Utc>, earliest: Option<&DateTime<Utc>>) -> String {
    format!(
        "the audit trail of the database {database} {}, so it cannot tell what the tables held \
         at {}: tracking started later, or older changes were pruned. Pick an instant at or \
         after the trail's first change",
        match earliest {
            Some(earliest) => format!("begins at {}", earliest.to_rfc3339()),
            None => "holds no change yet".to_owned(),
        },
        to.to_rfc3339()
    )
}

fn drift_message(drift: &[Conflict], untracked: &[Conflict]) -> String {
    let mut text = format!(
        "not restored: {} row{} changed in ways the audit trail did not see; nothing was \
         written:",
        drift.len() + untracked.len(),
        plural(drift.len() + untracked.len()),
    );
    for conflict in drift {
        text.push_str("\n  - ");
        text.push_str(&conflict.to_string());
    }
    for conflict in untracked {
        text.push_str("\n  - ");
        text.push_str(&Untracked(conflict).to_string());
    }
    text.push_str(
        "\nIf the worker is behind, wait for it and try again. Otherwise --force \
         (Restore::force) overwrites the rows that differ (their current values above are lost) \
         and keeps the rows the trail never saw as they are.",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revert::catalog::Column;

    fn table() -> Table {
        let column = |name: &str| Column {
            name: name.to_owned(),
            identity_always: false,
            generated: false,
            json: false,
        };
        Table {
            schema: "public".into(),
            name: "todo".into(),
            columns: vec![column("id"), column("task"), column("o'dd")],
            primary_key: vec!["id".into()],
        }
    }

    fn row(target: Option<&str>, current: Option<&str>, changed: &[&str]) -> DiffRow {
        DiffRow {
            primary_key: "1".into(),
            target: target.map(Into::into),
            current: current.map(Into::into),
            changed: changed.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_context_names_the_instant() {
        let at: DateTime<Utc> = "2026-05-01T12:00:00Z".parse().unwrap();
        assert_eq!(
            Restore::new(["todo"], at).context_value(),
            json!({"restore_to": "2026-05-01T12:00:00Z"})
        );
    }

    #[test]
    fn each_difference_becomes_one_statement() {
        let then = r#"{"id": 1, "task": "a"}"#;
        let now = r#"{"id": 1, "task": "b"}"#;
        let update = update(&table(), &row(Some(then), Some(now), &["task"]), then, now)
            .unwrap()
            .unwrap();
        assert!(
            update.sql.contains("SET \"task\" = _bemi_old.\"task\""),
            "{}",
            update.sql
        );
        assert_eq!(update.params, [then, now]);
        let insert = insert(&table(), &row(Some(then), None, &[]), then, false).unwrap();
        assert!(
            insert
                .sql
                .starts_with("INSERT INTO \"public\".\"todo\" (\"id\", \"task\")")
        );
        assert!(!insert.sql.contains("ON CONFLICT"));
        let forced = super::insert(&table(), &row(Some(then), None, &[]), then, true).unwrap();
        assert!(
            forced.sql.contains("ON CONFLICT (\"id\") DO UPDATE"),
            "{}",
            forced.sql
        );
        let delete = delete(&table(), &row(None, Some(now), &[]), now, false);
        assert!(delete.sql.starts_with("DELETE FROM \"public\".\"todo\""));
        // A column added since (not in the image then) is left alone.
        let added = r#"{"id": 1, "task": "a", "o'dd": 2}"#;
        assert_eq!(
            super::update(
                &table(),
                &row(Some(then), Some(added), &["o'dd"]),
                then,
                added
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn refusals_say_why() {
        let redacted = r#"{"id": 1, "task": "[REDACTED]"}"#;
        let error = insert(&table(), &row(Some(redacted), None, &[]), redacted, false).unwrap_err();
        assert!(error.to_string().contains("[REDACTED]"), "{error}");
        let gone = r#"{"id": 1, "gone": 1}"#;
        let error = insert(&table(), &row(Some(gone), None, &[]), gone, false).unwrap_err();
        assert!(error.to_string().contains("no column gone"), "{error}");
        let error = RestoreError::TrailTooShort {
            database: "app".into(),
            to: Utc::now(),
            earliest: None,
        };
        assert!(error.to_string().contains("holds no change yet"), "{error}");
    }

    #[test]
    fn the_live_check_quotes_names_and_skips_missing_and_redacted_fields() {
        let sql = live_sql(&table(), true);
        assert!(sql.contains("FULL JOIN \"public\".\"todo\""), "{sql}");
        assert!(sql.contains("_bemi_img ? 'o''dd'"), "{sql}");
        assert!(sql.contains("'\"[REDACTED]\"'::jsonb"), "{sql}");
        assert!(live_sql(&table(), false).contains("LEFT JOIN"));
    }

    #[test]
    fn keys_of_live_rows_are_written_as_the_trail_writes_them() {
        assert_eq!(key_text(&table(), &json!({"id": 7})), "7");
        assert_eq!(key_text(&table(), &json!({"id": "a"})), "a");
        let mut composite = table();
        composite.primary_key.push("task".into());
        assert_eq!(
            key_text(&composite, &json!({"id": 7, "task": "x"})),
            r#"[7,"x"]"#
        );
    }
}
