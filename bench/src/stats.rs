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

    /// The first and third quartiles (linear interpolation between the closest ranks).
    pub(crate) fn quartiles(&self) -> (f64, f64) {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            match sorted.len() {
                0 => f64::NAN,
                1 => sorted[0],
                n => {
                    let rank = q * (n - 1) as f64;
                    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
                    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
                }
            }
        };
        (at(0.25), at(0.75))
    }

    /// Half the interquartile range, relative to the median.
    pub(crate) fn spread(&self) -> f64 {
        let (q1, q3) = self.quartiles();
        (q3 - q1) / 2.0 / self.median().abs().max(f64::MIN_POSITIVE)
    }

    /// `median unit ± spread%` (half the interquartile range).
    pub(crate) fn show(&self, unit: &str) -> String {
        format!(
            "{} {unit} ± {:.0}%",
            human(self.median()),
            self.spread() * 100.0
        )
    }

    /// The per-round ratios `self[i] ÷ base[i]` of two variants measured in the same rounds:
    /// pairing by round cancels the noise that hits both variants of a round alike.
    pub(crate) fn ratios_to(&self, base: &Samples) -> Samples {
        Samples(
            self.0
                .iter()
                .zip(&base.0)
                .map(|(with, base)| with / base)
                .collect(),
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
    baseline: B,
    tracked: T,
) -> anyhow::Result<(Samples, Samples)>
where
    B: FnMut() -> FB,
    T: FnMut() -> FT,
    FB: Future<Output = anyhow::Result<f64>>,
    FT: Future<Output = anyhow::Result<f64>>,
{
    let (base, with) = interleaved_rounds(rounds, baseline, tracked).await?;
    Ok((Samples(base), Samples(with)))
}

/// [`interleaved`] for rounds that measure more than one number: each round's result as it is.
pub(crate) async fn interleaved_rounds<R, B, T, FB, FT>(
    rounds: usize,
    mut baseline: B,
    mut tracked: T,
) -> anyhow::Result<(Vec<R>, Vec<R>)>
where
    B: FnMut() -> FB,
    T: FnMut() -> FT,
    FB: Future<Output = anyhow::Result<R>>,
    FT: Future<Output = anyhow::Result<R>>,
{
    let (mut base, mut with) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for round in 0..rounds {
        if round % 2 == 0 {
            base.push(baseline().await?);
            with.push(tracked().await?);
        } else {
            with.push(tracked().await?);
            base.push(baseline().await?);
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
        // Quartiles of 1..=5 are 2 and 4: half the IQR is 1, relative to the median 3.
        let five = Samples(vec![5.0, 1.0, 4.0, 2.0, 3.0]);
        assert_eq!(five.quartiles(), (2.0, 4.0));
        assert!((five.spread() - 1.0 / 3.0).abs() < 1e-9);
        // One wild round does not widen the IQR the way it widens the range.
        let wild = Samples(vec![100.0, 101.0, 99.0, 100.0, 300.0]);
        assert!(wild.spread() < 0.01, "{}", wild.spread());
        let ratios = Samples(vec![90.0, 200.0]).ratios_to(&Samples(vec![100.0, 400.0]));
        assert_eq!(ratios.0, vec![0.9, 0.5]);
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut values, 50.0), 51.0);
        assert_eq!(percentile(&mut values, 99.0), 99.0);
    }
}
