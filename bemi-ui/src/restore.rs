//! `POST /restore`: the "table as of" page's restore button — a dry run first (the statements,
//! and the rows the audit trail did not see), then the restore itself in one transaction with
//! the context `{"restore_to": …}` and the acting user. Revert permission (the guard checks it
//! and CSRF); a scope must reach the whole table (no forced filter, nothing hidden); with a
//! revert policy but no restore policy, restores from the UI are refused.

use axum::Extension;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bemi_audit::{Restore, RestoreError, RestorePlan};
use chrono::{SecondsFormat, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use crate::pages::PageError;
use crate::render::{csrf_field, json_block, may_restore, page, segment};
use crate::{RequestInfo, Ui};

/// The restore form's fields.
#[derive(Debug, Deserialize)]
pub(crate) struct RestoreForm {
    table: String,
    at: String,
    #[serde(default)]
    dry_run: Option<String>,
    #[serde(default)]
    force: Option<String>,
}

/// `POST /restore`.
pub(crate) async fn restore(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    Form(form): Form<RestoreForm>,
) -> Result<Response, PageError> {
    if !info.access.scope_ref().admits_table_name(&form.table) {
        return Err(PageError::not_found());
    }
    if !may_restore(&ui, &info) {
        return Ok(crate::pages::refused(
            &info,
            false,
            "A restore rewrites every row of a table: it needs the revert permission, a scope \
             without forced filters or hidden fields, and — where a revert policy is set — a \
             restore policy (UiOptions::restore_policy). Nothing was written.",
        ));
    }
    let at = crate::filters::resolve(Some(&form.at), "at", &ui.audit, Utc::now())
        .await?
        .unwrap_or_else(Utc::now);
    let force = form.force.as_deref() == Some("1");
    let dry_run = form.dry_run.as_deref() != Some("0");
    let mut restore = Restore::new([form.table.clone()], at).force(force);
    if let Some(policy) = &ui.restore_policy {
        let policy = std::sync::Arc::clone(policy);
        restore = restore.policy(move |plan| policy(plan));
    }
    let back = format!(
        "{}/tables/{}?at={}",
        info.base,
        segment(&form.table),
        segment(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
    );
    if dry_run {
        let plan = restore
            .plan(&ui.audit, &ui.source)
            .await
            .map_err(restore_error)?;
        let body = plan_body(&info, &form, &plan, &back);
        return Ok(page(&info, "Restore: dry run", body).into_response());
    }
    let actor = info.access.actor_context().clone();
    match bemi_core::context::scope(actor, restore.run(&ui.audit, &ui.source)).await {
        Ok(report) => {
            let body = html! {
                p.done { "Restored " (form.table) " with " (report.statements.len()) " statement" @if report.statements.len() != 1 { "s" } "; " (report.rows_affected) " row" @if report.rows_affected != 1 { "s" } " written with the context:" }
                (json_block(&report.context))
                p { a href=(back) { "Back to the table" } }
            };
            Ok(page(&info, "Restored", body).into_response())
        }
        Err(RestoreError::Drift { drift, untracked }) => {
            let body = html! {
                p.error { "Nothing was written: " (drift.len() + untracked.len()) " row(s) changed where the audit trail could not see it." }
                ul.conflicts {
                    @for conflict in &drift { li { (conflict.to_string()) } }
                    @for conflict in &untracked { li { (conflict.schema) "." (conflict.table) " " (conflict.primary_key) ": not in the audit trail" } }
                }
                (apply_form(&info, &form, true))
            };
            Ok((StatusCode::CONFLICT, page(&info, "Restore refused", body)).into_response())
        }
        Err(error) => Err(restore_error(error)),
    }
}

fn plan_body(info: &RequestInfo, form: &RestoreForm, plan: &RestorePlan, back: &str) -> Markup {
    let unseen = plan.drift.len() + plan.untracked.len();
    html! {
        p { "Makes " (form.table) " as it was at " (plan.to.format("%Y-%m-%d %H:%M:%S%.6f UTC")) " with " strong { (plan.statements.len()) } " statement" @if plan.statements.len() != 1 { "s" } ", in one transaction. Nothing has been written yet." }
        @if unseen > 0 {
            div.conflicts {
                p.error { (unseen) " row(s) changed where the audit trail could not see it: the restore refuses unless forced (it then overwrites the rows that differ and keeps the rows the trail never saw)." }
                ul { @for conflict in &plan.drift { li { (conflict.to_string()) } } }
            }
        }
        h2 { "SQL" }
        pre.sql id="plan" { (plan.script()) }
        (apply_form(info, form, unseen > 0))
        p { a href=(back) { "Back to the table" } }
    }
}

fn apply_form(info: &RequestInfo, form: &RestoreForm, offer_force: bool) -> Markup {
    html! {
        form method="post" action={ (info.base) "/restore" } {
            (csrf_field(info))
            input type="hidden" name="table" value=(form.table);
            input type="hidden" name="at" value=(form.at);
            input type="hidden" name="dry_run" value="0";
            @if offer_force { label { input type="checkbox" name="force" value="1"; " overwrite the rows the trail did not see" } " " }
            button id="apply" type="submit" { "Apply the restore" }
        }
    }
}

fn restore_error(error: RestoreError) -> PageError {
    match error {
        RestoreError::Database(error) => error.into(),
        RestoreError::Refused { reason } => PageError::forbidden(format!(
            "The restore was refused, nothing was written: {reason}"
        )),
        other => PageError::bad_request(other.to_string()),
    }
}
