//! The worker's metrics, in the Prometheus text format ([`WorkerMetrics::render`]; `bemi
//! worker --metrics-addr` serves them). The worker updates them; users read them.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `bemi_changes_written_total` | counter | rows written into `changes` |
//! | `bemi_transactions_total` | counter | source transactions applied |
//! | `bemi_errors_total` | counter | errors that made the worker reconnect |
//! | `bemi_replication_lag_bytes` | gauge | WAL the server has sent or holds beyond the last confirmed position |
//! | `bemi_replication_lag_seconds` | gauge | age of the last applied commit while more is pending (or, while the stream is down, while the server has WAL beyond the confirmed position), else 0 |
//! | `bemi_last_confirmed_lsn` | gauge | the last position confirmed to the slot |
//! | `bemi_stream_seconds_total` | counter | time spent decoding, converting and stitching |
//! | `bemi_write_seconds_total` | counter | time spent writing batches to the destination |
//! | `bemi_connected` | gauge | whether the stream is up (1) or not (0) |
//! | `bemi_standby` | gauge | whether the worker stands by (1) while another process streams from its slot |
//! | `bemi_takeovers_total` | counter | times the worker ended another process's stream that had stopped answering, to take the slot over |
//! | `bemi_slots_recreated_total` | counter | times the worker found its slot gone and created it again although it had stored changes from it before (changes committed meanwhile are not captured) |
//! | `bemi_schema_mismatches_total` | counter | relations whose schema history version did not match the WAL (DDL while event triggers did not fire, or a forged `_bemi_schema` message): their changes followed the WAL |
//! | `bemi_updates_skipped_total{table, reason}` | counter | UPDATEs left out by the capture rules, per table and reason (`unchanged`, `ignored_columns`) |
//!
//! ```
//! let metrics = bemi_worker::WorkerMetrics::default();
//! assert!(metrics.render().contains("bemi_changes_written_total 0"));
//! assert_eq!(metrics.changes_written(), 0);
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::rows::SkipReason;

/// Counters and gauges of one worker, shared between its tasks.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    changes_written: AtomicU64,
    transactions: AtomicU64,
    errors: AtomicU64,
    confirmed_lsn: AtomicU64,
    received_end_lsn: AtomicU64,
    server_wal_end: AtomicU64,
    last_applied_commit_micros: AtomicI64,
    connected: AtomicBool,
    standby: AtomicBool,
    takeovers: AtomicU64,
    slots_recreated: AtomicU64,
    stream_nanos: AtomicU64,
    write_nanos: AtomicU64,
    schema_mismatches: AtomicU64,
    /// UPDATEs left out by the capture rules, per `schema.table` and reason.
    skipped_updates: Mutex<BTreeMap<(String, &'static str), u64>>,
}

/// Where the worker's time went, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct Timing {
    /// In the stream task: decoding pgoutput, building JSON, stitching (not waiting for data
    /// or for the writer).
    pub decode_seconds: f64,
    /// In the writer task: encoding COPY data, writing it and the position, committing.
    pub write_seconds: f64,
}

impl WorkerMetrics {
    /// Records a committed destination write of `rows` rows and `transactions` whole source
    /// transactions, up to `confirmed_lsn`, whose last commit happened at `commit_micros` (µs
    /// since the Unix epoch; 0 when unknown).
    pub(crate) fn record_write(
        &self,
        rows: u64,
        transactions: u64,
        confirmed_lsn: u64,
        commit_micros: i64,
    ) {
        self.changes_written.fetch_add(rows, Ordering::Relaxed);
        self.transactions.fetch_add(transactions, Ordering::Relaxed);
        self.confirmed_lsn
            .fetch_max(confirmed_lsn, Ordering::Relaxed);
        if commit_micros > 0 {
            self.last_applied_commit_micros
                .fetch_max(commit_micros, Ordering::Relaxed);
        }
    }

    /// Records a position confirmed without a write (an idle stream).
    pub(crate) fn record_confirmed(&self, lsn: u64) {
        self.confirmed_lsn.fetch_max(lsn, Ordering::Relaxed);
        self.received_end_lsn.fetch_max(lsn, Ordering::Relaxed);
    }

    /// Records the end of a source transaction received from the stream.
    pub(crate) fn record_received(&self, end_lsn: u64) {
        self.received_end_lsn.fetch_max(end_lsn, Ordering::Relaxed);
    }

    /// Records the server's WAL position (from keepalives).
    pub(crate) fn record_server_position(&self, wal_end: u64) {
        self.server_wal_end.fetch_max(wal_end, Ordering::Relaxed);
    }

    /// Counts an error that made the worker reconnect.
    pub(crate) fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the stream as up or down.
    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// Marks the worker as standing by for another process that streams from its slot.
    pub(crate) fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::Relaxed);
    }

    /// Counts a slot found missing and created again although it was used before.
    pub(crate) fn record_slot_recreated(&self) {
        self.slots_recreated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a stream of another process ended to take the slot over.
    pub(crate) fn record_takeover(&self) {
        self.takeovers.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds time the stream task spent working on events.
    pub(crate) fn add_stream_time(&self, elapsed: std::time::Duration) {
        self.stream_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Adds time the writer spent writing to the destination.
    pub(crate) fn add_write_time(&self, elapsed: std::time::Duration) {
        self.write_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Where the time went so far.
    ///
    /// ```
    /// assert_eq!(bemi_worker::WorkerMetrics::default().timing().write_seconds, 0.0);
    /// ```
    pub fn timing(&self) -> Timing {
        Timing {
            decode_seconds: self.stream_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            write_seconds: self.write_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    /// Whether the replication stream is up.
    ///
    /// ```
    /// assert!(!bemi_worker::WorkerMetrics::default().is_connected());
    /// ```
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Whether the worker stands by while another process streams from its slot.
    ///
    /// ```
    /// assert!(!bemi_worker::WorkerMetrics::default().is_standby());
    /// ```
    pub fn is_standby(&self) -> bool {
        self.standby.load(Ordering::Relaxed)
    }

    /// Times the worker ended another process's stream that had stopped answering, so far.
    ///
    /// ```
    /// assert_eq!(bemi_worker::WorkerMetrics::default().takeovers(), 0);
    /// ```
    pub fn takeovers(&self) -> u64 {
        self.takeovers.load(Ordering::Relaxed)
    }

    /// Times the worker found its slot gone and created it again although it had stored changes
    /// from it before (what was committed meanwhile is not captured), so far.
    ///
    /// ```
    /// assert_eq!(bemi_worker::WorkerMetrics::default().slots_recreated(), 0);
    /// ```
    pub fn slots_recreated(&self) -> u64 {
        self.slots_recreated.load(Ordering::Relaxed)
    }

    /// Errors that made the worker reconnect, so far.
    ///
    /// ```
    /// assert_eq!(bemi_worker::WorkerMetrics::default().errors(), 0);
    /// ```
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Counts a relation whose schema history version did not match its Relation message.
    pub(crate) fn record_schema_mismatch(&self) {
        self.schema_mismatches.fetch_add(1, Ordering::Relaxed);
    }

    /// Relations described so far whose schema history version did not match the WAL (see
    /// the `bemi_schema_mismatches_total` metric).
    ///
    /// ```
    /// assert_eq!(bemi_worker::WorkerMetrics::default().schema_mismatches(), 0);
    /// ```
    pub fn schema_mismatches(&self) -> u64 {
        self.schema_mismatches.load(Ordering::Relaxed)
    }

    /// Counts an UPDATE of `schema.table` that the capture rules left out.
    pub(crate) fn record_skipped_update(&self, schema: &str, table: &str, reason: SkipReason) {
        let mut skipped = self
            .skipped_updates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *skipped
            .entry((format!("{schema}.{table}"), reason.label()))
            .or_default() += 1;
    }

    /// UPDATEs the capture rules left out: `(schema.table, reason, count)`, the reason being
    /// `unchanged` (`--skip-unchanged-updates`) or `ignored_columns` (`--ignore-columns`).
    #[must_use]
    pub fn skipped_updates(&self) -> Vec<(String, String, u64)> {
        let skipped = self
            .skipped_updates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        skipped
            .iter()
            .map(|((table, reason), count)| (table.clone(), (*reason).to_owned(), *count))
            .collect()
    }

    /// Source transactions applied.
    ///
    /// ```
    /// assert_eq!(bemi_worker::WorkerMetrics::default().transactions(), 0);
    /// ```
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Rows written so far.
    pub fn changes_written(&self) -> u64 {
        self.changes_written.load(Ordering::Relaxed)
    }

    /// The last confirmed position.
    ///
    /// ```
    /// assert_eq!(bemi_worker::WorkerMetrics::default().confirmed_lsn(), 0);
    /// ```
    pub fn confirmed_lsn(&self) -> u64 {
        self.confirmed_lsn.load(Ordering::Relaxed)
    }

    /// The metrics in the Prometheus text exposition format.
    ///
    /// ```
    /// let text = bemi_worker::WorkerMetrics::default().render();
    /// assert!(text.contains("# TYPE bemi_changes_written_total counter"));
    /// ```
    pub fn render(&self) -> String {
        let confirmed = self.confirmed_lsn();
        let received = self.received_end_lsn.load(Ordering::Relaxed);
        let server = self.server_wal_end.load(Ordering::Relaxed).max(received);
        // Pending: received but not yet confirmed; or, while the stream is down (an outage),
        // anything the server has beyond the confirmed position.
        let pending = received > confirmed || (!self.is_connected() && server > confirmed);
        let lag_seconds = if pending {
            let last = self.last_applied_commit_micros.load(Ordering::Relaxed);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            if last > 0 {
                (now - last).max(0) as f64 / 1e6
            } else {
                0.0
            }
        } else {
            0.0
        };
        let mut out = String::with_capacity(1024);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "bemi_changes_written_total",
            "counter",
            "Rows written into the changes table.",
            self.changes_written().to_string(),
        );
        metric(
            "bemi_transactions_total",
            "counter",
            "Source transactions applied.",
            self.transactions.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "bemi_errors_total",
            "counter",
            "Errors that made the worker reconnect.",
            self.errors.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "bemi_replication_lag_bytes",
            "gauge",
            "WAL bytes sent or known by the server beyond the last confirmed position.",
            server.saturating_sub(confirmed).to_string(),
        );
        metric(
            "bemi_replication_lag_seconds",
            "gauge",
            "Age of the last applied commit while more changes are pending, else 0.",
            format!("{lag_seconds:.3}"),
        );
        metric(
            "bemi_last_confirmed_lsn",
            "gauge",
            "The last WAL position confirmed to the replication slot.",
            confirmed.to_string(),
        );
        let timing = self.timing();
        metric(
            "bemi_stream_seconds_total",
            "counter",
            "Time the stream task spent decoding, converting and stitching changes.",
            format!("{:.6}", timing.decode_seconds),
        );
        metric(
            "bemi_write_seconds_total",
            "counter",
            "Time the writer spent writing batches to the destination.",
            format!("{:.6}", timing.write_seconds),
        );
        metric(
            "bemi_connected",
            "gauge",
            "Whether the replication stream is up (1) or not (0).",
            u8::from(self.connected.load(Ordering::Relaxed)).to_string(),
        );
        metric(
            "bemi_standby",
            "gauge",
            "Whether the worker stands by (1) while another process streams from its slot.",
            u8::from(self.is_standby()).to_string(),
        );
        metric(
            "bemi_takeovers_total",
            "counter",
            "Times the worker ended another process's stream that had stopped answering, to \
             take the slot over.",
            self.takeovers().to_string(),
        );
        metric(
            "bemi_slots_recreated_total",
            "counter",
            "Times the worker found its replication slot gone and created it again although it \
             had stored changes from it before: changes committed meanwhile are not captured.",
            self.slots_recreated().to_string(),
        );
        metric(
            "bemi_schema_mismatches_total",
            "counter",
            "Relations whose schema history version did not match the WAL (DDL while event \
             triggers did not fire, or a forged _bemi_schema message); their changes followed \
             the WAL, with keys it could not give stored as unknown.",
            self.schema_mismatches().to_string(),
        );
        let skipped = self.skipped_updates();
        if !skipped.is_empty() {
            let _ = writeln!(
                out,
                "# HELP bemi_updates_skipped_total UPDATEs left out by the capture rules \
                 (--skip-unchanged-updates, --ignore-columns), per table and reason.\n\
                 # TYPE bemi_updates_skipped_total counter"
            );
            for (table, reason, count) in skipped {
                let _ = writeln!(
                    out,
                    "bemi_updates_skipped_total{{table=\"{}\",reason=\"{reason}\"}} {count}",
                    label_value(&table)
                );
            }
        }
        out
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
