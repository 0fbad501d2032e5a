//! PostgreSQL's text form of a `jsonb` value (what `jsonb::text` prints), computed by the
//! writer itself: what the hash chain ([`crate::chain`]) hashes a JSON column as.
//!
//! `jsonb` forgets how its input was written: whitespace goes, an object's keys are sorted
//! (shorter first, then by their bytes) and a repeated key keeps its last value, strings are
//! re-escaped (only `"`, `\`, and control characters: `\b`, `\f`, `\n`, `\r`, `\t`, the
//! rest as `\u00XX`), and numbers become `numeric`s (`1e2` is `100`, `-0` is `0`, `1.50` stays
//! `1.50`). Printed, members are separated by `", "` and keys from values by `": "`.
//!
//! [`jsonb_text`] returns `None` for any text it cannot vouch for — invalid JSON, `\u0000`
//! (which `jsonb` refuses), an exponent beyond ±1000, a number of more than 1 000 digits,
//! nesting deeper than 256 — and the writer then asks the server. What it returns is still
//! checked by the server where it matters (the chained insert compares it with the stored
//! value's text), so a difference costs a retried batch, never a wrong hash; the database
//! encoding is one such difference (keys sort by their bytes *in the database's encoding*).
//!
//! ```
//! use bemi_audit::jsonb_text::jsonb_text;
//!
//! assert_eq!(
//!     jsonb_text(r#"{"task":"Sleep","id":1e2,"done":false,"id":7}"#).as_deref(),
//!     Some(r#"{"id": 7, "done": false, "task": "Sleep"}"#),
//! );
//! assert_eq!(jsonb_text(r#"[-0, 1.50, "a\u00e9\u0001"]"#).as_deref(), Some(r#"[0, 1.50, "aé\u0001"]"#));
//! assert_eq!(jsonb_text(r#"{"a": "\u0000"}"#), None);
//! assert_eq!(jsonb_text("{"), None);
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;

/// Deepest nesting handled here (PostgreSQL's own limit is its stack).
const MAX_DEPTH: usize = 256;
/// Largest exponent handled here.
const MAX_EXPONENT: i64 = 1000;
/// Most digits in a number handled here.
const MAX_DIGITS: usize = 1000;

/// `json` as `json::jsonb::text` prints it, or `None` when that cannot be vouched for here
/// (see the [module docs](self)).
#[must_use]
pub fn jsonb_text(json: &str) -> Option<String> {
    let mut parser = Parser { text: json, at: 0 };
    parser.skip_space();
    let value = parser.value(0)?;
    parser.skip_space();
    if parser.at != json.len() {
        return None;
    }
    let mut out = String::with_capacity(json.len() + json.len() / 8 + 2);
    value.write(&mut out);
    Some(out)
}

/// A parsed value, its strings and numbers already in their printed form.
enum Value<'a> {
    Literal(&'static str),
    Number(Cow<'a, str>),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

impl Value<'_> {
    fn write(&self, out: &mut String) {
        match self {
            Value::Literal(text) => out.push_str(text),
            Value::Number(text) => out.push_str(text),
            Value::String(text) => write_string(out, text),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Value::Object(members) => {
                out.push('{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_string(out, key);
                    out.push_str(": ");
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// A string as PostgreSQL's `escape_json` writes it.
fn write_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, expected: &[u8]) -> Option<()> {
        let end = self.at.checked_add(expected.len())?;
        (self.text.as_bytes().get(self.at..end)? == expected).then(|| self.at = end)
    }

    fn value(&mut self, depth: usize) -> Option<Value<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => self.string().map(Value::String),
            b't' => self.eat(b"true").map(|()| Value::Literal("true")),
            b'f' => self.eat(b"false").map(|()| Value::Literal("false")),
            b'n' => self.eat(b"null").map(|()| Value::Literal("null")),
            b'-' | b'0'..=b'9' => self.number().map(Value::Number),
            _ => None,
        }
    }

    fn array(&mut self, depth: usize) -> Option<Value<'a>> {
        self.eat(b"[")?;
        let mut items = Vec::new();
        self.skip_space();
        if self.eat(b"]").is_some() {
            return Some(Value::Array(items));
        }
        loop {
            self.skip_space();
            items.push(self.value(depth + 1)?);
            self.skip_space();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(Value::Array(items));
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, depth: usize) -> Option<Value<'a>> {
        self.eat(b"{")?;
        // Each member with its place in the input: of a repeated key, the last one counts.
        let mut members: Vec<(usize, Cow<'a, str>, Value<'a>)> = Vec::new();
        self.skip_space();
        if self.eat(b"}").is_none() {
            loop {
                self.skip_space();
                if self.peek()? != b'"' {
                    return None;
                }
                let key = self.string()?;
                self.skip_space();
                self.eat(b":")?;
                self.skip_space();
                let value = self.value(depth + 1)?;
                members.push((members.len(), key, value));
                self.skip_space();
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        // Shorter keys first, then by bytes; a repeated key's later members first, so that
        // keeping the first of each run keeps the last one written.
        members.sort_by(|(a_at, a, _), (b_at, b, _)| {
            (a.len(), a.as_bytes())
                .cmp(&(b.len(), b.as_bytes()))
                .then(b_at.cmp(a_at))
        });
        members.dedup_by(|(_, later, _), (_, kept, _)| later == kept);
        Some(Value::Object(
            members
                .into_iter()
                .map(|(_, key, value)| (key, value))
                .collect(),
        ))
    }

    /// A string's value (unescaped), the opening quote under the cursor.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b"\"")?;
        let start = self.at;
        // Without escapes the value is a slice of the input.
        loop {
            match self.peek()? {
                b'"' => {
                    let value = self.text.get(start..self.at)?;
                    self.at += 1;
                    return Some(Cow::Borrowed(value));
                }
                b'\\' => break,
                byte if byte < 0x20 => return None,
                _ => self.at += 1,
            }
        }
        let mut value = String::from(self.text.get(start..self.at)?);
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(Cow::Owned(value));
                }
                b'\\' => {
                    self.at += 1;
                    let escaped = self.peek()?;
                    self.at += 1;
                    match escaped {
                        b'"' => value.push('"'),
                        b'\\' => value.push('\\'),
                        b'/' => value.push('/'),
                        b'b' => value.push('\u{8}'),
                        b'f' => value.push('\u{c}'),
                        b'n' => value.push('\n'),
                        b'r' => value.push('\r'),
                        b't' => value.push('\t'),
                        b'u' => value.push(self.unicode_escape()?),
                        _ => return None,
                    }
                }
                byte if byte < 0x20 => return None,
                _ => {
                    // Copy up to the next quote or backslash (whole UTF-8 sequences).
                    let run = self.at;
                    while matches!(self.peek(), Some(byte) if byte != b'"' && byte != b'\\' && byte >= 0x20)
                    {
                        self.at += 1;
                    }
                    value.push_str(self.text.get(run..self.at)?);
                }
            }
        }
    }

    /// The character of a `\uXXXX` escape (a surrogate pair takes two), the `u` consumed.
    fn unicode_escape(&mut self) -> Option<char> {
        let first = self.hex4()?;
        let code = match first {
            0 => return None,
            0xD800..=0xDBFF => {
                self.eat(b"\\u")?;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return None;
                }
                0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return None,
            code => code,
        };
        char::from_u32(code)
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.as_bytes().get(self.at..self.at + 4)?;
        let mut code = 0;
        for &digit in digits {
            code = code * 16 + char::from(digit).to_digit(16)?;
        }
        self.at += 4;
        Some(code)
    }

    /// A number as `numeric` prints it.
    fn number(&mut self) -> Option<Cow<'a, str>> {
        let start = self.at;
        let negative = self.eat(b"-").is_some();
        let digits = |parser: &mut Self| {
            let from = parser.at;
            while matches!(parser.peek(), Some(b'0'..=b'9')) {
                parser.at += 1;
            }
            parser.text.get(from..parser.at)
        };
        let integer = digits(self)?;
        if integer.is_empty() || (integer.len() > 1 && integer.starts_with('0')) {
            return None;
        }
        let fraction = if self.eat(b".").is_some() {
            let fraction = digits(self)?;
            if fraction.is_empty() {
                return None;
            }
            fraction
        } else {
            ""
        };
        let exponent = if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            let negative_exponent = match self.peek()? {
                b'-' => {
                    self.at += 1;
                    true
                }
                b'+' => {
                    self.at += 1;
                    false
                }
                _ => false,
            };
            let exponent = digits(self)?;
            if exponent.is_empty() {
                return None;
            }
            let magnitude: i64 = exponent.parse().ok().filter(|e| *e <= MAX_EXPONENT)?;
            Some(if negative_exponent {
                -magnitude
            } else {
                magnitude
            })
        } else {
            None
        };
        // A letter right after a number is not JSON (PostgreSQL says so too).
        if matches!(self.peek(), Some(byte) if byte.is_ascii_alphanumeric() || byte == b'_') {
            return None;
        }
        let all_zero = integer.bytes().chain(fraction.bytes()).all(|d| d == b'0');
        if exponent.is_none() && !(negative && all_zero) {
            // As written: no exponent to apply, no negative zero to drop.
            return self.text.get(start..self.at).map(Cow::Borrowed);
        }
        if integer.len() + fraction.len() > MAX_DIGITS {
            return None;
        }
        Some(Cow::Owned(numeric_text(
            negative && !all_zero,
            integer,
            fraction,
            exponent.unwrap_or(0),
        )))
    }
}

/// `numeric_out(numeric_in(…))` of `[-]integer[.fraction]e<exponent>`: the decimal point moved
/// by the exponent, as many fraction digits as the input had less the exponent (none below
/// zero), the integer part without leading zeros.
fn numeric_text(negative: bool, integer: &str, fraction: &str, exponent: i64) -> String {
    let digits: Vec<u8> = integer.bytes().chain(fraction.bytes()).collect();
    let len = digits.len() as i64;
    // Digits before the decimal point once the exponent is applied.
    let point = integer.len() as i64 + exponent;
    let scale = (fraction.len() as i64 - exponent).max(0);
    let mut whole = String::new();
    let mut fractional = String::new();
    if point <= 0 {
        fractional.extend(std::iter::repeat_n('0', (-point) as usize));
        fractional.extend(digits.iter().map(|&d| char::from(d)));
    } else if point >= len {
        whole.extend(digits.iter().map(|&d| char::from(d)));
        whole.extend(std::iter::repeat_n('0', (point - len) as usize));
    } else {
        whole.extend(digits[..point as usize].iter().map(|&d| char::from(d)));
        fractional.extend(digits[point as usize..].iter().map(|&d| char::from(d)));
    }
    let whole = whole.trim_start_matches('0');
    let mut out = String::with_capacity(whole.len() + fractional.len() + 3);
    if negative {
        out.push('-');
    }
    out.push_str(if whole.is_empty() { "0" } else { whole });
    if scale > 0 {
        out.push('.');
        out.push_str(&fractional);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::jsonb_text;

    /// Inputs and what PostgreSQL 15 prints for `input::jsonb::text` (taken from `psql`).
    const KNOWN: &[(&str, &str)] = &[
        ("{}", "{}"),
        ("[]", "[]"),
        (" { } ", "{}"),
        ("null", "null"),
        ("\"x\"", "\"x\""),
        (r#"{"b":1,"a":2,"aa":3}"#, r#"{"a": 2, "b": 1, "aa": 3}"#),
        (r#"{"a":1,"a":2}"#, r#"{"a": 2}"#),
        (
            r#"{"a":{"z":[1,{"y":2,"x":1}]}}"#,
            r#"{"a": {"z": [1, {"x": 1, "y": 2}]}}"#,
        ),
        (
            "[1e2, 1E+2, 1.5e1, 1.50e1, 12.30e1]",
            "[100, 100, 15, 15.0, 123.0]",
        ),
        (
            "[1e-3, 100e-2, 0.00, -0, -0.0, -0e5]",
            "[0.001, 1.00, 0.00, 0, 0.0, 0]",
        ),
        ("[-1.5e-1, 0e0, 0.10e1]", "[-0.15, 0, 1.0]"),
        (r#""\/\b\f\n\r\t\"\\""#, r#""/\b\f\n\r\t\"\\""#),
        (r#""\u0001\u001F\u007f\u00E9""#, "\"\\u0001\\u001f\u{7f}é\""),
        (r#""\ud83d\ude00""#, "\"😀\""),
        ("\"é😀\"", "\"é😀\""),
        // Keys sort by their length in bytes: `é` is two.
        (r#"{"é":1,"z":2,"zz":3}"#, r#"{"z": 2, "zz": 3, "é": 1}"#),
    ];

    #[test]
    fn the_text_of_known_values_is_what_postgresql_prints() {
        for (input, expected) in KNOWN {
            assert_eq!(jsonb_text(input).as_deref(), Some(*expected), "{input}");
        }
    }

    #[test]
    fn what_cannot_be_vouched_for_is_refused() {
        for input in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "1.",
            "1e",
            "-",
            "1x",
            "tru",
            "[1] x",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "\"\\x\"",
            "\"a\nb\"",
            "1e1001",
            "{\"a\":1,}",
        ] {
            assert_eq!(jsonb_text(input), None, "{input:?}");
        }
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        assert_eq!(jsonb_text(&deep), None);
    }
}
