//! `bemi revert`: undo one change, one transaction, or every change of a request, in the
//! source database (`DATABASE_URL`), from the audit trail.

use anyhow::anyhow;
use bemi_audit::{DEFAULT_MAX_CHANGES, Revert, parse_context_pair};
use chrono::{DateTime, Utc};
use serde_json::Map;
use uuid::Uuid;

use super::audit_db::{AuditArgs, finish_output};
use super::changes::context_pairs;
use super::time::PointInTime;
use super::{SourceArgs, boolish, connect, write_stdout};

/// `bemi revert`
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("target")
        .required(true)
        .args(["change", "transaction", "context"])
))]
pub(crate) struct RevertArgs {
    /// The database the changes are reverted in.
    #[command(flatten)]
    source: SourceArgs,
    /// The audit trail the changes are read from (default: the source).
    #[command(flatten)]
    db: AuditArgs,
    /// Revert the change with this id.
    #[arg(long, env = "BEMI_REVERT_CHANGE", value_name = "ID")]
    change: Option<Uuid>,
    /// Revert every change of this source transaction.
    #[arg(long, env = "BEMI_REVERT_TRANSACTION", value_name = "TXID")]
    transaction: Option<i64>,
    /// Only changes of the source cluster with this system identifier (the `source` column):
    /// needed when clusters whose databases share a name store into one audit trail.
    #[arg(long, env = "BEMI_REVERT_SOURCE_CLUSTER", value_name = "SYSTEM_ID")]
    source_cluster: Option<String>,
    /// Revert every change whose context has KEY equal to VALUE, e.g. request_id=r-42 (JSON if
    /// it parses, as in `bemi changes`). Several must all match.
    #[arg(
        long,
        env = "BEMI_REVERT_CONTEXT",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        num_args = 1..
    )]
    context: Vec<String>,
    /// Only changes committed at or after T (a timestamp, or how long ago: 15m, 2h, 7d).
    #[arg(
        long,
        env = "BEMI_REVERT_SINCE",
        value_name = "T",
        value_parser = PointInTime::parse_arg
    )]
    since: Option<PointInTime>,
    /// Only changes committed before T.
    #[arg(
        long,
        env = "BEMI_REVERT_UNTIL",
        value_name = "T",
        value_parser = PointInTime::parse_arg
    )]
    until: Option<PointInTime>,
    /// Print the SQL the revert would run (and any conflicts), and write nothing.
    #[arg(long, env = "BEMI_REVERT_DRY_RUN", value_parser = boolish())]
    dry_run: bool,
    /// Revert even rows that changed again afterwards, overwriting those later changes.
    #[arg(long, env = "BEMI_REVERT_FORCE", value_parser = boolish())]
    force: bool,
    /// Refuse when more changes than this match.
    #[arg(
        long,
        env = "BEMI_REVERT_MAX_CHANGES",
        value_name = "N",
        default_value_t = DEFAULT_MAX_CHANGES
    )]
    max_changes: u64,
}

impl RevertArgs {
    /// The revert, within the resolved `--since` and `--until`.
    fn revert(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> anyhow::Result<Revert> {
        let mut revert = if let Some(id) = self.change {
            Revert::change(id)
        } else if let Some(id) = self.transaction {
            Revert::transaction(id)
        } else {
            let mut filter = Map::new();
            for pair in context_pairs(&self.context) {
                let (key, value) = parse_context_pair(&pair)?;
                filter.insert(key, value);
            }
            Revert::context(filter)
        };
        if let Some(cluster) = &self.source_cluster {
            revert = revert.source(cluster.clone());
        }
        if let Some(since) = since {
            revert = revert.since(since);
        }
        if let Some(until) = until {
            revert = revert.until(until);
        }
        Ok(revert.force(self.force).max_changes(self.max_changes))
    }
}

/// Runs `bemi revert`.
pub(super) async fn run(args: RevertArgs) -> anyhow::Result<()> {
    let source_url = args.source.url()?;
    let audit = args.db.connect_or(Some(source_url)).await?;
    let now = Utc::now();
    let since = super::time::resolve_optional(args.since.as_ref(), "--since", &audit, now).await?;
    let until = super::time::resolve_optional(args.until.as_ref(), "--until", &audit, now).await?;
    let revert = args.revert(since, until)?;
    let source = connect(source_url).await?;
    let outcome = if args.dry_run {
        revert.plan(&audit, &source).await.map(|plan| plan.script())
    } else {
        revert.run(&audit, &source).await.map(|report| {
            for conflict in &report.overridden {
                tracing::warn!(%conflict, "forced: overwrote a later change");
            }
            format!(
                "reverted {} change{} with {} statement{} ({} row{} written), context {}\n",
                report.changes,
                plural(report.changes as u64),
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
        args: RevertArgs,
    }

    #[test]
    fn exactly_one_target_is_required() {
        assert!(Harness::try_parse_from(["bemi"]).is_err());
        assert!(
            Harness::try_parse_from(["bemi", "--transaction", "1", "--context", "a=1"]).is_err()
        );
        let harness = Harness::try_parse_from([
            "bemi",
            "--context",
            "request_id=r-42",
            "user_id=7",
            "--force",
            "--max-changes",
            "50",
        ])
        .unwrap();
        let revert = harness.args.revert(None, None).unwrap();
        assert_eq!(
            revert,
            Revert::context(
                json!({"request_id": "r-42", "user_id": 7})
                    .as_object()
                    .unwrap()
                    .clone()
            )
            .force(true)
            .max_changes(50)
        );
        let harness = Harness::try_parse_from(["bemi", "--change", "not-a-uuid"]);
        assert!(harness.is_err());
        let error =
            Harness::try_parse_from(["bemi", "--context", "a=1", "--since", "last tuesday"])
                .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
