#![doc = include_str!("../README.md")]

mod access;
mod api;
mod export;
mod feed;
pub mod filters;
mod pages;
mod render;
mod restore;
mod scope;
mod security;
mod tail;
mod verify;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bemi_audit::RevertPlan;
use serde_json::{Map, Value};
use sqlx::PgPool;

pub use access::Access;
pub use filters::{FilterError, Filters};
pub use scope::{HIDDEN, Scope};
pub use security::PublicUrlError;

use access::{AccessFuture, Authorize, CSRF_FIELD, CSRF_HEADER};
use security::{CsrfKey, LoginLimiter, PublicOrigin, Sessions};
use tail::{Recheck, TailHub};

/// How long a `bemi ui` session lasts by default.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// How many live tails may stream at once by default.
pub const DEFAULT_MAX_TAILS: usize = 32;
/// How often an open live tail asks again whether its caller may still read, by default.
pub const DEFAULT_TAIL_RECHECK: Duration = Duration::from_secs(10);
/// The most changes one revert from the UI may undo by default.
pub const DEFAULT_MAX_REVERT_CHANGES: u64 = 100;

/// What a revert policy ([`UiOptions::revert_policy`]) sees: the plan, who asks, and whether
/// it is the dry run or the real thing — before anything is written.
///
/// ```
/// use bemi_ui::{RevertCheck, UiOptions};
///
/// let options = UiOptions::new().revert_policy(|check: &RevertCheck<'_>| {
///     if check.tables().keys().any(|table| table.starts_with("billing.")) {
///         return Err("billing tables are reverted by the billing team: ask them".into());
///     }
///     if check.actor().get("role").and_then(|r| r.as_str()) != Some("admin")
///         && check.plan().changes.len() > 10
///     {
///         return Err("more than 10 changes need an admin".into());
///     }
///     Ok(())
/// });
/// # let _ = options;
/// ```
#[derive(Debug)]
pub struct RevertCheck<'a> {
    plan: &'a RevertPlan,
    actor: &'a Map<String, Value>,
    dry_run: bool,
}

impl RevertCheck<'_> {
    /// The plan: the changes, the statements, the conflicts.
    #[must_use]
    pub fn plan(&self) -> &RevertPlan {
        self.plan
    }

    /// How many changes of each table (`schema.table`) it undoes.
    #[must_use]
    pub fn tables(&self) -> &BTreeMap<String, usize> {
        &self.plan.tables
    }

    /// Who asks: the keys of [`Access::actor`].
    #[must_use]
    pub fn actor(&self) -> &Map<String, Value> {
        self.actor
    }

    /// Whether this is the dry run (nothing would be written yet).
    #[must_use]
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }
}

/// A revert policy, boxed.
type RevertPolicy = Arc<dyn Fn(&RevertCheck<'_>) -> Result<(), String> + Send + Sync>;
/// A restore policy, boxed.
pub(crate) type RestorePolicy =
    Arc<dyn Fn(&bemi_audit::RestorePlan) -> Result<(), String> + Send + Sync>;

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
    allow_revert: bool,
    user_key: String,
    public: Option<PublicOrigin>,
    session_ttl: Duration,
    max_tails: usize,
    tail_recheck: Duration,
    max_revert_changes: u64,
    revert_policy: Option<RevertPolicy>,
    restore_policy: Option<RestorePolicy>,
    verify_key: Option<bemi_audit::checkpoint::PublicKey>,
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
            .field(
                "public_url",
                &self.public.as_ref().map(PublicOrigin::origin),
            )
            .field("session_ttl", &self.session_ttl)
            .field("max_tails", &self.max_tails)
            .field("max_revert_changes", &self.max_revert_changes)
            .finish_non_exhaustive()
    }
}

impl UiOptions {
    /// Read-only access for every request (mount it behind your authentication, or give it
    /// [`authorize`](Self::authorize)); reverts write to the `changes` table's database.
    /// Only loopback `Host`s are served until [`public_url`](Self::public_url) names another.
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
            allow_revert: false,
            user_key: "user_id".to_owned(),
            public: None,
            session_ttl: DEFAULT_SESSION_TTL,
            max_tails: DEFAULT_MAX_TAILS,
            tail_recheck: DEFAULT_TAIL_RECHECK,
            max_revert_changes: DEFAULT_MAX_REVERT_CHANGES,
            revert_policy: None,
            restore_policy: None,
            verify_key: None,
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

    /// `bemi ui`'s authentication: every request needs `Authorization: Bearer <token>` or a
    /// session of the login page (`/login`), which exchanges the token for a random session id
    /// kept in this process's memory (a restart signs everyone out); the token holder may
    /// revert if `allow_revert`.
    ///
    /// ```
    /// let options = bemi_ui::UiOptions::new().token("s3cret", false);
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn token(mut self, token: impl Into<String>, allow_revert: bool) -> Self {
        let token = token.into();
        self.token = Some(Arc::from(token.as_str()));
        self.allow_revert = allow_revert;
        let access = if allow_revert {
            Access::revert()
        } else {
            Access::read()
        }
        .actor(serde_json::json!({"reverted_by": "bemi ui (token)"}));
        self.authorize = Arc::new(move |_: &Parts| -> AccessFuture {
            let access = access.clone();
            Box::pin(async move { access })
        });
        self
    }

    /// The origin people reach the UI at (`https://audit.example.com`; a path, where the UI is
    /// mounted, is allowed and ignored): only requests for this `Host` are served (else 421),
    /// writes must come from it, and an `https` origin makes the cookies `Secure` with the
    /// `__Host-` prefix. Without it only loopback hosts (`127.0.0.1`, `localhost`, `[::1]`) are
    /// served — unless a [`token`](Self::token) guards every request — so that a web page whose
    /// name is rebound to this address cannot read the audit trail.
    ///
    /// ```
    /// let options = bemi_ui::UiOptions::new().public_url("https://audit.example.com")?;
    /// # let _ = options;
    /// # Ok::<(), bemi_ui::PublicUrlError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`PublicUrlError`] when `url` is not `http(s)://HOST[:PORT]`.
    pub fn public_url(mut self, url: &str) -> Result<Self, PublicUrlError> {
        self.public = Some(PublicOrigin::parse(url)?);
        Ok(self)
    }

    /// How long a login lasts (default [`DEFAULT_SESSION_TTL`], 12 hours).
    ///
    /// ```
    /// let options = bemi_ui::UiOptions::new()
    ///     .token("s3cret", false)
    ///     .session_ttl(std::time::Duration::from_secs(3600));
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// How many live tails may stream at once (default [`DEFAULT_MAX_TAILS`]); past it a new
    /// one gets 503. One poller per router reads the `changes` table for all of them.
    ///
    /// ```
    /// let options = bemi_ui::UiOptions::new().max_tails(4);
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn max_tails(mut self, max: usize) -> Self {
        self.max_tails = max;
        self
    }

    /// How often an open live tail asks again whether its caller may still read (the
    /// authorization callback, or the session); it ends when not (default
    /// [`DEFAULT_TAIL_RECHECK`]).
    ///
    /// ```
    /// let options = bemi_ui::UiOptions::new().tail_recheck(std::time::Duration::from_secs(5));
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn tail_recheck(mut self, every: Duration) -> Self {
        self.tail_recheck = every.max(Duration::from_millis(10));
        self
    }

    /// The most changes one revert from the UI may undo (default
    /// [`DEFAULT_MAX_REVERT_CHANGES`], 100): past it the revert is refused with 403 and the
    /// message says to use `bemi revert --max-changes`.
    ///
    /// ```
    /// let options = bemi_ui::UiOptions::new().max_revert_changes(20);
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn max_revert_changes(mut self, max: u64) -> Self {
        self.max_revert_changes = max;
        self
    }

    /// A check of every revert's plan (its tables and row counts, the acting user), in the
    /// dry run and again right before the writes: an `Err` refuses it with 403 and the message.
    ///
    /// ```
    /// use bemi_ui::UiOptions;
    ///
    /// let options = UiOptions::new().revert_policy(|check| {
    ///     match check.tables().get("public.invoice") {
    ///         Some(_) => Err("invoices cannot be reverted from the UI".into()),
    ///         None => Ok(()),
    ///     }
    /// });
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn revert_policy<F>(mut self, policy: F) -> Self
    where
        F: Fn(&RevertCheck<'_>) -> Result<(), String> + Send + Sync + 'static,
    {
        self.revert_policy = Some(Arc::new(policy));
        self
    }

    /// A check of every restore's plan (the "table as of" page's restore button), in the dry
    /// run and again right before the writes: an `Err` refuses it with 403 and the message.
    /// With a [`revert_policy`](Self::revert_policy) and no restore policy, restores from the
    /// UI are refused.
    ///
    /// ```
    /// let options = bemi_ui::UiOptions::new().restore_policy(|plan| {
    ///     if plan.tables.iter().any(|t| t.starts_with("billing.")) {
    ///         return Err("billing tables are not restored from the UI".into());
    ///     }
    ///     Ok(())
    /// });
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn restore_policy<F>(mut self, policy: F) -> Self
    where
        F: Fn(&bemi_audit::RestorePlan) -> Result<(), String> + Send + Sync + 'static,
    {
        self.restore_policy = Some(Arc::new(policy));
        self
    }

    /// The public key the verification page (`/verify`) checks the checkpoints' signatures
    /// with (`bemi keygen`'s `.pub`). Without it the page recomputes the chains only — which
    /// whoever can write to the database could recompute too — and says so.
    ///
    /// ```
    /// // In production: the `.pub` file of `bemi keygen`, parsed with `str::parse`.
    /// let key = bemi_audit::checkpoint::SigningKey::generate()
    ///     .expect("the system's randomness")
    ///     .public();
    /// let options = bemi_ui::UiOptions::new().verify_public_key(key);
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn verify_public_key(mut self, key: bemi_audit::checkpoint::PublicKey) -> Self {
        self.verify_key = Some(key);
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
    pub(crate) public: Option<PublicOrigin>,
    pub(crate) csrf_key: CsrfKey,
    pub(crate) sessions: Sessions,
    pub(crate) logins: LoginLimiter,
    pub(crate) tail: TailHub,
    pub(crate) tail_recheck: Duration,
    pub(crate) max_revert_changes: u64,
    pub(crate) revert_policy: Option<RevertPolicy>,
    pub(crate) restore_policy: Option<RestorePolicy>,
    pub(crate) verify_key: Option<bemi_audit::checkpoint::PublicKey>,
}

impl std::ops::Deref for Ui {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Ui {
    /// The name of cookie `name`: `__Host-` first on an https origin (no other host can set
    /// or overwrite it).
    pub(crate) fn cookie_name(&self, name: &str) -> String {
        if self.https() {
            format!("__Host-{name}")
        } else {
            name.to_owned()
        }
    }

    /// Whether the public origin is https.
    pub(crate) fn https(&self) -> bool {
        self.public.as_ref().is_some_and(PublicOrigin::is_https)
    }

    /// `Set-Cookie` for `name=value` (`max_age` in seconds; 0 deletes it).
    pub(crate) fn set_cookie(
        &self,
        info: &RequestInfo,
        name: &str,
        value: &str,
        max_age: Option<u64>,
    ) -> Option<HeaderValue> {
        let https = self.https();
        // `__Host-` cookies must have `Path=/`.
        let path = if https {
            "/".to_owned()
        } else {
            info.cookie_path()
        };
        let mut cookie = format!(
            "{}={value}; Path={path}; HttpOnly; SameSite=Strict",
            self.cookie_name(name)
        );
        if let Some(max_age) = max_age {
            cookie.push_str(&format!("; Max-Age={max_age}"));
        }
        if https {
            cookie.push_str("; Secure");
        }
        HeaderValue::from_str(&cookie).ok()
    }

    /// Whether a tail's caller may still read.
    pub(crate) async fn may_still_read(&self, recheck: &Recheck) -> bool {
        match recheck {
            Recheck::Never => true,
            Recheck::Session(id) => self.sessions.is_valid(id),
            Recheck::Callback(parts) => (self.authorize)(parts).await.can_read(),
        }
    }

    /// A revert from the UI: the limit and the policy (with `actor`) applied; with `allowed`,
    /// the plan may undo only those changes (the ones a dry run found inside the request's
    /// scope).
    pub(crate) fn bounded(
        &self,
        revert: bemi_audit::Revert,
        actor: &Map<String, Value>,
        dry_run: bool,
        allowed: Option<std::collections::HashSet<uuid::Uuid>>,
    ) -> bemi_audit::Revert {
        let revert = revert.max_changes(self.max_revert_changes);
        if self.revert_policy.is_none() && allowed.is_none() {
            return revert;
        }
        let policy = self.revert_policy.clone();
        let actor = actor.clone();
        revert.policy(move |plan| {
            if let Some(allowed) = &allowed
                && plan.changes.iter().any(|id| !allowed.contains(id))
            {
                return Err("more changes match than when it was checked: try again".into());
            }
            match &policy {
                Some(policy) => policy(&RevertCheck {
                    plan,
                    actor: &actor,
                    dry_run,
                }),
                None => Ok(()),
            }
        })
    }
}

/// The names of the UI's cookies (before the `__Host-` prefix).
pub(crate) const CSRF_COOKIE: &str = "bemi_csrf";
/// The session cookie of `bemi ui`'s login.
pub(crate) const SESSION_COOKIE: &str = "bemi_session";

/// What the guard found out about a request, for the handlers.
#[derive(Debug, Clone)]
pub(crate) struct RequestInfo {
    /// The path the UI is mounted at (`""` at the root, `/audit` when nested there).
    pub(crate) base: String,
    /// This session's CSRF token, for the forms of the page.
    pub(crate) csrf: String,
    /// What the caller may do.
    pub(crate) access: Access,
    /// `bemi ui`'s session, when the request came with one.
    pub(crate) session: Option<String>,
    /// The client's address, when the server tells it.
    pub(crate) client: Option<IpAddr>,
    /// How a live tail checks again that its caller may read.
    pub(crate) recheck: Recheck,
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
/// Serve it with `into_make_service_with_connect_info::<SocketAddr>()` so that failed logins
/// are limited per client address (otherwise all clients share one limit).
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
        tail: TailHub::new(audit.clone(), api::TAIL_INTERVAL, options.max_tails),
        audit,
        authorize: options.authorize,
        token: options.token,
        user_key: options.user_key,
        public: options.public,
        csrf_key: CsrfKey::random(),
        sessions: Sessions::new(options.session_ttl),
        logins: LoginLimiter::default(),
        tail_recheck: options.tail_recheck,
        max_revert_changes: options.max_revert_changes,
        revert_policy: options.revert_policy,
        restore_policy: options.restore_policy,
        verify_key: options.verify_key,
    }));
    Router::new()
        .route("/", get(pages::list))
        .route("/changes/{id}", get(pages::detail))
        .route("/rows/{table}/{pk}", get(pages::row_timeline))
        .route("/tables/{table}", get(pages::table_at))
        .route("/users/{value}", get(pages::user_activity))
        .route("/tail", get(pages::tail))
        .route("/feed", get(feed::page_handler))
        .route("/api/feed", get(feed::api))
        .route("/verify", get(verify::page_handler))
        .route("/api/verify", get(verify::api))
        .route("/revert", post(pages::revert))
        .route("/restore", post(restore::restore))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
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

/// The most CSRF cookies of one request that are tried.
const MAX_CSRF_COOKIES: usize = 4;

/// The biggest form body a page posts (a revert's fields).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// How a request authenticated.
enum Credential {
    /// `Authorization: Bearer` with `bemi ui`'s token.
    Bearer,
    /// A session of `bemi ui`'s login.
    Session(String),
    /// The host app's callback decided.
    Callback,
    /// None (or a wrong one).
    None,
}

/// Every request: its `Host` (only the UI's own), the mount point, the caller's access (401 /
/// 403 before any handler runs), the CSRF token bound to the session, the origin and CSRF
/// check and the revert permission of every POST, and the security headers of every response.
async fn guard(State(ui): State<Ui>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let host = security::host_of(&parts.headers, &parts.uri);
    // The activity feed may be framed by the host app's own pages (same origin); it has no
    // form or button to click.
    let embeddable = parts.method == Method::GET && parts.uri.path() == "/feed";
    let mut response =
        if security::host_allowed(host.as_deref(), ui.public.as_ref(), ui.token.is_some()) {
            checked(&ui, &mut parts, body, host.unwrap_or_default(), next).await
        } else {
            tracing::warn!(host = ?host, "bemi-ui: refused a request for another host");
            (
                StatusCode::MISDIRECTED_REQUEST,
                "This audit trail answers only for its own address: without a token, only \
             127.0.0.1, localhost and [::1]. To serve it under another name, set its public \
             URL (bemi ui --public-url https://HOST, env BEMI_UI_PUBLIC_URL; \
             UiOptions::public_url for a mounted router).\n",
            )
                .into_response()
        };
    let headers = response.headers_mut();
    let (frame_ancestors, frame_options) = if embeddable {
        (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'",
            "SAMEORIGIN",
        )
    } else {
        (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            "DENY",
        )
    };
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, frame_ancestors),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, frame_options),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        if name != header::CACHE_CONTROL || !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}

/// [`guard`] for a request of the UI's own host.
async fn checked(
    ui: &Ui,
    parts: &mut Parts,
    body: axum::body::Body,
    host: String,
    next: Next,
) -> Response {
    let base = base_of(parts);
    let client = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    let path = parts.uri.path().to_owned();
    let api = path.starts_with("/api/") || path.starts_with("/export.");
    let open_path = path.starts_with("/assets/") || path == "/login";

    // Who is asking. A client that failed to sign in too often waits before it may try again.
    let tries_token = access::bearer(&parts.headers).is_some()
        || (parts.method == Method::POST && path == "/login");
    if ui.token.is_some()
        && tries_token
        && let Some(wait) = ui.logins.blocked(client)
    {
        return pages::too_many_attempts(wait, api);
    }
    let credential = if ui.token.is_some() {
        token_credential(ui, parts, client)
    } else if open_path {
        Credential::None
    } else {
        Credential::Callback
    };
    let access = match &credential {
        Credential::Bearer | Credential::Session(_) | Credential::Callback => {
            (ui.authorize)(parts).await
        }
        Credential::None if open_path => Access::read(),
        Credential::None => Access::unauthenticated(),
    };

    // The CSRF token: bound to the session (or, before a login and with a host app's callback,
    // to this browser's CSRF cookie) and to the acting user. A sibling subdomain can plant a
    // second cookie of the same name (over http; `__Host-` cookies cannot be planted): every
    // id sent is tried, so the planted one cannot lock the user out, and the origin check
    // refuses the sibling's own posts.
    let csrf_ids: Vec<String> = access::cookies(&parts.headers, &ui.cookie_name(CSRF_COOKIE))
        .into_iter()
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .take(MAX_CSRF_COOKIES)
        .map(str::to_owned)
        .collect();
    let (csrf_id, new_csrf) = match csrf_ids.last() {
        Some(id) => (id.clone(), false),
        None => (security::random_id(), true),
    };
    let session = match &credential {
        Credential::Session(id) => Some(id.clone()),
        _ => None,
    };
    let actor = serde_json::to_string(access.actor_context()).unwrap_or_default();
    let csrf = ui
        .csrf_key
        .token(session.as_deref().unwrap_or(&csrf_id), &actor);
    let recheck = match &credential {
        Credential::Session(id) => Recheck::Session(id.clone()),
        Credential::Callback if path == "/api/tail" => Recheck::Callback(Arc::new(parts.clone())),
        _ => Recheck::Never,
    };
    let info = RequestInfo {
        base,
        csrf,
        access,
        session,
        client,
        recheck,
    };

    let mut response = if !info.access.is_authenticated() {
        pages::unauthorized(ui, &info, api)
    } else if !info.access.can_read() {
        pages::refused(&info, api, "You may not read the audit trail.")
    } else if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        parts.extensions.insert(info.clone());
        next.run(Request::from_parts(parts.clone(), body)).await
    } else {
        // The form's CSRF field is in the body: read it (bounded), check, put it back.
        let (body, form_token) = if is_form(parts) {
            match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
                Ok(bytes) => {
                    let token = form_urlencoded::parse(&bytes)
                        .find(|(key, _)| key == CSRF_FIELD)
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
        let origin = match &ui.public {
            Some(public) => (public.origin(), None),
            None => (format!("http://{host}"), Some(format!("https://{host}"))),
        };
        let presented = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|value| value.to_str().ok())
            .or(form_token.as_deref());
        let token_ok = |presented: &str| match &info.session {
            Some(_) => security::constant_time_eq(presented.as_bytes(), info.csrf.as_bytes()),
            None => csrf_ids.iter().any(|id| {
                let expected = ui.csrf_key.token(id, &actor);
                security::constant_time_eq(presented.as_bytes(), expected.as_bytes())
            }),
        };
        let csrf_ok = matches!(credential, Credential::Bearer)
            || (security::same_origin(&parts.headers, &origin.0, origin.1.as_deref())
                && presented.is_some_and(token_ok));
        if !csrf_ok {
            tracing::warn!(%path, "bemi-ui: refused a write that failed the CSRF check");
            pages::refused(
                &info,
                api,
                "The request failed the CSRF check: it must come from the UI's own pages \
                 (Sec-Fetch-Site: same-origin, or an Origin of the UI's address) with the \
                 page's csrf_token field or its value in the x-csrf-token header — or carry \
                 a bearer token. Nothing was written.",
            )
        } else if !matches!(path.as_str(), "/login" | "/logout") && !info.access.can_revert() {
            pages::refused(&info, api, "You may not revert: nothing was written.")
        } else {
            parts.extensions.insert(info.clone());
            next.run(Request::from_parts(parts.clone(), body)).await
        }
    };
    if new_csrf && let Some(value) = ui.set_cookie(&info, CSRF_COOKIE, &csrf_id, None) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// `bemi ui`'s credentials: the bearer token (a wrong one counts as a failed login) or a
/// session cookie.
fn token_credential(ui: &Ui, parts: &Parts, client: Option<IpAddr>) -> Credential {
    let Some(token) = &ui.token else {
        return Credential::None;
    };
    if let Some(presented) = access::bearer(&parts.headers) {
        if security::constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return Credential::Bearer;
        }
        ui.logins.failed(client);
        tracing::warn!(client = ?client, "bemi-ui: a request with a wrong bearer token");
        return Credential::None;
    }
    match access::cookie(&parts.headers, &ui.cookie_name(SESSION_COOKIE)) {
        Some(id) if ui.sessions.is_valid(id) => Credential::Session(id.to_owned()),
        _ => Credential::None,
    }
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
            .oneshot(
                Request::get(path)
                    .header("host", "127.0.0.1:8080")
                    .body(Body::empty())
                    .unwrap(),
            )
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
