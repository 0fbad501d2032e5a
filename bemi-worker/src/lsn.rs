//! WAL positions as PostgreSQL prints them (`16/B374D848`).

/// `0x16_B374D848` → `16/B374D848`.
pub(crate) fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// `16/B374D848` → `0x16_B374D848`.
pub(crate) fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_round_trip_as_postgresql_prints_them() {
        assert_eq!(format_lsn(0x16_B374D848), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374D848));
        assert_eq!(parse_lsn("nonsense"), None);
    }
}
