//! The result table: one row per comparison, in Markdown.

use std::fmt::Write as _;

/// Which way a ratio should go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Goal {
    /// At least this ratio (throughputs).
    AtLeast(f64),
    /// At most this ratio (times, bytes).
    AtMost(f64),
    /// An absolute bound with a unit, checked by the benchmark itself.
    Text(&'static str),
    /// A reference row without a goal.
    None,
}

/// One row of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// `P1`…`P6`, with a suffix for extra rows.
    pub id: String,
    /// What is compared.
    pub what: String,
    /// The baseline's value.
    pub baseline: String,
    /// The tracked variant's value.
    pub tracked: String,
    /// tracked ÷ baseline (or the value for absolute goals).
    pub ratio: Option<f64>,
    /// The goal.
    pub goal: Goal,
    /// Met, missed, or not applicable.
    pub met: Option<bool>,
}

impl Row {
    /// A ratio row; whether the goal is met follows from the ratio.
    pub(crate) fn ratio(
        id: &str,
        what: &str,
        baseline: String,
        tracked: String,
        ratio: f64,
        goal: Goal,
    ) -> Self {
        let met = match goal {
            Goal::AtLeast(bound) => Some(ratio >= bound),
            Goal::AtMost(bound) => Some(ratio <= bound),
            Goal::Text(_) | Goal::None => None,
        };
        Self {
            id: id.to_owned(),
            what: what.to_owned(),
            baseline,
            tracked,
            ratio: Some(ratio),
            goal,
            met,
        }
    }
}

/// The Markdown table of `rows`.
pub(crate) fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| id | comparison | baseline | tracked | ratio | goal | met |\n|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let ratio = row
            .ratio
            .map_or_else(|| "—".to_owned(), |r| format!("{r:.3}"));
        let goal = match row.goal {
            Goal::AtLeast(bound) => format!("≥ {bound}"),
            Goal::AtMost(bound) => format!("≤ {bound}"),
            Goal::Text(text) => text.to_owned(),
            Goal::None => "reference".to_owned(),
        };
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {ratio} | {goal} | {met} |",
            row.id, row.what, row.baseline, row.tracked
        );
    }
    out
}
