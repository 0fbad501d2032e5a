//! The HTML pages.

use std::collections::BTreeSet;

use axum::Extension;
use axum::extract::{Form, Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use bemi_audit::{
    Change, ChangeQuery, Revert, RevertError, RevertPlan, RowState, TablePageCursor, TimeTravel,
};
use chrono::{TimeDelta, Utc};
use futures_util::{StreamExt as _, TryStreamExt as _};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::filters::{FilterError, Filters};
use crate::render::{
    change_href, change_row, change_table_head, context_summary, csrf_field, diff_table,
    format_time, json_block, operation_badge, page, row_href, scalar_text, segment, table_name,
};
use crate::{RequestInfo, SESSION_COOKIE, Ui};

/// The most entries a row's timeline shows.
const MAX_TIMELINE: usize = 500;
/// Rows per page of a table as of an instant.
const TABLE_PAGE_ROWS: u64 = 100;
/// The changes of a change's request: same context, within this much time of it.
const REQUEST_WINDOW_MINUTES: i64 = 5;

/// An error shown as a page.
pub(crate) struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl PageError {
    /// 403 with a message that says why.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
        }
    }

    /// The 404 of anything outside the request's scope (the same as for what does not exist).
    pub(crate) fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: "Not found.".into(),
        }
    }
}

impl From<FilterError> for PageError {
    fn from(error: FilterError) -> Self {
        match error {
            FilterError::Database(error) => error.into(),
            FilterError::Hidden { .. } => Self::not_found(),
            other => Self::bad_request(other.to_string()),
        }
    }
}

/// The message for a `changes` table that does not exist (yet).
pub(crate) const NO_CHANGES_TABLE: &str = "There is no `changes` table in this database yet: \
     the capture worker creates it when it starts (`bemi worker`), or point the UI at the \
     database it writes to (`bemi ui --destination-url`).";

/// Whether `error` says that the `changes` table is missing.
pub(crate) fn is_missing_table(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .is_some_and(|code| code == "42P01")
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> Self {
        if is_missing_table(&error) {
            return Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: NO_CHANGES_TABLE.into(),
            };
        }
        tracing::error!(%error, "bemi-ui: reading the audit trail failed");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "The audit trail could not be read; the server's log says why.".into(),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = html! {
            (maud::DOCTYPE)
            html lang="en" { head { meta charset="utf-8"; title { "Error" } }
                body { h1 { (self.status) } p.error { (self.message) } } }
        };
        (self.status, body).into_response()
    }
}

type PageResult = Result<Response, PageError>;

/// The filter form of the change list and the live tail.
fn filter_form(info: &RequestInfo, action: &str, filters: &Filters) -> Markup {
    let operations = ["", "CREATE", "UPDATE", "DELETE", "TRUNCATE"];
    let selected = filters.operation.map_or("", bemi_audit::Operation::as_str);
    let mut contexts: Vec<&str> = filters.context.iter().map(|(w, _, _)| w.as_str()).collect();
    contexts.push("");
    html! {
        form.filters method="get" action=(info.path(action)) {
            label { "Table " input name="table" value=[filters.table.as_deref()] placeholder="todo"; }
            label { "Key " input name="pk" value=[filters.pk.as_deref()] size="8"; }
            label { "Operation "
                select name="operation" {
                    @for op in operations {
                        option value=(op) selected[op == selected] { @if op.is_empty() { "any" } @else { (op) } }
                    }
                }
            }
            @for written in contexts {
                label { "Context " input name="context" value=(written) placeholder="user_id=187234"; }
            }
            label { "Since " input name="since" value=[filters.since.as_deref()] placeholder="15m, 2026-12-03 12:00" size="14"; }
            label { "Until " input name="until" value=[filters.until.as_deref()] size="14"; }
            label { "Field changed " input name="changed" value=[filters.changed.as_deref()] size="10"; }
            label { "Transaction " input name="transaction" value=[filters.transaction] size="10"; }
            button type="submit" { "Filter" }
            a.reset href=(info.path(action)) { "Reset" }
        }
    }
}

/// `GET /`: the change list.
pub(crate) async fn list(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    RawQuery(query): RawQuery,
) -> PageResult {
    let filters = Filters::parse(query.as_deref().unwrap_or(""))?;
    let (changes, next) = filters.page_in(&ui.audit, info.access.scope_ref()).await?;
    let next = next.map(|cursor| Filters {
        cursor: Some(cursor),
        ..filters.clone()
    });
    let export_query = filters.first_page().to_query();
    let body = html! {
        (filter_form(&info, "/", &filters))
        p.actions {
            a href={ (info.base) "/export.csv?" (export_query) } { "Export CSV" }
            " · "
            a href={ (info.base) "/export.ndjson?" (export_query) } { "Export NDJSON" }
            " · "
            a href={ (info.base) "/tail?" (export_query) } { "Follow live" }
        }
        (changes_table(&ui, &info, &changes))
        nav.pages {
            @if filters.cursor.is_some() { a href={ (info.home()) "?" (filters.first_page().to_query()) } { "« First page" } " " }
            @if let Some(next) = &next { a.next href={ (info.home()) "?" (next.to_query()) } { "Next page »" } }
        }
    };
    Ok(page(&info, "Changes", body).into_response())
}

fn changes_table(ui: &Ui, info: &RequestInfo, changes: &[Change]) -> Markup {
    html! {
        @if changes.is_empty() {
            p.empty { "No change matches." }
        } @else {
            table.changes {
                (change_table_head())
                tbody { @for change in changes { (change_row(info, &ui.user_key, change)) } }
            }
        }
    }
}

/// The context of a change's request: its context without the `SQL` key.
fn request_context(change: &Change) -> Option<Map<String, Value>> {
    let Value::Object(context) = &change.context else {
        return None;
    };
    let mut request = context.clone();
    request.remove(bemi_core::protocol::SQL_KEY);
    (!request.is_empty()).then_some(request)
}

/// The change with this id, if the request's scope admits it (else 404, as for an id no
/// change has). Not redacted: for the revert; redact it for display.
async fn find_change(ui: &Ui, info: &RequestInfo, id: &str) -> Result<Change, PageError> {
    let id = Uuid::parse_str(id).map_err(|_| PageError::bad_request("not a change id"))?;
    let scope = info.access.scope_ref();
    scope
        .restrict(ChangeQuery::new().id(id))
        .fetch(&ui.audit)
        .await?
        .into_iter()
        .find(|change| scope.admits(change))
        .ok_or(PageError {
            status: StatusCode::NOT_FOUND,
            message: "No change has this id.".into(),
        })
}

/// `GET /changes/{id}`: one change.
pub(crate) async fn detail(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    Path(id): Path<String>,
) -> PageResult {
    let scope = info.access.scope_ref();
    let change = scope.redact(find_change(&ui, &info, &id).await?);
    let transaction = scope
        .restrict(
            ChangeQuery::new()
                .transaction_id(change.transaction_id)
                .source(change.source.clone())
                .database(change.database.clone())
                .oldest_first()
                .limit(200),
        )
        .fetch(&ui.audit)
        .await?;
    let transaction: Vec<Change> = transaction.into_iter().map(|c| scope.redact(c)).collect();
    let window = TimeDelta::minutes(REQUEST_WINDOW_MINUTES);
    // The request's context as stored (hidden keys too: they are part of what makes it the
    // same request), inside the scope; shown redacted.
    let request = match &request_context_of(&ui, &info, &change).await? {
        Some(context) => {
            let mut query = ChangeQuery::new()
                .since(change.committed_at - window)
                .until(change.committed_at + window)
                .oldest_first()
                .limit(200);
            for (key, value) in context {
                query = query.context(key.clone(), value.clone());
            }
            scope
                .restrict(query)
                .fetch(&ui.audit)
                .await?
                .into_iter()
                .map(|c| scope.redact(c))
                .collect()
        }
        None => Vec::new(),
    };
    let sql = change
        .context
        .get(bemi_core::protocol::SQL_KEY)
        .map(scalar_text);
    let title = format!(
        "{} {} {}",
        change.operation,
        table_name(&change),
        change.primary_key.as_deref().unwrap_or("")
    );
    let at_before = (change.committed_at - TimeDelta::microseconds(1)).to_rfc3339();
    let body = html! {
        p.meta {
            (operation_badge(change.operation)) " "
            "committed " (format_time(&change)) " · transaction " (change.transaction_id)
            " · database " (change.database)
            @if let Some(href) = row_href(&info, &change) { " · " a href=(href) { "the row's timeline" } }
            " · " a href={ (info.base) "/tables/" (segment(&table_name(&change))) "?at=" (segment(&at_before)) } { "the table just before" }
        }
        section { h2 { "Diff" } (diff_table(&change)) }
        section { h2 { "Context" } (json_block(&change.context)) }
        @if let Some(sql) = &sql { section { h2 { "SQL" } pre.sql { (sql) } } }
        section {
            h2 { "Its transaction (" (transaction.len()) ")" }
            (changes_table(&ui, &info, &transaction))
        }
        section {
            h2 { "Its request" }
            p.muted { "Changes with the same context (without SQL), within " (REQUEST_WINDOW_MINUTES) " minutes." }
            (changes_table(&ui, &info, &request))
        }
        @if info.access.can_revert() {
            section.revert {
                h2 { "Revert" }
                p { "A dry run shows the statements and any conflicting rows first." }
                (revert_button(&info, &change, "change", "Revert this change"))
                (revert_button(&info, &change, "transaction", "Revert its transaction"))
                @if !request.is_empty() { (revert_button(&info, &change, "request", "Revert its request")) }
            }
        }
    };
    Ok(page(&info, &title, body).into_response())
}

/// The request context of `change` as stored (not redacted), read again by id.
async fn request_context_of(
    ui: &Ui,
    info: &RequestInfo,
    change: &Change,
) -> Result<Option<Map<String, Value>>, PageError> {
    let stored = find_change(ui, info, &change.id.to_string()).await?;
    Ok(request_context(&stored))
}

fn revert_button(info: &RequestInfo, change: &Change, kind: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action={ (info.base) "/revert" } {
            (csrf_field(info))
            input type="hidden" name="change" value=(change.id);
            input type="hidden" name="kind" value=(kind);
            input type="hidden" name="dry_run" value="1";
            button type="submit" data-kind=(kind) { (label) "…" }
        }
    }
}

/// `GET /rows/{table}/{pk}`: a row's timeline.
pub(crate) async fn row_timeline(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    Path((table, pk)): Path<(String, String)>,
) -> PageResult {
    let scope = info.access.scope_ref();
    if !scope.admits_table_name(&table) {
        return Err(PageError::not_found());
    }
    // The row's changes inside the scope (read on past those outside it).
    let history: Vec<Change> = TimeTravel::table(&table)
        .history(&ui.audit, &pk)
        .try_filter(|change| std::future::ready(scope.admits(change)))
        .take(MAX_TIMELINE + 1)
        .map_ok(|change| scope.redact(change))
        .try_collect()
        .await?;
    if history.is_empty() && !scope.is_everything() {
        return Err(PageError::not_found());
    }
    let cut = history.len() > MAX_TIMELINE;
    let body = html! {
        @if history.is_empty() { p.empty { "No change of this row is in the audit trail." } }
        ol.timeline {
            @for change in history.iter().take(MAX_TIMELINE) {
                li.entry {
                    p {
                        a href=(change_href(&info, change)) { (format_time(change)) } " "
                        (operation_badge(change.operation)) " "
                        (context_summary(&info, &ui.user_key, &change.context))
                    }
                    (diff_table(change))
                    details.snapshot {
                        summary { "As of this change" }
                        @if matches!(change.operation, bemi_audit::Operation::Delete | bemi_audit::Operation::Truncate) {
                            p.muted { "The row did not exist after this change." }
                        } @else {
                            (json_block(&change.after))
                        }
                    }
                }
            }
        }
        @if cut { p.muted { "The first " (MAX_TIMELINE) " changes; the API has the rest." } }
    };
    Ok(page(&info, &format!("Row {pk} of {table}"), body).into_response())
}

/// `GET /tables/{table}?at=TIME`: a table as of an instant, paged.
pub(crate) async fn table_at(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    Path(table): Path<String>,
    RawQuery(query): RawQuery,
) -> PageResult {
    let scope = info.access.scope_ref();
    if !scope.admits_table_name(&table) {
        return Err(PageError::not_found());
    }
    let query = query.unwrap_or_default();
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .filter(|value| !value.trim().is_empty())
    };
    let at_text = param("at");
    let at = crate::filters::resolve(at_text.as_deref(), "at", &ui.audit, Utc::now())
        .await?
        .unwrap_or_else(Utc::now);
    let after = match (param("after_pk"), param("after_schema"), param("after_db")) {
        (Some(primary_key), Some(schema), Some(database)) => Some(TablePageCursor {
            primary_key,
            schema,
            database,
        }),
        _ => None,
    };
    let rows = TimeTravel::table(&table)
        .table_at_page(&ui.audit, at, after.as_ref(), TABLE_PAGE_ROWS + 1)
        .await?;
    let more = rows.len() as u64 > TABLE_PAGE_ROWS;
    let rows = &rows[..rows.len().min(TABLE_PAGE_ROWS as usize)];
    // The page's cursor comes from its last row, in scope or not; the rows shown are those
    // whose state comes from a change inside the scope, hidden values replaced.
    let next_cursor = more.then(|| rows.last()).flatten().map(TablePageCursor::of);
    let rows: Vec<RowState> = rows
        .iter()
        .filter(|state| scope.admits(&state.change))
        .map(|state| RowState {
            change: scope.redact(state.change.clone()),
        })
        .collect();
    let rows = rows.as_slice();
    let columns: BTreeSet<String> = rows
        .iter()
        .filter_map(|state| state.row().as_object())
        .flat_map(|row| row.keys().cloned())
        .collect();
    let next = next_cursor.map(|cursor| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("at", &at.to_rfc3339())
            .append_pair("after_pk", &cursor.primary_key)
            .append_pair("after_schema", &cursor.schema)
            .append_pair("after_db", &cursor.database)
            .finish()
    });
    let body = html! {
        form.filters method="get" {
            label { "As of " input name="at" value=(at_text.clone().unwrap_or_else(|| at.to_rfc3339())) size="32"; }
            button type="submit" { "Show" }
        }
        p.muted { "Rows as they were at " (at.format("%Y-%m-%d %H:%M:%S%.6f UTC")) ", in key order." }
        (crate::render::restore_button(&ui, &info, &table, at))
        @if rows.is_empty() { p.empty { "No row of this table existed then (or none was captured)." } }
        @else {
            table.snapshot {
                thead { tr { th { "Key" } @for column in &columns { th { (column) } } th { "Since" } } }
                tbody {
                    @for state in rows {
                        tr {
                            td.key { @if let Some(href) = row_href(&info, &state.change) { a href=(href) { (state.primary_key()) } } }
                            @for column in &columns {
                                td { @if let Some(value) = state.row().get(column) { (crate::render::value_cell(value)) } }
                            }
                            td.time { a href=(change_href(&info, &state.change)) { (format_time(&state.change)) } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next { nav.pages { a.next href={ "?" (next) } { "Next page »" } } }
    };
    Ok(page(
        &info,
        &format!("{table} as of {}", at.format("%Y-%m-%d %H:%M:%S UTC")),
        body,
    )
    .into_response())
}

/// One line of a user's activity: schema, table, operation, changes, first and last.
type ActivityRow = (
    String,
    String,
    String,
    i64,
    chrono::DateTime<Utc>,
    chrono::DateTime<Utc>,
);

/// `GET /users/{value}`: one user's activity (the user key's value as JSON, or as text).
pub(crate) async fn user_activity(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    Path(value): Path<String>,
) -> PageResult {
    let scope = info.access.scope_ref();
    if scope.hides_context_key(&ui.user_key) {
        return Err(PageError::not_found());
    }
    let user: Value = serde_json::from_str(&value).unwrap_or(Value::String(value.clone()));
    let of_user = scope.restrict(ChangeQuery::new().context(ui.user_key.clone(), user.clone()));
    let mut summary = of_user.filter_builder(
        "schema, \"table\", operation, count(*), min(committed_at), max(committed_at)",
    );
    summary.push(" GROUP BY 1, 2, 3 ORDER BY 1, 2, 3");
    let summary: Vec<ActivityRow> = summary.build_query_as().fetch_all(&ui.audit).await?;
    let latest: Vec<Change> = of_user
        .limit(50)
        .fetch(&ui.audit)
        .await?
        .into_iter()
        .map(|c| scope.redact(c))
        .collect();
    let all = Filters::parse(&format!(
        "context={}",
        segment(&format!("{}={}", ui.user_key, user))
    ))
    .map(|filters| filters.to_query())
    .unwrap_or_default();
    let body = html! {
        @if summary.is_empty() { p.empty { "No change carries this user." } }
        @else {
            table.summary {
                thead { tr { th { "Table" } th { "Operation" } th { "Changes" } th { "First" } th { "Last" } } }
                tbody {
                    @for (schema, table, operation, count, first, last) in &summary {
                        tr {
                            td { @if schema != "public" { (schema) "." } (table) }
                            td { (operation) } td { (count) }
                            td { (first.format("%Y-%m-%d %H:%M:%S UTC")) } td { (last.format("%Y-%m-%d %H:%M:%S UTC")) }
                        }
                    }
                }
            }
            h2 { "Latest changes" }
            (changes_table(&ui, &info, &latest))
            p { a href={ (info.home()) "?" (all) } { "All of this user's changes, with filters »" } }
        }
    };
    Ok(page(
        &info,
        &format!("Activity of {} = {}", ui.user_key, scalar_text(&user)),
        body,
    )
    .into_response())
}

/// `GET /tail`: new changes as they arrive.
pub(crate) async fn tail(
    Extension(info): Extension<RequestInfo>,
    RawQuery(query): RawQuery,
) -> PageResult {
    let filters = Filters::parse(query.as_deref().unwrap_or(""))?;
    let body = html! {
        (filter_form(&info, "/tail", &filters))
        p.tail-controls {
            button id="pause" type="button" { "Pause" }
            " " span id="tail-status" { "connecting…" }
        }
        table.changes id="tail" data-source={ (info.base) "/api/tail?" (filters.first_page().to_query()) } {
            (change_table_head())
            tbody {}
        }
    };
    Ok(page(&info, "Live tail", body).into_response())
}

/// A revert form's fields.
#[derive(Debug, Deserialize)]
pub(crate) struct RevertForm {
    change: String,
    kind: String,
    #[serde(default)]
    dry_run: Option<String>,
    #[serde(default)]
    force: Option<String>,
}

/// What a revert of `change` by `kind` (`change`, `transaction` or `request`) undoes.
pub(crate) fn revert_of(change: &Change, kind: &str) -> Result<Revert, PageError> {
    match kind {
        "change" => Ok(Revert::change(change.id)),
        "transaction" => Ok(match &change.source {
            Some(source) => Revert::transaction(change.transaction_id).source(source.clone()),
            // Stored before sources were: its commit is what tells the transaction apart.
            None => Revert::transaction(change.transaction_id)
                .since(change.committed_at)
                .until(change.committed_at + TimeDelta::microseconds(1)),
        }),
        "request" => {
            let context = request_context(change)
                .ok_or_else(|| PageError::bad_request("this change has no request context"))?;
            let window = TimeDelta::minutes(REQUEST_WINDOW_MINUTES);
            Ok(Revert::context(context)
                .since(change.committed_at - window)
                .until(change.committed_at + window))
        }
        _ => Err(PageError::bad_request(
            "kind is change, transaction or request",
        )),
    }
}

/// `POST /revert`: a dry run (the plan, with a button to apply it) or the revert itself.
pub(crate) async fn revert(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    Form(form): Form<RevertForm>,
) -> PageResult {
    let change = find_change(&ui, &info, &form.change).await?;
    let force = form.force.as_deref() == Some("1");
    let dry_run = form.dry_run.as_deref() != Some("0");
    let revert = revert_of(&change, &form.kind)?.force(force);
    let allowed = match revert_scope(&ui, &info, &revert).await {
        Ok(allowed) => allowed,
        Err(OutOfScope::NotFound) => return Err(PageError::not_found()),
        Err(OutOfScope::Revert(error)) => return Err(revert_error(error)),
    };
    let revert = ui.bounded(revert, info.access.actor_context(), dry_run, allowed);
    let scope = info.access.scope_ref();
    if dry_run {
        let mut plan = revert
            .plan(&ui.audit, &ui.source)
            .await
            .map_err(revert_error)?;
        scope.redact_revert(&mut plan.statements, &mut plan.conflicts);
        return Ok(page(
            &info,
            "Revert: dry run",
            plan_body(&info, &change, &form.kind, &plan),
        )
        .into_response());
    }
    let actor = info.access.actor_context().clone();
    match bemi_core::context::scope(actor, revert.run(&ui.audit, &ui.source)).await {
        Ok(report) => {
            let body = html! {
                p.done { "Reverted " (report.changes) " change" @if report.changes != 1 { "s" } "; " (report.rows_affected) " row" @if report.rows_affected != 1 { "s" } " written with the context:" }
                (json_block(&report.context))
                p { a href=(change_href(&info, &change)) { "Back to the change" } }
            };
            Ok(page(&info, "Reverted", body).into_response())
        }
        Err(RevertError::Conflicts(mut conflicts)) => {
            scope.redact_revert(&mut [], &mut conflicts);
            let body = html! {
                p.error { "Nothing was written: " (conflicts.len()) " row" @if conflicts.len() != 1 { "s" } " changed afterwards." }
                ul.conflicts { @for conflict in &conflicts { li { (conflict.to_string()) } } }
                (apply_form(&info, &change, &form.kind, true))
            };
            Ok((StatusCode::CONFLICT, page(&info, "Revert refused", body)).into_response())
        }
        Err(error) => Err(revert_error(error)),
    }
}

/// Why a revert is not inside the request's scope.
pub(crate) enum OutOfScope {
    /// Some change it would undo is outside (or none matches): a 404.
    NotFound,
    /// Planning it failed.
    Revert(RevertError),
}

/// For a request with a scope: plans `revert` and checks that every change it undoes is
/// inside; the ids, which the real revert may then undo and no other (`None`: no scope).
pub(crate) async fn revert_scope(
    ui: &Ui,
    info: &RequestInfo,
    revert: &Revert,
) -> Result<Option<std::collections::HashSet<Uuid>>, OutOfScope> {
    let scope = info.access.scope_ref();
    if scope.is_everything() {
        return Ok(None);
    }
    let plan = ui
        .bounded(revert.clone(), info.access.actor_context(), true, None)
        .plan(&ui.audit, &ui.source)
        .await;
    let plan = match plan {
        Ok(plan) => plan,
        Err(RevertError::NothingToRevert { .. }) => return Err(OutOfScope::NotFound),
        Err(error) => return Err(OutOfScope::Revert(error)),
    };
    match scope.admits_all(&ui.audit, &plan.changes).await {
        Ok(true) => Ok(Some(plan.changes.into_iter().collect())),
        Ok(false) => Err(OutOfScope::NotFound),
        Err(error) => Err(OutOfScope::Revert(error.into())),
    }
}

fn revert_error(error: RevertError) -> PageError {
    match error {
        RevertError::Database(error) => error.into(),
        RevertError::Refused { reason } => PageError {
            status: StatusCode::FORBIDDEN,
            message: format!("The revert was refused, nothing was written: {reason}"),
        },
        RevertError::TooMany { max } => PageError {
            status: StatusCode::FORBIDDEN,
            message: too_many_message(max),
        },
        other => PageError::bad_request(other.to_string()),
    }
}

/// The refusal of a revert past the UI's limit.
pub(crate) fn too_many_message(max: u64) -> String {
    format!(
        "This revert would undo more than {max} changes, the most the web UI may undo at once          (UiOptions::max_revert_changes): nothing was written. Revert fewer, or use `bemi revert          --max-changes N` from a shell with access to the database."
    )
}

fn plan_body(info: &RequestInfo, change: &Change, kind: &str, plan: &RevertPlan) -> Markup {
    html! {
        p { "Undoes " strong { (plan.changes.len()) } " change" @if plan.changes.len() != 1 { "s" } " with " (plan.statements.len()) " statement" @if plan.statements.len() != 1 { "s" } ", in one transaction. Nothing has been written yet." }
        @if !plan.conflicts.is_empty() {
            div.conflicts {
                p.error { (plan.conflicts.len()) " row" @if plan.conflicts.len() != 1 { "s" } " changed afterwards: the revert refuses unless forced." }
                ul { @for conflict in &plan.conflicts { li { (conflict.to_string()) } } }
            }
        }
        h2 { "SQL" }
        pre.sql id="plan" { (plan.script()) }
        (apply_form(info, change, kind, !plan.conflicts.is_empty()))
        p { a href=(change_href(info, change)) { "Cancel" } }
    }
}

fn apply_form(info: &RequestInfo, change: &Change, kind: &str, offer_force: bool) -> Markup {
    html! {
        form method="post" action={ (info.base) "/revert" } {
            (csrf_field(info))
            input type="hidden" name="change" value=(change.id);
            input type="hidden" name="kind" value=(kind);
            input type="hidden" name="dry_run" value="0";
            @if offer_force { label { input type="checkbox" name="force" value="1"; " overwrite the rows that changed since" } " " }
            button id="apply" type="submit" { "Apply the revert" }
        }
    }
}

/// `GET /login`: `bemi ui`'s token form.
pub(crate) async fn login_form(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
) -> Response {
    login_page(&ui, &info, StatusCode::OK, None)
}

fn login_page(ui: &Ui, info: &RequestInfo, status: StatusCode, error: Option<&str>) -> Response {
    let body = html! {
        @if ui.token.is_none() { p { "This audit trail is not protected by a token: sign in to the application that hosts it." } }
        @else {
            @if let Some(error) = error { p.error { (error) } }
            form method="post" action={ (info.base) "/login" } {
                (csrf_field(info))
                label { "Token " input type="password" name="token" autofocus; }
                button type="submit" { "Sign in" }
            }
        }
    };
    (status, page(info, "Sign in", body)).into_response()
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// `POST /login`: exchanges the right token for a new session (a random id kept in this
/// process's memory; the cookie never holds the token). Failed logins are logged and limited
/// per client address.
pub(crate) async fn login(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    Form(form): Form<LoginForm>,
) -> Response {
    match &ui.token {
        Some(token)
            if crate::security::constant_time_eq(form.token.as_bytes(), token.as_bytes()) =>
        {
            let session = ui.sessions.open();
            tracing::info!(client = ?info.client, "bemi-ui: signed in");
            let mut response = Redirect::to(&info.home()).into_response();
            let ttl = ui.sessions.ttl().as_secs();
            if let Some(value) = ui.set_cookie(&info, SESSION_COOKIE, &session, Some(ttl)) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            response
        }
        Some(_) => {
            ui.logins.failed(info.client);
            tracing::warn!(client = ?info.client, "bemi-ui: a failed login (wrong token)");
            login_page(&ui, &info, StatusCode::UNAUTHORIZED, Some("Wrong token."))
        }
        None => login_page(&ui, &info, StatusCode::NOT_FOUND, None),
    }
}

/// `POST /logout`: ends the session and deletes its cookie.
pub(crate) async fn logout(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
) -> Response {
    if let Some(session) = &info.session {
        ui.sessions.close(session);
    }
    let mut response = Redirect::to(&info.path("/login")).into_response();
    if let Some(value) = ui.set_cookie(&info, SESSION_COOKIE, "", Some(0)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// 429: too many failed logins from this address.
pub(crate) fn too_many_attempts(wait: std::time::Duration, api: bool) -> Response {
    let message = format!(
        "Too many failed sign-ins from this address: try again in {} seconds.",
        wait.as_secs().max(1)
    );
    let mut response = if api {
        (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({"error": message})),
        )
            .into_response()
    } else {
        (StatusCode::TOO_MANY_REQUESTS, message).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// 401: the login page (HTML) or a JSON error (API, exports).
pub(crate) fn unauthorized(ui: &Ui, info: &RequestInfo, api: bool) -> Response {
    let mut response = if api {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "sign in: send Authorization: Bearer <token>"})),
        )
            .into_response()
    } else {
        login_page(ui, info, StatusCode::UNAUTHORIZED, None)
    };
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// 403 with a reason.
pub(crate) fn refused(info: &RequestInfo, api: bool, reason: &str) -> Response {
    if api {
        (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({"error": reason})),
        )
            .into_response()
    } else {
        (
            StatusCode::FORBIDDEN,
            page(info, "Not allowed", html! { p.error { (reason) } }),
        )
            .into_response()
    }
}

/// 404.
pub(crate) async fn not_found(Extension(info): Extension<RequestInfo>) -> Response {
    (
        StatusCode::NOT_FOUND,
        page(&info, "Not found", html! { p { "No such page." } }),
    )
        .into_response()
}
