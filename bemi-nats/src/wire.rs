//! The messages of the change stream.
//!
//! One message holds the changes of one transaction (or of one chunk of a large one) that fall
//! in one partition, in stream order, as JSON:
//!
//! ```json
//! {"v":1,"database":"app","commit_lsn":22137600,"changes":[{"primary_key":"1","before":{},
//!  "after":{"id":1},"context":{"user_id":187234},"schema":"public","table":"todo",
//!  "operation":"CREATE","committed_at":1732270065892404,"queued_at":1732270065893000,
//!  "transaction_id":748,"position":22137512}]}
//! ```
//!
//! Times are microseconds since the Unix epoch; `before`, `after` and `context` are the JSON
//! objects themselves. A message's subject is `<stream>.changes.<partition>`, the partition a
//! hash of the table and the key (FNV-1a, as nats-server's `partition()` mapping computes it),
//! so that every change of a row goes through one partition, in commit order. Its
//! `Nats-Msg-Id` is made of its first change's unique key, so that a capture that publishes it
//! again after a crash is de-duplicated by the stream.
//!
//! A change too large for one message (the server's `max_payload`) is sent as the bytes of its
//! one-change message cut in consecutive **parts**, published one after the other into its
//! partition: each part has the headers `Bemi-Part: <index>/<count>` (from 1) and
//! `Bemi-Whole: <id>` (the whole message's id), and the id `<id>#<index>/<count>`. The store
//! joins the parts and stores the change once all are there.

use std::fmt::Write as _;

use bemi_core::protocol::Operation;
use serde::Deserialize;
use serde_json::value::RawValue;

use bemi_worker::sink::{ChangeRow, push_json_string};

/// The format's version, in every message.
pub(crate) const VERSION: u32 = 1;

/// Bytes a message keeps free below the server's `max_payload`, for its headers.
const HEADER_ROOM: usize = 1_024;

/// FNV-1a (32 bits) of `bytes`: nats-server's `partition()` hash.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The partition of a change of `schema.table` with `primary_key` among `partitions`: all
/// changes of one row (of one table, without a key) land in one partition.
pub(crate) fn partition(
    schema: &str,
    table: &str,
    primary_key: Option<&str>,
    partitions: u32,
) -> u32 {
    let key = primary_key.unwrap_or_default();
    let bytes = schema
        .bytes()
        .chain([b'.'])
        .chain(table.bytes())
        .chain([0])
        .chain(key.bytes());
    fnv1a(bytes) % partitions.max(1)
}

/// A stream name's hash, for the advisory locks of its partitions.
pub(crate) fn stream_lock_class(stream: &str) -> i32 {
    i32::from_ne_bytes(fnv1a(stream.bytes()).to_ne_bytes())
}

/// The header of a part: `<index>/<count>`, from 1.
pub(crate) const PART_HEADER: &str = "Bemi-Part";

/// The header of a part: the id of the message it is a part of.
pub(crate) const WHOLE_HEADER: &str = "Bemi-Whole";

/// Where a part belongs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Part {
    /// Its place, from 1.
    pub index: u32,
    /// How many parts the whole has.
    pub count: u32,
    /// The whole message's id.
    pub whole: String,
}

impl Part {
    /// The part described by a message's `Bemi-Part` and `Bemi-Whole` headers.
    pub(crate) fn from_headers(part: &str, whole: &str) -> Result<Self, ReadError> {
        let invalid = || ReadError::Part(format!("{PART_HEADER}: {part:?}"));
        let (index, count) = part.split_once('/').ok_or_else(invalid)?;
        let (index, count): (u32, u32) = (
            index.trim().parse().map_err(|_| invalid())?,
            count.trim().parse().map_err(|_| invalid())?,
        );
        if index == 0 || index > count || whole.is_empty() {
            return Err(invalid());
        }
        Ok(Self {
            index,
            count,
            whole: whole.to_owned(),
        })
    }
}

/// A message ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutgoingMessage {
    /// Its partition.
    pub partition: u32,
    /// Its `Nats-Msg-Id`.
    pub id: String,
    /// Its JSON (or, for a part, its slice of the whole's JSON).
    pub payload: Vec<u8>,
    /// How many changes it holds (a whole change counts on its last part).
    pub changes: usize,
    /// Which part of a larger message it is, if one.
    pub part: Option<Part>,
}

/// Encodes `rows` (one transaction's, in stream order) of `database` as the messages of each
/// partition, none larger than `max_payload`: a change that does not fit in one message is cut
/// into parts.
pub(crate) fn encode(
    source: Option<&str>,
    database: &str,
    commit_lsn: u64,
    rows: &[ChangeRow],
    partitions: u32,
    max_payload: usize,
) -> Vec<OutgoingMessage> {
    let budget = max_payload.saturating_sub(HEADER_ROOM).max(HEADER_ROOM);
    let mut by_partition: Vec<(u32, Vec<&ChangeRow>)> = Vec::new();
    for row in rows {
        let p = partition(
            &row.schema,
            &row.table,
            row.primary_key.as_deref(),
            partitions,
        );
        match by_partition.iter_mut().find(|(q, _)| *q == p) {
            Some((_, group)) => group.push(row),
            None => by_partition.push((p, vec![row])),
        }
    }
    let mut messages = Vec::new();
    let mut header = String::new();
    header.push_str(r#"{"v":"#);
    let _ = write!(header, "{VERSION}");
    if let Some(source) = source {
        header.push_str(r#","source":"#);
        push_json_string(&mut header, source);
    }
    header.push_str(r#","database":"#);
    push_json_string(&mut header, database);
    let _ = write!(header, r#","commit_lsn":{commit_lsn},"changes":["#);
    for (p, group) in by_partition {
        let mut payload = header.clone();
        let mut first: Option<&ChangeRow> = None;
        let mut count = 0;
        for row in group {
            let mut change = String::new();
            encode_change(&mut change, row);
            let alone = change.len() + header.len() + 2 > budget;
            if count > 0 && (alone || payload.len() + 1 + change.len() + 2 > budget) {
                payload.push_str("]}");
                messages.push(OutgoingMessage {
                    partition: p,
                    id: message_id(database, first.unwrap_or(row)),
                    payload: payload.into_bytes(),
                    changes: count,
                    part: None,
                });
                payload = header.clone();
                count = 0;
            }
            if alone {
                // One change in parts: the bytes of its one-change message, cut.
                payload.push_str(&change);
                payload.push_str("]}");
                let whole = message_id(database, row);
                let chunks: Vec<&[u8]> = payload.as_bytes().chunks(budget).collect();
                let parts = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
                for (index, chunk) in (1..).zip(&chunks) {
                    messages.push(OutgoingMessage {
                        partition: p,
                        id: format!("{whole}#{index}/{parts}"),
                        payload: chunk.to_vec(),
                        changes: if index == parts { 1 } else { 0 },
                        part: Some(Part {
                            index,
                            count: parts,
                            whole: whole.clone(),
                        }),
                    });
                }
                payload = header.clone();
                continue;
            }
            if count == 0 {
                first = Some(row);
            } else {
                payload.push(',');
            }
            payload.push_str(&change);
            count += 1;
        }
        if let Some(first) = first.filter(|_| count > 0) {
            payload.push_str("]}");
            messages.push(OutgoingMessage {
                partition: p,
                id: message_id(database, first),
                payload: payload.into_bytes(),
                changes: count,
                part: None,
            });
        }
    }
    messages
}

/// A message's id: its first change's unique key in `changes`.
fn message_id(database: &str, first: &ChangeRow) -> String {
    format!(
        "bemi:{database}:{:X}:{}.{}:{}",
        first.position,
        first.schema,
        first.table,
        first.operation.as_str()
    )
}

fn encode_change(out: &mut String, row: &ChangeRow) {
    out.push_str(r#"{"primary_key":"#);
    match &row.primary_key {
        Some(key) => push_json_string(out, key),
        None => out.push_str("null"),
    }
    out.push_str(r#","before":"#);
    out.push_str(&row.before);
    out.push_str(r#","after":"#);
    out.push_str(&row.after);
    out.push_str(r#","context":"#);
    out.push_str(&row.context);
    out.push_str(r#","schema":"#);
    push_json_string(out, &row.schema);
    out.push_str(r#","table":"#);
    push_json_string(out, &row.table);
    let _ = write!(
        out,
        r#","operation":"{}","committed_at":{},"queued_at":{},"transaction_id":{},"position":{}}}"#,
        row.operation.as_str(),
        row.committed_at,
        row.queued_at,
        row.transaction_id,
        row.position
    );
}

/// A message as read back by the store, borrowing from its payload.
#[derive(Debug, Deserialize)]
pub(crate) struct IncomingMessage<'a> {
    /// The format's version.
    pub v: u32,
    /// The source cluster's system identifier (absent in messages of earlier versions).
    #[serde(default, borrow)]
    pub source: Option<std::borrow::Cow<'a, str>>,
    /// The source database.
    #[serde(borrow)]
    pub database: std::borrow::Cow<'a, str>,
    /// The source transaction's commit LSN.
    #[allow(dead_code)]
    pub commit_lsn: u64,
    /// Its changes.
    #[serde(borrow)]
    pub changes: Vec<IncomingChange<'a>>,
}

/// A change of an [`IncomingMessage`].
#[derive(Debug, Deserialize)]
pub(crate) struct IncomingChange<'a> {
    #[serde(borrow)]
    pub primary_key: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    pub before: &'a RawValue,
    #[serde(borrow)]
    pub after: &'a RawValue,
    #[serde(borrow)]
    pub context: &'a RawValue,
    #[serde(borrow)]
    pub schema: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub table: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub operation: std::borrow::Cow<'a, str>,
    pub committed_at: i64,
    pub queued_at: i64,
    pub transaction_id: u64,
    pub position: u64,
}

/// Why a message cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("not a bemi change message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("format version {0}, this store reads {VERSION}: upgrade `bemi store`")]
    Version(u32),
    #[error("unknown operation {0:?}")]
    Operation(String),
    #[error("a part of a split message with an invalid header ({0}): not written by bemi")]
    Part(String),
}

impl<'a> IncomingMessage<'a> {
    /// Reads a message's payload.
    pub(crate) fn read(payload: &'a [u8]) -> Result<Self, ReadError> {
        let message: Self = serde_json::from_slice(payload)?;
        if message.v != VERSION {
            return Err(ReadError::Version(message.v));
        }
        for change in &message.changes {
            change.operation()?;
        }
        Ok(message)
    }
}

impl IncomingChange<'_> {
    /// The change's operation.
    pub(crate) fn operation(&self) -> Result<Operation, ReadError> {
        self.operation
            .parse()
            .map_err(|_| ReadError::Operation(self.operation.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn row(table: &str, key: Option<&str>, position: u64, context: &str) -> ChangeRow {
        let mut row = ChangeRow::default();
        row.primary_key = key.map(str::to_owned);
        row.before = "{}".into();
        row.after = format!(r#"{{"id":{position},"note":"\"<x>\""}}"#);
        row.context = Arc::from(context);
        row.schema = Arc::from("public");
        row.table = Arc::from(table);
        row.operation = Operation::Create;
        row.committed_at = 1_732_270_065_892_404;
        row.queued_at = 1_732_270_065_893_000;
        row.transaction_id = 748;
        row.position = position;
        row
    }

    #[test]
    fn partitions_match_the_servers_hash() {
        // nats-server 2.9's partition(4, …) put "publicusers" in partition 0.
        assert_eq!(fnv1a(*b"publicusers") % 4, 0);
        // One row, one partition; the count bounds them.
        let p = partition("public", "todo", Some("26"), 8);
        assert_eq!(p, partition("public", "todo", Some("26"), 8));
        assert!(p < 8);
        assert_eq!(partition("public", "todo", None, 1), 0);
    }

    #[test]
    fn a_transaction_becomes_one_message_per_partition_and_reads_back() {
        let rows: Vec<ChangeRow> = (1..=20)
            .map(|i| row("todo", Some(&i.to_string()), 100 + i, r#"{"user_id":7}"#))
            .collect();
        let messages = encode(None, "app", 999, &rows, 4, 1 << 20);
        assert!(messages.len() <= 4);
        assert_eq!(messages.iter().map(|m| m.changes).sum::<usize>(), 20);
        let mut positions = Vec::new();
        for message in &messages {
            let read = IncomingMessage::read(&message.payload).unwrap();
            assert_eq!(read.database, "app");
            assert_eq!(read.commit_lsn, 999);
            assert_eq!(read.changes.len(), message.changes);
            for change in &read.changes {
                assert_eq!(
                    partition(
                        &change.schema,
                        &change.table,
                        change.primary_key.as_deref(),
                        4
                    ),
                    message.partition
                );
                assert_eq!(change.context.get(), r#"{"user_id":7}"#);
                assert_eq!(change.operation().unwrap(), Operation::Create);
                positions.push(change.position);
            }
            // The id is the first change's unique key.
            assert!(message.id.starts_with("bemi:app:"), "{}", message.id);
        }
        positions.sort_unstable();
        assert_eq!(positions, (101..=120).collect::<Vec<_>>());
    }

    #[test]
    fn messages_stay_under_the_payload_limit_and_ids_are_stable() {
        let rows: Vec<ChangeRow> = (1..=50)
            .map(|i| row("todo", None, 100 + i, r#"{"user_id":7}"#))
            .collect();
        let messages = encode(None, "app", 999, &rows, 1, 4_096);
        assert!(messages.len() > 1);
        assert!(
            messages
                .iter()
                .all(|m| m.payload.len() <= 4_096 - HEADER_ROOM)
        );
        assert_eq!(messages.iter().map(|m| m.changes).sum::<usize>(), 50);
        // Encoding again (a republish after a crash) gives the same ids.
        assert_eq!(encode(None, "app", 999, &rows, 1, 4_096), messages);
        let ids: std::collections::HashSet<&str> = messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids.len(), messages.len());
    }

    #[test]
    fn a_change_larger_than_the_limit_goes_in_parts_that_join_into_it() {
        let mut big = row("todo", Some("1"), 5, "{}");
        big.after = format!(r#"{{"blob":"{}é"}}"#, "x".repeat(10_000));
        let rows = [
            row("todo", Some("1"), 4, "{}"),
            big,
            row("todo", Some("1"), 6, "{}"),
        ];
        let messages = encode(None, "app", 9, &rows, 1, 4_096);
        // One message before, the parts, one after: in order, each under the limit.
        assert!(
            messages
                .iter()
                .all(|m| m.payload.len() <= 4_096 - HEADER_ROOM)
        );
        assert_eq!(messages.first().unwrap().part, None);
        assert_eq!(messages.last().unwrap().part, None);
        let parts = &messages[1..messages.len() - 1];
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let count = u32::try_from(parts.len()).unwrap();
        let mut whole = Vec::new();
        for (index, message) in (1..).zip(parts) {
            let part = message.part.as_ref().unwrap();
            assert_eq!((part.index, part.count), (index, count));
            assert_eq!(message.id, format!("{}#{index}/{count}", part.whole));
            let header = format!("{index}/{count}");
            assert_eq!(Part::from_headers(&header, &part.whole).unwrap(), *part);
            whole.extend_from_slice(&message.payload);
        }
        assert_eq!(parts.iter().map(|m| m.changes).sum::<usize>(), 1);
        let read = IncomingMessage::read(&whole).unwrap();
        assert_eq!(read.changes.len(), 1);
        assert_eq!(read.changes[0].position, 5);
        assert!(read.changes[0].after.get().ends_with("xé\"}"));
        // Encoding again gives the same parts (a republish is de-duplicated).
        assert_eq!(encode(None, "app", 9, &rows, 1, 4_096), messages);
    }

    #[test]
    fn part_headers_are_checked() {
        assert!(Part::from_headers("0/2", "w").is_err());
        assert!(Part::from_headers("3/2", "w").is_err());
        assert!(Part::from_headers("x", "w").is_err());
        assert!(Part::from_headers("1/2", "").is_err());
    }

    #[test]
    fn other_messages_are_refused_with_a_reason() {
        assert!(matches!(
            IncomingMessage::read(b"hello"),
            Err(ReadError::Json(_))
        ));
        assert!(matches!(
            IncomingMessage::read(br#"{"v":2,"database":"a","commit_lsn":1,"changes":[]}"#),
            Err(ReadError::Version(2))
        ));
    }
}
