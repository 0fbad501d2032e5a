//! The activity feed: one readable line per change ("user 7 changed todo 3: task 'Buy milk' →
//! 'Buy oat milk'"), read-only, meant to be shown to a host app's end customers inside the
//! app. `GET /feed` (a page) and `GET /api/feed` (its JSON), with the change list's filters and
//! the request's scope: hidden fields are named as hidden, never shown.

use axum::Extension;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use bemi_audit::{Change, Operation};
use maud::html;
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::ApiError;
use crate::filters::{Filters, encode_cursor};
use crate::pages::PageError;
use crate::render::{page, scalar_text, short};
use crate::{RequestInfo, Scope, Ui};

/// The most fields one line names (the rest: "and N more").
const MAX_FIELDS: usize = 4;
/// The most characters of one value in a line.
const MAX_VALUE_CHARS: usize = 60;

/// One line of the feed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct FeedEntry {
    id: uuid::Uuid,
    committed_at: chrono::DateTime<chrono::Utc>,
    /// Who: the user key's value, or `null` (a change without one).
    actor: Value,
    table: String,
    primary_key: Option<String>,
    operation: Operation,
    /// The fields that changed: `{"field", "before", "after"}`, or `{"field", "hidden": true}`.
    fields: Vec<Value>,
    /// The sentence.
    line: String,
}

/// The feed entry of `change` (as stored) for `scope`.
pub(crate) fn entry(change: &Change, scope: &Scope, user_key: &str) -> FeedEntry {
    let table = if change.schema == "public" {
        change.table.clone()
    } else {
        format!("{}.{}", change.schema, change.table)
    };
    let actor = if scope.hides_context_key(user_key) {
        Value::Null
    } else {
        change.context.get(user_key).cloned().unwrap_or(Value::Null)
    };
    let who = match &actor {
        Value::Null => "someone".to_owned(),
        value => format!(
            "{user_key_word} {}",
            scalar_text(value),
            user_key_word = user_word(user_key)
        ),
    };
    let verb = match change.operation {
        Operation::Create => "created",
        Operation::Update => "changed",
        Operation::Delete => "deleted",
        Operation::Truncate => "emptied",
    };
    let row = match &change.primary_key {
        Some(key) => format!("{table} {key}"),
        None => table.clone(),
    };
    let mut fields = Vec::new();
    let mut parts = Vec::new();
    let diff = change.diff();
    let shown_fields = diff.iter().filter(|(field, _)| {
        matches!(change.operation, Operation::Update) || field.as_str() != "id"
    });
    for (field, (before, after)) in shown_fields {
        if scope.hides_column(Some(&change.table), field) {
            fields.push(json!({"field": field, "hidden": true}));
            parts.push(format!("{field} (hidden)"));
            continue;
        }
        fields.push(json!({"field": field, "before": before, "after": after}));
        parts.push(match change.operation {
            Operation::Update => format!("{field} {} → {}", quoted(before), quoted(after)),
            Operation::Create => format!("{field} {}", quoted(after)),
            Operation::Delete | Operation::Truncate => format!("{field} {}", quoted(before)),
        });
    }
    let mut line = format!("{who} {verb} {row}");
    if !matches!(change.operation, Operation::Delete | Operation::Truncate) && !parts.is_empty() {
        line.push_str(": ");
        line.push_str(&parts[..parts.len().min(MAX_FIELDS)].join(", "));
        if parts.len() > MAX_FIELDS {
            line.push_str(&format!(" and {} more", parts.len() - MAX_FIELDS));
        }
    }
    FeedEntry {
        id: change.id,
        committed_at: change.committed_at,
        actor,
        table,
        primary_key: change.primary_key.clone(),
        operation: change.operation,
        fields,
        line,
    }
}

/// `user_id` → `user`, `actor` → `actor`.
fn user_word(key: &str) -> &str {
    key.strip_suffix("_id").unwrap_or(key)
}

/// A value in a sentence: strings in quotes, `null` as "nothing", all of it cut short.
fn quoted(value: &Value) -> String {
    match value {
        Value::String(text) => format!("'{}'", short(text, MAX_VALUE_CHARS)),
        Value::Null => "nothing".to_owned(),
        other => short(&other.to_string(), MAX_VALUE_CHARS),
    }
}

/// One page of the feed: entries, newest first, and the next page's filters.
async fn feed_page(
    ui: &Ui,
    info: &RequestInfo,
    filters: &Filters,
) -> Result<(Vec<FeedEntry>, Option<Filters>), crate::filters::FilterError> {
    let scope = info.access.scope_ref();
    let size = filters.page_size();
    let mut changes = filters
        .query_in(&ui.audit, scope)
        .await?
        .limit(size + 1)
        .fetch(&ui.audit)
        .await?;
    let more = changes.len() as u64 > size;
    changes.truncate(usize::try_from(size).unwrap_or(usize::MAX));
    let next = more.then(|| changes.last()).flatten().map(|last| Filters {
        cursor: Some(last.cursor()),
        ..filters.clone()
    });
    let entries = changes
        .iter()
        .map(|change| entry(change, scope, &ui.user_key))
        .collect();
    Ok((entries, next))
}

/// `GET /api/feed?<filters>`: `{"entries": [...], "next": <cursor or null>}`.
pub(crate) async fn api(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let filters = Filters::parse(query.as_deref().unwrap_or(""))?;
    let (entries, next) = feed_page(&ui, &info, &filters).await?;
    let next = next.and_then(|f| f.cursor).as_ref().map(encode_cursor);
    Ok(Json(json!({"entries": entries, "next": next})))
}

/// `GET /feed?<filters>`: the feed as a page.
pub(crate) async fn page_handler(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let filters = Filters::parse(query.as_deref().unwrap_or(""))?;
    let (entries, next) = feed_page(&ui, &info, &filters).await?;
    let body = html! {
        @if entries.is_empty() { p.empty { "No activity yet." } }
        ol.feed {
            @for entry in &entries {
                li.feed-entry data-id=(entry.id) {
                    time datetime=(entry.committed_at.to_rfc3339()) { (entry.committed_at.format("%Y-%m-%d %H:%M UTC")) }
                    " "
                    span.line { (entry.line) }
                }
            }
        }
        @if let Some(next) = next { nav.pages { a.next href={ (info.path("/feed")) "?" (next.to_query()) } { "Older »" } } }
    };
    Ok(page(&info, "Activity", body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(operation: &str, before: Value, after: Value, context: Value) -> Change {
        serde_json::from_value(json!({
            "id": "00000000-0000-0000-0000-000000000000",
            "primary_key": "3",
            "before": before, "after": after, "context": context,
            "database": "app", "schema": "public", "table": "todo", "operation": operation,
            "committed_at": "2026-01-01T00:00:00Z", "queued_at": "2026-01-01T00:00:00Z",
            "created_at": "2026-01-01T00:00:00Z", "transaction_id": 1, "position": 1,
        }))
        .unwrap()
    }

    #[test]
    fn one_readable_line_per_change() {
        let scope = Scope::new();
        let update = change(
            "UPDATE",
            json!({"id": 3, "task": "Buy milk", "done": false}),
            json!({"id": 3, "task": "Buy oat milk", "done": false}),
            json!({"user_id": 7}),
        );
        assert_eq!(
            entry(&update, &scope, "user_id").line,
            "user 7 changed todo 3: task 'Buy milk' → 'Buy oat milk'"
        );
        let create = change(
            "CREATE",
            json!({}),
            json!({"id": 3, "task": "Sleep"}),
            json!({}),
        );
        assert_eq!(
            entry(&create, &scope, "user_id").line,
            "someone created todo 3: task 'Sleep'"
        );
        let delete = change(
            "DELETE",
            json!({"id": 3, "task": "x"}),
            json!({}),
            json!({"user_id": "ann"}),
        );
        assert_eq!(
            entry(&delete, &scope, "user_id").line,
            "user ann deleted todo 3"
        );
    }

    #[test]
    fn hidden_fields_are_named_not_shown() {
        let scope = Scope::new()
            .hide_columns(["secret"])
            .hide_context_keys(["user_id"]);
        let update = change(
            "UPDATE",
            json!({"id": 3, "secret": "old-secret"}),
            json!({"id": 3, "secret": "new-secret"}),
            json!({"user_id": 7}),
        );
        let entry = entry(&update, &scope, "user_id");
        assert_eq!(entry.line, "someone changed todo 3: secret (hidden)");
        let text = serde_json::to_string(&entry).unwrap();
        assert!(
            !text.contains("secret\"") || !text.contains("old-secret"),
            "{text}"
        );
        assert!(
            !text.contains("old-secret") && !text.contains("new-secret") && !text.contains('7')
        );
    }
}
