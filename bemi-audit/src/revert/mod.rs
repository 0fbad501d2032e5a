//! [`Revert`]: undo one change, one transaction, or every change of a request (a context
//! filter), in the source database, from the audit trail.
//!
//! The inverse statements run in **one transaction, newest change first**: CREATE → DELETE,
//! DELETE → INSERT of the before-image, UPDATE → the before-values of the fields it changed.
//! First the conflict check: if a row changed again after a change being reverted — a later
//! change in the audit trail that is not being reverted, or a row in the database that is not
//! as the last change left it — nothing is written and the error names the rows, unless the
//! revert is forced. The revert's own writes go through the sqlx adapter with the context
//! `{"revert_of": …}` (added to the context in scope, if any), so they are audited too and can
//! themselves be reverted.
//!
//! ```no_run
//! use bemi_audit::Revert;
//! use serde_json::json;
//!
//! # async fn run(audit: sqlx::PgPool, source: sqlx::PgPool) -> Result<(), bemi_audit::RevertError> {
//! // Everything request r-42 did.
//! let revert = Revert::context(json!({"request_id": "r-42"}));
//! let plan = revert.plan(&audit, &source).await?; // a dry run
//! println!("{}", plan.script());
//! let report = revert.run(&audit, &source).await?;
//! println!("reverted {} changes", report.changes);
//! # Ok(()) }
//! ```

pub(crate) mod catalog;
mod conflict;
mod error;
mod selection;
pub(crate) mod statement;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

pub use error::{Conflict, ConflictReason, RevertError};
pub use statement::RevertStatement;

use self::catalog::Table;
use self::selection::Selected;
use super::query::ChangeQuery;
use bemi_core::context::{self, IntoContext};
use bemi_core::protocol::{REDACTED, REVERT_OF_KEY};
use bemi_sqlx::BemiPool;

/// At most this many changes are reverted at once unless [`Revert::max_changes`] says
/// otherwise.
pub const DEFAULT_MAX_CHANGES: u64 = 10_000;

/// Which changes to revert.
///
/// ```
/// use bemi_audit::RevertTarget;
///
/// let target = RevertTarget::Transaction(768);
/// assert_eq!(serde_json::to_value(&target).unwrap(), serde_json::json!({"transaction_id": 768}));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RevertTarget {
    /// One change, by id.
    #[serde(rename = "change_id")]
    Change(Uuid),
    /// Every change of one source transaction.
    #[serde(rename = "transaction_id")]
    Transaction(i64),
    /// Every change whose context contains this object (e.g. `{"request_id": "r-42"}`).
    Context(Map<String, Value>),
}

/// A revert: what to undo and how. Build it, then [`plan`](Self::plan) (a dry run) or
/// [`run`](Self::run) it.
///
/// ```
/// use bemi_audit::Revert;
///
/// let revert = Revert::transaction(768).force(true).max_changes(500);
/// assert_eq!(revert.context_value()["revert_of"]["transaction_id"], 768);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Revert {
    target: RevertTarget,
    source: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    force: bool,
    max_changes: u64,
    policy: Option<Policy>,
}

/// A revert policy's check of a plan.
type PolicyFn = dyn Fn(&RevertPlan) -> Result<(), String> + Send + Sync;

/// A revert policy (see [`Revert::policy`]), compared by identity.
#[derive(Clone)]
struct Policy(Arc<PolicyFn>);

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Policy(..)")
    }
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Revert {
    /// Reverts `target`.
    ///
    /// ```
    /// use bemi_audit::{Revert, RevertTarget};
    ///
    /// let revert = Revert::new(RevertTarget::Transaction(768));
    /// ```
    pub fn new(target: RevertTarget) -> Self {
        Self {
            target,
            source: None,
            since: None,
            until: None,
            force: false,
            max_changes: DEFAULT_MAX_CHANGES,
            policy: None,
        }
    }

    /// Reverts one change.
    ///
    /// ```
    /// let revert = bemi_audit::Revert::change(uuid::Uuid::nil());
    /// ```
    pub fn change(id: Uuid) -> Self {
        Self::new(RevertTarget::Change(id))
    }

    /// Reverts every change of one source transaction.
    ///
    /// ```
    /// let revert = bemi_audit::Revert::transaction(768);
    /// ```
    pub fn transaction(id: i64) -> Self {
        Self::new(RevertTarget::Transaction(id))
    }

    /// Reverts every change whose context contains `filter`, e.g. a request id.
    ///
    /// ```
    /// use serde_json::json;
    ///
    /// let filter = json!({"request_id": "r-42"});
    /// let revert = bemi_audit::Revert::context(filter);
    /// ```
    pub fn context(filter: impl IntoContext) -> Self {
        Self::new(RevertTarget::Context(
            filter.into_context().unwrap_or_default(),
        ))
    }

    /// Only changes of the source cluster with this system identifier ([`Change::source`]):
    /// needed when several source clusters whose databases share a name store into one
    /// `changes` table and their transaction ids collide.
    ///
    /// ```
    /// let revert = bemi_audit::Revert::transaction(768).source("7716412341606058525");
    /// assert_eq!(revert.context_value()["revert_of"]["source"], "7716412341606058525");
    /// ```
    ///
    /// [`Change::source`]: crate::Change::source
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Only changes committed at or after `instant`.
    ///
    /// ```
    /// let revert = bemi_audit::Revert::transaction(768).since(chrono::Utc::now() - chrono::Duration::days(1));
    /// ```
    pub fn since(mut self, instant: DateTime<Utc>) -> Self {
        self.since = Some(instant);
        self
    }

    /// Only changes committed before `instant`.
    ///
    /// ```
    /// let revert = bemi_audit::Revert::transaction(768).until(chrono::Utc::now());
    /// ```
    pub fn until(mut self, instant: DateTime<Utc>) -> Self {
        self.until = Some(instant);
        self
    }

    /// Revert even if rows changed again afterwards, overwriting those later changes (a
    /// deleted row is inserted, or its current version overwritten, with its before-image).
    ///
    /// ```
    /// let revert = bemi_audit::Revert::transaction(768).force(true);
    /// ```
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Refuse when more than `max` changes match (default [`DEFAULT_MAX_CHANGES`]): they are
    /// all held in memory and reverted in one transaction.
    ///
    /// ```
    /// let revert = bemi_audit::Revert::transaction(768).max_changes(100_000);
    /// ```
    pub fn max_changes(mut self, max: u64) -> Self {
        self.max_changes = max;
        self
    }

    /// A check of the plan — its tables, its changes, whether it is forced — that runs before
    /// anything is written, in [`plan`](Self::plan) and in [`run`](Self::run); an `Err` refuses
    /// the revert with [`RevertError::Refused`] and its message (say what to do instead).
    ///
    /// ```
    /// use bemi_audit::Revert;
    ///
    /// let revert = Revert::transaction(768).policy(|plan| {
    ///     if plan.tables.contains_key("public.invoice") {
    ///         return Err("invoices are reverted by the billing team: ask them".into());
    ///     }
    ///     Ok(())
    /// });
    /// # let _ = revert;
    /// ```
    #[must_use]
    pub fn policy<F>(mut self, policy: F) -> Self
    where
        F: Fn(&RevertPlan) -> Result<(), String> + Send + Sync + 'static,
    {
        self.policy = Some(Policy(Arc::new(policy)));
        self
    }

    /// Runs the policy on `plan`.
    fn check_policy(&self, plan: &RevertPlan) -> Result<(), RevertError> {
        match &self.policy {
            Some(Policy(policy)) => policy(plan).map_err(|reason| RevertError::Refused { reason }),
            None => Ok(()),
        }
    }

    /// The context added to the revert's writes: `{"revert_of": <target>}`, plus the time
    /// range when there is one.
    ///
    /// ```
    /// use serde_json::json;
    ///
    /// let filter = json!({"request_id": "r-42"});
    /// let value = bemi_audit::Revert::context(filter).context_value();
    /// assert_eq!(value, json!({"revert_of": {"context": {"request_id": "r-42"}}}));
    /// ```
    pub fn context_value(&self) -> Value {
        let mut of = serde_json::to_value(&self.target).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut of {
            if let Some(source) = &self.source {
                map.insert("source".into(), Value::String(source.clone()));
            }
            if let Some(since) = self.since {
                map.insert("since".into(), json!(since.to_rfc3339()));
            }
            if let Some(until) = self.until {
                map.insert("until".into(), json!(until.to_rfc3339()));
            }
        }
        json!({ REVERT_OF_KEY: of })
    }

    /// Everything but the writes: which changes, the statements, and the conflicts (read
    /// without locking). A dry run; [`RevertPlan::script`] prints it.
    ///
    /// `audit` reaches the `changes` table, `source` the database the changes came from.
    ///
    /// ```no_run
    /// # async fn run(audit: sqlx::PgPool, source: sqlx::PgPool) -> Result<(), bemi_audit::RevertError> {
    /// let plan = bemi_audit::Revert::transaction(768).plan(&audit, &source).await?;
    /// for conflict in &plan.conflicts {
    ///     eprintln!("{conflict}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn plan(&self, audit: &PgPool, source: &PgPool) -> Result<RevertPlan, RevertError> {
        let prepared = self.prepare(audit, source).await?;
        let mut conn = source.acquire().await?;
        let live = conflict::live_rows(
            &mut conn,
            &prepared.selected,
            &prepared.tables,
            &prepared.conflicts,
            false,
        )
        .await?;
        let mut conflicts = prepared.conflicts;
        conflicts.extend(live);
        let plan = RevertPlan {
            changes: prepared.selected.iter().map(|c| c.id).collect(),
            tables: tables_of(&prepared.selected),
            statements: prepared.statements,
            conflicts,
            context: self.context_value(),
            forced: self.force,
        };
        self.check_policy(&plan)?;
        Ok(plan)
    }

    /// Reverts: checks for conflicts (refusing with [`RevertError::Conflicts`] unless forced),
    /// then runs the statements in one transaction of `source`, with the `revert_of` context.
    ///
    /// ```no_run
    /// # async fn run(audit: sqlx::PgPool, source: sqlx::PgPool) -> Result<(), bemi_audit::RevertError> {
    /// use bemi_audit::{Revert, RevertError};
    ///
    /// match Revert::transaction(768).run(&audit, &source).await {
    ///     Ok(report) => println!("reverted {} changes", report.changes),
    ///     Err(RevertError::Conflicts(rows)) => eprintln!("{} rows changed since", rows.len()),
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn run(&self, audit: &PgPool, source: &PgPool) -> Result<RevertReport, RevertError> {
        let prepared = self.prepare(audit, source).await?;
        let pool = BemiPool::new(source.clone());
        let mut tx = pool.begin().await?;
        let live = conflict::live_rows(
            tx.inner_mut(),
            &prepared.selected,
            &prepared.tables,
            &prepared.conflicts,
            true,
        )
        .await?;
        let mut conflicts = prepared.conflicts;
        conflicts.extend(live);
        if !conflicts.is_empty() && !self.force {
            tx.rollback().await?;
            return Err(RevertError::Conflicts(conflicts));
        }
        if self.policy.is_some() {
            let plan = RevertPlan {
                changes: prepared.selected.iter().map(|c| c.id).collect(),
                tables: tables_of(&prepared.selected),
                statements: prepared.statements.clone(),
                conflicts: conflicts.clone(),
                context: self.context_value(),
                forced: self.force,
            };
            if let Err(refused) = self.check_policy(&plan) {
                tx.rollback().await?;
                return Err(refused);
            }
        }
        let mut scope = context::current().unwrap_or_default();
        if let Value::Object(revert_of) = self.context_value() {
            scope.extend(revert_of);
        }
        let rows = context::scope(scope, async {
            let mut rows = 0;
            for statement in &prepared.statements {
                let mut query = sqlx::query(AssertSqlSafe(statement.sql.clone()));
                for param in &statement.params {
                    query = query.bind(param.clone());
                }
                let touched = query.execute(&mut tx).await?.rows_affected();
                if touched != 1 && !self.force {
                    let row = prepared
                        .selected
                        .iter()
                        .find(|c| c.id == statement.change_id)
                        .map(Selected::row_name)
                        .unwrap_or_default();
                    return Err(RevertError::UnexpectedRows {
                        change: statement.change_id,
                        row,
                        rows: touched,
                    });
                }
                rows += touched;
            }
            Ok::<u64, RevertError>(rows)
        })
        .await?;
        tx.commit().await?;
        Ok(RevertReport {
            changes: prepared.selected.len(),
            statements: prepared.statements,
            rows_affected: rows,
            overridden: conflicts,
            context: self.context_value(),
        })
    }

    /// The changes, their tables, the statements and the audit trail's conflicts.
    async fn prepare(&self, audit: &PgPool, source: &PgPool) -> Result<Prepared, RevertError> {
        let database: String = sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(source)
            .await?;
        // The changes of *this* cluster (and those stored before sources were recorded):
        // another cluster's database of the same name is not this one.
        let cluster: Option<String> = sqlx::query_scalar(
            "SELECT system_identifier::text FROM pg_catalog.pg_control_system()",
        )
        .fetch_one(source)
        .await
        .ok();
        let query = self.query(&database, cluster.as_deref());
        let selected = selection::load(audit, &query, self.max_changes + 1).await?;
        self.check_selection(&selected)?;
        let mut tables = HashMap::new();
        for change in &selected {
            let key = (change.schema.clone(), change.table.clone());
            if tables.contains_key(&key) {
                continue;
            }
            let Some(table) = catalog::describe(source, &key.0, &key.1).await? else {
                return Err(RevertError::Unrevertable {
                    change: change.id,
                    row: change.row_name(),
                    reason: format!(
                        "the table {}.{} does not exist in the database {database} (any \
                         more); is DATABASE_URL the database the changes came from?",
                        key.0, key.1
                    ),
                });
            };
            tables.insert(key, table);
        }
        let mut statements = Vec::new();
        for change in selected.iter().rev() {
            let table: &Table = &tables[&(change.schema.clone(), change.table.clone())];
            if let Some(statement) = statement::inverse(change, table, self.force)? {
                statements.push(statement);
            }
        }
        let conflicts = conflict::later_changes(audit, &query, &selected).await?;
        Ok(Prepared {
            selected,
            tables,
            statements,
            conflicts,
        })
    }

    /// The query that selects the changes of `database` (of the source cluster `cluster`, when
    /// it tells its system identifier) to revert.
    fn query(&self, database: &str, cluster: Option<&str>) -> ChangeQuery {
        let mut query = ChangeQuery::new().database(database);
        if let Some(cluster) = cluster {
            query = query.source_or_unrecorded(cluster);
        }
        query = match &self.target {
            RevertTarget::Change(id) => query.id(*id),
            RevertTarget::Transaction(id) => query.transaction_id(*id),
            RevertTarget::Context(filter) => filter.iter().fold(query, |q, (key, value)| {
                q.context(key.clone(), value.clone())
            }),
        };
        if let Some(source) = &self.source {
            query = query.source(Some(source.as_str()));
        }
        if let Some(since) = self.since {
            query = query.since(since);
        }
        if let Some(until) = self.until {
            query = query.until(until);
        }
        query
    }

    fn check_selection(&self, selected: &[Selected]) -> Result<(), RevertError> {
        if selected.is_empty() {
            let filter = match &self.target {
                RevertTarget::Change(id) => format!("the id {id}"),
                RevertTarget::Transaction(id) => format!("the transaction id {id}"),
                RevertTarget::Context(filter) => {
                    format!("the context {}", Value::Object(filter.clone()))
                }
            };
            return Err(RevertError::NothingToRevert { filter });
        }
        if selected.len() as u64 > self.max_changes {
            return Err(RevertError::TooMany {
                max: self.max_changes,
            });
        }
        if let RevertTarget::Transaction(id) = self.target {
            // One transaction has one commit in one cluster: more than one means the id names
            // several (two source clusters, or 32-bit ids stored before full ids were).
            let commits: BTreeSet<(Option<&str>, DateTime<Utc>)> = selected
                .iter()
                .map(|c| (c.source.as_deref(), c.committed_at))
                .collect();
            if commits.len() > 1 {
                let sources: BTreeSet<String> = commits
                    .iter()
                    .map(|(source, _)| source.unwrap_or("(none recorded)").to_owned())
                    .collect();
                return Err(RevertError::AmbiguousTransaction {
                    transaction_id: id,
                    commits: commits.len(),
                    sources: sources.into_iter().collect(),
                });
            }
        }
        Ok(())
    }
}

/// How many of `selected` each table (`schema.table`) has.
fn tables_of(selected: &[Selected]) -> BTreeMap<String, usize> {
    let mut tables = BTreeMap::new();
    for change in selected {
        *tables
            .entry(format!("{}.{}", change.schema, change.table))
            .or_insert(0) += 1;
    }
    tables
}

/// What [`Revert::prepare`] found.
struct Prepared {
    selected: Vec<Selected>,
    tables: HashMap<(String, String), Table>,
    statements: Vec<RevertStatement>,
    conflicts: Vec<Conflict>,
}

/// A dry run: what a revert would do.
///
/// ```no_run
/// # async fn run(audit: sqlx::PgPool, source: sqlx::PgPool) -> Result<(), bemi_audit::RevertError> {
/// let plan = bemi_audit::Revert::transaction(768).plan(&audit, &source).await?;
/// println!("{} statements, {} conflicts", plan.statements.len(), plan.conflicts.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevertPlan {
    /// The ids of the changes it undoes, oldest first.
    pub changes: Vec<Uuid>,
    /// How many of those changes each table (`schema.table`) has.
    pub tables: BTreeMap<String, usize>,
    /// The statements, in the order they run (newest change first).
    pub statements: Vec<RevertStatement>,
    /// Rows that changed afterwards: without force, the revert would refuse.
    pub conflicts: Vec<Conflict>,
    /// The context added to the writes.
    pub context: Value,
    /// Whether the plan is for a forced revert.
    pub forced: bool,
}

impl RevertPlan {
    /// The plan as an SQL script for reading: the statements in one transaction, each with its
    /// parameters in comments, and the conflicts at the top.
    ///
    /// ```no_run
    /// # fn run(plan: bemi_audit::RevertPlan) {
    /// print!("{}", plan.script());
    /// # }
    /// ```
    pub fn script(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "-- Revert of {} change{} in {} statement{}, newest change first, in one transaction.",
            self.changes.len(),
            plural(self.changes.len()),
            self.statements.len(),
            plural(self.statements.len()),
        );
        let _ = writeln!(
            text,
            "-- Each statement runs through the sqlx adapter with the context {}.",
            self.context
        );
        if !self.conflicts.is_empty() {
            let _ = writeln!(
                text,
                "-- {} row{} changed afterwards: {}",
                self.conflicts.len(),
                plural(self.conflicts.len()),
                if self.forced {
                    "forced, the revert overwrites them"
                } else {
                    "the revert refuses unless forced (--force)"
                }
            );
            for conflict in &self.conflicts {
                let _ = writeln!(text, "--   {conflict}");
            }
        }
        text.push_str("BEGIN;\n");
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

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// What a revert did.
///
/// ```no_run
/// # async fn run(audit: sqlx::PgPool, source: sqlx::PgPool) -> Result<(), bemi_audit::RevertError> {
/// let report = bemi_audit::Revert::transaction(768).run(&audit, &source).await?;
/// println!("{} changes undone, {} rows written", report.changes, report.rows_affected);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevertReport {
    /// How many changes were undone.
    pub changes: usize,
    /// The statements that ran.
    pub statements: Vec<RevertStatement>,
    /// How many rows they wrote.
    pub rows_affected: u64,
    /// The conflicts a forced revert overwrote (empty otherwise).
    pub overridden: Vec<Conflict>,
    /// The context of the writes.
    pub context: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_revert_of_context_names_the_target_and_range() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = Uuid::nil();
        assert_eq!(
            Revert::change(id).context_value(),
            json!({"revert_of": {"change_id": id.to_string()}})
        );
        assert_eq!(
            Revert::transaction(5).since(at).context_value(),
            json!({"revert_of": {"transaction_id": 5, "since": "2026-01-02T03:04:05+00:00"}})
        );
    }

    #[test]
    fn the_selection_is_limited_to_the_source_database() {
        let filter = json!({"request_id": "r1"});
        let sql = Revert::context(filter).query("app", None).sql();
        assert!(
            sql.contains("WHERE database = $1 AND context @> $2"),
            "{sql}"
        );
        let sql = Revert::transaction(7)
            .until(Utc::now())
            .query("app", Some("7716"))
            .sql();
        assert!(
            sql.contains(
                "WHERE database = $1 AND transaction_id = $2 AND (source = '' OR source = $3) \
                 AND committed_at < $4"
            ),
            "{sql}"
        );
    }
}
