//! Trace ids in contexts (feature `opentelemetry`): each write's context gets the
//! `trace_id` and `span_id` of the OpenTelemetry span current where the write is made, so that
//! a change in the audit trail links to its trace.
//!
//! The span is `opentelemetry::Context::current()`'s: the span of a `tracing` span entered
//! through `tracing-opentelemetry` (which makes its OpenTelemetry context current while the span
//! is entered, as in every poll of an `.instrument(span)` future), or one attached with the
//! OpenTelemetry API. Ids are lowercase hex, 32 and 16 digits, as in W3C `traceparent`. Only a
//! valid span adds them, only to a write that has a context, and a key the context already has
//! wins.
//!
//! ```
//! use bemi_core::{carrier, context};
//! use opentelemetry::trace::{
//!     SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
//! };
//! use serde_json::{Value, json};
//!
//! // A span continued from an upstream service (as a `traceparent` header would give it).
//! let span = SpanContext::new(
//!     TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
//!     SpanId::from_hex("00f067aa0ba902b7").unwrap(),
//!     TraceFlags::SAMPLED,
//!     true,
//!     TraceState::default(),
//! );
//! let _attached = opentelemetry::Context::current().with_remote_span_context(span).attach();
//! let message = context::sync_scope(json!({"user_id": 1}), || {
//!     carrier::message_json("DELETE FROM todo").unwrap()
//! });
//! let message: Value = serde_json::from_str(&message).unwrap();
//! assert_eq!(message["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(message["span_id"], "00f067aa0ba902b7");
//! assert_eq!(message["user_id"], 1);
//! ```

use opentelemetry::trace::TraceContextExt as _;
use serde_json::Value;

use crate::context::Context;

/// The context key of the current trace's id.
pub const TRACE_ID_KEY: &str = "trace_id";

/// The context key of the current span's id.
pub const SPAN_ID_KEY: &str = "span_id";

/// The ids of the current OpenTelemetry span, if it is valid: `(trace_id, span_id)` in hex.
///
/// ```
/// assert_eq!(bemi_core::trace::current_ids(), None); // no span here
/// ```
#[must_use]
pub fn current_ids() -> Option<(String, String)> {
    let current = opentelemetry::Context::current();
    let span = current.span();
    let span = span.span_context();
    // `Display` pads to 32 / 16 digits (`{:x}` would drop leading zeros).
    span.is_valid()
        .then(|| (span.trace_id().to_string(), span.span_id().to_string()))
}

/// Adds the current span's ids to `added`, for the keys `context` does not have.
pub(crate) fn add_current_ids(context: &Context, added: &mut Vec<(&str, Value)>) {
    let wanted = !context.contains_key(TRACE_ID_KEY) || !context.contains_key(SPAN_ID_KEY);
    if let Some((trace_id, span_id)) = wanted.then(current_ids).flatten() {
        for (key, id) in [(TRACE_ID_KEY, trace_id), (SPAN_ID_KEY, span_id)] {
            if !context.contains_key(key) {
                added.push((key, Value::String(id)));
            }
        }
    }
}
