//! Fuzz targets of the capture's decoding (run with `BEMI_FUZZ_SECONDS=N` for a time budget;
//! see `bemi_fuzz`): pgoutput messages — well-formed, then truncated, flipped or padded —
//! go through the decoder, the assembler and the JSON conversion. Nothing may panic, and every
//! row that comes out must be what the `changes` table accepts: JSON objects, a context object,
//! a key that is text or a JSON array, and, for input PostgreSQL could send, no NUL character
//! (which `jsonb` refuses).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::assembler::Assembler;
use crate::config::WorkerConfig;
use crate::pgoutput::{PgOutput, decode};
use crate::rows::ChangeRow;
use crate::schema_history::{ColumnSchema, ResolvedType, TableSchema};

const RELATION: u32 = 16_385;

/// Type oids of every kind the JSON conversion knows, arrays of them, and unknown ones.
const TYPES: &[u32] = &[
    16, 17, 20, 21, 23, 25, 26, 114, 700, 701, 1082, 1114, 1184, 1186, 1700, 2950, 3802, 1000,
    1007, 1009, 1016, 1022, 1115, 1185, 199, 1231, 3807, 16_999, 90_001,
];

/// Texts that probe the conversions: numbers at their edges, booleans, JSON with escapes,
/// array literals, timestamps of every shape, quotes and comment markers.
const TRICKY: &[&str] = &[
    "",
    "0",
    "-0",
    "00012",
    "1e309",
    "-1e-400",
    "1.5E+7",
    "NaN",
    "Infinity",
    "-Infinity",
    "t",
    "f",
    "true",
    "null",
    "{}",
    "[]",
    r#"{"a":"\u0000"}"#,
    r#"["\ud800"]"#,
    r#"{"a":1,"a":2}"#,
    "{1,2,NULL}",
    r#"{"a\"b",NULL,"NULL"}"#,
    "{{1,2},{3,4}}",
    "{{1},{2,3}}",
    "[1:2]={1,2}",
    "{",
    "}",
    r#"{"unterminated}"#,
    "2024-05-01 12:00:00",
    "2024-05-01 12:00:00+05:30",
    "infinity",
    "-infinity",
    "294276-12-31 23:59:59.999999+00",
    "2024-05-01 12:00:00 BC",
    "\"",
    "\\",
    "*/",
    "/*Bemi {} Bemi*/",
    "\u{feff}",
    "é",
    "\u{10ffff}",
];

/// A column value as pgoutput sends it.
#[derive(Debug, Clone)]
enum Cell {
    Null,
    UnchangedToast,
    Text(Vec<u8>),
}

fn cell() -> impl Strategy<Value = Cell> {
    prop_oneof![
        1 => Just(Cell::Null),
        1 => Just(Cell::UnchangedToast),
        4 => prop::sample::select(TRICKY).prop_map(|t| Cell::Text(t.as_bytes().to_vec())),
        // Text PostgreSQL could send: any characters but NUL.
        4 => "[^\u{0}]{0,24}".prop_map(|t| Cell::Text(t.into_bytes())),
        1 => vec(any::<u8>(), 0..24).prop_map(Cell::Text),
    ]
}

/// A column of the relation: name, type oid, key flag.
fn column() -> impl Strategy<Value = (String, u32, bool)> {
    (
        "[a-z_\"\\\\*/ é]{1,8}",
        prop::sample::select(TYPES),
        any::<bool>(),
    )
}

/// A change message of the relation, before encoding.
#[derive(Debug, Clone)]
enum Change {
    Insert(Vec<Cell>),
    Update(Option<(bool, Vec<Cell>)>, Vec<Cell>),
    Delete(bool, Vec<Cell>),
    Truncate(u8),
}

impl Change {
    /// Whether PostgreSQL could send this change of a table of `columns`: one value per
    /// column, no NUL byte in a text, and valid JSON in `json` and `jsonb` columns (their
    /// input functions check it; the worker passes such values through).
    fn could_come_from_postgresql(&self, columns: &[(String, u32, bool)]) -> bool {
        let tuples: Vec<&Vec<Cell>> = match self {
            Self::Insert(new) => vec![new],
            Self::Update(old, new) => old.iter().map(|(_, old)| old).chain([new]).collect(),
            Self::Delete(_, old) => vec![old],
            Self::Truncate(_) => Vec::new(),
        };
        tuples.iter().all(|cells| {
            cells.len() == columns.len()
                && cells
                    .iter()
                    .zip(columns)
                    .all(|(cell, (_, type_oid, _))| match cell {
                        Cell::Text(bytes) => {
                            !bytes.contains(&0)
                                && match type_oid {
                                    114 | 3802 => {
                                        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
                                            .is_ok()
                                    }
                                    199 | 3807 => false,
                                    _ => true,
                                }
                        }
                        Cell::Null | Cell::UnchangedToast => true,
                    })
        })
    }
}

fn change(columns: usize) -> impl Strategy<Value = Change> {
    // Mostly as many values as columns; sometimes another count.
    let width = prop_oneof![8 => Just(columns), 1 => 0..columns + 3];
    let row = move || width.clone().prop_flat_map(|n| vec(cell(), n));
    prop_oneof![
        3 => row().prop_map(Change::Insert),
        3 => (proptest::option::of((any::<bool>(), row())), row())
            .prop_map(|(old, new)| Change::Update(old, new)),
        2 => (any::<bool>(), row()).prop_map(|(full, old)| Change::Delete(full, old)),
        1 => any::<u8>().prop_map(Change::Truncate),
    ]
}

/// What a mutation does to an encoded message.
#[derive(Debug, Clone)]
enum Mutation {
    None,
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => Just(Mutation::None),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => (any::<prop::sample::Index>(), 1..=255u8).prop_map(|(at, bits)| Mutation::Flip(at, bits)),
        1 => (any::<prop::sample::Index>(), vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
    ]
}

impl Mutation {
    fn apply(&self, mut message: Vec<u8>) -> Vec<u8> {
        match self {
            Self::None => {}
            Self::Truncate(at) => message.truncate(at.index(message.len() + 1)),
            Self::Flip(at, bits) => {
                if !message.is_empty() {
                    let at = at.index(message.len());
                    message[at] ^= bits;
                }
            }
            Self::Insert(at, bytes) => {
                let at = at.index(message.len() + 1);
                message.splice(at..at, bytes.iter().copied());
            }
        }
        message
    }
}

fn encode_tuple(out: &mut Vec<u8>, cells: &[Cell]) {
    out.extend(u16::try_from(cells.len()).unwrap_or(u16::MAX).to_be_bytes());
    for cell in cells {
        match cell {
            Cell::Null => out.push(b'n'),
            Cell::UnchangedToast => out.push(b'u'),
            Cell::Text(bytes) => {
                out.push(b't');
                out.extend(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
                out.extend(bytes);
            }
        }
    }
}

fn encode_relation(columns: &[(String, u32, bool)]) -> Vec<u8> {
    let mut out = vec![b'R'];
    out.extend(RELATION.to_be_bytes());
    out.extend(b"public\0orders\0");
    out.push(b'd');
    out.extend(
        u16::try_from(columns.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    for (name, type_oid, key) in columns {
        out.push(u8::from(*key));
        out.extend(name.as_bytes());
        out.push(0);
        out.extend(type_oid.to_be_bytes());
        out.extend((-1i32).to_be_bytes());
    }
    out
}

fn encode_change(change: &Change) -> Vec<u8> {
    let mut out = Vec::new();
    match change {
        Change::Insert(new) => {
            out.push(b'I');
            out.extend(RELATION.to_be_bytes());
            out.push(b'N');
            encode_tuple(&mut out, new);
        }
        Change::Update(old, new) => {
            out.push(b'U');
            out.extend(RELATION.to_be_bytes());
            if let Some((full, old)) = old {
                out.push(if *full { b'O' } else { b'K' });
                encode_tuple(&mut out, old);
            }
            out.push(b'N');
            encode_tuple(&mut out, new);
        }
        Change::Delete(full, old) => {
            out.push(b'D');
            out.extend(RELATION.to_be_bytes());
            out.push(if *full { b'O' } else { b'K' });
            encode_tuple(&mut out, old);
        }
        Change::Truncate(options) => {
            out.push(b'T');
            out.extend(1u32.to_be_bytes());
            out.push(*options);
            out.extend(RELATION.to_be_bytes());
        }
    }
    out
}

/// The history's description of the relation: its key columns and types, with the unknown
/// type oids resolved as a domain over numeric would be.
fn schema_of(columns: &[(String, u32, bool)]) -> TableSchema {
    TableSchema {
        oid: RELATION,
        schema: "public".into(),
        table: "orders".into(),
        key: columns
            .iter()
            .filter(|(_, _, key)| *key)
            .map(|(name, _, _)| name.clone())
            .collect(),
        columns: columns
            .iter()
            .map(|(name, type_oid, _)| ColumnSchema {
                name: name.clone(),
                kind: ResolvedType {
                    base: if *type_oid > 16_384 { 1700 } else { *type_oid },
                    array_depth: u32::from(*type_oid == 90_001),
                },
                generated: Some(false),
            })
            .collect(),
        unknown: false,
    }
}

/// Whether a string or key anywhere in `value` holds a NUL character.
fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || holds_nul(item)),
        _ => false,
    }
}

/// A stored row must be what `changes` accepts (without a NUL character if `pristine`: of
/// input PostgreSQL could send, the context included); its table has `key_columns`.
fn check_row(row: &ChangeRow, pristine: bool, key_columns: usize) -> Result<(), TestCaseError> {
    for (what, text) in [
        ("before", row.before.as_str()),
        ("after", row.after.as_str()),
        ("context", &*row.context),
    ] {
        // Valid JSON for PostgreSQL: numbers of any size (serde_json's `Value` would refuse
        // 1e400, which `jsonb` takes as a numeric).
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|e| TestCaseError::fail(format!("{what} is not JSON ({e}): {text}")))?;
        prop_assert!(text.starts_with('{'), "{} is not an object: {}", what, text);
        if pristine && let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
            prop_assert!(!holds_nul(&value), "{} holds a NUL: {}", what, text);
        }
    }
    // A composite key is a JSON array; a single-column key is the value's text.
    if let Some(key) = &row.primary_key
        && key_columns > 1
    {
        let parsed = serde_json::from_str::<Vec<serde::de::IgnoredAny>>(key);
        prop_assert!(parsed.is_ok(), "a bad composite key: {}", key);
    }
    Ok(())
}

#[test]
fn fuzz_pgoutput_decoder_and_assembler() {
    // Column names are unique in a table.
    let columns = vec(column(), 0..6).prop_map(|mut columns| {
        let mut seen = std::collections::HashSet::new();
        columns.retain(|(name, _, _)| seen.insert(name.clone()));
        columns
    });
    let input = columns.prop_flat_map(|columns| {
        let width = columns.len();
        (
            Just(columns),
            vec((change(width), mutation()), 1..12),
            mutation(),
            prop_oneof![
                "[^\u{0}]{0,40}".prop_map(String::into_bytes),
                vec(any::<u8>(), 0..40),
                prop::sample::select(TRICKY).prop_map(|t| t.as_bytes().to_vec()),
            ],
        )
    });
    let config = WorkerConfig::new("postgres://fuzz@127.0.0.1/fuzz");
    bemi_fuzz::check(
        "pgoutput decoder and assembler",
        2_000,
        input,
        |(columns, changes, relation_mutation, context)| {
            // A mutated Relation message: decoding it must not panic.
            let _ = decode(&relation_mutation.apply(encode_relation(&columns)));
            let relation = match decode(&encode_relation(&columns)) {
                Ok(PgOutput::Relation(relation)) => relation,
                other => return Err(TestCaseError::fail(format!("relation: {other:?}"))),
            };
            let mut assembler = Assembler::new(Default::default(), 4);
            assembler.relation(RELATION, schema_of(&columns).describe(&relation, &config));
            assembler.begin(1_000_000, 700, 0);
            assembler.context_message(&context);
            let mut rows = Vec::new();
            let mut unreal = std::collections::HashSet::new();
            for (position, (change, mutation)) in (1_000..).zip(&changes) {
                // Input PostgreSQL could not send must only not panic.
                if !matches!(mutation, Mutation::None)
                    || !change.could_come_from_postgresql(&columns)
                {
                    unreal.insert(position);
                }
                let bytes = mutation.apply(encode_change(change));
                let Ok(decoded) = decode(&bytes) else {
                    continue;
                };
                if let Ok(Some(piece)) = assembler.change(decoded, position, 0) {
                    rows.extend(piece.rows);
                }
            }
            if let Ok(piece) = assembler.commit(1_000_000, 1_000_100) {
                rows.extend(piece.rows);
            }
            for row in rows.iter().filter(|row| !unreal.contains(&row.position)) {
                let key_columns = columns.iter().filter(|(_, _, key)| *key).count();
                check_row(row, !context.contains(&0), key_columns)?;
            }
            Ok(())
        },
    )
    .unwrap_or_else(|failure| panic!("{failure}"));
}

#[test]
fn fuzz_arbitrary_bytes_never_panic_the_decoder() {
    bemi_fuzz::check(
        "pgoutput decoder on arbitrary bytes",
        5_000,
        (
            prop::sample::select(&b"RYOIUDTBCMX"[..]),
            vec(any::<u8>(), 0..64),
        ),
        |(tag, rest)| {
            let mut message = vec![tag];
            message.extend(rest);
            let _ = decode(&message);
            Ok(())
        },
    )
    .unwrap_or_else(|failure| panic!("{failure}"));
}

#[test]
fn fuzz_sqlcommenter_bodies_always_become_a_storable_object() {
    use crate::assembler::parse_sqlcommenter;

    bemi_fuzz::check(
        "sqlcommenter comment bodies",
        5_000,
        prop_oneof![
            r"([a-z%0-9_]{0,6}=('([^'\\]|\\'|%[0-9A-Fa-f]{2}|%%[0-9A-F]{2}){0,12}'|[a-z0-9%]{0,6}),?){0,4}",
            "[^\u{0}]{0,40}",
            vec(any::<u8>(), 0..40).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ],
        |body| {
            let context = parse_sqlcommenter(body.as_bytes());
            prop_assert!(!context.contains("\\u0000"), "{context}");
            let value: serde_json::Value = serde_json::from_str(&context)
                .map_err(|e| TestCaseError::fail(format!("{e}: {context}")))?;
            prop_assert!(value.is_object(), "{context}");
            Ok(())
        },
    )
    .unwrap_or_else(|failure| panic!("{failure}"));
}
