//! The JSON API: `GET /api/changes`, `POST /api/revert`, `GET /api/tail` (server-sent events).

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bemi_audit::{Follower, Revert, RevertError};
use futures_util::{Stream, StreamExt as _, stream};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::filters::{FilterError, Filters, encode_cursor};
use crate::render::change_row;
use crate::{RequestInfo, Ui};

/// How often the live tail looks for new changes when there were none.
pub(crate) const TAIL_INTERVAL: Duration = Duration::from_millis(500);
/// The changes the live tail starts with.
const TAIL_LATEST: u64 = 20;

/// An API error: a status and `{"error": "…"}`.
pub(crate) struct ApiError(StatusCode, String);

impl From<FilterError> for ApiError {
    fn from(error: FilterError) -> Self {
        match error {
            FilterError::Database(error) => error.into(),
            FilterError::Hidden { .. } => not_found(),
            other => Self(StatusCode::BAD_REQUEST, other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if crate::pages::is_missing_table(&error) {
            return Self(
                StatusCode::SERVICE_UNAVAILABLE,
                crate::pages::NO_CHANGES_TABLE.into(),
            );
        }
        tracing::error!(%error, "bemi-ui: reading the audit trail failed");
        Self(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the audit trail could not be read; the server's log says why".into(),
        )
    }
}

/// The 404 of anything outside the request's scope (the same as for what does not exist).
pub(crate) fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "not found".into())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

/// `GET /api/changes?<filters>`: `{"changes": [...], "next": <cursor or null>}`.
pub(crate) async fn changes(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let filters = Filters::parse(query.as_deref().unwrap_or(""))?;
    let (changes, next) = filters.page_in(&ui.audit, info.access.scope_ref()).await?;
    let next = next.as_ref().map(encode_cursor);
    Ok(Json(json!({"changes": changes, "next": next})))
}

/// The body of `POST /api/revert`: one target, and whether to only plan (default) or force.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevertRequest {
    change: Option<Uuid>,
    transaction: Option<i64>,
    /// The source cluster (the `source` of the changes), for a transaction id that clusters
    /// whose databases share a name both used.
    source: Option<String>,
    context: Option<Map<String, Value>>,
    /// Only plan (the default: nothing is written unless `"dry_run": false`).
    #[serde(default = "yes")]
    dry_run: bool,
    #[serde(default)]
    force: bool,
}

fn yes() -> bool {
    true
}

/// `POST /api/revert`: the plan (dry run) or the report; 409 with the conflicts when rows
/// changed since and the revert is not forced.
pub(crate) async fn revert(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    Json(request): Json<RevertRequest>,
) -> Result<Response, ApiError> {
    // PostgreSQL's text and jsonb hold no NUL: such a target would fail in the database.
    let context_nul = request.context.as_ref().is_some_and(|context| {
        context
            .iter()
            .any(|(k, v)| k.contains('\0') || bemi_audit::holds_nul(v))
    });
    if context_nul || request.source.as_deref().is_some_and(|s| s.contains('\0')) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "a NUL character (\\u0000) is in no stored change: leave it out of \"context\" \
             and \"source\""
                .into(),
        ));
    }
    let revert = match (request.change, request.transaction, request.context) {
        (Some(id), None, None) => Revert::change(id),
        (None, Some(id), None) => Revert::transaction(id),
        (None, None, Some(context)) if !context.is_empty() => Revert::context(context),
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "send exactly one of \"change\" (an id), \"transaction\" (an id) or \"context\" \
                 (a non-empty object)"
                    .into(),
            ));
        }
    }
    .force(request.force);
    let revert = match request.source {
        Some(source) => revert.source(source),
        None => revert,
    };
    let allowed = match crate::pages::revert_scope(&ui, &info, &revert).await {
        Ok(allowed) => allowed,
        Err(crate::pages::OutOfScope::NotFound) => return Err(not_found()),
        Err(crate::pages::OutOfScope::Revert(error)) => return Err(revert_error(error)),
    };
    let revert = ui.bounded(
        revert,
        info.access.actor_context(),
        request.dry_run,
        allowed,
    );
    let scope = info.access.scope_ref();
    if request.dry_run {
        let mut plan = revert
            .plan(&ui.audit, &ui.source)
            .await
            .map_err(revert_error)?;
        scope.redact_revert(&mut plan.statements, &mut plan.conflicts);
        let script = plan.script();
        return Ok(Json(json!({"dry_run": true, "plan": plan, "script": script})).into_response());
    }
    let actor = info.access.actor_context().clone();
    match bemi_core::context::scope(actor, revert.run(&ui.audit, &ui.source)).await {
        Ok(mut report) => {
            scope.redact_revert(&mut report.statements, &mut report.overridden);
            Ok(Json(json!({"dry_run": false, "report": report})).into_response())
        }
        Err(RevertError::Conflicts(mut conflicts)) => {
            scope.redact_revert(&mut [], &mut conflicts);
            Ok((
            StatusCode::CONFLICT,
            Json(json!({
                "error": "rows changed since: nothing was written (send \"force\": true to overwrite them)",
                "conflicts": conflicts,
            })),
        )
            .into_response())
        }
        Err(error) => Err(revert_error(error)),
    }
}

fn revert_error(error: RevertError) -> ApiError {
    match error {
        RevertError::Database(error) => error.into(),
        RevertError::Refused { reason } => ApiError(
            StatusCode::FORBIDDEN,
            format!("the revert was refused, nothing was written: {reason}"),
        ),
        RevertError::TooMany { max } => {
            ApiError(StatusCode::FORBIDDEN, crate::pages::too_many_message(max))
        }
        other => ApiError(StatusCode::BAD_REQUEST, other.to_string()),
    }
}

/// `GET /api/tail?<filters>`: server-sent events, one `change` event per new change (its
/// data: the change's row of the list, as HTML escaped like every page), the latest few
/// first. One poller per router wakes the open tails; at most `max_tails` stream at once (else
/// 503); a tail ends when its caller may no longer read (checked every `tail_recheck`).
pub(crate) async fn tail(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filters = Filters::parse(query.as_deref().unwrap_or(""))?;
    let Some(subscription) = ui.tail.join() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} live tails are open, the most this server allows (UiOptions::max_tails):                  close one, or try again later",
                ui.tail.max()
            ),
        ));
    };
    let query = filters
        .first_page()
        .query_in(&ui.audit, info.access.scope_ref())
        .await?;
    let (follower, latest) = Follower::start(ui.audit.clone(), query, TAIL_LATEST).await?;
    let row = {
        let ui = ui.clone();
        let info = info.clone();
        move |change: &bemi_audit::Change| {
            let change = info.access.scope_ref().redact(change.clone());
            Event::default()
                .event("change")
                .id(change.id.to_string())
                .data(change_row(&info, &ui.user_key, &change).into_string())
        }
    };
    let first: Vec<Event> = latest.iter().map(&row).collect();
    let state = TailState {
        next_check: tokio::time::Instant::now() + ui.tail_recheck,
        ui,
        recheck: info.recheck.clone(),
        follower,
        subscription,
        // Look once right away: changes between the start and the poller's first wake-up.
        pending: true,
    };
    let pages = stream::unfold(state, move |mut state| {
        let row = row.clone();
        async move {
            let events = state.next(&row).await?;
            Some((stream::iter(events), state))
        }
    })
    .flatten();
    let events = stream::iter(first).chain(pages).map(Ok);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The most pages a tail reads per wake-up (then it waits for the next one).
const TAIL_PAGES_PER_WAKE: usize = 20;

/// An open tail.
struct TailState {
    ui: Ui,
    recheck: crate::tail::Recheck,
    follower: Follower,
    subscription: crate::tail::Subscription,
    next_check: tokio::time::Instant,
    pending: bool,
}

impl TailState {
    /// The next events; `None` ends the stream (the caller may no longer read, or the UI
    /// stopped).
    async fn next(&mut self, row: &impl Fn(&bemi_audit::Change) -> Event) -> Option<Vec<Event>> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            if self.pending {
                self.pending = false;
                let mut events = Vec::new();
                for _ in 0..TAIL_PAGES_PER_WAKE {
                    match self.follower.next_page().await {
                        Ok(page) if page.is_empty() => break,
                        Ok(page) => events.extend(page.iter().map(row)),
                        Err(error) => {
                            tracing::warn!(%error, "bemi-ui: the live tail could not read; retrying");
                            events.push(Event::default().event("lagging").data("retrying"));
                            break;
                        }
                    }
                }
                if !events.is_empty() {
                    return Some(events);
                }
            }
            tokio::select! {
                tick = self.subscription.ticks.recv() => match tick {
                    Ok(()) | Err(RecvError::Lagged(_)) => self.pending = true,
                    Err(RecvError::Closed) => return None,
                },
                () = tokio::time::sleep_until(self.next_check) => {
                    if !self.ui.may_still_read(&self.recheck).await {
                        return None;
                    }
                    self.next_check = tokio::time::Instant::now() + self.ui.tail_recheck;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use sqlx::PgPool;
    use tower::ServiceExt as _;

    use crate::{UiOptions, router};

    /// Regression: a NUL in a revert's context or source failed in the database (a 500); the
    /// database (unreachable here) is not asked.
    #[tokio::test]
    async fn a_revert_target_with_a_nul_is_a_400() {
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let app = router(pool, UiOptions::new().token("t", true));
        for body in [
            r#"{"context": {"request_id": "r\u0000"}}"#,
            r#"{"context": {"a": [{"\u0000": 1}]}}"#,
            r#"{"transaction": 1, "source": "\u0000"}"#,
        ] {
            let request = Request::post("/api/revert")
                .header("host", "127.0.0.1")
                .header("authorization", "Bearer t")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let text = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&text);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
            assert!(text.contains("leave it out"), "{body}: {text}");
        }
    }
}
