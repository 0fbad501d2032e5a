//! The HTML every page shares: the layout, a change's row, JSON values (escaped, large ones
//! collapsed and cut), the diff — and the stylesheet and script, served from the binary.

use std::fmt::Write as _;

use axum::http::header;
use axum::response::IntoResponse;
use bemi_audit::{Change, Operation};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use crate::{RequestInfo, Ui};

const STYLESHEET: &str = include_str!("../assets/bemi.css");
const SCRIPT: &str = include_str!("../assets/bemi.js");

/// A value's JSON text longer than this is shown cut, in a collapsed block.
pub(crate) const MAX_SHOWN_BYTES: usize = 2_000;
/// A value's JSON text longer than this is cut even when expanded (the API has it whole).
pub(crate) const MAX_EXPANDED_BYTES: usize = 64 * 1024;

/// `GET /assets/bemi.css`.
pub(crate) async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLESHEET,
    )
}

/// `GET /assets/bemi.js`.
pub(crate) async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        SCRIPT,
    )
}

/// A whole page.
pub(crate) fn page(info: &RequestInfo, title: &str, body: Markup) -> Markup {
    let base = &info.base;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · bemi audit trail" }
                link rel="stylesheet" href={ (base) "/assets/bemi.css" };
                script src={ (base) "/assets/bemi.js" } defer {}
            }
            body data-base=(base) data-csrf=(info.csrf) {
                header {
                    a.brand href=(info.home()) { "bemi audit trail" }
                    nav {
                        a href=(info.home()) { "Changes" }
                        a href={ (base) "/tail" } { "Live tail" }
                        @if info.access.scope_ref().is_everything() {
                            a href={ (base) "/verify" } { "Verify" }
                        }
                        @if info.session.is_some() {
                            form.inline.logout method="post" action={ (base) "/logout" } {
                                (csrf_field(info))
                                button type="submit" id="logout" { "Sign out" }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A path segment, percent-encoded (a table or key with `/`, `?` or `#` stays one segment).
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The link to a change.
pub(crate) fn change_href(info: &RequestInfo, change: &Change) -> String {
    format!("{}/changes/{}", info.base, change.id)
}

/// `schema.table`, or the table alone in `public`.
pub(crate) fn table_name(change: &Change) -> String {
    if change.schema == "public" {
        change.table.clone()
    } else {
        format!("{}.{}", change.schema, change.table)
    }
}

/// The link to a row's timeline.
pub(crate) fn row_href(info: &RequestInfo, change: &Change) -> Option<String> {
    let key = change.primary_key.as_deref()?;
    Some(format!(
        "{}/rows/{}/{}",
        info.base,
        segment(&table_name(change)),
        segment(key)
    ))
}

/// The link to a user's activity, for the value of the user key.
pub(crate) fn user_href(info: &RequestInfo, value: &Value) -> String {
    format!("{}/users/{}", info.base, segment(&value.to_string()))
}

/// The header row of a list of changes.
pub(crate) fn change_table_head() -> Markup {
    html! {
        thead { tr { th { "Committed" } th { "Table" } th { "Key" } th { "Operation" } th { "Context" } th { "Changed" } } }
    }
}

/// One change as a row of a list (the list, the live tail, a transaction's changes).
pub(crate) fn change_row(info: &RequestInfo, user_key: &str, change: &Change) -> Markup {
    let diff = change.diff();
    let changed: Vec<&String> = diff.keys().take(6).collect();
    html! {
        tr.change data-id=(change.id) {
            td.time { a href=(change_href(info, change)) { (format_time(change)) } }
            td { (table_name(change)) }
            td.key {
                @match row_href(info, change) {
                    Some(href) => a href=(href) { (short(change.primary_key.as_deref().unwrap_or(""), 40)) },
                    None => span.muted { "—" },
                }
            }
            td { (operation_badge(change.operation)) }
            td.context { (context_summary(info, user_key, &change.context)) }
            td.changed {
                @for field in &changed { code { (short(field, 40)) } " " }
                @if diff.len() > changed.len() { span.muted { "+" (diff.len() - changed.len()) } }
            }
        }
    }
}

/// The commit time as it is stored (UTC, µs).
pub(crate) fn format_time(change: &Change) -> String {
    change
        .committed_at
        .format("%Y-%m-%d %H:%M:%S%.6f UTC")
        .to_string()
}

pub(crate) fn operation_badge(operation: Operation) -> Markup {
    let class = match operation {
        Operation::Create => "op create",
        Operation::Update => "op update",
        Operation::Delete => "op delete",
        Operation::Truncate => "op truncate",
    };
    html! { span class=(class) { (operation.as_str()) } }
}

/// The first keys of a context, `key=value`, with the user linked.
pub(crate) fn context_summary(info: &RequestInfo, user_key: &str, context: &Value) -> Markup {
    let Value::Object(map) = context else {
        return html! { span.muted { "—" } };
    };
    let shown: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(key, _)| {
            key.as_str() != bemi_core::protocol::SQL_KEY
                && key.as_str() != bemi_core::signing::VERDICT_KEY
        })
        .take(4)
        .collect();
    html! {
        (signature_badge(context))
        @if shown.is_empty() { span.muted { "none" } }
        @for (key, value) in shown {
            span.pair {
                span.k { (short(key, 30)) } "="
                @if key.as_str() == user_key {
                    a.v href=(user_href(info, value)) { (short(&scalar_text(value), 60)) }
                } @else {
                    span.v { (short(&scalar_text(value), 60)) }
                }
            }
            " "
        }
    }
}

/// Whether the context's signature held, as the worker judged it (`_bemi_signature`, with a
/// context key): a badge — "signed", "unsigned" or "forged" — or nothing when the worker was
/// given no key (or the value is not one of the three: shown as the other context keys are).
pub(crate) fn signature_badge(context: &Value) -> Markup {
    let verdict = context
        .get(bemi_core::signing::VERDICT_KEY)
        .and_then(Value::as_str);
    let (class, text, title) = match verdict {
        Some("valid") => (
            "sig valid",
            "signed",
            "signed by the application, and the signature holds",
        ),
        Some("unsigned") => (
            "sig unsigned",
            "unsigned",
            "the context carries no signature",
        ),
        Some("forged") => (
            "sig forged",
            "forged",
            "the signature does not hold: a wrong MAC, a time too far from the commit, or replayed",
        ),
        _ => return html! {},
    };
    html! { span class=(class) title=(title) { (text) } " " }
}

/// A JSON value as text: strings without quotes, everything else as JSON.
pub(crate) fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `text` cut to `max` characters, with `…`.
pub(crate) fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or(text)),
        None => text.to_owned(),
    }
}

/// A JSON value, pretty-printed and escaped; past [`MAX_SHOWN_BYTES`] collapsed, past
/// [`MAX_EXPANDED_BYTES`] cut.
pub(crate) fn json_block(value: &Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    if text.len() <= MAX_SHOWN_BYTES {
        return html! { pre.json { (text) } };
    }
    let preview = cut_bytes(&text, 200);
    let expanded = cut_bytes(&text, MAX_EXPANDED_BYTES);
    html! {
        details.large {
            summary { "large value (" (text.len()) " bytes): " code { (preview) "…" } }
            pre.json { (expanded) @if expanded.len() < text.len() { "\n… cut at " (MAX_EXPANDED_BYTES) " bytes: the API returns it whole" } }
        }
    }
}

/// A field's value in a diff cell: short values inline, long ones collapsed.
pub(crate) fn value_cell(value: &Value) -> Markup {
    let text = value.to_string();
    if text.len() <= 200 {
        html! { code.value { (text) } }
    } else {
        json_block(value)
    }
}

fn cut_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    text.get(..text.floor_char_boundary(max))
        .unwrap_or_default()
}

/// The diff of a change: changed fields, then the unchanged ones collapsed.
pub(crate) fn diff_table(change: &Change) -> Markup {
    let diff = change.diff();
    let unchanged: Vec<(&String, &Value)> = match (&change.before, &change.after) {
        (Value::Object(before), Value::Object(after)) => before
            .iter()
            .filter(|(key, value)| after.get(*key) == Some(value))
            .collect(),
        _ => Vec::new(),
    };
    html! {
        table.diff {
            thead { tr { th { "Field" } th { "Before" } th { "After" } } }
            tbody {
                @for (field, (before, after)) in &diff {
                    tr.changed { td { code { (field) } } td.before { (value_cell(before)) } td.after { (value_cell(after)) } }
                }
                @if diff.is_empty() { tr { td colspan="3" .muted { "no field changed" } } }
            }
        }
        @if !unchanged.is_empty() {
            details.unchanged {
                summary { (unchanged.len()) " unchanged field" @if unchanged.len() != 1 { "s" } }
                table.diff { tbody {
                    @for (field, value) in &unchanged { tr { td { code { (field) } } td colspan="2" { (value_cell(value)) } } }
                } }
            }
        }
    }
}

/// A hidden CSRF field for a form.
pub(crate) fn csrf_field(info: &RequestInfo) -> Markup {
    html! { input type="hidden" name="csrf_token" value=(info.csrf); }
}

/// The restore button of the "table as of" page, when this request may restore the table.
pub(crate) fn restore_button(
    ui: &Ui,
    info: &RequestInfo,
    table: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Markup {
    if !may_restore(ui, info) {
        return html! {};
    }
    html! {
        form.inline.restore method="post" action={ (info.base) "/restore" } {
            (csrf_field(info))
            input type="hidden" name="table" value=(table);
            input type="hidden" name="at" value=(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
            input type="hidden" name="dry_run" value="1";
            button id="restore" type="submit" { "Restore the table to this instant…" }
        }
    }
}

/// Whether this request may restore tables: revert permission, a scope that reaches whole
/// tables, and a restore policy if there is a revert policy.
pub(crate) fn may_restore(ui: &Ui, info: &RequestInfo) -> bool {
    info.access.can_revert()
        && info.access.scope_ref().reaches_whole_tables()
        && (ui.revert_policy.is_none() || ui.restore_policy.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_keep_hostile_keys_in_one_segment() {
        assert_eq!(segment("a/b?c#d e"), "a%2Fb%3Fc%23d%20e");
        assert_eq!(segment("javascript:alert(1)"), "javascript%3Aalert%281%29");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn values_are_escaped_and_large_ones_cut() {
        let hostile =
            Value::String("<script>alert(1)</script>\"><img src=x onerror=alert(1)>".into());
        let html = json_block(&hostile).into_string();
        assert!(
            !html.contains("<script>") && !html.contains("<img"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;"), "{html}");
        let big = Value::String("x".repeat(200_000));
        let html = json_block(&big).into_string();
        assert!(html.len() < MAX_EXPANDED_BYTES + 2_000, "{}", html.len());
        assert!(html.contains("<details"), "collapsed");
    }

    #[test]
    fn short_cuts_at_characters() {
        assert_eq!(short("ééé", 2), "éé…");
        assert_eq!(short("ab", 2), "ab");
    }
}
