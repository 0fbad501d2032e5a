//! What the worker needs to know about a relation beyond its Relation message: the primary key
//! (from the catalog: with REPLICA IDENTITY FULL every column is flagged as key), how each
//! column's type becomes JSON, and whether the table is captured at all.
//!
//! A Relation message arrives before a relation's first change on each connection and again
//! after every schema change, so [`Catalog::describe`] runs then and its result is kept until the
//! next one.
//!
//! **A race to know about:** the server streams a transaction as soon as its commit record is
//! flushed, *before* other sessions see it as committed — a moment later, or, with a synchronous
//! standby, only once the standby confirms. A table created, or a primary key added, in that
//! very transaction can therefore still be invisible to our catalog query, and a stale answer
//! would stay cached until the relation's next schema change. So before describing a relation,
//! [`Catalog::wait_for_transaction`] waits until the transaction being decoded is visible to
//! new snapshots; lookups of objects that are still not there are retried for up to a second
//! before falling back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;
use crate::json_value::TypeKind;
use crate::pgoutput::Relation;

/// How long a lookup waits for an object created by the decoded transaction to become visible.
const VISIBILITY_WAIT: Duration = Duration::from_secs(1);
/// How long [`Catalog::wait_for_transaction`] waits before reading the catalog anyway.
pub(crate) const TRANSACTION_VISIBILITY_WAIT: Duration = Duration::from_secs(30);
/// Whether the transaction with the 32-bit id `$1` (recent: within 2^31 of the next id) is
/// visible to a new snapshot. The epoch comes from the snapshot's `xmax`, one less when the id
/// is above `xmax`'s low 32 bits (it was assigned before the counter wrapped).
/// Also the `sync_state` of the connection streaming slot `$2` (`sync`: the transaction waits
/// for this very worker and cannot become visible before the worker confirms it), or, when the
/// role may not see it (NULL without `pg_read_all_stats`), `unknown` if
/// `synchronous_standby_names` could name the worker (`*` or its application name).
const TRANSACTION_VISIBLE: &str = "\
SELECT pg_visible_in_snapshot(
         ((((x.xmax >> 32) - (CASE WHEN $1 > (x.xmax & 4294967295) THEN 1 ELSE 0 END)) << 32) | $1)
           ::text::xid8,
         x.snap),
       coalesce(
         (SELECT r.sync_state FROM pg_catalog.pg_stat_replication r
            JOIN pg_catalog.pg_replication_slots s ON s.active_pid = r.pid
           WHERE s.slot_name = $2),
         CASE WHEN current_setting('synchronous_standby_names') ~ '[*]|bemi-worker'
              THEN 'unknown' ELSE 'async' END)
  FROM (SELECT s AS snap, pg_snapshot_xmax(s)::text::bigint AS xmax
          FROM pg_current_snapshot() AS s) AS x";
/// How long the wait lasts when the worker may be one of the standbys the transaction waits for
/// (quorum commit, or a role that cannot see its own `sync_state`).
const MAYBE_OWN_STANDBY_WAIT: Duration = Duration::from_secs(2);
const RELATION_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = $1::oid)";
const TYPE_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_type WHERE oid = $1::oid)";

/// The key columns flagged in a Relation message, unless every column is flagged (REPLICA
/// IDENTITY FULL says nothing about the key).
fn key_flags(relation: &Relation) -> Vec<usize> {
    let flagged: Vec<usize> = (0..relation.columns.len())
        .filter(|&i| relation.columns[i].is_key)
        .collect();
    if flagged.len() == relation.columns.len() {
        Vec::new()
    } else {
        flagged
    }
}

/// A relation, ready to turn rows into JSON.
#[derive(Debug, Clone)]
pub(crate) struct RelationInfo {
    /// Its schema.
    pub schema: Arc<str>,
    /// Its name.
    pub table: Arc<str>,
    /// Its columns, in the order of the tuples.
    pub columns: Vec<ColumnInfo>,
    /// Indexes into `columns` of the primary key (empty when the table has none, or when it
    /// is not known).
    pub primary_key: Vec<usize>,
    /// Why the key of its changes is not known (the schema history did not match the WAL, which
    /// does not say): they are stored without a key and with this reason in their context.
    pub key_unknown: Option<Arc<str>>,
    /// Whether its changes are stored (the table filter, and never the worker's own tables).
    pub captured: bool,
}

/// A column of a [`RelationInfo`].
#[derive(Debug, Clone)]
pub(crate) struct ColumnInfo {
    /// `"name":`, rendered once.
    pub json_key: String,
    /// How its values become JSON.
    pub kind: TypeKind,
    /// Whether its values are replaced by the redaction marker.
    pub redacted: bool,
    /// Its changes alone do not make an UPDATE worth storing (`--ignore-columns`).
    pub ignored: bool,
}

/// Whether a relation is one of the worker's own tables: `_bemi*`, or a `changes` table with the
/// columns of Bemi's audit table, or one of its partitions (`changes_default`,
/// `changes_y2026m05`). They are never captured.
pub(crate) fn is_worker_table(name: &str, columns: &[&str]) -> bool {
    name.starts_with("_bemi")
        || (is_changes_name(name)
            && ["position", "transaction_id", "primary_key", "context"]
                .iter()
                .all(|c| columns.contains(c)))
}

/// `changes`, `changes_default`, or a monthly partition `changes_yYYYYmMM`.
fn is_changes_name(name: &str) -> bool {
    let month = |rest: &str| {
        let bytes = rest.as_bytes();
        bytes.len() == 8
            && bytes[0] == b'y'
            && bytes[5] == b'm'
            && bytes[1..5]
                .iter()
                .chain(&bytes[6..])
                .all(u8::is_ascii_digit)
    };
    match name.strip_prefix("changes") {
        Some("" | "_default") => true,
        Some(rest) => rest.strip_prefix('_').is_some_and(month),
        None => false,
    }
}

/// Catalog lookups on the source database, with a cache of type kinds.
#[derive(Debug)]
pub(crate) struct Catalog {
    pool: PgPool,
    types: HashMap<u32, TypeKind>,
    warned_synchronous_standby: bool,
}

impl Catalog {
    /// A catalog reader over the source pool.
    pub(crate) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            types: HashMap::new(),
            warned_synchronous_standby: false,
        }
    }

    /// Describes `relation` for the worker with `config`.
    pub(crate) async fn describe(
        &mut self,
        relation: &Relation,
        config: &WorkerConfig,
    ) -> Result<RelationInfo, sqlx::Error> {
        let mut info = self.describe_columns(relation, config).await?;
        info.primary_key = if self
            .wait_until_visible(RELATION_EXISTS, relation.oid)
            .await?
        {
            self.primary_key(relation).await?
        } else {
            // Dropped since: only the Relation message's key flags are left.
            key_flags(relation)
        };
        Ok(info)
    }

    /// Describes `relation`'s columns (their types looked up by oid, which never changes
    /// meaning), without a key.
    pub(crate) async fn describe_columns(
        &mut self,
        relation: &Relation,
        config: &WorkerConfig,
    ) -> Result<RelationInfo, sqlx::Error> {
        let column_names: Vec<&str> = relation.columns.iter().map(|c| c.name.as_str()).collect();
        let captured = !is_worker_table(&relation.name, &column_names)
            && config.filter.includes(&relation.namespace, &relation.name);
        let mut columns = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            let mut json_key = String::with_capacity(column.name.len() + 3);
            crate::json_value::write_string(&mut json_key, &column.name);
            json_key.push(':');
            columns.push(ColumnInfo {
                json_key,
                kind: self.type_kind(column.type_oid).await?,
                redacted: config.redactions.is_redacted(
                    &relation.namespace,
                    &relation.name,
                    &column.name,
                ),
                ignored: config.ignored_columns.is_ignored(
                    &relation.namespace,
                    &relation.name,
                    &column.name,
                ),
            });
        }
        Ok(RelationInfo {
            schema: relation.namespace.as_str().into(),
            table: relation.name.as_str().into(),
            primary_key: Vec::new(),
            key_unknown: None,
            columns,
            captured,
        })
    }

    /// Waits until the transaction `xid` — the one being decoded — is visible to new snapshots,
    /// so that catalog lookups see the schema it committed. Returns `false`, with a warning,
    /// when it is not after [`TRANSACTION_VISIBILITY_WAIT`], at once when the connection
    /// streaming `slot` is a synchronous standby (the transaction then waits for this very
    /// worker), after two seconds when it may be one (quorum commit, or a role that may not
    /// see `pg_stat_replication.sync_state` while `synchronous_standby_names` could name the
    /// worker), or on shutdown; the catalog is read anyway then.
    pub(crate) async fn wait_for_transaction(
        &mut self,
        xid: u32,
        slot: &str,
        shutdown: &CancellationToken,
    ) -> Result<bool, sqlx::Error> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        let mut told = false;
        loop {
            let (visible, sync_state): (bool, String) = sqlx::query_as(TRANSACTION_VISIBLE)
                .bind(i64::from(xid))
                .bind(slot)
                .fetch_one(&self.pool)
                .await?;
            if visible {
                return Ok(true);
            }
            let maybe_own_standby = matches!(sync_state.as_str(), "quorum" | "unknown");
            if sync_state == "sync"
                || (maybe_own_standby && started.elapsed() >= MAYBE_OWN_STANDBY_WAIT)
            {
                if !self.warned_synchronous_standby {
                    self.warned_synchronous_standby = true;
                    tracing::warn!(
                        slot,
                        sync_state,
                        "the worker's replication connection is (or may be) a synchronous \
                         standby, so every \
                         commit waits for the worker, and a table's schema is read before the \
                         transaction that changed it is visible: leave the worker out of \
                         synchronous_standby_names (e.g. list the standbys by name instead of *)"
                    );
                }
                return Ok(false);
            }
            if started.elapsed() >= TRANSACTION_VISIBILITY_WAIT {
                tracing::warn!(
                    xid,
                    waited = ?TRANSACTION_VISIBILITY_WAIT,
                    "the decoded transaction is still not visible; reading the catalog anyway \
                     (a primary key or type it changed may be missed until the table's next \
                     schema change)"
                );
                return Ok(false);
            }
            if !told && started.elapsed() >= Duration::from_secs(1) {
                told = true;
                tracing::info!(
                    xid,
                    "waiting for the decoded transaction to become visible (a synchronous \
                     standby that has not confirmed it yet?)"
                );
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(false),
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Whether the catalog object `oid` exists, waiting up to [`VISIBILITY_WAIT`] for the
    /// transaction that created it to become visible (see the module docs).
    async fn wait_until_visible(
        &self,
        exists_sql: &'static str,
        oid: u32,
    ) -> Result<bool, sqlx::Error> {
        let deadline = Instant::now() + VISIBILITY_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            let exists: bool = sqlx::query_scalar(exists_sql)
                .bind(i64::from(oid))
                .fetch_one(&self.pool)
                .await?;
            if exists || Instant::now() >= deadline {
                return Ok(exists);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// The primary key's column positions: from the catalog's primary key, else the replica
    /// identity index, else (for a dropped table) the key flags of the Relation message unless
    /// every column is flagged (REPLICA IDENTITY FULL), else none.
    async fn primary_key(&self, relation: &Relation) -> Result<Vec<usize>, sqlx::Error> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text \
               FROM pg_catalog.pg_index i \
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
              WHERE i.indrelid = $1::oid \
                AND i.indexrelid = coalesce( \
                      (SELECT indexrelid FROM pg_catalog.pg_index WHERE indrelid = $1::oid AND indisprimary LIMIT 1), \
                      (SELECT indexrelid FROM pg_catalog.pg_index WHERE indrelid = $1::oid AND indisreplident LIMIT 1)) \
              ORDER BY k.ord",
        )
        .bind(i64::from(relation.oid))
        .fetch_all(&self.pool)
        .await?;
        let position = |name: &String| relation.columns.iter().position(|c| &c.name == name);
        let from_catalog: Option<Vec<usize>> = names.iter().map(position).collect();
        match from_catalog {
            Some(key) if !key.is_empty() => Ok(key),
            _ => Ok(key_flags(relation)),
        }
    }

    /// How values of the type `oid` become JSON; non-builtin types are looked up once (a type
    /// created in the transaction being decoded may need a moment to become visible).
    async fn type_kind(&mut self, oid: u32) -> Result<TypeKind, sqlx::Error> {
        if let Some(kind) = TypeKind::builtin(oid) {
            return Ok(kind);
        }
        if let Some(kind) = self.types.get(&oid) {
            return Ok(kind.clone());
        }
        // Follow domains to their base type and arrays to their element type, iteratively.
        self.wait_until_visible(TYPE_EXISTS, oid).await?;
        let mut wrappers = 0usize;
        let mut current = oid;
        let kind = loop {
            if let Some(kind) =
                TypeKind::builtin(current).or_else(|| self.types.get(&current).cloned())
            {
                break kind;
            }
            let row: Option<(String, String, i64, i64)> = sqlx::query_as(
                "SELECT typtype::text, typcategory::text, typelem::bigint, typbasetype::bigint \
                   FROM pg_catalog.pg_type WHERE oid = $1::oid",
            )
            .bind(i64::from(current))
            .fetch_optional(&self.pool)
            .await?;
            match row {
                Some((typtype, _, _, base)) if typtype == "d" && base != 0 => current = base as u32,
                // Arrays of non-builtin types (enums, domains, composites): array literals.
                Some((_, category, elem, _)) if category == "A" && elem != 0 && wrappers < 8 => {
                    wrappers += 1;
                    current = elem as u32;
                }
                _ => break TypeKind::Text,
            }
        };
        let mut kind = kind;
        // Re-apply the array wrappers we unwrapped (domains need none).
        for _ in 0..wrappers {
            kind = TypeKind::Array(Box::new(kind));
        }
        self.types.insert(oid, kind.clone());
        Ok(kind)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_worker_recognises_its_own_tables_by_name_and_columns() {
        use crate::catalog::is_worker_table;

        let columns = ["position", "transaction_id", "primary_key", "context"];
        assert!(is_worker_table("_bemi_worker_state", &[]));
        assert!(is_worker_table("changes", &columns));
        assert!(is_worker_table("changes_y2026m05", &columns));
        assert!(!is_worker_table("changes", &["id", "amount"]));
        assert!(!is_worker_table("changes_y2026", &columns));
    }
}
