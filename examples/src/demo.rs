//! The one-command demo: `cargo run -p bemi-examples --bin demo`.
//!
//! It starts an embedded PostgreSQL (or uses `DATABASE_URL`), creates the todo table and installs
//! tracking, runs the capture worker in-process, serves the axum todo app on a free port of
//! 127.0.0.1, replays the five requests of Bemi's example — create Sleep, Eat and Repeat as user
//! 187234, complete Sleep, delete Eat — over real HTTP, waits until the worker has stored their
//! changes, and returns them for printing.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let changes = bemi_examples::demo::replay("postgres://localhost/app", "bemi_demo").await?;
//! assert_eq!(changes.len(), 5);
//! # Ok(()) }
//! ```

use std::time::{Duration, Instant};

use bemi_audit::{Change, ChangeQuery, Order};
use bemi_sqlx::BemiPool;
use bemi_worker::Worker;
use bemi_worker::WorkerConfig;
use serde_json::{Value, json};

use crate::{axum_app, startup};

/// The user of Bemi's example requests.
pub const USER_ID: &str = "187234";

/// How long the demo waits for the worker to start and to store the changes.
const PATIENCE: Duration = Duration::from_secs(60);

/// What can go wrong in the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The database could not be prepared.
    #[error(transparent)]
    Startup(#[from] startup::StartupError),
    /// The worker failed.
    #[error("the capture worker failed: {0}")]
    Worker(#[from] bemi_worker::WorkerError),
    /// A request failed.
    #[error("request {what} failed: {detail}")]
    Request {
        /// The request.
        what: String,
        /// Why.
        detail: String,
    },
    /// A query of the demo failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The worker did not store the changes in time.
    #[error("{0}")]
    Timeout(String),
}

/// Replays the five requests against `url` with a worker on `slot`, and returns the changes
/// they made, oldest first.
///
/// ```no_run
/// # async fn run() -> Result<(), bemi_examples::demo::DemoError> {
/// for change in bemi_examples::demo::replay("postgres://localhost/app", "bemi_demo").await? {
///     println!("{} {}", change.operation, change.after);
/// }
/// # Ok(()) }
/// ```
pub async fn replay(url: &str, slot: &str) -> Result<Vec<Change>, DemoError> {
    let pool = startup::prepare_database(url).await?;
    let started_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(&pool).await?;
    let deadline = Instant::now() + PATIENCE;
    let worker = match running_worker(&pool, slot).await? {
        Some(running) => {
            // A second worker would store the same changes again (skipped, with a warning).
            println!(
                "(A capture worker already streams this database, on slot `{running}`: it \
                 captures the demo's changes.)\n"
            );
            None
        }
        None => Some(DemoWorker::start(url, slot, deadline).await?),
    };
    let result = requests_and_changes(&pool, started_at, deadline).await;
    if let Some(worker) = worker {
        worker.stop().await?;
    }
    result
}

/// Serves the axum app, sends the requests, and waits until their five changes are stored.
async fn requests_and_changes(
    pool: &sqlx::PgPool,
    started_at: chrono::DateTime<chrono::Utc>,
    deadline: Instant,
) -> Result<Vec<Change>, DemoError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| DemoError::Request {
            what: "bind 127.0.0.1:0".into(),
            detail: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| DemoError::Request {
        what: "local address".into(),
        detail: e.to_string(),
    })?;
    let server = tokio::spawn(
        axum::serve(listener, axum_app::router(BemiPool::new(pool.clone()))).into_future(),
    );
    let result = send_requests(&format!("http://{addr}")).await;
    server.abort();
    result?;

    let query = ChangeQuery::new()
        .table("todo")
        .context("user_id", json!(187234))
        .since(started_at)
        .order(Order::OldestFirst)
        .limit(100);
    loop {
        let changes = query.fetch(pool).await?;
        if changes.len() >= 5 {
            return Ok(changes);
        }
        if Instant::now() > deadline {
            return Err(DemoError::Timeout(format!(
                "only {} of the 5 changes arrived within {PATIENCE:?}",
                changes.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The slot of a bemi worker other than the demo's that is streaming this database into its
/// own `changes` table (as `bemi dev` does) and captures `public.todo`, if there is one.
///
/// A worker may leave the table out (`--tables`, `--exclude-tables`): it captures `todo` only
/// if `todo` is in the publication it streams. A slot does not record that publication; the
/// walsender's `START_REPLICATION` command in `pg_stat_activity` names it (visible to the
/// worker's own role, a superuser or `pg_read_all_stats`). Without it, the demo runs its own
/// worker: at worst both store the changes, and the second copy is skipped.
async fn running_worker(pool: &sqlx::PgPool, slot: &str) -> Result<Option<String>, sqlx::Error> {
    let has_state: bool =
        sqlx::query_scalar("SELECT to_regclass('_bemi_worker_state') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !has_state {
        return Ok(None);
    }
    // Workers that wrote here, or that have just started (nothing written yet).
    let workers: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT s.slot_name::text, a.query FROM pg_replication_slots s \
           LEFT JOIN _bemi_worker_state w ON w.slot = s.slot_name AND w.database = s.database \
           LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid \
          WHERE s.active AND s.database = current_database() AND s.slot_name <> $1 \
            AND (w.slot IS NOT NULL OR a.application_name = 'bemi-worker') \
          ORDER BY 1",
    )
    .bind(slot)
    .fetch_all(pool)
    .await?;
    for (worker_slot, command) in workers {
        let Some(publications) = command.as_deref().and_then(streamed_publications) else {
            continue;
        };
        let captures_todo: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables \
                             WHERE pubname = ANY($1) AND schemaname = 'public' \
                               AND tablename = 'todo')",
        )
        .bind(publications)
        .fetch_one(pool)
        .await?;
        if captures_todo {
            return Ok(Some(worker_slot));
        }
    }
    Ok(None)
}

/// The publications that a walsender streams, from its command as `pg_stat_activity` shows it
/// (`START_REPLICATION SLOT … LOGICAL … (proto_version '1', publication_names 'bemi', …)`),
/// read as pgoutput reads them: comma-separated identifiers, unquoted ones in lower case.
/// `None` for another command, or one that does not parse.
///
/// ```
/// use bemi_examples::demo::streamed_publications;
///
/// let command = "START_REPLICATION SLOT bemi LOGICAL 0/0 \
///                (proto_version '1', publication_names 'bemi', messages 'true')";
/// assert_eq!(streamed_publications(command), Some(vec!["bemi".to_owned()]));
/// assert_eq!(streamed_publications("<insufficient privilege>"), None);
/// ```
pub fn streamed_publications(command: &str) -> Option<Vec<String>> {
    const OPTION: &str = "publication_names";
    let at = command.find(OPTION)?;
    let rest = command
        .get(at + OPTION.len()..)?
        .trim_start_matches('"')
        .trim_start();
    let mut chars = rest.strip_prefix('\'')?.chars().peekable();
    // The option's string literal ('' is a quote).
    let mut value = String::new();
    loop {
        match chars.next()? {
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                value.push('\'');
            }
            '\'' => break,
            c => value.push(c),
        }
    }
    split_identifiers(&value)
}

/// A comma-separated list of identifiers, as PostgreSQL's `SplitIdentifierString` reads it:
/// `"quoted"` ones as written (`""` is a quote), the others in lower case.
fn split_identifiers(list: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut chars = list.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    '"' => break,
                    c => name.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',' && !c.is_whitespace()) {
                name.push(c.to_ascii_lowercase());
            }
        }
        if name.is_empty() {
            return None;
        }
        names.push(name);
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => return Some(names),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// The demo's in-process capture worker.
struct DemoWorker {
    handle: bemi_worker::WorkerHandle,
}

impl DemoWorker {
    /// Starts a worker on `slot`, with a publication of the same name, and waits (until
    /// `deadline`) for it to stream. Its own publication: another worker's (`bemi`) may leave
    /// `todo` out, and the two workers would each set its table list their way.
    async fn start(url: &str, slot: &str, deadline: Instant) -> Result<Self, DemoError> {
        let config = WorkerConfig::new(url).slot(slot).publication(slot);
        let mut handle = Worker::new(config).spawn();
        let patience = deadline.saturating_duration_since(Instant::now());
        match handle.wait_until_streaming(patience).await {
            Ok(()) => Ok(Self { handle }),
            Err(bemi_worker::WorkerError::NotStreaming { .. }) => {
                handle.shutdown().await?;
                Err(DemoError::Timeout(format!(
                    "the worker did not start streaming within {PATIENCE:?}"
                )))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Stops the worker; its error, if it failed.
    async fn stop(self) -> Result<(), DemoError> {
        self.handle.shutdown().await?;
        Ok(())
    }
}

/// The five requests of Bemi's example, as user 187234.
async fn send_requests(base: &str) -> Result<(), DemoError> {
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: String, body: Option<Value>| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let what = format!("{method} {path}");
            let mut request = client.request(method, &url).header("x-user-id", USER_ID);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| DemoError::Request {
                what: what.clone(),
                detail: e.to_string(),
            })?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            println!("{what:<28} → {status} {text}");
            if !status.is_success() {
                return Err(DemoError::Request {
                    what,
                    detail: format!("{status} {text}"),
                });
            }
            Ok(serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
        }
    };
    let mut ids = Vec::new();
    for task in ["Sleep", "Eat", "Repeat"] {
        let created = send(
            reqwest::Method::POST,
            "/todo".into(),
            Some(json!({"task": task})),
        )
        .await?;
        ids.push(created["id"].as_i64().unwrap_or_default());
    }
    send(
        reqwest::Method::PUT,
        format!("/todo/{}/complete", ids[0]),
        None,
    )
    .await?;
    send(reqwest::Method::DELETE, format!("/todo/{}", ids[1]), None).await?;
    Ok(())
}

/// What the demo prints after the `changes` table: how to query it, or, for an embedded
/// database (removed when the demo exits), how to run the demo on a database that stays.
///
/// ```
/// use bemi_examples::demo::closing_hint;
///
/// assert!(closing_hint(true).contains("removed"));
/// assert!(closing_hint(true).contains("bemi-cli -- dev"));
/// assert!(closing_hint(false).contains("bemi-cli -- changes --table todo"));
/// assert!(closing_hint(false).contains("bemi-cli -- ui"));
/// ```
pub fn closing_hint(embedded: bool) -> String {
    const CHANGES: &str = "cargo run -p bemi-cli -- changes --table todo";
    const PSQL: &str = r#"psql "$DATABASE_URL" -c 'SELECT * FROM changes'"#;
    if embedded {
        format!(
            "The embedded PostgreSQL is removed as the demo exits, and this `changes` table with \
             it. To keep a database to query, run the demo against one that stays:\n\
             \n  cargo run -p bemi-cli -- dev            # in another terminal; prints \
             DATABASE_URL=… and BEMI_UI_URL=… (the web UI), runs until Ctrl-C\
             \n  export DATABASE_URL=…                   # the URL it printed\
             \n  cargo run -p bemi-examples --bin demo\
             \n  {CHANGES}\
             \n  {PSQL}\n"
        )
    } else {
        format!(
            "The `changes` table stays in the DATABASE_URL database. Query it yourself:\n\
             \n  {CHANGES}    # or `bemi changes --table todo`\
             \n  {PSQL}\
             \n  cargo run -p bemi-cli -- ui    # the web UI: prints BEMI_UI_URL=http://127.0.0.1:8080/ \
             (`bemi dev` serves it too)\n"
        )
    }
}

/// The `changes` rows as a psql-style table, JSON cells cut at 60 characters (the `bemi changes`
/// command prints the full table, with `before` and `committed_at`).
///
/// ```
/// let text = bemi_examples::demo::table(&[]);
/// assert!(text.starts_with(" primary_key | table | operation | after | context"));
/// assert!(text.ends_with("(0 rows)\n"));
/// ```
#[must_use]
pub fn table(changes: &[Change]) -> String {
    const HEADERS: [&str; 5] = ["primary_key", "table", "operation", "after", "context"];
    let cut = |text: String| match text.char_indices().nth(59) {
        Some((at, _)) => format!("{}…", text.get(..at).unwrap_or_default()),
        None => text,
    };
    let rows: Vec<[String; 5]> = changes
        .iter()
        .map(|change| {
            [
                change.primary_key.clone().unwrap_or_default(),
                change.table.clone(),
                change.operation.to_string(),
                cut(change.after.to_string()),
                cut(context_text(&change.context)),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(|header| header.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!(" {cell:<width$} "))
            .collect();
        format!("{}\n", padded.join("|").trim_end())
    };
    let mut text = line(&HEADERS.map(String::from));
    let rules: Vec<String> = widths.iter().map(|width| "-".repeat(width + 2)).collect();
    text.push_str(&rules.join("+"));
    text.push('\n');
    for row in &rows {
        text.push_str(&line(row));
    }
    let count = rows.len();
    text.push_str(&format!(
        "({count} {})\n",
        if count == 1 { "row" } else { "rows" }
    ));
    text
}

/// A context as JSON text with the library's long `SQL` key last, so that the request's own
/// keys show before the cell is cut.
fn context_text(context: &Value) -> String {
    let mut others = context.as_object().cloned().unwrap_or_default();
    let Some(sql) = others.remove(bemi_core::protocol::SQL_KEY) else {
        return context.to_string();
    };
    let rest = Value::Object(others).to_string();
    let sql = format!("{:?}:{sql}", bemi_core::protocol::SQL_KEY);
    match rest.strip_suffix('}') {
        Some(open) if open.len() > 1 => format!("{open},{sql}}}"),
        _ => format!("{{{sql}}}"),
    }
}

/// Drops the demo's replication slot (if it exists and no worker streams it), so that it
/// retains no WAL, and the publication of the same name that the demo's worker made.
///
/// ```no_run
/// # async fn run() -> Result<(), sqlx::Error> {
/// bemi_examples::demo::drop_slot("postgres://localhost/app", "bemi_demo").await?;
/// # Ok(()) }
/// ```
pub async fn drop_slot(url: &str, slot: &str) -> Result<(), sqlx::Error> {
    let pool = sqlx::PgPool::connect(url).await?;
    let active: Option<bool> =
        sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
            .bind(slot)
            .fetch_optional(&pool)
            .await?;
    if active != Some(true) {
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
              WHERE slot_name = $1 AND NOT active",
        )
        .bind(slot)
        .execute(&pool)
        .await?;
        // Only a publication that a bemi worker made (and marked so).
        let ours: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication \
                             WHERE pubname = $1 AND obj_description(oid, 'pg_publication') = $2)",
        )
        .bind(slot)
        .bind(bemi_core::protocol::PUBLICATION_MARK)
        .fetch_one(&pool)
        .await?;
        if ours {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP PUBLICATION IF EXISTS {}",
                bemi_core::sql::quote_ident(slot)
            )))
            .execute(&pool)
            .await?;
        }
    }
    pool.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{context_text, streamed_publications};

    #[test]
    fn the_sql_key_comes_last_in_a_context_cell() {
        let context =
            serde_json::json!({"SQL": "DELETE FROM todo", "user_id": 1, "endpoint": "/todo"});
        assert_eq!(
            context_text(&context),
            r#"{"endpoint":"/todo","user_id":1,"SQL":"DELETE FROM todo"}"#
        );
        assert_eq!(
            context_text(&serde_json::json!({"SQL": "x"})),
            r#"{"SQL":"x"}"#
        );
        assert_eq!(context_text(&serde_json::json!({"a": 1})), r#"{"a":1}"#);
    }

    fn names(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|name| (*name).to_owned()).collect())
    }

    #[test]
    fn the_publications_of_a_start_replication_command() {
        let command = |option: &str| {
            format!(
                "START_REPLICATION SLOT \"bemi\" LOGICAL 0/1A2B3C \
                 (proto_version '1', {option}, messages 'true')"
            )
        };
        let cases = [
            ("publication_names 'bemi'", names(&["bemi"])),
            ("publication_names 'Bemi, other'", names(&["bemi", "other"])),
            (
                r#"publication_names '"Mixed Case","a,b" , plain'"#,
                names(&["Mixed Case", "a,b", "plain"]),
            ),
            (r#""publication_names" 'x'"#, names(&["x"])),
            ("publication_names 'it''s'", names(&["it's"])),
            ("publication_names ''", None),
            ("publication_names 'a,,b'", None),
            ("publication_names 'a b'", None),
            (r#"publication_names '"open'"#, None),
        ];
        for (option, expected) in cases {
            assert_eq!(
                streamed_publications(&command(option)),
                expected,
                "{option}"
            );
        }
        assert_eq!(streamed_publications("<insufficient privilege>"), None);
        assert_eq!(streamed_publications("IDENTIFY_SYSTEM"), None);
        assert_eq!(
            streamed_publications("START_REPLICATION … (publication_names 'bemi"),
            None
        );
    }
}
