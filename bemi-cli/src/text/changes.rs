//! The pretty output of `bemi changes`: an aligned table like psql's, JSON cells in jsonb's text
//! style and cut at a readable width.
//!
//! ```text
//!  primary_key | table | operation | before | after                                             | context                                                                   | committed_at
//! -------------+-------+-----------+--------+---------------------------------------------------+---------------------------------------------------------------------------+------------------------
//!  26          | todo  | CREATE    | {}     | {"id": 26, "task": "Sleep", "is_completed": false} | {"method": "POST", "user_id": 187234, "endpoint": "/todo", "SQL": "INSE… | 2023-12-11 17:09:09+00
//! ```

use std::cmp::Ordering;
use std::fmt::Write as _;

use bemi_audit::Change;
use chrono::{DateTime, Timelike as _, Utc};
use serde_json::Value;

/// The columns, as in Bemi's documentation.
pub(crate) const HEADERS: [&str; 7] = [
    "primary_key",
    "table",
    "operation",
    "before",
    "after",
    "context",
    "committed_at",
];

/// JSON cells longer than this many characters are cut (`--json` prints them whole).
pub(crate) const MAX_JSON_WIDTH: usize = 60;
/// Primary keys and table names longer than this are cut.
pub(crate) const MAX_NAME_WIDTH: usize = 40;

/// The cells of one change, cut to their maximum widths.
pub(crate) fn cells(change: &Change) -> [String; 7] {
    let table = if change.schema == "public" {
        change.table.clone()
    } else {
        format!("{}.{}", change.schema, change.table)
    };
    [
        cut(change.primary_key.as_deref().unwrap_or(""), MAX_NAME_WIDTH),
        cut(&table, MAX_NAME_WIDTH),
        change.operation.as_str().to_owned(),
        cut(&jsonb_text(&change.before), MAX_JSON_WIDTH),
        cut(&jsonb_text(&change.after), MAX_JSON_WIDTH),
        cut(&context_text(&change.context), MAX_JSON_WIDTH),
        timestamp_text(change.committed_at),
    ]
}

/// Column widths, and the lines of a table with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangesLayout {
    widths: [usize; 7],
}

impl ChangesLayout {
    /// Widths that fit the headers and `rows`.
    pub(crate) fn fit(rows: &[[String; 7]]) -> Self {
        let mut widths = HEADERS.map(width);
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        Self { widths }
    }

    /// Widths for rows not seen yet (`--follow`): room for typical values.
    pub(crate) fn roomy() -> Self {
        Self {
            widths: [11, 12, 9, 40, 40, 40, 29],
        }
    }

    /// Widens the layout where `other` is wider.
    pub(crate) fn max(&self, other: &ChangesLayout) -> Self {
        let mut widths = self.widths;
        for (w, o) in widths.iter_mut().zip(other.widths) {
            *w = (*w).max(o);
        }
        Self { widths }
    }

    /// The header line and the line under it.
    pub(crate) fn header(&self) -> String {
        header_lines(HEADERS, &self.widths)
    }

    /// One row; a cell wider than its column is cut to fit.
    pub(crate) fn row(&self, cells: &[String; 7]) -> String {
        line(cells.iter().map(String::as_str), &self.widths, false)
    }
}

/// The header line of a table with columns `widths` wide, and the rule under it.
pub(crate) fn header_lines<'a>(
    titles: impl IntoIterator<Item = &'a str>,
    widths: &[usize],
) -> String {
    let mut text = line(titles, widths, true);
    text.push('\n');
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
    text.push_str(&rule.join("+"));
    text
}

/// One line of a table as psql aligns it: each cell cut to its column's width and padded
/// (centered in the header), `|` between columns, no trailing spaces.
pub(crate) fn line<'a>(
    cells: impl IntoIterator<Item = &'a str>,
    widths: &[usize],
    center: bool,
) -> String {
    let mut text = String::new();
    for (i, (cell, &w)) in cells.into_iter().zip(widths).enumerate() {
        if i > 0 {
            text.push('|');
        }
        let cell = cut(cell, w);
        let pad = w - width(&cell);
        let left = if center { pad / 2 } else { 0 };
        let _ = write!(
            text,
            " {}{cell}{} ",
            " ".repeat(left),
            " ".repeat(pad - left)
        );
    }
    text.trim_end().to_owned()
}

/// The whole table of `changes` with psql's `(N rows)` footer.
pub(crate) fn render(changes: &[Change]) -> String {
    let rows: Vec<[String; 7]> = changes.iter().map(cells).collect();
    let layout = ChangesLayout::fit(&rows);
    let mut text = layout.header();
    text.push('\n');
    for row in &rows {
        text.push_str(&layout.row(row));
        text.push('\n');
    }
    text.push_str(&footer(rows.len() as u64));
    text.push('\n');
    text
}

/// psql's footer: `(1 row)`, `(3 rows)`.
pub(crate) fn footer(rows: u64) -> String {
    format!("({rows} {})", if rows == 1 { "row" } else { "rows" })
}

/// A context in jsonb's style, but with the library's long `SQL` key last, so that the app's own
/// keys (`user_id`, `endpoint`, …) show before a cell is cut.
pub(crate) fn context_text(context: &Value) -> String {
    let Some(sql) = context.get(bemi_core::protocol::SQL_KEY) else {
        return jsonb_text(context);
    };
    let mut others = context.clone();
    if let Some(map) = others.as_object_mut() {
        map.remove(bemi_core::protocol::SQL_KEY);
    }
    let rest = jsonb_text(&others);
    let sql = format!("\"{}\": {}", bemi_core::protocol::SQL_KEY, jsonb_text(sql));
    match rest.strip_suffix('}') {
        Some(open) if open.len() > 1 => format!("{open}, {sql}}}"),
        _ => format!("{{{sql}}}"),
    }
}

/// JSON as PostgreSQL prints jsonb: `{"id": 26, "task": "Sleep"}`, object keys shortest first.
pub(crate) fn jsonb_text(value: &Value) -> String {
    let mut text = String::new();
    write_jsonb(&mut text, value);
    text
}

fn write_jsonb(text: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| jsonb_key_order(a, b));
            text.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    text.push_str(", ");
                }
                text.push_str(&Value::String(key.clone()).to_string());
                text.push_str(": ");
                write_jsonb(text, value);
            }
            text.push('}');
        }
        Value::Array(items) => {
            text.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    text.push_str(", ");
                }
                write_jsonb(text, item);
            }
            text.push(']');
        }
        scalar => text.push_str(&scalar.to_string()),
    }
}

/// The order in which jsonb keeps an object's keys: shorter first, then bytewise.
pub(crate) fn jsonb_key_order(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// A timestamp as psql prints a `timestamptz` in UTC: `2023-12-11 17:09:09.5+00`.
pub(crate) fn timestamp_text(instant: DateTime<Utc>) -> String {
    let mut text = instant.format("%Y-%m-%d %H:%M:%S").to_string();
    let micros = instant.nanosecond() / 1_000 % 1_000_000;
    if micros > 0 {
        let fraction = format!("{micros:06}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push_str("+00");
    text
}

/// Display width in characters (control characters are shown escaped by [`cut`]).
pub(crate) fn width(text: &str) -> usize {
    text.chars().count()
}

/// One line of at most `max` characters: control characters escaped, `…` where it was cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    let escaped: String = text
        .chars()
        .flat_map(|c| {
            let shown: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            shown
        })
        .collect();
    if width(&escaped) <= max {
        return escaped;
    }
    let mut shortened: String = escaped.chars().take(max.saturating_sub(1)).collect();
    shortened.push('…');
    shortened
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn long_cells_are_cut_with_an_ellipsis_and_lines_stay_aligned() {
        let long = json!({"SQL": "x".repeat(500)});
        let cell = cut(&jsonb_text(&long), MAX_JSON_WIDTH);
        assert_eq!(width(&cell), MAX_JSON_WIDTH);
        assert!(cell.ends_with('…'));
        assert_eq!(cut("a\nb", 10), "a\\nb");

        let rows = [
            ["1", "todo", "CREATE", "{}", &cell, "{}", "t"].map(String::from),
            ["22", "todo", "DELETE", "{}", "{}", "{}", "t"].map(String::from),
        ];
        let layout = ChangesLayout::fit(&rows);
        let lines: Vec<String> = rows.iter().map(|r| layout.row(r)).collect();
        let bar = |line: &str| line.match_indices('|').map(|(i, _)| i).collect::<Vec<_>>();
        // Byte offsets differ with the multi-byte ellipsis; compare char offsets.
        let char_bars = |line: &str| {
            line.chars()
                .enumerate()
                .filter(|(_, c)| *c == '|')
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        assert_eq!(char_bars(&lines[0]), char_bars(&lines[1]));
        assert_eq!(bar(&layout.header()).len(), 6);
    }

    #[test]
    fn a_narrow_layout_cuts_wider_rows() {
        let layout = ChangesLayout::fit(&[]);
        let row = ["1", "todo", "CREATE", "{\"id\": 1}", "{}", "{}", "t"].map(String::from);
        let line = layout.row(&row);
        assert!(line.contains("| {\"id\"… |"), "{line}");
    }

    #[test]
    fn header_is_centered_like_psql() {
        let rows = [["1", "todo", "CREATE", "{}", "{}", "{}", "t"].map(String::from)];
        let layout = ChangesLayout::fit(&rows).max(&ChangesLayout {
            widths: [11, 9, 9, 6, 9, 7, 12],
        });
        assert!(layout.header().starts_with(" primary_key |   table   |"));
    }

    #[test]
    fn layouts_fit_their_headers_and_widen() {
        let layout = ChangesLayout::fit(&[]);
        assert!(
            layout
                .header()
                .starts_with(" primary_key | table | operation |")
        );
        assert!(layout.header().contains("\n-------------+-------+"));
        assert_eq!(layout.row(&Default::default()).matches('|').count(), 6);
        let cells = [
            "1",
            "todo",
            "CREATE",
            "{}",
            "{}",
            "{}",
            "2024-05-01 12:00:00+00",
        ]
        .map(String::from);
        assert!(
            layout
                .row(&cells)
                .starts_with(" 1           | todo  | CREATE    | {}     |")
        );
        assert!(ChangesLayout::roomy().header().len() > 100);
        assert_eq!(layout.max(&ChangesLayout::roomy()), ChangesLayout::roomy());
    }

    #[test]
    fn a_table_ends_with_psqls_footer() {
        assert!(render(&[]).ends_with("(0 rows)\n"));
        assert_eq!(footer(1), "(1 row)");
        assert_eq!(footer(0), "(0 rows)");
    }

    #[test]
    fn json_is_printed_as_jsonb_with_the_sql_key_last() {
        let text = context_text(&json!({"SQL": "DELETE FROM todo", "user_id": 1}));
        assert_eq!(text, r#"{"user_id": 1, "SQL": "DELETE FROM todo"}"#);
        let text = jsonb_text(&json!({"task": "Sleep", "id": 26, "tags": [1, 2]}));
        assert_eq!(text, r#"{"id": 26, "tags": [1, 2], "task": "Sleep"}"#);
    }

    #[test]
    fn timestamps_trim_trailing_zeros_of_microseconds() {
        use chrono::TimeZone as _;

        let instant = Utc.with_ymd_and_hms(2023, 12, 11, 17, 9, 9).unwrap();
        assert_eq!(timestamp_text(instant), "2023-12-11 17:09:09+00");
        let instant = DateTime::parse_from_rfc3339("2024-01-02T03:04:05.120000Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(timestamp_text(instant), "2024-01-02 03:04:05.12+00");
    }
}
