//! Who may do what: the authorization callback's answer ([`Access`]), and the request's
//! credentials (bearer token, cookies).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use bemi_core::IntoContext;
use serde_json::{Map, Value};

use crate::scope::Scope;

/// The header that carries the CSRF token of a JSON request.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// The form field that carries the CSRF token of a form.
pub(crate) const CSRF_FIELD: &str = "csrf_token";

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
    scope: Scope,
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

    /// What this request may see (default: everything): forced filters, a set of tables, hidden
    /// columns and context keys. Every endpoint applies it; outside it is a 404.
    ///
    /// ```
    /// use bemi_ui::{Access, Scope};
    ///
    /// let tenant = Access::read().scope(Scope::new().context("tenant_id", 42));
    /// assert!(!tenant.scope_ref().is_everything());
    /// ```
    #[must_use]
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// The request's scope (see [`Access::scope`]).
    #[must_use]
    pub fn scope_ref(&self) -> &Scope {
        &self.scope
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
            scope: Scope::default(),
        }
    }
}

/// The future an authorization callback returns.
pub(crate) type AccessFuture = Pin<Box<dyn Future<Output = Access> + Send>>;

/// An authorization callback, boxed.
pub(crate) type Authorize = Arc<dyn Fn(&Parts) -> AccessFuture + Send + Sync>;

/// The token of an `Authorization: Bearer …` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The values of every cookie called `name` (a browser sends several when another site of the
/// same domain planted one: then none is trusted).
pub(crate) fn cookies<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .collect()
}

/// The one value of cookie `name`: `None` when it is missing, empty or sent more than once.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    match cookies(headers, name).as_slice() {
        [value] if !value.is_empty() => Some(value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn a_cookie_sent_twice_is_not_trusted() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; bemi_csrf=x"));
        assert_eq!(cookie(&headers, "bemi_csrf"), Some("x"));
        headers.append(header::COOKIE, HeaderValue::from_static("bemi_csrf=y"));
        assert_eq!(cookie(&headers, "bemi_csrf"), None);
        assert_eq!(cookie(&headers, "a"), Some("1"));
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("bemi_csrf="));
        assert_eq!(cookie(&headers, "bemi_csrf"), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dDp0"),
        );
        assert_eq!(
            bearer(&headers),
            None,
            "Basic credentials are sent by browsers on their own"
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert_eq!(bearer(&headers), Some("t"));
    }
}
