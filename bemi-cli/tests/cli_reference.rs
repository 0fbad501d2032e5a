//! The book's CLI reference (`docs/src/reference/cli.md`) is `bemi --help` and every
//! subcommand's `--help`, rendered from clap: this test fails when the file is not what the
//! current flags render, and rewrites it with `BEMI_BLESS=1`:
//!
//! ```sh
//! BEMI_BLESS=1 cargo test -p bemi-cli --test cli_reference
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::CommandFactory as _;

/// Where the reference lives, from this crate's directory.
fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/src/reference/cli.md")
}

const HEADER: &str = "\
# CLI reference

<!-- Generated from clap by bemi-cli/tests/cli_reference.rs; do not edit by hand.
     Regenerate: BEMI_BLESS=1 cargo test -p bemi-cli --test cli_reference -->

Every command's `--help`, as `bemi` prints it. Conventions shared by all commands:

- Every flag can also be set with the environment variable shown as `[env: …]`; lists are
  comma-separated (`BEMI_TABLES=public.*,billing.invoice`). Positional arguments (`bemi
  history TABLE PK`, `bemi at TABLE [PK] TIME`) are read from the command line only.
- The source database is `DATABASE_URL`; the commands that read the audit trail take
  `--destination-url` (`BEMI_DESTINATION_URL`), default `DATABASE_URL`.
- Logs go to stderr, at `info` unless `RUST_LOG` says otherwise (`RUST_LOG=bemi_worker=debug`).
  A URL in a log line or an error shows `***` for its passwords.
- Exit codes: 0 success, 1 an error (its message says what to do next), 2 bad arguments (a
  malformed time or duration included).
";

/// Renders `command` and its subcommands (depth first, in clap's order) as Markdown sections.
fn render(command: &mut clap::Command, out: &mut String) {
    let name = command
        .get_bin_name()
        .unwrap_or_else(|| command.get_name())
        .to_owned();
    let help = command.render_long_help().to_string();
    let help = help
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n");
    write!(out, "\n## `{name}`\n\n```text\n{}\n```\n", help.trim_end()).unwrap();
    for sub in command.get_subcommands_mut() {
        if sub.get_name() != "help" {
            render(sub, out);
        }
    }
}

/// The whole reference, independent of the environment (values of `[env: …]` variables are
/// never shown) and of the terminal.
fn reference() -> String {
    let mut command = bemi_cli::Cli::command()
        .bin_name("bemi")
        .mut_args(|arg| arg.hide_env_values(true));
    hide_env_values(&mut command);
    command.build();
    let mut out = HEADER.to_owned();
    render(&mut command, &mut out);
    out
}

fn hide_env_values(command: &mut clap::Command) {
    for sub in command.get_subcommands_mut() {
        *sub = std::mem::take(sub).mut_args(|arg| arg.hide_env_values(true));
        hide_env_values(sub);
    }
}

#[test]
fn cli_reference_is_current() {
    let expected = reference();
    let path = reference_path();
    if std::env::var_os("BEMI_BLESS").is_some_and(|v| v != "0") {
        std::fs::write(&path, &expected)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is not what the current clap definitions render (a flag or its help changed).\n\
         Regenerate it with:\n\n    BEMI_BLESS=1 cargo test -p bemi-cli --test cli_reference\n\n\
         and commit the result.",
        path.display()
    );
}

#[test]
fn the_command_renders_as_bemi() {
    let reference = reference();
    assert!(reference.contains("\n## `bemi`\n"), "{reference}");
    assert!(reference.contains("\n## `bemi worker`\n"), "{reference}");
    assert!(reference.contains("Usage: bemi worker"), "{reference}");
}
