//! Signed contexts: an application that holds a context key (`BEMI_CONTEXT_KEY`, or
//! [`set_context_key`] in code) signs each context its adapters emit, and a worker given the
//! same key tells a context the application vouches for from one any database role could have
//! written with `pg_logical_emit_message`.
//!
//! The signature is the last key of the emitted JSON object —
//! `,"_bemi_sig":"v1.<unix ms>.<nonce>.<mac>"}` — where `mac` is HMAC-SHA256 (hex) over the
//! exact JSON text before it was appended (which includes the statement's `SQL`), the time and
//! a nonce unique to this emission. The worker strips that suffix as text and checks the MAC
//! byte for byte; it also refuses a time too far from the transaction's commit and a nonce it
//! saw in another transaction (a signed context replayed onto another statement).
//!
//! ```
//! use bemi_core::signing::{ContextKey, Verdict, sign_with, verify};
//!
//! let key = ContextKey::new(b"a secret shared by the app and the worker");
//! let json = r#"{"user_id":187234,"SQL":"INSERT INTO todo (task) VALUES ($1)"}"#;
//! let signed = sign_with(&key, json, 1_765_000_000_000, "n1");
//! assert!(signed.ends_with("\"}"));
//! let checked = verify(&key, &signed).unwrap();
//! assert_eq!(checked.context, json);
//! assert_eq!((checked.unix_ms, checked.nonce.as_str()), (1_765_000_000_000, "n1"));
//!
//! // Any other byte — another statement, another user — does not verify.
//! let replayed = signed.replace("INSERT INTO todo", "DELETE FROM todo");
//! assert!(verify(&key, &replayed).is_err());
//! assert!(verify(&ContextKey::new(b"another"), &signed).is_err());
//! # let _ = Verdict::Valid;
//! ```

use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

/// The key of the signature in an emitted context.
pub const SIGNATURE_KEY: &str = "_bemi_sig";

/// The key under which the worker records its verdict in a stored context.
pub const VERDICT_KEY: &str = "_bemi_signature";

/// The environment variable the adapters (and `bemi worker`) read the key from.
pub const CONTEXT_KEY_ENV: &str = "BEMI_CONTEXT_KEY";

const VERSION: &str = "v1";

/// A context key: SHA-256 of the shared secret (any length of text).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ContextKey([u8; 32]);

impl std::fmt::Debug for ContextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContextKey(..)")
    }
}

impl ContextKey {
    /// The key of the secret `secret`.
    #[must_use]
    pub fn new(secret: &[u8]) -> Self {
        Self(Sha256::digest(secret).into())
    }

    /// The key of `BEMI_CONTEXT_KEY`, if it is set and not empty.
    #[must_use]
    pub fn from_env() -> Option<Self> {
        std::env::var(CONTEXT_KEY_ENV)
            .ok()
            .filter(|secret| !secret.trim().is_empty())
            .map(|secret| Self::new(secret.trim().as_bytes()))
    }

    /// The key's bytes (what the HMAC is keyed with).
    #[must_use]
    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// A key from [`bytes`](Self::bytes).
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// What a worker with a key concluded about a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Signed with the key, in time, not seen before.
    Valid,
    /// No signature (another language's comment, an application without a key).
    Unsigned,
    /// A signature that does not hold (wrong MAC, out of time, replayed).
    Forged,
}

impl Verdict {
    /// As stored: `valid`, `unsigned`, `forged`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Unsigned => "unsigned",
            Verdict::Forged => "forged",
        }
    }
}

/// The key set in code (`Some(None)`: signing switched off in code).
static KEY: RwLock<Option<Option<ContextKey>>> = RwLock::new(None);

/// Sets (or, with `None`, switches off) the key the adapters sign with, instead of
/// `BEMI_CONTEXT_KEY`.
///
/// ```
/// use bemi_core::signing::{ContextKey, context_key, set_context_key};
///
/// set_context_key(Some(ContextKey::new(b"secret")));
/// assert_eq!(context_key(), Some(ContextKey::new(b"secret")));
/// set_context_key(None);
/// assert_eq!(context_key(), None);
/// ```
pub fn set_context_key(key: Option<ContextKey>) {
    if let Ok(mut slot) = KEY.write() {
        *slot = Some(key);
    }
}

/// The key the adapters sign with: the one set in code, else `BEMI_CONTEXT_KEY` (read once).
#[must_use]
pub fn context_key() -> Option<ContextKey> {
    if let Ok(slot) = KEY.read()
        && let Some(key) = *slot
    {
        return key;
    }
    let from_env = ContextKey::from_env();
    if let Ok(mut slot) = KEY.write() {
        slot.get_or_insert(from_env);
    }
    from_env
}

fn mac(key: &ContextKey, unix_ms: i64, nonce: &str, json: &str) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(&key.0).expect("HMAC takes any key length");
    mac.update(b"bemi-context-v1\n");
    mac.update(unix_ms.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(nonce.as_bytes());
    mac.update(b"\n");
    mac.update(json.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `json` (a JSON object's text) signed with `key` at `unix_ms` with `nonce` (no `.` in it).
#[must_use]
pub fn sign_with(key: &ContextKey, json: &str, unix_ms: i64, nonce: &str) -> String {
    let tag = mac(key, unix_ms, nonce, json);
    let body = json.trim_end().strip_suffix('}').unwrap_or(json);
    let separator = if body.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    format!("{body}{separator}\"{SIGNATURE_KEY}\":\"{VERSION}.{unix_ms}.{nonce}.{tag}\"}}")
}

/// `json` signed with the current [`context_key`], now, with a fresh nonce; `json` itself
/// without a key.
#[must_use]
pub fn sign(json: String) -> String {
    let Some(key) = context_key() else {
        return json;
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let process = *PROCESS.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        hasher.finish()
    });
    let nonce = format!(
        "{process:016x}{:x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    sign_with(&key, &json, unix_ms, &nonce)
}

/// A context whose signature held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The context as the application emitted it, without the signature.
    pub context: String,
    /// When it was signed.
    pub unix_ms: i64,
    /// Its nonce.
    pub nonce: String,
}

/// Why a context does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// It carries no signature.
    #[error("the context is not signed")]
    Unsigned,
    /// Its signature is malformed or does not match.
    #[error("the context's signature does not match it")]
    Mismatch,
}

/// Checks the signature at the end of `text` (a context as emitted) with `key`.
pub fn verify(key: &ContextKey, text: &str) -> Result<Signed, SignatureError> {
    let marker = format!("\"{SIGNATURE_KEY}\":\"");
    let at = text.rfind(&marker).ok_or(SignatureError::Unsigned)?;
    let (before, rest) = text.split_at(at);
    let value = rest
        .get(marker.len()..)
        .and_then(|v| v.trim_end().strip_suffix("\"}"))
        .ok_or(SignatureError::Mismatch)?;
    let before_trimmed = before.trim_end();
    let context = if let Some(body) = before_trimmed.strip_suffix(',') {
        format!("{body}}}")
    } else if before_trimmed.ends_with('{') {
        format!("{before_trimmed}}}")
    } else {
        return Err(SignatureError::Mismatch);
    };
    let mut parts = value.splitn(4, '.');
    let (Some(VERSION), Some(ms), Some(nonce), Some(tag)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SignatureError::Mismatch);
    };
    let unix_ms: i64 = ms.parse().map_err(|_| SignatureError::Mismatch)?;
    let expected = mac(key, unix_ms, nonce, &context);
    // Constant time: the hex digits, byte by byte.
    let same = expected.len() == tag.len()
        && expected
            .bytes()
            .zip(tag.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(SignatureError::Mismatch);
    }
    Ok(Signed {
        context,
        unix_ms,
        nonce: nonce.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_context_and_odd_texts_round_trip_or_fail_cleanly() {
        let key = ContextKey::new(b"k");
        let signed = sign_with(&key, "{}", 5, "n");
        assert_eq!(
            signed,
            format!("{{\"_bemi_sig\":\"v1.5.n.{}\"}}", mac(&key, 5, "n", "{}"))
        );
        assert_eq!(verify(&key, &signed).unwrap().context, "{}");
        for text in [
            "",
            "{",
            "}",
            "{\"_bemi_sig\":\"",
            "{\"_bemi_sig\":\"v1.x.n.y\"}",
            "é\"_bemi_sig\":\"\"}",
        ] {
            assert!(verify(&key, text).is_err(), "{text}");
        }
        assert_eq!(verify(&key, r#"{"a":1}"#), Err(SignatureError::Unsigned));
        // A user key of the same name earlier in the object does not confuse it.
        let json = r#"{"_bemi_sig":"mine","a":1}"#;
        assert_eq!(
            verify(&key, &sign_with(&key, json, 1, "n"))
                .unwrap()
                .context,
            json
        );
    }
}
