//! Full (64-bit) transaction ids from the 32-bit ids of the replication stream.
//!
//! pgoutput's Begin message carries a transaction's 32-bit id, which repeats every ~4 billion
//! transactions; PostgreSQL's full id (`xid8`, `pg_current_xact_id()`) is the epoch (how often
//! the 32-bit counter wrapped) above it. Every transaction the stream can still deliver is
//! within 2^31 of the counter's current value — the slot holds back the horizon that
//! wraparound protection waits for — so the full id is the one nearest to a recent full id.
//! [`FullXids`] starts from the server's next id when the stream starts and follows the ids it
//! is given.

/// Extends 32-bit transaction ids to full ids, near a reference that follows the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FullXids {
    reference: u64,
}

impl FullXids {
    /// Extends ids near `reference`: a full id the server gave recently, e.g. its next one
    /// (`pg_snapshot_xmax(pg_current_snapshot())`).
    pub(crate) fn new(reference: u64) -> Self {
        Self { reference }
    }

    /// The full id of the 32-bit `xid`: the one nearest to the reference. The reference then
    /// moves forward to it, so that a stream that runs for longer than a wraparound stays exact.
    pub(crate) fn full(&mut self, xid: u32) -> u64 {
        // The signed distance from the reference's low 32 bits to `xid` (|distance| < 2^31).
        let distance = xid.wrapping_sub(self.reference as u32).cast_signed();
        let full = self
            .reference
            .checked_add_signed(i64::from(distance))
            // Below zero: only in epoch 0, where the full id is the 32-bit one.
            .unwrap_or(u64::from(xid));
        self.reference = self.reference.max(full);
        full
    }
}

#[cfg(test)]
mod tests {
    use super::FullXids;

    const EPOCH: u64 = 1 << 32;

    #[test]
    fn ids_in_epoch_zero_stay_as_they_are() {
        let mut xids = FullXids::new(1_000);
        assert_eq!(xids.full(740), 740);
        assert_eq!(xids.full(1_200), 1_200);
        assert_eq!(xids.full(3), 3);
    }

    #[test]
    fn ids_take_the_epoch_of_the_reference() {
        let mut xids = FullXids::new(5 * EPOCH + 1_000);
        assert_eq!(xids.full(999), 5 * EPOCH + 999);
        assert_eq!(xids.full(2_000_000), 5 * EPOCH + 2_000_000);
    }

    #[test]
    fn an_id_from_before_the_wraparound_takes_the_previous_epoch() {
        // The counter wrapped into epoch 2 just now; a transaction that began before commits.
        let mut xids = FullXids::new(2 * EPOCH + 10);
        assert_eq!(xids.full(u32::MAX - 5), 2 * EPOCH - 6);
        assert_eq!(xids.full(12), 2 * EPOCH + 12);
    }

    #[test]
    fn the_reference_follows_the_stream_across_wraparounds() {
        let mut xids = FullXids::new(100);
        let mut expected = 100u64;
        // Ten wraparounds in steps of a billion transactions.
        for _ in 0..43 {
            expected += 1_000_000_000;
            assert_eq!(xids.full(expected as u32), expected);
        }
        assert!(expected > 10 * EPOCH);
    }

    #[test]
    fn the_same_32_bit_id_in_two_epochs_gets_two_full_ids() {
        let mut early = FullXids::new(EPOCH - 100);
        let mut late = FullXids::new(2 * EPOCH - 100);
        assert_ne!(early.full(4_000_000_000), late.full(4_000_000_000));
    }
}
