//! sqlcommenter comments as contexts: a real Python client (`google-cloud-sqlcommenter` with
//! psycopg2, inside a Flask request) tags its SQL; the worker stores the decoded keys. A Bemi
//! context for the same statement wins; `bemi.sqlcommenter = 'off'` turns the reading off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use bemi_core::carrier::Carrier;
use bemi_core::context;
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestResult, ctx, todo_db};
use serde_json::{Value, json};

/// The Python packages of the client, pinned.
const PACKAGES: [&str; 3] = [
    "google-cloud-sqlcommenter==2.0.0",
    "psycopg2-binary==2.9.13",
    "flask==3.1.3",
];

/// A Flask app's handler writing through psycopg2 with sqlcommenter's cursor factory: once
/// with parameters, once without (where the library doubles every `%`), then a write outside
/// any request.
const CLIENT: &str = r#"
import os, sys
import psycopg2
from flask import Flask
from google.cloud.sqlcommenter.psycopg2.extension import CommenterCursorFactory

app = Flask(__name__)

@app.route("/todos/<int:todo_id>/rename", methods=["PUT"])
def rename_todo(todo_id):
    return ""

conn = psycopg2.connect(os.environ["DATABASE_URL"],
                        cursor_factory=CommenterCursorFactory(with_db_driver=True))
conn.autocommit = True
cur = conn.cursor()
with app.test_request_context("/todos/1/rename", method="PUT"):
    cur.execute("INSERT INTO todo (task) VALUES (%s)", ("with parameters",))
    print(cur.query.decode())
    cur.execute("INSERT INTO todo (task) VALUES ('without parameters')")
    print(cur.query.decode())
cur.execute("INSERT INTO todo (task) VALUES ('outside a request')")
print(cur.query.decode())
"#;

/// A virtual environment with [`PACKAGES`] (made once, kept in the target directory).
fn python_with_sqlcommenter() -> anyhow::Result<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sqlcommenter-venv");
    let python = venv.join("bin/python");
    let marker = venv.join(format!("installed {}", PACKAGES.join(" ")));
    if marker.exists() {
        return Ok(python);
    }
    let run = |program: &Path, args: &[&str]| -> anyhow::Result<()> {
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .with_context(|| format!("running {}", program.display()))?;
        ensure!(
            status.success(),
            "{} {args:?} failed: {status}",
            program.display()
        );
        Ok(())
    };
    let venv_arg = venv.to_str().context("a non-UTF-8 target directory")?;
    run(Path::new("python3"), &["-m", "venv", "--clear", venv_arg])
        .context("the sqlcommenter test needs Python 3 with venv (Debian: python3-venv)")?;
    let mut install = vec!["-m", "pip", "install", "-q", "--disable-pip-version-check"];
    install.extend(PACKAGES);
    run(&python, &install)?;
    std::fs::write(&marker, "")?;
    Ok(python)
}

async fn a_python_clients_sqlcommenter_tags_become_the_context(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "sqlcommenter_python").await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let python = tokio::task::spawn_blocking(python_with_sqlcommenter).await??;
    let output = tokio::process::Command::new(&python)
        .args(["-c", CLIENT])
        .env("DATABASE_URL", &db.url)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "the Python client failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    // What the library really sent: `%` doubled in the statement without parameters.
    ensure!(stdout.contains("flask%3A3.1.3"), "{stdout}");
    ensure!(stdout.contains("flask%%3A3.1.3"), "{stdout}");

    let changes = wait_for_changes(&db, 3).await?;
    worker.stop().await?;
    let driver = changes[0].context["db_driver"].as_str().unwrap_or_default();
    ensure!(driver.starts_with("psycopg2:2.9.13 ("), "{changes:#?}");
    let in_request = json!({
        "framework": "flask:3.1.3",
        "controller": "rename_todo",
        "route": "/todos/<int:todo_id>/rename",
        "db_driver": driver,
    });
    let contexts: Vec<(&Value, &Value)> = changes
        .iter()
        .map(|c| (&c.after["task"], &c.context))
        .collect();
    ensure!(
        contexts
            == [
                (&json!("with parameters"), &in_request),
                (&json!("without parameters"), &in_request),
                (&json!("outside a request"), &json!({"db_driver": driver})),
            ],
        "{contexts:#?}"
    );
    Ok(())
}
e2e_test!(a_python_clients_sqlcommenter_tags_become_the_context);

async fn a_bemi_context_wins_and_the_setting_turns_sqlcommenter_off(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let db = todo_db(&cluster, "sqlcommenter_rules").await?;
    let worker = RunningWorker::start(worker_config(&db)).await?;
    let tagged = "INSERT INTO todo (task) VALUES ($1) /*route='%2Fsqlcommenter',user='O\\'Brien%3Cscript%3E'*/";

    // No Bemi context: the comment's keys, decoded and stored as text.
    db.exec(&tagged.replace("$1", "'untouched'")).await?;
    // A Bemi context for the same statement, through each carrier: it wins.
    for carrier in [Carrier::Message, Carrier::Comment] {
        let pool = db.bemi_pool().carrier(carrier);
        let mut tx = pool.begin().await?;
        context::scope(
            ctx(json!({"carrier": format!("{carrier:?}")})),
            sqlx::query(sqlx::AssertSqlSafe(tagged))
                .bind("bemi")
                .execute(&mut tx),
        )
        .await?;
        // The next statement of the transaction, sent without the adapter, takes its own tag.
        sqlx::query(sqlx::AssertSqlSafe(tagged.replace("sqlcommenter", "after")))
            .bind("after")
            .execute(&mut **tx.inner_mut())
            .await?;
        tx.commit().await?;
    }
    // A statement whose trigger fires again for another table (an ON DELETE CASCADE): the
    // trigger repeats the tag after the first table's rows; the Bemi context still wins.
    db.exec(
        "CREATE TABLE item (id bigserial PRIMARY KEY, \
         todo_id bigint NOT NULL REFERENCES todo ON DELETE CASCADE); \
         INSERT INTO item (todo_id) SELECT id FROM todo WHERE task = 'untouched'",
    )
    .await?;
    context::scope(
        ctx(json!({"cascade": true})),
        sqlx::query("DELETE FROM todo WHERE task = 'untouched' /*route='%2Fdelete'*/")
            .execute(&db.bemi_pool().carrier(Carrier::Message)),
    )
    .await?;
    // A comment that is no sqlcommenter tag: no context.
    db.exec("INSERT INTO todo (task) VALUES ('note') /* nightly cleanup */;")
        .await?;
    // Turned off for a transaction (as ALTER DATABASE / ROLE … SET would for all).
    let mut tx = db.pool.begin().await?;
    sqlx::query("SET LOCAL bemi.sqlcommenter = 'off'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(tagged))
        .bind("off")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let changes = wait_for_changes(&db, 10).await?;
    worker.stop().await?;
    let tag = json!({"route": "/sqlcommenter", "user": "O'Brien<script>"});
    let after = json!({"route": "/after", "user": "O'Brien<script>"});
    let contexts: Vec<(String, Value)> = changes
        .iter()
        .map(|c| {
            let mut context = c.context.clone();
            if let Some(map) = context.as_object_mut() {
                map.remove("SQL");
            }
            let row = if c.operation == "DELETE" {
                &c.before
            } else {
                &c.after
            };
            let what = match &row["task"] {
                Value::String(task) => format!("{} {task}", c.operation),
                _ => format!("{} {}", c.operation, c.table),
            };
            (what, context)
        })
        .collect();
    let expected = [
        ("CREATE untouched", tag.clone()),
        ("CREATE bemi", json!({"carrier": "Message"})),
        ("CREATE after", after.clone()),
        ("CREATE bemi", json!({"carrier": "Comment"})),
        ("CREATE after", after),
        ("CREATE item", json!({})),
        ("DELETE untouched", json!({"cascade": true})),
        ("DELETE item", json!({"cascade": true})),
        ("CREATE note", json!({})),
        ("CREATE off", json!({})),
    ]
    .map(|(what, context)| (what.to_owned(), context));
    ensure!(contexts == expected, "{contexts:#?}");
    Ok(())
}
e2e_test!(a_bemi_context_wins_and_the_setting_turns_sqlcommenter_off);
