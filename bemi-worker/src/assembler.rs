//! Turns the decoded replication stream into `changes` rows, transaction by transaction, and
//! stitches each row change to its context.
//!
//! **Stitching rule:** a row change takes the context of the most recent `_bemi` message that
//! precedes it in the same transaction (`{}` when there is none). The statement-level trigger
//! emits one message per statement, and `{}` for a statement without context after one with a
//! context; per-row messages of Bemi's own triggers satisfy the same rule. A message that is not
//! a JSON object is stored as a marker context (see [`parse_context`]), never dropped silently
//! and never a crash.
//!
//! **Resuming:** transactions that committed at or before the last applied position are
//! skipped, and so are the rows of a partly written (chunked) transaction up to the last row
//! that was written.
//!
//! **Chunks:** a transaction's rows are handed over in [`Piece`]s of at most `chunk_rows` rows,
//! so a transaction of a million rows never sits in memory whole.

use std::collections::HashMap;
use std::sync::Arc;

use crate::catalog::RelationInfo;
use crate::error::StreamError;
use crate::metrics::WorkerMetrics;
use crate::pgoutput::PgOutput;
use crate::rows::{self, ChangeMeta, ChangeRow};
use crate::schema_history::{SchemaVersion, TableSchema};

/// Microseconds between the PostgreSQL epoch (2000-01-01) and the Unix epoch.
pub(crate) const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// The key of the marker context that replaces a malformed `_bemi` message.
pub(crate) const INVALID_CONTEXT_KEY: &str = "_bemi_invalid_context";

/// Where the destination left off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ResumePoint {
    /// The end LSN of the last transaction written whole.
    pub last_lsn: u64,
    /// A transaction written in part: its commit LSN and the position of its last written row.
    pub partial: Option<Partial>,
}

impl ResumePoint {
    /// The position after writing `pieces` on top of this one.
    pub(crate) fn advanced(mut self, pieces: &[Piece]) -> Self {
        for piece in pieces {
            match piece.end_lsn {
                Some(end_lsn) => {
                    self.last_lsn = self.last_lsn.max(end_lsn);
                    self.partial = None;
                }
                None => {
                    if let Some(last) = piece.rows.last() {
                        self.partial = Some(Partial {
                            commit_lsn: piece.commit_lsn,
                            position: last.position,
                        });
                    }
                }
            }
        }
        self
    }
}

/// A transaction written in part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Partial {
    /// The transaction's commit LSN.
    pub commit_lsn: u64,
    /// The position (LSN) of the last row of it that was written.
    pub position: u64,
}

/// Rows of one transaction (all of them, or a chunk of a large one), handed to a sink in
/// commit order.
///
/// ```
/// let piece = bemi_worker::sink::Piece::default();
/// assert!(piece.rows.is_empty() && piece.end_lsn.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Piece {
    /// The transaction's commit LSN.
    pub commit_lsn: u64,
    /// The rows (possibly none).
    pub rows: Vec<ChangeRow>,
    /// Set on the last piece of a transaction: the end LSN of its commit record.
    pub end_lsn: Option<u64>,
    /// Versions of the schema history read in the transaction since the last piece, stored
    /// with the rows.
    pub schemas: Vec<SchemaVersion>,
}

#[derive(Debug)]
struct OpenTransaction {
    xid: u64,
    commit_lsn: u64,
    committed_at: i64,
    context: Arc<str>,
    /// The context came from a non-empty `_bemi` message (an adapter's or a Bemi comment's).
    context_from_bemi: bool,
    /// No row since the latest `_bemi` message: a sqlcommenter message now belongs to the
    /// same statement, whose Bemi context wins.
    no_row_since_context: bool,
    /// The body of the sqlcommenter message last dropped for the Bemi context (the trigger
    /// repeats it for each table a statement writes).
    shadowed_comment: Option<Box<[u8]>>,
    skip_all: bool,
    skip_through: Option<u64>,
    rows: Vec<ChangeRow>,
    schemas: Vec<SchemaVersion>,
}

/// The per-connection state: relation descriptions and the open transaction.
#[derive(Debug)]
pub(crate) struct Assembler {
    relations: HashMap<u32, RelationInfo>,
    open: Option<OpenTransaction>,
    resume: ResumePoint,
    chunk_rows: usize,
    empty_context: Arc<str>,
    skip_unchanged: bool,
    /// Where left-out UPDATEs are counted.
    metrics: Option<Arc<WorkerMetrics>>,
    /// Checks signed contexts, when the worker has the application's context key.
    signatures: Option<crate::signed_context::ContextChecker>,
}

impl Assembler {
    /// An assembler that resumes after `resume` and hands over at most `chunk_rows` rows at a
    /// time.
    pub(crate) fn new(resume: ResumePoint, chunk_rows: usize) -> Self {
        Self {
            relations: HashMap::new(),
            open: None,
            resume,
            chunk_rows: chunk_rows.max(1),
            empty_context: Arc::from("{}"),
            skip_unchanged: false,
            metrics: None,
            signatures: None,
        }
    }

    /// Checks each `_bemi` message's signature with `key` (see [`crate::signed_context`]).
    pub(crate) fn with_context_key(mut self, key: Option<bemi_core::signing::ContextKey>) -> Self {
        self.signatures = key.map(crate::signed_context::ContextChecker::new);
        self
    }

    /// Leaves out UPDATEs that changed nothing (`skip_unchanged`) or only ignored columns
    /// (see [`rows::skipped_update`]), counting them in `metrics`.
    pub(crate) fn with_update_rules(
        mut self,
        skip_unchanged: bool,
        metrics: Arc<WorkerMetrics>,
    ) -> Self {
        self.skip_unchanged = skip_unchanged;
        self.metrics = Some(metrics);
        self
    }

    /// Records a relation's description (from a Relation message).
    pub(crate) fn relation(&mut self, oid: u32, info: RelationInfo) {
        self.relations.insert(oid, info);
    }

    /// Whether a transaction is open.
    pub(crate) fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// The id of the transaction being assembled, if one is open.
    pub(crate) fn open_xid(&self) -> Option<u64> {
        self.open.as_ref().map(|open| open.xid)
    }

    /// Starts a transaction (a Begin message; `commit_time` in µs since the PostgreSQL epoch).
    pub(crate) fn begin(&mut self, commit_lsn: u64, xid: u64, commit_time: i64) {
        let skip_all = commit_lsn < self.resume.last_lsn;
        let skip_through = self
            .resume
            .partial
            .filter(|p| p.commit_lsn == commit_lsn)
            .map(|p| p.position);
        self.open = Some(OpenTransaction {
            xid,
            commit_lsn,
            committed_at: commit_time + PG_EPOCH_OFFSET_MICROS,
            context: Arc::clone(&self.empty_context),
            context_from_bemi: false,
            no_row_since_context: false,
            shadowed_comment: None,
            skip_all,
            skip_through,
            rows: Vec::new(),
            schemas: Vec::new(),
        });
    }

    /// A transactional `_bemi` message: later rows of the transaction take this context.
    pub(crate) fn context_message(&mut self, content: &[u8]) {
        if let Some(open) = &mut self.open {
            open.context = match &mut self.signatures {
                None => parse_context(content),
                Some(checker) => {
                    let (body, verdict) = checker.check(content, open.xid, open.committed_at);
                    crate::signed_context::apply(parse_context(&body), verdict)
                }
            };
            open.context_from_bemi = &*open.context != "{}";
            open.no_row_since_context = true;
            open.shadowed_comment = None;
        }
    }

    /// A transactional `_bemi_sqlcommenter` message (the body of a statement's trailing
    /// sqlcommenter comment): later rows of the transaction take its decoded keys — unless a
    /// Bemi context was emitted for the same statement (no row since it), which wins.
    pub(crate) fn sqlcommenter_message(&mut self, content: &[u8]) {
        let Some(open) = &mut self.open else {
            return;
        };
        if open.context_from_bemi
            && (open.no_row_since_context || open.shadowed_comment.as_deref() == Some(content))
        {
            open.shadowed_comment = Some(content.into());
            return;
        }
        open.context = parse_sqlcommenter(content);
        open.context_from_bemi = false;
    }

    /// A transactional `_bemi_schema` message at `lsn`: the new version of a table's schema,
    /// to apply now — `None` when its transaction was stored already (its versions are in the
    /// loaded history) or the message does not parse (a warning says so). The version also goes
    /// into the transaction's next piece, to be stored with it.
    pub(crate) fn schema_message(&mut self, lsn: u64, content: &[u8]) -> Option<TableSchema> {
        let open = self.open.as_mut()?;
        if open.skip_all
            || open.skip_through.is_some_and(|through| lsn <= through)
            || content.is_empty()
        {
            // The empty message after a DDL's descriptions only takes a position tie (see the
            // migration's _bemi_schema_trigger_func).
            if !content.is_empty() {
                tracing::debug!(
                    lsn = %crate::lsn::format_lsn(lsn),
                    commit = %crate::lsn::format_lsn(open.commit_lsn),
                    "a schema message of a transaction stored already is skipped"
                );
            }
            return None;
        }
        match TableSchema::parse(content) {
            Ok(schema) => {
                open.schemas.push(SchemaVersion {
                    lsn,
                    relid: schema.oid,
                    json: String::from_utf8_lossy(content).into_owned(),
                });
                Some(schema)
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "a _bemi_schema message does not parse; its table keeps the schema the \
                     history had for it"
                );
                None
            }
        }
    }

    /// A row change or TRUNCATE at `position`, sent at `queued_at` (µs since the PostgreSQL
    /// epoch). Returns a full chunk when the transaction has `chunk_rows` rows waiting.
    pub(crate) fn change(
        &mut self,
        change: PgOutput<'_>,
        position: u64,
        queued_at: i64,
    ) -> Result<Option<Piece>, StreamError> {
        let relations = &self.relations;
        let open = self.open.as_mut().ok_or(StreamError::NoTransaction)?;
        open.no_row_since_context = false;
        if open.skip_all || open.skip_through.is_some_and(|through| position <= through) {
            return Ok(None);
        }
        let meta = |open: &OpenTransaction| ChangeMeta {
            context: Arc::clone(&open.context),
            committed_at: open.committed_at,
            queued_at: queued_at + PG_EPOCH_OFFSET_MICROS,
            transaction_id: open.xid,
            position,
        };
        let relation = |oid: u32| relations.get(&oid).ok_or(StreamError::UnknownRelation(oid));
        match change {
            PgOutput::Insert { relation: oid, new } => {
                let info = relation(oid)?;
                if info.captured {
                    open.rows.push(rows::insert(info, &new, meta(open)));
                }
            }
            PgOutput::Update {
                relation: oid,
                old,
                new,
            } => {
                let info = relation(oid)?;
                if !info.captured {
                } else if let Some(reason) =
                    rows::skipped_update(info, old.as_ref(), &new, self.skip_unchanged)
                {
                    if let Some(metrics) = &self.metrics {
                        metrics.record_skipped_update(&info.schema, &info.table, reason);
                    }
                } else {
                    open.rows
                        .push(rows::update(info, old.as_ref(), &new, meta(open)));
                }
            }
            PgOutput::Delete { relation: oid, old } => {
                let info = relation(oid)?;
                if info.captured {
                    open.rows.push(rows::delete(info, &old, meta(open)));
                }
            }
            PgOutput::Truncate { relations, .. } => {
                for oid in relations {
                    let info = relation(oid)?;
                    if info.captured {
                        open.rows.push(rows::truncate(info, meta(open)));
                    }
                }
            }
            PgOutput::Relation(_) | PgOutput::Type { .. } | PgOutput::Origin { .. } => {}
        }
        if open.rows.len() >= self.chunk_rows {
            return Ok(Some(Piece {
                commit_lsn: open.commit_lsn,
                rows: std::mem::take(&mut open.rows),
                end_lsn: None,
                schemas: std::mem::take(&mut open.schemas),
            }));
        }
        Ok(None)
    }

    /// Ends the transaction (a Commit message) and returns its last piece, which carries the
    /// commit's end LSN even when it has no rows.
    pub(crate) fn commit(&mut self, commit_lsn: u64, end_lsn: u64) -> Result<Piece, StreamError> {
        let open = self.open.take().ok_or(StreamError::NoTransaction)?;
        debug_assert_eq!(open.commit_lsn, commit_lsn);
        Ok(Piece {
            commit_lsn: open.commit_lsn,
            rows: open.rows,
            end_lsn: Some(end_lsn),
            schemas: open.schemas,
        })
    }
}

/// The context of a `_bemi` message as JSON object text.
///
/// A JSON object is kept as it is (a `\u0000`, which `jsonb` cannot store, becomes U+FFFD);
/// anything else becomes a marker:
/// `{"_bemi_invalid_context": {"error": "...", "text": "<the first 1000 bytes>"}}`.
/// The context of a sqlcommenter comment body: its keys and values decoded
/// ([`crate::sqlcommenter::parse`]); `{}` for a comment that is not key=value pairs.
pub(crate) fn parse_sqlcommenter(content: &[u8]) -> Arc<str> {
    let body = String::from_utf8_lossy(content);
    match crate::sqlcommenter::parse(&body) {
        Ok(context) => {
            let json = serde_json::Value::Object(context).to_string();
            match crate::json_value::sanitize_json(&json) {
                Some(fixed) => Arc::from(fixed),
                None => Arc::from(json),
            }
        }
        Err(error) => {
            tracing::debug!(%error, "a trailing comment is not a sqlcommenter one; no context");
            Arc::from("{}")
        }
    }
}

pub(crate) fn parse_context(content: &[u8]) -> Arc<str> {
    let invalid = |error: String| -> Arc<str> {
        let text =
            String::from_utf8_lossy(&content[..content.len().min(1000)]).replace('\0', "\u{fffd}");
        let marker = serde_json::json!({ INVALID_CONTEXT_KEY: { "error": error, "text": text } });
        Arc::from(marker.to_string())
    };
    let Ok(text) = std::str::from_utf8(content) else {
        return invalid("not valid UTF-8".to_owned());
    };
    if !text.trim_start().starts_with('{') {
        let start: String = text.trim_start().chars().take(40).collect();
        return invalid(format!("expected a JSON object, got {start}"));
    }
    // Checked without building values, so that every valid number passes (1e400 is valid JSON
    // and a valid jsonb number, but no f64).
    match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Ok(_) => match crate::json_value::sanitize_json(text) {
            Some(fixed) => Arc::from(fixed),
            None => Arc::from(text.trim()),
        },
        Err(error) => invalid(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ColumnInfo;
    use crate::json_value::TypeKind;
    use crate::pgoutput::Value;
    use crate::rows::ChangeRow;
    use bemi_core::protocol::Operation;

    #[test]
    fn an_empty_transaction_is_a_piece_ending_at_its_end_lsn() {
        use crate::assembler::{Assembler, ResumePoint};

        let mut assembler = Assembler::new(ResumePoint::default(), 1000);
        assembler.begin(100, 7, 0);
        let piece = assembler.commit(100, 120).unwrap();
        assert_eq!(piece.end_lsn, Some(120));
    }

    #[test]
    fn the_open_transaction_id_is_known_between_begin_and_commit() {
        let mut assembler = Assembler::new(Default::default(), 10);
        assert_eq!(assembler.open_xid(), None);
        assembler.begin(100, 7, 0);
        assert_eq!(assembler.open_xid(), Some(7));
    }

    #[test]
    fn a_row_takes_the_context_message_sent_before_it() {
        use crate::{assembler::*, catalog::*, json_value::TypeKind, pgoutput::*};
        let mut assembler = Assembler::new(ResumePoint::default(), 10);
        assembler.relation(
            42,
            RelationInfo {
                schema: "public".into(),
                table: "t".into(),
                primary_key: vec![0],
                key_unknown: None,
                captured: true,
                columns: vec![ColumnInfo {
                    json_key: "\"id\":".into(),
                    kind: TypeKind::Int,
                    redacted: false,
                    ignored: false,
                }],
            },
        );
        assembler.begin(100, 7, 0);
        assembler.context_message(br#"{"user_id":1}"#);
        let change = PgOutput::Insert {
            relation: 42,
            new: vec![Value::Text(b"1")],
        };
        assert!(assembler.change(change, 90, 0).unwrap().is_none());
        let piece = assembler.commit(100, 120).unwrap();
        assert_eq!(&*piece.rows[0].context, r#"{"user_id":1}"#);
    }

    #[test]
    fn a_commit_without_a_begin_is_an_error() {
        let mut assembler = Assembler::new(Default::default(), 10);
        assert!(assembler.commit(1, 2).is_err());
    }

    #[test]
    fn a_context_message_is_kept_as_written_or_marked_invalid() {
        use crate::assembler::parse_context;

        assert_eq!(&*parse_context(br#"{"user_id": 1}"#), r#"{"user_id": 1}"#);
        assert_eq!(&*parse_context(br#"{"big": 1e400}"#), r#"{"big": 1e400}"#);
        let marker: serde_json::Value = serde_json::from_str(&parse_context(b"{oops")).unwrap();
        assert_eq!(marker["_bemi_invalid_context"]["text"], "{oops");
    }

    #[test]
    fn a_context_with_a_number_beyond_f64_is_kept_as_written() {
        // Valid JSON and a valid jsonb number; serde_json's values (without
        // `arbitrary_precision`) could not hold it.
        let text = r#"{"amount": 1e400, "id": 123456789012345678901234567890}"#;
        assert_eq!(&*parse_context(text.as_bytes()), text);
        let not_an_object = parse_context(b"[1e400]");
        assert!(
            not_an_object.contains(INVALID_CONTEXT_KEY),
            "{not_an_object}"
        );
    }

    fn assembler(chunk_rows: usize, resume: ResumePoint) -> Assembler {
        let mut assembler = Assembler::new(resume, chunk_rows);
        assembler.relation(
            1,
            RelationInfo {
                schema: "public".into(),
                table: "t".into(),
                columns: vec![ColumnInfo {
                    json_key: "\"id\":".into(),
                    kind: TypeKind::Int,
                    redacted: false,
                    ignored: false,
                }],
                primary_key: vec![0],
                key_unknown: None,
                captured: true,
            },
        );
        assembler
    }

    fn insert(id: &'static [u8]) -> PgOutput<'static> {
        PgOutput::Insert {
            relation: 1,
            new: vec![Value::Text(id)],
        }
    }

    #[test]
    fn rows_take_the_latest_message_and_a_reset_clears_it() {
        let mut a = assembler(100, ResumePoint::default());
        a.begin(50, 9, 0);
        a.change(insert(b"0"), 10, 0).unwrap();
        a.context_message(br#"{"ctx":"A"}"#);
        a.change(insert(b"1"), 11, 0).unwrap();
        a.context_message(br#"{"ctx":"B"}"#);
        a.change(insert(b"2"), 12, 0).unwrap();
        a.context_message(b"{}");
        a.change(insert(b"3"), 13, 0).unwrap();
        let piece = a.commit(50, 60).unwrap();
        let contexts: Vec<&str> = piece.rows.iter().map(|r| &*r.context).collect();
        assert_eq!(contexts, ["{}", r#"{"ctx":"A"}"#, r#"{"ctx":"B"}"#, "{}"]);
        // The next transaction starts without context.
        a.begin(70, 10, 0);
        a.change(insert(b"4"), 65, 0).unwrap();
        assert_eq!(&*a.commit(70, 80).unwrap().rows[0].context, "{}");
    }

    #[test]
    fn sqlcommenter_contexts_apply_unless_the_statement_has_a_bemi_context() {
        let mut a = assembler(100, ResumePoint::default());
        a.begin(50, 9, 0);
        // A statement tagged only by sqlcommenter.
        a.sqlcommenter_message(b"route='%2Ftodo',user_id=7");
        a.change(insert(b"1"), 11, 0).unwrap();
        // An adapter's message, then the trigger's sqlcommenter message of the same statement,
        // twice (two tables): the Bemi context wins for both tables' rows.
        a.context_message(br#"{"ctx":"A"}"#);
        a.sqlcommenter_message(b"route='x'");
        a.change(insert(b"2"), 12, 0).unwrap();
        a.sqlcommenter_message(b"route='x'");
        a.change(insert(b"3"), 13, 0).unwrap();
        // A later statement with its own comment takes it.
        a.sqlcommenter_message(b"route='y'");
        a.change(insert(b"4"), 14, 0).unwrap();
        // After an empty reset, a comment applies at once; one that is no sqlcommenter
        // comment clears the context.
        a.context_message(b"{}");
        a.sqlcommenter_message(b"route='z'");
        a.change(insert(b"5"), 15, 0).unwrap();
        a.sqlcommenter_message(b"just a note");
        a.change(insert(b"6"), 16, 0).unwrap();
        let piece = a.commit(50, 60).unwrap();
        let contexts: Vec<&str> = piece.rows.iter().map(|r| &*r.context).collect();
        assert_eq!(
            contexts,
            [
                r#"{"route":"/todo","user_id":"7"}"#,
                r#"{"ctx":"A"}"#,
                r#"{"ctx":"A"}"#,
                r#"{"route":"y"}"#,
                r#"{"route":"z"}"#,
                "{}",
            ]
        );
    }

    #[test]
    fn a_nul_in_a_sqlcommenter_value_is_replaced_for_jsonb() {
        use crate::assembler::parse_sqlcommenter;

        assert_eq!(&*parse_sqlcommenter(b"a='x%00y'"), "{\"a\":\"x\u{fffd}y\"}");
    }

    #[test]
    fn large_transactions_come_out_in_chunks() {
        let mut a = assembler(2, ResumePoint::default());
        a.begin(50, 9, 0);
        assert!(a.change(insert(b"1"), 1, 0).unwrap().is_none());
        let chunk = a.change(insert(b"2"), 2, 0).unwrap().unwrap();
        assert_eq!((chunk.rows.len(), chunk.end_lsn), (2, None));
        a.change(insert(b"3"), 3, 0).unwrap();
        let last = a.commit(50, 60).unwrap();
        assert_eq!((last.rows.len(), last.end_lsn), (1, Some(60)));
    }

    #[test]
    fn resuming_skips_applied_transactions_and_written_rows() {
        let resume = ResumePoint {
            last_lsn: 100,
            partial: Some(Partial {
                commit_lsn: 300,
                position: 250,
            }),
        };
        let mut a = assembler(100, resume);
        a.begin(90, 1, 0);
        a.change(insert(b"1"), 80, 0).unwrap();
        assert!(a.commit(90, 100).unwrap().rows.is_empty());
        a.begin(300, 2, 0);
        for (id, position) in [(&b"2"[..], 240), (b"3", 250), (b"4", 260)] {
            a.change(
                PgOutput::Insert {
                    relation: 1,
                    new: vec![Value::Text(id)],
                },
                position,
                0,
            )
            .unwrap();
        }
        let piece = a.commit(300, 310).unwrap();
        assert_eq!(piece.rows.len(), 1);
        assert_eq!(piece.rows[0].position, 260);
    }

    #[test]
    fn malformed_messages_become_markers() {
        for content in [&b"not json"[..], b"[1,2]", b"\xff\xfe", b"\"text\""] {
            let parsed: serde_json::Value = serde_json::from_str(&parse_context(content)).unwrap();
            assert!(parsed[INVALID_CONTEXT_KEY]["error"].is_string(), "{parsed}");
        }
    }

    #[test]
    fn changes_need_a_transaction_and_a_known_relation() {
        let mut a = assembler(10, ResumePoint::default());
        assert_eq!(
            a.change(insert(b"1"), 1, 0),
            Err(StreamError::NoTransaction)
        );
        a.begin(1, 1, 0);
        let unknown = PgOutput::Insert {
            relation: 2,
            new: vec![],
        };
        assert_eq!(
            a.change(unknown, 1, 0),
            Err(StreamError::UnknownRelation(2))
        );
    }

    #[test]
    fn a_whole_transaction_advances_the_position_to_its_end() {
        let done = ResumePoint::default().advanced(&[Piece {
            commit_lsn: 5,
            rows: vec![],
            end_lsn: Some(9),
            ..Piece::default()
        }]);
        assert_eq!(done.last_lsn, 9);
    }

    fn row(position: u64) -> ChangeRow {
        ChangeRow {
            primary_key: Some("tab\there".into()),
            before: "{}".into(),
            after: r#"{"task":"line\nbreak \\ slash"}"#.into(),
            context: Arc::from("{}"),
            schema: "public".into(),
            table: "todo".into(),
            operation: Operation::Create,
            committed_at: 1_700_000_000_123_456,
            queued_at: 1_700_000_000_123_457,
            transaction_id: 7,
            position,
        }
    }

    #[test]
    fn the_position_advances_with_whole_and_partial_transactions() {
        let start = ResumePoint::default();
        let chunk = Piece {
            commit_lsn: 500,
            rows: vec![row(10), row(20)],
            end_lsn: None,
            ..Piece::default()
        };
        let partial = start.advanced(std::slice::from_ref(&chunk));
        assert_eq!(
            partial.partial,
            Some(Partial {
                commit_lsn: 500,
                position: 20
            })
        );
        let done = partial.advanced(&[Piece {
            commit_lsn: 500,
            rows: vec![row(30)],
            end_lsn: Some(510),
            ..Piece::default()
        }]);
        assert_eq!(
            done,
            ResumePoint {
                last_lsn: 510,
                partial: None
            }
        );
        // Never backwards.
        let again = done.advanced(&[Piece {
            commit_lsn: 1,
            rows: vec![],
            end_lsn: Some(2),
            ..Piece::default()
        }]);
        assert_eq!(again.last_lsn, 510);
    }
}
