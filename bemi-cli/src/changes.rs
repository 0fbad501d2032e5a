//! `bemi changes`: the audit trail as a table, as JSON lines, or followed as it grows.

use std::io;
use std::time::Duration;

use crate::text::{self as table, ChangesLayout as Layout};
use anyhow::anyhow;
use bemi_audit::{Change, ChangeQuery, Follower, Operation, parse_context_pair};
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use sqlx::PgPool;
use uuid::Uuid;

use super::audit_db::{AuditArgs, finish_output, print_json_lines};
use super::time::{PointInTime, parse_duration};
use super::{boolish, shutdown, write_stdout};

/// `bemi changes`
#[derive(Debug, clap::Args)]
pub(crate) struct ChangesArgs {
    #[command(flatten)]
    db: AuditArgs,
    /// Only the change with this id.
    #[arg(long, env = "BEMI_CHANGES_ID", value_name = "ID")]
    id: Option<Uuid>,
    /// Only changes of this table (`todo`, or `schema.todo`).
    #[arg(long, env = "BEMI_CHANGES_TABLE", value_name = "[SCHEMA.]TABLE")]
    table: Option<String>,
    /// Only changes of the row with this primary key (a composite key as a JSON array:
    /// '["x",1]').
    #[arg(long, env = "BEMI_CHANGES_PK", value_name = "KEY")]
    pk: Option<String>,
    /// Only CREATE, UPDATE, DELETE or TRUNCATE changes (any case; INSERT means CREATE).
    #[arg(long, env = "BEMI_CHANGES_OPERATION", value_name = "OP", value_parser = operation)]
    operation: Option<Operation>,
    /// Only changes whose context has KEY equal to VALUE (JSON if it parses: user_id=187234 is
    /// a number, endpoint=/todo a string). Several must all match.
    #[arg(
        long,
        env = "BEMI_CHANGES_CONTEXT",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        num_args = 1..
    )]
    context: Vec<String>,
    /// Only changes whose before-image has KEY equal to VALUE (as --context). Several must all
    /// match.
    #[arg(
        long,
        env = "BEMI_CHANGES_BEFORE",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        num_args = 1..
    )]
    before: Vec<String>,
    /// Only changes whose after-image has KEY equal to VALUE (as --context). Several must all
    /// match.
    #[arg(
        long,
        env = "BEMI_CHANGES_AFTER",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        num_args = 1..
    )]
    after: Vec<String>,
    /// Only changes in which FIELD differs between before and after (CREATE and DELETE count;
    /// add --operation update for updates only). Several must all have changed.
    #[arg(
        long,
        env = "BEMI_CHANGES_CHANGED",
        value_name = "FIELD",
        value_delimiter = ',',
        num_args = 1..
    )]
    changed: Vec<String>,
    /// Only changes of this source transaction (its id, as in the transaction_id column).
    #[arg(long, env = "BEMI_CHANGES_TRANSACTION", value_name = "TXID")]
    transaction: Option<i64>,
    /// Only changes of this source database (when several write into one changes table).
    #[arg(long, env = "BEMI_CHANGES_DATABASE", value_name = "NAME")]
    database: Option<String>,
    /// Only changes committed at or after T: a timestamp in any form PostgreSQL prints or reads
    /// (2026-05-01T12:00:00Z, 2026-05-01 12:00:00.5+05:30; without an offset, UTC), or how
    /// long ago (15m, 2h, 7d).
    #[arg(
        long,
        env = "BEMI_CHANGES_SINCE",
        value_name = "T",
        value_parser = PointInTime::parse_arg
    )]
    since: Option<PointInTime>,
    /// Only changes committed before T (as --since).
    #[arg(
        long,
        env = "BEMI_CHANGES_UNTIL",
        value_name = "T",
        value_parser = PointInTime::parse_arg
    )]
    until: Option<PointInTime>,
    /// At most N changes, the newest; with --follow, how many recent ones to show first.
    #[arg(
        long,
        env = "BEMI_CHANGES_LIMIT",
        value_name = "N",
        default_value_t = 100
    )]
    limit: u64,
    /// Print each change as one line of JSON, with every column and nothing cut.
    #[arg(long, env = "BEMI_CHANGES_JSON", value_parser = boolish())]
    json: bool,
    /// Keep printing new changes as they are captured (oldest first), until Ctrl-C.
    #[arg(long, env = "BEMI_CHANGES_FOLLOW", value_parser = boolish())]
    follow: bool,
    /// With --follow, how often to look for new changes.
    #[arg(
        long,
        env = "BEMI_CHANGES_POLL_INTERVAL",
        value_name = "DURATION",
        default_value = "1s",
        value_parser = parse_duration
    )]
    poll_interval: Duration,
}

fn operation(text: &str) -> Result<Operation, String> {
    text.parse()
        .map_err(|error: bemi_audit::ParseOperationError| error.to_string())
}

impl ChangesArgs {
    /// The instants of `--since` and `--until`, durations counted back from `now`.
    async fn window(&self, pool: &PgPool, now: DateTime<Utc>) -> anyhow::Result<Window> {
        Ok(Window {
            since: super::time::resolve_optional(self.since.as_ref(), "--since", pool, now).await?,
            until: super::time::resolve_optional(self.until.as_ref(), "--until", pool, now).await?,
        })
    }

    /// The query of the filters, within `window`.
    fn query(&self, window: Window) -> anyhow::Result<ChangeQuery> {
        let mut query = ChangeQuery::new();
        if let Some(id) = self.id {
            query = query.id(id);
        }
        if let Some(database) = &self.database {
            query = query.database(database.trim());
        }
        if let Some(transaction) = self.transaction {
            query = query.transaction_id(transaction);
        }
        for pair in context_pairs(&self.before) {
            let (key, value) = parse_context_pair(&pair).map_err(|e| anyhow!("--before {e}"))?;
            query = query.before_contains(key, value);
        }
        for pair in context_pairs(&self.after) {
            let (key, value) = parse_context_pair(&pair).map_err(|e| anyhow!("--after {e}"))?;
            query = query.after_contains(key, value);
        }
        for field in &self.changed {
            query = query.changed(field.trim());
        }
        if let Some(table) = &self.table {
            query = query.table(table.trim());
        }
        if let Some(pk) = &self.pk {
            query = query.primary_key(pk.clone());
        }
        if let Some(operation) = self.operation {
            query = query.operation(operation);
        }
        for pair in context_pairs(&self.context) {
            let (key, value) = parse_context_pair(&pair)?;
            query = query.context(key, value);
        }
        if let Some(since) = window.since {
            query = query.since(since);
        }
        if let Some(until) = window.until {
            query = query.until(until);
        }
        Ok(query)
    }
}

/// The resolved `--since` and `--until`.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

/// `KEY=VALUE` pairs from the flag's values. Lists are split at commas (for the environment
/// variable), so a piece without `=` is glued back to the pair before it: `tags=["a","b"]`
/// stays one pair.
pub(crate) fn context_pairs(pieces: &[String]) -> Vec<String> {
    let mut pairs: Vec<String> = Vec::new();
    for piece in pieces {
        match pairs.last_mut() {
            Some(last) if !piece.contains('=') => {
                last.push(',');
                last.push_str(piece);
            }
            _ => pairs.push(piece.clone()),
        }
    }
    pairs
}

/// Runs `bemi changes`.
pub(super) async fn run(args: ChangesArgs) -> anyhow::Result<()> {
    let pool = args.db.connect().await?;
    let query = args.query(args.window(&pool, Utc::now()).await?)?;
    let result = if args.follow {
        follow(&pool, &query, &args).await
    } else if args.json {
        print_json_lines(query.limit(args.limit).stream(&pool)).await?
    } else {
        let changes = query.limit(args.limit).fetch(&pool).await?;
        write_stdout(&table::render(&changes))
    };
    pool.close().await;
    finish_output(result)
}

/// Prints the latest `--limit` changes oldest first, then the new ones as they are captured,
/// each once (see [`Follower`]), until a signal.
async fn follow(pool: &PgPool, query: &ChangeQuery, args: &ChangesArgs) -> io::Result<()> {
    let shutdown = shutdown::on_signals()?;
    let (follower, latest) = Follower::start(pool.clone(), query.clone(), args.limit)
        .await
        .map_err(io::Error::other)?;
    let mut output = Output::new(args.json);
    output.start_follow(&latest)?;
    output.changes(&latest)?;
    let mut pages = std::pin::pin!(follower.into_stream(args.poll_interval));
    loop {
        let page = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            page = pages.next() => page,
        };
        match page {
            Some(Ok(changes)) => output.changes(&changes)?,
            Some(Err(error)) => {
                tracing::warn!(%error, "could not read new changes; trying again");
            }
            None => return Ok(()),
        }
    }
}

/// Where followed changes are printed: a table or JSON lines on stdout.
struct Output {
    json: bool,
    layout: Option<Layout>,
}

impl Output {
    fn new(json: bool) -> Self {
        Self { json, layout: None }
    }

    /// For a followed table: the header, with columns wide enough for the first rows and for
    /// typical later ones.
    fn start_follow(&mut self, first: &[Change]) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        let rows: Vec<[String; 7]> = first.iter().map(table::cells).collect();
        let layout = Layout::fit(&rows).max(&Layout::roomy());
        let mut header = layout.header();
        header.push('\n');
        self.layout = Some(layout);
        write_stdout(&header)
    }

    fn changes(&mut self, changes: &[Change]) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for change in changes {
            match &self.layout {
                Some(layout) if !self.json => text.push_str(&layout.row(&table::cells(change))),
                _ => text.push_str(&serde_json::to_string(change).map_err(io::Error::other)?),
            }
            text.push('\n');
        }
        write_stdout(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Harness {
        #[command(flatten)]
        args: ChangesArgs,
    }

    #[test]
    fn filters_become_the_query() {
        let now = DateTime::parse_from_rfc3339("2024-05-08T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let harness = Harness::try_parse_from([
            "bemi",
            "--table",
            "public.todo",
            "--pk",
            "26",
            "--operation",
            "insert",
            "--context",
            "user_id=187234",
            "endpoint=/todo",
            "--since",
            "2h",
            "--until",
            "2024-05-08T11:00:00Z",
        ])
        .unwrap();
        let resolve =
            |point: &Option<PointInTime>| point.as_ref().map(|p| p.resolve_here(now).unwrap());
        let window = Window {
            since: resolve(&harness.args.since),
            until: resolve(&harness.args.until),
        };
        let query = harness.args.query(window).unwrap();
        let expected = ChangeQuery::new()
            .table("public.todo")
            .primary_key("26")
            .operation(Operation::Create)
            .context("user_id", 187234)
            .context("endpoint", "/todo")
            .since(now - chrono::Duration::hours(2))
            .until(now - chrono::Duration::hours(1));
        assert_eq!(query, expected);
        assert_eq!(harness.args.limit, 100);
    }

    #[test]
    fn image_transaction_and_changed_filters_become_the_query() {
        let harness = Harness::try_parse_from([
            "bemi",
            "--before",
            "is_completed=false",
            "--after",
            "is_completed=true",
            "task=Sleep",
            "--changed",
            "is_completed,task",
            "--transaction",
            "768",
            "--database",
            "app",
            "--id",
            "9b2e6a4e-3c1f-4c7e-9d64-0d4f8f2b7a11",
        ])
        .unwrap();
        let query = harness.args.query(Window::default()).unwrap();
        let expected = ChangeQuery::new()
            .id("9b2e6a4e-3c1f-4c7e-9d64-0d4f8f2b7a11".parse().unwrap())
            .database("app")
            .transaction_id(768)
            .before_contains("is_completed", false)
            .after_contains("is_completed", true)
            .after_contains("task", "Sleep")
            .changed("is_completed")
            .changed("task");
        assert_eq!(query, expected);
        let harness = Harness::try_parse_from(["bemi", "--after", "oops"]).unwrap();
        let error = harness
            .args
            .query(Window::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--after") && error.contains("KEY=VALUE"),
            "{error}"
        );
    }

    #[test]
    fn bad_filters_say_what_to_write() {
        let error = Harness::try_parse_from(["bemi", "--operation", "upsert"]).unwrap_err();
        assert!(error.to_string().contains("CREATE, UPDATE"), "{error}");
        for flag in ["--since", "--until"] {
            // A usage error (exit code 2) that names the flag and what to write.
            let error = Harness::try_parse_from(["bemi", flag, "last tuesday"]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
            assert!(error.use_stderr());
            let text = error.to_string();
            assert!(
                text.contains(flag)
                    && text.contains("2024-05-01T12:00:00Z")
                    && text.contains("15m"),
                "{text}"
            );
        }
        let harness = Harness::try_parse_from(["bemi", "--context", "user_id"]).unwrap();
        let error = harness
            .args
            .query(Window::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("KEY=VALUE"), "{error}");
    }

    #[test]
    fn comma_split_context_values_are_glued_back() {
        let pieces = ["a=1", "b={\"x\":1", "\"y\":2}", "c=3"].map(String::from);
        assert_eq!(
            context_pairs(&pieces),
            ["a=1", "b={\"x\":1,\"y\":2}", "c=3"]
        );
    }
}
