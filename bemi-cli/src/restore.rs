//! `bemi restore TABLE... --to TIME`: put tables back (or forward) to their state at an
//! instant, in the source database (`DATABASE_URL`), from the audit trail.

use anyhow::anyhow;
use bemi_audit::{DEFAULT_MAX_ROWS, Restore, parse_context_pair};
use bemi_core::context;
use chrono::{DateTime, Utc};
use serde_json::Map;

use super::audit_db::{AuditArgs, finish_output};
use super::changes::context_pairs;
use super::time::PointInTime;
use super::{SourceArgs, boolish, connect, write_stdout};

/// `bemi restore`
#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// The database the tables are restored in.
    #[command(flatten)]
    source: SourceArgs,
    /// The audit trail the changes are read from (default: the source).
    #[command(flatten)]
    db: AuditArgs,
    /// The tables (`todo`, or `schema.todo`); tables with foreign keys between them are
    /// restored together, in an order the keys allow.
    #[arg(value_name = "[SCHEMA.]TABLE", required = true, num_args = 1..)]
    tables: Vec<String>,
    /// The instant to restore to: a timestamp, or how long ago (15m, 2h, 7d). Later than the
    /// last restore's instant rolls forward again.
    #[arg(
        long,
        env = "BEMI_RESTORE_TO",
        value_name = "TIME",
        value_parser = PointInTime::parse_arg
    )]
    to: PointInTime,
    /// Only the row with this primary key (as `changes` stores it: 26, or a JSON array for a
    /// composite key); repeat for several. With one table only.
    #[arg(long = "where-key", env = "BEMI_RESTORE_WHERE_KEY", value_name = "PK")]
    where_key: Vec<String>,
    /// Print the SQL the restore would run (and the rows the trail did not see), and write
    /// nothing.
    #[arg(long, env = "BEMI_RESTORE_DRY_RUN", value_parser = boolish())]
    dry_run: bool,
    /// Restore even when rows changed where the audit trail could not see it: rows that differ
    /// from the trail are overwritten (their current values are printed, and lost), rows the
    /// trail never saw are kept as they are.
    #[arg(long, env = "BEMI_RESTORE_FORCE", value_parser = boolish())]
    force: bool,
    /// Add KEY=VALUE to the context of the restore's writes, e.g. who restores (user=ann).
    #[arg(
        long,
        env = "BEMI_RESTORE_CONTEXT",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        num_args = 1..
    )]
    context: Vec<String>,
    /// Refuse when a table's states in the trail hold more rows than this.
    #[arg(
        long,
        env = "BEMI_RESTORE_MAX_ROWS",
        value_name = "N",
        default_value_t = DEFAULT_MAX_ROWS
    )]
    max_rows: u64,
}

impl RestoreArgs {
    /// The restore, to the resolved `--to`.
    fn restore(&self, to: DateTime<Utc>) -> Restore {
        let mut restore = Restore::new(self.tables.clone(), to)
            .force(self.force)
            .max_rows(self.max_rows);
        if !self.where_key.is_empty() {
            restore = restore.keys(self.where_key.clone());
        }
        restore
    }

    /// The `--context` pairs.
    fn actor(&self) -> anyhow::Result<Map<String, serde_json::Value>> {
        let mut actor = Map::new();
        for pair in context_pairs(&self.context) {
            let (key, value) = parse_context_pair(&pair)?;
            actor.insert(key, value);
        }
        Ok(actor)
    }
}

/// Runs `bemi restore`.
pub(super) async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let source_url = args.source.url()?;
    let actor = args.actor()?;
    let audit = args.db.connect_or(Some(source_url)).await?;
    let to = super::time::resolve(&args.to, "--to", &audit, Utc::now()).await?;
    let restore = args.restore(to);
    let source = connect(source_url).await?;
    let outcome = if args.dry_run {
        restore
            .plan(&audit, &source)
            .await
            .map(|plan| plan.script())
    } else {
        context::scope(actor, restore.run(&audit, &source))
            .await
            .map(|report| {
                for conflict in &report.overwritten {
                    tracing::warn!(%conflict, "forced: overwrote a row the audit trail did not see");
                }
                for conflict in &report.kept {
                    tracing::warn!(
                        row = %format!("{}.{} {}", conflict.schema, conflict.table, conflict.primary_key),
                        "forced: kept a row the audit trail has never seen"
                    );
                }
                format!(
                    "restored to {} with {} statement{} ({} row{} written), context {}\n",
                    report.context["restore_to"].as_str().unwrap_or_default(),
                    report.statements.len(),
                    plural(report.statements.len() as u64),
                    report.rows_affected,
                    plural(report.rows_affected),
                    report.context
                )
            })
    };
    audit.close().await;
    source.close().await;
    let text = outcome.map_err(|error| anyhow!(error))?;
    finish_output(write_stdout(&text))
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use serde_json::json;

    #[derive(Debug, clap::Parser)]
    struct Harness {
        #[command(flatten)]
        args: RestoreArgs,
    }

    #[test]
    fn tables_and_an_instant_are_required() {
        assert!(Harness::try_parse_from(["bemi", "--to", "1h"]).is_err());
        assert!(Harness::try_parse_from(["bemi", "todo"]).is_err());
        let error = Harness::try_parse_from(["bemi", "todo", "--to", "last tuesday"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        let harness = Harness::try_parse_from([
            "bemi",
            "project",
            "task",
            "--to",
            "2026-05-01T12:00:00Z",
            "--where-key",
            "1",
            "--where-key",
            "[1,\"a,b\"]",
            "--context",
            "user=ann",
        ])
        .unwrap();
        assert_eq!(harness.args.tables, ["project", "task"]);
        assert_eq!(harness.args.where_key, ["1", "[1,\"a,b\"]"]);
        assert_eq!(harness.args.actor().unwrap()["user"], json!("ann"));
    }
}
