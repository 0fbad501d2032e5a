//! The audit trail as text, the way psql prints tables: what `bemi changes`, `bemi history`
//! and `bemi at` print.
//!
//! - [`render`] prints changes as a table, [`ChangesLayout`] one line at a time (for output
//!   that streams); JSON cells in jsonb's text style ([`jsonb_text`]), contexts with the
//!   library's `SQL` key last ([`context_text`]), cut at [`MAX_JSON_WIDTH`] characters.
//! - [`RowsLayout`] prints rows of a source table (time travel), one column per field.

mod changes;
mod rows;

pub(crate) use changes::{ChangesLayout, cells, footer, render, timestamp_text};
pub(crate) use rows::RowsLayout;
