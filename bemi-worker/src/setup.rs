//! Preparing the source: checks that fail fast with the fix in the message, the publication
//! (kept in sync with the tables to capture), and the replication slot.
//!
//! The publication lists tables explicitly — every table the filter captures, never the worker's
//! own tables — so that, when source and destination are the same database, the worker's writes
//! to `changes` are not streamed back to it. Partitioned tables are published through their root
//! (`publish_via_partition_root`), which also covers partitions created later. Tables created
//! after the worker started are added by the migration's event trigger in the same transaction
//! (the worker marks its publication with the comment `bemi-rs` for that), and by the worker's
//! periodic check as a fallback.

use std::collections::BTreeSet;

use sqlx::PgPool;

/// Quotes an SQL identifier: [`bemi_core::sql::quote_ident`].
pub(crate) use bemi_core::sql::quote_ident;
use bemi_core::sql::quote_table;

use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::lsn::parse_lsn;

/// `plugin, database, wal_status, confirmed_flush_lsn, current_database()` of a slot.
type SlotRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

use bemi_core::protocol::PUBLICATION_MARK;

/// What the checks learned about the slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SlotState {
    /// The slot's confirmed position, when the slot exists.
    pub confirmed_flush: Option<u64>,
    /// This worker created the slot in this session (see [`ensure_slot`]).
    pub created: bool,
}

/// Checks the source: PostgreSQL 14+, `wal_level = logical`, a role allowed to replicate, and
/// an existing slot that is usable (pgoutput, this database, not lost).
pub(crate) async fn check_source(pool: &PgPool, slot: &str) -> Result<SlotState, WorkerError> {
    let (version_num, version, wal_level, role, may_replicate): (i32, String, String, String, bool) =
        sqlx::query_as(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'), \
                    current_setting('wal_level'), current_user::text, \
                    (SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) \
                    OR coalesce(pg_has_role(current_user, (SELECT oid FROM pg_catalog.pg_roles \
                       WHERE rolname = 'rds_replication'), 'member'), false)",
        )
        .fetch_one(pool)
        .await
        .map_err(WorkerError::Source)?;
    if version_num < 140_000 {
        return Err(WorkerError::ServerTooOld { version });
    }
    if wal_level != "logical" {
        return Err(WorkerError::WalLevel { found: wal_level });
    }
    if !may_replicate {
        return Err(WorkerError::NoReplicationPrivilege { role });
    }
    let existing: Option<SlotRow> = sqlx::query_as(
        "SELECT plugin::text, database::text, wal_status, confirmed_flush_lsn::text, \
                    current_database()::text \
               FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(WorkerError::Source)?;
    let Some((plugin, database, wal_status, confirmed, current_database)) = existing else {
        return Ok(SlotState::default());
    };
    if wal_status.as_deref() == Some("lost") {
        return Err(WorkerError::SlotLost {
            slot: slot.to_owned(),
        });
    }
    if plugin.as_deref() != Some("pgoutput") || database.as_deref() != Some(&current_database) {
        return Err(WorkerError::SlotUnusable {
            slot: slot.to_owned(),
            detail: format!(
                "it is a slot of plugin {plugin:?} on database {database:?}, and the worker \
                 needs a pgoutput slot on {current_database:?}; pass another name with --slot, \
                 or drop it with `SELECT pg_drop_replication_slot('{slot}');`"
            ),
        });
    }
    Ok(SlotState {
        confirmed_flush: confirmed.as_deref().and_then(parse_lsn),
        created: false,
    })
}

/// Creates the slot (pgoutput) if it does not exist yet; whether it did.
pub(crate) async fn ensure_slot(pool: &PgPool, slot: &str) -> Result<bool, WorkerError> {
    let result = sqlx::query(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput') \
          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)",
    )
    .bind(slot)
    .execute(pool)
    .await;
    match result {
        Ok(done) => Ok(done.rows_affected() > 0),
        // Created concurrently by another worker: fine, check_source vets it next time.
        Err(e)
            if e.as_database_error()
                .and_then(sqlx::error::DatabaseError::code)
                .as_deref()
                == Some("42710") =>
        {
            Ok(false)
        }
        Err(e)
            if e.as_database_error()
                .and_then(sqlx::error::DatabaseError::code)
                .as_deref()
                == Some("53400") =>
        {
            Err(WorkerError::SlotUnusable {
                slot: slot.to_owned(),
                detail: format!(
                    "the server has no free replication slot ({e}): raise max_replication_slots \
                     and restart PostgreSQL, or drop an unused slot"
                ),
            })
        }
        Err(e) => Err(WorkerError::Source(e)),
    }
}

/// Tables the worker would capture: ordinary and partitioned tables (roots, not partitions) of
/// non-system schemas, permanent, not owned by an extension, not the worker's own.
const CANDIDATE_TABLES_SQL: &str = "
SELECT n.nspname::text, c.relname::text
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND NOT c.relispartition
   AND c.relpersistence = 'p'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_%'
   AND c.relname NOT LIKE '\\_bemi%'
   AND NOT (c.relname ~ '^changes(_default|_y[0-9]{4}m[0-9]{2})?$' AND (
         SELECT count(*) FROM pg_catalog.pg_attribute a
          WHERE a.attrelid = c.oid AND NOT a.attisdropped
            AND a.attname IN ('position', 'transaction_id', 'primary_key', 'context')) = 4)
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype = 'e')";

/// Creates the publication if missing and makes its table list match the tables to capture.
/// Returns the tables it added (changes to them before now were not captured).
pub(crate) async fn sync_publication(
    pool: &PgPool,
    config: &WorkerConfig,
) -> Result<Vec<String>, WorkerError> {
    let publication = &config.publication;
    let wrap = |source| WorkerError::Publication {
        publication: publication.clone(),
        source,
    };
    let mut tx = pool.begin().await.map_err(WorkerError::Source)?;
    // One worker at a time changes it.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('bemi-rs publication ' || $1))")
        .bind(publication)
        .execute(&mut *tx)
        .await
        .map_err(WorkerError::Source)?;
    let all_tables: Option<bool> =
        sqlx::query_scalar("SELECT puballtables FROM pg_catalog.pg_publication WHERE pubname = $1")
            .bind(publication)
            .fetch_optional(&mut *tx)
            .await
            .map_err(WorkerError::Source)?;
    match all_tables {
        None => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE PUBLICATION {} WITH (publish_via_partition_root = true)",
                quote_ident(publication)
            )))
            .execute(&mut *tx)
            .await
            .map_err(wrap)?;
        }
        Some(true) => {
            tx.commit().await.map_err(WorkerError::Source)?;
            tracing::warn!(
                publication,
                "the publication is FOR ALL TABLES: the worker's own tables are streamed too \
                 (and skipped); for a table list kept in sync by the worker, drop it and let the \
                 worker create it"
            );
            return Ok(Vec::new());
        }
        Some(false) => {}
    }
    // The migration's event trigger publishes new tables through publications marked so.
    let marked: bool = sqlx::query_scalar(
        "SELECT coalesce(obj_description(oid, 'pg_publication') = $2, false) \
           FROM pg_catalog.pg_publication WHERE pubname = $1",
    )
    .bind(publication)
    .bind(PUBLICATION_MARK)
    .fetch_one(&mut *tx)
    .await
    .map_err(WorkerError::Source)?;
    if !marked {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "COMMENT ON PUBLICATION {} IS '{PUBLICATION_MARK}'",
            quote_ident(publication)
        )))
        .execute(&mut *tx)
        .await
        .map_err(wrap)?;
    }

    let candidates: Vec<(String, String)> = sqlx::query_as(CANDIDATE_TABLES_SQL)
        .fetch_all(&mut *tx)
        .await
        .map_err(WorkerError::Source)?;
    let wanted: BTreeSet<String> = candidates
        .iter()
        .filter(|(schema, table)| config.filter.includes(schema, table))
        .map(|(schema, table)| quote_table(schema, table))
        .collect();
    let published: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_publication_rel pr \
           JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid \
           JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
          WHERE p.pubname = $1",
    )
    .bind(publication)
    .fetch_all(&mut *tx)
    .await
    .map_err(WorkerError::Source)?;
    let published: BTreeSet<String> = published
        .iter()
        .map(|(schema, table)| quote_table(schema, table))
        .collect();

    let to_add: Vec<String> = wanted.difference(&published).cloned().collect();
    let to_drop: Vec<String> = published.difference(&wanted).cloned().collect();
    for (verb, tables) in [("ADD", &to_add), ("DROP", &to_drop)] {
        if tables.is_empty() {
            continue;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER PUBLICATION {} {verb} TABLE {}",
            quote_ident(publication),
            tables.join(", ")
        )))
        .execute(&mut *tx)
        .await
        .map_err(wrap)?;
    }
    tx.commit().await.map_err(WorkerError::Source)?;
    Ok(to_add)
}

/// Emits a non-transactional heartbeat message on the source: it gives the stream a position to
/// confirm even when this database is idle while others write, so the slot keeps advancing.
pub(crate) async fn heartbeat(pool: &PgPool) -> Result<(), WorkerError> {
    sqlx::query("SELECT pg_logical_emit_message(false, '_bemi_heartbeat', now()::text)")
        .execute(pool)
        .await
        .map_err(WorkerError::Source)?;
    Ok(())
}
