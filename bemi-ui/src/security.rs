//! The UI's own origin (the `Host` check against DNS rebinding), CSRF tokens bound to the
//! session, `bemi ui`'s server-side sessions and the limit on failed logins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// A `public_url` that cannot be the UI's origin.
///
/// ```
/// let error = bemi_ui::UiOptions::new().public_url("ftp://audit.example.com").unwrap_err();
/// assert!(error.to_string().contains("https://"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublicUrlError {
    /// Not `http://HOST[:PORT]` or `https://HOST[:PORT]`.
    #[error(
        "the public URL {url:?} is not an origin: write it as https://HOST[:PORT] (or \
         http://HOST[:PORT]), the address people type to reach the UI, without user or query"
    )]
    NotAnOrigin {
        /// The URL given.
        url: String,
    },
}

/// The origin people reach the UI at: `https://audit.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicOrigin {
    /// `https` or `http`.
    https: bool,
    /// `host[:port]`, lowercase, without the scheme's default port.
    authority: String,
}

impl PublicOrigin {
    /// Parses `scheme://host[:port][/path]` (the path, if any, is where the UI is mounted and
    /// is not part of the origin).
    pub(crate) fn parse(url: &str) -> Result<Self, PublicUrlError> {
        let error = || PublicUrlError::NotAnOrigin {
            url: url.to_owned(),
        };
        let trimmed = url.trim();
        let (https, rest) = if let Some(rest) = strip_prefix_ci(trimmed, "https://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ci(trimmed, "http://") {
            (false, rest)
        } else {
            return Err(error());
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty()
            || authority.contains('@')
            || rest
                .get(authority.len()..)
                .is_some_and(|after| after.contains(['?', '#']))
            || !authority.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
            })
        {
            return Err(error());
        }
        let authority = authority.to_ascii_lowercase();
        let (host, port) = split_port(&authority);
        if host.is_empty() {
            return Err(error());
        }
        let authority = match port {
            Some(port) if port.parse::<u16>().is_err() => return Err(error()),
            Some("443") if https => host.to_owned(),
            Some("80") if !https => host.to_owned(),
            _ => authority.clone(),
        };
        Ok(Self { https, authority })
    }

    /// Whether the origin is `https` (cookies get `Secure` and the `__Host-` prefix).
    pub(crate) fn is_https(&self) -> bool {
        self.https
    }

    /// `https://host[:port]`.
    pub(crate) fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }

    /// Whether `host` (a `Host` header) names this origin.
    fn matches_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let (name, port) = split_port(&host);
        let default = if self.https { "443" } else { "80" };
        let host = match port {
            Some(port) if port == default => name.to_owned(),
            _ => host.clone(),
        };
        host == self.authority
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..))
        .flatten()
}

/// `host` and `port` of `host[:port]` (`[::1]:8080` too).
fn split_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((_, "")) => (authority, None),
            Some((_, tail)) => match tail.strip_prefix(':') {
                Some(port) => (
                    authority
                        .get(..authority.len() - tail.len())
                        .unwrap_or(authority),
                    Some(port),
                ),
                // `[::1]x`: not a host with a port; matches nothing.
                None => (authority, None),
            },
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (authority, None),
    }
}

/// Whether `host` (a `Host` header) is a loopback name: `127.0.0.1`, `localhost` or `[::1]`,
/// with or without a port.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let (name, port) = split_port(&host);
    let port_ok = port.is_none_or(|port| !port.is_empty() && port.parse::<u16>().is_ok());
    port_ok && matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

/// The request's `Host` (HTTP/1.1 header, or the authority of an HTTP/2 request).
pub(crate) fn host_of(headers: &HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            uri.authority()
                .map(|authority| authority.as_str().to_owned())
        })
}

/// Whether a request for `host` may be served: the public origin's host when one is set;
/// otherwise a loopback name — unless a token guards every request (`token`), which a page
/// that rebinds its name to this server cannot present.
pub(crate) fn host_allowed(host: Option<&str>, public: Option<&PublicOrigin>, token: bool) -> bool {
    match (host, public) {
        (Some(host), Some(public)) => public.matches_host(host),
        (Some(host), None) => token || is_loopback_host(host),
        (None, _) => false,
    }
}

/// Whether a state-changing request comes from the UI's own pages: `Sec-Fetch-Site:
/// same-origin`, or — from a browser that does not send it — an `Origin` (or, without one, a
/// `Referer`) of the UI's origin. `same-site` is refused: a sibling subdomain is another
/// party.
pub(crate) fn same_origin(headers: &HeaderMap, origin: &str, alternative: Option<&str>) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let is_ours = |candidate: &str| {
        candidate.eq_ignore_ascii_case(origin)
            || alternative.is_some_and(|other| candidate.eq_ignore_ascii_case(other))
    };
    if let Some(value) = headers.get(header::ORIGIN) {
        return value.to_str().is_ok_and(is_ours);
    }
    headers
        .get(header::REFERER)
        .and_then(|value| value.to_str().ok())
        .and_then(origin_of_url)
        .is_some_and(|referer| is_ours(&referer))
}

/// `scheme://authority` of an absolute URL.
fn origin_of_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}"))
}

/// Equal bytes, in time that does not depend on where they differ (`subtle`).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A random hex string of 244 random bits (two v4 ids: the operating system's random source).
pub(crate) fn random_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The per-process secret of CSRF tokens.
pub(crate) struct CsrfKey(Vec<u8>);

impl CsrfKey {
    /// A new random key (per router: tokens of an earlier process are no longer valid).
    pub(crate) fn random() -> Self {
        Self(random_id().into_bytes())
    }

    /// The CSRF token of `binding` (the session id, or the CSRF cookie's id before a login)
    /// for `actor` (who the authorization callback says is acting): HMAC-SHA-256, hex.
    pub(crate) fn token(&self, binding: &str, actor: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"bemi-ui csrf v1\0");
        mac.update(binding.as_bytes());
        mac.update(b"\0");
        mac.update(actor.as_bytes());
        let bytes = mac.finalize().into_bytes();
        bytes.iter().fold(String::with_capacity(64), |mut out, b| {
            use std::fmt::Write as _;
            let _ = write!(out, "{b:02x}");
            out
        })
    }
}

/// One `bemi ui` session: who signed in, until when.
#[derive(Debug, Clone, Copy)]
struct Session {
    expires: Instant,
}

/// `bemi ui`'s sessions, in this process's memory (a restart signs everyone out).
pub(crate) struct Sessions {
    ttl: Duration,
    sessions: Mutex<HashMap<String, Session>>,
}

/// The most sessions kept: past it, the oldest are dropped.
const MAX_SESSIONS: usize = 10_000;

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session's id.
    pub(crate) fn open(&self) -> String {
        let id = random_id();
        let now = Instant::now();
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.retain(|_, session| session.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, session)| session.expires)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                expires: now + self.ttl,
            },
        );
        id
    }

    /// Whether `id` is a session that has not expired (compared in constant time).
    pub(crate) fn is_valid(&self, id: &str) -> bool {
        let now = Instant::now();
        let sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A hash lookup's time depends on the id; compare every entry in constant time
        // instead (sessions are few).
        let mut found = false;
        for (known, session) in sessions.iter() {
            found |= constant_time_eq(known.as_bytes(), id.as_bytes()) && session.expires > now;
        }
        found
    }

    /// Ends session `id` (logout).
    pub(crate) fn close(&self, id: &str) {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.retain(|known, _| !constant_time_eq(known.as_bytes(), id.as_bytes()));
    }
}

/// At most this many failed logins per client address within [`LOGIN_WINDOW`].
pub(crate) const MAX_FAILED_LOGINS: u32 = 5;
/// The window of [`MAX_FAILED_LOGINS`].
pub(crate) const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// Failed logins per client address.
#[derive(Default)]
pub(crate) struct LoginLimiter {
    failures: Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>,
}

impl LoginLimiter {
    /// `Some(wait)` while `client` has failed too often.
    pub(crate) fn blocked(&self, client: Option<IpAddr>) -> Option<Duration> {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (since, count) = failures.get(&client)?;
        let elapsed = since.elapsed();
        (*count >= MAX_FAILED_LOGINS && elapsed < LOGIN_WINDOW).then(|| LOGIN_WINDOW - elapsed)
    }

    /// Counts a failed login of `client`.
    pub(crate) fn failed(&self, client: Option<IpAddr>) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.retain(|_, (since, _)| since.elapsed() < LOGIN_WINDOW);
        let entry = failures.entry(client).or_insert((Instant::now(), 0));
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn only_loopback_hosts_without_a_token_or_public_url() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(host_allowed(Some(host), None, false), "{host}");
        }
        for host in [
            "evil.example",
            "127.0.0.1.evil.example",
            "localhost.evil:80",
            "127.0.0.2",
            "[::1]x",
            "localhost:",
            "localhost:99999",
        ] {
            assert!(!host_allowed(Some(host), None, false), "{host}");
        }
        assert!(!host_allowed(None, None, false));
        assert!(host_allowed(Some("evil.example"), None, true));
        let public = PublicOrigin::parse("https://Audit.Example.com/audit").unwrap();
        assert_eq!(public.origin(), "https://audit.example.com");
        assert!(host_allowed(
            Some("audit.example.com"),
            Some(&public),
            false
        ));
        assert!(host_allowed(
            Some("audit.example.com:443"),
            Some(&public),
            true
        ));
        assert!(!host_allowed(Some("127.0.0.1"), Some(&public), true));
        assert!(!host_allowed(
            Some("audit.example.com:8443"),
            Some(&public),
            false
        ));
        let port = PublicOrigin::parse("http://ui.bemi.test:8080").unwrap();
        assert!(host_allowed(Some("ui.bemi.test:8080"), Some(&port), false));
        for bad in [
            "ftp://x",
            "https://",
            "https://u:p@x",
            "https://x?y",
            "https://x:port",
            "x.example",
        ] {
            assert!(PublicOrigin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_same_origin_requests_pass() {
        let ours = "http://127.0.0.1:8080";
        let check = |pairs: &[(&'static str, &str)]| same_origin(&headers(pairs), ours, None);
        assert!(check(&[("sec-fetch-site", "same-origin")]));
        for site in ["same-site", "cross-site", "none"] {
            assert!(
                !check(&[("sec-fetch-site", site), ("origin", ours)]),
                "{site}"
            );
        }
        assert!(check(&[("origin", ours)]));
        assert!(!check(&[("origin", "http://127.0.0.1:8081")]));
        assert!(!check(&[("origin", "null")]));
        assert!(check(&[("referer", "http://127.0.0.1:8080/changes/1")]));
        assert!(!check(&[("referer", "http://evil.example/x")]));
        assert!(!check(&[]), "neither header: refused");
    }

    #[test]
    fn csrf_tokens_bind_the_session_and_the_actor() {
        let key = CsrfKey::random();
        let token = key.token("session-1", "{}");
        assert_eq!(token.len(), 64);
        assert_eq!(token, key.token("session-1", "{}"));
        assert_ne!(token, key.token("session-2", "{}"));
        assert_ne!(token, key.token("session-1", "{\"user_id\":7}"));
        assert_ne!(token, CsrfKey::random().token("session-1", "{}"));
    }

    #[test]
    fn sessions_expire_and_close() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let id = sessions.open();
        assert!(sessions.is_valid(&id));
        assert!(!sessions.is_valid(id.get(1..).unwrap()));
        sessions.close(&id);
        assert!(!sessions.is_valid(&id));
        let short = Sessions::new(Duration::ZERO);
        let id = short.open();
        assert!(!short.is_valid(&id));
    }

    #[test]
    fn failed_logins_are_limited_per_address() {
        let limiter = LoginLimiter::default();
        let a = Some(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..MAX_FAILED_LOGINS {
            assert!(limiter.blocked(a).is_none());
            limiter.failed(a);
        }
        assert!(limiter.blocked(a).is_some());
        assert!(
            limiter
                .blocked(Some(IpAddr::from([127, 0, 0, 2])))
                .is_none()
        );
    }
}
