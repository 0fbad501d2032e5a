//! Annotating SQL writes with the current context: ` /*Bemi {json} Bemi*/`.
//!
//! Only writes get the comment: statements that start with `INSERT`, `UPDATE`, `DELETE`, `MERGE`
//! or `TRUNCATE` (after any whitespace and comments), and `WITH …` statements whose CTEs or main
//! statement write. Reads are returned untouched, so they keep any prepared-statement cache.
//!
//! The comment is safe for any context: the JSON has every `*` escaped as `\u002a` (still valid
//! JSON that decodes to the same value), so it can contain neither `*/` nor `/*` and PostgreSQL
//! parses it as exactly one comment, whatever the strings inside hold (quotes, `--`, `$$`,
//! newlines, ` Bemi*/`). Escaping `/` as `\/` would not be enough: `\/*` still opens a nested
//! comment. Slashes stay as they are, so endpoints such as `"/todo"` remain readable.
//! SQL that does not lex (an unterminated string, identifier, dollar quote or comment) is left as
//! it is.
//!
//! The library adds the key [`SQL_KEY`] (`"SQL"`): the statement text without the comment,
//! truncated to [`MAX_SQL_KEY_BYTES`]; a user key of the same name wins. It is on by default
//! (Bemi's behaviour); [`set_sql_key`] or `BEMI_SQL_KEY=off` leaves it out, so that the writes
//! of a transaction made in one context carry the same context and the adapters emit it once. A context whose JSON is
//! larger than [`MAX_CONTEXT_BYTES`] is replaced by a small marker (see [`DROPPED_KEY`]) and a
//! `tracing` warning; the write itself always goes ahead.
//!
//! ```
//! use bemi_core::{IntoContext as _, sql::annotate};
//! use serde_json::json;
//!
//! let ctx = json!({"user_id": 187234, "note": "*/ DROP TABLE todo; /*"}).into_context().unwrap();
//! let sql = annotate("INSERT INTO todo (task) VALUES ($1)", &ctx).unwrap();
//! assert!(sql.starts_with("INSERT INTO todo (task) VALUES ($1) /*Bemi {"));
//! assert!(sql.ends_with(" Bemi*/"));
//! assert_eq!(sql.matches("*/").count(), 1);
//!
//! assert_eq!(annotate("SELECT * FROM todo", &ctx), None);
//! ```

mod lexer;

use std::sync::atomic::{AtomicU8, Ordering};

use serde_json::{Map, Value};

use crate::context::{self, Context};
use crate::protocol::{
    COMMENT_END, COMMENT_START, DROPPED_KEY, MAX_CONTEXT_BYTES, MAX_SQL_KEY_BYTES, SQL_KEY,
};
use lexer::{Lexer, Token};

/// Annotates `sql` with the **current** context (see [`crate::context`]).
///
/// Returns `None` when there is nothing to do: no context in scope, a read, or SQL that does
/// not lex.
///
/// ```
/// use bemi_core::{context, sql};
/// use serde_json::json;
///
/// assert_eq!(sql::annotate_current("DELETE FROM todo"), None);
/// let ctx = json!({"user_id": 1});
/// let annotated = context::sync_scope(ctx, || sql::annotate_current("DELETE FROM todo"));
/// assert!(annotated.unwrap().contains(r#""user_id":1"#));
/// ```
pub fn annotate_current(sql: &str) -> Option<String> {
    let shape = Shape::of(sql)?;
    if !shape.writes {
        return None;
    }
    context::with_current(|ctx| ctx.map(|ctx| shape.append_comment(sql, ctx)))
}

/// Annotates `sql` with `context` if it is a write; `None` for reads and SQL that does not lex.
///
/// ```
/// use bemi_core::{IntoContext as _, sql::annotate};
/// use serde_json::json;
///
/// let ctx = json!({"user_id": 1}).into_context().unwrap();
/// let sql = annotate("UPDATE todo SET is_completed = true -- done", &ctx);
/// // A trailing line comment gets a newline so that it cannot swallow the annotation.
/// assert!(sql.unwrap().starts_with("UPDATE todo SET is_completed = true -- done\n /*Bemi "));
/// ```
pub fn annotate(sql: &str, context: &Context) -> Option<String> {
    let shape = Shape::of(sql)?;
    shape.writes.then(|| shape.append_comment(sql, context))
}

/// Whether `sql` writes: it starts with `INSERT`, `UPDATE`, `DELETE`, `MERGE` or `TRUNCATE`, or
/// it is a `WITH` statement with a writing CTE or main statement. In a string of several
/// statements, one write is enough.
///
/// ```
/// use bemi_core::sql::is_write;
///
/// assert!(is_write("  /* hi */ insert into t values (1)"));
/// assert!(is_write("WITH gone AS (DELETE FROM t RETURNING id) SELECT count(*) FROM gone"));
/// assert!(!is_write("SELECT * FROM t FOR UPDATE"));
/// assert!(!is_write("WITH x AS (SELECT 1) SELECT * FROM x FOR NO KEY UPDATE"));
/// ```
pub fn is_write(sql: &str) -> bool {
    Shape::of(sql).is_some_and(|shape| shape.writes)
}

/// The comment that carries `context` for the statement `sql`: ` /*Bemi {json} Bemi*/`.
///
/// ```
/// use bemi_core::{IntoContext as _, sql::comment};
/// use serde_json::json;
///
/// let c = comment("DELETE FROM t", &json!({"path": "/a/*b*/"}).into_context().unwrap());
/// assert_eq!(c, r#" /*Bemi {"SQL":"DELETE FROM t","path":"/a/\u002ab\u002a/"} Bemi*/"#);
/// ```
pub fn comment(sql: &str, context: &Context) -> String {
    let json = context_json(sql, context);
    let mut comment = String::with_capacity(json.len() + COMMENT_START.len() + 8);
    comment.push(' ');
    comment.push_str(COMMENT_START);
    comment.push_str(&json);
    comment.push_str(COMMENT_END);
    comment
}

/// The JSON text of the comment: `context` plus the `SQL` key, size-bounded, with `*` escaped.
///
/// ```
/// use bemi_core::{IntoContext as _, sql::context_json};
/// use serde_json::{json, Value};
///
/// let ctx = json!({"user_id": 1, "SQL": "mine"});
/// let text = context_json("DELETE FROM t", &ctx.clone().into_context().unwrap());
/// let back: Value = serde_json::from_str(&text).unwrap();
/// assert_eq!(back, ctx); // a user key named SQL wins
/// ```
pub fn context_json(sql: &str, context: &Context) -> String {
    bounded_json(Some(sql), context)
}

/// The JSON text of `context` for a write whose SQL is not known (a statement prepared
/// elsewhere): no `SQL` key, size-bounded, with `*` escaped.
#[must_use]
pub fn context_json_without_sql(context: &Context) -> String {
    bounded_json(None, context)
}

/// The environment variable that leaves the `SQL` key out when `off` (also `false`, `no`, `0`).
pub const SQL_KEY_ENV: &str = "BEMI_SQL_KEY";

/// The `SQL` key's setting: 0 = not read yet, 1 = included, 2 = left out.
static SQL_KEY_SETTING: AtomicU8 = AtomicU8::new(0);

/// Includes (the default) or leaves out the `SQL` key in every context this process's adapters
/// carry, instead of what `BEMI_SQL_KEY` says.
///
/// With it left out, the writes of a transaction made in one context carry the same context,
/// and the adapters emit it once for all of them (the stitching rule gives it to each); the
/// trail then no longer says which statement made each change — the row's values do.
///
/// ```
/// use bemi_core::{IntoContext as _, sql};
/// use serde_json::json;
///
/// let ctx = json!({"user_id": 1}).into_context().unwrap();
/// sql::set_sql_key(false);
/// assert_eq!(sql::context_json("DELETE FROM t", &ctx), r#"{"user_id":1}"#);
/// sql::set_sql_key(true);
/// assert!(sql::sql_key_included());
/// assert_eq!(sql::context_json("DELETE FROM t", &ctx), r#"{"SQL":"DELETE FROM t","user_id":1}"#);
/// ```
pub fn set_sql_key(included: bool) {
    SQL_KEY_SETTING.store(if included { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether contexts carry the `SQL` key: as [`set_sql_key`] set it, else as `BEMI_SQL_KEY`
/// says (read once; anything but `off`, `false`, `no` or `0` includes it), else included.
#[must_use]
pub fn sql_key_included() -> bool {
    match SQL_KEY_SETTING.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let included = !std::env::var(SQL_KEY_ENV).is_ok_and(|value| {
                matches!(
                    value.trim().to_ascii_lowercase().as_str(),
                    "off" | "false" | "no" | "0"
                )
            });
            // Only if nothing was set in code meanwhile.
            let _ = SQL_KEY_SETTING.compare_exchange(
                0,
                if included { 1 } else { 2 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            included
        }
    }
}

fn bounded_json(sql: Option<&str>, context: &Context) -> String {
    let mut added: Vec<(&str, Value)> = Vec::new();
    let sql = sql.filter(|_| sql_key_included());
    if let Some(sql) = sql.filter(|_| !context.contains_key(SQL_KEY)) {
        added.push((SQL_KEY, Value::String(sql_key_value(sql))));
    }
    #[cfg(feature = "opentelemetry")]
    crate::trace::add_current_ids(context, &mut added);
    let json = if added.is_empty() {
        to_json(context)
    } else {
        let mut with_added = Map::with_capacity(context.len() + added.len());
        with_added.extend(context.iter().map(|(k, v)| (k.clone(), v.clone())));
        with_added.extend(added.into_iter().map(|(k, v)| (k.to_owned(), v)));
        to_json(&with_added)
    };
    let json = if json.len() > MAX_CONTEXT_BYTES {
        tracing::warn!(
            bytes = json.len(),
            limit_bytes = MAX_CONTEXT_BYTES,
            "bemi context dropped: its JSON exceeds the limit; the write proceeds with a marker context"
        );
        to_json(&dropped_marker(sql, json.len()))
    } else {
        json
    };
    escape_stars(json)
}

fn to_json(map: &Context) -> String {
    // Serializing a map of JSON values cannot fail: keys are strings and values are JSON.
    serde_json::to_string(map).unwrap_or_else(|_| String::from("{}"))
}

fn dropped_marker(sql: Option<&str>, bytes: usize) -> Context {
    let mut marker = Map::new();
    marker.insert(
        DROPPED_KEY.to_owned(),
        serde_json::json!({"reason": "too large", "bytes": bytes, "limit_bytes": MAX_CONTEXT_BYTES}),
    );
    if let Some(sql) = sql {
        marker.insert(SQL_KEY.to_owned(), Value::String(sql_key_value(sql)));
    }
    marker
}

fn sql_key_value(sql: &str) -> String {
    let sql = sql.trim();
    if sql.len() <= MAX_SQL_KEY_BYTES {
        return sql.to_owned();
    }
    let (head, _) = sql
        .split_at_checked(sql.floor_char_boundary(MAX_SQL_KEY_BYTES))
        .unwrap_or((sql, ""));
    let mut cut = String::with_capacity(head.len() + 3);
    cut.push_str(head);
    cut.push('…');
    cut
}

/// `*` → `\u002a`: the JSON can then contain neither `/*` nor `*/` (nor ` Bemi*/`).
fn escape_stars(json: String) -> String {
    if json.contains('*') {
        json.replace('*', "\\u002a")
    } else {
        json
    }
}

/// What the annotation needs to know about a statement.
struct Shape {
    writes: bool,
    ends_in_line_comment: bool,
}

impl Shape {
    /// `None` when the SQL does not lex; it is then left untouched.
    fn of(sql: &str) -> Option<Shape> {
        let mut lexer = Lexer::new(sql);
        let mut writes = false;
        let mut statement = Statement::default();
        for token in lexer.by_ref() {
            let token = token.ok()?;
            if token == Token::Punct(b';') && statement.depth == 0 {
                statement = Statement::default();
                continue;
            }
            writes |= statement.feed(token);
        }
        Some(Shape {
            writes,
            ends_in_line_comment: lexer.ends_in_line_comment(),
        })
    }

    fn append_comment(&self, sql: &str, context: &Context) -> String {
        let comment = comment(sql, context);
        let mut annotated = String::with_capacity(sql.len() + comment.len() + 1);
        annotated.push_str(sql);
        if self.ends_in_line_comment {
            annotated.push('\n');
        }
        annotated.push_str(&comment);
        annotated
    }
}

/// Classification state of one statement of a (possibly multi-statement) string.
#[derive(Default)]
struct Statement<'a> {
    started: bool,
    with: bool,
    depth: usize,
    previous_word: Option<&'a str>,
}

impl<'a> Statement<'a> {
    /// Consumes a token; returns `true` when the token shows the statement writes.
    fn feed(&mut self, token: Token<'a>) -> bool {
        match token {
            Token::Punct(b'(') => {
                self.depth += 1;
                self.previous_word = None;
                false
            }
            Token::Punct(b')') => {
                self.depth = self.depth.saturating_sub(1);
                self.previous_word = None;
                false
            }
            Token::Word(word) => {
                let writes = if !self.started {
                    self.started = true;
                    self.with = word.eq_ignore_ascii_case("WITH");
                    is_write_keyword(word)
                } else {
                    self.with && is_write_keyword(word) && !self.is_row_lock(word)
                };
                self.previous_word = Some(word);
                writes
            }
            Token::Punct(_) | Token::Opaque => {
                self.previous_word = None;
                false
            }
        }
    }

    /// `FOR UPDATE` / `FOR NO KEY UPDATE` lock rows of a read.
    fn is_row_lock(&self, word: &str) -> bool {
        word.eq_ignore_ascii_case("UPDATE")
            && self
                .previous_word
                .is_some_and(|p| p.eq_ignore_ascii_case("FOR") || p.eq_ignore_ascii_case("KEY"))
    }
}

/// `name` as a quoted SQL identifier: `"todo"`, `"say ""hi"""`. For the names of schemas,
/// tables, columns and publications, which a statement cannot take as bound parameters.
///
/// ```
/// use bemi_core::sql::quote_ident;
///
/// assert_eq!(quote_ident("todo"), r#""todo""#);
/// assert_eq!(quote_ident("my \"table\""), "\"my \"\"table\"\"\"");
/// ```
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table`, both quoted with [`quote_ident`].
///
/// ```
/// assert_eq!(bemi_core::sql::quote_table("Sales", "order"), r#""Sales"."order""#);
/// ```
pub fn quote_table(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

fn is_write_keyword(word: &str) -> bool {
    ["INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE"]
        .iter()
        .any(|keyword| word.eq_ignore_ascii_case(keyword))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IntoContext as _;
    use serde_json::json;

    fn ctx(value: Value) -> Context {
        value.into_context().expect("a JSON object")
    }

    #[test]
    fn identifier_quotes_are_doubled_and_everything_else_kept() {
        assert_eq!(quote_ident("todo"), r#""todo""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(
            quote_ident("x\"; DROP TABLE t; --"),
            r#""x""; DROP TABLE t; --""#
        );
        assert_eq!(quote_table("Sales", "order"), r#""Sales"."order""#);
    }

    #[test]
    fn classifies_writes_and_reads() {
        let writes = [
            "INSERT INTO t VALUES (1)",
            "  update t set a = 1",
            "-- c\nDELETE FROM t",
            "/* a /* b */ */ MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
            "TRUNCATE t",
            "WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a",
            "WITH RECURSIVE a(n) AS (SELECT 1) UPDATE t SET n = 1",
            "WITH a AS MATERIALIZED (UPDATE t SET x = 1 RETURNING *) SELECT * FROM a",
            "WITH a AS (WITH b AS (SELECT 1) DELETE FROM t RETURNING 1) SELECT 1",
            "SELECT 1; INSERT INTO t VALUES (1)",
        ];
        for sql in writes {
            assert!(is_write(sql), "{sql}");
        }
        let reads = [
            "SELECT 'INSERT INTO t' AS x",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED",
            "WITH a AS (SELECT 'DELETE') SELECT * FROM a FOR UPDATE",
            "SELECT \"delete\" FROM t",
            "/* INSERT */ SELECT 1",
            "EXPLAIN SELECT 1",
            "",
            "   ",
            "CREATE TABLE t (id int)",
        ];
        for sql in reads {
            assert!(!is_write(sql), "{sql}");
        }
    }

    #[test]
    fn leaves_sql_that_does_not_lex_untouched() {
        let c = ctx(json!({"a": 1}));
        assert_eq!(annotate("INSERT INTO t VALUES ('oops", &c), None);
        assert_eq!(annotate("INSERT INTO t VALUES (1) /* open", &c), None);
    }

    #[test]
    fn hostile_contexts_stay_inside_one_comment_and_round_trip() {
        let hostile = [
            "*/ DROP TABLE todo; /*",
            "/*",
            "*/",
            "-- x",
            "'",
            "\"",
            "$$",
            "line\nbreak\r\n",
            " Bemi*/",
            "/*Bemi {} Bemi*/",
            "\u{0000}",
            "\\",
            "*//**/",
        ];
        for text in hostile {
            let context = ctx(json!({"text": text, text: [text]}));
            let sql = annotate("DELETE FROM t WHERE id = $1", &context).unwrap();
            let body = sql
                .strip_prefix("DELETE FROM t WHERE id = $1 /*Bemi ")
                .and_then(|rest| rest.strip_suffix(" Bemi*/"))
                .unwrap();
            assert!(!body.contains("/*") && !body.contains("*/"), "{body}");
            let decoded: Context = serde_json::from_str(body).unwrap();
            assert_eq!(decoded["text"], text);
            assert_eq!(decoded[text], json!([text]));
            // The whole statement still lexes, and the comment is its only comment.
            assert!(Shape::of(&sql).is_some());
        }
    }

    #[test]
    fn adds_the_sql_key_unless_the_user_set_it() {
        let json = context_json("  DELETE FROM t  ", &ctx(json!({"a": 1})));
        let value: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value, json!({"a": 1, "SQL": "DELETE FROM t"}));
    }

    #[test]
    fn truncates_the_sql_key_at_a_character_boundary() {
        let long = format!("INSERT INTO t VALUES ('{}')", "é".repeat(MAX_SQL_KEY_BYTES));
        let json = context_json(&long, &Context::new());
        let value: Value = serde_json::from_str(&json).unwrap();
        let sql = value[SQL_KEY].as_str().unwrap();
        assert!(sql.len() <= MAX_SQL_KEY_BYTES + '…'.len_utf8());
        assert!(sql.ends_with('…'));
    }

    #[test]
    fn replaces_oversized_contexts_with_a_marker() {
        let big = ctx(json!({"blob": "x".repeat(2 * MAX_CONTEXT_BYTES)}));
        let json = context_json("DELETE FROM t", &big);
        assert!(json.len() < 1024);
        let value: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value[DROPPED_KEY]["reason"], "too large");
        assert!(value[DROPPED_KEY]["bytes"].as_u64().unwrap() > 2 * MAX_CONTEXT_BYTES as u64);
        assert_eq!(value[SQL_KEY], "DELETE FROM t");
    }

    #[test]
    fn a_line_comment_at_the_end_gets_a_newline() {
        let sql = annotate("DELETE FROM t -- bye", &Context::new()).unwrap();
        assert!(sql.starts_with("DELETE FROM t -- bye\n /*Bemi "));
    }
}
