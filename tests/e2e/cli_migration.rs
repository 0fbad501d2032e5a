//! `bemi migration sql`, `bemi migration create` and `bemi migrate`, run as a process.

use std::sync::Arc;

use anyhow::ensure;
use bemi_core::migration::{self, MigrationOptions};
use bemi_tests::{TODO_TABLE, TestCluster, TestDb, TestResult};

use crate::cli_support::bemi;

async fn triggers_on(db: &TestDb, table: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgname = $1 AND tgrelid = $2::regclass",
    )
    .bind(migration::TRIGGER_NAME)
    .bind(table)
    .fetch_one(&db.pool)
    .await?)
}

async fn migration_sql_prints_the_up_and_down_migrations(_cluster: Arc<TestCluster>) -> TestResult {
    let up = bemi(&["migration", "sql"], &[]).await?.success()?;
    ensure!(up.stdout == migration::up(), "up differs: {}", up.stdout);

    let down = bemi(&["migration", "sql", "--down"], &[])
        .await?
        .success()?;
    ensure!(down.stdout == migration::down());
    let down_from_env = bemi(&["migration", "sql"], &[("BEMI_MIGRATION_DOWN", "true")])
        .await?
        .success()?;
    ensure!(down_from_env.stdout == migration::down());

    let without_full = bemi(&["migration", "sql", "--no-replica-identity-full"], &[])
        .await?
        .success()?;
    let expected = MigrationOptions::default()
        .replica_identity_full(false)
        .up();
    ensure!(without_full.stdout == expected);
    ensure!(without_full.stdout != up.stdout);

    let wrong = bemi(&["migration", "sql", "--sideways"], &[]).await?;
    ensure!(wrong.status.code() == Some(2), "{wrong:#?}");
    Ok(())
}
e2e_test!(migration_sql_prints_the_up_and_down_migrations);

async fn migration_create_writes_a_pair_that_sqlx_migrate_applies_and_reverts(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = cluster.database("cli_migration_create").await?;
    db.exec(TODO_TABLE).await?;
    let dir = tempfile::tempdir()?;
    let migrations = dir.path().join("migrations");
    let created = bemi(&["migration", "create", &migrations.to_string_lossy()], &[])
        .await?
        .success()?;

    let mut names: Vec<String> = std::fs::read_dir(&migrations)?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    names.sort();
    ensure!(names.len() == 2, "{names:?}");
    let version = &names[0][..14];
    ensure!(version.chars().all(|c| c.is_ascii_digit()), "{names:?}");
    ensure!(
        names
            == [
                format!("{version}_bemi.down.sql"),
                format!("{version}_bemi.up.sql")
            ],
        "{names:?}"
    );
    ensure!(
        created.stdout.lines().count() == 2 && created.stdout.contains("_bemi.up.sql"),
        "{created:#?}"
    );
    let up = std::fs::read_to_string(migrations.join(&names[1]))?;
    let down = std::fs::read_to_string(migrations.join(&names[0]))?;
    ensure!(up.starts_with("-- ") && up.ends_with(&migration::up()));
    ensure!(down.ends_with(migration::down()));

    // sqlx's own migrator runs the pair.
    let migrator = sqlx::migrate::Migrator::new(migrations.as_path()).await?;
    migrator.run(&db.pool).await?;
    ensure!(triggers_on(&db, "todo").await? == 1);
    ensure!(db.replica_identity("todo").await? == "f");
    let applied: Vec<String> =
        sqlx::query_scalar("SELECT description FROM _sqlx_migrations WHERE success")
            .fetch_all(&db.pool)
            .await?;
    ensure!(applied == ["bemi"], "{applied:?}");
    migrator.undo(&db.pool, 0).await?;
    ensure!(triggers_on(&db, "todo").await? == 0);
    let functions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_proc WHERE proname LIKE '\\_bemi%'")
            .fetch_one(&db.pool)
            .await?;
    ensure!(
        functions == 0,
        "{functions} _bemi functions left after down"
    );
    Ok(())
}
e2e_test!(migration_create_writes_a_pair_that_sqlx_migrate_applies_and_reverts);

async fn migration_create_never_overwrites(_cluster: Arc<TestCluster>) -> TestResult {
    let dir = tempfile::tempdir()?;
    // Occupy every version the command could pick in the next seconds.
    let now = chrono::Utc::now();
    let mut occupied = Vec::new();
    for second in -1..30 {
        let version = (now + chrono::Duration::seconds(second)).format("%Y%m%d%H%M%S");
        let path = dir.path().join(format!("{version}_bemi.up.sql"));
        std::fs::write(&path, "-- mine\n")?;
        occupied.push(path);
    }
    let refused = bemi(&["migration", "create", &dir.path().to_string_lossy()], &[]).await?;
    ensure!(!refused.status.success(), "{refused:#?}");
    ensure!(
        refused.stderr.contains("already exists") && refused.stderr.contains("never overwrites"),
        "{}",
        refused.stderr
    );
    for path in &occupied {
        ensure!(std::fs::read_to_string(path)? == "-- mine\n");
    }
    let files = std::fs::read_dir(dir.path())?.count();
    ensure!(files == occupied.len(), "the refused run left files behind");
    Ok(())
}
e2e_test!(migration_create_never_overwrites);

async fn migrate_installs_tracking_idempotently(cluster: Arc<TestCluster>) -> TestResult {
    let db = cluster.database("cli_migrate").await?;
    db.exec(&format!(
        "{TODO_TABLE}; CREATE TABLE note (id int PRIMARY KEY)"
    ))
    .await?;
    let env = [("DATABASE_URL", db.url.as_str())];

    let first = bemi(&["migrate", "--no-replica-identity-full"], &env)
        .await?
        .success()?;
    ensure!(
        first.stdout.contains("2 table(s) tracked"),
        "{}",
        first.stdout
    );
    ensure!(db.replica_identity("todo").await? == "d");

    for _ in 0..2 {
        let again = bemi(&["migrate"], &env).await?.success()?;
        ensure!(
            again.stdout.contains("2 table(s) tracked"),
            "{}",
            again.stdout
        );
    }
    ensure!(triggers_on(&db, "todo").await? == 1);
    ensure!(triggers_on(&db, "note").await? == 1);
    ensure!(db.replica_identity("note").await? == "f");

    let no_url = bemi(&["migrate"], &[]).await?;
    ensure!(no_url.status.code() == Some(1), "{no_url:#?}");
    ensure!(
        no_url.stderr.contains("set DATABASE_URL"),
        "{}",
        no_url.stderr
    );

    let stranger = crate::cli_support::with_user(&db.url, "bemi_no_such_role", "pw-secret")?;
    let refused = bemi(&["migrate", "--database-url", &stranger], &[]).await?;
    ensure!(refused.status.code() == Some(1), "{refused:#?}");
    ensure!(
        refused.stderr.contains("could not connect")
            && refused.stderr.contains("bemi_no_such_role:***@")
            && !refused.stderr.contains("pw-secret"),
        "{}",
        refused.stderr
    );
    Ok(())
}
e2e_test!(migrate_installs_tracking_idempotently);
