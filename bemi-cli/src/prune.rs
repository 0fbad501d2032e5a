//! `bemi prune --older-than 90d`: remove old changes in short batches (or drop whole months of
//! a partitioned table).

use chrono::Utc;

use super::audit_db::{AuditArgs, finish_output};
use super::time::PointInTime;
use super::{boolish, shutdown, write_stdout};
use crate::text::timestamp_text;
use bemi_audit::retention::{OldPartitions, PruneProgress, Pruner};

/// `bemi prune`
#[derive(Debug, clap::Args)]
pub(crate) struct PruneArgs {
    #[command(flatten)]
    db: AuditArgs,
    /// Remove changes committed before T: how long ago (90d, 12w) or a timestamp.
    #[arg(
        long,
        env = "BEMI_PRUNE_OLDER_THAN",
        value_name = "T",
        value_parser = PointInTime::parse_arg
    )]
    older_than: PointInTime,
    /// Rows deleted per transaction.
    #[arg(
        long,
        env = "BEMI_PRUNE_BATCH_ROWS",
        value_name = "N",
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    batch_rows: u32,
    /// On a partitioned table, detach the old months (kept as tables of their own, to archive)
    /// instead of dropping them.
    #[arg(long, env = "BEMI_PRUNE_DETACH", value_parser = boolish())]
    detach: bool,
    #[command(flatten)]
    checkpoint: super::verify::CheckpointKeyArg,
}

/// Runs `bemi prune`.
pub(super) async fn run(args: PruneArgs) -> anyhow::Result<()> {
    let checkpoint_key = args.checkpoint.key()?;
    let pool = args.db.connect().await?;
    let bound = super::time::resolve(&args.older_than, "--older-than", &pool, Utc::now()).await?;
    let shutdown = shutdown::on_signals()?;
    let pruner = Pruner::new(bound)
        .batch_rows(args.batch_rows)
        .old_partitions(if args.detach {
            OldPartitions::Detach
        } else {
            OldPartitions::Drop
        })
        .checkpoint_key(checkpoint_key)
        .cancel_on(shutdown);
    tracing::info!(before = %timestamp_text(bound), "pruning changes");
    let report = pruner
        .run(&pool, |progress| match progress {
            PruneProgress::Partition { name, detached } => {
                tracing::info!(partition = %name, detached, "removed a partition");
            }
            PruneProgress::Batch { total, .. } => {
                tracing::debug!(deleted = total, "deleted a batch");
            }
            other => tracing::debug!(?other, "pruning"),
        })
        .await?;
    pool.close().await;
    let mut text = format!(
        "deleted {} change{} committed before {} in {} batch{}",
        report.deleted_rows,
        if report.deleted_rows == 1 { "" } else { "s" },
        timestamp_text(bound),
        report.batches,
        if report.batches == 1 { "" } else { "es" },
    );
    if !report.dropped.is_empty() {
        text.push_str(&format!(
            "; dropped partitions {}",
            report.dropped.join(", ")
        ));
    }
    if !report.detached.is_empty() {
        text.push_str(&format!(
            "; detached partitions {} (archive them, then drop them)",
            report.detached.join(", ")
        ));
    }
    if report.cancelled {
        text.push_str("; interrupted (what was deleted stays deleted; run it again to finish)");
    }
    text.push('\n');
    finish_output(write_stdout(&text))
}
