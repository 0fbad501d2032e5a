//! Times and durations on the command line: `--since 15m`, `--until 2024-05-01T12:00:00Z`,
//! `--heartbeat-interval 10s`.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};

/// A duration such as `500ms`, `30s`, `15m`, `2h`, `7d` or `2w` (a bare number is seconds).
///
/// ```
/// use std::time::Duration;
/// use bemi_worker::cli::time::parse_duration;
///
/// assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(15 * 60)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || {
        format!(
            "{text:?} is not a duration: write a whole number and a unit, e.g. 500ms, 30s, 15m, \
             2h, 7d or 2w"
        )
    };
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_millis: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" | "sec" | "secs" => 1_000,
        "m" | "min" | "mins" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        "w" | "week" | "weeks" => 604_800_000,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit_millis)
        .map(Duration::from_millis)
        .ok_or_else(invalid)
}

/// An instant: an RFC 3339 timestamp (`2024-05-01T12:00:00Z`), a timestamp as `bemi changes`
/// and psql print it (`2024-05-01 12:00:00.5+00`), or a duration meaning that long before `now`
/// (`15m`, `2h`, `7d`).
///
/// ```
/// use bemi_worker::cli::time::parse_instant;
/// use chrono::{TimeZone, Utc};
///
/// let now = Utc.with_ymd_and_hms(2024, 5, 8, 12, 0, 0).unwrap();
/// assert_eq!(parse_instant("7d", now), Ok(Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()));
/// assert_eq!(
///     parse_instant("2024-05-01T14:00:00+02:00", now),
///     Ok(Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap())
/// );
/// assert!(parse_instant("yesterday", now).is_err());
/// ```
pub fn parse_instant(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let trimmed = text.trim();
    if let Ok(ago) = parse_duration(trimmed) {
        let ago = chrono::Duration::from_std(ago).map_err(|e| format!("{text:?}: {e}"))?;
        return now
            .checked_sub_signed(ago)
            .ok_or_else(|| format!("{text:?} reaches before the earliest supported time"));
    }
    DateTime::parse_from_rfc3339(trimmed)
        .or_else(|_| DateTime::<FixedOffset>::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .map(|instant| instant.with_timezone(&Utc))
        .map_err(|_| {
            format!(
                "{text:?} is neither a timestamp nor a duration: write an RFC 3339 timestamp \
                 (2024-05-01T12:00:00Z) or how long ago (30s, 15m, 2h, 7d)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn durations_with_every_unit() {
        let cases = [
            ("0s", 0),
            ("45", 45_000),
            ("45s", 45_000),
            ("1500ms", 1_500),
            ("15m", 900_000),
            ("2h", 7_200_000),
            ("7d", 604_800_000),
            ("2w", 1_209_600_000),
            (" 3 days ", 259_200_000),
        ];
        for (text, millis) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_durations_say_what_to_write() {
        for text in ["", "m", "-5m", "1.5h", "5 parsecs", "99999999999999999999d"] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains("15m"), "{text}: {error}");
        }
        assert!(parse_duration("999999999999999w").is_err());
    }

    #[test]
    fn instants_relative_and_absolute() {
        let now = Utc.with_ymd_and_hms(2024, 5, 8, 12, 0, 0).unwrap();
        let at = |h, m, s| Utc.with_ymd_and_hms(2024, 5, 8, h, m, s).unwrap();
        assert_eq!(parse_instant("15m", now), Ok(at(11, 45, 0)));
        assert_eq!(parse_instant("2h", now), Ok(at(10, 0, 0)));
        assert_eq!(parse_instant("2024-05-08T09:30:00Z", now), Ok(at(9, 30, 0)));
        assert_eq!(parse_instant("2024-05-08 09:30:00Z", now), Ok(at(9, 30, 0)));
        // As `bemi changes` and psql print timestamptz values.
        assert_eq!(
            parse_instant("2024-05-08 09:30:00+00", now),
            Ok(at(9, 30, 0))
        );
        let fractional = parse_instant("2024-05-08 09:30:00.25+02", now).unwrap();
        assert_eq!(
            fractional,
            at(7, 30, 0) + chrono::Duration::milliseconds(250)
        );
        for bad in ["", "2024-05-08", "tomorrow", "12:00"] {
            let error = parse_instant(bad, now).unwrap_err();
            assert!(error.contains("RFC 3339"), "{bad}: {error}");
        }
    }
}
