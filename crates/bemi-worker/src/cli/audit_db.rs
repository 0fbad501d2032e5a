//! Where the audit trail is: the database with the `changes` table (`--destination-url`,
//! default `DATABASE_URL`), shared by the commands that read or prune it.

use anyhow::{Context as _, anyhow};
use bemi_core::audit::Change;
use futures_util::TryStreamExt as _;
use futures_util::stream::BoxStream;
use sqlx::PgPool;

use super::{SourceArgs, connect, write_stdout};

/// `--destination-url` and `--database-url`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AuditArgs {
    /// The database with the `changes` table (default: DATABASE_URL).
    #[arg(
        long,
        env = "BEMI_DESTINATION_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    destination_url: Option<String>,
    #[command(flatten)]
    pub source: SourceArgs,
}

impl AuditArgs {
    /// The URL of the database with the `changes` table.
    pub fn url(&self) -> anyhow::Result<&str> {
        match self.destination_url.as_deref() {
            Some(url) if !url.trim().is_empty() => Ok(url),
            _ => self.source.url().map_err(|_| {
                anyhow!(
                    "no database to read changes from: set BEMI_DESTINATION_URL (or \
                     DATABASE_URL when the worker writes into the source database), or pass \
                     --destination-url postgres://USER:PASSWORD@HOST/DATABASE"
                )
            }),
        }
    }

    /// A pool of the database with the `changes` table; fails, saying what to do, when the
    /// table is not there.
    pub async fn connect(&self) -> anyhow::Result<PgPool> {
        let pool = connect(self.url()?).await?;
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
