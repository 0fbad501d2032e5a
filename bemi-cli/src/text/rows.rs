//! Rows of a source table as `bemi at` prints them: like psql, one column per field (in
//! jsonb's key order), strings without quotes, `null` as an empty cell, long cells cut.
//!
//! ```text
//!  id | task  | is_completed
//! ----+-------+--------------
//!  1  | Sleep | true
//! (1 row)
//! ```

use serde_json::Value;

use super::changes::{MAX_JSON_WIDTH, cut, header_lines, jsonb_key_order, jsonb_text, line, width};

/// Column names and widths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowsLayout {
    columns: Vec<String>,
    widths: Vec<usize>,
}

impl RowsLayout {
    /// The columns of `rows` (every key of any of them, shortest first as jsonb orders them)
    /// and widths that fit them.
    pub(crate) fn fit(rows: &[Value]) -> Self {
        let mut columns: Vec<String> = Vec::new();
        for row in rows {
            for key in row.as_object().into_iter().flat_map(|map| map.keys()) {
                if !columns.contains(key) {
                    columns.push(key.clone());
                }
            }
        }
        columns.sort_by(|a, b| jsonb_key_order(a, b));
        let mut widths: Vec<usize> = columns.iter().map(|c| width(c)).collect();
        for row in rows {
            for (w, column) in widths.iter_mut().zip(&columns) {
                *w = (*w).max(width(&cell(row.get(column))));
            }
        }
        Self { columns, widths }
    }

    /// The header line and the rule under it.
    pub(crate) fn header(&self) -> String {
        header_lines(self.columns.iter().map(String::as_str), &self.widths)
    }

    /// One row; cells wider than their column are cut, fields that are not columns left out.
    pub(crate) fn row(&self, row: &Value) -> String {
        let cells: Vec<String> = self.columns.iter().map(|c| cell(row.get(c))).collect();
        line(cells.iter().map(String::as_str), &self.widths, false)
    }
}

/// A field as a cell: strings without quotes, `null` (or missing) empty, the rest as jsonb
/// prints it, cut at [`MAX_JSON_WIDTH`] characters.
pub(crate) fn cell(value: Option<&Value>) -> String {
    let text = match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => jsonb_text(other),
    };
    cut(&text, MAX_JSON_WIDTH)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rows_are_printed_one_column_per_field() {
        let layout = RowsLayout::fit(&[json!({"id": 1, "task": "Sleep"})]);
        assert_eq!(layout.header(), " id | task\n----+-------");
        assert_eq!(
            layout.row(&json!({"id": 1, "task": "Sleep"})),
            " 1  | Sleep"
        );

        let layout = RowsLayout::fit(&[json!({"b": 1}), json!({"a": 2})]);
        assert!(layout.header().starts_with(" a | b"));
        assert_eq!(RowsLayout::fit(&[]).header(), "\n");

        let layout = RowsLayout::fit(&[json!({"id": 1, "note": null})]);
        assert_eq!(layout.row(&json!({"id": 2, "note": null})), " 2  |");
    }

    #[test]
    fn cells_print_strings_bare_and_null_empty() {
        assert_eq!(cell(Some(&json!("Sleep"))), "Sleep");
        assert_eq!(cell(Some(&json!(null))), "");
        assert_eq!(cell(Some(&json!({"a": [1, 2]}))), r#"{"a": [1, 2]}"#);
    }
}
