//! Rounds, medians and spreads. The baseline and the tracked variant are measured in
//! alternating rounds of the same run, so that machine noise hits both alike.

use std::future::Future;

/// Measurements of one variant.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples(pub Vec<f64>);

impl Samples {
    /// The median.
    pub(crate) fn median(&self) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    /// Half the distance between the smallest and the largest sample, relative to the median.
    pub(crate) fn spread(&self) -> f64 {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (max - min) / 2.0 / self.median().abs().max(f64::MIN_POSITIVE)
    }

    /// `median ± spread%`, with `unit` after the median.
    pub(crate) fn show(&self, unit: &str) -> String {
        format!(
            "{} {unit} ± {:.0}%",
            human(self.median()),
            self.spread() * 100.0
        )
    }
}

/// A number with a sensible precision.
pub(crate) fn human(value: f64) -> String {
    match value.abs() {
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

/// Runs `rounds` alternating rounds of `baseline` and `tracked` (starting with the baseline in
/// odd rounds and the tracked variant in even ones, so neither always goes first).
pub(crate) async fn interleaved<B, T, FB, FT>(
    rounds: usize,
    mut baseline: B,
    mut tracked: T,
) -> anyhow::Result<(Samples, Samples)>
where
    B: FnMut() -> FB,
    T: FnMut() -> FT,
    FB: Future<Output = anyhow::Result<f64>>,
    FT: Future<Output = anyhow::Result<f64>>,
{
    let (mut base, mut with) = (Samples::default(), Samples::default());
    for round in 0..rounds {
        if round % 2 == 0 {
            base.0.push(baseline().await?);
            with.0.push(tracked().await?);
        } else {
            with.0.push(tracked().await?);
            base.0.push(baseline().await?);
        }
    }
    Ok((base, with))
}

/// A variant of a comparison: one measurement per call.
pub(crate) type Variant<'a> = Box<
    dyn FnMut() -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<f64>> + Send + 'a>> + 'a,
>;

/// Runs `rounds` rounds of every variant, rotating which goes first; one [`Samples`] per variant.
pub(crate) async fn rotated(
    rounds: usize,
    variants: &mut [Variant<'_>],
) -> anyhow::Result<Vec<Samples>> {
    let mut samples = vec![Samples::default(); variants.len()];
    for round in 0..rounds {
        for step in 0..variants.len() {
            let index = (round + step) % variants.len();
            samples[index].0.push((variants[index])().await?);
        }
    }
    Ok(samples)
}

/// The `p`-th percentile (0..=100) of `values`.
pub(crate) fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(Samples(vec![3.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(Samples(vec![4.0, 1.0, 2.0, 3.0]).median(), 2.5);
        assert!((Samples(vec![90.0, 100.0, 110.0]).spread() - 0.1).abs() < 1e-9);
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut values, 50.0), 51.0);
        assert_eq!(percentile(&mut values, 99.0), 99.0);
    }
}
