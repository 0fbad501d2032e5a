//! Times and durations as people write them: `15m` (ago), `2024-05-01T12:00:00Z`, `2024-05-01
//! 12:00:00+02` (as psql prints it), `yesterday` (for PostgreSQL to read) — for the `bemi` CLI's
//! `--since` / `--until` / TIME arguments and the web UI's filters.
//!
//! ```
//! use bemi_audit::time::PointInTime;
//! use chrono::{TimeZone as _, Utc};
//!
//! let now = Utc.with_ymd_and_hms(2024, 5, 8, 12, 0, 0).unwrap();
//! let point: PointInTime = "90m".parse().unwrap();
//! assert_eq!(point.resolve_here(now), Ok(Utc.with_ymd_and_hms(2024, 5, 8, 10, 30, 0).unwrap()));
//! ```

use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};

/// A duration such as `500ms`, `30s`, `15m`, `2h`, `7d` or `2w` (a bare number is seconds).
///
/// ```
/// assert_eq!(bemi_audit::time::parse_duration("15m"), Ok(std::time::Duration::from_secs(900)));
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

/// An instant as given on a command line or in a filter: a timestamp, or how long before "now" — kept
/// unresolved, so that "now" is taken when the command runs. The forms PostgreSQL prints
/// (`2026-12-03 12:16:24.5+05:30`, with `T` or a space, offsets with or without minutes, `Z`)
/// are read here, when the arguments are parsed (without an offset: UTC); anything else goes to
/// PostgreSQL, which reads every form it knows (`Dec 3 2026 12:00`, `yesterday`, …), when the
/// command connects — a text it refuses is a usage error there too (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PointInTime {
    /// This long before now.
    Ago(Duration),
    /// This instant.
    At(DateTime<Utc>),
    /// A text for PostgreSQL to read as a `timestamptz` (in UTC where it names no zone).
    Text(String),
}

/// A time that cannot be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// Neither bemi nor PostgreSQL reads the text as a time; the message says what to write.
    #[error("{0}")]
    NotATime(String),
    /// PostgreSQL could not be asked.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The earliest instant a PostgreSQL `timestamptz` holds, 4714-11-24 00:00:00 UTC BC (Julian
/// day 0), in microseconds since 1970-01-01. (Its latest, in the year 294 276, is later than
/// any instant chrono holds.)
pub const POSTGRES_EARLIEST_MICROS: i64 = -210_866_803_200_000_000;

/// Whether PostgreSQL can store `instant` as a `timestamptz` (a filter with an instant it
/// cannot store fails in the database).
///
/// ```
/// use bemi_audit::time::postgres_stores;
///
/// assert!(postgres_stores(chrono::Utc::now()));
/// assert!(!postgres_stores(chrono::DateTime::<chrono::Utc>::MIN_UTC));
/// ```
#[must_use]
pub fn postgres_stores(instant: DateTime<Utc>) -> bool {
    instant.timestamp_micros() >= POSTGRES_EARLIEST_MICROS
}

/// What to write instead of `text`.
fn not_a_time(text: &str) -> String {
    format!(
        "{text:?} is neither a timestamp nor a duration: write a timestamp (2024-05-01T12:00:00Z, \
         2024-05-01 12:00:00+02, as `bemi changes` prints it, or any form PostgreSQL reads) or how \
         long ago (30s, 15m, 2h, 7d)"
    )
}

impl PointInTime {
    /// The instant, with a duration counted back from `now` and a text read by PostgreSQL
    /// through `pool`; [`TimeError::NotATime`] when it is not a time.
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), bemi_audit::time::TimeError> {
    /// let point: bemi_audit::time::PointInTime = "yesterday".parse().unwrap();
    /// let instant = point.resolve(&pool, chrono::Utc::now()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn resolve(
        &self,
        pool: &sqlx::PgPool,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, TimeError> {
        match self {
            Self::Text(text) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SET LOCAL TimeZone = 'UTC'")
                    .execute(&mut *tx)
                    .await?;
                let read: Result<DateTime<Utc>, sqlx::Error> =
                    sqlx::query_scalar("SELECT $1::text::timestamptz")
                        .bind(text)
                        .fetch_one(&mut *tx)
                        .await;
                let _ = tx.rollback().await;
                match read {
                    Ok(instant) => Ok(instant),
                    // Refused, or read as a value no instant has (`infinity`).
                    Err(
                        sqlx::Error::Database(_)
                        | sqlx::Error::ColumnDecode { .. }
                        | sqlx::Error::Decode(_),
                    ) => Err(TimeError::NotATime(not_a_time(text))),
                    Err(error) => Err(error.into()),
                }
            }
            point => point.resolve_here(now).map_err(TimeError::NotATime),
        }
    }

    /// The instant of a duration or a timestamp read here; `Err` for a text PostgreSQL must
    /// read, or for an instant before the earliest PostgreSQL stores (4714-11-24 BC).
    pub fn resolve_here(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        match self {
            Self::At(instant) if postgres_stores(*instant) => Ok(*instant),
            Self::At(instant) => Err(format!(
                "{instant} is before the earliest time PostgreSQL stores (4714-11-24 BC): \
                 write a later time"
            )),
            Self::Ago(ago) => chrono::Duration::from_std(*ago)
                .ok()
                .and_then(|ago| now.checked_sub_signed(ago))
                .filter(|instant| postgres_stores(*instant))
                .ok_or_else(|| {
                    format!(
                        "{ago:?} ago reaches before the earliest time PostgreSQL stores \
                         (4714-11-24 BC): write a shorter duration, e.g. 7d"
                    )
                }),
            Self::Text(text) => Err(format!("{text:?} is for PostgreSQL to read")),
        }
    }

    /// A command line's value parser: [`FromStr`](std::str::FromStr), and a duration or a
    /// timestamp must also resolve (against the current time) to an instant PostgreSQL stores.
    ///
    /// ```
    /// use bemi_audit::time::PointInTime;
    ///
    /// assert!(PointInTime::parse_arg("15m").is_ok());
    /// assert!(PointInTime::parse_arg("999999999d").is_err()); // before the earliest time
    /// ```
    pub fn parse_arg(text: &str) -> Result<Self, String> {
        let point: Self = text.parse()?;
        if let Self::Ago(_) | Self::At(_) = point {
            point
                .resolve_here(Utc::now())
                .map_err(|error| format!("{text:?}: {error}"))?;
        }
        Ok(point)
    }
}

impl std::str::FromStr for PointInTime {
    type Err = String;

    /// A duration (`15m`, `2h`, `7d`), a timestamp in a form PostgreSQL prints, or a text for
    /// PostgreSQL to read. Only an empty text is refused here.
    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(not_a_time(text));
        }
        if let Ok(ago) = parse_duration(trimmed) {
            return Ok(Self::Ago(ago));
        }
        if trimmed
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '-')
            && trimmed.chars().filter(char::is_ascii_digit).count() >= 6
            && let Some(instant) = parse_timestamp(trimmed)
        {
            return Ok(Self::At(instant));
        }
        if trimmed.chars().any(|c| c.is_ascii_digit()) || trimmed.chars().all(char::is_alphabetic) {
            return Ok(Self::Text(trimmed.to_owned()));
        }
        Err(not_a_time(text))
    }
}

/// A timestamp as PostgreSQL prints it (ISO): `YYYY-MM-DD`, then optionally `T` or a space and
/// `HH:MM[:SS[.frac]]`, then optionally `Z` or an offset `±HH[[:]MM]`; without one, UTC.
/// `None` for any other text (never a panic: every split is checked to fall between
/// characters).
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone as _};

    // The date is ASCII: a text whose tenth byte is inside a character is not a timestamp.
    let (date, rest) = text.split_at_checked(text.len().min(10))?;
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let rest = rest.strip_prefix(['T', 't', ' ']).unwrap_or(rest);
    if rest.is_empty() {
        return Utc
            .from_local_datetime(&date.and_time(NaiveTime::MIN))
            .single();
    }
    // Split the time from the offset: the offset starts at the last '+' or '-', or at 'Z'.
    let (time, offset) = match rest.rfind(['+', '-', 'Z', 'z']) {
        Some(at) => rest.split_at_checked(at)?,
        None => (rest, ""),
    };
    let time = NaiveTime::parse_from_str(time.trim(), "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(time.trim(), "%H:%M"))
        .ok()?;
    let naive = NaiveDateTime::new(date, time);
    let offset_seconds = match offset.trim() {
        "" | "Z" | "z" => 0,
        offset => {
            let mut chars = offset.chars();
            let sign = match chars.next() {
                Some('-') => -1,
                _ => 1,
            };
            let digits: Vec<i32> = chars
                .filter(|c| *c != ':')
                .map(|c| c.to_digit(10).and_then(|d| i32::try_from(d).ok()))
                .collect::<Option<_>>()?;
            let (hours, minutes) = match digits.as_slice() {
                [h1, h2] => (h1 * 10 + h2, 0),
                [h1, h2, m1, m2] => (h1 * 10 + h2, m1 * 10 + m2),
                _ => return None,
            };
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let offset = FixedOffset::east_opt(offset_seconds)?;
    offset
        .from_local_datetime(&naive)
        .single()
        .map(|instant| instant.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` as a [`PointInTime`] resolved here at `now`.
    fn parse_instant(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        text.parse::<PointInTime>()?
            .resolve_here(now)
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
            week_ago.resolve_here(now),
            Ok(Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap())
        );
        // Not a form bemi reads: PostgreSQL will.
        assert_eq!(
            "yesterday".parse::<PointInTime>(),
            Ok(PointInTime::Text("yesterday".into()))
        );
        assert!("  ".parse::<PointInTime>().is_err());
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
    fn every_form_postgresql_prints_is_read_here() {
        let at = |h, m, s, ms| {
            Utc.with_ymd_and_hms(2026, 12, 3, h, m, s).unwrap() + chrono::Duration::milliseconds(ms)
        };
        let cases = [
            ("2026-12-03T12:16:24+00", at(12, 16, 24, 0)),
            ("2026-12-03 12:16:24+00", at(12, 16, 24, 0)),
            ("2026-12-03 12:16:24.5+05:30", at(6, 46, 24, 500)),
            ("2026-12-03T12:16:24.5+0530", at(6, 46, 24, 500)),
            ("2026-12-03 12:16:24-03", at(15, 16, 24, 0)),
            ("2026-12-03T12:16:24Z", at(12, 16, 24, 0)),
            (
                "2026-12-03T12:16:24.123456+00:00",
                at(12, 16, 24, 123) + chrono::Duration::microseconds(456),
            ),
            ("2026-12-03 12:16", at(12, 16, 0, 0)),
            ("2026-12-03 12:16:24", at(12, 16, 24, 0)),
            ("2026-12-03", at(0, 0, 0, 0)),
        ];
        for (text, expected) in cases {
            assert_eq!(
                text.parse::<PointInTime>(),
                Ok(PointInTime::At(expected)),
                "{text}"
            );
        }
        // Other forms go to PostgreSQL.
        for text in [
            "Dec 3 2026 12:00",
            "12/03/2026",
            "epoch",
            "2026-12-03 12:16:24 Europe/Paris",
        ] {
            assert!(
                matches!(text.parse::<PointInTime>(), Ok(PointInTime::Text(_))),
                "{text}"
            );
        }
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
        let error = PointInTime::parse_arg("").unwrap_err();
        assert!(
            error.contains("15m") && error.contains("2024-05-01"),
            "{error}"
        );
        // Forms bemi does not read are PostgreSQL's to read when the command runs.
        for deferred in ["tomorrow", "12:00", "May 8 2024"] {
            assert_eq!(
                PointInTime::parse_arg(deferred),
                Ok(PointInTime::Text(deferred.into()))
            );
        }
    }

    #[test]
    fn points_in_time_resolve_when_the_command_runs() {
        let now = Utc.with_ymd_and_hms(2024, 5, 8, 12, 0, 0).unwrap();
        let ago = PointInTime::parse_arg("90m").unwrap();
        assert_eq!(ago, PointInTime::Ago(Duration::from_secs(5_400)));
        assert_eq!(
            ago.resolve_here(now),
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

    /// Regression: the date's ten bytes were split off by byte index, which panicked inside a
    /// multi-byte character (`bemi changes --since 123456789é`).
    #[test]
    fn a_multi_byte_character_where_the_date_ends_is_not_a_panic() {
        for text in [
            "123456789é",
            "2024-05-0é",
            "2024-05-01é12:00",
            "2024-05-01T12:00:00+é",
            "2024-05-01T12:00:00+0é",
            "2024-05-01T12:00:00é+02",
            "2024-05-01 12:00:00+٠٢",
        ] {
            assert_eq!(
                text.parse::<PointInTime>(),
                Ok(PointInTime::Text(text.into())),
                "{text}"
            );
        }
    }

    #[test]
    fn the_earliest_instant_is_postgresqls_julian_day_0() {
        let earliest = chrono::NaiveDate::from_ymd_opt(-4713, 11, 24)
            .unwrap()
            .and_time(chrono::NaiveTime::MIN)
            .and_utc();
        assert_eq!(earliest.timestamp_micros(), POSTGRES_EARLIEST_MICROS);
        assert!(postgres_stores(earliest));
        assert!(!postgres_stores(
            earliest - chrono::Duration::microseconds(1)
        ));
    }

    /// Instants PostgreSQL cannot store are refused here, not by the database.
    #[test]
    fn instants_before_postgresqls_earliest_are_refused() {
        let now = Utc.with_ymd_and_hms(2024, 5, 8, 12, 0, 0).unwrap();
        // 2 425 000 days reach the year -4616; 2 500 000 days the year -4821.
        assert!(parse_instant("2425000d", now).is_ok());
        let error = parse_instant("2500000d", now).unwrap_err();
        assert!(
            error.contains("earliest") && error.contains("7d"),
            "{error}"
        );
        let early = PointInTime::At(
            chrono::NaiveDate::from_ymd_opt(-9999, 1, 1)
                .unwrap()
                .and_time(chrono::NaiveTime::MIN)
                .and_utc(),
        );
        let error = early.resolve_here(now).unwrap_err();
        assert!(error.contains("earliest"), "{error}");
        let error = PointInTime::parse_arg("2500000d").unwrap_err();
        assert!(error.contains("earliest"), "{error}");
    }
}
