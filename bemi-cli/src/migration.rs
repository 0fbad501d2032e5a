//! `bemi migration sql`, `bemi migration create DIR` and `bemi migrate`: the tracking migration
//! printed, written as files for sqlx-migrate (or any tool that runs SQL files), or applied.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use bemi_core::migration::{self, MigrationOptions};
use chrono::Utc;

use super::{SourceArgs, boolish, connect, write_stdout};

/// `bemi migration …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum MigrationCommand {
    /// Print the SQL that installs tracking (with --down: that removes it).
    Sql(SqlArgs),
    /// Write DIR/TIMESTAMP_bemi.up.sql and .down.sql, as `sqlx migrate add -r` would.
    Create(CreateArgs),
}

/// Choices of the migration.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MigrationFlags {
    /// Leave tables' REPLICA IDENTITY alone (updates and deletes then carry only the key
    /// columns in `before`).
    #[arg(long, env = "BEMI_NO_REPLICA_IDENTITY_FULL", value_parser = boolish())]
    no_replica_identity_full: bool,
    /// Track tables without the statement trigger that reads Bemi comments: writes cost the
    /// server nothing for tracking, and only contexts the adapters emit as messages (carrier
    /// `Message` on every adapter) are recorded; comments and sqlcommenter tags are ignored.
    #[arg(long, env = "BEMI_NO_COMMENT_TRIGGER", value_parser = boolish())]
    no_comment_trigger: bool,
}

impl MigrationFlags {
    fn options(&self) -> MigrationOptions {
        MigrationOptions::default()
            .replica_identity_full(!self.no_replica_identity_full)
            .comment_trigger(!self.no_comment_trigger)
    }
}

/// `bemi migration sql`
#[derive(Debug, clap::Args)]
pub(crate) struct SqlArgs {
    /// Print the SQL that removes tracking instead.
    #[arg(long, env = "BEMI_MIGRATION_DOWN", value_parser = boolish())]
    down: bool,
    #[command(flatten)]
    flags: MigrationFlags,
}

/// `bemi migration create`
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// The migrations directory (created if missing), e.g. `migrations`.
    #[arg(env = "BEMI_MIGRATIONS_DIR", value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    flags: MigrationFlags,
}

/// `bemi migrate`
#[derive(Debug, clap::Args)]
pub(crate) struct MigrateArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    flags: MigrationFlags,
}

/// Runs `bemi migration sql` or `bemi migration create`.
pub(super) fn run_migration(command: MigrationCommand) -> anyhow::Result<()> {
    match command {
        MigrationCommand::Sql(args) => {
            let sql = if args.down {
                migration::down().to_owned()
            } else {
                args.flags.options().up()
            };
            match write_stdout(&sql) {
                Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(error).context("writing the migration to stdout")
                }
                _ => Ok(()),
            }
        }
        MigrationCommand::Create(args) => {
            let written = create_files(&args.dir, args.flags.options())?;
            for path in written {
                println!("created {}", path.display());
            }
            Ok(())
        }
    }
}

/// Writes `<timestamp>_bemi.up.sql` and `<timestamp>_bemi.down.sql` into `dir`, refusing to
/// overwrite anything; returns their paths.
pub(crate) fn create_files(dir: &Path, options: MigrationOptions) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("could not create the directory {}", dir.display()))?;
    let version = Utc::now().format("%Y%m%d%H%M%S");
    let header = |what: &str| {
        format!(
            "-- {what} bemi-rs tracking (statement-level triggers that turn /*Bemi ... Bemi*/ \
             comments into logical-decoding messages).\n-- Written by `bemi migration create` \
             ({} {}).\n\n",
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
        )
    };
    let files = [
        (
            dir.join(format!("{version}_bemi.up.sql")),
            header("Installs") + &options.up(),
        ),
        (
            dir.join(format!("{version}_bemi.down.sql")),
            header("Removes") + migration::down(),
        ),
    ];
    for (path, _) in &files {
        if path.exists() {
            return Err(anyhow!(
                "{} already exists; bemi never overwrites a migration: remove it or run the \
                 command again in a second",
                path.display()
            ));
        }
    }
    let mut written = Vec::new();
    for (path, contents) in &files {
        let result = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut file| file.write_all(contents.as_bytes()));
        if let Err(error) = result {
            for created in &written {
                let _ = std::fs::remove_file(created);
            }
            return Err(anyhow!("could not write {}: {error}", path.display()));
        }
        written.push(path.clone());
    }
    Ok(written)
}

/// Runs `bemi migrate`.
pub(super) async fn run_migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let url = args.source.url()?;
    let pool = connect(url).await?;
    bemi_sqlx::migration::migrate(&pool, args.flags.options())
        .await
        .map_err(|error| {
            let privilege = error
                .as_database_error()
                .and_then(sqlx::error::DatabaseError::code)
                .is_some_and(|code| code == "42501");
            if privilege {
                anyhow!(
                    "could not install tracking: {error}. Run `bemi migrate` as the tables' \
                     owner or a superuser (or hand `bemi migration sql` to someone who is)"
                )
            } else {
                anyhow!("could not install tracking: {error}")
            }
        })?;
    let (database, tracked): (String, i64) = sqlx::query_as(
        "SELECT current_database()::text, \
                (SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgname = $1)",
    )
    .bind(migration::TRIGGER_NAME)
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    println!(
        "tracking is installed in {database}: {tracked} table(s) tracked (running `bemi migrate` \
         again is harmless)"
    );
    Ok(())
}
