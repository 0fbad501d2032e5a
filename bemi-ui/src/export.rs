//! `GET /export.csv` and `GET /export.ndjson`: every change the filters match, streamed page by
//! page (keyset), so that memory stays flat however many there are.

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bemi_audit::Change;
use futures_util::{StreamExt as _, stream};

use axum::Extension;

use crate::api::ApiError;
use crate::filters::Filters;
use crate::{RequestInfo, Scope, Ui};

/// The most changes in one chunk of an export's body (the library reads 1 000 per query).
const EXPORT_CHUNK_CHANGES: usize = 1_000;

/// The CSV columns, in order.
pub(crate) const CSV_COLUMNS: [&str; 15] = [
    "id",
    "committed_at",
    "database",
    "schema",
    "table",
    "primary_key",
    "operation",
    "transaction_id",
    "position",
    "context",
    "before",
    "after",
    "queued_at",
    "created_at",
    "source",
];

/// `GET /export.csv?<filters>`.
pub(crate) async fn csv(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    export(
        ui,
        info.access.scope_ref().clone(),
        query,
        "text/csv; charset=utf-8",
        "changes.csv",
        true,
        csv_line,
    )
    .await
}

/// `GET /export.ndjson?<filters>`: one change per line, as the API spells it.
pub(crate) async fn ndjson(
    State(ui): State<Ui>,
    Extension(info): Extension<RequestInfo>,
    query: RawQuery,
) -> Result<Response, ApiError> {
    export(
        ui,
        info.access.scope_ref().clone(),
        query,
        "application/x-ndjson",
        "changes.ndjson",
        false,
        |change| {
            let mut line = serde_json::to_vec(change).unwrap_or_default();
            line.push(b'\n');
            line
        },
    )
    .await
}

async fn export(
    ui: Ui,
    scope: Scope,
    RawQuery(query): RawQuery,
    content_type: &'static str,
    file: &'static str,
    csv_header: bool,
    line: fn(&Change) -> Vec<u8>,
) -> Result<Response, ApiError> {
    let filters = Filters::parse(query.as_deref().unwrap_or(""))?;
    let query = filters.first_page().query_in(&ui.audit, &scope).await?;
    let header_line = csv_header.then(|| {
        let mut writer = csv::Writer::from_writer(Vec::new());
        let _ = writer.write_record(CSV_COLUMNS);
        writer.into_inner().unwrap_or_default()
    });
    // The library's pages of 1 000 changes, each page one chunk of the body. A read that
    // fails ends the body early (the client sees a truncated download, the server logs why).
    let lines = query
        .into_stream(ui.audit.clone())
        .ready_chunks(EXPORT_CHUNK_CHANGES)
        .map(move |batch| {
            let mut chunk = Vec::new();
            for change in batch {
                match change {
                    Ok(change) => chunk.extend(line(&scope.redact(change))),
                    Err(error) => {
                        tracing::error!(%error, "bemi-ui: an export stopped: reading failed");
                        return Err(std::io::Error::other(error));
                    }
                }
            }
            Ok(Bytes::from(chunk))
        });
    let body = stream::iter(header_line.map(|header| Ok(Bytes::from(header)))).chain(lines);
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// One change as a CSV record (RFC 4180 quoting). A text cell that a spreadsheet would run as a
/// formula (`=`, `+`, `-`, `@`, tab or CR first, and not a number) gets a leading `'`.
fn csv_line(change: &Change) -> Vec<u8> {
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let record = [
        change.id.to_string(),
        time(change.committed_at),
        defuse(&change.database),
        defuse(&change.schema),
        defuse(&change.table),
        change
            .primary_key
            .as_deref()
            .map(defuse)
            .unwrap_or_default(),
        change.operation.as_str().to_owned(),
        change.transaction_id.to_string(),
        change.position.to_string(),
        change.context.to_string(),
        change.before.to_string(),
        change.after.to_string(),
        time(change.queued_at),
        time(change.created_at),
        change.source.as_deref().map(defuse).unwrap_or_default(),
    ];
    let mut writer = csv::Writer::from_writer(Vec::new());
    let _ = writer.write_record(&record);
    writer.into_inner().unwrap_or_default()
}

fn defuse(text: &str) -> String {
    let risky = text
        .chars()
        .next()
        .is_some_and(|c| matches!(c, '=' | '+' | '-' | '@' | '\t' | '\r'));
    if risky && text.parse::<f64>().is_err() {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_defused_and_numbers_kept() {
        assert_eq!(defuse("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(defuse("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(defuse("-5"), "-5");
        assert_eq!(defuse("todo"), "todo");
    }
}
