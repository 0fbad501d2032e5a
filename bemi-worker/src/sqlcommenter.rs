//! Contexts from [sqlcommenter] comments: `/*key='value',…*/` at the end of a statement, as
//! Rails' query log tags (format `:sqlcommenter`), Django, Spring, Prisma's sqlcommenter plugins
//! and `google-cloud-sqlcommenter` append them.
//!
//! The migration's trigger passes the body of such a trailing comment, when a statement has no
//! Bemi context, to the capture worker as a `_bemi_sqlcommenter` message
//! ([`bemi_core::protocol::SQLCOMMENTER_MESSAGE_PREFIX`]); the worker turns it into the rows'
//! context with [`parse`]. Keys and values are URL-decoded; values stay strings.
//!
//! The parser takes what real clients write, not only the letter of the spec: values quoted
//! with `'` (with `\'` escapes) or bare (Python writes integers bare), `%XX` escapes with or
//! without `/` encoded, and the doubled `%%XX` that `google-cloud-sqlcommenter` writes for a
//! statement executed without parameters.
//!
//! [sqlcommenter]: https://google.github.io/sqlcommenter/spec/

use std::borrow::Cow;

use serde_json::{Map, Value};

/// Why a comment body is not a sqlcommenter one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    /// A pair without `=`.
    #[error("expected key=value at byte {0}")]
    MissingEquals(usize),
    /// A pair with an empty key.
    #[error("empty key at byte {0}")]
    EmptyKey(usize),
    /// A quoted value that is not closed.
    #[error("unterminated quoted value starting at byte {0}")]
    UnterminatedValue(usize),
    /// Something other than `,` after a quoted value.
    #[error("expected ',' at byte {0}")]
    ExpectedComma(usize),
    /// The body holds no pair at all.
    #[error("no key=value pair")]
    Empty,
}

/// The context a sqlcommenter comment body (between `/*` and `*/`) describes: one string per
/// key, keys and values URL-decoded. A later duplicate key wins.
///
/// # Errors
///
/// A [`ParseError`] when the body is not a comma-separated list of `key=value` pairs.
pub(crate) fn parse(body: &str) -> Result<Map<String, Value>, ParseError> {
    let bytes = body.as_bytes();
    let mut context = Map::new();
    // `at` only ever stops at an ASCII byte (a space, `=`, `,`, a quote) or at the end, so
    // every `get` below is `Some`; a `None` would be a `MissingEquals`, never a panic.
    let mut at = skip_spaces(bytes, 0);
    while at < bytes.len() {
        let key_start = at;
        let equals = body
            .get(at..)
            .and_then(|rest| rest.find(['=', ',']))
            .map(|offset| at + offset)
            .filter(|&end| bytes.get(end) == Some(&b'='))
            .ok_or(ParseError::MissingEquals(key_start))?;
        let key = body
            .get(key_start..equals)
            .ok_or(ParseError::MissingEquals(key_start))?
            .trim();
        if key.is_empty() {
            return Err(ParseError::EmptyKey(key_start));
        }
        at = skip_spaces(bytes, equals + 1);
        let value = if bytes.get(at) == Some(&b'\'') {
            let (raw, end) = quoted(body, at)?;
            at = skip_spaces(bytes, end);
            match bytes.get(at) {
                None => {}
                Some(b',') => at += 1,
                Some(_) => return Err(ParseError::ExpectedComma(at)),
            }
            raw
        } else {
            let rest = body.get(at..).ok_or(ParseError::MissingEquals(key_start))?;
            let end = rest.find(',').map_or(bytes.len(), |offset| at + offset);
            let raw = rest.get(..end - at).unwrap_or(rest).trim();
            at = (end + 1).min(bytes.len());
            Cow::Borrowed(raw)
        };
        context.insert(decode(key), Value::String(decode(&value)));
        at = skip_spaces(bytes, at);
    }
    if context.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(context)
}

/// A quoted value starting at `start` (its opening `'`): its text with `\'` (and `\\`)
/// unescaped, and the byte after its closing quote.
// Each slice starts after the opening quote or an escaping backslash and ends at a backslash
// or the closing quote: ASCII bytes, so on char boundaries.
#[allow(clippy::string_slice)]
fn quoted(body: &str, start: usize) -> Result<(Cow<'_, str>, usize), ParseError> {
    let bytes = body.as_bytes();
    let mut text = String::new();
    let mut run = start + 1;
    let mut at = start + 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' if matches!(bytes.get(at + 1), Some(b'\'' | b'\\')) => {
                text.push_str(&body[run..at]);
                run = at + 1;
                at += 2;
            }
            b'\'' => {
                text.push_str(&body[run..at]);
                return Ok((Cow::Owned(text), at + 1));
            }
            _ => at += 1,
        }
    }
    Err(ParseError::UnterminatedValue(start))
}

fn skip_spaces(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// URL-decodes `text` (`%XX`, and `%%XX` as one `%XX`); bytes that do not form UTF-8 become
/// U+FFFD, and a `%` not followed by two hex digits stays as it is.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            // `%%XX` is google-cloud-sqlcommenter's escape of `%XX` for the driver's
            // `%`-formatting, left as it is when the statement had no parameters.
            let escape = if bytes.get(at + 1) == Some(&b'%') {
                at + 1
            } else {
                at
            };
            if let Some(byte) = hex_byte(bytes, escape + 1) {
                out.push(byte);
                at = escape + 3;
                continue;
            }
        }
        out.push(bytes[at]);
        at += 1;
    }
    String::from_utf8(out)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

fn hex_byte(bytes: &[u8], at: usize) -> Option<u8> {
    let digit = |byte: u8| (byte as char).to_digit(16);
    let high = digit(*bytes.get(at)?)?;
    let low = digit(*bytes.get(at + 1)?)?;
    u8::try_from(high * 16 + low).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(body: &str) -> Value {
        Value::Object(parse(body).unwrap())
    }

    #[test]
    fn reads_what_flask_writes() {
        assert_eq!(
            parsed(
                "controller='poll_detail',framework='flask%3A3.1.3',route='/polls/%3Cint%3Aid%3E',dbapi_threadsafety=2"
            ),
            json!({
                "controller": "poll_detail",
                "framework": "flask:3.1.3",
                "route": "/polls/<int:id>",
                "dbapi_threadsafety": "2",
            })
        );
    }

    #[test]
    fn reads_the_spec_example() {
        assert_eq!(
            parsed(
                "action='%2Fparam*d',controller='index',framework='spring',traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01'"
            ),
            json!({
                "action": "/param*d",
                "controller": "index",
                "framework": "spring",
                "traceparent": "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01",
            })
        );
    }

    #[test]
    fn reads_what_python_writes_with_and_without_parameters() {
        let with = parsed("db_driver='psycopg2%3A2.9.13%20%28dt%29',dbapi_threadsafety=2");
        let without = parsed("db_driver='psycopg2%%3A2.9.13%%20%%28dt%%29',dbapi_threadsafety=2");
        assert_eq!(with, without);
        assert_eq!(with["db_driver"], "psycopg2:2.9.13 (dt)");
        assert_eq!(with["dbapi_threadsafety"], "2");
    }

    #[test]
    fn reads_rails_and_escaped_quotes() {
        assert_eq!(
            parsed("action='index',application='Blog',controller='posts',user='Joe\\'s'"),
            json!({"action": "index", "application": "Blog", "controller": "posts", "user": "Joe's"})
        );
        assert_eq!(parsed(" a = 'x' , b='y' "), json!({"a": "x", "b": "y"}));
    }

    #[test]
    fn decodes_keys_utf8_and_keeps_stray_percents() {
        assert_eq!(
            parsed("us%C3%A9r='%E2%9C%93',odd='100%',bad='%FF'"),
            json!({"usér": "✓", "odd": "100%", "bad": "\u{fffd}"})
        );
    }

    #[test]
    fn refuses_what_is_not_key_value_pairs() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("note, a=b"), Err(ParseError::MissingEquals(0)));
        assert_eq!(parse("=x"), Err(ParseError::EmptyKey(0)));
        assert_eq!(parse("a='x"), Err(ParseError::UnterminatedValue(2)));
        assert_eq!(parse("a='x'y"), Err(ParseError::ExpectedComma(5)));
    }

    /// Any body — any text, any bytes read lossily, pairs of arbitrary keys and values with
    /// quotes and escapes — is a context or an error, never a panic.
    #[test]
    fn fuzz_any_body_is_a_context_or_an_error() {
        use proptest::collection::vec;
        use proptest::prelude::*;
        use std::panic::{AssertUnwindSafe, catch_unwind};

        let piece = prop_oneof![
            any::<String>(),
            Just("'".to_owned()),
            Just("\\'".to_owned()),
            Just("=".to_owned()),
            Just(",".to_owned()),
            Just("%C3%A9".to_owned()),
            Just("%%".to_owned()),
            Just("é".to_owned()),
            Just(" ".to_owned()),
        ];
        let body = prop_oneof![
            any::<String>(),
            vec(any::<u8>(), 0..64).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
            vec(piece, 0..12).prop_map(|pieces| pieces.concat()),
        ];
        bemi_fuzz::check("sqlcommenter bodies", 3_000, body, |body| {
            let parsed = catch_unwind(AssertUnwindSafe(|| parse(&body)))
                .map_err(|_| TestCaseError::fail(format!("parse panicked on {body:?}")))?;
            match parsed {
                Ok(context) => prop_assert!(!context.is_empty()),
                Err(error) => prop_assert!(!error.to_string().is_empty()),
            }
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    }
}
