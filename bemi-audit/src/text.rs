//! The audit trail as text, the way psql prints tables: what `bemi changes`, `bemi history`,
//! `bemi at` and the demo print.
//!
//! - [`render`] prints changes as a table, [`ChangesLayout`] one line at a time (for output
//!   that streams); JSON cells in jsonb's text style ([`jsonb_text`]), contexts with the
//!   library's `SQL` key last ([`context_text`]), cut at [`MAX_JSON_WIDTH`] characters.
//! - [`RowsLayout`] prints rows of a source table (time travel), one column per field.

mod changes;
mod rows;

pub use changes::{
    ChangesLayout, HEADERS, MAX_JSON_WIDTH, MAX_NAME_WIDTH, cells, context_text, footer,
    jsonb_text, render, timestamp_text,
};
pub use rows::{RowsLayout, cell};
