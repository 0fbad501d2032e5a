//! Verification of the audit trail (`bemi verify`): recomputes every chain of `changes` from its
//! stored content ([`crate::chain`]), checks each checkpoint's signature with the public key
//! and that the chain still has the hash it signed ([`crate::checkpoint`]), and names the first
//! break of each chain precisely: a changed change (and which field), deleted changes (the
//! gap), an inserted change, a reordering, or a chain recomputed without the key (its
//! checkpoints no longer match). Changes stored before the chain existed are reported as an
//! unchained range, not as a break.
//!
//! ```no_run
//! use bemi_audit::verify::{Verifier, verify};
//!
//! # async fn run(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
//! let public = "bemi-ed25519-public:…".parse().ok();
//! let report = Verifier::new().public_key(public).run(conn).await?;
//! for problem in &report.breaks {
//!     eprintln!("{problem}");
//! }
//! assert!(report.is_intact() || !report.breaks.is_empty());
//! # let _ = verify;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt as _;
use sqlx::PgConnection;

use crate::chain::{self, FIELD_DIGEST_BYTES, FIELD_NAMES, LinkFields};
use crate::checkpoint::{Checkpoint, PublicKey};

/// How many changes after a break are looked at to tell a reordering from a change.
const LOOK_AHEAD: usize = 64;

/// The chained changes, chain by chain, in chain order, with what the hash covers.
const ROWS_SQL: &str = r#"
SELECT chain, chain_seq, chain_hash, chain_fields, id::text, primary_key, before::text,
       after::text, context::text, database, schema, "table", operation, committed_at,
       queued_at, transaction_id, position, source
  FROM changes WHERE chain IS NOT NULL
 ORDER BY chain, chain_seq, id
"#;

/// Unchained changes: before the chain of their database began (the range stored before the
/// feature: counted), or after it (a break: no writer stores unchained changes among chained
/// ones; the first 100 are named).
const UNCHAINED_SQL: &str = r#"
WITH first AS (
  SELECT database, source, min(committed_at) AS began FROM changes
   WHERE chain IS NOT NULL GROUP BY database, source),
unchained AS (
  SELECT c.id, c.committed_at,
         first.began IS NOT NULL AND c.committed_at > first.began AS after_chain
    FROM changes c LEFT JOIN first ON first.database = c.database AND first.source = c.source
   WHERE c.chain IS NULL)
(SELECT NULL::text, count(*), min(committed_at), max(committed_at)
   FROM unchained WHERE NOT after_chain)
UNION ALL
(SELECT id::text, 1, committed_at, committed_at FROM unchained WHERE after_chain
  ORDER BY committed_at LIMIT 100)
"#;

/// One way the trail was found altered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Break {
    /// A stored change's content no longer hashes to its link.
    Changed {
        /// The chain.
        chain: String,
        /// Its number.
        seq: i64,
        /// The change.
        id: String,
        /// The fields whose content differs from what was hashed (empty: the stored hash or
        /// field digests themselves were rewritten).
        fields: Vec<&'static str>,
    },
    /// Changes are missing.
    Deleted {
        /// The chain.
        chain: String,
        /// The first missing number.
        from_seq: i64,
        /// The last missing number.
        to_seq: i64,
        /// The change before the gap, if any.
        after: Option<String>,
        /// The change after the gap, if any (none: the chain's end was deleted).
        before: Option<String>,
    },
    /// A change that no writer stored.
    Inserted {
        /// The chain (`None`: a change without a chain among chained ones).
        chain: Option<String>,
        /// The number it claims.
        seq: Option<i64>,
        /// The change.
        id: String,
    },
    /// A change stored at another place of the chain than the one it was hashed at.
    Reordered {
        /// The chain.
        chain: String,
        /// The change.
        id: String,
        /// Where it is now.
        found_at: i64,
        /// Where it was hashed.
        belongs_at: i64,
    },
    /// A checkpoint that does not hold: a bad or missing signature, or a chain that no longer
    /// has the signed hash at the signed number (recomputed without the key).
    Checkpoint {
        /// The chain.
        chain: String,
        /// The number it signed.
        seq: i64,
        /// When it was signed.
        signed_at: DateTime<Utc>,
        /// What is wrong.
        problem: String,
    },
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Break::Changed {
                chain,
                seq,
                id,
                fields,
            } if fields.is_empty() => write!(
                f,
                "chain {chain} seq {seq}: change {id} was altered: its content matches its field \
                 digests but not its chain_hash (the hash or digests were rewritten)"
            ),
            Break::Changed {
                chain,
                seq,
                id,
                fields,
            } => write!(
                f,
                "chain {chain} seq {seq}: change {id} was altered: field{} {} changed since it \
                 was stored",
                if fields.len() == 1 { "" } else { "s" },
                fields.join(", ")
            ),
            Break::Deleted {
                chain,
                from_seq,
                to_seq,
                after,
                before,
            } => {
                let count = to_seq - from_seq + 1;
                write!(
                    f,
                    "chain {chain}: {count} change{} deleted (seq {from_seq}",
                    if count == 1 { "" } else { "s" }
                )?;
                if to_seq != from_seq {
                    write!(f, "..{to_seq}")?;
                }
                write!(f, ")")?;
                match (after, before) {
                    (Some(a), Some(b)) => write!(f, " between change {a} and change {b}"),
                    (Some(a), None) => write!(f, " after change {a}, the last one stored"),
                    (None, Some(b)) => write!(f, " before change {b}, the first one stored"),
                    (None, None) => Ok(()),
                }
            }
            Break::Inserted {
                chain: Some(chain),
                seq: Some(seq),
                id,
            } => write!(
                f,
                "chain {chain} seq {seq}: change {id} was inserted: another change holds this \
                 number and verifies"
            ),
            Break::Inserted { id, .. } => write!(
                f,
                "change {id} was inserted: it has no chain, yet was committed after its \
                 database's chain began"
            ),
            Break::Reordered {
                chain,
                id,
                found_at,
                belongs_at,
            } => write!(
                f,
                "chain {chain}: changes were reordered: change {id} is at seq {found_at} but \
                 was stored at seq {belongs_at}"
            ),
            Break::Checkpoint {
                chain,
                seq,
                signed_at,
                problem,
            } => write!(
                f,
                "chain {chain}: the checkpoint of seq {seq} signed at {} fails: {problem}",
                signed_at.to_rfc3339()
            ),
        }
    }
}

/// What a chain looked like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainSummary {
    /// The chain's name.
    pub chain: String,
    /// Changes checked.
    pub changes: u64,
    /// The first and last number seen.
    pub first_seq: Option<i64>,
    /// The last number seen.
    pub last_seq: Option<i64>,
    /// The prune boundary it was verified from (changes up to it were pruned).
    pub pruned_through: Option<i64>,
    /// The newest checkpoint that verified (signature and hash): its number and time.
    pub last_verified_checkpoint: Option<(i64, DateTime<Utc>)>,
    /// Changes after the newest verified checkpoint: protected by the chain only (anyone may
    /// recompute it without the key).
    pub unsigned_tail: u64,
}

/// What [`Verifier::run`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verification {
    /// Each chain.
    pub chains: Vec<ChainSummary>,
    /// The breaks found, the first of each chain (and each failed checkpoint).
    pub breaks: Vec<Break>,
    /// Changes stored before their database's chain began.
    pub unchained: u64,
    /// Their commit times.
    pub unchained_range: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Checkpoints whose signature was checked and held.
    pub checkpoints_verified: u64,
    /// Whether signatures were checked (a public key was given).
    pub signatures_checked: bool,
}

impl Verification {
    /// Whether nothing was found altered.
    #[must_use]
    pub fn is_intact(&self) -> bool {
        self.breaks.is_empty()
    }
}

/// Verifies `changes` (see the [module docs](self)).
///
/// ```
/// let verifier = bemi_audit::verify::Verifier::new().checkpoint_file(Some("checkpoints.jsonl".into()));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    public_key: Option<PublicKey>,
    checkpoint_file: Option<PathBuf>,
}

/// [`Verifier::new`]`.run(conn)`: the chains and unsigned checkpoints only.
pub async fn verify(conn: &mut PgConnection) -> Result<Verification, sqlx::Error> {
    Verifier::new().run(conn).await
}

/// A stored change as the chain reads it.
#[derive(Debug, Clone)]
struct Row {
    chain: String,
    chain_seq: Option<i64>,
    chain_hash: Option<Vec<u8>>,
    chain_fields: Option<Vec<u8>>,
    id: String,
    primary_key: Option<String>,
    before: String,
    after: String,
    context: String,
    database: String,
    schema: String,
    table: String,
    operation: String,
    committed_at: DateTime<Utc>,
    queued_at: DateTime<Utc>,
    transaction_id: i64,
    position: i64,
    source: String,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Row {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row as _;
        Ok(Self {
            chain: row.try_get("chain")?,
            chain_seq: row.try_get("chain_seq")?,
            chain_hash: row.try_get("chain_hash")?,
            chain_fields: row.try_get("chain_fields")?,
            id: row.try_get("id")?,
            primary_key: row.try_get("primary_key")?,
            before: row.try_get("before")?,
            after: row.try_get("after")?,
            context: row.try_get("context")?,
            database: row.try_get("database")?,
            schema: row.try_get("schema")?,
            table: row.try_get("table")?,
            operation: row.try_get("operation")?,
            committed_at: row.try_get("committed_at")?,
            queued_at: row.try_get("queued_at")?,
            transaction_id: row.try_get("transaction_id")?,
            position: row.try_get("position")?,
            source: row.try_get("source")?,
        })
    }
}

impl Row {
    fn fields(&self) -> LinkFields<'_> {
        LinkFields {
            id: &self.id,
            primary_key: self.primary_key.as_deref(),
            before: &self.before,
            after: &self.after,
            context: &self.context,
            database: &self.database,
            schema: &self.schema,
            table: &self.table,
            operation: &self.operation,
            committed_at: self.committed_at.timestamp_micros(),
            queued_at: self.queued_at.timestamp_micros(),
            transaction_id: self.transaction_id,
            position: self.position,
            source: &self.source,
        }
    }

    fn seq(&self) -> i64 {
        self.chain_seq.unwrap_or(0)
    }

    fn hash_is(&self, hash: &[u8; 32]) -> bool {
        self.chain_hash.as_deref() == Some(&hash[..])
    }
}

/// One chain being walked.
struct Walk {
    chain: String,
    summary: ChainSummary,
    prev: [u8; 32],
    expected: i64,
    last_id: Option<String>,
    /// The hash at each number a checkpoint signed.
    at_checkpoints: HashMap<i64, [u8; 32]>,
    wanted: Vec<i64>,
    broken: bool,
}

impl Verifier {
    /// Checks the chains; checkpoints' signatures only once [`public_key`](Self::public_key)
    /// is given.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The key that checks checkpoint signatures.
    #[must_use]
    pub fn public_key(mut self, key: Option<PublicKey>) -> Self {
        self.public_key = key;
        self
    }

    /// Also checks the checkpoints of this file (appended by the worker; the database's owner
    /// cannot remove them from it).
    #[must_use]
    pub fn checkpoint_file(mut self, file: Option<PathBuf>) -> Self {
        self.checkpoint_file = file;
        self
    }

    /// Verifies the trail of `conn`'s database.
    pub async fn run(&self, conn: &mut PgConnection) -> Result<Verification, sqlx::Error> {
        let mut report = Verification {
            signatures_checked: self.public_key.is_some(),
            ..Verification::default()
        };
        let mut checkpoints = Checkpoint::load_all(conn).await?;
        if let Some(path) = &self.checkpoint_file {
            let from_file = crate::checkpoint::read_file(path).map_err(|error| {
                sqlx::Error::Protocol(format!(
                    "could not read the checkpoint file {}: {error}",
                    path.display()
                ))
            })?;
            for checkpoint in from_file {
                if !checkpoints.contains(&checkpoint) {
                    checkpoints.push(checkpoint);
                }
            }
        }
        let mut by_chain: BTreeMap<String, Vec<Checkpoint>> = BTreeMap::new();
        for checkpoint in checkpoints {
            by_chain
                .entry(checkpoint.chain.clone())
                .or_default()
                .push(checkpoint);
        }
        for list in by_chain.values_mut() {
            list.sort_by_key(|c| (c.seq, c.signed_at));
        }
        // Signatures first: a checkpoint that fails is no anchor.
        let mut trusted: BTreeMap<String, Vec<Checkpoint>> = BTreeMap::new();
        for (name, list) in &by_chain {
            for checkpoint in list {
                match &self.public_key {
                    Some(key) => match checkpoint.verify(key) {
                        Ok(()) => {
                            report.checkpoints_verified += 1;
                            trusted
                                .entry(name.clone())
                                .or_default()
                                .push(checkpoint.clone());
                        }
                        Err(error) => report.breaks.push(Break::Checkpoint {
                            chain: name.clone(),
                            seq: checkpoint.seq,
                            signed_at: checkpoint.signed_at,
                            problem: format!(
                                "{error} (a checkpoint rewritten or added without the key)"
                            ),
                        }),
                    },
                    None => trusted
                        .entry(name.clone())
                        .or_default()
                        .push(checkpoint.clone()),
                }
            }
        }

        let mut walk: Option<Walk> = None;
        let mut rows = sqlx::query_as::<_, Row>(ROWS_SQL).fetch(&mut *conn);
        let mut pending: Vec<Row> = Vec::new();
        let mut finished: Vec<Walk> = Vec::new();
        loop {
            let row = match pending.pop() {
                Some(row) => Some(row),
                None => rows.try_next().await?,
            };
            let Some(row) = row else { break };
            if walk.as_ref().is_none_or(|w| w.chain != row.chain) {
                if let Some(done) = walk.take() {
                    finished.push(done);
                }
                walk = Some(Walk::start(&row.chain, trusted.get(&row.chain)));
            }
            let w = walk.as_mut().expect("a chain being walked");
            if w.broken {
                w.summary.changes += 1;
                continue;
            }
            let mut ahead = Vec::new();
            let problem = w.step(&row);
            let problem = match problem {
                Step::Ok => None,
                Step::Break(b) => Some(b),
                Step::NeedsLookAhead => {
                    while ahead.len() < LOOK_AHEAD {
                        match rows.try_next().await? {
                            Some(next) if next.chain == row.chain => ahead.push(next),
                            Some(next) => {
                                pending.push(next);
                                break;
                            }
                            None => break,
                        }
                    }
                    Some(w.classify(&row, &ahead))
                }
            };
            if let Some(problem) = problem {
                w.broken = true;
                report.breaks.push(problem);
            }
            w.summary.changes += ahead.len() as u64;
        }
        drop(rows);
        if let Some(done) = walk.take() {
            finished.push(done);
        }
        for mut w in finished {
            let list = trusted.remove(&w.chain).unwrap_or_default();
            report
                .breaks
                .extend(w.finish(&list, self.public_key.is_some()));
            report.chains.push(w.summary);
        }
        // Chains with checkpoints and no changes at all: everything after the boundary gone.
        for (name, list) in trusted {
            let mut w = Walk::start(&name, Some(&list));
            report
                .breaks
                .extend(w.finish(&list, self.public_key.is_some()));
            report.chains.push(w.summary);
        }

        type Unchained = (
            Option<String>,
            i64,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
        );
        let unchained: Vec<Unchained> = sqlx::query_as(UNCHAINED_SQL).fetch_all(&mut *conn).await?;
        for (id, count, from, to) in unchained {
            match id {
                Some(id) => report.breaks.push(Break::Inserted {
                    chain: None,
                    seq: None,
                    id,
                }),
                None => {
                    report.unchained = u64::try_from(count).unwrap_or(0);
                    report.unchained_range = from.zip(to);
                }
            }
        }
        Ok(report)
    }
}

enum Step {
    Ok,
    Break(Break),
    NeedsLookAhead,
}

impl Walk {
    fn start(chain: &str, checkpoints: Option<&Vec<Checkpoint>>) -> Self {
        let checkpoints = checkpoints.map(Vec::as_slice).unwrap_or_default();
        let anchor = checkpoints
            .iter()
            .filter(|c| c.reason == "prune")
            .max_by_key(|c| c.seq);
        let (prev, expected, pruned_through) = match anchor {
            Some(c) => (
                crate::checkpoint::unhex_hash(&c.head_hash).unwrap_or([0xff; 32]),
                c.seq + 1,
                Some(c.seq),
            ),
            None => ([0; 32], 1, None),
        };
        Self {
            chain: chain.to_owned(),
            summary: ChainSummary {
                chain: chain.to_owned(),
                pruned_through,
                ..ChainSummary::default()
            },
            prev,
            expected,
            last_id: None,
            at_checkpoints: HashMap::new(),
            wanted: checkpoints.iter().map(|c| c.seq).collect(),
            broken: false,
        }
    }

    fn step(&mut self, row: &Row) -> Step {
        let seq = row.seq();
        if self
            .summary
            .pruned_through
            .is_some_and(|through| seq <= through)
        {
            // Kept below the prune boundary (committed just before it, numbered just after).
            return Step::Ok;
        }
        self.summary.changes += 1;
        if seq < self.expected {
            return Step::Break(Break::Inserted {
                chain: Some(self.chain.clone()),
                seq: Some(seq),
                id: row.id.clone(),
            });
        }
        if seq > self.expected {
            return Step::Break(Break::Deleted {
                chain: self.chain.clone(),
                from_seq: self.expected,
                to_seq: seq - 1,
                after: self.last_id.clone(),
                before: Some(row.id.clone()),
            });
        }
        let hash = chain::link_hash(&self.prev, &self.chain, seq, &row.fields());
        if !row.hash_is(&hash) {
            return Step::NeedsLookAhead;
        }
        self.accept(row, hash);
        Step::Ok
    }

    fn accept(&mut self, row: &Row, hash: [u8; 32]) {
        let seq = row.seq();
        self.summary.first_seq.get_or_insert(seq);
        self.summary.last_seq = Some(seq);
        if self.wanted.contains(&seq) {
            self.at_checkpoints.insert(seq, hash);
        }
        self.prev = hash;
        self.expected = seq + 1;
        self.last_id = Some(row.id.clone());
    }

    /// The change at the expected number does not verify: an inserted one (another holds the
    /// number and verifies), a reordering (a later one verifies here), or a changed one.
    fn classify(&mut self, row: &Row, ahead: &[Row]) -> Break {
        let seq = self.expected;
        for other in ahead {
            let here = chain::link_hash(&self.prev, &self.chain, seq, &other.fields());
            if other.seq() == seq && other.hash_is(&here) {
                return Break::Inserted {
                    chain: Some(self.chain.clone()),
                    seq: Some(seq),
                    id: row.id.clone(),
                };
            }
            if other.seq() != seq && (other.hash_is(&here) || row.hash_is(&here)) {
                return Break::Reordered {
                    chain: self.chain.clone(),
                    id: other.id.clone(),
                    found_at: other.seq(),
                    belongs_at: seq,
                };
            }
        }
        let digests = row.fields().digests();
        let stored = row.chain_fields.clone().unwrap_or_default();
        let fields = FIELD_NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let range = i * FIELD_DIGEST_BYTES..(i + 1) * FIELD_DIGEST_BYTES;
                digests.get(range.clone()) != stored.get(range)
            })
            .map(|(_, name)| *name)
            .collect();
        Break::Changed {
            chain: self.chain.clone(),
            seq,
            id: row.id.clone(),
            fields,
        }
    }

    /// The checkpoints against the walked chain.
    fn finish(&mut self, checkpoints: &[Checkpoint], signed: bool) -> Vec<Break> {
        let mut breaks = Vec::new();
        let last = self.summary.last_seq.unwrap_or(self.expected - 1);
        let mut summary_last = None;
        let mut holding: Option<&Checkpoint> = None;
        for checkpoint in checkpoints {
            if self
                .summary
                .pruned_through
                .is_some_and(|through| checkpoint.seq <= through)
            {
                continue;
            }
            let problem = if checkpoint.seq > last && !self.broken {
                Some(format!(
                    "the chain ends at seq {last}: changes {}..{} were deleted",
                    last + 1,
                    checkpoint.seq
                ))
            } else if let Some(hash) = self.at_checkpoints.get(&checkpoint.seq) {
                (chain::hex(hash) != checkpoint.head_hash).then(|| {
                    format!(
                        "the chain no longer has the signed hash at seq {}: changes up to it \
                         were altered and the chain recomputed without the key{}",
                        checkpoint.seq,
                        summary_last
                            .map(|s: i64| format!(
                                " (after seq {s}, the last checkpoint that holds)"
                            ))
                            .unwrap_or_default()
                    )
                })
            } else {
                // Beyond a break: not checked.
                None
            };
            match problem {
                Some(problem) => breaks.push(Break::Checkpoint {
                    chain: self.chain.clone(),
                    seq: checkpoint.seq,
                    signed_at: checkpoint.signed_at,
                    problem,
                }),
                None if self.at_checkpoints.contains_key(&checkpoint.seq) => {
                    summary_last = Some(checkpoint.seq);
                    holding = Some(checkpoint);
                }
                None => {}
            }
        }
        if signed && let Some(checkpoint) = holding {
            self.summary.last_verified_checkpoint = Some((checkpoint.seq, checkpoint.signed_at));
        }
        let covered = self
            .summary
            .last_verified_checkpoint
            .map(|(seq, _)| seq)
            .or(self.summary.pruned_through)
            .unwrap_or(0);
        self.summary.unsigned_tail = u64::try_from(last - covered).unwrap_or(0);
        breaks
    }
}
