//! The independent oracle: a plain row-level trigger (none of our code) that writes every row
//! change of a workload table, with the context the writer declared in the same transaction,
//! into `chaos_oracle`; and the two readers that the comparison needs.

use anyhow::Context as _;
use sqlx::{PgPool, Row as _};

use crate::compare::{RowChange, normalize, primary_key};

/// The oracle's table and trigger functions.
pub(crate) const INSTALL: &str = r"
CREATE TABLE chaos_oracle (
    id bigserial PRIMARY KEY,
    txid bigint NOT NULL DEFAULT txid_current(),
    tx_seq int NOT NULL,
    tbl text NOT NULL,
    op text NOT NULL,
    old_row jsonb,
    new_row jsonb,
    key_columns text[],
    context jsonb NOT NULL
);
CREATE FUNCTION chaos_oracle_seq() RETURNS int LANGUAGE sql AS $$
    SELECT set_config('bemi_chaos.seq',
        (coalesce(nullif(current_setting('bemi_chaos.seq', true), ''), '0')::int + 1)::text,
        true)::int
$$;
CREATE FUNCTION chaos_oracle_context() RETURNS jsonb LANGUAGE sql AS $$
    SELECT coalesce(nullif(current_setting('bemi_chaos.context', true), '')::jsonb, '{}'::jsonb)
$$;
CREATE FUNCTION chaos_oracle_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_oracle (tx_seq, tbl, op, old_row, new_row, key_columns, context)
    VALUES (chaos_oracle_seq(), TG_TABLE_NAME, TG_OP,
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
        ARRAY(SELECT a.attname::text
              FROM pg_index i
              CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = TG_RELID AND i.indisprimary
              ORDER BY k.n),
        chaos_oracle_context());
    RETURN NULL;
END $$;
CREATE FUNCTION chaos_oracle_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_oracle (tx_seq, tbl, op, context)
    VALUES (chaos_oracle_seq(), TG_TABLE_NAME, 'TRUNCATE', chaos_oracle_context());
    RETURN NULL;
END $$;
";

/// The triggers that feed the oracle from `table` (run again when a table is recreated).
pub(crate) fn attach(table: &str) -> String {
    format!(
        "CREATE TRIGGER chaos_oracle_row AFTER INSERT OR UPDATE OR DELETE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION chaos_oracle_row(); \
         CREATE TRIGGER chaos_oracle_truncate AFTER TRUNCATE ON {table} \
             FOR EACH STATEMENT EXECUTE FUNCTION chaos_oracle_truncate();"
    )
}

/// What the oracle saw committed, in the order it happened; with `skip_unchanged_updates` (the
/// worker's default), without the UPDATEs that left their row as it was.
pub(crate) async fn committed(
    source: &PgPool,
    skip_unchanged_updates: bool,
) -> anyhow::Result<Vec<RowChange>> {
    let rows = sqlx::query(
        "SELECT tbl, op, old_row::text AS old_row, new_row::text AS new_row, \
                coalesce(key_columns, '{}') AS key_columns, context::text AS context \
         FROM chaos_oracle \
         WHERE NOT ($1 AND op = 'UPDATE' AND old_row = new_row) ORDER BY id",
    )
    .bind(skip_unchanged_updates)
    .fetch_all(source)
    .await
    .context("reading chaos_oracle")?;
    rows.iter()
        .map(|row| {
            let op: String = row.try_get("op")?;
            let old: Option<String> = row.try_get("old_row")?;
            let new: Option<String> = row.try_get("new_row")?;
            let columns: Vec<String> = row.try_get("key_columns")?;
            let operation = match op.as_str() {
                "INSERT" => "CREATE",
                other => other,
            };
            // The key as of the change: of the new row, or of the deleted one.
            let image = if operation == "DELETE" { &old } else { &new };
            let key = match image {
                Some(text) if operation != "TRUNCATE" => {
                    primary_key(&serde_json::from_str(text)?, &columns)
                }
                _ => None,
            };
            Ok(RowChange {
                table: row.try_get("tbl")?,
                operation: operation.to_owned(),
                primary_key: key,
                before: old.as_deref().map_or_else(|| "{}".to_owned(), normalize),
                after: new.as_deref().map_or_else(|| "{}".to_owned(), normalize),
                context: normalize(row.try_get("context")?),
            })
        })
        .collect()
}

/// What `changes` holds for the workload's tables, in WAL order, the context without the
/// library's keys (`SQL`).
pub(crate) async fn captured(destination: &PgPool) -> anyhow::Result<Vec<RowChange>> {
    let rows = sqlx::query(
        "SELECT \"table\", operation, primary_key, before::text AS before, after::text AS after, \
                (coalesce(context, '{}'::jsonb) - 'SQL')::text AS context \
         FROM changes WHERE \"table\" LIKE 'chaos\\_%' AND \"table\" <> 'chaos_oracle' \
         ORDER BY position, id",
    )
    .fetch_all(destination)
    .await
    .context("reading changes")?;
    rows.iter()
        .map(|row| {
            Ok(RowChange {
                table: row.try_get("table")?,
                operation: row.try_get("operation")?,
                primary_key: row.try_get("primary_key")?,
                before: row
                    .try_get::<Option<&str>, _>("before")?
                    .map_or_else(|| "{}".to_owned(), normalize),
                after: row
                    .try_get::<Option<&str>, _>("after")?
                    .map_or_else(|| "{}".to_owned(), normalize),
                context: normalize(row.try_get("context")?),
            })
        })
        .collect()
}
