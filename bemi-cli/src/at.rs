//! `bemi at TABLE [PK] TIME`: a row, or a whole table, as it was at an instant.

use std::io;

use bemi_audit::TimeTravel;
use chrono::Utc;
use futures_util::TryStreamExt as _;
use serde_json::Value;

use super::audit_db::{AuditArgs, ensure_known_table, finish_output};
use super::time::PointInTime;
use super::{boolish, write_stdout};
use crate::text::RowsLayout;
use crate::text::footer;

/// Rows read before the columns' widths are fixed (later rows are cut to them).
const FIT_ROWS: usize = 1_000;

/// `bemi at`
#[derive(Debug, clap::Args)]
pub(crate) struct AtArgs {
    #[command(flatten)]
    db: AuditArgs,
    /// The table (`todo`, or `schema.todo`).
    #[arg(value_name = "[SCHEMA.]TABLE")]
    table: String,
    #[command(flatten)]
    key_and_time: KeyAndTime,
    /// Print each row as one line of JSON, nothing cut.
    #[arg(long, env = "BEMI_AT_JSON", value_parser = boolish())]
    json: bool,
}

/// `[PK] TIME`: the row's key (none for the whole table) and the instant. The instant is the
/// last value, so clap cannot check it with a value parser of its own: it is checked here,
/// while the arguments are parsed, so that a bad one is a usage error too (exit code 2).
#[derive(Debug, Clone, PartialEq)]
struct KeyAndTime {
    pk: Option<String>,
    time: PointInTime,
}

impl KeyAndTime {
    const ID: &'static str = "key_and_time";
}

impl clap::FromArgMatches for KeyAndTime {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Self::from_arg_matches_mut(&mut matches.clone())
    }

    fn from_arg_matches_mut(matches: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
        let values: Vec<String> = matches
            .remove_many::<String>(Self::ID)
            .map(Iterator::collect)
            .unwrap_or_default();
        let (pk, time) = match values.as_slice() {
            [time] => (None, time),
            [pk, time] => (Some(pk.clone()), time),
            _ => {
                return Err(usage_error(
                    clap::error::ErrorKind::WrongNumberOfValues,
                    "`bemi at` takes a table, an optional primary key and an instant",
                ));
            }
        };
        let time = PointInTime::parse_arg(time).map_err(|error| {
            usage_error(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value {time:?} for TIME: {error}"),
            )
        })?;
        Ok(Self { pk, time })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// A usage error of `bemi at`, with its usage line.
fn usage_error(kind: clap::error::ErrorKind, message: impl std::fmt::Display) -> clap::Error {
    let mut bemi = <super::Cli as clap::CommandFactory>::command();
    bemi.build();
    match bemi.find_subcommand_mut("at") {
        Some(at) => at.error(kind, message),
        None => clap::Error::raw(kind, format!("{message}\n")),
    }
}

impl clap::Args for KeyAndTime {
    fn augment_args(command: clap::Command) -> clap::Command {
        command.arg(
            clap::Arg::new(Self::ID)
                .value_name("[PK] TIME")
                .num_args(1..=2)
                .required(true)
                .help(
                    "The row's primary key as stored (`26`; a composite key as JSON: \
                     '[\"x\",1]'), then the instant: a timestamp in any form \
                     PostgreSQL prints or reads (2026-05-01T12:00:00Z, 2026-05-01 \
                     12:00:00.5+05:30; without an offset, UTC) or how long ago (15m, 2h, 7d). Without a key: the whole table",
                ),
        )
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

/// Runs `bemi at`.
pub(super) async fn run(args: AtArgs) -> anyhow::Result<()> {
    let KeyAndTime { pk, time } = &args.key_and_time;
    let pk = pk.as_deref().map(str::trim);
    let pool = args.db.connect().await?;
    let at = super::time::resolve(time, "TIME", &pool, Utc::now()).await?;
    ensure_known_table(&pool, args.table.trim()).await?;
    let travel = TimeTravel::table(args.table.trim());
    let mut output = Output::new(args.json);
    let result = match pk {
        Some(pk) => {
            let row = travel.row_at(&pool, pk, at).await?;
            let rows: Vec<Value> = row
                .into_iter()
                .map(bemi_audit::RowState::into_row)
                .collect();
            output.rows(&rows).and_then(|()| output.finish())
        }
        None => {
            let mut states = travel.table_at(&pool, at);
            let mut batch = Vec::new();
            let mut result = Ok(());
            while let Some(state) = states.try_next().await? {
                batch.push(state.into_row());
                if batch.len() >= FIT_ROWS {
                    result = output.rows(&batch);
                    batch.clear();
                    if result.is_err() {
                        break;
                    }
                }
            }
            drop(states);
            result
                .and_then(|()| output.rows(&batch))
                .and_then(|()| output.finish())
        }
    };
    pool.close().await;
    finish_output(result)
}

/// Rows on stdout: a table whose columns fit the first rows, or JSON lines.
struct Output {
    json: bool,
    layout: Option<RowsLayout>,
    count: u64,
}

impl Output {
    fn new(json: bool) -> Self {
        Self {
            json,
            layout: None,
            count: 0,
        }
    }

    fn rows(&mut self, rows: &[Value]) -> io::Result<()> {
        let mut text = String::new();
        if !self.json && self.layout.is_none() && !rows.is_empty() {
            let layout = RowsLayout::fit(rows);
            text.push_str(&layout.header());
            text.push('\n');
            self.layout = Some(layout);
        }
        for row in rows {
            match &self.layout {
                Some(layout) => text.push_str(&layout.row(row)),
                None => text.push_str(&serde_json::to_string(row).map_err(io::Error::other)?),
            }
            text.push('\n');
        }
        self.count += rows.len() as u64;
        write_stdout(&text)
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        write_stdout(&format!("{}\n", footer(self.count)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Harness {
        #[command(flatten)]
        args: AtArgs,
    }

    #[test]
    fn an_optional_key_then_the_instant() {
        let whole = Harness::try_parse_from(["bemi", "todo", "15m"]).unwrap();
        assert_eq!(whole.args.table, "todo");
        assert_eq!(
            whole.args.key_and_time,
            KeyAndTime {
                pk: None,
                time: PointInTime::Ago(std::time::Duration::from_secs(900))
            }
        );
        let row = Harness::try_parse_from(["bemi", "todo", r#"["x",1]"#, "2024-05-08T09:30:00Z"])
            .unwrap();
        assert_eq!(row.args.key_and_time.pk.as_deref(), Some(r#"["x",1]"#));
        assert!(matches!(row.args.key_and_time.time, PointInTime::At(_)));
    }

    #[test]
    fn a_bad_instant_or_too_many_values_is_a_usage_error() {
        for args in [
            &["bemi", "todo", "last tuesday"][..],
            &["bemi", "todo", "1", "last tuesday"],
        ] {
            let error = Harness::try_parse_from(args).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
            assert!(error.use_stderr());
            let text = error.to_string();
            assert!(
                text.contains("\"last tuesday\"") && text.contains("2024-05-01T12:00:00Z"),
                "{text}"
            );
        }
        let error = Harness::try_parse_from(["bemi", "todo", "1", "15m", "extra"]).unwrap_err();
        assert!(error.use_stderr(), "{error}");
        let error = Harness::try_parse_from(["bemi", "todo"]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }
}
