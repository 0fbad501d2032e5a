//! Times and durations on the command line: `--since 15m`, `--until 2024-05-01T12:00:00Z`,
//! `--heartbeat-interval 10s`.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};

/// A duration such as `500ms`, `30s`, `15m`, `2h`, `7d` or `2w` (a bare number is seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
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

/// An instant as given on the command line: a timestamp, or how long before "now" — kept
/// unresolved, so that the arguments are checked while they are parsed (a bad one is a usage
/// error, exit code 2) and "now" is taken when the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PointInTime {
    /// This long before now.
    Ago(Duration),
    /// This instant.
    At(DateTime<Utc>),
}

impl PointInTime {
    /// The instant, with a duration counted back from `now`; fails when that reaches before
    /// the earliest time chrono represents.
    pub(crate) fn resolve(self, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        match self {
            Self::At(instant) => Ok(instant),
            Self::Ago(ago) => chrono::Duration::from_std(ago)
                .ok()
                .and_then(|ago| now.checked_sub_signed(ago))
                .ok_or_else(|| format!("{ago:?} ago reaches before the earliest supported time")),
        }
    }

    /// clap's value parser: [`FromStr`](std::str::FromStr), and a duration must also resolve
    /// against the current time.
    pub(crate) fn parse_arg(text: &str) -> Result<Self, String> {
        let point: Self = text.parse()?;
        point
            .resolve(Utc::now())
            .map_err(|error| format!("{text:?}: {error}"))?;
        Ok(point)
    }
}

impl std::str::FromStr for PointInTime {
    type Err = String;

    /// An RFC 3339 timestamp (`2024-05-01T12:00:00Z`), a timestamp as `bemi changes` and psql
    /// print it (`2024-05-01 12:00:00.5+00`), or a duration (`15m`, `2h`, `7d`).
    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if let Ok(ago) = parse_duration(trimmed) {
            return Ok(Self::Ago(ago));
        }
        DateTime::parse_from_rfc3339(trimmed)
            .or_else(|_| {
                DateTime::<FixedOffset>::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S%.f%#z")
            })
            .map(|instant| Self::At(instant.with_timezone(&Utc)))
            .map_err(|_| {
                format!(
                    "{text:?} is neither a timestamp nor a duration: write an RFC 3339 \
                     timestamp (2024-05-01T12:00:00Z, or as `bemi changes` prints it: \
                     2024-05-01 12:00:00+00) or how long ago (30s, 15m, 2h, 7d)"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` as a [`PointInTime`] resolved at `now`.
    fn parse_instant(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        text.parse::<PointInTime>()?
            .resolve(now)
            .map_err(|error| format!("{text:?}: {error}"))
    }
    use chrono::TimeZone;

    #[test]
    fn durations_parse_with_their_units() {
        use crate::time::parse_duration;
        use std::time::Duration;

        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(15 * 60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn a_point_in_time_is_an_age_or_an_instant() {
        use crate::time::PointInTime;
        use chrono::{TimeZone, Utc};

        let now = Utc.with_ymd_and_hms(2024, 5, 8, 12, 0, 0).unwrap();
        let week_ago: PointInTime = "7d".parse().unwrap();
        assert_eq!(
            week_ago.resolve(now),
            Ok(Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap())
        );
        assert!(
            "yesterday"
                .parse::<PointInTime>()
                .unwrap_err()
                .contains("RFC 3339")
        );
    }

    #[test]
    fn an_age_before_chronos_range_is_refused() {
        use crate::time::PointInTime;

        assert!(PointInTime::parse_arg("15m").is_ok());
        assert!(PointInTime::parse_arg("999999999d").is_err()); // before the year -262 143
    }

    #[test]
    fn instants_resolve_ages_and_offsets() {
        use chrono::{TimeZone, Utc};

        let now = Utc.with_ymd_and_hms(2024, 5, 8, 12, 0, 0).unwrap();
        assert_eq!(
            parse_instant("7d", now),
            Ok(Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap())
        );
        assert_eq!(
            parse_instant("2024-05-01T14:00:00+02:00", now),
            Ok(Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap())
        );
        assert!(parse_instant("yesterday", now).is_err());
    }

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
            let error = PointInTime::parse_arg(bad).unwrap_err();
            assert!(error.contains("RFC 3339"), "{bad}: {error}");
        }
    }

    #[test]
    fn points_in_time_resolve_when_the_command_runs() {
        let now = Utc.with_ymd_and_hms(2024, 5, 8, 12, 0, 0).unwrap();
        let ago = PointInTime::parse_arg("90m").unwrap();
        assert_eq!(ago, PointInTime::Ago(Duration::from_secs(5_400)));
        assert_eq!(
            ago.resolve(now),
            Ok(Utc.with_ymd_and_hms(2024, 5, 8, 10, 30, 0).unwrap())
        );
        let at = PointInTime::parse_arg("2024-05-08 09:30:00+00").unwrap();
        assert_eq!(
            at,
            PointInTime::At(Utc.with_ymd_and_hms(2024, 5, 8, 9, 30, 0).unwrap())
        );
        // Parses as a duration, but reaches before the earliest time there is.
        let error = PointInTime::parse_arg("999999999d").unwrap_err();
        assert!(error.contains("earliest"), "{error}");
    }
}
