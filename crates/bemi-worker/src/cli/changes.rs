//! `bemi changes`: the audit trail as a table, as JSON lines, or followed as it grows.

use std::io;
use std::time::Duration;

use anyhow::anyhow;
use bemi_core::audit::{Change, ChangeQuery, Cursor, Operation, parse_context_pair};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::audit_db::{AuditArgs, finish_output, print_json_lines};
use super::table::{self, Layout};
use super::tail::Tail;
use super::time::{PointInTime, parse_duration};
use super::{boolish, shutdown, write_stdout};

/// Changes fetched per poll of `--follow`.
const FOLLOW_PAGE_ROWS: u64 = 1_000;

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
    /// Only changes committed at or after T: an RFC 3339 timestamp, or how long ago (15m, 2h, 7d).
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
        .map_err(|error: bemi_core::audit::ParseOperationError| error.to_string())
}

impl ChangesArgs {
    /// The query of the filters, with relative times counted back from `now`.
    fn query(&self, now: DateTime<Utc>) -> anyhow::Result<ChangeQuery> {
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
        if let Some(since) = self.since {
            query = query.since(since.resolve(now).map_err(|e| anyhow!("--since {e}"))?);
        }
        if let Some(until) = self.until {
            query = query.until(until.resolve(now).map_err(|e| anyhow!("--until {e}"))?);
        }
        Ok(query)
    }
}

/// `KEY=VALUE` pairs from the flag's values. Lists are split at commas (for the environment
/// variable), so a piece without `=` is glued back to the pair before it: `tags=["a","b"]`
/// stays one pair.
///
/// ```
/// let pieces = ["user_id=1", r#"tags=["a""#, r#""b"]"#].map(String::from);
/// assert_eq!(
///     bemi_worker::cli::changes::context_pairs(&pieces),
///     ["user_id=1", r#"tags=["a","b"]"#]
/// );
/// ```
pub fn context_pairs(pieces: &[String]) -> Vec<String> {
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
    let query = args.query(Utc::now())?;
    let pool = args.db.connect().await?;
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

/// Prints the latest `--limit` changes oldest first, then polls for newer ones until a signal.
/// Each poll prints the changes that reached the audit trail behind the newest one seen
/// (within [`Tail::LOOKBACK`]; see [`late_changes`]), then the changes after it.
async fn follow(pool: &PgPool, query: &ChangeQuery, args: &ChangesArgs) -> io::Result<()> {
    let shutdown = shutdown::on_signals()?;
    let (mut tail, latest) = start_tail(pool, query, args.limit)
        .await
        .map_err(io::Error::other)?;
    let mut output = Output::new(args.json);
    output.start_follow(&latest)?;
    output.changes(&latest)?;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(args.poll_interval) => {}
        }
        match poll(pool, query, &mut tail, &mut output).await {
            Ok(()) => {}
            Err(PollError::Write(error)) => return Err(error),
            Err(PollError::Read(error)) => {
                tracing::warn!(%error, "could not read new changes; trying again");
            }
        }
    }
}

/// Why a poll of `--follow` stopped: reading the audit trail failed (tried again at the next
/// poll), or printing did (the end).
enum PollError {
    Read(sqlx::Error),
    Write(io::Error),
}

impl From<sqlx::Error> for PollError {
    fn from(error: sqlx::Error) -> Self {
        Self::Read(error)
    }
}

impl From<io::Error> for PollError {
    fn from(error: io::Error) -> Self {
        Self::Write(error)
    }
}

/// One poll of `--follow`: prints the late changes of the look-back window, then the changes
/// after the newest one seen; both read in pages of [`FOLLOW_PAGE_ROWS`], printed page by
/// page.
async fn poll(
    pool: &PgPool,
    query: &ChangeQuery,
    tail: &mut Tail,
    output: &mut Output,
) -> Result<(), PollError> {
    let mut conn = pool.acquire().await?;
    let late = late_cursors(&mut conn, query, tail).await?;
    for chunk in late.chunks(FOLLOW_PAGE_ROWS as usize) {
        let ids: Vec<Uuid> = chunk.iter().map(|cursor| cursor.id).collect();
        let rows = fetch_by_id(&mut conn, query, ids).await?;
        output.changes(&admitted(tail, rows))?;
    }
    loop {
        let mut page = query.clone().oldest_first().limit(FOLLOW_PAGE_ROWS);
        if let Some(last) = tail.last() {
            page = page.after(last);
        }
        let rows = page.fetch(&mut *conn).await?;
        let full = rows.len() as u64 == FOLLOW_PAGE_ROWS;
        output.changes(&admitted(tail, rows))?;
        if !full {
            return Ok(());
        }
    }
}

/// The changes of `rows` that `tail` sees for the first time.
fn admitted(tail: &mut Tail, rows: Vec<Change>) -> Vec<Change> {
    rows.into_iter()
        .filter(|change| tail.admit(change.cursor()))
        .collect()
}

/// The latest `limit` changes (oldest first), and a tail that has seen every change there is
/// now, shown or not — both read in one snapshot, so that nothing committed in between is
/// taken as seen.
async fn start_tail(
    pool: &PgPool,
    query: &ChangeQuery,
    limit: u64,
) -> Result<(Tail, Vec<Change>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    // At least one change, to know where the window starts even when none is shown.
    let mut latest = query.clone().limit(limit.max(1)).fetch(&mut *tx).await?;
    let mut tail = Tail::default();
    if let Some(newest) = latest.first() {
        tail.admit(newest.cursor());
    }
    for cursor in window(&mut tx, query, &tail).await? {
        tail.admit(cursor);
    }
    tx.commit().await?;
    latest.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    latest.reverse();
    Ok((tail, latest))
}

/// The cursors of the changes of the tail's look-back window that it has not seen, oldest
/// first: changes that reached the audit trail after a change committed later. The window is
/// read by cursor only (and the unseen changes alone in full, by [`fetch_by_id`]), so an idle
/// follower after a large transaction (thousands of changes with one `committed_at`) reads
/// little each poll.
async fn late_cursors(
    conn: &mut PgConnection,
    query: &ChangeQuery,
    tail: &Tail,
) -> Result<Vec<Cursor>, sqlx::Error> {
    let mut unseen = window(conn, query, tail).await?;
    unseen.retain(|cursor| !tail.has_seen(cursor));
    unseen.sort();
    Ok(unseen)
}

/// The cursors of the changes of `query` in the tail's look-back window: from its horizon up
/// to and including the newest change it has seen (none when it has seen nothing).
async fn window(
    conn: &mut PgConnection,
    query: &ChangeQuery,
    tail: &Tail,
) -> Result<Vec<Cursor>, sqlx::Error> {
    let (Some(horizon), Some(last)) = (tail.horizon(), tail.last()) else {
        return Ok(Vec::new());
    };
    let rows: Vec<(Uuid, DateTime<Utc>, i64)> = window_cursors(query, horizon, last)
        .build_query_as()
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, committed_at, position)| Cursor {
            committed_at,
            position,
            id,
        })
        .collect())
}

/// `(id, committed_at, position)` of the changes of `query` from `horizon` up to and including
/// `last`, unordered: the look-back window, by cursor only.
fn window_cursors(
    query: &ChangeQuery,
    horizon: DateTime<Utc>,
    last: Cursor,
) -> sqlx::QueryBuilder<sqlx::Postgres> {
    let mut builder = query.filter_builder("id, committed_at, position");
    builder
        .push(" AND committed_at >= ")
        .push_bind(horizon)
        .push(" AND committed_at <= ")
        .push_bind(last.committed_at)
        .push(" AND (committed_at, position, id) <= (")
        .push_bind(last.committed_at)
        .push(", ")
        .push_bind(last.position)
        .push(", ")
        .push_bind(last.id)
        .push(")");
    builder
}

/// The changes of `query` with these ids, oldest first.
async fn fetch_by_id(
    conn: &mut PgConnection,
    query: &ChangeQuery,
    ids: Vec<Uuid>,
) -> Result<Vec<Change>, sqlx::Error> {
    let mut builder = query.filter_builder("*");
    builder
        .push(" AND id = ANY(")
        .push_bind(ids)
        .push(") ORDER BY committed_at, position, id");
    builder.build_query_as::<Change>().fetch_all(conn).await
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
        let query = harness.args.query(now).unwrap();
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
        let query = harness.args.query(Utc::now()).unwrap();
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
        let error = harness.args.query(Utc::now()).unwrap_err().to_string();
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
                text.contains(flag) && text.contains("RFC 3339") && text.contains("15m"),
                "{text}"
            );
        }
        let harness = Harness::try_parse_from(["bemi", "--context", "user_id"]).unwrap();
        let error = harness.args.query(Utc::now()).unwrap_err().to_string();
        assert!(error.contains("KEY=VALUE"), "{error}");
    }

    #[test]
    fn the_window_is_read_by_cursor_with_the_filters_and_no_sort() {
        let last = Cursor {
            committed_at: Utc::now(),
            position: 7,
            id: Uuid::nil(),
        };
        let query = ChangeQuery::new().table("todo").context("user_id", 1);
        let sql = window_cursors(&query, last.committed_at - Tail::LOOKBACK, last).into_string();
        assert_eq!(
            sql,
            r#"SELECT id, committed_at, position FROM changes WHERE "table" = $1 AND context @> $2 AND committed_at >= $3 AND committed_at <= $4 AND (committed_at, position, id) <= ($5, $6, $7)"#
        );
        assert!(!sql.contains("ORDER BY"), "{sql}");
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
