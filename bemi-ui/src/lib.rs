//! # bemi-ui
//!
//! The audit trail on a page: who changed which row, from which endpoint, what it looked like
//! before — for support staff, compliance officers and on-call engineers who do not write SQL.
//!
//! [`router`] is an axum `Router` to mount in your app, behind your own authentication, with a
//! callback that decides per request what the caller may do ([`UiOptions::authorize`]); `bemi
//! ui` serves the same router on its own, with a bearer token ([`UiOptions::token`]).
//!
//! ```no_run
//! use axum::Router;
//! use bemi_ui::{Access, UiOptions};
//! use serde_json::json;
//!
//! # async fn run(pool: sqlx::PgPool) {
//! let audit = bemi_ui::router(
//!     pool.clone(),
//!     UiOptions::new().source(pool).authorize(|parts| {
//!         // Your authentication ran first and left the user in the request's extensions.
//!         let user = parts.extensions.get::<String>().cloned();
//!         async move {
//!             match user.as_deref() {
//!                 Some("admin") => Access::revert().actor(json!({"user_id": "admin"})),
//!                 Some(_) => Access::read(),
//!                 None => Access::unauthenticated(),
//!             }
//!         }
//!     }),
//! );
//! let app: Router = Router::new().nest("/audit", audit);
//! # let _ = app;
//! # }
//! ```
//!
//! Pages (paths relative to the mount point): `/` the change list with filters and keyset
//! pages; `/changes/{id}` a change's diff, context, SQL, transaction and request, with revert;
//! `/rows/{[schema.]table}/{pk}` a row's timeline; `/tables/{[schema.]table}?at=TIME` a table as
//! of an instant; `/users/{value}` one user's activity; `/tail` new changes as they arrive. The
//! JSON API: `GET /api/changes`, `POST /api/revert`, `GET /api/tail` (server-sent events); the
//! exports `GET /export.csv` and `GET /export.ndjson`.
//!
//! Every value from the audit trail is escaped (maud), pages run under a strict
//! Content-Security-Policy (no inline script), every filter is a bound parameter, and every
//! write (a revert) needs the revert permission and passes a CSRF check.

mod access;
mod api;
mod export;
pub mod filters;
mod pages;
mod render;

use std::sync::Arc;

use axum::Router;
use axum::extract::{OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sqlx::PgPool;

pub use access::Access;
pub use filters::{FilterError, Filters};

use access::{AccessFuture, Authorize, CSRF_COOKIE};

/// How the UI reaches its data and who may do what.
///
/// ```
/// use bemi_ui::{Access, UiOptions};
///
/// let options = UiOptions::new()
///     .user_key("user_id")
///     .authorize(|_parts| async { Access::read() });
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct UiOptions {
    source: Option<PgPool>,
    authorize: Authorize,
    token: Option<Arc<str>>,
    user_key: String,
}

impl Default for UiOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for UiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiOptions")
            .field("user_key", &self.user_key)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

impl UiOptions {
    /// Read-only access for every request (mount it behind your authentication, or give it
    /// [`authorize`](Self::authorize)); reverts write to the `changes` table's database.
    ///
    /// ```
    /// let options = bemi_ui::UiOptions::new();
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self {
            source: None,
            authorize: Arc::new(|_: &Parts| -> AccessFuture { Box::pin(async { Access::read() }) }),
            token: None,
            user_key: "user_id".to_owned(),
        }
    }

    /// The database the changes came from, where reverts write (by default the one of the
    /// `changes` table).
    ///
    /// ```no_run
    /// # fn run(source: sqlx::PgPool) {
    /// let options = bemi_ui::UiOptions::new().source(source);
    /// # }
    /// ```
    #[must_use]
    pub fn source(mut self, pool: PgPool) -> Self {
        self.source = Some(pool);
        self
    }

    /// Decides, per request, what the caller may do — from the request's head (headers, your
    /// authentication's extensions). Without it every request may read and none may revert.
    ///
    /// ```
    /// use bemi_ui::{Access, UiOptions};
    ///
    /// let options = UiOptions::new().authorize(|parts| {
    ///     let signed_in = parts.headers.contains_key("x-user");
    ///     async move { if signed_in { Access::read() } else { Access::unauthenticated() } }
    /// });
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn authorize<F, Fut>(mut self, authorize: F) -> Self
    where
        F: Fn(&Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Access> + Send + 'static,
    {
        self.authorize =
            Arc::new(move |parts: &Parts| -> AccessFuture { Box::pin(authorize(parts)) });
        self.token = None;
        self
    }

    /// `bemi ui`'s authentication: every request needs `Authorization: Bearer <token>` or the
    /// cookie of the login page (`/login`); the token holder may revert if `allow_revert`.
    ///
    /// ```
    /// let options = bemi_ui::UiOptions::new().token("s3cret", false);
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn token(mut self, token: impl Into<String>, allow_revert: bool) -> Self {
        let token = token.into();
        self.token = Some(Arc::from(token.as_str()));
        self.authorize = access::token_authorize(token, allow_revert);
        self
    }

    /// The context key that names a user (default `user_id`): its values link to the user's
    /// activity page.
    ///
    /// ```
    /// let options = bemi_ui::UiOptions::new().user_key("actor");
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn user_key(mut self, key: impl Into<String>) -> Self {
        self.user_key = key.into();
        self
    }
}

/// The shared state of the UI's handlers.
#[derive(Clone)]
pub(crate) struct Ui(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) audit: PgPool,
    pub(crate) source: PgPool,
    pub(crate) authorize: Authorize,
    pub(crate) token: Option<Arc<str>>,
    pub(crate) user_key: String,
}

impl std::ops::Deref for Ui {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// What the guard found out about a request, for the handlers.
#[derive(Debug, Clone)]
pub(crate) struct RequestInfo {
    /// The path the UI is mounted at (`""` at the root, `/audit` when nested there).
    pub(crate) base: String,
    /// This browser's CSRF token, for the forms of the page.
    pub(crate) csrf: String,
    /// What the caller may do.
    pub(crate) access: Access,
}

impl RequestInfo {
    /// The change list's URL: the mount point itself (`/audit`, not `/audit/`, which a nested
    /// router does not match), or `/` at the root.
    pub(crate) fn home(&self) -> String {
        self.path("/")
    }

    /// The URL of `path` (`/tail`, …) under the mount point; `/` is [`RequestInfo::home`].
    pub(crate) fn path(&self, path: &str) -> String {
        match (self.base.is_empty(), path) {
            (false, "/") => self.base.clone(),
            _ => format!("{}{path}", self.base),
        }
    }

    /// The path of the UI's cookies: the mount point (or `/`).
    pub(crate) fn cookie_path(&self) -> String {
        if self.base.is_empty() {
            "/".to_owned()
        } else {
            self.base.clone()
        }
    }
}

/// The UI: every page, the JSON API and the exports, for the `changes` table reachable through
/// `audit`. Mount it with `Router::nest` (its links follow the mount point) or serve it as is.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) {
/// let app: axum::Router = axum::Router::new()
///     .nest("/audit", bemi_ui::router(pool, bemi_ui::UiOptions::new()));
/// # let _ = app;
/// # }
/// ```
pub fn router(audit: PgPool, options: UiOptions) -> Router {
    let ui = Ui(Arc::new(Inner {
        source: options.source.unwrap_or_else(|| audit.clone()),
        audit,
        authorize: options.authorize,
        token: options.token,
        user_key: options.user_key,
    }));
    Router::new()
        .route("/", get(pages::list))
        .route("/changes/{id}", get(pages::detail))
        .route("/rows/{table}/{pk}", get(pages::row_timeline))
        .route("/tables/{table}", get(pages::table_at))
        .route("/users/{value}", get(pages::user_activity))
        .route("/tail", get(pages::tail))
        .route("/revert", post(pages::revert))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/api/changes", get(api::changes))
        .route("/api/revert", post(api::revert))
        .route("/api/tail", get(api::tail))
        .route("/export.csv", get(export::csv))
        .route("/export.ndjson", get(export::ndjson))
        .route("/assets/bemi.css", get(render::stylesheet))
        .route("/assets/bemi.js", get(render::script))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(ui.clone(), guard))
        .with_state(ui)
}

/// The biggest form body a page posts (a revert's fields).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Every request: the mount point, the CSRF token, the caller's access (401 / 403 before any
/// handler runs), the CSRF check and the revert permission of every POST, and the security
/// headers of every response.
async fn guard(State(ui): State<Ui>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let base = base_of(&parts);
    let (csrf, new_csrf) = match access::cookie(&parts.headers, CSRF_COOKIE) {
        Some(token) if token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()) => {
            (token.to_owned(), false)
        }
        _ => (uuid::Uuid::new_v4().simple().to_string(), true),
    };
    let path = parts.uri.path().to_owned();
    let api = path.starts_with("/api/") || path.starts_with("/export.");
    let assets_or_login = path.starts_with("/assets/") || path == "/login";
    let access = if assets_or_login {
        Access::read()
    } else {
        (ui.authorize)(&parts).await
    };
    let info = RequestInfo { base, csrf, access };

    let mut response = if !info.access.is_authenticated() {
        pages::unauthorized(&ui, &info, api)
    } else if !info.access.can_read() {
        pages::refused(&info, api, "You may not read the audit trail.")
    } else {
        // The form's CSRF field is in the body: read it (bounded), check, put it back.
        let (body, form_token) = if parts.method == Method::POST && is_form(&parts) {
            match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
                Ok(bytes) => {
                    let token = form_urlencoded::parse(&bytes)
                        .find(|(key, _)| key == "csrf_token")
                        .map(|(_, value)| value.into_owned());
                    (axum::body::Body::from(bytes), token)
                }
                Err(_) => {
                    return (StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response();
                }
            }
        } else {
            (body, None)
        };
        if !access::csrf_ok(&parts.method, &parts.headers, form_token.as_deref()) {
            pages::refused(
                &info,
                api,
                "The request failed the CSRF check: send the page's csrf_token field, or the \
                 bemi_csrf cookie's value in the x-csrf-token header, or a bearer token.",
            )
        } else if parts.method == Method::POST && path != "/login" && !info.access.can_revert() {
            pages::refused(&info, api, "You may not revert: nothing was written.")
        } else {
            parts.extensions.insert(info.clone());
            next.run(Request::from_parts(parts, body)).await
        }
    };

    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if new_csrf {
        let cookie = format!(
            "{CSRF_COOKIE}={}; Path={}; HttpOnly; SameSite=Strict",
            info.csrf,
            info.cookie_path()
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

fn is_form(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"))
}

/// Where the UI is mounted: the original path minus the path the router sees.
fn base_of(parts: &Parts) -> String {
    let inner = parts.uri.path();
    let Some(OriginalUri(original)) = parts.extensions.get::<OriginalUri>() else {
        return String::new();
    };
    let original = original.path();
    if let Some(base) = original.strip_suffix(inner) {
        return base.trim_end_matches('/').to_owned();
    }
    if inner == "/" {
        return original.trim_end_matches('/').to_owned();
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn links_follow_the_mount_point() {
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let app = Router::new().nest("/audit", router(pool, UiOptions::new().token("t", false)));
        for path in ["/audit", "/audit/changes/1", "/audit/tail?table=x"] {
            let (status, body) = get(&app, path).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert!(body.contains("action=\"/audit/login\""), "{path}: {body}");
            assert!(body.contains("href=\"/audit/assets/bemi.css\""), "{path}");
        }
        let (status, _) = get(&app, "/audit/assets/bemi.js").await;
        assert_eq!(status, StatusCode::OK);
        let (_, body) = get(&app, "/audit").await;
        assert!(body.contains("class=\"brand\" href=\"/audit\""), "{body}");
        let root = router(
            PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap(),
            UiOptions::new().token("t", false),
        );
        let (_, body) = get(&root, "/").await;
        assert!(body.contains("class=\"brand\" href=\"/\""), "{body}");
    }
}
