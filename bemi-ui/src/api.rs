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
const TAIL_INTERVAL: Duration = Duration::from_millis(500);
/// The changes the live tail starts with.
const TAIL_LATEST: u64 = 20;

/// An API error: a status and `{"error": "…"}`.
pub(crate) struct ApiError(StatusCode, String);

impl From<FilterError> for ApiError {
    fn from(error: FilterError) -> Self {
        match error {
            FilterError::Database(error) => error.into(),
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

/// `GET /api/changes?<filters>`: `{"changes": [...], "next": <cursor or null>}`.
pub(crate) async fn changes(
    State(ui): State<Ui>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let filters = Filters::parse(query.as_deref().unwrap_or(""))?;
    let (changes, next) = filters.page(&ui.audit).await?;
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
            .any(|(k, v)| k.contains('\0') || holds_nul(v))
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
    if request.dry_run {
        let plan = revert
            .plan(&ui.audit, &ui.source)
            .await
            .map_err(revert_error)?;
        let script = plan.script();
        return Ok(Json(json!({"dry_run": true, "plan": plan, "script": script})).into_response());
    }
    let actor = info.access.actor_context().clone();
    match bemi_core::context::scope(actor, revert.run(&ui.audit, &ui.source)).await {
        Ok(report) => Ok(Json(json!({"dry_run": false, "report": report})).into_response()),
        Err(RevertError::Conflicts(conflicts)) => Ok((
            StatusCode::CONFLICT,
            Json(json!({
                "error": "rows changed since: nothing was written (send \"force\": true to overwrite them)",
                "conflicts": conflicts,
            })),
        )
            .into_response()),
        Err(error) => Err(revert_error(error)),
    }
}

/// Whether a string of `value`, or a key of one of its objects, holds U+0000.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn revert_error(error: RevertError) -> ApiError {
    match error {
        RevertError::Database(error) => error.into(),
        other => ApiError(StatusCode::BAD_REQUEST, other.to_string()),
    }
}

/// `GET /api/tail?<filters>`: server-sent events, one `change` event per new change (its
/// data: the change's row of the list, as HTML escaped like every page), the latest few
/// first.
pub(crate) async fn tail(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filters = Filters::parse(query.as_deref().unwrap_or(""))?;
    let query = filters.first_page().query(&ui.audit).await?;
    let (follower, latest) = Follower::start(ui.audit.clone(), query, TAIL_LATEST).await?;
    let row = {
        let ui = ui.clone();
        move |change: &bemi_audit::Change| {
            Event::default()
                .event("change")
                .id(change.id.to_string())
                .data(change_row(&info, &ui.user_key, change).into_string())
        }
    };
    let first: Vec<Event> = latest.iter().map(&row).collect();
    let pages = follower.into_stream(TAIL_INTERVAL).flat_map(move |page| {
        let events: Vec<Event> = match page {
            Ok(changes) => changes.iter().map(&row).collect(),
            Err(error) => {
                tracing::warn!(%error, "bemi-ui: the live tail could not read; retrying");
                vec![Event::default().event("lagging").data("retrying")]
            }
        };
        stream::iter(events)
    });
    let events = stream::iter(first).chain(pages).map(Ok);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
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
