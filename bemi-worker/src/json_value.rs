//! Turning PostgreSQL's text output of a column into typed JSON text.
//!
//! The worker writes JSON text directly (never through `serde_json::Value`), so `numeric`
//! values keep every digit: `123.4500` is stored as the JSON number `123.4500` in a `jsonb`
//! column, whose numbers are `numeric` too.
//!
//! | PostgreSQL | JSON |
//! |---|---|
//! | `boolean` | `true` / `false` |
//! | `smallint`, `integer`, `bigint`, `oid`, `numeric` | number (exact) |
//! | `real`, `double precision` | number; `NaN`, `Infinity`, `-Infinity` as strings |
//! | `json`, `jsonb` | the nested JSON value |
//! | arrays | arrays (nested for several dimensions), elements typed alike |
//! | `timestamptz` | `"2026-11-22T10:07:00.123456Z"` |
//! | `timestamp` | `"2026-11-22T10:07:00.123456"` |
//! | `bytea` | `"\\x0102"` (hex) |
//! | anything else (text, uuid, date, enums, …) | string |
//!
//! The replication session runs with `DateStyle=ISO`, `TimeZone=UTC`,
//! `IntervalStyle=iso_8601`, `extra_float_digits=3` and `bytea_output=hex`, which this module
//! relies on.

use std::fmt::Write as _;

/// How a type's text output becomes JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TypeKind {
    /// `boolean`
    Bool,
    /// Integer types and `oid`.
    Int,
    /// `real`, `double precision`.
    Float,
    /// `numeric`
    Numeric,
    /// `json`
    Json,
    /// `jsonb`
    Jsonb,
    /// `timestamp without time zone`
    Timestamp,
    /// `timestamp with time zone`
    TimestampTz,
    /// An array of the element kind.
    Array(Box<TypeKind>),
    /// Everything else: a JSON string of the text output.
    Text,
}

impl TypeKind {
    /// The kind of a built-in type OID, or `None` when the catalog must be asked (arrays of
    /// non-builtin types, domains, enums, ...).
    pub(crate) fn builtin(oid: u32) -> Option<TypeKind> {
        use TypeKind::*;
        Some(match oid {
            16 => Bool,
            20 | 21 | 23 | 26 | 28 | 29 => Int,
            700 | 701 => Float,
            1700 => Numeric,
            114 => Json,
            3802 => Jsonb,
            1114 => Timestamp,
            1184 => TimestampTz,
            // Text-like built-ins: text, varchar, bpchar, name, char, uuid, bytea, date, time,
            // timetz, interval, inet, cidr, macaddr, macaddr8, money, bit, varbit, xml,
            // tsvector, tsquery, point and the other geometric types, pg_lsn, regclass & co.
            17 | 18 | 19 | 25 | 142 | 600 | 601 | 602 | 603 | 604 | 628 | 650 | 718 | 774 | 790
            | 829 | 869 | 1042 | 1043 | 1082 | 1083 | 1186 | 1266 | 1560 | 1562 | 2202 | 2203
            | 2204 | 2205 | 2206 | 2950 | 3220 | 3614 | 3615 | 3734 | 4089 | 4096 => Text,
            _ => Array(Box::new(TypeKind::builtin(builtin_array_element(oid)?)?)),
        })
    }
}

/// The element type of a built-in array type.
pub(crate) fn builtin_array_element(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1005 => 21,
        1007 => 23,
        1009 => 25,
        1014 => 1042,
        1015 => 1043,
        1016 => 20,
        1021 => 700,
        1022 => 701,
        1028 => 26,
        1115 => 1114,
        1182 => 1082,
        1183 => 1083,
        1185 => 1184,
        1187 => 1186,
        199 => 114,
        1231 => 1700,
        1270 => 1266,
        2951 => 2950,
        3807 => 3802,
        1040 => 829,
        1041 => 869,
        651 => 650,
        _ => return None,
    })
}

/// Appends the JSON for one non-null column value, given as PostgreSQL text output.
pub(crate) fn write_json(out: &mut String, kind: &TypeKind, text: &str) {
    match kind {
        TypeKind::Bool => out.push_str(if text == "t" { "true" } else { "false" }),
        TypeKind::Int => write_number_or_string(out, text),
        TypeKind::Numeric | TypeKind::Float => write_number_or_string(out, text),
        TypeKind::Json | TypeKind::Jsonb => write_embedded_json(out, text),
        TypeKind::Timestamp => write_timestamp(out, text, false),
        TypeKind::TimestampTz => write_timestamp(out, text, true),
        TypeKind::Array(element) => match parse_array(text) {
            Some(array) => write_array(out, element, &array),
            None => write_string(out, text),
        },
        TypeKind::Text => write_string(out, text),
    }
}

/// Numbers as JSON numbers when they are valid JSON numbers (`NaN`, `Infinity` are not).
fn write_number_or_string(out: &mut String, text: &str) {
    if is_json_number(text) {
        out.push_str(text);
    } else {
        write_string(out, text);
    }
}

fn is_json_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    if bytes.first() == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let int_len = i - int_start;
    if int_len == 0 || (int_len > 1 && bytes[int_start] == b'0') {
        return false;
    }
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == frac_start {
            return false;
        }
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == bytes.len()
}

/// `json`/`jsonb` text is JSON already. A `\u0000` escape (allowed in `json`, not in `jsonb`
/// columns) is replaced by U+FFFD so the value can be stored; see [`sanitize_json`].
fn write_embedded_json(out: &mut String, text: &str) {
    match sanitize_json(text) {
        Some(fixed) => out.push_str(&fixed),
        None => out.push_str(text),
    }
}

/// If `text` is JSON holding a `\u0000` escape (which `jsonb` cannot store), returns it
/// re-encoded with U+FFFD in place of each NUL; `None` when nothing needs fixing (or when it is
/// not valid JSON).
pub(crate) fn sanitize_json(text: &str) -> Option<String> {
    if !text.contains("\\u0000") {
        return None;
    }
    let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
    if !replace_nul(&mut value) {
        return None;
    }
    serde_json::to_string(&value).ok()
}

fn replace_nul(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => {
            *s = s.replace('\0', "\u{fffd}");
            true
        }
        Value::Array(items) => items.iter_mut().fold(false, |hit, v| replace_nul(v) | hit),
        Value::Object(map) => {
            let mut hit = false;
            for (key, mut value) in std::mem::take(map) {
                hit |= replace_nul(&mut value);
                let key = if key.contains('\0') {
                    hit = true;
                    key.replace('\0', "\u{fffd}")
                } else {
                    key
                };
                map.insert(key, value);
            }
            hit
        }
        _ => false,
    }
}

/// `2026-11-22 10:07:00.5+00` → `"2026-11-22T10:07:00.5Z"`; `infinity`, BC dates and anything
/// unexpected stay as they are.
fn write_timestamp(out: &mut String, text: &str, with_zone: bool) {
    // Only what ISO output is made of is copied as it is (anything else is escaped).
    let iso = text.len() >= 19
        && text.as_bytes()[10] == b' '
        && !text.ends_with(" BC")
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'.' | b'+' | b' '));
    // ASCII only: the slices fall between characters.
    let (true, Some(date), Some(time)) = (iso, text.get(..10), text.get(11..)) else {
        return write_string(out, text);
    };
    out.push('"');
    out.push_str(date);
    out.push('T');
    match time.strip_suffix("+00") {
        Some(time) if with_zone => {
            out.push_str(time);
            out.push('Z');
        }
        _ => out.push_str(time),
    }
    out.push('"');
}

/// Appends `text` as a JSON string.
// The slices are between the characters `char_indices` yields: on char boundaries.
#[allow(clippy::string_slice)]
pub(crate) fn write_string(out: &mut String, text: &str) {
    out.reserve(text.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&text[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(escape);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&text[start..]);
    out.push('"');
}

/// A parsed array literal: nested lists of elements (`None` for NULL).
#[derive(Debug, PartialEq, Eq)]
enum ArrayItem {
    Element(Option<String>),
    Nested(Vec<ArrayItem>),
}

/// Parses PostgreSQL's array output, e.g. `{1,2}`, `{{a,"b c"},{NULL,"d\"e"}}` or
/// `[0:1]={1,2}` (the bounds are dropped). `None` when the text is not an array literal.
fn parse_array(text: &str) -> Option<Vec<ArrayItem>> {
    let body = match text.find("={") {
        // From the `{`, an ASCII character: between characters.
        Some(i) if text.starts_with('[') => text.get(i + 1..)?,
        _ => text,
    };
    let mut chars = body.chars().peekable();
    let items = parse_array_level(&mut chars)?;
    chars.next().is_none().then_some(items)
}

fn parse_array_level(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Option<Vec<ArrayItem>> {
    if chars.next()? != '{' {
        return None;
    }
    let mut items = Vec::new();
    if chars.peek() == Some(&'}') {
        chars.next();
        return Some(items);
    }
    loop {
        match chars.peek()? {
            '{' => items.push(ArrayItem::Nested(parse_array_level(chars)?)),
            '"' => {
                chars.next();
                let mut element = String::new();
                loop {
                    match chars.next()? {
                        '\\' => element.push(chars.next()?),
                        '"' => break,
                        c => element.push(c),
                    }
                }
                items.push(ArrayItem::Element(Some(element)));
            }
            _ => {
                let mut element = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    element.push(c);
                    chars.next();
                }
                let element = element.trim();
                items.push(ArrayItem::Element(
                    (!element.eq_ignore_ascii_case("NULL")).then(|| element.to_owned()),
                ));
            }
        }
        match chars.next()? {
            ',' => continue,
            '}' => return Some(items),
            _ => return None,
        }
    }
}

fn write_array(out: &mut String, element: &TypeKind, items: &[ArrayItem]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            ArrayItem::Element(None) => out.push_str("null"),
            ArrayItem::Element(Some(text)) => write_json(out, element, text),
            ArrayItem::Nested(nested) => write_array(out, element, nested),
        }
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_typed_json() {
        use crate::json_value::{TypeKind, write_json};

        let mut out = String::new();
        write_json(&mut out, &TypeKind::Numeric, "123.4500");
        out.push(' ');
        write_json(
            &mut out,
            &TypeKind::Array(Box::new(TypeKind::Int)),
            "{1,NULL,3}",
        );
        out.push(' ');
        write_json(&mut out, &TypeKind::TimestampTz, "2026-11-22 10:07:00.5+00");
        assert_eq!(out, r#"123.4500 [1,null,3] "2026-11-22T10:07:00.5Z""#);
    }

    #[test]
    fn builtin_type_oids_map_to_their_kinds() {
        use crate::json_value::TypeKind;

        assert_eq!(TypeKind::builtin(16), Some(TypeKind::Bool));
        assert_eq!(
            TypeKind::builtin(1007),
            Some(TypeKind::Array(Box::new(TypeKind::Int)))
        );
        assert_eq!(TypeKind::builtin(999_999), None);
    }

    #[test]
    fn a_float_nan_becomes_a_json_string() {
        let mut out = String::new();
        write_json(&mut out, &TypeKind::Float, "NaN");
        assert_eq!(out, r#""NaN""#);
    }

    #[test]
    fn nul_escapes_are_replaced_for_jsonb() {
        use crate::json_value::sanitize_json;

        assert_eq!(
            sanitize_json(r#"{"a":"x\u0000y"}"#).unwrap(),
            "{\"a\":\"x\u{fffd}y\"}"
        );
        assert_eq!(sanitize_json(r#"{"a":"\\u0000"}"#), None); // an escaped backslash, no NUL
    }

    #[test]
    fn strings_are_escaped_as_json() {
        let mut out = String::new();
        write_string(&mut out, "a\"b\n");
        assert_eq!(out, r#""a\"b\n""#);
    }

    fn json(kind: TypeKind, text: &str) -> serde_json::Value {
        let mut out = String::new();
        write_json(&mut out, &kind, text);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"))
    }

    #[test]
    fn scalars() {
        use serde_json::json;
        assert_eq!(json(TypeKind::Bool, "t"), json!(true));
        assert_eq!(json(TypeKind::Bool, "f"), json!(false));
        assert_eq!(json(TypeKind::Int, "-42"), json!(-42));
        // As a number (compared by value: with `arbitrary_precision` it keeps its text).
        assert_eq!(json(TypeKind::Float, "1.5e-07").as_f64(), Some(1.5e-7));
        assert_eq!(json(TypeKind::Float, "Infinity"), json!("Infinity"));
        assert_eq!(json(TypeKind::Float, "-Infinity"), json!("-Infinity"));
        assert_eq!(json(TypeKind::Numeric, "NaN"), json!("NaN"));
        assert_eq!(json(TypeKind::Text, "tab\there"), json!("tab\there"));
        assert_eq!(json(TypeKind::Text, "\u{1}"), json!("\u{1}"));
        assert_eq!(
            json(TypeKind::Jsonb, r#"{"a": [1, {"b": null}]}"#),
            json!({"a": [1, {"b": null}]})
        );
    }

    #[test]
    fn numeric_keeps_every_digit() {
        let mut out = String::new();
        write_json(
            &mut out,
            &TypeKind::Numeric,
            "12345678901234567890.123456789012345678900",
        );
        assert_eq!(out, "12345678901234567890.123456789012345678900");
    }

    #[test]
    fn rejects_what_json_does_not_accept_as_numbers() {
        for text in ["01", "1.", ".5", "+1", "1e", "", "-", "0x10"] {
            assert!(!is_json_number(text), "{text}");
        }
        for text in ["0", "-0", "10", "0.5", "1e10", "1E-5", "-12.5e+3"] {
            assert!(is_json_number(text), "{text}");
        }
    }

    #[test]
    fn timestamps() {
        use serde_json::json;
        assert_eq!(
            json(TypeKind::TimestampTz, "2026-11-22 10:07:00+00"),
            json!("2026-11-22T10:07:00Z")
        );
        assert_eq!(
            json(TypeKind::Timestamp, "2026-11-22 10:07:00.123456"),
            json!("2026-11-22T10:07:00.123456")
        );
        assert_eq!(json(TypeKind::TimestampTz, "infinity"), json!("infinity"));
        assert_eq!(
            json(TypeKind::Timestamp, "0044-03-15 12:00:00 BC"),
            json!("0044-03-15 12:00:00 BC")
        );
        // Not ISO output (found by the fuzz target): escaped as a string, never copied.
        assert_eq!(
            json(TypeKind::Timestamp, "2026-11-22 \"10:07:00\n"),
            json!("2026-11-22 \"10:07:00\n")
        );
    }

    #[test]
    fn json_arrays_are_built_in() {
        // `_json` is oid 199 (found by the fuzz target: it was written as 1199).
        assert_eq!(
            TypeKind::builtin(199),
            Some(TypeKind::Array(Box::new(TypeKind::Json)))
        );
        assert_eq!(TypeKind::builtin(1199), None);
    }

    #[test]
    fn arrays() {
        use serde_json::json;
        let ints = TypeKind::Array(Box::new(TypeKind::Int));
        assert_eq!(json(ints.clone(), "{}"), json!([]));
        assert_eq!(
            json(ints.clone(), "{{1,2},{3,NULL}}"),
            json!([[1, 2], [3, null]])
        );
        assert_eq!(json(ints, "[0:1]={7,8}"), json!([7, 8]));
        let texts = TypeKind::Array(Box::new(TypeKind::Text));
        assert_eq!(
            json(
                texts,
                r#"{plain,"with space","quote\"and\\slash",NULL,"NULL"}"#
            ),
            json!(["plain", "with space", "quote\"and\\slash", null, "NULL"])
        );
        let jsons = TypeKind::Array(Box::new(TypeKind::Jsonb));
        assert_eq!(
            json(jsons, r#"{"{\"a\": 1}","[2]"}"#),
            json!([{"a": 1}, [2]])
        );
    }

    #[test]
    fn nul_escapes_in_json_are_replaced() {
        assert_eq!(
            json(TypeKind::Json, r#"{"k\u0000": "v\u0000"}"#),
            serde_json::json!({"k\u{fffd}": "v\u{fffd}"})
        );
    }
}
