//! `bemi at TABLE [PK] TIME`: a row, or a whole table, as it was at an instant.

use std::io;

use anyhow::anyhow;
use bemi_core::audit::TimeTravel;
use chrono::Utc;
use futures_util::TryStreamExt as _;
use serde_json::Value;

use super::audit_db::{AuditArgs, ensure_known_table, finish_output};
use super::rows_table::RowsLayout;
use super::table::footer;
use super::time::parse_instant;
use super::{boolish, write_stdout};

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
    /// The row's primary key as stored (`26`; a composite key as JSON: '["x",1]'), then the
    /// instant: an RFC 3339 timestamp (2026-05-01T12:00:00Z, or as `bemi changes` prints it)
    /// or how long ago (15m, 2h, 7d). Without a key: the whole table.
    #[arg(value_name = "[PK] TIME", num_args = 1..=2, required = true)]
    key_and_time: Vec<String>,
    /// Print each row as one line of JSON, nothing cut.
    #[arg(long, env = "BEMI_AT_JSON", value_parser = boolish())]
    json: bool,
}

/// Runs `bemi at`.
pub(super) async fn run(args: AtArgs) -> anyhow::Result<()> {
    let (pk, time) = match args.key_and_time.as_slice() {
        [time] => (None, time),
        [pk, time] => (Some(pk.trim()), time),
        _ => return Err(anyhow!("expected `bemi at TABLE [PK] TIME`")),
    };
    let at = parse_instant(time, Utc::now()).map_err(|e| anyhow!("TIME {e}"))?;
    let pool = args.db.connect().await?;
    ensure_known_table(&pool, args.table.trim()).await?;
    let travel = TimeTravel::table(args.table.trim());
    let mut output = Output::new(args.json);
    let result = match pk {
        Some(pk) => {
            let row = travel.row_at(&pool, pk, at).await?;
            let rows: Vec<Value> = row.into_iter().map(|state| state.into_row()).collect();
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
