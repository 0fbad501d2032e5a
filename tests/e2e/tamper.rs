//! Tamper evidence (#25): the worker chains every change it stores and signs checkpoints; a
//! destination superuser then alters the trail with SQL in every way `bemi verify` must name —
//! a changed field, deleted changes, an inserted change, a reordering, a chain recomputed
//! without the key — and each is reported with the right message (the library call and the
//! CLI, whose exit code is non-zero on a break). Prune leaves a checkpoint at its boundary and
//! the rest still verifies; changes stored before the chain are an unchained range. Signed
//! contexts: the application's adapter signs, the worker stores each context as valid,
//! unsigned or forged (an ordinary role's claims, made-up signatures, replays).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bemi_audit::chain::{self, LinkFields};
use bemi_audit::checkpoint::{CheckpointPolicy, PublicKey, SigningKey};
use bemi_audit::verify::{Break, Verification, Verifier};
use bemi_core::signing::{self, ContextKey};
use bemi_tests::worker::{RunningWorker, wait_for_changes, worker_config};
use bemi_tests::{TestCluster, TestDb, TestResult, wait_until};
use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

use crate::cli_support::{bemi, free_port};
use crate::minimal_examples::example;

const TODO: &str = "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, \
                    is_completed boolean NOT NULL DEFAULT false)";

/// A tracked database whose worker (with a checkpoint key, a checkpoint every 5 changes) has
/// stored `changes` changes of `todo`, in transactions of 1–3 rows, waiting for them to be
/// stored every 5 or so (so that checkpoints are spread over the chain); the worker is stopped.
async fn chained_trail(
    cluster: &TestCluster,
    name: &str,
    changes: usize,
) -> anyhow::Result<(TestDb, SigningKey)> {
    let db = cluster.tracked_database(name, TODO).await?;
    let key = SigningKey::generate()?;
    let policy = CheckpointPolicy::new(Some(key.clone()))
        .every_changes(5)
        .every(Duration::from_secs(3600));
    let worker = RunningWorker::start(worker_config(&db).checkpoints(policy)).await?;
    let mut made = 0;
    let mut stored_through = 0;
    let mut n = 0;
    while made < changes {
        n += 1;
        let rows = (n % 3 + 1).min(changes - made);
        let mut tx = db.pool.begin().await?;
        for i in 0..rows {
            sqlx::query("INSERT INTO todo (task) VALUES ($1)")
                .bind(format!("task {n}.{i} \"quoted\" é 1.50"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        made += rows;
        // Stored before the next ones are written, so that no batch of the worker holds more
        // than a few changes and a checkpoint is due every 5 or so, however fast it runs.
        if made - stored_through >= 5 {
            wait_for_changes(&db, made).await?;
            stored_through = made;
        }
    }
    wait_for_changes(&db, changes).await?;
    worker.stop().await?;
    Ok((db, key))
}

async fn verify(conn: &mut PgConnection, key: Option<PublicKey>) -> anyhow::Result<Verification> {
    Ok(Verifier::new().public_key(key).run(conn).await?)
}

/// The one break of `report` (there must be exactly one).
fn only_break(report: &Verification) -> anyhow::Result<&Break> {
    ensure!(
        report.breaks.len() == 1,
        "expected one break, found {:#?}",
        report.breaks
    );
    Ok(&report.breaks[0])
}

/// `(id, chain)` of the change numbered `seq`.
async fn change_at(conn: &mut PgConnection, seq: i64) -> anyhow::Result<(String, String)> {
    Ok(
        sqlx::query_as("SELECT id::text, chain FROM changes WHERE chain_seq = $1")
            .bind(seq)
            .fetch_one(&mut *conn)
            .await?,
    )
}

type Content = (
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    i64,
    i64,
    String,
);

/// What a superuser without the key can do: recompute the chain from `from` on (hashes and
/// field digests) with the published algorithm, after altering content.
async fn recompute_chain(conn: &mut PgConnection, from: i64) -> anyhow::Result<()> {
    let (chain_name, prev): (String, Vec<u8>) =
        sqlx::query_as("SELECT chain, chain_hash FROM changes WHERE chain_seq = $1")
            .bind(from - 1)
            .fetch_one(&mut *conn)
            .await?;
    let mut head = chain::ChainHead::from_parts(from - 1, &prev).context("a 32-byte hash")?;
    let rows: Vec<(i64, Content)> = sqlx::query_as::<
        _,
        (
            i64,
            String,
            Option<String>,
            String,
            String,
            String,
            String,
            String,
            String,
            String,
            DateTime<Utc>,
            DateTime<Utc>,
            i64,
            i64,
            String,
        ),
    >(
        "SELECT chain_seq, id::text, primary_key, before::text, after::text, context::text, \
                database, schema, \"table\", operation, committed_at, queued_at, transaction_id, \
                position, source \
           FROM changes WHERE chain_seq >= $1 ORDER BY chain_seq",
    )
    .bind(from)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| {
        (
            r.0,
            (
                r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10, r.11, r.12, r.13, r.14,
            ),
        )
    })
    .collect();
    for (seq, c) in rows {
        let fields = LinkFields {
            id: &c.0,
            primary_key: c.1.as_deref(),
            before: &c.2,
            after: &c.3,
            context: &c.4,
            database: &c.5,
            schema: &c.6,
            table: &c.7,
            operation: &c.8,
            committed_at: c.9.timestamp_micros(),
            queued_at: c.10.timestamp_micros(),
            transaction_id: c.11,
            position: c.12,
            source: &c.13,
        };
        let (next, digests) = head.link(&chain_name, &fields);
        ensure!(next.seq == seq, "seq {seq} follows {}", head.seq);
        head = next;
        sqlx::query("UPDATE changes SET chain_hash = $2, chain_fields = $3 WHERE chain_seq = $1")
            .bind(seq)
            .bind(&head.hash[..])
            .bind(digests)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn verify_names_every_kind_of_tampering(cluster: Arc<TestCluster>) -> TestResult {
    let (db, key) = chained_trail(&cluster, "tamper", 40).await?;
    let public = key.public();
    let mut conn = PgConnection::connect(&db.url).await?;

    // Untouched: every change chained once, in order, checkpoints signed and holding.
    let report = verify(&mut conn, Some(public)).await?;
    ensure!(report.is_intact(), "{:#?}", report.breaks);
    ensure!(report.chains.len() == 1, "{:#?}", report.chains);
    let summary = &report.chains[0];
    ensure!(
        summary.changes == 40 && summary.first_seq == Some(1) && summary.last_seq == Some(40),
        "{summary:#?}"
    );
    let signed: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM _bemi_checkpoints WHERE signature IS NOT NULL ORDER BY seq",
    )
    .fetch_all(&mut conn)
    .await?;
    let newest = *signed.last().context("no checkpoint")?;
    ensure!(
        signed.len() >= 4 && signed[0] <= 12 && newest >= 30,
        "checkpoints at {signed:?}"
    );
    ensure!(
        report.checkpoints_verified == signed.len() as u64,
        "{report:#?}"
    );
    ensure!(
        summary.last_verified_checkpoint.map(|(seq, _)| seq) == Some(newest)
            && summary.unsigned_tail == (40 - newest) as u64,
        "{summary:#?}"
    );
    ensure!(report.unchained == 0, "{report:#?}");

    // Each tampering in a transaction of its own, verified inside it, then rolled back.
    let (id10, chain_name) = change_at(&mut conn, 10).await?;

    // 1. A changed field.
    let mut tx = conn.begin().await?;
    sqlx::query(
        "UPDATE changes SET after = jsonb_set(after, '{task}', '\"rewritten\"') WHERE chain_seq = 10",
    )
    .execute(&mut *tx)
    .await?;
    let report = verify(&mut tx, Some(public)).await?;
    let found = only_break(&report)?;
    ensure!(
        *found
            == Break::Changed {
                chain: chain_name.clone(),
                seq: 10,
                id: id10.clone(),
                fields: vec!["after"],
            },
        "{found:?}"
    );
    ensure!(found.to_string().contains("field after changed"), "{found}");
    tx.rollback().await?;

    // The context and the commit time too (every column a reader relies on).
    let mut tx = conn.begin().await?;
    sqlx::query(
        "UPDATE changes SET context = '{\"user_id\": 1}', committed_at = committed_at - interval '1 day' \
          WHERE chain_seq = 10",
    )
    .execute(&mut *tx)
    .await?;
    let report = verify(&mut tx, Some(public)).await?;
    ensure!(
        matches!(only_break(&report)?, Break::Changed { fields, .. } if *fields == ["context", "committed_at"]),
        "{:?}",
        report.breaks
    );
    tx.rollback().await?;

    // 2. Deleted changes: the gap, between the changes around it.
    let mut tx = conn.begin().await?;
    let (id11, _) = change_at(&mut tx, 11).await?;
    let (id14, _) = change_at(&mut tx, 14).await?;
    sqlx::query("DELETE FROM changes WHERE chain_seq IN (12, 13)")
        .execute(&mut *tx)
        .await?;
    let report = verify(&mut tx, Some(public)).await?;
    let found = only_break(&report)?;
    ensure!(
        *found
            == Break::Deleted {
                chain: chain_name.clone(),
                from_seq: 12,
                to_seq: 13,
                after: Some(id11.clone()),
                before: Some(id14.clone()),
            },
        "{found:?}"
    );
    ensure!(
        found.to_string().contains("2 changes deleted (seq 12..13)"),
        "{found}"
    );
    tx.rollback().await?;

    // The newest changes deleted: the checkpoint past the end says so.
    let mut tx = conn.begin().await?;
    sqlx::query("DELETE FROM changes WHERE chain_seq > $1")
        .bind(newest - 2)
        .execute(&mut *tx)
        .await?;
    let report = verify(&mut tx, Some(public)).await?;
    let ends = format!("the chain ends at seq {}", newest - 2);
    ensure!(
        report
            .breaks
            .iter()
            .any(|b| matches!(b, Break::Checkpoint { problem, .. }
            if problem.contains(&ends))),
        "{:#?}",
        report.breaks
    );
    tx.rollback().await?;

    // 3. An inserted change: a copy of change 15 under a new id, and one without a chain.
    let mut tx = conn.begin().await?;
    let copy: String = sqlx::query_scalar(
        "INSERT INTO changes (primary_key, before, after, context, database, schema, \"table\", \
                operation, committed_at, queued_at, transaction_id, position, source, chain, \
                chain_seq, chain_hash, chain_fields) \
         SELECT primary_key, before, after, context, database, schema, \"table\", operation, \
                committed_at, queued_at, transaction_id, position + 1, source, chain, chain_seq, \
                chain_hash, chain_fields \
           FROM changes WHERE chain_seq = 15 RETURNING id::text",
    )
    .fetch_one(&mut *tx)
    .await?;
    let report = verify(&mut tx, Some(public)).await?;
    let found = only_break(&report)?;
    ensure!(
        *found
            == Break::Inserted {
                chain: Some(chain_name.clone()),
                seq: Some(15),
                id: copy.clone(),
            },
        "{found:?}"
    );
    tx.rollback().await?;
    let mut tx = conn.begin().await?;
    let loose: String = sqlx::query_scalar(
        "INSERT INTO changes (primary_key, after, database, schema, \"table\", operation, \
                committed_at, queued_at, transaction_id, position, source) \
         SELECT '999', '{\"id\": 999}', database, schema, \"table\", 'CREATE', now(), now(), 1, 1, \
                source FROM changes WHERE chain_seq = 1 RETURNING id::text",
    )
    .fetch_one(&mut *tx)
    .await?;
    let report = verify(&mut tx, Some(public)).await?;
    let found = only_break(&report)?;
    ensure!(
        matches!(found, Break::Inserted { chain: None, id, .. } if *id == loose),
        "{found:?}"
    );
    tx.rollback().await?;

    // 4. A reordering: changes 17 and 18 swap places.
    let mut tx = conn.begin().await?;
    let (id17, _) = change_at(&mut tx, 17).await?;
    let (id18, _) = change_at(&mut tx, 18).await?;
    sqlx::query("UPDATE changes SET chain_seq = 35 - chain_seq WHERE chain_seq IN (17, 18)")
        .execute(&mut *tx)
        .await?;
    let report = verify(&mut tx, Some(public)).await?;
    let found = only_break(&report)?;
    ensure!(
        *found
            == Break::Reordered {
                chain: chain_name.clone(),
                id: id17.clone(),
                found_at: 18,
                belongs_at: 17,
            },
        "{found:?} ({id17} was 17, {id18} was 18)"
    );
    ensure!(found.to_string().contains("reordered"), "{found}");
    tx.rollback().await?;

    // 5. A change altered and the chain recomputed without the key: the chain holds, the
    // signed checkpoints after the change do not.
    let mut tx = conn.begin().await?;
    sqlx::query(
        "UPDATE changes SET after = jsonb_set(after, '{task}', '\"rewritten\"') WHERE chain_seq = 22",
    )
    .execute(&mut *tx)
    .await?;
    recompute_chain(&mut tx, 22).await?;
    let report = verify(&mut tx, Some(public)).await?;
    ensure!(
        !report.breaks.is_empty(),
        "a recomputed chain went unnoticed"
    );
    ensure!(
        report
            .breaks
            .iter()
            .all(|b| matches!(b, Break::Checkpoint { seq, problem, .. }
            if *seq >= 22 && problem.contains("recomputed without the key"))),
        "{:#?}",
        report.breaks
    );
    let holds = signed
        .iter()
        .copied()
        .filter(|seq| *seq < 22)
        .max()
        .context("a checkpoint before 22")?;
    ensure!(
        report.breaks[0].to_string().contains(&format!(
            "after seq {holds}, the last checkpoint that holds"
        )),
        "{}",
        report.breaks[0]
    );
    // … and rewriting the checkpoints too needs the key: their signatures fail.
    sqlx::query(
        "UPDATE _bemi_checkpoints c SET head_hash = x.chain_hash \
           FROM changes x WHERE x.chain = c.chain AND x.chain_seq = c.seq",
    )
    .execute(&mut *tx)
    .await?;
    let report = verify(&mut tx, Some(public)).await?;
    ensure!(
        !report.breaks.is_empty()
            && report
                .breaks
                .iter()
                .all(|b| matches!(b, Break::Checkpoint { seq, problem, .. }
                if *seq >= 22 && problem.contains("signature does not match"))),
        "{:#?}",
        report.breaks
    );
    // Re-signed with another key: not the public key given.
    let other = SigningKey::generate()?;
    let (_, other_public) = other.to_text_pair();
    let report = verify(&mut tx, Some(other_public.parse()?)).await?;
    ensure!(
        report
            .breaks
            .iter()
            .all(|b| matches!(b, Break::Checkpoint { problem, .. }
            if problem.contains("not by the public key given"))),
        "{:#?}",
        report.breaks
    );
    tx.rollback().await?;

    // The CLI: exit 0 when intact, non-zero naming the break when not.
    let dir = tempfile::tempdir()?;
    let public_file = dir.path().join("bemi.pub");
    std::fs::write(&public_file, format!("{public}\n"))?;
    let public_arg = public_file.to_string_lossy().into_owned();
    let envs = [("DATABASE_URL", db.url.as_str())];
    let out = bemi(&["verify", "--public-key", &public_arg], &envs)
        .await?
        .success()?;
    ensure!(
        out.stdout.contains("chain ") && out.stdout.contains("verified: no break found"),
        "{}",
        out.stdout
    );
    ensure!(
        out.stdout.contains("40 changes (seq 1..40)")
            && out
                .stdout
                .contains(&format!("last verified checkpoint seq {newest}")),
        "{}",
        out.stdout
    );
    sqlx::query("UPDATE changes SET operation = 'DELETE' WHERE chain_seq = 10")
        .execute(&mut conn)
        .await?;
    let out = bemi(&["verify", "--public-key", &public_arg], &envs).await?;
    ensure!(!out.status.success(), "{out:#?}");
    ensure!(
        out.stdout.contains(&format!(
            "BREAK: chain {chain_name} seq 10: change {id10} was altered: field operation changed"
        )),
        "{}",
        out.stdout
    );
    ensure!(out.stderr.contains("1 break found"), "{}", out.stderr);
    Ok(())
}
e2e_test!(verify_names_every_kind_of_tampering);

async fn prune_leaves_a_signed_checkpoint_and_the_rest_verifies(
    cluster: Arc<TestCluster>,
) -> TestResult {
    let (db, key) = chained_trail(&cluster, "tamper_prune", 20).await?;
    let public = key.public();
    let mut conn = PgConnection::connect(&db.url).await?;
    // Changes stored before the chain existed: an unchained range, not a break.
    sqlx::query(
        "INSERT INTO changes (primary_key, after, database, schema, \"table\", operation, \
                committed_at, queued_at, transaction_id, position, source) \
         SELECT i::text, '{}', database, schema, \"table\", 'CREATE', \
                now() - interval '400 days' + i * interval '1 day', now(), i, i, source \
           FROM changes, generate_series(1, 3) i WHERE chain_seq = 1",
    )
    .execute(&mut conn)
    .await?;
    let report = verify(&mut conn, Some(public)).await?;
    ensure!(report.is_intact(), "{:#?}", report.breaks);
    ensure!(
        report.unchained == 3 && report.unchained_range.is_some(),
        "{report:#?}"
    );

    // Prune everything committed before change 8 (with the CLI, signing with the key).
    let bound: DateTime<Utc> =
        sqlx::query_scalar("SELECT committed_at FROM changes WHERE chain_seq = 8")
            .fetch_one(&mut conn)
            .await?;
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("bemi.key");
    std::fs::write(&key_file, format!("{}\n", key.to_text_pair().0))?;
    let envs = [("DATABASE_URL", db.url.as_str())];
    bemi(
        &[
            "prune",
            "--older-than",
            &bound.to_rfc3339(),
            "--checkpoint-key",
            &key_file.to_string_lossy(),
        ],
        &envs,
    )
    .await?
    .success()?;
    let left: i64 = sqlx::query_scalar("SELECT min(chain_seq) FROM changes")
        .fetch_one(&mut conn)
        .await?;
    ensure!((6..=8).contains(&left), "the prune left seq {left}");
    let report = verify(&mut conn, Some(public)).await?;
    ensure!(report.is_intact(), "{:#?}", report.breaks);
    let summary = &report.chains[0];
    ensure!(
        summary.pruned_through == Some(left - 1) && summary.last_seq == Some(20),
        "{summary:#?}"
    );
    ensure!(report.unchained == 0, "{report:#?}");

    // Deleting the first change after the boundary is still a gap.
    let mut tx = conn.begin().await?;
    sqlx::query("DELETE FROM changes WHERE chain_seq = $1")
        .bind(left)
        .execute(&mut *tx)
        .await?;
    let report = verify(&mut tx, Some(public)).await?;
    ensure!(
        matches!(only_break(&report)?, Break::Deleted { from_seq, to_seq, after: None, .. }
            if *from_seq == left && *to_seq == left),
        "{:#?}",
        report.breaks
    );
    tx.rollback().await?;

    // A prune boundary forged without the key is refused, and does not hide the deletion.
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO _bemi_checkpoints (chain, seq, head_hash, signed_at, reason) \
         SELECT chain, chain_seq, chain_hash, now(), 'prune' FROM changes WHERE chain_seq = $1",
    )
    .bind(left + 2)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM changes WHERE chain_seq <= $1")
        .bind(left + 2)
        .execute(&mut *tx)
        .await?;
    let report = verify(&mut tx, Some(public)).await?;
    ensure!(
        report
            .breaks
            .iter()
            .any(|b| matches!(b, Break::Checkpoint { problem, .. }
            if problem.contains("not signed"))),
        "{:#?}",
        report.breaks
    );
    tx.rollback().await?;
    Ok(())
}
e2e_test!(prune_leaves_a_signed_checkpoint_and_the_rest_verifies);

async fn signed_contexts_are_stored_as_valid_unsigned_or_forged(
    cluster: Arc<TestCluster>,
) -> TestResult {
    const SECRET: &str = "the app's context secret";
    let db = cluster.tracked_database("signed_contexts", TODO).await?;
    let key = ContextKey::new(SECRET.as_bytes());
    let worker = RunningWorker::start(worker_config(&db).context_key(Some(key))).await?;

    // 1. The application, holding the key (BEMI_CONTEXT_KEY): its adapter signs.
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut app = tokio::process::Command::new(example("axum-sqlx")?)
        .env("DATABASE_URL", &db.url)
        .env("BEMI_EXAMPLE_ADDR", &addr)
        .env("BEMI_CONTEXT_KEY", SECRET)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    wait_until("the app to serve", Duration::from_secs(60), || {
        let (http, base) = (http.clone(), base.clone());
        async move { Ok(http.get(&base).send().await.ok().map(|_| ())) }
    })
    .await?;
    let response = http
        .post(format!("{base}/todo"))
        .header("x-user-id", "42")
        .json(&serde_json::json!({"task": "signed"}))
        .send()
        .await?;
    ensure!(response.status().is_success(), "{}", response.status());
    app.kill().await?;

    // 2. An ordinary role that may call pg_logical_emit_message puts words in user 42's mouth.
    let role = format!("mallory_{}", db.name);
    db.exec(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'mallory'; \
         GRANT SELECT, INSERT, DELETE ON todo TO {role}; \
         GRANT USAGE ON SEQUENCE todo_id_seq TO {role}"
    ))
    .await?;
    let options: PgConnectOptions = db.url.parse()?;
    let mut mallory =
        PgConnection::connect_with(&options.username(&role).password("mallory")).await?;
    let emit_then_insert = |context: String, task: &'static str| {
        format!(
            "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', '{}'); \
             INSERT INTO todo (task) VALUES ('{task}'); COMMIT",
            context.replace('\'', "''")
        )
    };
    // An unsigned claim: not vouched for.
    sqlx::raw_sql(AssertSqlSafe(emit_then_insert(
        r#"{"user_id":"42"}"#.to_owned(),
        "unsigned claim",
    )))
    .execute(&mut mallory)
    .await?;
    // A made-up signature.
    let now_ms = Utc::now().timestamp_millis();
    sqlx::raw_sql(AssertSqlSafe(emit_then_insert(
        format!(
            r#"{{"user_id":"42","_bemi_sig":"v1.{now_ms}.n0.{}"}}"#,
            "0".repeat(64)
        ),
        "made-up signature",
    )))
    .execute(&mut mallory)
    .await?;
    // A genuinely signed context (as the app emitted it for its own statement, seen in a log),
    // replayed onto another statement in another transaction.
    let genuine = signing::sign_with(
        &key,
        r#"{"user_id":"42","SQL":"INSERT INTO todo (task) VALUES ($1)"}"#,
        now_ms,
        "sniffed",
    );
    sqlx::raw_sql(AssertSqlSafe(emit_then_insert(genuine.clone(), "original")))
        .execute(&db.pool)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(emit_then_insert(genuine, "replayed")))
        .execute(&mut mallory)
        .await?;
    // 3. Another language's Bemi comment: unsigned, never an error.
    sqlx::raw_sql(
        "INSERT INTO todo (task) VALUES ('from a comment') /*Bemi {\"user_id\": 7} Bemi*/",
    )
    .execute(&db.pool)
    .await?;

    let stored = wait_for_changes(&db, 6).await?;
    worker.stop().await?;
    let verdicts: Vec<(String, Option<String>, Option<String>, bool)> = sqlx::query_as(
        "SELECT after->>'task', context->>'_bemi_signature', context->>'user_id', \
                context ? '_bemi_sig' \
           FROM changes ORDER BY chain_seq",
    )
    .fetch_all(&db.pool)
    .await?;
    let expected = [
        ("signed", Some("valid"), Some("42")),
        ("unsigned claim", Some("unsigned"), Some("42")),
        ("made-up signature", Some("forged"), Some("42")),
        ("original", Some("valid"), Some("42")),
        ("replayed", Some("forged"), Some("42")),
        ("from a comment", Some("unsigned"), Some("7")),
    ];
    ensure!(
        verdicts.len() == expected.len(),
        "{verdicts:#?} ({stored:#?})"
    );
    for ((task, verdict, user, has_signature), (want_task, want_verdict, want_user)) in
        verdicts.iter().zip(expected)
    {
        ensure!(
            task == want_task
                && verdict.as_deref() == want_verdict
                && user.as_deref() == want_user
                && !has_signature,
            "{task}: {verdict:?} for user {user:?} (signature kept: {has_signature}); expected \
             {want_verdict:?} for {want_task}: {verdicts:#?}"
        );
    }
    // The verdicts are part of the chained content.
    let mut conn = PgConnection::connect(&db.url).await?;
    let report = verify(&mut conn, None).await?;
    ensure!(report.is_intact(), "{:#?}", report.breaks);
    sqlx::query(
        "UPDATE changes SET context = context || '{\"_bemi_signature\": \"valid\"}' \
          WHERE after->>'task' = 'replayed'",
    )
    .execute(&mut conn)
    .await?;
    let report = verify(&mut conn, None).await?;
    ensure!(
        matches!(only_break(&report)?, Break::Changed { fields, .. } if *fields == ["context"]),
        "{:#?}",
        report.breaks
    );
    Ok(())
}
e2e_test!(signed_contexts_are_stored_as_valid_unsigned_or_forged);

async fn keygen_writes_a_pair_that_signs_and_verifies_and_never_overwrites(
    _cluster: Arc<TestCluster>,
) -> TestResult {
    let dir = tempfile::tempdir()?;
    let prefix = dir.path().join("checkpoint");
    let prefix_arg = prefix.to_string_lossy().into_owned();
    let out = bemi(&["keygen", "--out", &prefix_arg], &[])
        .await?
        .success()?;
    let secret_path = dir.path().join("checkpoint.key");
    let public_path = dir.path().join("checkpoint.pub");
    let secret: SigningKey = std::fs::read_to_string(&secret_path)?.parse()?;
    let public: PublicKey = std::fs::read_to_string(&public_path)?.parse()?;
    ensure!(secret.public() == public, "the files do not hold one pair");
    ensure!(out.stdout.contains(&public.to_string()), "{}", out.stdout);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&secret_path)?.permissions().mode() & 0o777;
        ensure!(
            mode == 0o600,
            "the secret key is readable by others: {mode:o}"
        );
    }
    let head = chain::ChainHead {
        seq: 1,
        hash: [7; 32],
    };
    let checkpoint =
        bemi_audit::checkpoint::Checkpoint::sign(Some(&secret), "c", head, Utc::now(), "interval");
    ensure!(checkpoint.verify(&public).is_ok());
    // A second run keeps the existing key.
    let again = bemi(&["keygen", "--out", &prefix_arg], &[]).await?;
    ensure!(
        !again.status.success() && again.stderr.contains("never overwritten"),
        "{again:#?}"
    );
    let kept: SigningKey = std::fs::read_to_string(&secret_path)?.parse()?;
    ensure!(kept.public() == public, "the key was replaced");
    // Without --out: both keys on stdout, one pair.
    let printed = bemi(&["keygen"], &[]).await?.success()?;
    let lines: Vec<&str> = printed.stdout.lines().collect();
    ensure!(lines.len() == 2, "{}", printed.stdout);
    let pair: SigningKey = lines[0].parse()?;
    ensure!(
        pair.public() == lines[1].parse::<PublicKey>()?,
        "{}",
        printed.stdout
    );
    // A bad key is refused with a message that says what a key looks like.
    let bad = bemi(
        &["verify", "--public-key", "bemi-ed25519-public:00"],
        &[("DATABASE_URL", "postgres://127.0.0.1:1/none")],
    )
    .await?;
    ensure!(
        !bad.status.success() && bad.stderr.contains("as `bemi keygen` writes it"),
        "{bad:#?}"
    );
    Ok(())
}
e2e_test!(keygen_writes_a_pair_that_signs_and_verifies_and_never_overwrites);
