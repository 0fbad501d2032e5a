//! [`ChangeQuery`]: filters over the `changes` table, newest first, paged by keyset.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use futures_util::stream::{self, BoxStream, StreamExt as _};
use serde_json::{Map, Value};
use sqlx::{Executor, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::change::{Change, Cursor};
use bemi_core::protocol::Operation;

pub(crate) const SELECT: &str = "SELECT id, primary_key, before, after, context, database, schema, \"table\", \
                      operation, committed_at, queued_at, created_at, transaction_id, position, source \
                      FROM changes";

/// Rows fetched per round trip by [`ChangeQuery::stream`].
const STREAM_PAGE_ROWS: u64 = 1_000;

/// The order of the results.
///
/// ```
/// use bemi_audit::{ChangeQuery, Order};
///
/// assert_eq!(Order::default(), Order::NewestFirst);
/// let sql = ChangeQuery::new().order(Order::OldestFirst).sql();
/// assert!(sql.ends_with("ORDER BY committed_at ASC, position ASC, id ASC"));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Order {
    /// `committed_at DESC, position DESC`: the latest change first.
    #[default]
    NewestFirst,
    /// `committed_at ASC, position ASC`: in the order the changes happened.
    OldestFirst,
}

impl Order {
    fn sql(self) -> &'static str {
        match self {
            Order::NewestFirst => "DESC",
            Order::OldestFirst => "ASC",
        }
    }
}

/// A query over the `changes` table: filters, order, a keyset cursor and a limit.
///
/// Each method returns the query with one more condition; every value is a bound parameter.
///
/// ```
/// use bemi_audit::{ChangeQuery, Operation};
///
/// let query = ChangeQuery::new()
///     .table("public.todo")
///     .operation(Operation::Update)
///     .context("user_id", 187234)
///     .limit(10);
/// assert_eq!(
///     query.sql(),
///     "SELECT id, primary_key, before, after, context, database, schema, \"table\", operation, \
///      committed_at, queued_at, created_at, transaction_id, position, source FROM changes \
///      WHERE \"table\" = $1 AND schema = $2 AND operation = $3 AND context @> $4 \
///      ORDER BY committed_at DESC, position DESC, id DESC LIMIT $5"
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeQuery {
    id: Option<Uuid>,
    schema: Option<String>,
    table: Option<String>,
    database: Option<String>,
    primary_key: Option<String>,
    operation: Option<Operation>,
    transaction_id: Option<i64>,
    source: Option<Option<String>>,
    source_or_unrecorded: Option<String>,
    context: Map<String, Value>,
    before: Map<String, Value>,
    after_image: Map<String, Value>,
    changed: Vec<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    after: Option<Cursor>,
    order: Order,
    limit: Option<u64>,
    /// Only these tables (schema or any, table); `Some(empty)` matches nothing.
    within_tables: Option<Vec<(Option<String>, String)>>,
    /// Contexts that must each be contained too (a scope's forced filters).
    required_context: Vec<Map<String, Value>>,
}

impl ChangeQuery {
    /// Every change, newest first, without a limit.
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().sql();
    /// assert!(sql.ends_with("FROM changes ORDER BY committed_at DESC, position DESC, id DESC"));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Changes of one table: `todo` (any schema) or `public.todo`.
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().table("billing.invoice").sql();
    /// assert!(sql.contains(r#"WHERE "table" = $1 AND schema = $2"#));
    /// ```
    pub fn table(mut self, name: &str) -> Self {
        match name.split_once('.') {
            Some((schema, table)) => {
                self.schema = Some(schema.to_owned());
                self.table = Some(table.to_owned());
            }
            None => {
                self.schema = None;
                self.table = Some(name.to_owned());
            }
        }
        self
    }

    /// Only changes of one of these tables (`todo`, any schema, or `public.todo`), on top of
    /// every other filter (a [`table`](Self::table) filter too): a scope that a caller's own
    /// filters cannot widen. No table at all matches nothing.
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().within_tables(["todo", "billing.invoice"]).sql();
    /// assert!(sql.contains(r#"WHERE ("table" = $1 OR ("table" = $2 AND schema = $3))"#), "{sql}");
    /// ```
    #[must_use]
    pub fn within_tables<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.within_tables = Some(
            names
                .into_iter()
                .map(|name| match name.as_ref().split_once('.') {
                    Some((schema, table)) => (Some(schema.to_owned()), table.to_owned()),
                    None => (None, name.as_ref().to_owned()),
                })
                .collect(),
        );
        self
    }

    /// Only changes whose context contains `context` too, on top of the
    /// [`context`](Self::context) filters (which it does not replace: a caller asking for
    /// another value of the same key gets nothing).
    ///
    /// ```
    /// use serde_json::json;
    ///
    /// let scope = json!({"tenant_id": 42}).as_object().unwrap().clone();
    /// let sql = bemi_audit::ChangeQuery::new().context("tenant_id", 43).require_context(scope).sql();
    /// assert!(sql.contains("WHERE context @> $1 AND context @> $2"), "{sql}");
    /// ```
    #[must_use]
    pub fn require_context(mut self, context: Map<String, Value>) -> Self {
        if !context.is_empty() {
            self.required_context.push(context);
        }
        self
    }

    /// Changes of the row with this primary key, as stored: the key's text (`"26"`), or a JSON
    /// array for a composite key (`r#"["x",1]"#`).
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().primary_key("26").sql();
    /// assert!(sql.contains("WHERE primary_key = $1"));
    /// ```
    pub fn primary_key(mut self, key: impl Into<String>) -> Self {
        self.primary_key = Some(key.into());
        self
    }

    /// Changes of one kind.
    ///
    /// ```
    /// use bemi_audit::{ChangeQuery, Operation};
    ///
    /// let sql = ChangeQuery::new().operation(Operation::Delete).sql();
    /// assert!(sql.contains("WHERE operation = $1"));
    /// ```
    pub fn operation(mut self, operation: Operation) -> Self {
        self.operation = Some(operation);
        self
    }

    /// Changes whose context has `key` with this value (`context @> {"key": value}`, served by
    /// the GIN index on `context`). Calls add up: every key must match. The value may be any
    /// JSON, and an object matches by containment too.
    ///
    /// ```
    /// use bemi_audit::ChangeQuery;
    /// use serde_json::json;
    ///
    /// let query = ChangeQuery::new()
    ///     .context("user_id", 187234)
    ///     .context("endpoint", "/todo")
    ///     .context("user", json!({"role": "admin"}));
    /// assert!(query.sql().contains("WHERE context @> $1"));
    /// ```
    pub fn context(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.context.insert(key.into(), value.into());
        self
    }

    /// The change with this id (the primary key of `changes`).
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().id(uuid::Uuid::nil()).sql();
    /// assert!(sql.contains("WHERE id = $1"));
    /// ```
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    /// Changes of one source database (the `database` column), for a `changes` table that
    /// several databases write into. A refinement: combine it with an indexed filter.
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().database("app").sql();
    /// assert!(sql.contains("WHERE database = $1"));
    /// ```
    pub fn database(mut self, name: impl Into<String>) -> Self {
        self.database = Some(name.into());
        self
    }

    /// Changes of one source transaction (served by the index on `transaction_id`): its full
    /// 64-bit id, which never repeats within a cluster. With several source clusters storing
    /// into one table, add [`source`](Self::source). (Changes stored before bemi-rs recorded full
    /// ids hold the 32-bit id, which repeats after a wraparound: add a time range for those.)
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().transaction_id(768).sql();
    /// assert!(sql.contains("WHERE transaction_id = $1"));
    /// ```
    pub fn transaction_id(mut self, id: i64) -> Self {
        self.transaction_id = Some(id);
        self
    }

    /// Changes of one source cluster, by its system identifier ([`Change::source`]); `None`
    /// selects the changes stored without one (before bemi-rs recorded it).
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().transaction_id(768).source(Some("7716")).sql();
    /// assert!(sql.contains("WHERE transaction_id = $1 AND source = $2"));
    /// ```
    pub fn source(mut self, source: Option<impl Into<String>>) -> Self {
        self.source = Some(source.map(Into::into));
        self
    }

    /// Changes of the source cluster `cluster`, or stored without a source (before bemi-rs
    /// recorded it): what a revert in that cluster may touch.
    pub(crate) fn source_or_unrecorded(mut self, cluster: &str) -> Self {
        self.source_or_unrecorded = Some(cluster.to_owned());
        self
    }

    /// The source filters, for queries of the same changes' rows (conflicts).
    pub(crate) fn source_filters(&self) -> (Option<Option<&str>>, Option<&str>) {
        (
            self.source.as_ref().map(Option::as_deref),
            self.source_or_unrecorded.as_deref(),
        )
    }

    /// The source database filter.
    pub(crate) fn database_filter(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// Changes whose before-image has `key` with this value (`before @> {"key": value}`,
    /// served by the GIN index on `before`). Calls add up, like [`context`](Self::context).
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().before_contains("is_completed", false).sql();
    /// assert!(sql.contains("WHERE before @> $1"));
    /// ```
    pub fn before_contains(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.before.insert(key.into(), value.into());
        self
    }

    /// Changes whose after-image has `key` with this value (`after @> {"key": value}`, served
    /// by the GIN index on `after`). Calls add up.
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().after_contains("task", "Sleep").sql();
    /// assert!(sql.contains("WHERE after @> $1"));
    /// ```
    pub fn after_contains(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.after_image.insert(key.into(), value.into());
        self
    }

    /// Changes in which `field` differs between the before- and the after-image
    /// (`before -> 'field' IS DISTINCT FROM after -> 'field'`). A CREATE or DELETE that has the
    /// field counts too; add `.operation(Operation::Update)` for updates only. Calls add up:
    /// every field must have changed.
    ///
    /// No index can serve this condition by itself: it refines the others (a table, a row, a
    /// context, a time range), which is how to use it on a large table.
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().table("todo").changed("is_completed").sql();
    /// assert!(sql.contains(r#"WHERE "table" = $1 AND before -> $2 IS DISTINCT FROM after -> $3"#));
    /// ```
    pub fn changed(mut self, field: impl Into<String>) -> Self {
        self.changed.push(field.into());
        self
    }

    /// Changes committed at or after `instant`.
    ///
    /// ```
    /// let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    /// let sql = bemi_audit::ChangeQuery::new().since(an_hour_ago).sql();
    /// assert!(sql.contains("WHERE committed_at >= $1"));
    /// ```
    pub fn since(mut self, instant: DateTime<Utc>) -> Self {
        self.since = Some(instant);
        self
    }

    /// Changes committed before `instant`.
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().until(chrono::Utc::now()).sql();
    /// assert!(sql.contains("WHERE committed_at < $1"));
    /// ```
    pub fn until(mut self, instant: DateTime<Utc>) -> Self {
        self.until = Some(instant);
        self
    }

    /// The results in this order (default: [`Order::NewestFirst`]).
    ///
    /// ```
    /// use bemi_audit::{ChangeQuery, Order};
    ///
    /// assert!(ChangeQuery::new().order(Order::OldestFirst).sql().contains("ASC"));
    /// ```
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Shorthand for `.order(Order::OldestFirst)`.
    ///
    /// ```
    /// use bemi_audit::{ChangeQuery, Order};
    ///
    /// assert_eq!(ChangeQuery::new().oldest_first(), ChangeQuery::new().order(Order::OldestFirst));
    /// ```
    pub fn oldest_first(self) -> Self {
        self.order(Order::OldestFirst)
    }

    /// Only the changes that come after `cursor` in the query's order: the next page after a
    /// page whose last row gave the cursor ([`Change::cursor`]). Keyset pagination: no `OFFSET`
    /// scan, and rows inserted meanwhile neither repeat nor shift the pages.
    ///
    /// ```
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// use bemi_audit::ChangeQuery;
    ///
    /// let query = ChangeQuery::new().table("todo").limit(100);
    /// let mut page = query.fetch(&pool).await?;
    /// while let Some(last) = page.last() {
    ///     // ... use the page ...
    ///     page = query.clone().after(last.cursor()).fetch(&pool).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// At most `rows` results.
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().limit(20).sql();
    /// assert!(sql.ends_with("LIMIT $1"));
    /// ```
    pub fn limit(mut self, rows: u64) -> Self {
        self.limit = Some(rows);
        self
    }

    /// The query as a [`QueryBuilder`] with every value bound, e.g. to wrap it (`EXPLAIN`,
    /// `count(*)`) or to run it with another executor.
    ///
    /// ```
    /// let mut builder = bemi_audit::ChangeQuery::new().primary_key("1").query_builder();
    /// let query = builder.build_query_as::<bemi_audit::Change>();
    /// ```
    pub fn query_builder(&self) -> QueryBuilder<Postgres> {
        self.build(SELECT)
    }

    /// The query with another select list (`select` ends with `FROM changes`).
    pub(crate) fn build(&self, select: &str) -> QueryBuilder<Postgres> {
        let mut builder = QueryBuilder::new(select);
        self.push_conditions(&mut Conditions::new(&mut builder));
        let direction = self.order.sql();
        builder.push(format_args!(
            " ORDER BY committed_at {direction}, position {direction}, id {direction}"
        ));
        if let Some(limit) = self.limit {
            builder
                .push(" LIMIT ")
                .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        builder
    }

    /// `SELECT {columns} FROM changes WHERE …` with this query's filters (its cursor too), but
    /// neither order nor limit, ending in a condition so that more can follow as ` AND …`: to
    /// read other columns of the same changes, or a part of them, with the indexes the filters
    /// use.
    ///
    /// ```
    /// use bemi_audit::ChangeQuery;
    ///
    /// let mut builder = ChangeQuery::new().table("todo").filter_builder("id");
    /// builder.push(" AND committed_at >= now() - interval '5 seconds'");
    /// assert_eq!(
    ///     builder.into_string(),
    ///     r#"SELECT id FROM changes WHERE "table" = $1 AND committed_at >= now() - interval '5 seconds'"#
    /// );
    /// let everything = ChangeQuery::new().filter_builder("id");
    /// assert_eq!(everything.into_string(), "SELECT id FROM changes WHERE true");
    /// ```
    pub fn filter_builder(&self, columns: &str) -> QueryBuilder<Postgres> {
        let mut builder = QueryBuilder::new(format!("SELECT {columns} FROM changes"));
        let mut conditions = Conditions::new(&mut builder);
        self.push_conditions(&mut conditions);
        if !conditions.any {
            conditions.and("true");
        }
        builder
    }

    /// The SQL text (values are `$n` parameters).
    ///
    /// ```
    /// let sql = bemi_audit::ChangeQuery::new().table("x'; DROP TABLE changes; --").sql();
    /// assert!(!sql.contains("DROP"));
    /// ```
    pub fn sql(&self) -> String {
        self.query_builder().into_string()
    }

    /// Runs the query and collects the results.
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let latest = bemi_audit::ChangeQuery::new().limit(10).fetch(&pool).await?;
    /// # Ok(()) }
    /// ```
    pub async fn fetch<'c, E>(&self, executor: E) -> Result<Vec<Change>, sqlx::Error>
    where
        E: Executor<'c, Database = Postgres>,
    {
        let mut builder = self.query_builder();
        builder.build_query_as::<Change>().fetch_all(executor).await
    }

    /// The plan PostgreSQL picks for the query (the lines of `EXPLAIN`), e.g. to check that an
    /// index serves a filter on your data.
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let plan = bemi_audit::ChangeQuery::new().transaction_id(768).explain(&pool).await?;
    /// assert!(plan.contains("changes_transaction_id_idx"));
    /// # Ok(()) }
    /// ```
    pub async fn explain<'c, E>(&self, executor: E) -> Result<String, sqlx::Error>
    where
        E: Executor<'c, Database = Postgres>,
    {
        let mut builder = self.build(&format!("EXPLAIN {SELECT}"));
        let lines: Vec<String> = builder.build_query_scalar().fetch_all(executor).await?;
        Ok(lines.join("\n"))
    }

    /// Streams the results, fetching them in pages of 1 000 rows with the keyset cursor: memory
    /// stays bounded however many changes match, and no connection is held between pages.
    ///
    /// ```no_run
    /// use futures_util::TryStreamExt as _;
    ///
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let mut changes = bemi_audit::ChangeQuery::new().table("todo").stream(&pool);
    /// while let Some(change) = changes.try_next().await? {
    ///     println!("{}", serde_json::to_string(&change).unwrap());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stream<'p>(&self, pool: &'p PgPool) -> BoxStream<'p, Result<Change, sqlx::Error>> {
        self.clone().into_stream(pool.clone())
    }

    /// [`stream`](Self::stream) owning its pool: a stream that outlives the caller, e.g. an
    /// HTTP response's body.
    ///
    /// ```no_run
    /// # fn run(pool: sqlx::PgPool) {
    /// let changes = bemi_audit::ChangeQuery::new().table("todo").into_stream(pool);
    /// # let _ = changes;
    /// # }
    /// ```
    pub fn into_stream(self, pool: PgPool) -> BoxStream<'static, Result<Change, sqlx::Error>> {
        let pages = Pages {
            remaining: self.limit,
            query: self,
            buffer: VecDeque::new(),
            exhausted: false,
        };
        stream::try_unfold((pages, pool), |(mut pages, pool)| async move {
            let next = pages.next(&pool).await?;
            Ok(next.map(|change| (change, (pages, pool))))
        })
        .boxed()
    }

    fn push_conditions(&self, conditions: &mut Conditions<'_>) {
        if let Some(id) = self.id {
            conditions.and("id = ").push_bind(id);
        }
        if let Some(table) = &self.table {
            conditions.and("\"table\" = ").push_bind(table.as_str());
        }
        if let Some(schema) = &self.schema {
            conditions.and("schema = ").push_bind(schema.as_str());
        }
        if let Some(database) = &self.database {
            conditions.and("database = ").push_bind(database.as_str());
        }
        if let Some(key) = &self.primary_key {
            conditions.and("primary_key = ").push_bind(key.as_str());
        }
        if let Some(operation) = self.operation {
            conditions.and("operation = ").push_bind(operation.as_str());
        }
        if let Some(transaction_id) = self.transaction_id {
            conditions
                .and("transaction_id = ")
                .push_bind(transaction_id);
        }
        if let Some(source) = &self.source {
            conditions
                .and("source = ")
                .push_bind(source.clone().unwrap_or_default());
        }
        if let Some(cluster) = &self.source_or_unrecorded {
            conditions
                .and("(source = '' OR source = ")
                .push_bind(cluster.clone())
                .push(")");
        }
        let containments = [
            ("context @> ", &self.context),
            ("before @> ", &self.before),
            ("after @> ", &self.after_image),
        ];
        for (sql, map) in containments {
            if !map.is_empty() {
                conditions.and(sql).push_bind(Value::Object(map.clone()));
            }
        }
        for required in &self.required_context {
            conditions
                .and("context @> ")
                .push_bind(Value::Object(required.clone()));
        }
        if let Some(tables) = &self.within_tables {
            if tables.is_empty() {
                conditions.and("false");
            } else {
                let builder = conditions.and("(");
                for (i, (schema, table)) in tables.iter().enumerate() {
                    if i > 0 {
                        builder.push(" OR ");
                    }
                    match schema {
                        Some(schema) => {
                            builder
                                .push("(\"table\" = ")
                                .push_bind(table.clone())
                                .push(" AND schema = ")
                                .push_bind(schema.clone())
                                .push(")");
                        }
                        None => {
                            builder.push("\"table\" = ").push_bind(table.clone());
                        }
                    }
                }
                builder.push(")");
            }
        }
        for field in &self.changed {
            conditions
                .and("before -> ")
                .push_bind(field.as_str())
                .push(" IS DISTINCT FROM after -> ")
                .push_bind(field.as_str());
        }
        if let Some(since) = self.since {
            conditions.and("committed_at >= ").push_bind(since);
        }
        if let Some(until) = self.until {
            conditions.and("committed_at < ").push_bind(until);
        }
        if let Some(cursor) = self.after {
            // The first condition lets the committed_at index bound the scan; the row comparison
            // is the exact keyset.
            let (loose, strict) = match self.order {
                Order::NewestFirst => ("<=", "<"),
                Order::OldestFirst => (">=", ">"),
            };
            conditions
                .and(format_args!("committed_at {loose} "))
                .push_bind(cursor.committed_at);
            let builder = conditions.and(format_args!("(committed_at, position, id) {strict} ("));
            builder
                .push_bind(cursor.committed_at)
                .push(", ")
                .push_bind(cursor.position)
                .push(", ")
                .push_bind(cursor.id)
                .push(")");
        }
    }
}

/// Joins conditions with `WHERE` / `AND`.
struct Conditions<'b> {
    builder: &'b mut QueryBuilder<Postgres>,
    any: bool,
}

impl<'b> Conditions<'b> {
    fn new(builder: &'b mut QueryBuilder<Postgres>) -> Self {
        Self {
            builder,
            any: false,
        }
    }

    fn and(&mut self, sql: impl std::fmt::Display) -> &mut QueryBuilder<Postgres> {
        self.builder
            .push(if self.any { " AND " } else { " WHERE " })
            .push(sql);
        self.any = true;
        self.builder
    }
}

/// The state of [`ChangeQuery::stream`].
struct Pages {
    query: ChangeQuery,
    remaining: Option<u64>,
    buffer: VecDeque<Change>,
    exhausted: bool,
}

impl Pages {
    async fn next(&mut self, pool: &PgPool) -> Result<Option<Change>, sqlx::Error> {
        if self.buffer.is_empty() && !self.exhausted {
            let rows = self
                .remaining
                .map_or(STREAM_PAGE_ROWS, |r| r.min(STREAM_PAGE_ROWS));
            if rows == 0 {
                return Ok(None);
            }
            let page = self.query.clone().limit(rows).fetch(pool).await?;
            self.exhausted = (page.len() as u64) < rows;
            if let Some(last) = page.last() {
                self.query.after = Some(last.cursor());
            }
            if let Some(remaining) = &mut self.remaining {
                *remaining -= page.len() as u64;
            }
            self.buffer.extend(page);
        }
        Ok(self.buffer.pop_front())
    }
}

/// Parses `KEY=VALUE` into a context filter entry. The value is JSON when it parses as JSON
/// (`187234` is a number, `true` a boolean, `"187234"` a string, `{"a":1}` an object), and a
/// string otherwise (`/todo`, `POST`).
///
/// ```
/// use bemi_audit::parse_context_pair;
/// use serde_json::json;
///
/// assert_eq!(parse_context_pair("user_id=187234")?, ("user_id".to_owned(), json!(187234)));
/// assert_eq!(parse_context_pair("endpoint=/todo")?, ("endpoint".to_owned(), json!("/todo")));
/// assert_eq!(parse_context_pair(r#"id="42""#)?, ("id".to_owned(), json!("42")));
/// assert!(parse_context_pair("user_id").is_err());
/// # Ok::<(), bemi_audit::ContextPairError>(())
/// ```
pub fn parse_context_pair(pair: &str) -> Result<(String, Value), ContextPairError> {
    let Some((key, value)) = pair.split_once('=') else {
        return Err(ContextPairError::NotAPair(pair.to_owned()));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(ContextPairError::NotAPair(pair.to_owned()));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    if key.contains('\0') || holds_nul(&value) {
        return Err(ContextPairError::Nul(pair.to_owned()));
    }
    Ok((key.to_owned(), value))
}

/// Whether a string of `value` (or a key of one of its objects) holds U+0000, which a
/// `jsonb` value — and so no stored change — cannot hold: a filter with one can match nothing,
/// and PostgreSQL refuses it.
///
/// ```
/// use serde_json::json;
///
/// assert!(bemi_audit::holds_nul(&json!({"a": ["x\0"]})));
/// assert!(bemi_audit::holds_nul(&json!({"\0": 1})));
/// assert!(!bemi_audit::holds_nul(&json!({"a": "x"})));
/// ```
#[must_use]
pub fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, value)| key.contains('\0') || holds_nul(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// A context filter that is not `KEY=VALUE`, or one PostgreSQL cannot compare.
///
/// ```
/// let error = bemi_audit::parse_context_pair("=1").unwrap_err();
/// assert!(error.to_string().contains("KEY=VALUE"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextPairError {
    /// No `=`, or an empty key.
    #[error(
        "context filter {0:?} is not KEY=VALUE: write e.g. user_id=187234 (a JSON value) or \
         endpoint=/todo (a string)"
    )]
    NotAPair(String),
    /// A NUL character (U+0000, `\u0000` in JSON), which no stored context holds.
    #[error(
        "context filter {0:?} holds a NUL character (U+0000, \\u0000 in JSON), which no \
         context holds (PostgreSQL's jsonb cannot store it): leave it out"
    )]
    Nul(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn placeholders(sql: &str) -> Vec<usize> {
        sql.match_indices('$')
            .map(|(i, _)| {
                sql.get(i + 1..)
                    .unwrap_or_default()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn without_filters_selects_every_column_newest_first() {
        let sql = ChangeQuery::new().sql();
        assert_eq!(
            sql,
            format!("{SELECT} ORDER BY committed_at DESC, position DESC, id DESC")
        );
        assert!(placeholders(&sql).is_empty());
    }

    #[test]
    fn every_filter_is_a_numbered_parameter_in_order() {
        let instant = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let cursor = Cursor {
            committed_at: instant,
            position: 99,
            id: Uuid::nil(),
        };
        let sql = ChangeQuery::new()
            .table("sales.order")
            .primary_key("7")
            .operation(Operation::Update)
            .context("user_id", 187234)
            .since(instant)
            .until(instant)
            .after(cursor)
            .limit(50)
            .sql();
        let conditions = sql
            .strip_prefix(SELECT)
            .unwrap()
            .split(" ORDER BY ")
            .next()
            .unwrap();
        assert_eq!(
            conditions,
            " WHERE \"table\" = $1 AND schema = $2 AND primary_key = $3 AND operation = $4 \
             AND context @> $5 AND committed_at >= $6 AND committed_at < $7 \
             AND committed_at <= $8 AND (committed_at, position, id) < ($9, $10, $11)"
        );
        assert!(sql.ends_with("ORDER BY committed_at DESC, position DESC, id DESC LIMIT $12"));
        assert_eq!(placeholders(&sql), (1..=12).collect::<Vec<_>>());
        // No value is written into the text.
        for value in ["sales", "order", "187234", "UPDATE", "2026", "99", "50"] {
            assert!(!conditions.contains(value), "{value} in {sql}");
        }
    }

    #[test]
    fn image_transaction_and_changed_field_filters_are_parameters_too() {
        let sql = ChangeQuery::new()
            .changed("task")
            .after_contains("task", "Sleep")
            .before_contains("is_completed", false)
            .before_contains("id", 1)
            .context("user_id", 1)
            .transaction_id(768)
            .database("app")
            .table("todo")
            .id(Uuid::nil())
            .changed("is_completed")
            .sql();
        let conditions = sql
            .strip_prefix(SELECT)
            .unwrap()
            .split(" ORDER BY ")
            .next()
            .unwrap();
        assert_eq!(
            conditions,
            " WHERE id = $1 AND \"table\" = $2 AND database = $3 AND transaction_id = $4 \
             AND context @> $5 AND before @> $6 AND after @> $7 \
             AND before -> $8 IS DISTINCT FROM after -> $9 \
             AND before -> $10 IS DISTINCT FROM after -> $11"
        );
        for value in ["task", "Sleep", "768", "app", "todo", "is_completed"] {
            assert!(!conditions.contains(value), "{value} in {sql}");
        }
        let query = ChangeQuery::new()
            .before_contains("is_completed", false)
            .before_contains("id", 1);
        assert_eq!(
            Value::Object(query.before.clone()),
            json!({"is_completed": false, "id": 1})
        );
    }

    #[test]
    fn oldest_first_flips_the_keyset_and_the_order() {
        let cursor = Cursor {
            committed_at: Utc::now(),
            position: 1,
            id: Uuid::nil(),
        };
        let sql = ChangeQuery::new().oldest_first().after(cursor).sql();
        assert!(
            sql.contains(
                "WHERE committed_at >= $1 AND (committed_at, position, id) > ($2, $3, $4)"
            ),
            "{sql}"
        );
        assert!(sql.ends_with("ORDER BY committed_at ASC, position ASC, id ASC"));
    }

    #[test]
    fn table_without_schema_matches_any_schema() {
        let sql = ChangeQuery::new().table("public.todo").table("todo").sql();
        assert!(sql.contains("WHERE \"table\" = $1 ORDER BY"), "{sql}");
    }

    #[test]
    fn context_pairs_accumulate_into_one_containment() {
        let query = ChangeQuery::new()
            .context("user_id", 187234)
            .context("endpoint", "/todo");
        assert_eq!(
            Value::Object(query.context.clone()),
            json!({"user_id": 187234, "endpoint": "/todo"})
        );
        assert_eq!(placeholders(&query.sql()), [1]);
    }

    #[test]
    fn context_pair_values_are_json_when_they_parse() {
        let cases = [
            ("n=187234", json!(187234)),
            ("f=1.5", json!(1.5)),
            ("b=false", json!(false)),
            ("z=null", json!(null)),
            ("s=\"187234\"", json!("187234")),
            ("o={\"a\":[1]}", json!({"a": [1]})),
            ("p=/todo", json!("/todo")),
            ("m=POST", json!("POST")),
            ("e=", json!("")),
            ("eq=a=b", json!("a=b")),
            (" k =v", json!("v")),
        ];
        for (pair, expected) in cases {
            let (key, value) = parse_context_pair(pair).unwrap();
            assert_eq!(value, expected, "{pair}");
            assert_eq!(key, pair.split('=').next().unwrap().trim());
        }
        for bad in ["", "user_id", "=1", " =1"] {
            assert!(
                matches!(parse_context_pair(bad), Err(ContextPairError::NotAPair(_))),
                "{bad:?}"
            );
        }
        // Regression: a NUL in the JSON made the query fail in PostgreSQL (a 500 in the UI).
        for nul in [
            "a=\"\\u0000\"",
            "a=[\"x\\u0000\"]",
            "a={\"\\u0000\":1}",
            "a\0=1",
            "a=\0",
        ] {
            let error = parse_context_pair(nul).unwrap_err();
            assert_eq!(error, ContextPairError::Nul(nul.to_owned()), "{nul:?}");
            assert!(error.to_string().contains("leave it out"), "{error}");
        }
    }
}
