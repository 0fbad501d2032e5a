//! `bemi history TABLE PK`: everything that happened to one row, oldest first.

use bemi_audit::{Change, TimeTravel};
use futures_util::TryStreamExt as _;

use super::audit_db::{AuditArgs, ensure_known_table, finish_output, print_json_lines};
use super::{boolish, write_stdout};
use crate::text as table;

/// `bemi history`
#[derive(Debug, clap::Args)]
pub(crate) struct HistoryArgs {
    #[command(flatten)]
    db: AuditArgs,
    /// The table (`todo`, or `schema.todo`).
    #[arg(value_name = "[SCHEMA.]TABLE")]
    table: String,
    /// The row's primary key as stored (`26`; a composite key as JSON: '["x",1]').
    #[arg(value_name = "PK")]
    pk: String,
    /// Print each change as one line of JSON, with every column and nothing cut.
    #[arg(long, env = "BEMI_HISTORY_JSON", value_parser = boolish())]
    json: bool,
}

/// Runs `bemi history`.
pub(super) async fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let pool = args.db.connect().await?;
    ensure_known_table(&pool, args.table.trim()).await?;
    let travel = TimeTravel::table(args.table.trim());
    let changes = travel.history(&pool, args.pk.trim());
    let result = if args.json {
        print_json_lines(changes).await?
    } else {
        let all: Vec<Change> = changes.try_collect().await?;
        write_stdout(&table::render(&all))
    };
    pool.close().await;
    finish_output(result)
}
