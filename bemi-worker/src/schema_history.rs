//! Tables as of each change: the schema history the migration's event trigger writes into the
//! WAL (`_bemi_schema` messages, one per DDL command that touches a tracked table), kept in
//! stream order.
//!
//! A Relation message of pgoutput already carries a table's name and columns as of the change
//! (logical decoding reads the catalog as it was), but not its primary key — with REPLICA
//! IDENTITY FULL every column is flagged as key — nor what its non-built-in types are. Reading
//! those from the catalog gives the catalog of *now*: wrong for a change decoded after a later
//! schema change of its table (a worker that lags, or restarts after downtime). The history
//! gives them as of the change, without a catalog query in the middle of the stream.
//!
//! The worker writes each version it reads into `_bemi_worker_schema` in the same destination
//! transaction as the rows around it, and loads the versions up to its resume position when it
//! starts, so a restart resumes with the history it had.

use std::collections::HashMap;

use serde::Deserialize;

use crate::catalog::{ColumnInfo, RelationInfo, is_worker_table};
use crate::config::WorkerConfig;
use crate::destination::{format_lsn, parse_lsn};
use crate::json_value::{TypeKind, write_string};
use crate::pgoutput::Relation;

/// The prefix of schema messages.
pub(crate) const SCHEMA_PREFIX: &str = "_bemi_schema";

/// A table as the migration described it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct TableSchema {
    /// Its oid.
    #[serde(deserialize_with = "number_or_text")]
    pub oid: u32,
    /// Its schema.
    #[serde(default)]
    pub schema: String,
    /// Its name.
    #[serde(default)]
    pub table: String,
    /// The columns of its primary key (else of its replica identity index), in key order.
    #[serde(default)]
    pub key: Vec<String>,
    /// Its columns, in order.
    #[serde(default)]
    pub columns: Vec<ColumnSchema>,
    /// The migration could not describe the table (it warned): from here on the worker reads
    /// the catalog for it, as without a history.
    #[serde(default)]
    pub unknown: bool,
}

/// A column of a [`TableSchema`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct ColumnSchema {
    /// Its name.
    pub name: String,
    /// Its type, resolved through domains and arrays.
    #[serde(rename = "type")]
    pub kind: ResolvedType,
}

/// A type resolved to a base type and the number of array levels around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) struct ResolvedType {
    /// The base type's oid (after domains and array elements).
    #[serde(deserialize_with = "number_or_text")]
    pub base: u32,
    /// How many arrays wrap it.
    pub array_depth: u32,
}

impl ResolvedType {
    /// How its values become JSON: the base type's kind (text for enums and other non-built-in
    /// types), inside as many arrays.
    pub(crate) fn kind(self) -> TypeKind {
        let mut kind = TypeKind::builtin(self.base).unwrap_or(TypeKind::Text);
        for _ in 0..self.array_depth.min(8) {
            kind = TypeKind::Array(Box::new(kind));
        }
        kind
    }
}

/// PostgreSQL's `json_build_object` writes oids as JSON strings.
fn number_or_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Oid {
        Number(u32),
        Text(String),
    }
    match Oid::deserialize(deserializer)? {
        Oid::Number(oid) => Ok(oid),
        Oid::Text(text) => text.parse().map_err(serde::de::Error::custom),
    }
}

impl TableSchema {
    /// Parses a `_bemi_schema` message.
    pub(crate) fn parse(content: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(content)
    }

    /// What the capture needs of the relation of `relation`'s change, from this version of its
    /// table: its columns as the Relation message gives them (as of the change), each typed by
    /// this history (or, for a built-in type, by its oid); its key by this history.
    pub(crate) fn describe(&self, relation: &Relation, config: &WorkerConfig) -> RelationInfo {
        let column_names: Vec<&str> = relation.columns.iter().map(|c| c.name.as_str()).collect();
        let captured = !is_worker_table(&relation.name, &column_names)
            && config.filter.includes(&relation.namespace, &relation.name);
        let columns = relation
            .columns
            .iter()
            .map(|column| {
                let kind = TypeKind::builtin(column.type_oid).unwrap_or_else(|| {
                    self.columns
                        .iter()
                        .find(|c| c.name == column.name)
                        .map_or(TypeKind::Text, |c| c.kind.kind())
                });
                let mut json_key = String::with_capacity(column.name.len() + 3);
                write_string(&mut json_key, &column.name);
                json_key.push(':');
                ColumnInfo {
                    json_key,
                    kind,
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
                }
            })
            .collect();
        let primary_key: Option<Vec<usize>> = self
            .key
            .iter()
            .map(|name| relation.columns.iter().position(|c| &c.name == name))
            .collect();
        RelationInfo {
            schema: relation.namespace.as_str().into(),
            table: relation.name.as_str().into(),
            primary_key: primary_key.unwrap_or_default(),
            columns,
            captured,
        }
    }
}

/// One version of the history: a table's schema from a position of the WAL on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaVersion {
    /// Where in the WAL it took effect (the message's LSN; the start position for a baseline).
    pub lsn: u64,
    /// The table's oid.
    pub relid: u32,
    /// The message's JSON.
    pub json: String,
}

/// The latest schema of each table, as the stream has reached it.
#[derive(Debug, Default)]
pub(crate) struct SchemaStore {
    tables: HashMap<u32, (u64, TableSchema)>,
}

impl SchemaStore {
    /// Takes a version if it is not older than the one held for its table.
    pub(crate) fn apply(&mut self, lsn: u64, schema: TableSchema) {
        match self.tables.get(&schema.oid) {
            Some((held, _)) if *held > lsn => {}
            _ => {
                self.tables.insert(schema.oid, (lsn, schema));
            }
        }
    }

    /// The schema of the table `oid` as of the stream's position, if the history has it (and
    /// not as [`unknown`](TableSchema::unknown)).
    pub(crate) fn get(&self, oid: u32) -> Option<&TableSchema> {
        self.tables
            .get(&oid)
            .map(|(_, schema)| schema)
            .filter(|schema| !schema.unknown)
    }

    /// Whether the history has the table `oid`.
    pub(crate) fn knows(&self, oid: u32) -> bool {
        self.tables.contains_key(&oid)
    }

    /// How many tables it holds.
    pub(crate) fn len(&self) -> usize {
        self.tables.len()
    }
}

/// The table of the versions the worker read, per source database and slot: in the
/// destination (written in the same transaction as the rows around each version), or, for a
/// capture into NATS, in the source. Idempotent.
pub(crate) const TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS _bemi_worker_schema (
  database text NOT NULL,
  slot text NOT NULL,
  relid bigint NOT NULL,
  lsn pg_lsn NOT NULL,
  schema text NOT NULL,
  PRIMARY KEY (database, slot, relid, lsn)
)";

/// Stores versions (one array parameter per column).
const INSERT_SQL: &str = "INSERT INTO _bemi_worker_schema (database, slot, relid, lsn, schema) \
     SELECT $1, $2, relid, lsn::pg_lsn, schema \
       FROM unnest($3::bigint[], $4::text[], $5::text[]) AS v(relid, lsn, schema) \
     ON CONFLICT DO NOTHING";

/// The latest version of each table's schema at or before a position.
const LOAD_SQL: &str = "SELECT DISTINCT ON (relid) lsn::text, schema \
       FROM _bemi_worker_schema \
      WHERE database = $1 AND slot = $2 AND lsn <= $3::pg_lsn \
      ORDER BY relid, lsn DESC";

/// The latest stored version of each table at or before `position`, for the worker of `slot`
/// on the source `database`.
pub(crate) async fn load(
    conn: &mut sqlx::PgConnection,
    database: &str,
    slot: &str,
    position: u64,
) -> Result<Vec<(u64, TableSchema)>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(LOAD_SQL)
        .bind(database)
        .bind(slot)
        .bind(format_lsn(position))
        .fetch_all(conn)
        .await?;
    let mut history = Vec::with_capacity(rows.len());
    for (lsn, json) in rows {
        match (parse_lsn(&lsn), TableSchema::parse(json.as_bytes())) {
            (Some(lsn), Ok(schema)) => history.push((lsn, schema)),
            (_, Err(error)) => {
                tracing::warn!(%error, "a stored schema version does not parse; skipped");
            }
            (None, _) => {}
        }
    }
    Ok(history)
}

/// Stores `versions` (a no-op for those already stored).
pub(crate) async fn insert(
    conn: &mut sqlx::PgConnection,
    database: &str,
    slot: &str,
    versions: &[SchemaVersion],
) -> Result<(), sqlx::Error> {
    if versions.is_empty() {
        return Ok(());
    }
    let relids: Vec<i64> = versions.iter().map(|v| i64::from(v.relid)).collect();
    let lsns: Vec<String> = versions.iter().map(|v| format_lsn(v.lsn)).collect();
    let schemas: Vec<&str> = versions.iter().map(|v| v.json.as_str()).collect();
    sqlx::query(INSERT_SQL)
        .bind(database)
        .bind(slot)
        .bind(relids)
        .bind(lsns)
        .bind(schemas)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::Column;

    fn relation(columns: &[(&str, u32)]) -> Relation {
        Relation {
            oid: 16_385,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: b'f',
            columns: columns
                .iter()
                .map(|(name, type_oid)| Column {
                    is_key: true,
                    name: (*name).into(),
                    type_oid: *type_oid,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    const MESSAGE: &str = r#"{"oid" : "16385", "schema" : "public", "table" : "orders", "key" : ["code", "id"],
        "columns" : [{"name" : "id", "type" : {"base" : "23", "array_depth" : 0}},
                     {"name" : "code", "type" : {"base" : "25", "array_depth" : 0}},
                     {"name" : "price", "type" : {"base" : "1700", "array_depth" : 0}},
                     {"name" : "moods", "type" : {"base" : "16766", "array_depth" : 1}}]}"#;

    #[test]
    fn a_message_gives_the_key_and_the_types_as_of_the_change() {
        let schema = TableSchema::parse(MESSAGE.as_bytes()).unwrap();
        assert_eq!(schema.oid, 16_385);
        // The change's columns (a domain over numeric, an array of an enum): typed by the
        // history; the key in its own order.
        let relation = relation(&[
            ("id", 23),
            ("code", 25),
            ("price", 90_001),
            ("moods", 90_002),
        ]);
        let info = schema.describe(&relation, &WorkerConfig::new("postgres://h/db"));
        assert_eq!(info.primary_key, [1, 0]);
        assert_eq!(info.columns[2].kind, TypeKind::Numeric);
        assert_eq!(
            info.columns[3].kind,
            TypeKind::Array(Box::new(TypeKind::Text))
        );
        assert!(info.captured);
    }

    #[test]
    fn a_key_column_missing_from_the_change_leaves_no_key() {
        let schema = TableSchema::parse(MESSAGE.as_bytes()).unwrap();
        let info = schema.describe(
            &relation(&[("id", 23)]),
            &WorkerConfig::new("postgres://h/db"),
        );
        assert!(info.primary_key.is_empty());
    }

    #[test]
    fn the_store_never_goes_back_to_an_older_version() {
        let mut store = SchemaStore::default();
        let mut schema = TableSchema::parse(MESSAGE.as_bytes()).unwrap();
        store.apply(200, schema.clone());
        schema.key = vec!["id".into()];
        store.apply(100, schema.clone());
        assert_eq!(store.get(16_385).unwrap().key, ["code", "id"]);
        store.apply(300, schema);
        assert_eq!(store.get(16_385).unwrap().key, ["id"]);
        assert!(store.knows(16_385) && !store.knows(1) && store.len() == 1);
    }

    #[test]
    fn an_unknown_version_sends_the_table_back_to_the_catalog() {
        let mut store = SchemaStore::default();
        store.apply(100, TableSchema::parse(MESSAGE.as_bytes()).unwrap());
        let unknown = TableSchema::parse(br#"{"oid": "16385", "unknown": true}"#).unwrap();
        assert!(unknown.unknown);
        store.apply(200, unknown);
        assert!(store.knows(16_385));
        assert_eq!(store.get(16_385), None);
        // A later description takes over again.
        store.apply(300, TableSchema::parse(MESSAGE.as_bytes()).unwrap());
        assert_eq!(store.get(16_385).unwrap().key, ["code", "id"]);
    }
}
