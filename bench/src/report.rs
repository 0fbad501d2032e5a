//! The result table: one row per comparison, in Markdown.

use std::fmt::Write as _;

use crate::stats::Samples;

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

/// What a row says about its goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The goal is met.
    Met,
    /// The goal is missed.
    Missed,
    /// The rounds spread wider than the ratio's distance to the goal: the run cannot tell.
    Inconclusive,
    /// A reference row.
    NotApplicable,
}

impl Verdict {
    /// The verdict of an absolute check.
    pub(crate) fn of(met: bool) -> Self {
        if met { Self::Met } else { Self::Missed }
    }

    /// The verdict of a ratio whose rounds gave `ratios`: met or missed by the median, unless
    /// half the interquartile range is wider than the median's distance to the bound.
    pub(crate) fn of_ratios(ratios: &Samples, goal: Goal) -> Self {
        let median = ratios.median();
        let (q1, q3) = ratios.quartiles();
        let half_iqr = (q3 - q1) / 2.0;
        let (bound, met) = match goal {
            Goal::AtLeast(bound) => (bound, median >= bound),
            Goal::AtMost(bound) => (bound, median <= bound),
            Goal::Text(_) | Goal::None => return Self::NotApplicable,
        };
        if half_iqr > (median - bound).abs() {
            Self::Inconclusive
        } else {
            Self::of(met)
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// `P1`…`P9`, with a suffix for extra rows.
    pub id: String,
    /// What is compared.
    pub what: String,
    /// The baseline's value.
    pub baseline: String,
    /// The tracked variant's value.
    pub tracked: String,
    /// tracked ÷ baseline: the median of the rounds' ratios, and their quartiles.
    pub ratio: Option<(f64, f64, f64)>,
    /// The goal.
    pub goal: Goal,
    /// Met, missed, inconclusive, or not applicable.
    pub verdict: Verdict,
}

impl Row {
    /// A ratio row from the per-round ratios (tracked ÷ baseline of the same round, see
    /// [`Samples::ratios_to`]); the verdict follows from their median and spread.
    pub(crate) fn ratio(
        id: &str,
        what: &str,
        baseline: String,
        tracked: String,
        ratios: &Samples,
        goal: Goal,
    ) -> Self {
        let (q1, q3) = ratios.quartiles();
        Self {
            id: id.to_owned(),
            what: what.to_owned(),
            baseline,
            tracked,
            ratio: Some((ratios.median(), q1, q3)),
            goal,
            verdict: Verdict::of_ratios(ratios, goal),
        }
    }
}

/// The Markdown table of `rows`.
pub(crate) fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| id | comparison | baseline | tracked | ratio (IQR) | goal | met |\n|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let ratio = match row.ratio {
            None => "—".to_owned(),
            Some((median, q1, q3)) if q3 > q1 => format!("{median:.3} ({q1:.2}–{q3:.2})"),
            Some((median, _, _)) => format!("{median:.3}"),
        };
        let goal = match row.goal {
            Goal::AtLeast(bound) => format!("≥ {bound}"),
            Goal::AtMost(bound) => format!("≤ {bound}"),
            Goal::Text(text) => text.to_owned(),
            Goal::None => "reference".to_owned(),
        };
        let met = match row.verdict {
            Verdict::Met => "yes",
            Verdict::Missed => "**no**",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NotApplicable => "—",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {ratio} | {goal} | {met} |",
            row.id, row.what, row.baseline, row.tracked
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_wider_than_the_distance_to_the_goal_is_inconclusive() {
        let tight = Samples(vec![0.93, 0.94, 0.95, 0.94, 0.93]);
        assert_eq!(
            Verdict::of_ratios(&tight, Goal::AtLeast(0.90)),
            Verdict::Met
        );
        assert_eq!(
            Verdict::of_ratios(&tight, Goal::AtLeast(0.97)),
            Verdict::Missed
        );
        let wide = Samples(vec![0.80, 0.88, 0.92, 1.00, 1.05]);
        assert_eq!(
            Verdict::of_ratios(&wide, Goal::AtLeast(0.90)),
            Verdict::Inconclusive
        );
        assert_eq!(Verdict::of_ratios(&wide, Goal::AtMost(1.3)), Verdict::Met);
        assert_eq!(
            Verdict::of_ratios(&wide, Goal::None),
            Verdict::NotApplicable
        );
        let table = markdown(&[Row::ratio(
            "P0",
            "x",
            "a".into(),
            "b".into(),
            &wide,
            Goal::AtLeast(0.9),
        )]);
        assert!(
            table.contains("0.920 (0.88–1.00) | ≥ 0.9 | inconclusive"),
            "{table}"
        );
    }
}
