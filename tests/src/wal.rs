//! Reading the WAL back through a `test_decoding` logical replication slot.

use anyhow::Context as _;
use sqlx::PgPool;

/// A `test_decoding` slot on a test database; [`WalSlot::read`] consumes what it decoded.
#[derive(Debug)]
pub struct WalSlot {
    name: String,
    pool: PgPool,
}

/// One line of `test_decoding` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalEntry {
    /// `BEGIN`
    Begin,
    /// `COMMIT`
    Commit,
    /// A logical-decoding message.
    Message {
        /// Emitted with `transactional = true`.
        transactional: bool,
        /// Its prefix, e.g. `_bemi`.
        prefix: String,
        /// Its content.
        content: String,
    },
    /// A row change (or a TRUNCATE).
    Change {
        /// `schema.table`
        table: String,
        /// `INSERT`, `UPDATE`, `DELETE` or `TRUNCATE`
        operation: String,
        /// The column data as test_decoding prints it.
        data: String,
    },
}

impl WalSlot {
    /// Creates a slot named after the database. Changes made from now on are read back.
    pub async fn create(pool: &PgPool, database: &str) -> anyhow::Result<Self> {
        let name = format!("wal_{database}");
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')")
            .bind(&name)
            .execute(pool)
            .await
            .context("creating a test_decoding slot")?;
        Ok(Self {
            name,
            pool: pool.clone(),
        })
    }

    /// Consumes and parses everything decoded since the last read (committed transactions
    /// only), leaving out transactions without rows or messages (e.g. DDL).
    pub async fn read(&self) -> anyhow::Result<Vec<WalEntry>> {
        // Not test_decoding's skip-empty-xacts: with it, a message is printed before its BEGIN.
        let lines: Vec<String> = sqlx::query_scalar(
            "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL, 'include-xids', '0')",
        )
        .bind(&self.name)
        .fetch_all(&self.pool)
        .await?;
        let mut entries = Vec::with_capacity(lines.len());
        for line in &lines {
            let entry = parse(line)?;
            if entry == WalEntry::Commit && entries.last() == Some(&WalEntry::Begin) {
                entries.pop();
            } else {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// [`WalSlot::read`], grouped by transaction ([`transactions`]).
    pub async fn read_transactions(&self) -> anyhow::Result<Vec<Txn>> {
        transactions(&self.read().await?)
    }

    /// Drops the slot.
    pub async fn drop_slot(self) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(&self.name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// The contents of the `_bemi` messages among `entries`, in order.
pub fn bemi_messages(entries: &[WalEntry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|entry| match entry {
            WalEntry::Message {
                prefix, content, ..
            } if prefix == "_bemi" => Some(content.clone()),
            _ => None,
        })
        .collect()
}

/// The `_bemi` messages among `entries`, decoded as JSON.
pub fn bemi_contexts(entries: &[WalEntry]) -> anyhow::Result<Vec<serde_json::Value>> {
    bemi_messages(entries)
        .iter()
        .map(|text| serde_json::from_str(text).with_context(|| format!("message {text:?}")))
        .collect()
}

/// The row changes among `entries`.
pub fn changes(entries: &[WalEntry]) -> Vec<&WalEntry> {
    entries
        .iter()
        .filter(|entry| matches!(entry, WalEntry::Change { .. }))
        .collect()
}

/// Each `todo` row change among `entries`, as its task and the context it takes by the
/// stitching rule: the latest `_bemi` message before it in its transaction, decoded (`None`
/// before any).
///
/// # Errors
///
/// When a message is not JSON or a change has no task.
pub fn stitched_tasks(
    entries: &[WalEntry],
) -> anyhow::Result<Vec<(String, Option<serde_json::Value>)>> {
    let mut rows = Vec::new();
    let mut current = None;
    for entry in entries {
        match entry {
            WalEntry::Begin | WalEntry::Commit => current = None,
            WalEntry::Message {
                prefix, content, ..
            } if prefix == "_bemi" => {
                current = Some(serde_json::from_str(content).with_context(|| content.clone())?);
            }
            WalEntry::Message { .. } => {}
            WalEntry::Change { data, .. } => rows.push((todo_task(data)?, current.clone())),
        }
    }
    Ok(rows)
}

/// [`stitched_tasks`] with each context as a test compares it: without the library's `SQL` key,
/// `{}` where there is none.
///
/// # Errors
///
/// As [`stitched_tasks`].
pub fn stitched_contexts(entries: &[WalEntry]) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    Ok(stitched_tasks(entries)?
        .into_iter()
        .map(|(task, context)| {
            let mut context = context.unwrap_or_else(|| serde_json::json!({}));
            if let Some(map) = context.as_object_mut() {
                map.remove("SQL");
            }
            (task, context)
        })
        .collect())
}

/// The `task` column of a `test_decoding` row of `todo`.
///
/// ```
/// let task = bemi_tests::wal::todo_task("table public.todo: INSERT: id[bigint]:1 task[text]:'it''s' is_completed[boolean]:false");
/// assert_eq!(task.unwrap(), "it's");
/// ```
///
/// # Errors
///
/// When `data` holds no (terminated) task.
pub fn todo_task(data: &str) -> anyhow::Result<String> {
    let (_, rest) = data
        .split_once("task[text]:'")
        .with_context(|| format!("no task in {data}"))?;
    // test_decoding doubles quotes inside text values.
    let mut task = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                task.push('\'');
            } else {
                return Ok(task);
            }
        } else {
            task.push(c);
        }
    }
    anyhow::bail!("unterminated task in {data}")
}

/// One committed transaction of the WAL: its `_bemi` messages (decoded) and its row changes,
/// in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Txn {
    /// The decoded `_bemi` messages.
    pub messages: Vec<serde_json::Value>,
    /// The rows: (`INSERT` | `UPDATE` | `DELETE` | `TRUNCATE`, test_decoding's data).
    pub rows: Vec<(String, String)>,
}

/// `entries` grouped by transaction. Every message and row must be inside BEGIN … COMMIT;
/// messages with other prefixes are left out.
///
/// ```
/// use bemi_tests::wal::{Txn, WalEntry, transactions};
///
/// let entries = [
///     WalEntry::Begin,
///     WalEntry::Message {
///         transactional: true,
///         prefix: "_bemi".into(),
///         content: r#"{"user_id":1}"#.into(),
///     },
///     WalEntry::Change {
///         table: "public.todo".into(),
///         operation: "INSERT".into(),
///         data: "id[bigint]:1".into(),
///     },
///     WalEntry::Commit,
/// ];
/// let txns = transactions(&entries).unwrap();
/// assert_eq!(
///     txns,
///     [Txn {
///         messages: vec![serde_json::json!({"user_id": 1})],
///         rows: vec![("INSERT".into(), "id[bigint]:1".into())],
///     }]
/// );
/// ```
pub fn transactions(entries: &[WalEntry]) -> anyhow::Result<Vec<Txn>> {
    let mut txns = Vec::new();
    let mut open: Option<Txn> = None;
    for entry in entries {
        match entry {
            WalEntry::Begin => {
                anyhow::ensure!(open.is_none(), "BEGIN inside a transaction");
                open = Some(Txn::default());
            }
            WalEntry::Commit => txns.push(open.take().context("COMMIT without BEGIN")?),
            WalEntry::Message {
                prefix, content, ..
            } if prefix == "_bemi" => open
                .as_mut()
                .context("message outside a transaction")?
                .messages
                .push(serde_json::from_str(content).with_context(|| content.clone())?),
            WalEntry::Message { .. } => {}
            WalEntry::Change {
                operation, data, ..
            } => open
                .as_mut()
                .context("row outside a transaction")?
                .rows
                .push((operation.clone(), data.clone())),
        }
    }
    anyhow::ensure!(open.is_none(), "unterminated transaction");
    Ok(txns)
}

fn parse(line: &str) -> anyhow::Result<WalEntry> {
    if line == "BEGIN" {
        return Ok(WalEntry::Begin);
    }
    if line == "COMMIT" {
        return Ok(WalEntry::Commit);
    }
    if let Some(rest) = line.strip_prefix("message: transactional: ") {
        // "message: transactional: 1 prefix: _bemi, sz: 12 content:{...}"
        let (flag, rest) = rest.split_once(" prefix: ").context("message prefix")?;
        let (prefix, rest) = rest.split_once(", sz: ").context("message size")?;
        let (_, content) = rest.split_once(" content:").context("message content")?;
        return Ok(WalEntry::Message {
            transactional: flag == "1",
            prefix: prefix.to_owned(),
            content: content.to_owned(),
        });
    }
    if let Some(rest) = line.strip_prefix("table ") {
        // "table public.t: INSERT: id[integer]:1"
        let (table, rest) = rest.split_once(": ").context("table name")?;
        let (operation, data) = rest.split_once(':').context("operation")?;
        return Ok(WalEntry::Change {
            table: table.to_owned(),
            operation: operation.to_owned(),
            data: data.trim().to_owned(),
        });
    }
    anyhow::bail!("unexpected test_decoding line: {line}")
}
