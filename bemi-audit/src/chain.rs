//! The hash chain over `changes`: each stored change carries a SHA-256 hash over the hash of
//! the change before it in its chain and its own content, so that altering, deleting,
//! inserting or reordering a stored change breaks the chain ([`crate::verify`] finds where).
//!
//! A **chain** is one ordered stream of changes: a source database as one capture worker
//! stores it (named `SOURCE/DATABASE`, see [`worker_chain`]), or a partition of a NATS stream
//! as `bemi store` stores it (`nats:STREAM/PARTITION`, see [`stream_chain`]). Its changes are
//! numbered `1, 2, …` in the order the writer stored them (`chain_seq`), and the chain's head
//! (the last number and hash) is kept in `_bemi_chain_heads`, in the writer's transaction.
//!
//! **Canonical bytes.** The hash covers every column a reader relies on, each length-prefixed:
//! the chain's name and the number, `id`, `primary_key`, `before`, `after` and `context` as
//! PostgreSQL prints the stored `jsonb` (`jsonb::text` is deterministic: the verifier reads it
//! back that way; the writer computes it with [`crate::jsonb_text`] and the insert has the
//! server check that the stored values print so, else asks the server for it — so no JSON
//! canonicalisation of our own can make a chain that does not verify), `database`, `schema`,
//! `table`, `operation`, `committed_at` and `queued_at` (µs since the epoch), `transaction_id`,
//! `position` and `source`. Beside the hash, each change keeps `chain_fields`: four bytes of each field's own
//! hash, which only serve to *name* the field that was altered.
//!
//! ```
//! use bemi_audit::chain::{ChainHead, LinkFields};
//!
//! let fields = LinkFields {
//!     id: "9b2e6a4e-3c1f-4c7e-9d64-0d4f8f2b7a11",
//!     primary_key: Some("26"),
//!     before: "{}",
//!     after: r#"{"id": 26, "task": "Sleep"}"#,
//!     context: "{}",
//!     database: "app",
//!     schema: "public",
//!     table: "todo",
//!     operation: "CREATE",
//!     committed_at: 1_702_314_549_000_000,
//!     queued_at: 1_702_314_549_100_000,
//!     transaction_id: 768,
//!     position: 30_606_328,
//!     source: "",
//! };
//! let head = ChainHead::genesis();
//! let (first, digests) = head.link("/app", &fields);
//! assert_eq!(first.seq, 1);
//! assert_ne!(first.hash, head.hash);
//! // The same content after the same head always hashes the same.
//! assert_eq!(head.link("/app", &fields).0, first);
//! assert_eq!(digests.len(), 4 * bemi_audit::chain::FIELD_NAMES.len());
//! ```

use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;

/// Prefix of every hashed link: the version of the canonical form.
const DOMAIN: &[u8] = b"bemi-chain-v1";

/// Bytes of each field's digest in `chain_fields`.
pub const FIELD_DIGEST_BYTES: usize = 4;

/// The fields a link covers, in hashing order (the names `bemi verify` reports).
pub const FIELD_NAMES: [&str; 14] = [
    "id",
    "primary_key",
    "before",
    "after",
    "context",
    "database",
    "schema",
    "table",
    "operation",
    "committed_at",
    "queued_at",
    "transaction_id",
    "position",
    "source",
];

/// The head of the writers' chains and their checkpoints. Idempotent.
pub const TABLES_SQL: &str = "
CREATE TABLE IF NOT EXISTS _bemi_chain_heads (
  chain text PRIMARY KEY,
  seq bigint NOT NULL,
  hash bytea NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS _bemi_checkpoints (
  chain text NOT NULL,
  seq bigint NOT NULL,
  head_hash bytea NOT NULL,
  signed_at timestamptz NOT NULL,
  key_id text,
  signature bytea,
  reason text NOT NULL DEFAULT 'interval',
  PRIMARY KEY (chain, seq, signed_at)
);
";

/// The name of the chain a capture worker writes for the source `database` of the cluster
/// `source` (its system identifier).
///
/// ```
/// assert_eq!(bemi_audit::chain::worker_chain(Some("7716"), "app"), "7716/app");
/// assert_eq!(bemi_audit::chain::worker_chain(None, "app"), "/app");
/// ```
#[must_use]
pub fn worker_chain(source: Option<&str>, database: &str) -> String {
    format!("{}/{database}", source.unwrap_or(""))
}

/// The name of the chain `bemi store` writes for one partition of a NATS stream.
///
/// ```
/// assert_eq!(bemi_audit::chain::stream_chain("bemi", 3), "nats:bemi/3");
/// ```
#[must_use]
pub fn stream_chain(stream: &str, partition: u32) -> String {
    format!("nats:{stream}/{partition}")
}

/// The content of one change as the chain hashes it (see the [module docs](self)): the JSON
/// columns as `jsonb::text`, timestamps in µs since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFields<'a> {
    /// `id` as text (hyphenated, lower case).
    pub id: &'a str,
    /// `primary_key` (`None`: NULL).
    pub primary_key: Option<&'a str>,
    /// `before::text`.
    pub before: &'a str,
    /// `after::text`.
    pub after: &'a str,
    /// `context::text`.
    pub context: &'a str,
    /// `database`.
    pub database: &'a str,
    /// `schema`.
    pub schema: &'a str,
    /// `table`.
    pub table: &'a str,
    /// `operation`.
    pub operation: &'a str,
    /// `committed_at`, µs since the Unix epoch.
    pub committed_at: i64,
    /// `queued_at`, µs since the Unix epoch.
    pub queued_at: i64,
    /// `transaction_id`.
    pub transaction_id: i64,
    /// `position`.
    pub position: i64,
    /// `source` (`''` when unknown).
    pub source: &'a str,
}

/// One field's bytes as hashed: text as it is, numbers as 8 big-endian bytes, NULL as none.
#[derive(Clone, Copy)]
enum Part<'a> {
    Null,
    Text(&'a str),
    Number([u8; 8]),
}

impl Part<'_> {
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Part::Null => None,
            Part::Text(text) => Some(text.as_bytes()),
            Part::Number(bytes) => Some(bytes),
        }
    }
}

impl LinkFields<'_> {
    /// Each field's bytes, in [`FIELD_NAMES`] order (borrowed: hashing copies nothing).
    fn parts(&self) -> [Part<'_>; 14] {
        let number = |n: i64| Part::Number(n.to_be_bytes());
        [
            Part::Text(self.id),
            self.primary_key.map_or(Part::Null, Part::Text),
            Part::Text(self.before),
            Part::Text(self.after),
            Part::Text(self.context),
            Part::Text(self.database),
            Part::Text(self.schema),
            Part::Text(self.table),
            Part::Text(self.operation),
            number(self.committed_at),
            number(self.queued_at),
            number(self.transaction_id),
            number(self.position),
            Part::Text(self.source),
        ]
    }

    /// [`FIELD_DIGEST_BYTES`] of each field's SHA-256, in [`FIELD_NAMES`] order.
    #[must_use]
    pub fn digests(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIELD_NAMES.len() * FIELD_DIGEST_BYTES);
        for part in self.parts() {
            let mut hasher = Sha256::new();
            push_part(&mut hasher, part.bytes());
            out.extend_from_slice(&hasher.finalize()[..FIELD_DIGEST_BYTES]);
        }
        out
    }
}

fn push_part(hasher: &mut Sha256, part: Option<&[u8]>) {
    match part {
        None => hasher.update(u32::MAX.to_be_bytes()),
        Some(bytes) => {
            hasher.update(
                u32::try_from(bytes.len())
                    .unwrap_or(u32::MAX - 1)
                    .to_be_bytes(),
            );
            hasher.update(bytes);
        }
    }
}

/// The last link of a chain: its number (`0`: no change yet) and hash (all zeros before the
/// first change).
///
/// ```
/// let head = bemi_audit::chain::ChainHead::genesis();
/// assert_eq!((head.seq, head.hash), (0, [0; 32]));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHead {
    /// The number of the last change (`chain_seq`).
    pub seq: i64,
    /// Its `chain_hash`.
    pub hash: [u8; 32],
}

impl Default for ChainHead {
    fn default() -> Self {
        Self::genesis()
    }
}

impl ChainHead {
    /// The head of an empty chain.
    #[must_use]
    pub const fn genesis() -> Self {
        Self {
            seq: 0,
            hash: [0; 32],
        }
    }

    /// A head from a stored `seq` and hash (`None` when the hash is not 32 bytes).
    ///
    /// ```
    /// let head = bemi_audit::chain::ChainHead::from_parts(7, &[1; 32]).unwrap();
    /// assert_eq!(head.seq, 7);
    /// assert!(bemi_audit::chain::ChainHead::from_parts(7, &[1; 3]).is_none());
    /// ```
    #[must_use]
    pub fn from_parts(seq: i64, hash: &[u8]) -> Option<Self> {
        Some(Self {
            seq,
            hash: hash.try_into().ok()?,
        })
    }

    /// The link after this one for a change of `chain` with `fields`: the new head, and the
    /// change's field digests (`chain_fields`).
    #[must_use]
    pub fn link(&self, chain: &str, fields: &LinkFields<'_>) -> (Self, Vec<u8>) {
        let seq = self.seq + 1;
        (
            Self {
                seq,
                hash: link_hash(&self.hash, chain, seq, fields),
            },
            fields.digests(),
        )
    }
}

/// The hash of the change numbered `seq` in `chain`, after a change whose hash is `prev`.
#[must_use]
pub fn link_hash(prev: &[u8; 32], chain: &str, seq: i64, fields: &LinkFields<'_>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    hasher.update(prev);
    push_part(&mut hasher, Some(chain.as_bytes()));
    hasher.update(seq.to_be_bytes());
    for part in fields.parts() {
        push_part(&mut hasher, part.bytes());
    }
    hasher.finalize().into()
}

/// Lowercase hex of `bytes`.
///
/// ```
/// assert_eq!(bemi_audit::chain::hex(&[0, 255]), "00ff");
/// ```
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The recorded head of `chain` (its writer's last commit), or the genesis head.
///
/// ```no_run
/// # async fn run(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
/// let head = bemi_audit::chain::read_head(conn, "/app").await?;
/// # Ok(()) }
/// ```
pub async fn read_head(conn: &mut PgConnection, chain: &str) -> Result<ChainHead, sqlx::Error> {
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM _bemi_chain_heads WHERE chain = $1")
            .bind(chain)
            .fetch_optional(&mut *conn)
            .await?;
    match row {
        None => Ok(ChainHead::genesis()),
        Some((seq, hash)) => ChainHead::from_parts(seq, &hash).ok_or_else(|| {
            sqlx::Error::Protocol(format!(
                "_bemi_chain_heads holds a hash of {} bytes for the chain {chain:?}; run `bemi \
                 verify`",
                hash.len()
            ))
        }),
    }
}

/// Records `head` as the head of `chain`, if the recorded one is still `previous` (else
/// another writer extended the chain meanwhile: an error, and the caller's transaction must
/// roll back).
///
/// ```no_run
/// # async fn run(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
/// use bemi_audit::chain::{ChainHead, record_head};
/// record_head(conn, "/app", ChainHead::genesis(), ChainHead::genesis()).await?;
/// # Ok(()) }
/// ```
pub async fn record_head(
    conn: &mut PgConnection,
    chain: &str,
    previous: ChainHead,
    head: ChainHead,
) -> Result<(), sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO _bemi_chain_heads AS h (chain, seq, hash) VALUES ($1, $2, $3) \
         ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash, \
           updated_at = now() \
         WHERE h.seq = $4 AND h.hash = $5",
    )
    .bind(chain)
    .bind(head.seq)
    .bind(&head.hash[..])
    .bind(previous.seq)
    .bind(&previous.hash[..])
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if done == 1 {
        Ok(())
    } else {
        Err(sqlx::Error::Protocol(format!(
            "the chain {chain:?} was extended by another writer (its head is no longer {}); \
             this batch is rolled back and written again",
            previous.seq
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(after: &str) -> LinkFields<'_> {
        LinkFields {
            id: "x",
            primary_key: None,
            before: "{}",
            after,
            context: "{}",
            database: "app",
            schema: "public",
            table: "todo",
            operation: "CREATE",
            committed_at: 1,
            queued_at: 2,
            transaction_id: 3,
            position: 4,
            source: "",
        }
    }

    /// The canonical bytes are a format: stored chains must verify with every later version.
    /// Known answers, computed apart from this code (Python's hashlib over the bytes the
    /// module docs describe).
    #[test]
    fn the_link_hash_of_a_known_change_is_known() {
        let mut change = LinkFields {
            id: "9b2e6a4e-3c1f-4c7e-9d64-0d4f8f2b7a11",
            primary_key: Some("26"),
            before: "{}",
            after: r#"{"id": 26, "task": "Sleep"}"#,
            context: "{}",
            database: "app",
            schema: "public",
            table: "todo",
            operation: "CREATE",
            committed_at: 1_702_314_549_000_000,
            queued_at: 1_702_314_549_100_000,
            transaction_id: 768,
            position: 30_606_328,
            source: "",
        };
        let (head, digests) = ChainHead::genesis().link("/app", &change);
        assert_eq!(
            hex(&head.hash),
            "4981e8c16ec6227997421eb678093942e69a3cf784d11269fa236ed48c04b922"
        );
        assert_eq!(
            hex(&digests),
            "60eac7532c20e6a5fc1212e5ea897bb6fc1212e54809ceb320739cf26c1a3ced4111c63012dcd452\
             5d63b73fa4c03a13d603af3edf3f6198"
        );
        change.primary_key = None;
        assert_eq!(
            hex(&ChainHead::genesis().link("/app", &change).0.hash),
            "9523e86e996effb5e8108d81f753c5e9878425cc8b47221bd79f6a62b1fe5763"
        );
    }

    #[test]
    fn every_field_and_the_previous_hash_and_number_change_the_hash() {
        let head = ChainHead::genesis();
        let a = head.link("c", &fields("{}")).0;
        assert_ne!(a, head.link("c", &fields("{\"a\": 1}")).0);
        assert_ne!(a, head.link("d", &fields("{}")).0);
        let later = ChainHead { seq: 1, ..head };
        assert_ne!(a.hash, later.link("c", &fields("{}")).0.hash);
        let other = ChainHead {
            hash: [1; 32],
            ..head
        };
        assert_ne!(a.hash, other.link("c", &fields("{}")).0.hash);
        // NULL and the empty key differ; so do the boundaries between fields.
        let mut empty_key = fields("{}");
        empty_key.primary_key = Some("");
        assert_ne!(a, head.link("c", &empty_key).0);
        let mut shifted = fields("{}");
        shifted.schema = "publict";
        shifted.table = "odo";
        assert_ne!(a, head.link("c", &shifted).0);
    }

    #[test]
    fn field_digests_name_the_field_that_differs() {
        let a = fields("{}").digests();
        let b = fields("{\"a\": 1}").digests();
        let differing: Vec<&str> = a
            .chunks(FIELD_DIGEST_BYTES)
            .zip(b.chunks(FIELD_DIGEST_BYTES))
            .zip(FIELD_NAMES)
            .filter(|((x, y), _)| x != y)
            .map(|(_, name)| name)
            .collect();
        assert_eq!(differing, ["after"]);
    }
}
