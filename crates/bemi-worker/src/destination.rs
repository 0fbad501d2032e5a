//! The destination: the `changes` table and the worker's position, written together.
//!
//! Every write is one transaction that COPYs a batch of rows into `changes` **and** records, in
//! `_bemi_worker_state`, how far the batch got: the end LSN of the last source transaction
//! written whole, and — when the batch ends inside a large transaction — that transaction's commit
//! LSN and the position of its last written row. The worker confirms an LSN to the replication
//! slot only after this transaction committed, and on restart resumes from the recorded
//! position, so a crash at any moment neither loses nor duplicates a change. The unique key
//! `(position, table, schema, database, operation)` is the last line of defence: should a
//! batch ever meet rows already stored, it is rewritten with `ON CONFLICT DO NOTHING`.

use std::fmt::Write as _;

use sqlx::{Connection, Executor, PgConnection};

use crate::assembler::{Partial, Piece, ResumePoint};
use crate::rows::ChangeRow;

/// The `changes` table, its indexes, and the worker's state table. Idempotent.
pub const SCHEMA_SQL: &str = r#"
CREATE TABLE IF NOT EXISTS changes (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  primary_key text,
  before jsonb NOT NULL DEFAULT '{}',
  after jsonb NOT NULL DEFAULT '{}',
  context jsonb NOT NULL DEFAULT '{}',
  database text NOT NULL,
  schema text NOT NULL,
  "table" text NOT NULL,
  operation text NOT NULL CHECK (operation IN ('CREATE', 'UPDATE', 'DELETE', 'TRUNCATE')),
  committed_at timestamptz NOT NULL,
  queued_at timestamptz NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  transaction_id bigint NOT NULL,
  position bigint NOT NULL,
  CONSTRAINT changes_position_key UNIQUE (position, "table", schema, database, operation)
);
CREATE INDEX IF NOT EXISTS changes_committed_at_idx ON changes (committed_at);
CREATE INDEX IF NOT EXISTS changes_table_primary_key_idx ON changes ("table", primary_key, committed_at);
CREATE INDEX IF NOT EXISTS changes_context_idx ON changes USING gin (context jsonb_path_ops);
CREATE INDEX IF NOT EXISTS changes_before_idx ON changes USING gin (before jsonb_path_ops);
CREATE INDEX IF NOT EXISTS changes_after_idx ON changes USING gin (after jsonb_path_ops);

CREATE TABLE IF NOT EXISTS _bemi_worker_state (
  database text NOT NULL,
  slot text NOT NULL,
  last_lsn pg_lsn NOT NULL DEFAULT '0/0',
  partial_commit_lsn pg_lsn,
  partial_position pg_lsn,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (database, slot)
);
"#;

const COPY_SQL: &str = r#"COPY changes (primary_key, before, after, context, database, schema, "table", operation, committed_at, queued_at, transaction_id, position) FROM STDIN"#;

const UPSERT_STATE_SQL: &str = "INSERT INTO _bemi_worker_state AS s \
       (database, slot, last_lsn, partial_commit_lsn, partial_position, updated_at) \
     VALUES ($1, $2, $3::text::pg_lsn, $4::text::pg_lsn, $5::text::pg_lsn, now()) \
     ON CONFLICT (database, slot) DO UPDATE SET \
       last_lsn = GREATEST(s.last_lsn, EXCLUDED.last_lsn), \
       partial_commit_lsn = EXCLUDED.partial_commit_lsn, \
       partial_position = EXCLUDED.partial_position, \
       updated_at = now()";

/// The connection to the destination database.
#[derive(Debug)]
pub struct Destination {
    conn: PgConnection,
    database: String,
    slot: String,
    resume: ResumePoint,
}

impl Destination {
    /// Connects, creates the tables if missing, and reads where the worker of `slot` on the
    /// source `database` left off.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let destination = bemi_worker::destination::Destination::open("postgres://localhost/app", "app", "bemi").await?;
    /// println!("resuming after {:?}", destination.resume_point());
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str, database: &str, slot: &str) -> Result<Self, sqlx::Error> {
        let mut conn = PgConnection::connect(url).await?;
        // Confirming a position to the slot is only safe once the rows are durable.
        conn.execute("SET synchronous_commit = on").await?;
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('bemi-rs destination schema'))")
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(SCHEMA_SQL).execute(&mut *tx).await?;
        tx.commit().await?;
        let resume = read_resume_point(&mut conn, database, slot).await?;
        Ok(Self {
            conn,
            database: database.to_owned(),
            slot: slot.to_owned(),
            resume,
        })
    }

    /// Where the last committed write left off.
    ///
    /// ```no_run
    /// # fn run(destination: &bemi_worker::destination::Destination) {
    /// let resume = destination.resume_point();
    /// # }
    /// ```
    pub fn resume_point(&self) -> ResumePoint {
        self.resume
    }

    /// Writes `pieces` (in stream order) and the new position in one transaction; returns the
    /// new position once it committed.
    ///
    /// ```no_run
    /// # async fn run(destination: &mut bemi_worker::destination::Destination, pieces: Vec<bemi_worker::assembler::Piece>) -> Result<(), sqlx::Error> {
    /// let resume = destination.write(&pieces).await?;
    /// # Ok(()) }
    /// ```
    pub async fn write(&mut self, pieces: &[Piece]) -> Result<ResumePoint, sqlx::Error> {
        let resume = advance(self.resume, pieces);
        let rows = || pieces.iter().flat_map(|piece| piece.rows.iter());
        match self.write_batch(rows(), resume, false).await {
            Ok(()) => {}
            Err(error) if is_unique_violation(&error) => {
                tracing::warn!(
                    %error,
                    "rows of this batch were already stored; rewriting it without duplicates"
                );
                self.write_batch(rows(), resume, true).await?;
            }
            Err(error) => return Err(error),
        }
        self.resume = resume;
        Ok(resume)
    }

    async fn write_batch<'r>(
        &mut self,
        rows: impl Iterator<Item = &'r ChangeRow>,
        resume: ResumePoint,
        skip_duplicates: bool,
    ) -> Result<(), sqlx::Error> {
        let mut data = Vec::with_capacity(64 * 1024);
        let mut count = 0usize;
        for row in rows {
            encode_copy_row(&mut data, row, &self.database);
            count += 1;
        }
        let mut tx = self.conn.begin().await?;
        if count > 0 {
            if skip_duplicates {
                tx.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS _bemi_incoming \
                       (LIKE changes INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
                )
                .await?;
                let mut copy = tx
                    .copy_in_raw(&COPY_SQL.replacen("COPY changes", "COPY _bemi_incoming", 1))
                    .await?;
                copy.send(data).await?;
                copy.finish().await?;
                tx.execute(
                    "INSERT INTO changes SELECT * FROM _bemi_incoming ON CONFLICT DO NOTHING",
                )
                .await?;
            } else {
                let mut copy = tx.copy_in_raw(COPY_SQL).await?;
                copy.send(data).await?;
                copy.finish().await?;
            }
        }
        let partial = resume.partial;
        sqlx::query(UPSERT_STATE_SQL)
            .bind(&self.database)
            .bind(&self.slot)
            .bind(format_lsn(resume.last_lsn))
            .bind(partial.map(|p| format_lsn(p.commit_lsn)))
            .bind(partial.map(|p| format_lsn(p.position)))
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
}

/// The position after writing `pieces` on top of `resume`.
fn advance(mut resume: ResumePoint, pieces: &[Piece]) -> ResumePoint {
    for piece in pieces {
        match piece.end_lsn {
            Some(end_lsn) => {
                resume.last_lsn = resume.last_lsn.max(end_lsn);
                resume.partial = None;
            }
            None => {
                if let Some(last) = piece.rows.last() {
                    resume.partial = Some(Partial {
                        commit_lsn: piece.commit_lsn,
                        position: last.position,
                    });
                }
            }
        }
    }
    resume
}

async fn read_resume_point(
    conn: &mut PgConnection,
    database: &str,
    slot: &str,
) -> Result<ResumePoint, sqlx::Error> {
    let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT last_lsn::text, partial_commit_lsn::text, partial_position::text \
           FROM _bemi_worker_state WHERE database = $1 AND slot = $2",
    )
    .bind(database)
    .bind(slot)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((last, commit, position)) = row else {
        return Ok(ResumePoint::default());
    };
    let parse = |text: &str| {
        parse_lsn(text).ok_or_else(|| {
            sqlx::Error::Protocol(format!("_bemi_worker_state holds an invalid LSN {text:?}"))
        })
    };
    let partial = match (commit, position) {
        (Some(commit), Some(position)) => Some(Partial {
            commit_lsn: parse(&commit)?,
            position: parse(&position)?,
        }),
        _ => None,
    };
    Ok(ResumePoint {
        last_lsn: parse(&last)?,
        partial,
    })
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "23505")
}

/// `0x16_B374D848` → `16/B374D848`.
///
/// ```
/// assert_eq!(bemi_worker::destination::format_lsn(0x16_B374D848), "16/B374D848");
/// ```
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// `16/B374D848` → `0x16_B374D848`.
///
/// ```
/// assert_eq!(bemi_worker::destination::parse_lsn("16/B374D848"), Some(0x16_B374D848));
/// assert_eq!(bemi_worker::destination::parse_lsn("nope"), None);
/// ```
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// Appends one row in COPY's text format.
fn encode_copy_row(out: &mut Vec<u8>, row: &ChangeRow, database: &str) {
    match &row.primary_key {
        Some(key) => copy_text(out, key),
        None => out.extend_from_slice(b"\\N"),
    }
    for field in [
        row.before.as_str(),
        row.after.as_str(),
        &row.context,
        database,
        &row.schema,
        &row.table,
        row.operation.as_str(),
    ] {
        out.push(b'\t');
        copy_text(out, field);
    }
    let mut text = String::with_capacity(96);
    let _ = writeln!(
        text,
        "\t{}\t{}\t{}\t{}",
        timestamp(row.committed_at),
        timestamp(row.queued_at),
        row.transaction_id,
        row.position as i64
    );
    out.extend_from_slice(text.as_bytes());
}

/// COPY text format escaping: backslash, tab, newline and carriage return.
fn copy_text(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// µs since the Unix epoch → `2026-11-22 10:07:00.123456+00`.
fn timestamp(unix_micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(unix_micros)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M:%S%.6f+00")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::Operation;
    use std::sync::Arc;

    fn row(position: u64) -> ChangeRow {
        ChangeRow {
            primary_key: Some("tab\there".into()),
            before: "{}".into(),
            after: r#"{"task":"line\nbreak \\ slash"}"#.into(),
            context: Arc::from("{}"),
            schema: "public".into(),
            table: "todo".into(),
            operation: Operation::Create,
            committed_at: 1_700_000_000_123_456,
            queued_at: 1_700_000_000_123_457,
            transaction_id: 7,
            position,
        }
    }

    #[test]
    fn copy_rows_escape_text_format_specials() {
        let mut out = Vec::new();
        encode_copy_row(&mut out, &row(42), "app");
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("tab\\there\t{}\t"), "{line}");
        assert!(
            line.contains(r#"{"task":"line\\nbreak \\\\ slash"}"#),
            "{line}"
        );
        assert!(
            line.ends_with(
                "\t2023-11-14 22:13:20.123456+00\t2023-11-14 22:13:20.123457+00\t7\t42\n"
            ),
            "{line}"
        );
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn the_position_advances_with_whole_and_partial_transactions() {
        let start = ResumePoint::default();
        let chunk = Piece {
            commit_lsn: 500,
            rows: vec![row(10), row(20)],
            end_lsn: None,
        };
        let partial = advance(start, std::slice::from_ref(&chunk));
        assert_eq!(
            partial.partial,
            Some(Partial {
                commit_lsn: 500,
                position: 20
            })
        );
        let done = advance(
            partial,
            &[Piece {
                commit_lsn: 500,
                rows: vec![row(30)],
                end_lsn: Some(510),
            }],
        );
        assert_eq!(
            done,
            ResumePoint {
                last_lsn: 510,
                partial: None
            }
        );
        // Never backwards.
        let again = advance(
            done,
            &[Piece {
                commit_lsn: 1,
                rows: vec![],
                end_lsn: Some(2),
            }],
        );
        assert_eq!(again.last_lsn, 510);
    }
}
