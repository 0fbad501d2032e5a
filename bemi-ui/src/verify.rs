//! The verification page (`GET /verify`) and its JSON (`GET /api/verify`): `bemi verify` in the
//! browser. It recomputes every chain of `changes` and checks the checkpoints (their signatures
//! with the public key of [`UiOptions::verify_public_key`](crate::UiOptions::verify_public_key)),
//! then shows each chain, the newest verified checkpoint, the unchained range and every break.
//!
//! It reads the whole trail, so it runs only when asked, and only for a caller whose scope is
//! everything: a scoped caller (a host app's customer) gets the same 404 as for a page that does
//! not exist — the breaks name changes of every tenant.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bemi_audit::verify::{Verification, Verifier};
use maud::html;
use serde_json::{Value, json};

use crate::api::{ApiError, not_found};
use crate::pages::PageError;
use crate::render::page;
use crate::{RequestInfo, Ui};

/// Runs the verification for `info`'s caller; `None` when its scope is not everything.
async fn run(ui: &Ui, info: &RequestInfo) -> Result<Option<Verification>, sqlx::Error> {
    if !info.access.scope_ref().is_everything() {
        return Ok(None);
    }
    let mut conn = ui.audit.acquire().await?;
    let verifier = Verifier::new().public_key(ui.verify_key);
    verifier.run(&mut conn).await.map(Some)
}

/// The verification as JSON: `intact`, `signatures_checked`, `checkpoints_verified`, `chains`,
/// `unchained` and `breaks` (each break as the sentence `bemi verify` prints).
pub(crate) fn to_json(verification: &Verification) -> Value {
    let chains: Vec<Value> = verification
        .chains
        .iter()
        .map(|chain| {
            json!({
                "chain": chain.chain,
                "changes": chain.changes,
                "first_seq": chain.first_seq,
                "last_seq": chain.last_seq,
                "pruned_through": chain.pruned_through,
                "last_verified_checkpoint": chain.last_verified_checkpoint.map(|(seq, at)| {
                    json!({"seq": seq, "signed_at": at.to_rfc3339()})
                }),
                "unsigned_tail": chain.unsigned_tail,
            })
        })
        .collect();
    json!({
        "intact": verification.is_intact(),
        "signatures_checked": verification.signatures_checked,
        "checkpoints_verified": verification.checkpoints_verified,
        "chains": chains,
        "unchained": {
            "changes": verification.unchained,
            "from": verification.unchained_range.map(|(from, _)| from.to_rfc3339()),
            "to": verification.unchained_range.map(|(_, to)| to.to_rfc3339()),
        },
        "breaks": verification.breaks.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// `GET /api/verify`.
pub(crate) async fn api(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
) -> Result<Json<Value>, ApiError> {
    match run(&ui, &info).await? {
        Some(verification) => Ok(Json(to_json(&verification))),
        None => Err(not_found()),
    }
}

/// `GET /verify`.
pub(crate) async fn page_handler(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
) -> Result<Response, PageError> {
    let Some(verification) = run(&ui, &info).await? else {
        return Err(PageError::not_found());
    };
    let time = |at: chrono::DateTime<chrono::Utc>| at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let body = html! {
        @if verification.is_intact() {
            p.verdict.intact { "No break found: every chain recomputes and every checkpoint holds." }
        } @else {
            p.verdict.broken {
                (verification.breaks.len()) " break"
                @if verification.breaks.len() != 1 { "s" }
                " found: the trail was altered after it was stored."
            }
            ol.breaks {
                @for found in &verification.breaks { li { (found.to_string()) } }
            }
        }
        @if !verification.signatures_checked {
            p.muted {
                "Signatures were not checked (no public key given to the UI): a chain "
                "recomputed by whoever can write to the database would pass."
            }
        } @else {
            p { (verification.checkpoints_verified) " checkpoint signatures verified." }
        }
        table.chains {
            thead { tr { th { "Chain" } th { "Changes" } th { "Numbers" } th { "Newest verified checkpoint" } th { "After it" } } }
            tbody {
                @for chain in &verification.chains {
                    tr {
                        td { code { (chain.chain) } }
                        td { (chain.changes) }
                        td {
                            @if let (Some(first), Some(last)) = (chain.first_seq, chain.last_seq) { (first) "…" (last) }
                            @if let Some(pruned) = chain.pruned_through { " (pruned through " (pruned) ")" }
                        }
                        td {
                            @match chain.last_verified_checkpoint {
                                Some((seq, at)) => { "seq " (seq) ", signed " (time(at)) }
                                None => { span.muted { "none" } }
                            }
                        }
                        td { (chain.unsigned_tail) }
                    }
                }
            }
        }
        @if verification.unchained > 0 {
            p.muted {
                (verification.unchained) " changes stored before the hash chain"
                @if let Some((from, to)) = verification.unchained_range { " (" (time(from)) " … " (time(to)) ")" }
                ": not verifiable."
            }
        }
    };
    Ok(page(&info, "Verification", body).into_response())
}
