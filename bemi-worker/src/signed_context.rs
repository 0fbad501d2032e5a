//! Checking signed contexts ([`bemi_core::signing`]): with the application's context key, the
//! worker records in each stored context whether it was signed and valid, unsigned, or forged
//! (`"_bemi_signature": "valid" | "unsigned" | "forged"`): a wrong MAC, a signing time too far
//! from the transaction's commit, or a nonce already seen in another transaction (a signed
//! context replayed onto another statement). The signature itself is not stored.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bemi_core::signing::{self, ContextKey, SignatureError, Verdict};

/// How long before its transaction's commit a context may have been signed.
const SIGNED_BEFORE_COMMIT_MS: i64 = 15 * 60 * 1000;
/// How long after the commit (the application's clock ahead of the source's).
const SIGNED_AFTER_COMMIT_MS: i64 = 60 * 1000;

/// The worker's side of signed contexts: the key, and the nonces seen recently.
#[derive(Debug)]
pub(crate) struct ContextChecker {
    key: ContextKey,
    /// Nonce → the transaction it was seen in.
    seen: HashMap<String, u64>,
    /// Nonces by commit time (µs), to forget them once out of the window.
    order: VecDeque<(i64, String)>,
}

impl ContextChecker {
    pub(crate) fn new(key: ContextKey) -> Self {
        Self {
            key,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The context of a `_bemi` message of the transaction `xid` (committed at `committed_at`,
    /// µs since the Unix epoch), without its signature, and the verdict (see [`apply`]).
    pub(crate) fn check<'a>(
        &mut self,
        content: &'a [u8],
        xid: u64,
        committed_at: i64,
    ) -> (Cow<'a, [u8]>, Verdict) {
        let Ok(text) = std::str::from_utf8(content) else {
            return (Cow::Borrowed(content), Verdict::Unsigned);
        };
        match signing::verify(&self.key, text) {
            Ok(signed) => {
                let commit_ms = committed_at.div_euclid(1000);
                let in_time = signed.unix_ms >= commit_ms - SIGNED_BEFORE_COMMIT_MS
                    && signed.unix_ms <= commit_ms + SIGNED_AFTER_COMMIT_MS;
                let fresh = self.remember(signed.nonce, xid, committed_at);
                let verdict = if in_time && fresh {
                    Verdict::Valid
                } else {
                    Verdict::Forged
                };
                (Cow::Owned(signed.context.into_bytes()), verdict)
            }
            Err(SignatureError::Unsigned) => (Cow::Borrowed(content), Verdict::Unsigned),
            Err(_) => (Cow::Borrowed(content), Verdict::Forged),
        }
    }

    /// Records `nonce` for `xid`; `false` when another transaction used it.
    fn remember(&mut self, nonce: String, xid: u64, committed_at: i64) -> bool {
        let horizon = committed_at - (SIGNED_BEFORE_COMMIT_MS + SIGNED_AFTER_COMMIT_MS) * 2000;
        while self.order.front().is_some_and(|(at, _)| *at < horizon) {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        match self.seen.get(&nonce) {
            Some(seen) => *seen == xid,
            None => {
                self.seen.insert(nonce.clone(), xid);
                self.order.push_back((committed_at, nonce));
                true
            }
        }
    }
}

/// The stored context: `context` (the parsed message, a JSON object's text) with the verdict
/// key set and no signature key — or `{}` as it is, for an unsigned message without context.
pub(crate) fn apply(context: Arc<str>, verdict: Verdict) -> Arc<str> {
    if verdict == Verdict::Unsigned && &*context == "{}" {
        return context;
    }
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&context) {
        Ok(mut map) => {
            map.remove(signing::SIGNATURE_KEY);
            map.insert(
                signing::VERDICT_KEY.to_owned(),
                serde_json::Value::from(verdict.as_str()),
            );
            Arc::from(serde_json::Value::Object(map).to_string())
        }
        Err(_) => context,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn verdict(context: &str) -> Value {
        serde_json::from_str::<Value>(context).unwrap()[signing::VERDICT_KEY].clone()
    }

    impl ContextChecker {
        /// What the assembler stores (its parsing aside: these contexts are JSON objects).
        fn context(&mut self, content: &[u8], xid: u64, committed_at: i64) -> Arc<str> {
            let (body, verdict) = self.check(content, xid, committed_at);
            apply(Arc::from(String::from_utf8_lossy(&body).as_ref()), verdict)
        }
    }

    #[test]
    fn valid_unsigned_forged_late_and_replayed() {
        let key = ContextKey::new(b"k");
        let mut checker = ContextChecker::new(key);
        let commit_us = 1_765_000_000_000_000;
        let commit_ms = commit_us / 1000;
        let json = r#"{"user_id":1,"SQL":"INSERT INTO t VALUES (1)"}"#;
        let signed = signing::sign_with(&key, json, commit_ms - 5, "a");
        let stored = checker.context(signed.as_bytes(), 7, commit_us);
        assert_eq!(verdict(&stored), "valid");
        assert!(!stored.contains("\"_bemi_sig\""), "{stored}");
        // The same emission again in its own transaction (a re-delivery) is still valid …
        assert_eq!(
            verdict(&checker.context(signed.as_bytes(), 7, commit_us)),
            "valid"
        );
        // … in another one it is a replay.
        assert_eq!(
            verdict(&checker.context(signed.as_bytes(), 8, commit_us)),
            "forged"
        );
        // Unsigned, another key, a changed byte, a time far from the commit.
        assert_eq!(
            verdict(&checker.context(json.as_bytes(), 9, commit_us)),
            "unsigned"
        );
        assert_eq!(&*checker.context(b"{}", 9, commit_us), "{}");
        let other = signing::sign_with(&ContextKey::new(b"x"), json, commit_ms, "b");
        assert_eq!(
            verdict(&checker.context(other.as_bytes(), 9, commit_us)),
            "forged"
        );
        let changed = signed
            .replace("user_id\":1", "user_id\":2")
            .replace("\"a.", "\"c.");
        assert_eq!(
            verdict(&checker.context(changed.as_bytes(), 9, commit_us)),
            "forged"
        );
        let late = signing::sign_with(&key, json, commit_ms - 3_600_000, "d");
        assert_eq!(
            verdict(&checker.context(late.as_bytes(), 9, commit_us)),
            "forged"
        );
        // A verdict the application wrote itself is replaced.
        let lying = r#"{"_bemi_signature":"valid"}"#;
        assert_eq!(
            verdict(&checker.context(lying.as_bytes(), 9, commit_us)),
            "unsigned"
        );
    }
}
