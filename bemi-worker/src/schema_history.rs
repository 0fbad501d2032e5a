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
//!
//! **A version is checked, not trusted.** DDL made while event triggers do not fire
//! (`session_replication_role = replica`, `_bemi_schema_trigger` disabled) leaves a stale
//! version in force, and any role that may call `pg_logical_emit_message` can emit a forged
//! one. So each version is compared ([`TableSchema::check`]) with the Relation message it is
//! applied to — what the WAL itself says about the table as of the change:
//!
//! - the columns: names, count and order (generated columns, which pgoutput leaves out, are
//!   skipped; a version recorded before the migration said which columns are generated only
//!   needs the WAL's columns to appear in it, in order);
//! - the types, where they are comparable: a Relation column of a built-in type the worker
//!   knows must be that very type in the version (its element type in one array for a
//!   built-in array type). A domain, an enum or any other type of the database (and its
//!   arrays) is named by its own oid in the WAL but by its base type in the version, so it is
//!   not compared (it is read from the catalog by oid on a mismatch: a type oid never changes
//!   meaning);
//! - the key: every key column must be a column of the table, and under REPLICA IDENTITY
//!   DEFAULT the columns the WAL flags as key (the primary key's) must be the version's key.
//!   Under FULL every column is flagged, under INDEX the flags name the replica identity
//!   index, which need not be the primary key: the key is not checked then.
//!
//! On a mismatch ([`Difference`]) the capture follows the WAL ([`key_from_wal`]): the
//! Relation's columns, and the key its flags give under DEFAULT or INDEX; under FULL or
//! NOTHING (or DEFAULT with no flagged column while the version names a key) no key can be
//! established — the catalog of *now* cannot be tied to the change's position — so the key is
//! stored as unknown: `primary_key` NULL and the context key [`KEY_UNKNOWN_KEY`] giving the
//! reason.
//!
//! A forged version is caught the same way when it contradicts the WAL, and is harmless when it
//! says what the WAL says. What the WAL cannot contradict is a key alone under FULL or INDEX:
//! a forgery with the table's very columns and another key goes through there (as does DDL
//! that only replaces the primary key while the event trigger does not fire). Authenticating
//! the versions themselves is the way to close that (see README).

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::Deserialize;

use crate::catalog::{ColumnInfo, RelationInfo, is_worker_table};
use crate::config::WorkerConfig;
use crate::json_value::{TypeKind, builtin_array_element, write_string};
use crate::lsn::{format_lsn, parse_lsn};
use crate::pgoutput::Relation;

/// The prefix of schema messages.
pub(crate) const SCHEMA_PREFIX: &str = "_bemi_schema";

/// The context key that marks a change whose key could not be established (its `primary_key`
/// is NULL): its value says why.
pub(crate) const KEY_UNKNOWN_KEY: &str = "_bemi_key_unknown";

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
    /// Whether it is a generated column (pgoutput leaves those out); `None` in a version
    /// recorded before the migration said so.
    #[serde(default)]
    pub generated: Option<bool>,
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

impl ResolvedType {
    /// What a version says of a Relation column of type `oid`, when that is known without the
    /// catalog: a built-in type the worker knows is itself, a built-in array its element in one
    /// array. `None` for a domain, an enum, a composite or any other type of the database, and
    /// their arrays (the WAL names them by their own oid, the version by their base type).
    pub(crate) fn of_builtin(oid: u32) -> Option<Self> {
        TypeKind::builtin(oid)?;
        Some(match builtin_array_element(oid) {
            Some(element) => Self {
                base: element,
                array_depth: 1,
            },
            None => Self {
                base: oid,
                array_depth: 0,
            },
        })
    }
}

impl fmt::Display for ResolvedType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "type oid {}", self.base)?;
        for _ in 0..self.array_depth {
            f.write_str("[]")?;
        }
        Ok(())
    }
}

/// How a version of a table's schema differs from the Relation message of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Difference {
    /// The columns' names, count or order.
    Columns {
        /// The version's columns (generated ones left out).
        version: Vec<String>,
        /// The Relation's.
        wal: Vec<String>,
    },
    /// A column's type.
    Type {
        /// The column.
        column: String,
        /// What the version says.
        version: ResolvedType,
        /// The Relation's type oid.
        wal: u32,
    },
    /// A key column that is not a column of the table in the Relation.
    KeyColumnMissing {
        /// The column.
        column: String,
    },
    /// Under REPLICA IDENTITY DEFAULT: the columns the Relation flags as key are not the
    /// version's key.
    Key {
        /// The version's key.
        version: Vec<String>,
        /// The flagged columns.
        wal: Vec<String>,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |names: &[String]| names.join(", ");
        match self {
            Self::Columns { version, wal } => write!(
                f,
                "columns: the history has ({}), the WAL ({})",
                list(version),
                list(wal)
            ),
            Self::Type {
                column,
                version,
                wal,
            } => write!(
                f,
                "type of column {column}: the history has {version}, the WAL type oid {wal}"
            ),
            Self::KeyColumnMissing { column } => {
                write!(
                    f,
                    "key column {column} is not a column of the table in the WAL"
                )
            }
            Self::Key { version, wal } => write!(
                f,
                "key: the history has ({}), the WAL's replica identity ({})",
                list(version),
                list(wal)
            ),
        }
    }
}

/// What the WAL says of a change's key when the version in force does not match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WalKey {
    /// The key's positions among the Relation's columns (empty: the table has no key).
    Known(Vec<usize>),
    /// No key can be established; why.
    Unknown(String),
}

/// The key of `relation`'s changes from the WAL alone, for a table whose version in force does
/// not match it: under REPLICA IDENTITY DEFAULT or INDEX the flagged columns (in the version's
/// key order when they are the same columns, else in column order); under FULL (every column
/// flagged) or NOTHING, unknown.
pub(crate) fn key_from_wal(relation: &Relation, version: &TableSchema) -> WalKey {
    match relation.replica_identity {
        b'd' | b'i' => {
            let flagged: Vec<usize> = (0..relation.columns.len())
                .filter(|&i| relation.columns[i].is_key)
                .collect();
            let in_version_order: Option<Vec<usize>> = version
                .key
                .iter()
                .map(|name| relation.columns.iter().position(|c| &c.name == name))
                .collect();
            match in_version_order {
                Some(key)
                    if key.iter().copied().collect::<BTreeSet<_>>()
                        == flagged.iter().copied().collect() =>
                {
                    WalKey::Known(key)
                }
                // No replica identity: no primary key — or a deferrable one, which PostgreSQL
                // does not take as the replica identity. The version says there is one.
                _ if flagged.is_empty() && !version.key.is_empty() => WalKey::Unknown(format!(
                    "the schema history's description of {}.{} does not match the WAL, and \
                     the WAL flags no key column (the table has no primary key then, or a \
                     deferrable one)",
                    relation.namespace, relation.name
                )),
                _ => WalKey::Known(flagged),
            }
        }
        identity => WalKey::Unknown(format!(
            "the schema history's description of {}.{} does not match the WAL, and under \
             REPLICA IDENTITY {} the WAL does not say which columns are the key",
            relation.namespace,
            relation.name,
            if identity == b'f' { "FULL" } else { "NOTHING" }
        )),
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

    /// How this version differs from `relation`, the Relation message of a change of its table
    /// (see the module docs for what is compared); empty when it matches.
    pub(crate) fn check(&self, relation: &Relation) -> Vec<Difference> {
        let mut differences = Vec::new();
        let wal: Vec<&str> = relation.columns.iter().map(|c| c.name.as_str()).collect();
        // A version that says which columns are generated is compared exactly; an older one
        // may hold generated columns the WAL leaves out: the WAL's columns must appear in it,
        // in order.
        let exact = self.columns.iter().any(|c| c.generated.is_some());
        let version: Vec<&ColumnSchema> = self
            .columns
            .iter()
            .filter(|c| c.generated != Some(true))
            .collect();
        let columns_match = if exact {
            version.len() == wal.len() && version.iter().zip(&wal).all(|(v, w)| v.name == *w)
        } else {
            let mut names = version.iter().map(|c| c.name.as_str());
            wal.iter().all(|w| names.any(|v| v == *w))
        };
        if columns_match {
            for column in &relation.columns {
                let Some(expected) = ResolvedType::of_builtin(column.type_oid) else {
                    continue;
                };
                if let Some(described) = version.iter().find(|c| c.name == column.name)
                    && described.kind != expected
                {
                    differences.push(Difference::Type {
                        column: column.name.clone(),
                        version: described.kind,
                        wal: column.type_oid,
                    });
                }
            }
        } else {
            differences.push(Difference::Columns {
                version: version.iter().map(|c| c.name.clone()).collect(),
                wal: wal.iter().map(|&w| w.to_owned()).collect(),
            });
        }
        for column in &self.key {
            if !wal.contains(&column.as_str()) {
                differences.push(Difference::KeyColumnMissing {
                    column: column.clone(),
                });
            }
        }
        if relation.replica_identity == b'd' {
            let flagged: BTreeSet<&str> = relation
                .columns
                .iter()
                .filter(|c| c.is_key)
                .map(|c| c.name.as_str())
                .collect();
            let key: BTreeSet<&str> = self.key.iter().map(String::as_str).collect();
            if flagged != key {
                differences.push(Difference::Key {
                    version: self.key.clone(),
                    wal: relation
                        .columns
                        .iter()
                        .filter(|c| c.is_key)
                        .map(|c| c.name.clone())
                        .collect(),
                });
            }
        }
        differences
    }

    /// What the capture needs of the relation of `relation`'s change, from this version of its
    /// table (once [`check`](Self::check)ed against it): its columns as the Relation message gives them (as of the change), each typed by
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
            key_unknown: None,
            columns,
            captured,
        }
    }
}

/// One version of the history: a table's schema from a position of the WAL on (a sink is
/// given them with each [`Piece`](crate::sink::Piece); the worker stores them).
///
/// ```
/// fn versions(piece: &bemi_worker::sink::Piece) -> Vec<(u32, u64)> {
///     piece.schemas.iter().map(|version| (version.relid, version.lsn)).collect()
/// }
/// assert!(versions(&Default::default()).is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchemaVersion {
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
            Some((held, _)) if *held > lsn => {
                tracing::debug!(
                    relid = schema.oid,
                    lsn = %format_lsn(lsn),
                    held = %format_lsn(*held),
                    "a schema version older than the one held is not applied"
                );
            }
            _ => {
                tracing::debug!(
                    relid = schema.oid,
                    lsn = %format_lsn(lsn),
                    columns = schema.columns.len(),
                    "schema version applied"
                );
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

/// The latest version of each table's schema at or before a position. (Ordered by the
/// `pg_lsn` column: an output column named `lsn` holding its text would take its place in
/// `ORDER BY`, and `0/CEBB4E0` sorts after `0/182CB600` as text — chaos seed 1.)
const LOAD_SQL: &str = "SELECT DISTINCT ON (v.relid) v.lsn::text AS lsn_text, v.schema \
       FROM _bemi_worker_schema v \
      WHERE v.database = $1 AND v.slot = $2 AND v.lsn <= $3::pg_lsn \
      ORDER BY v.relid, v.lsn DESC";

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

    /// A Relation message with `replica_identity`: `(name, type oid, flagged as key)`.
    fn wal(replica_identity: u8, columns: &[(&str, u32, bool)]) -> Relation {
        Relation {
            oid: 16_385,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity,
            columns: columns
                .iter()
                .map(|(name, type_oid, is_key)| Column {
                    is_key: *is_key,
                    name: (*name).into(),
                    type_oid: *type_oid,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    /// A version as the migration writes it now: `(name, base, array depth, generated)`.
    fn version(key: &[&str], columns: &[(&str, u32, u32, bool)]) -> TableSchema {
        TableSchema {
            oid: 16_385,
            schema: "public".into(),
            table: "orders".into(),
            key: key.iter().map(|&k| k.to_owned()).collect(),
            columns: columns
                .iter()
                .map(|&(name, base, array_depth, generated)| ColumnSchema {
                    name: name.into(),
                    kind: ResolvedType { base, array_depth },
                    generated: Some(generated),
                })
                .collect(),
            unknown: false,
        }
    }

    /// `orders (id int4, code text, tags int4[])`, primary key `id`.
    fn orders() -> TableSchema {
        version(
            &["id"],
            &[
                ("id", 23, 0, false),
                ("code", 25, 0, false),
                ("tags", 23, 1, false),
            ],
        )
    }

    #[test]
    fn a_version_that_matches_the_wal_has_no_differences() {
        let relation = wal(
            b'd',
            &[("id", 23, true), ("code", 25, false), ("tags", 1007, false)],
        );
        assert_eq!(orders().check(&relation), []);
        // As the migration writes it (oids as strings, whether each column is generated).
        let parsed = TableSchema::parse(
            br#"{"oid": "16385", "schema": "public", "table": "orders", "key": ["id"],
                 "columns": [{"name": "id", "type": {"base": "23", "array_depth": 0}, "generated": false},
                             {"name": "code", "type": {"base": "25", "array_depth": 0}, "generated": false},
                             {"name": "tags", "type": {"base": "23", "array_depth": 1}, "generated": false}]}"#,
        )
        .unwrap();
        assert_eq!(parsed, orders());
    }

    #[test]
    fn added_dropped_renamed_or_reordered_columns_differ() {
        let columns = |names: &[&str]| Difference::Columns {
            version: vec!["id".into(), "code".into(), "tags".into()],
            wal: names.iter().map(|&n| n.to_owned()).collect(),
        };
        for names in [
            &["id", "code", "tags", "added"][..],
            &["id", "tags"],
            &["id", "renamed", "tags"],
            &["id", "tags", "code"],
        ] {
            let relation = wal(
                b'f',
                &names.iter().map(|&n| (n, 25, true)).collect::<Vec<_>>(),
            );
            assert_eq!(orders().check(&relation), [columns(names)], "{names:?}");
        }
    }

    #[test]
    fn built_in_types_are_compared_and_the_databases_own_types_are_not() {
        // A column retyped: int4 → text, and text → int8.
        let relation = wal(
            b'f',
            &[("id", 25, true), ("code", 20, true), ("tags", 1007, true)],
        );
        assert_eq!(
            orders().check(&relation),
            [
                Difference::Type {
                    column: "id".into(),
                    version: ResolvedType {
                        base: 23,
                        array_depth: 0
                    },
                    wal: 25
                },
                Difference::Type {
                    column: "code".into(),
                    version: ResolvedType {
                        base: 25,
                        array_depth: 0
                    },
                    wal: 20
                }
            ]
        );
        // A built-in array is its element in one array: int4[] is not text[].
        let relation = wal(
            b'f',
            &[("id", 23, true), ("code", 25, true), ("tags", 1009, true)],
        );
        assert_eq!(orders().check(&relation).len(), 1);
        // A domain or enum (and its arrays) has its own oid in the WAL, its base type in the
        // version: not comparable without the catalog.
        let relation = wal(
            b'f',
            &[
                ("id", 23, true),
                ("code", 90_001, true),
                ("tags", 90_002, true),
            ],
        );
        assert_eq!(orders().check(&relation), []);
    }

    #[test]
    fn under_replica_identity_default_the_flagged_columns_must_be_the_key() {
        // The primary key replaced (DDL the history did not see), or a forged key.
        let relation = wal(
            b'd',
            &[("id", 23, false), ("code", 25, true), ("tags", 1007, false)],
        );
        assert_eq!(
            orders().check(&relation),
            [Difference::Key {
                version: vec!["id".into()],
                wal: vec!["code".into()]
            }]
        );
        // The primary key dropped.
        let relation = wal(
            b'd',
            &[
                ("id", 23, false),
                ("code", 25, false),
                ("tags", 1007, false),
            ],
        );
        assert_eq!(orders().check(&relation).len(), 1);
        // A composite key in another order is the same key.
        let mut composite = orders();
        composite.key = vec!["code".into(), "id".into()];
        let relation = wal(
            b'd',
            &[("id", 23, true), ("code", 25, true), ("tags", 1007, false)],
        );
        assert_eq!(composite.check(&relation), []);
        // Under FULL every column is flagged, under INDEX the flags name the replica identity
        // index (not necessarily the primary key): a key alone is not checked.
        for identity in [b'f', b'i'] {
            let relation = wal(
                identity,
                &[("id", 23, true), ("code", 25, true), ("tags", 1007, true)],
            );
            assert_eq!(composite.check(&relation), [], "{}", identity as char);
        }
    }

    #[test]
    fn a_key_column_that_is_not_in_the_wal_differs() {
        let mut forged = orders();
        forged.key = vec!["nope".into()];
        let relation = wal(
            b'f',
            &[("id", 23, true), ("code", 25, true), ("tags", 1007, true)],
        );
        assert_eq!(
            forged.check(&relation),
            [Difference::KeyColumnMissing {
                column: "nope".into()
            }]
        );
    }

    #[test]
    fn generated_columns_are_left_out_and_older_versions_may_hold_them() {
        let mut schema = orders();
        schema.columns.push(ColumnSchema {
            name: "total".into(),
            kind: ResolvedType {
                base: 1700,
                array_depth: 0,
            },
            generated: Some(true),
        });
        let relation = wal(
            b'f',
            &[("id", 23, true), ("code", 25, true), ("tags", 1007, true)],
        );
        assert_eq!(schema.check(&relation), []);
        // Recorded before the migration said which columns are generated: the WAL's columns
        // need only appear in it, in order.
        let older = TableSchema::parse(MESSAGE.as_bytes()).unwrap();
        let relation = wal(b'f', &[("id", 23, true), ("code", 25, true)]);
        assert_eq!(older.check(&relation), []);
        let relation = wal(b'f', &[("code", 25, true), ("id", 23, true)]);
        assert_eq!(older.check(&relation).len(), 1);
    }

    #[test]
    fn on_a_mismatch_the_key_comes_from_the_wal_or_is_unknown() {
        let columns = |flags: [bool; 3]| {
            [
                ("id", 23, flags[0]),
                ("code", 25, flags[1]),
                ("tags", 1007, flags[2]),
            ]
        };
        // DEFAULT and INDEX: the flagged columns, in the version's key order when they are its
        // key's columns, else in column order.
        let mut composite = orders();
        composite.key = vec!["code".into(), "id".into()];
        let relation = wal(b'd', &columns([true, true, false]));
        assert_eq!(
            key_from_wal(&relation, &composite),
            WalKey::Known(vec![1, 0])
        );
        let relation = wal(b'i', &columns([false, true, true]));
        assert_eq!(
            key_from_wal(&relation, &composite),
            WalKey::Known(vec![1, 2])
        );
        // DEFAULT without a flagged column: the table has no key, or a deferrable primary key
        // (no replica identity for PostgreSQL): unknown when the version has a key, none when
        // it has none either.
        let relation = wal(b'd', &columns([false, false, false]));
        assert!(matches!(
            key_from_wal(&relation, &orders()),
            WalKey::Unknown(_)
        ));
        let mut keyless = orders();
        keyless.key.clear();
        assert_eq!(key_from_wal(&relation, &keyless), WalKey::Known(vec![]));
        // FULL (every column flagged) and NOTHING: unknown, with why.
        for identity in [b'f', b'n'] {
            let relation = wal(identity, &columns([identity == b'f'; 3]));
            let WalKey::Unknown(reason) = key_from_wal(&relation, &orders()) else {
                panic!("a key under {}", identity as char);
            };
            assert!(reason.contains("public.orders"), "{reason}");
        }
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

    /// Chaos seed 1: after a restart, the history as of `0/1BE1D5D8` held a version at
    /// `0/CEBB4E0` and a later one at `0/182CB600`; the earlier was loaded (it sorts last as
    /// text), so the table's changes after the later DDL lost their key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_latest_version_is_loaded_whatever_its_lsn_looks_like_as_text() {
        use sqlx::Connection as _;

        let pg = tokio::task::spawn_blocking(bemi_dev::EphemeralPostgres::start)
            .await
            .unwrap()
            .unwrap();
        let mut conn = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
        sqlx::raw_sql(TABLE_SQL).execute(&mut conn).await.unwrap();
        let version =
            |columns: &str| format!(r#"{{"oid": 16385, "key": ["id"], "columns": [{columns}]}}"#);
        let id = r#"{"name": "id", "type": {"base": "20", "array_depth": 0}}"#;
        let extra = r#"{"name": "extra", "type": {"base": "23", "array_depth": 0}}"#;
        let versions = [
            SchemaVersion {
                lsn: 0x1D9_8ED8,
                relid: 16_385,
                json: version(id),
            },
            SchemaVersion {
                lsn: 0xCEB_B4E0,
                relid: 16_385,
                json: version(id),
            },
            SchemaVersion {
                lsn: 0x182C_B600,
                relid: 16_385,
                json: version(&format!("{id}, {extra}")),
            },
        ];
        insert(&mut conn, "app", "bemi", &versions).await.unwrap();

        let loaded = load(&mut conn, "app", "bemi", 0x1BE1_D5D8).await.unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(format_lsn(loaded[0].0), "0/182CB600");
        assert_eq!(loaded[0].1.columns.len(), 2);
        // As of a position before it, the one before.
        let loaded = load(&mut conn, "app", "bemi", 0x182C_B5FF).await.unwrap();
        assert_eq!(format_lsn(loaded[0].0), "0/CEBB4E0");
        conn.close().await.unwrap();
        tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
    }
}
