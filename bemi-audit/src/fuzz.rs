//! Property tests of the parsers of what people type (`BEMI_FUZZ_SECONDS=N` runs each for N
//! seconds): times, durations and context filters take any text — any Unicode, any bytes read
//! lossily, valid forms with a character put anywhere — and give a value or an error that says
//! what to write, never a panic.

use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};

use chrono::{DateTime, Utc};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::parse_context_pair;
use crate::time::{PointInTime, parse_duration, postgres_stores};

/// `run()`, or a failure naming `what` and the input when it panics.
fn no_panic<T>(
    what: &str,
    input: &impl Debug,
    run: impl FnOnce() -> T,
) -> Result<T, TestCaseError> {
    catch_unwind(AssertUnwindSafe(run)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("?");
        TestCaseError::fail(format!("{what} panicked on {input:?}: {message}"))
    })
}

/// Valid forms to mutate.
const TIMES: &[&str] = &[
    "2024-05-01T12:00:00Z",
    "2024-05-01 12:00:00+02",
    "2026-12-03 12:16:24.5+05:30",
    "2026-12-03T12:16:24.123456+0530",
    "2026-12-03 12:16",
    "2026-12-03",
    "15m",
    "250ms",
    " 3 days ",
    "7d",
    "123456789",
    "yesterday",
    "Dec 3 2026 12:00",
    "user_id=187234",
    "a={\"b\":[1,\"x\"]}",
];

/// Any text: Unicode, arbitrary bytes read lossily, digits followed by any character (the
/// shape of `123456789é`), and valid forms with a character replaced, put in or cut off
/// anywhere (between characters).
pub(crate) fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        vec(any::<u8>(), 0..48).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        ("[0-9:+ TZ-]{0,14}", any::<char>(), "[0-9:+ TZ-]{0,8}")
            .prop_map(|(head, c, tail)| format!("{head}{c}{tail}")),
        (
            prop::sample::select(TIMES),
            any::<prop::sample::Index>(),
            any::<char>(),
            0..3u8
        )
            .prop_map(|(valid, at, c, how)| {
                let mut chars: Vec<char> = valid.chars().collect();
                let at = at.index(chars.len() + 1);
                match how {
                    0 if at < chars.len() => chars[at] = c,
                    1 => chars.insert(at, c),
                    _ => chars.truncate(at),
                }
                chars.into_iter().collect()
            }),
    ]
}

/// An instant chrono holds.
fn any_now() -> impl Strategy<Value = DateTime<Utc>> {
    (DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp())
        .prop_map(|seconds| DateTime::from_timestamp(seconds, 0).unwrap_or_default())
}

#[test]
fn fuzz_times_and_durations_never_panic() {
    bemi_fuzz::check(
        "times and durations",
        3_000,
        (any_text(), any_now()),
        |(text, now)| {
            match no_panic("parse_duration", &text, || parse_duration(&text))? {
                Ok(_) => {}
                Err(error) => prop_assert!(error.contains("15m"), "{text:?}: {error}"),
            }
            let point = no_panic("PointInTime::from_str", &text, || {
                text.parse::<PointInTime>()
            })?;
            match &point {
                Ok(point) => {
                    let resolved = no_panic("resolve_here", &text, || point.resolve_here(now))?;
                    if let Ok(instant) = resolved {
                        prop_assert!(postgres_stores(instant), "{text:?} at {now}: {instant}");
                    }
                }
                Err(error) => prop_assert!(
                    error.contains("15m") && error.contains("2024-05-01"),
                    "{text:?}: {error}"
                ),
            }
            let argument = no_panic("PointInTime::parse_arg", &text, || {
                PointInTime::parse_arg(&text)
            })?;
            match argument {
                // A value the command line takes resolves (now, give or take the test's time).
                Ok(PointInTime::At(instant)) => prop_assert!(postgres_stores(instant)),
                Ok(PointInTime::Ago(ago)) => {
                    prop_assert!(PointInTime::Ago(ago).resolve_here(Utc::now()).is_ok());
                }
                Ok(PointInTime::Text(read)) => prop_assert!(!read.trim().is_empty()),
                Err(error) => prop_assert!(!error.is_empty()),
            }
            Ok(())
        },
    )
    .unwrap_or_else(|failure| panic!("{failure}"));
}

#[test]
fn fuzz_context_pairs_never_panic() {
    let pair = prop_oneof![
        any_text(),
        (any_text(), any_text()).prop_map(|(key, value)| format!("{key}={value}")),
        (
            "[a-z_]{1,6}",
            prop_oneof![
                Just("\"\\u0000\"".to_owned()),
                Just("[\"\\u0000\"]".to_owned()),
                Just("{\"\\u0000\":1}".to_owned()),
                "[\\[\\]{}\":,0-9a-z\\\\ .eE+-]{0,16}",
            ]
        )
            .prop_map(|(key, value)| format!("{key}={value}")),
    ];
    bemi_fuzz::check("context pairs", 3_000, pair, |pair| {
        match no_panic("parse_context_pair", &pair, || parse_context_pair(&pair))? {
            // What the database is asked to compare holds no NUL (jsonb refuses it).
            Ok((key, value)) => {
                prop_assert!(!key.is_empty() && !key.contains('\0'), "{pair:?}");
                prop_assert!(!crate::holds_nul(&value), "{pair:?}: {value}");
            }
            Err(error) => {
                let message = error.to_string();
                prop_assert!(
                    message.contains("KEY=VALUE") || message.contains("leave it out"),
                    "{pair:?}: {message}"
                );
            }
        }
        Ok(())
    })
    .unwrap_or_else(|failure| panic!("{failure}"));
}
