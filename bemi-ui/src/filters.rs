//! The filters of the change list, the JSON API, the live tail and the exports — as the URL
//! holds them, so that every page is a deep link.

use bemi_audit::time::{PointInTime, TimeError};
use bemi_audit::{Change, ChangeQuery, Cursor, Operation, parse_context_pair};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The most changes one page or one API call returns.
pub const MAX_LIMIT: u64 = 1_000;

/// Changes per page when the URL names no `limit`.
pub const DEFAULT_LIMIT: u64 = 50;

/// The filters of a URL: `table`, `pk`, `operation`, `context` (`KEY=VALUE`, repeatable: all
/// must match), `since`, `until` (a timestamp, a duration ago such as `15m`, or any form
/// PostgreSQL reads), `changed` (a field changed), `transaction`, `limit`, `cursor`.
///
/// ```
/// use bemi_ui::Filters;
///
/// let filters = Filters::parse("table=todo&context=user_id%3D187234&context=endpoint%3D%2Ftodo&limit=20")?;
/// assert_eq!(filters.table.as_deref(), Some("todo"));
/// assert_eq!(filters.context.len(), 2);
/// assert_eq!(Filters::parse(&filters.to_query())?, filters);
/// # Ok::<(), bemi_ui::FilterError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Filters {
    /// `todo` or `public.todo`.
    pub table: Option<String>,
    /// The changed row's primary key (as the `changes` table spells it).
    pub pk: Option<String>,
    /// CREATE, UPDATE, DELETE or TRUNCATE.
    pub operation: Option<Operation>,
    /// Context pairs, each as written (`user_id=187234`) and as read.
    pub context: Vec<(String, String, Value)>,
    /// From this time on (as written; inclusive).
    pub since: Option<String>,
    /// Before this time (as written; exclusive).
    pub until: Option<String>,
    /// A field whose value changed.
    pub changed: Option<String>,
    /// The source transaction's id.
    pub transaction: Option<i64>,
    /// Changes per page.
    pub limit: Option<u64>,
    /// Continue after this change (a page's `next`).
    pub cursor: Option<Cursor>,
}

/// A filter the URL gets wrong; the message says what to write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// A value that does not parse.
    #[error("{key}={value:?}: {problem}")]
    Invalid {
        /// The parameter.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what to write instead.
        problem: String,
    },
    /// A time neither bemi nor PostgreSQL reads.
    #[error("{key}: {0}", key = .1)]
    Time(String, &'static str),
    /// The database could not be asked to read a time.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A filter on a field the request's [`Scope`](crate::Scope) hides (its answers would
    /// tell the hidden values): answered 404, as if there were no such field.
    #[error("{key}: no such field")]
    Hidden {
        /// The parameter.
        key: &'static str,
    },
}

/// The parameters [`Filters::parse`] reads (others are ignored).
const KEYS: [&str; 10] = [
    "table",
    "pk",
    "operation",
    "context",
    "since",
    "until",
    "changed",
    "transaction",
    "limit",
    "cursor",
];

impl Filters {
    /// The filters of a query string (without the `?`); empty values are no filter.
    ///
    /// # Errors
    ///
    /// [`FilterError::Invalid`] for a value that does not parse (an unknown operation, a
    /// `context` that is not `KEY=VALUE`, a transaction or limit that is not a number, a
    /// cursor this UI did not make, a NUL character). Any query string gets filters or an
    /// error, never a panic.
    pub fn parse(query: &str) -> Result<Self, FilterError> {
        let mut filters = Self::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            let invalid = |key: &'static str, problem: &str| FilterError::Invalid {
                key,
                value: value.to_owned(),
                problem: problem.to_owned(),
            };
            if value.contains('\0')
                && let Some(key) = KEYS.into_iter().find(|known| *known == key)
            {
                // PostgreSQL's text holds no NUL: the query would fail in the database.
                return Err(invalid(
                    key,
                    "a NUL character (%00) is in no stored value: leave it out",
                ));
            }
            match &*key {
                "table" => filters.table = Some(value.to_owned()),
                "pk" => filters.pk = Some(value.to_owned()),
                "operation" => {
                    filters.operation = Some(value.parse().map_err(|_| {
                        invalid("operation", "write CREATE, UPDATE, DELETE or TRUNCATE")
                    })?);
                }
                "context" => {
                    let (name, parsed) = parse_context_pair(value)
                        .map_err(|error| invalid("context", &error.to_string()))?;
                    filters.context.push((value.to_owned(), name, parsed));
                }
                "since" => filters.since = Some(value.to_owned()),
                "until" => filters.until = Some(value.to_owned()),
                "changed" => filters.changed = Some(value.to_owned()),
                "transaction" => {
                    filters.transaction = Some(value.parse().map_err(|_| {
                        invalid("transaction", "write the transaction's id, a whole number")
                    })?);
                }
                "limit" => {
                    let limit: u64 = value.parse().map_err(|_| {
                        invalid("limit", "write how many changes a page holds, e.g. 50")
                    })?;
                    filters.limit = Some(limit.clamp(1, MAX_LIMIT));
                }
                "cursor" => {
                    filters.cursor = Some(decode_cursor(value).ok_or_else(|| {
                        invalid("cursor", "use the `next` value of a page as it is")
                    })?);
                }
                _ => {}
            }
        }
        Ok(filters)
    }

    /// The query string of these filters (without the `?`).
    #[must_use]
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        let mut pair = |key: &str, value: Option<&str>| {
            if let Some(value) = value {
                query.append_pair(key, value);
            }
        };
        pair("table", self.table.as_deref());
        pair("pk", self.pk.as_deref());
        pair("operation", self.operation.map(Operation::as_str));
        for (written, _, _) in &self.context {
            pair("context", Some(written));
        }
        pair("since", self.since.as_deref());
        pair("until", self.until.as_deref());
        pair("changed", self.changed.as_deref());
        pair(
            "transaction",
            self.transaction.map(|t| t.to_string()).as_deref(),
        );
        pair("limit", self.limit.map(|l| l.to_string()).as_deref());
        pair("cursor", self.cursor.as_ref().map(encode_cursor).as_deref());
        query.finish()
    }

    /// These filters without the cursor (the first page).
    #[must_use]
    pub fn first_page(&self) -> Self {
        Self {
            cursor: None,
            ..self.clone()
        }
    }

    /// The page size these filters ask for.
    #[must_use]
    pub fn page_size(&self) -> u64 {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }

    /// Whether any filter (other than paging) is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.first_page()
            == Self {
                limit: self.limit,
                ..Self::default()
            }
    }

    /// The audit trail's query for these filters (newest first, no limit: the caller pages).
    /// Times that are not ISO timestamps or durations are read by PostgreSQL through `pool`.
    ///
    /// # Errors
    ///
    /// [`FilterError::Time`] for a time nobody reads; [`FilterError::Database`] when
    /// PostgreSQL cannot be asked.
    pub async fn query(&self, pool: &PgPool) -> Result<ChangeQuery, FilterError> {
        let mut query = ChangeQuery::new();
        if let Some(table) = &self.table {
            query = query.table(table);
        }
        if let Some(pk) = &self.pk {
            query = query.primary_key(pk.clone());
        }
        if let Some(operation) = self.operation {
            query = query.operation(operation);
        }
        for (_, key, value) in &self.context {
            query = query.context(key.clone(), value.clone());
        }
        let now = Utc::now();
        if let Some(since) = resolve(self.since.as_deref(), "since", pool, now).await? {
            query = query.since(since);
        }
        if let Some(until) = resolve(self.until.as_deref(), "until", pool, now).await? {
            query = query.until(until);
        }
        if let Some(field) = &self.changed {
            query = query.changed(field.clone());
        }
        if let Some(transaction) = self.transaction {
            query = query.transaction_id(transaction);
        }
        if let Some(cursor) = self.cursor {
            query = query.after(cursor);
        }
        Ok(query)
    }
}

impl Filters {
    /// [`Filters::query`] inside `scope`: its forced filters and tables added; a filter on a
    /// field it hides is refused with [`FilterError::Hidden`].
    pub(crate) async fn query_in(
        &self,
        pool: &PgPool,
        scope: &crate::Scope,
    ) -> Result<ChangeQuery, FilterError> {
        if self
            .context
            .iter()
            .any(|(_, key, _)| scope.hides_context_key(key))
        {
            return Err(FilterError::Hidden { key: "context" });
        }
        if self
            .changed
            .as_deref()
            .is_some_and(|field| scope.hides_column(self.table.as_deref(), field))
        {
            return Err(FilterError::Hidden { key: "changed" });
        }
        Ok(scope.restrict(self.query(pool).await?))
    }

    /// [`Filters::page`] inside `scope`, hidden values replaced.
    pub(crate) async fn page_in(
        &self,
        pool: &PgPool,
        scope: &crate::Scope,
    ) -> Result<(Vec<Change>, Option<Cursor>), FilterError> {
        let size = self.page_size();
        let mut changes = self
            .query_in(pool, scope)
            .await?
            .limit(size + 1)
            .fetch(pool)
            .await?;
        let more = changes.len() as u64 > size;
        changes.truncate(usize::try_from(size).unwrap_or(usize::MAX));
        let next = more.then(|| changes.last()).flatten().map(Change::cursor);
        Ok((changes.into_iter().map(|c| scope.redact(c)).collect(), next))
    }

    /// One page of the changes these filters match, newest first, and the cursor of the next
    /// page (`None` on the last one: one change more than a page is read to know).
    ///
    /// # Errors
    ///
    /// As [`Filters::query`], and the query's own errors.
    pub async fn page(&self, pool: &PgPool) -> Result<(Vec<Change>, Option<Cursor>), FilterError> {
        let size = self.page_size();
        let mut changes = self.query(pool).await?.limit(size + 1).fetch(pool).await?;
        let more = changes.len() as u64 > size;
        changes.truncate(usize::try_from(size).unwrap_or(usize::MAX));
        let next = more.then(|| changes.last()).flatten().map(Change::cursor);
        Ok((changes, next))
    }
}

/// A time filter, resolved.
pub(crate) async fn resolve(
    text: Option<&str>,
    key: &'static str,
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, FilterError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let point: PointInTime = text
        .parse()
        .map_err(|error: String| FilterError::Time(error, key))?;
    match point.resolve(pool, now).await {
        Ok(instant) => Ok(Some(instant)),
        Err(TimeError::NotATime(error)) => Err(FilterError::Time(error, key)),
        Err(TimeError::Database(error)) => Err(error.into()),
        Err(other) => Err(FilterError::Time(other.to_string(), key)),
    }
}

/// A page cursor as text: `<commit time in µs>.<position>.<id>`.
///
/// ```
/// use bemi_ui::filters::{decode_cursor, encode_cursor};
///
/// let cursor = bemi_audit::Cursor {
///     committed_at: "2026-12-03T12:00:00.123456Z".parse().unwrap(),
///     position: 42,
///     id: uuid::Uuid::nil(),
/// };
/// assert_eq!(decode_cursor(&encode_cursor(&cursor)), Some(cursor));
/// ```
#[must_use]
pub fn encode_cursor(cursor: &Cursor) -> String {
    format!(
        "{}.{}.{}",
        cursor.committed_at.timestamp_micros(),
        cursor.position,
        cursor.id.simple()
    )
}

/// The cursor [`encode_cursor`] wrote; `None` for any other text, and for a time before the
/// earliest PostgreSQL stores (the query would fail in the database).
#[must_use]
pub fn decode_cursor(text: &str) -> Option<Cursor> {
    let mut parts = text.split('.');
    let micros: i64 = parts.next()?.parse().ok()?;
    let position: i64 = parts.next()?.parse().ok()?;
    let id = Uuid::parse_str(parts.next()?).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Cursor {
        committed_at: DateTime::from_timestamp_micros(micros)
            .filter(|instant| bemi_audit::time::postgres_stores(*instant))?,
        position,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_say_what_to_write() {
        for (query, hint) in [
            ("operation=MERGE", "CREATE, UPDATE"),
            ("context=user_id", "KEY=VALUE"),
            ("transaction=abc", "whole number"),
            ("limit=-1", "how many"),
            ("cursor=abc", "next"),
            // Regressions: each failed in PostgreSQL, a 500 instead of a 400.
            ("table=to%00do", "NUL"),
            ("pk=%00", "NUL"),
            ("changed=a%00", "NUL"),
            ("since=%00", "NUL"),
            ("context=a%3D%22%5Cu0000%22", "NUL"),
            (
                "cursor=-210866803200000001.1.00000000000000000000000000000000",
                "next",
            ),
        ] {
            let error = Filters::parse(query).unwrap_err().to_string();
            assert!(error.contains(hint), "{query}: {error}");
        }
    }

    #[test]
    fn limits_are_bounded_and_empty_values_ignored() {
        let filters = Filters::parse("limit=100000&table=&pk=%20").unwrap();
        assert_eq!(filters.limit, Some(MAX_LIMIT));
        assert_eq!((filters.table, filters.pk), (None, None));
        assert!(Filters::parse("limit=5").unwrap().is_empty());
        assert!(!Filters::parse("changed=task").unwrap().is_empty());
    }

    #[test]
    fn hostile_values_round_trip_as_data() {
        let filters = Filters {
            table: Some("t&cursor=x".into()),
            context: vec![(
                "note=<script>&a=b".into(),
                "note".into(),
                Value::String("<script>&a=b".into()),
            )],
            ..Filters::default()
        };
        assert_eq!(Filters::parse(&filters.to_query()).unwrap(), filters);
    }

    /// Query strings of the filters' keys (and others), with near-valid values among them.
    fn query_string() -> impl proptest::strategy::Strategy<Value = String> {
        bemi_fuzz::query_string(
            &KEYS,
            &[
                "123456789",
                "2024-05-01T12:00:00+02:00",
                "15m",
                "user_id=187234",
                "1733400000000000.42.0123456789abcdef0123456789abcdef",
                "UPDATE",
                "-210866803200000001.1.00000000000000000000000000000000",
                "a=\"\\u0000\"",
            ],
        )
    }

    /// Any query string gives filters the database can be asked about, or a 400's error;
    /// never a panic.
    #[test]
    fn fuzz_any_query_string_gives_filters_or_an_error() {
        use proptest::prelude::*;
        use std::panic::{AssertUnwindSafe, catch_unwind};

        let now = Utc::now();
        bemi_fuzz::check("UI filters", 3_000, query_string(), |query| {
            let parsed =
                catch_unwind(AssertUnwindSafe(|| Filters::parse(&query))).map_err(|_| {
                    TestCaseError::fail(format!("Filters::parse panicked on {query:?}"))
                })?;
            let filters = match parsed {
                Ok(filters) => filters,
                Err(FilterError::Database(error)) => {
                    return Err(TestCaseError::fail(format!("{query:?}: {error}")));
                }
                Err(error) => {
                    prop_assert!(!error.to_string().is_empty());
                    return Ok(());
                }
            };
            // Nothing PostgreSQL would refuse: no NUL, times it stores.
            let texts = [
                &filters.table,
                &filters.pk,
                &filters.changed,
                &filters.since,
                &filters.until,
            ];
            for text in texts.into_iter().flatten() {
                prop_assert!(!text.contains('\0'), "{query:?}");
            }
            for (written, key, value) in &filters.context {
                prop_assert!(!written.contains('\0') && !key.contains('\0'), "{query:?}");
                prop_assert!(!bemi_audit::holds_nul(value), "{query:?}");
            }
            prop_assert!(
                filters
                    .limit
                    .is_none_or(|limit| (1..=MAX_LIMIT).contains(&limit))
            );
            if let Some(cursor) = &filters.cursor {
                prop_assert!(bemi_audit::time::postgres_stores(cursor.committed_at));
            }
            for time in [&filters.since, &filters.until].into_iter().flatten() {
                let point =
                    catch_unwind(|| time.parse::<PointInTime>().map(|p| p.resolve_here(now)))
                        .map_err(|_| TestCaseError::fail(format!("{time:?} panicked")))?;
                if let Ok(Ok(instant)) = point {
                    prop_assert!(bemi_audit::time::postgres_stores(instant), "{time:?}");
                }
            }
            // The filters' own query string gives them back.
            prop_assert_eq!(Filters::parse(&filters.to_query()).ok(), Some(filters));
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    }

    #[test]
    fn fuzz_cursors_decode_or_are_refused() {
        use proptest::prelude::*;

        let cursor = (
            bemi_audit::time::POSTGRES_EARLIEST_MICROS
                ..=DateTime::<Utc>::MAX_UTC.timestamp_micros(),
            any::<i64>(),
            any::<u128>(),
        );
        bemi_fuzz::check(
            "cursors",
            3_000,
            (cursor, any::<String>(), vec_of_bytes()),
            |((micros, position, id), text, bytes)| {
                let cursor = Cursor {
                    committed_at: DateTime::from_timestamp_micros(micros).unwrap_or_default(),
                    position,
                    id: Uuid::from_u128(id),
                };
                prop_assert_eq!(decode_cursor(&encode_cursor(&cursor)), Some(cursor));
                for text in [text, String::from_utf8_lossy(&bytes).into_owned()] {
                    if let Some(cursor) = decode_cursor(&text) {
                        prop_assert!(bemi_audit::time::postgres_stores(cursor.committed_at));
                        prop_assert_eq!(decode_cursor(&encode_cursor(&cursor)), Some(cursor));
                    }
                }
                Ok(())
            },
        )
        .unwrap_or_else(|failure| panic!("{failure}"));
    }

    fn vec_of_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)
    }
}
