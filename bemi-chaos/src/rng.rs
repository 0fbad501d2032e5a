//! A small seeded PRNG (SplitMix64): the run's workload and faults follow from `--seed`.

/// SplitMix64: tiny, fast, and good enough to choose workloads and faults.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// An independent generator for part `n` of the run (a writer, the fault schedule).
    pub(crate) fn fork(&mut self, n: u64) -> Self {
        Self(self.next_u64() ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    pub(crate) fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// True with probability `per_mille / 1000`.
    pub(crate) fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }

    /// One of `items`, chosen by their weights.
    pub(crate) fn weighted<T: Copy>(&mut self, items: &[(T, u64)]) -> T {
        let total: u64 = items.iter().map(|(_, weight)| weight).sum();
        let mut pick = self.next_u64() % total.max(1);
        for &(item, weight) in items {
            if pick < weight {
                return item;
            }
            pick -= weight;
        }
        items[0].0
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn same_seed_same_choices() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let a: Vec<u64> = (0..5).map(|_| a.range(1, 100)).collect();
        let b: Vec<u64> = (0..5).map(|_| b.range(1, 100)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|n| (1..=100).contains(n)));
    }
}
