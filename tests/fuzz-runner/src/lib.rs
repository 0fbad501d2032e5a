//! # bemi-fuzz
//!
//! Fuzzing with properties: run a check on generated inputs for a time budget, and on a
//! failure shrink the input to a minimal one (proptest's generation and shrinking).
//!
//! Every fuzz target of the tests runs through [`check`]. Without `BEMI_FUZZ_SECONDS` it runs
//! a smoke of `smoke_cases` inputs (what `cargo test` and CI do); with `BEMI_FUZZ_SECONDS=600`
//! each target runs for ten minutes, in rounds of fresh random seeds.
//!
//! ```
//! use proptest::prelude::*;
//!
//! bemi_fuzz::check("addition commutes", 64, (any::<u8>(), any::<u8>()), |(a, b)| {
//!     prop_assert_eq!(u16::from(a) + u16::from(b), u16::from(b) + u16::from(a));
//!     Ok(())
//! })
//! .unwrap();
//! ```

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// The environment variable that sets each target's time budget, in seconds.
pub const SECONDS_VAR: &str = "BEMI_FUZZ_SECONDS";

/// Inputs per round of a timed run.
const ROUND_CASES: u32 = 256;

/// The time budget of each target, if `BEMI_FUZZ_SECONDS` sets one.
#[must_use]
pub fn budget() -> Option<Duration> {
    std::env::var(SECONDS_VAR)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|seconds| *seconds > 0)
        .map(Duration::from_secs)
}

/// Runs `property` on inputs of `strategy`: `smoke_cases` of them, or rounds of fresh seeds
/// until the [`budget`] is spent. Returns how many inputs passed, or the minimal failing input
/// (shrunk) with the reason, as a message that names `target`.
///
/// # Errors
///
/// The first input that fails, shrunk.
pub fn check<S>(
    target: &str,
    smoke_cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> Result<u64, String>
where
    S: Strategy,
    S::Value: Debug,
{
    let deadline = budget().map(|budget| Instant::now() + budget);
    let mut passed = 0u64;
    loop {
        let cases = if deadline.is_some() {
            ROUND_CASES
        } else {
            smoke_cases
        };
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            // Shrinking a slow property (one that talks to PostgreSQL) stays bounded.
            max_shrink_iters: 2_048,
            ..Config::default()
        });
        match runner.run(&strategy, &property) {
            Ok(()) => passed += u64::from(cases),
            Err(TestError::Fail(reason, input)) => {
                return Err(format!(
                    "fuzz target {target}: failed after {passed} passing inputs: {reason}\n\
                     minimal failing input: {input:#?}"
                ));
            }
            Err(TestError::Abort(reason)) => {
                return Err(format!("fuzz target {target}: aborted: {reason}"));
            }
        }
        if deadline.is_none_or(|deadline| Instant::now() >= deadline) {
            eprintln!("fuzz target {target}: {passed} inputs passed");
            return Ok(passed);
        }
    }
}

/// Query strings as an HTTP client can send them, for properties over hostile input: pairs of
/// one of `keys` (or any text) with a value that is any bytes, any text, or one of `near_valid`
/// with any character put anywhere — each byte percent-encoded or, where it is printable ASCII,
/// left as it is — and now and then any text or bytes at all.
///
/// ```
/// use proptest::strategy::{Strategy as _, ValueTree as _};
///
/// let strategy = bemi_fuzz::query_string(&["table", "limit"], &["15m"]);
/// let mut runner = proptest::test_runner::TestRunner::deterministic();
/// let query: String = strategy.new_tree(&mut runner).unwrap().current();
/// let _ = query; // any String: the property decides what is right for it
/// ```
pub fn query_string(
    keys: &'static [&'static str],
    near_valid: &'static [&'static str],
) -> impl Strategy<Value = String> {
    use proptest::collection::vec;
    use proptest::prelude::*;

    let value = prop_oneof![
        vec(any::<u8>(), 0..24),
        any::<String>().prop_map(String::into_bytes),
        (
            prop::sample::select(near_valid),
            any::<prop::sample::Index>(),
            any::<char>(),
        )
            .prop_map(|(valid, at, c)| {
                let mut chars: Vec<char> = valid.chars().collect();
                chars.insert(at.index(chars.len() + 1), c);
                chars.into_iter().collect::<String>().into_bytes()
            }),
    ];
    let key = prop_oneof![
        4 => prop::sample::select(keys).prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    let pairs = vec((key, value, vec(any::<bool>(), 0..24)), 0..6).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(key, value, raw)| {
                format!(
                    "{}={}",
                    percent_encode(key.as_bytes(), &[]),
                    percent_encode(value, raw)
                )
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    prop_oneof![
        3 => pairs,
        1 => any::<String>(),
        1 => vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Percent-encodes every byte, or leaves a printable ASCII one as it is where `raw` says so
/// (never `&`, `=`, `%` or `+`, which would change the query's structure).
fn percent_encode(bytes: &[u8], raw: &[bool]) -> String {
    bytes
        .iter()
        .zip(raw.iter().chain(std::iter::repeat(&false)))
        .map(|(byte, raw)| match byte {
            b'!'..=b'~' if *raw && !matches!(byte, b'&' | b'=' | b'%' | b'+') => {
                char::from(*byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
