//! Property test of the command line (`BEMI_FUZZ_SECONDS=N` runs it for N seconds): every
//! command with any flags and values — any Unicode, any bytes (also as arguments that are not
//! UTF-8), times like `123456789é` — parses or is a usage error, never a panic.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::panic::{AssertUnwindSafe, catch_unwind};

use clap::{CommandFactory as _, Parser as _};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::Cli;

/// Every command (`["migration", "sql"]`, `["changes"]`, …) with its flags (`--since`, …).
fn commands() -> Vec<(Vec<String>, Vec<String>)> {
    fn walk(command: &clap::Command, path: &[String], out: &mut Vec<(Vec<String>, Vec<String>)>) {
        for sub in command.get_subcommands() {
            let mut path = path.to_vec();
            path.push(sub.get_name().to_owned());
            if sub.has_subcommands() {
                walk(sub, &path, out);
            } else {
                let flags = sub
                    .get_arguments()
                    .filter_map(|arg| arg.get_long())
                    .filter(|long| !matches!(*long, "help" | "version"))
                    .map(|long| format!("--{long}"))
                    .collect();
                out.push((path, flags));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), &[], &mut out);
    out
}

/// An argument: any text, any bytes (not always UTF-8), digits and one more character.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<String>().prop_map(String::into_bytes),
        vec(any::<u8>(), 0..24),
        ("[0-9:+ T-]{0,12}", any::<char>()).prop_map(|(head, c)| format!("{head}{c}").into_bytes()),
        prop::sample::select(vec![
            "123456789é",
            "15m",
            "2024-05-01T12:00:00+é",
            "a=\"\\u0000\"",
            "é"
        ])
        .prop_map(|text| text.as_bytes().to_vec()),
    ]
}

#[test]
fn fuzz_every_command_line_parses_or_is_a_usage_error() {
    let commands = commands();
    assert!(
        commands.iter().any(|(path, _)| path == &["changes"]),
        "{commands:?}"
    );
    let argv = prop::sample::select(commands).prop_flat_map(|(path, flags)| {
        let flag = if flags.is_empty() {
            value().boxed()
        } else {
            prop::sample::select(flags)
                .prop_map(String::into_bytes)
                .boxed()
        };
        let argument = prop_oneof![
            2 => (flag.clone(), value()).prop_map(|(flag, value)| vec![flag, value]),
            1 => flag.prop_map(|flag| vec![flag]),
            1 => value().prop_map(|value| vec![value]),
        ];
        (Just(path), vec(argument, 0..4))
    });
    bemi_fuzz::check("command lines", 1_000, argv, |(path, arguments)| {
        let mut argv: Vec<OsString> = vec!["bemi".into()];
        argv.extend(path.iter().map(OsString::from));
        argv.extend(arguments.into_iter().flatten().map(OsString::from_vec));
        let parsed = catch_unwind(AssertUnwindSafe(|| Cli::try_parse_from(&argv)))
            .map_err(|_| TestCaseError::fail(format!("parsing panicked on {argv:?}")))?;
        if let Err(error) = parsed {
            prop_assert!(!error.to_string().trim().is_empty(), "{argv:?}");
        }
        Ok(())
    })
    .unwrap_or_else(|failure| panic!("{failure}"));
}

/// Regression: `--since 123456789é` panicked inside the `é` while the arguments were parsed.
#[test]
fn a_time_with_a_multi_byte_character_is_parsed_without_a_panic() {
    for command in [
        &["changes", "--since"][..],
        &["changes", "--until"],
        &["revert", "--since"],
        &["prune", "--older-than"],
        &["at", "todo", "1"],
    ] {
        let mut argv = vec!["bemi"];
        argv.extend(command);
        argv.push("123456789é");
        let parsed = catch_unwind(|| Cli::try_parse_from(&argv));
        assert!(parsed.is_ok(), "{argv:?} panicked");
    }
}
