//! Where the audit trail is: the database with the `changes` table (`--destination-url`,
//! default `DATABASE_URL`), shared by the commands that read or prune it.

use anyhow::{Context as _, anyhow};
use bemi_audit::{Change, ChangeQuery};
use futures_util::TryStreamExt as _;
use futures_util::stream::BoxStream;
use sqlx::PgPool;

use super::{connect, write_stdout};

/// `--destination-url`: the database with the `changes` table. Without it, the commands that
/// only read the audit trail (or prune it) use `DATABASE_URL`, and `bemi revert` its source
/// database. There is no `--database-url` here, so that help and usage name the one flag that
/// says where the audit trail is.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AuditArgs {
    /// The database with the `changes` table (default: the source database, DATABASE_URL).
    #[arg(
        long,
        env = "BEMI_DESTINATION_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    destination_url: Option<String>,
}

impl AuditArgs {
    /// The URL of the database with the `changes` table: `--destination-url`, else `source`
    /// (the source database's URL, if there is one).
    pub(crate) fn url_or<'a>(&'a self, source: Option<&'a str>) -> anyhow::Result<&'a str> {
        [self.destination_url.as_deref(), source]
            .into_iter()
            .flatten()
            .find(|url| !url.trim().is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "no database to read changes from: set BEMI_DESTINATION_URL (or \
                     DATABASE_URL when the worker writes into the source database), or pass \
                     --destination-url postgres://USER:PASSWORD@HOST/DATABASE"
                )
            })
    }

    /// A pool of the database with the `changes` table, `DATABASE_URL` without
    /// `--destination-url`; fails, saying what to do, when the table is not there.
    pub(crate) async fn connect(&self) -> anyhow::Result<PgPool> {
        let source = std::env::var("DATABASE_URL").ok();
        self.connect_or(source.as_deref()).await
    }

    /// A pool of the database with the `changes` table, `source` without `--destination-url`
    /// (see [`AuditArgs::url_or`]); fails, saying what to do, when the table is not there.
    pub(crate) async fn connect_or(&self, source: Option<&str>) -> anyhow::Result<PgPool> {
        let pool = connect(self.url_or(source)?).await?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('changes') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .context("could not look for the changes table")?;
        if !exists {
            return Err(anyhow!(
                "this database has no `changes` table yet: start `bemi worker` (it creates the \
                 table), or point --destination-url (BEMI_DESTINATION_URL) at the worker's \
                 destination database"
            ));
        }
        Ok(pool)
    }
}

/// Fails, saying what to check, when the audit trail has no change of `table` at all (`todo`
/// in any schema, or `schema.todo`): a misspelt or misplaced table name would otherwise read as
/// a row or a table that did not exist.
pub(crate) async fn ensure_known_table(pool: &PgPool, table: &str) -> anyhow::Result<()> {
    let any = ChangeQuery::new().table(table).limit(1).fetch(pool).await?;
    if any.is_empty() {
        return Err(anyhow!(
            "the audit trail has no change of table {table:?}: check the name (`todo`, or \
             `schema.todo`), that it is the first argument, and that the worker captures that \
             table (`bemi changes --table TABLE --limit 1`)"
        ));
    }
    Ok(())
}

/// Whether a write to stdout failed because the reader went away (`bemi … | head`): not an
/// error.
pub(crate) fn finish_output(result: std::io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// Prints each change of `changes` as one line of JSON (`--json`), until the stream ends or a
/// write fails. A query error is returned as such; a failed write as the inner result, for
/// [`finish_output`].
pub(crate) async fn print_json_lines(
    mut changes: BoxStream<'_, Result<Change, sqlx::Error>>,
) -> Result<std::io::Result<()>, sqlx::Error> {
    while let Some(change) = changes.try_next().await? {
        let written = serde_json::to_string(&change)
            .map_err(std::io::Error::other)
            .and_then(|line| write_stdout(&format!("{line}\n")));
        if written.is_err() {
            return Ok(written);
        }
    }
    Ok(Ok(()))
}
