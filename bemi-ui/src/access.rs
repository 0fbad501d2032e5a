//! Who may do what: the authorization callback's answer ([`Access`]), the built-in bearer-token
//! check of `bemi ui`, and the CSRF check of every write.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use bemi_core::IntoContext;
use serde_json::{Map, Value};

/// The cookie that holds a browser's CSRF token (double submit: forms and `fetch` calls send it
/// back as the `csrf_token` field or the `x-csrf-token` header).
pub(crate) const CSRF_COOKIE: &str = "bemi_csrf";
/// The header that carries the CSRF token of a JSON request.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// The cookie `bemi ui`'s login form sets to the token.
pub(crate) const TOKEN_COOKIE: &str = "bemi_ui_token";

/// What one request may do, as the authorization callback decides it.
///
/// ```
/// use bemi_ui::Access;
/// use serde_json::json;
///
/// let support = Access::read();
/// assert!(support.can_read() && !support.can_revert());
/// let admin = Access::revert().actor(json!({"user_id": 7, "role": "admin"}));
/// assert!(admin.can_revert());
/// assert_eq!(admin.actor_context()["user_id"], 7);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    level: Level,
    actor: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Unauthenticated,
    Denied,
    Read,
    Revert,
}

impl Access {
    /// Not signed in: 401 (with `bemi ui`'s token, the login page).
    #[must_use]
    pub fn unauthenticated() -> Self {
        Self::at(Level::Unauthenticated)
    }

    /// Signed in, but not allowed to see the audit trail: 403.
    #[must_use]
    pub fn denied() -> Self {
        Self::at(Level::Denied)
    }

    /// May read every page, the API and the exports; a revert is refused with 403.
    #[must_use]
    pub fn read() -> Self {
        Self::at(Level::Read)
    }

    /// May read and revert.
    #[must_use]
    pub fn revert() -> Self {
        Self::at(Level::Revert)
    }

    /// Who is acting: these keys (e.g. `{"user_id": 7}`) join the `revert_of` context of the
    /// writes a revert makes, so that the audit trail says who reverted.
    #[must_use]
    pub fn actor(mut self, actor: impl IntoContext) -> Self {
        self.actor = actor.into_context().unwrap_or_default();
        self
    }

    /// Whether the pages, the API and the exports are open to this request.
    #[must_use]
    pub fn can_read(&self) -> bool {
        self.level >= Level::Read
    }

    /// Whether this request may revert.
    #[must_use]
    pub fn can_revert(&self) -> bool {
        self.level >= Level::Revert
    }

    /// The acting user's keys (see [`Access::actor`]).
    #[must_use]
    pub fn actor_context(&self) -> &Map<String, Value> {
        &self.actor
    }

    pub(crate) fn is_authenticated(&self) -> bool {
        self.level > Level::Unauthenticated
    }

    fn at(level: Level) -> Self {
        Self {
            level,
            actor: Map::new(),
        }
    }
}

/// The future an authorization callback returns.
pub(crate) type AccessFuture = Pin<Box<dyn Future<Output = Access> + Send>>;

/// An authorization callback, boxed.
pub(crate) type Authorize = Arc<dyn Fn(&Parts) -> AccessFuture + Send + Sync>;

/// The authorization of `bemi ui --token T`: `Authorization: Bearer T` or the login cookie.
pub(crate) fn token_authorize(token: String, allow_revert: bool) -> Authorize {
    let token: Arc<str> = Arc::from(token);
    Arc::new(move |parts: &Parts| {
        let presented = bearer(&parts.headers)
            .or_else(|| cookie(&parts.headers, TOKEN_COOKIE))
            .map(str::to_owned);
        let token = Arc::clone(&token);
        Box::pin(async move {
            match presented {
                Some(presented) if constant_time_eq(presented.as_bytes(), token.as_bytes()) => {
                    let access = if allow_revert {
                        Access::revert()
                    } else {
                        Access::read()
                    };
                    access.actor(serde_json::json!({"reverted_by": "bemi ui (token)"}))
                }
                _ => Access::unauthenticated(),
            }
        })
    })
}

/// Whether `token` is `bemi ui`'s token (for the login form).
pub(crate) fn token_matches(expected: &str, presented: &str) -> bool {
    constant_time_eq(presented.as_bytes(), expected.as_bytes())
}

/// Compares without stopping at the first difference, so that the time taken does not tell
/// how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer …` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The value of cookie `name`.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// Whether a state-changing request passes the CSRF check: a bearer token (which a browser
/// never adds on its own), or the token of the CSRF cookie echoed in the `x-csrf-token` header
/// or the form field `csrf_token` (`form_token`) — and never a cross-site request.
pub(crate) fn csrf_ok(method: &Method, headers: &HeaderMap, form_token: Option<&str>) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site == "cross-site")
    {
        return false;
    }
    if bearer(headers).is_some() {
        return true;
    }
    let Some(expected) = cookie(headers, CSRF_COOKIE) else {
        return false;
    };
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .or(form_token);
    presented.is_some_and(|presented| constant_time_eq(presented.as_bytes(), expected.as_bytes()))
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
    fn csrf_needs_the_cookie_echoed_or_a_bearer_token() {
        let post = Method::POST;
        let cookie = ("cookie", "a=1; bemi_csrf=abc123");
        assert!(!csrf_ok(&post, &headers(&[cookie]), None));
        assert!(!csrf_ok(
            &post,
            &headers(&[cookie, ("x-csrf-token", "abc124")]),
            None
        ));
        assert!(csrf_ok(
            &post,
            &headers(&[cookie, ("x-csrf-token", "abc123")]),
            None
        ));
        assert!(csrf_ok(&post, &headers(&[cookie]), Some("abc123")));
        assert!(!csrf_ok(
            &post,
            &headers(&[("x-csrf-token", "abc123")]),
            Some("abc123")
        ));
        assert!(csrf_ok(
            &post,
            &headers(&[("authorization", "Bearer t")]),
            None
        ));
        // Basic credentials are sent by browsers on their own: no exemption.
        assert!(!csrf_ok(
            &post,
            &headers(&[("authorization", "Basic dDp0")]),
            None
        ));
        let cross = ("sec-fetch-site", "cross-site");
        assert!(!csrf_ok(&post, &headers(&[cookie, cross]), Some("abc123")));
        assert!(csrf_ok(&Method::GET, &HeaderMap::new(), None));
    }

    #[tokio::test]
    async fn the_token_opens_by_header_or_cookie_only_when_it_matches() {
        let authorize = token_authorize("s3cret".into(), false);
        let access = |pairs: &[(&'static str, &str)]| {
            let mut request = axum::http::Request::new(());
            *request.headers_mut() = headers(pairs);
            let (parts, ()) = request.into_parts();
            authorize(&parts)
        };
        assert!(
            access(&[("authorization", "Bearer s3cret")])
                .await
                .can_read()
        );
        assert!(
            access(&[("cookie", "bemi_ui_token=s3cret")])
                .await
                .can_read()
        );
        assert!(
            !access(&[("cookie", "bemi_ui_token=s3cre")])
                .await
                .is_authenticated()
        );
        assert!(!access(&[]).await.is_authenticated());
        assert!(
            !access(&[("authorization", "Bearer s3cret")])
                .await
                .can_revert()
        );
    }
}
