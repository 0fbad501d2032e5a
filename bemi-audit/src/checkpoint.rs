//! Signed checkpoints of the hash chain: every N changes or T seconds a writer (the capture
//! worker, `bemi store`) signs its chain's head with its own Ed25519 key and records it in
//! `_bemi_checkpoints` — and, optionally, appends it to a file the database's owner cannot
//! rewrite. `bemi prune` leaves one at its boundary. `bemi verify` checks each signature with the
//! public key and that the chain still has the signed hash at the signed number: a chain
//! recomputed by someone without the key no longer matches its checkpoints.
//!
//! Keys are text: `bemi-ed25519-secret:` or `bemi-ed25519-public:` and 64 hex digits
//! (`bemi keygen` writes a pair).
//!
//! ```
//! use bemi_audit::chain::ChainHead;
//! use bemi_audit::checkpoint::{Checkpoint, PublicKey, SigningKey};
//!
//! let (secret, public) = SigningKey::generate().unwrap().to_text_pair();
//! let key: SigningKey = secret.parse().unwrap();
//! let public: PublicKey = public.parse().unwrap();
//! let head = ChainHead { seq: 7, hash: [3; 32] };
//! let checkpoint = Checkpoint::sign(Some(&key), "/app", head, chrono::Utc::now(), "interval");
//! assert!(checkpoint.verify(&public).is_ok());
//! let mut forged = checkpoint.clone();
//! forged.seq = 8;
//! assert!(forged.verify(&public).is_err());
//! ```

use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;

use crate::chain::{ChainHead, hex};

const SECRET_PREFIX: &str = "bemi-ed25519-secret:";
const PUBLIC_PREFIX: &str = "bemi-ed25519-public:";
const DOMAIN: &[u8] = b"bemi-checkpoint-v1";

/// A key text that could not be read.
///
/// ```
/// let error = "nope".parse::<bemi_audit::checkpoint::PublicKey>().unwrap_err();
/// assert!(error.to_string().contains("bemi keygen"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}: a key is `{1}` and 64 hex digits, as `bemi keygen` writes it")]
pub struct KeyError(String, &'static str);

fn parse_key(text: &str, prefix: &'static str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let digits = text
        .strip_prefix(prefix)
        .ok_or_else(|| KeyError("the key does not start with its kind".into(), prefix))?;
    let bytes = unhex(digits).ok_or_else(|| KeyError("the key is not hex".into(), prefix))?;
    bytes
        .try_into()
        .map_err(|_| KeyError("the key is not 32 bytes".into(), prefix))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A 32-byte hash from its hex text.
pub(crate) fn unhex_hash(text: &str) -> Option<[u8; 32]> {
    unhex(text)?.try_into().ok()
}

/// A writer's secret key, which signs checkpoints.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public().key_id())
    }
}

impl FromStr for SigningKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&parse_key(
            text,
            SECRET_PREFIX,
        )?)))
    }
}

impl SigningKey {
    /// A new random key (from the operating system's generator).
    ///
    /// ```
    /// let key = bemi_audit::checkpoint::SigningKey::generate().unwrap();
    /// ```
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&bytes)))
    }

    /// Its public half.
    #[must_use]
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The secret and the public key as text.
    #[must_use]
    pub fn to_text_pair(&self) -> (String, String) {
        (
            format!("{SECRET_PREFIX}{}", hex(&self.0.to_bytes())),
            self.public().to_string(),
        )
    }
}

/// The public key that checks checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        ed25519_dalek::VerifyingKey::from_bytes(&parse_key(text, PUBLIC_PREFIX)?)
            .map(Self)
            .map_err(|_| KeyError("not an Ed25519 public key".into(), PUBLIC_PREFIX))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", hex(self.0.as_bytes()))
    }
}

impl PublicKey {
    /// A short name of the key, stored with each checkpoint: 16 hex digits of its SHA-256.
    #[must_use]
    pub fn key_id(&self) -> String {
        hex(&Sha256::digest(self.0.as_bytes())[..8])
    }
}

/// One checkpoint: a chain's head at an instant, signed (or not, without a key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The chain.
    pub chain: String,
    /// The number of the change it vouches for (and all before it).
    pub seq: i64,
    /// That change's `chain_hash`, hex.
    pub head_hash: String,
    /// When it was signed (µs precision).
    pub signed_at: DateTime<Utc>,
    /// The signing key's id ([`PublicKey::key_id`]); `None` when unsigned.
    pub key_id: Option<String>,
    /// The Ed25519 signature, hex; `None` when unsigned.
    pub signature: Option<String>,
    /// Why it was made: `interval`, `prune`, `shutdown`.
    pub reason: String,
}

/// Why a checkpoint does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// It carries no signature.
    #[error("the checkpoint is not signed")]
    Unsigned,
    /// It was signed by another key.
    #[error("the checkpoint was signed by the key {0}, not by the public key given")]
    OtherKey(String),
    /// The signature does not match its content.
    #[error("the checkpoint's signature does not match its content")]
    BadSignature,
}

fn signed_bytes(chain: &str, seq: i64, head_hash: &str, signed_at: DateTime<Utc>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(128);
    bytes.extend_from_slice(DOMAIN);
    bytes.extend_from_slice(&u32::try_from(chain.len()).unwrap_or(u32::MAX).to_be_bytes());
    bytes.extend_from_slice(chain.as_bytes());
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.extend_from_slice(&unhex(head_hash).unwrap_or_default());
    bytes.extend_from_slice(&signed_at.timestamp_micros().to_be_bytes());
    bytes
}

impl Checkpoint {
    /// A checkpoint of `head`, signed with `key` when there is one.
    #[must_use]
    pub fn sign(
        key: Option<&SigningKey>,
        chain: &str,
        head: ChainHead,
        now: DateTime<Utc>,
        reason: &str,
    ) -> Self {
        // Stored as a timestamptz: µs.
        let signed_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let head_hash = hex(&head.hash);
        let (key_id, signature) = match key {
            Some(key) => {
                let signature = key
                    .0
                    .sign(&signed_bytes(chain, head.seq, &head_hash, signed_at));
                (
                    Some(key.public().key_id()),
                    Some(hex(&signature.to_bytes())),
                )
            }
            None => (None, None),
        };
        Self {
            chain: chain.to_owned(),
            seq: head.seq,
            head_hash,
            signed_at,
            key_id,
            signature,
            reason: reason.to_owned(),
        }
    }

    /// Checks the signature with `key`.
    pub fn verify(&self, key: &PublicKey) -> Result<(), CheckpointError> {
        let (Some(key_id), Some(signature)) = (&self.key_id, &self.signature) else {
            return Err(CheckpointError::Unsigned);
        };
        if *key_id != key.key_id() {
            return Err(CheckpointError::OtherKey(key_id.clone()));
        }
        let signature: [u8; 64] = unhex(signature)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(CheckpointError::BadSignature)?;
        key.0
            .verify(
                &signed_bytes(&self.chain, self.seq, &self.head_hash, self.signed_at),
                &ed25519_dalek::Signature::from_bytes(&signature),
            )
            .map_err(|_| CheckpointError::BadSignature)
    }

    /// Records it in `_bemi_checkpoints`.
    pub async fn insert(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO _bemi_checkpoints \
               (chain, seq, head_hash, signed_at, key_id, signature, reason) \
             VALUES ($1, $2, decode($3, 'hex'), $4, $5, decode($6, 'hex'), $7) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.chain)
        .bind(self.seq)
        .bind(&self.head_hash)
        .bind(self.signed_at)
        .bind(&self.key_id)
        .bind(&self.signature)
        .bind(&self.reason)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Every checkpoint in `_bemi_checkpoints`, by chain and number.
    pub async fn load_all(conn: &mut PgConnection) -> Result<Vec<Self>, sqlx::Error> {
        type Row = (
            String,
            i64,
            String,
            DateTime<Utc>,
            Option<String>,
            Option<String>,
            String,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT chain, seq, encode(head_hash, 'hex'), signed_at, key_id, \
                    encode(signature, 'hex'), reason \
               FROM _bemi_checkpoints ORDER BY chain, seq, signed_at",
        )
        .fetch_all(conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(chain, seq, head_hash, signed_at, key_id, signature, reason)| Self {
                    chain,
                    seq,
                    head_hash,
                    signed_at,
                    key_id,
                    signature,
                    reason,
                },
            )
            .collect())
    }
}

/// When a writer signs its chain's head, and with which key.
///
/// ```
/// use std::time::Duration;
/// use bemi_audit::checkpoint::CheckpointPolicy;
///
/// let policy = CheckpointPolicy::new(None).every_changes(1_000).every(Duration::from_secs(60));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckpointPolicy {
    /// The key (without one, no interval checkpoints are made).
    pub key: Option<SigningKey>,
    /// Sign after this many new changes.
    pub every_changes: u64,
    /// Sign after this long with new changes.
    pub every: Duration,
    /// Also append each checkpoint, as a JSON line, to this file.
    pub file: Option<PathBuf>,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self::new(None)
    }
}

impl CheckpointPolicy {
    /// Every 10 000 changes or 60 s, with `key`.
    #[must_use]
    pub fn new(key: Option<SigningKey>) -> Self {
        Self {
            key,
            every_changes: 10_000,
            every: Duration::from_secs(60),
            file: None,
        }
    }

    /// Sign after this many new changes (at least 1).
    #[must_use]
    pub fn every_changes(mut self, changes: u64) -> Self {
        self.every_changes = changes.max(1);
        self
    }

    /// Sign after this long with new changes.
    #[must_use]
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Append each checkpoint to `file` too.
    #[must_use]
    pub fn file(mut self, file: Option<PathBuf>) -> Self {
        self.file = file;
        self
    }
}

/// A writer's checkpoint clock: whether its head is due a checkpoint.
#[derive(Debug)]
pub struct Checkpointer {
    policy: CheckpointPolicy,
    last_seq: Option<i64>,
    last_at: Instant,
}

impl Checkpointer {
    /// A clock that starts now.
    #[must_use]
    pub fn new(policy: CheckpointPolicy) -> Self {
        Self {
            policy,
            last_seq: None,
            last_at: Instant::now(),
        }
    }

    /// The checkpoint `head` is due, signed now, if one is (never without a key).
    #[must_use]
    pub fn due(&self, chain: &str, head: ChainHead) -> Option<Checkpoint> {
        let key = self.policy.key.as_ref()?;
        let last = self.last_seq.unwrap_or(0);
        let new = u64::try_from(head.seq - last).unwrap_or(0);
        let due = new > 0
            && (self.last_seq.is_none()
                || new >= self.policy.every_changes
                || self.last_at.elapsed() >= self.policy.every);
        due.then(|| Checkpoint::sign(Some(key), chain, head, Utc::now(), "interval"))
    }

    /// Notes that `checkpoint` was committed, and appends it to the file if there is one.
    pub fn committed(&mut self, checkpoint: &Checkpoint) -> std::io::Result<()> {
        self.last_seq = Some(checkpoint.seq);
        self.last_at = Instant::now();
        append(self.policy.file.as_ref(), checkpoint)
    }

    /// Notes the head a session starts from (its last checkpoint is not known: the first
    /// batch signs).
    pub fn starts_at(&mut self, head: ChainHead) {
        if self.last_seq.is_none() && head.seq > 0 {
            self.last_seq = Some(head.seq);
            // The first new change after a restart is signed soon.
            self.last_at = Instant::now()
                .checked_sub(self.policy.every)
                .unwrap_or(self.last_at);
        }
    }
}

/// Appends `checkpoint` to `file` as a JSON line (creating the file), flushed to disk.
pub fn append(file: Option<&PathBuf>, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let Some(path) = file else { return Ok(()) };
    let mut line = serde_json::to_vec(checkpoint).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(&line)?;
    file.sync_data()
}

/// The checkpoints of a file [`append`] wrote.
pub fn read_file(path: &std::path::Path) -> std::io::Result<Vec<Checkpoint>> {
    std::fs::read_to_string(path)?
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).map_err(std::io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_keys_are_refused() {
        let key = SigningKey::generate().unwrap();
        let (secret, public) = key.to_text_pair();
        assert_eq!(secret.parse::<SigningKey>().unwrap().public(), key.public());
        assert_eq!(public.parse::<PublicKey>().unwrap(), key.public());
        assert!(public.parse::<SigningKey>().is_err());
        assert!(secret.parse::<PublicKey>().is_err());
        assert!("bemi-ed25519-public:zz".parse::<PublicKey>().is_err());
        assert!("bemi-ed25519-public:é".parse::<PublicKey>().is_err());
    }

    #[test]
    fn another_key_or_another_head_does_not_verify() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let head = ChainHead {
            seq: 3,
            hash: [9; 32],
        };
        let checkpoint = Checkpoint::sign(Some(&key), "c", head, Utc::now(), "interval");
        assert_eq!(checkpoint.verify(&key.public()), Ok(()));
        assert!(matches!(
            checkpoint.verify(&other.public()),
            Err(CheckpointError::OtherKey(_))
        ));
        let mut changed = checkpoint.clone();
        changed.head_hash = hex(&[8; 32]);
        assert_eq!(
            changed.verify(&key.public()),
            Err(CheckpointError::BadSignature)
        );
        let unsigned = Checkpoint::sign(None, "c", head, Utc::now(), "prune");
        assert_eq!(
            unsigned.verify(&key.public()),
            Err(CheckpointError::Unsigned)
        );
    }

    #[test]
    fn a_checkpoint_is_due_after_n_changes_and_only_with_a_key() {
        let head = |seq| ChainHead { seq, hash: [0; 32] };
        let none = Checkpointer::new(CheckpointPolicy::new(None));
        assert!(none.due("c", head(5)).is_none());
        let key = SigningKey::generate().unwrap();
        let mut clock = Checkpointer::new(
            CheckpointPolicy::new(Some(key))
                .every_changes(10)
                .every(Duration::from_secs(3600)),
        );
        let first = clock.due("c", head(1)).unwrap();
        clock.committed(&first).unwrap();
        assert!(clock.due("c", head(10)).is_none());
        assert_eq!(clock.due("c", head(11)).unwrap().seq, 11);
    }
}
