//! The adapter, written once and compiled once per sqlx line (`v0_9`, `v0_8`): `sqlx` is the
//! line's sqlx, `compat` the few items whose shape differs between the lines.

use std::fmt;
use std::marker::PhantomData;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::{
    Describe, Either, Error, Execute, Executor, PgConnection, PgPool, Postgres, Transaction,
};

use futures_util::{StreamExt as _, TryStreamExt as _};

use super::compat::{self, PgStatement, PgTypeInfo, QuerySql};
use super::sqlx;

use bemi_core::carrier::{self, EMIT_SQL, InEffect};
use bemi_core::signing::sign;
use bemi_core::{context, sql};

/// How writes carry their context ([`BemiPool::carrier`]); re-exported from
/// [`bemi_core::carrier`].
pub use bemi_core::carrier::Carrier;

/// Wraps any PostgreSQL executor so that its writes are annotated with the current context.
///
/// ```no_run
/// use bemi_sqlx::Annotated;
///
/// # async fn run(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
/// sqlx::query("DELETE FROM todo WHERE id = $1")
///     .bind(1_i64)
///     .execute(Annotated(&mut *conn))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Annotated<E>(pub E);

/// A query taken apart, to run as it is (its message carried beside it) or with its SQL
/// annotated (`compat::fetch_many_with_sql`). Its `Execute` implementation is the line's
/// (`compat`).
pub(super) struct TakenQuery<'q> {
    pub(super) sql: QuerySql<'q>,
    pub(super) statement: Option<PgStatement<'q>>,
    pub(super) arguments: Option<Result<Option<PgArguments>, BoxDynError>>,
    pub(super) persistent: bool,
    /// The query's lifetime, which sqlx 0.8's SQL and statements have (0.9's have none).
    pub(super) lifetime: PhantomData<&'q str>,
}

impl<'q> TakenQuery<'q> {
    fn new<E: Execute<'q, Postgres>>(mut query: E) -> Self {
        let statement = query.statement().cloned();
        let arguments = query.take_arguments();
        let persistent = query.persistent();
        Self {
            sql: compat::sql_of(query),
            statement,
            arguments: Some(arguments),
            persistent,
            lifetime: PhantomData,
        }
    }

    /// The SQL, whatever the line holds it as.
    fn text(&self) -> &str {
        compat::as_str(&self.sql)
    }

    /// The arguments, taken once.
    pub(super) fn take_args(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.arguments.take().unwrap_or(Ok(None))
    }
}

/// What a query carries with [`Carrier::Message`], as far as the code that hands it over can
/// tell.
enum Carried {
    /// Not a write: nothing to carry.
    Read,
    /// A write with this context (the message's JSON).
    Context(String),
    /// A write without a context in scope here: the code that polls it may have one.
    Pending,
}

impl Carried {
    fn of(sql: &str) -> Self {
        if !sql::is_write(sql) {
            return Self::Read;
        }
        match carrier::message_context(sql) {
            Some(json) => Self::Context(json),
            None => Self::Pending,
        }
    }

    /// The context of a write, looked up again where it runs if it had none where it was made.
    fn resolve(self, sql: &str) -> Option<(bool, Option<String>)> {
        match self {
            Self::Read => None,
            Self::Context(json) => Some((true, Some(json))),
            Self::Pending => Some((true, carrier::message_context(sql))),
        }
    }
}

/// Emits what the write of `sql` inside a transaction carries, if the context in effect there
/// ([`InEffect`]) is not that one already: its context, or `{}` when it has none and one may be
/// in effect.
///
/// Cancellation: the context in effect is unknown from the moment the emission is planned until
/// it completed. A future dropped during that await may still have sent the emission (sqlx
/// runs a query it queued or flushed before the connection's next use), so the next write emits
/// again: its context, or `{}`.
async fn emit_in_transaction(
    conn: &mut PgConnection,
    in_effect: &InEffect,
    context: Option<String>,
    sql: &str,
) -> Result<(), Error> {
    let emission = in_effect.before_write(context);
    // A statement with a comment of its own may change the context in effect unseen.
    in_effect.after_statement(sql);
    let Some(emission) = emission else {
        return Ok(());
    };
    sqlx::query(EMIT_SQL)
        .bind(emission.json())
        .execute(&mut *conn)
        .await?;
    in_effect.emitted(&emission);
    Ok(())
}

/// Runs a write with a context outside a transaction: in a transaction of its own, opened
/// together with the emission, its results read whole before the commit.
///
/// If this future is dropped midway, the connection must not go back to the pool inside that
/// transaction: sqlx 0.9.1 rolls it back, sqlx 0.8 cannot once its `BEGIN` is sent, so on 0.8
/// the connection is closed instead (`compat::CloseIfDropped`).
async fn autocommit(
    conn: &mut PoolConnection<Postgres>,
    json: &str,
    query: TakenQuery<'_>,
) -> Result<Vec<Either<PgQueryResult, PgRow>>, Error> {
    let mut guard = compat::CloseIfDropped::new(conn);
    let results = async {
        let begin = carrier::begin_and_emit_sql(json);
        let mut tx = compat::begin_with(guard.conn(), begin).await?;
        let results = (&mut *tx).fetch_many(query).try_collect().await?;
        tx.commit().await?;
        Ok(results)
    }
    .await;
    // Ran to its end (an error rolled the transaction back).
    guard.defuse();
    results
}

/// Where a [`Carrier::Message`] executor runs its queries.
enum Target<'c> {
    /// A pool: each write with a context gets a connection and a transaction of its own.
    Pool(&'c PgPool),
    /// A connection outside a transaction.
    Connection(&'c mut PoolConnection<Postgres>),
    /// A connection inside a transaction, and the context in effect in it.
    Transaction(&'c mut PgConnection, &'c InEffect),
}

impl<'c> Target<'c> {
    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let query = TakenQuery::new(query);
        let carried = Carried::of(query.text());
        if let Carried::Read = carried {
            return match self {
                Target::Pool(pool) => pool.fetch_many(query),
                Target::Connection(conn) => (&mut **conn).fetch_many(query),
                Target::Transaction(conn, in_effect) => {
                    in_effect.after_statement(query.text());
                    conn.fetch_many(query)
                }
            };
        }
        Box::pin(
            futures_util::stream::once(async move {
                let (_, json) = carried.resolve(query.text()).unwrap_or_default();
                match (self, json) {
                    (Target::Transaction(conn, in_effect), json) => {
                        emit_in_transaction(&mut *conn, in_effect, json, query.text()).await?;
                        Ok::<_, Error>(conn.fetch_many(query))
                    }
                    (Target::Pool(pool), Some(json)) => {
                        let mut conn = pool.acquire().await?;
                        let results = autocommit(&mut conn, &sign(json), query).await?;
                        Ok(futures_util::stream::iter(results.into_iter().map(Ok)).boxed())
                    }
                    (Target::Connection(conn), Some(json)) => {
                        let results = autocommit(conn, &sign(json), query).await?;
                        Ok(futures_util::stream::iter(results.into_iter().map(Ok)).boxed())
                    }
                    (Target::Pool(pool), None) => Ok(pool.fetch_many(query)),
                    (Target::Connection(conn), None) => Ok((&mut **conn).fetch_many(query)),
                }
            })
            .try_flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let query = TakenQuery::new(query);
        let carried = Carried::of(query.text());
        if let Carried::Read = carried {
            return match self {
                Target::Pool(pool) => pool.fetch_optional(query),
                Target::Connection(conn) => (&mut **conn).fetch_optional(query),
                Target::Transaction(conn, in_effect) => {
                    in_effect.after_statement(query.text());
                    conn.fetch_optional(query)
                }
            };
        }
        Box::pin(async move {
            let (_, json) = carried.resolve(query.text()).unwrap_or_default();
            let first_row = |results: Vec<Either<PgQueryResult, PgRow>>| {
                results.into_iter().find_map(Either::right)
            };
            match (self, json) {
                (Target::Transaction(conn, in_effect), json) => {
                    emit_in_transaction(&mut *conn, in_effect, json, query.text()).await?;
                    conn.fetch_optional(query).await
                }
                (Target::Pool(pool), Some(json)) => {
                    let mut conn = pool.acquire().await?;
                    autocommit(&mut conn, &sign(json), query)
                        .await
                        .map(first_row)
                }
                (Target::Connection(conn), Some(json)) => {
                    autocommit(conn, &sign(json), query).await.map(first_row)
                }
                (Target::Pool(pool), None) => pool.fetch_optional(query).await,
                (Target::Connection(conn), None) => (&mut **conn).fetch_optional(query).await,
            }
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: QuerySql<'q>,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, Error>>
    where
        'c: 'e,
    {
        match self {
            Target::Pool(pool) => pool.prepare_with(sql, parameters),
            Target::Connection(conn) => (&mut **conn).prepare_with(sql, parameters),
            Target::Transaction(conn, _) => conn.prepare_with(sql, parameters),
        }
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: QuerySql<'q>,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, Error>>
    where
        'c: 'e,
    {
        match self {
            Target::Pool(pool) => pool.describe(sql),
            Target::Connection(conn) => (&mut **conn).describe(sql),
            Target::Transaction(conn, _) => conn.describe(sql),
        }
    }
}

/// A query whose SQL is annotated with the context of the code that hands it to the executor
/// or, if that code has none, of the code that first polls it.
struct AnnotatedQuery<'q> {
    query: TakenQuery<'q>,
    /// The annotated SQL, once annotated.
    annotated: Option<String>,
}

impl<'q> AnnotatedQuery<'q> {
    /// Takes the query apart and annotates it if a context is in scope **now**, at the call
    /// site, so that a query made in a request keeps that request's context wherever it runs.
    fn new<E: Execute<'q, Postgres>>(query: E) -> Self {
        let mut query = Self {
            query: TakenQuery::new(query),
            annotated: None,
        };
        query.annotate();
        query
    }

    /// Annotates with the current context, if there is one and the query is not annotated yet.
    fn annotate(&mut self) {
        if self.annotated.is_none() {
            self.annotated = sql::annotate_current(self.query.text());
            if self.annotated.is_some() {
                // A text unique to its context must not take a slot in the statement cache.
                self.query.persistent = false;
            }
        }
    }

    /// Whether the query still needs the context of the code that will poll it.
    fn needs_context(&self) -> bool {
        self.annotated.is_none() && context::with_current(|current| current.is_none())
    }

    fn fetch_many<'c, 'e, X>(
        self,
        inner: X,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
    where
        X: Executor<'c, Database = Postgres> + 'c,
        'c: 'e,
        'q: 'e,
    {
        match self.annotated {
            None => inner.fetch_many(self.query),
            Some(sql) => compat::fetch_many_with_sql(inner, self.query, sql),
        }
    }

    fn fetch_optional<'c, 'e, X>(self, inner: X) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
    where
        X: Executor<'c, Database = Postgres> + 'c,
        'c: 'e,
        'q: 'e,
    {
        match self.annotated {
            None => inner.fetch_optional(self.query),
            Some(sql) => compat::fetch_optional_with_sql(inner, self.query, sql),
        }
    }
}

impl<'c, X> Executor<'c> for Annotated<X>
where
    X: Executor<'c, Database = Postgres> + 'c,
{
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let mut query = AnnotatedQuery::new(query);
        if !query.needs_context() {
            return query.fetch_many(self.0);
        }
        let inner = self.0;
        Box::pin(
            futures_util::stream::once(async move {
                query.annotate();
                query.fetch_many(inner)
            })
            .flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let mut query = AnnotatedQuery::new(query);
        if !query.needs_context() {
            return query.fetch_optional(self.0);
        }
        let inner = self.0;
        Box::pin(async move {
            query.annotate();
            query.fetch_optional(inner).await
        })
    }

    compat::prepare_and_describe! {
        'c,
        /// Prepared statements are not annotated: a statement is prepared once and reused, so
        /// it cannot carry one request's context. Executing it with arguments inside a context
        /// does annotate that execution (as a non-persistent statement).
        |this| this.0
    }
}

/// Implements `Executor` for a reference to a wrapper: with [`Carrier::Comment`] through
/// [`Annotated`] of the inner executor, with [`Carrier::Message`] through a [`Target`].
macro_rules! carrying_executor {
    ($lt:lifetime, $self_ty:ty, auto: $auto:ident, |$this:ident| comment: $comment:expr, message: $message:expr) => {
        impl<$lt> Executor<$lt> for $self_ty {
            type Database = Postgres;

            fn fetch_many<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
            where
                $lt: 'e,
                E: 'q + Execute<'q, Postgres>,
            {
                let $this = self;
                match $this.carrier.resolve(Carrier::$auto) {
                    Carrier::Message => $message.fetch_many(query),
                    _ => Annotated($comment).fetch_many(query),
                }
            }

            fn fetch_optional<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
            where
                $lt: 'e,
                E: 'q + Execute<'q, Postgres>,
            {
                let $this = self;
                match $this.carrier.resolve(Carrier::$auto) {
                    Carrier::Message => $message.fetch_optional(query),
                    _ => Annotated($comment).fetch_optional(query),
                }
            }

            compat::prepare_and_describe! { $lt, |$this| $message }
        }
    };
}

/// A [`PgPool`] whose executor annotates writes with the current context. Cheap to clone.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// let pool = bemi_sqlx::BemiPool::new(pool);
/// sqlx::query("DELETE FROM todo WHERE id = $1").bind(3_i64).execute(&pool).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BemiPool {
    pool: PgPool,
    carrier: Carrier,
}

impl fmt::Debug for BemiPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BemiPool")
            .field("size", &self.pool.size())
            .field("carrier", &self.carrier)
            .finish()
    }
}

impl BemiPool {
    /// Wraps an existing pool.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
    /// let pool = bemi_sqlx::BemiPool::new(pool);
    /// # Ok(()) }
    /// ```
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            carrier: Carrier::default(),
        }
    }

    /// How writes carry their context (default [`Carrier::Auto`]; see the module docs).
    ///
    /// ```no_run
    /// # fn run(pool: sqlx::PgPool) {
    /// use bemi_sqlx::{BemiPool, Carrier};
    ///
    /// let pool = BemiPool::new(pool).carrier(Carrier::Comment);
    /// # }
    /// ```
    #[must_use]
    pub fn carrier(mut self, carrier: Carrier) -> Self {
        self.carrier = carrier;
        self
    }

    /// Connects a new pool with sqlx's default options.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let pool = bemi_sqlx::BemiPool::connect("postgres://localhost/app").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, Error> {
        PgPool::connect(url).await.map(Self::new)
    }

    /// Connects a new pool with the given pool and connection options.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), sqlx::Error> {
    /// let options: sqlx::postgres::PgConnectOptions = "postgres://localhost/app".parse()?;
    /// let pool = bemi_sqlx::BemiPool::connect_with(
    ///     sqlx::postgres::PgPoolOptions::new().max_connections(20),
    ///     options,
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(
        pool_options: PgPoolOptions,
        options: PgConnectOptions,
    ) -> Result<Self, Error> {
        pool_options.connect_with(options).await.map(Self::new)
    }

    /// The wrapped pool: queries through it are **not** annotated.
    ///
    /// ```no_run
    /// # fn run(pool: bemi_sqlx::BemiPool) {
    /// let raw: &sqlx::PgPool = pool.inner();
    /// # }
    /// ```
    pub fn inner(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a transaction whose executor annotates writes.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("DELETE FROM todo").execute(&mut tx).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin(&self) -> Result<BemiTransaction<'static>, Error> {
        let tx = self.pool.begin().await?;
        Ok(BemiTransaction::new(tx).carrier(self.carrier))
    }

    /// Acquires a connection whose executor annotates writes.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// let mut conn = pool.acquire().await?;
    /// sqlx::query("DELETE FROM todo").execute(&mut conn).await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self) -> Result<BemiConnection, Error> {
        self.pool.acquire().await.map(|conn| BemiConnection {
            conn,
            carrier: self.carrier,
        })
    }

    /// Closes the pool (see [`sqlx::Pool::close`]).
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_sqlx::BemiPool) {
    /// pool.close().await;
    /// # }
    /// ```
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl From<PgPool> for BemiPool {
    fn from(pool: PgPool) -> Self {
        Self::new(pool)
    }
}

carrying_executor!('p, &'p BemiPool, auto: Comment, |this| comment: &this.pool, message: Target::Pool(&this.pool));

/// A transaction whose executor annotates writes; from [`BemiPool::begin`] or
/// [`BemiTransaction::new`]. Dropped without [`commit`](Self::commit), it rolls back.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// let mut tx = bemi_sqlx::BemiTransaction::new(pool.begin().await?);
/// sqlx::query("UPDATE todo SET is_completed = true WHERE id = $1").bind(1_i64).execute(&mut tx).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BemiTransaction<'c> {
    tx: Transaction<'c, Postgres>,
    carrier: Carrier,
    /// The context in effect in this transaction.
    in_effect: InEffect,
}

impl<'c> BemiTransaction<'c> {
    /// Wraps a transaction begun elsewhere.
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let tx = bemi_sqlx::BemiTransaction::new(pool.begin().await?);
    /// # Ok(()) }
    /// ```
    pub fn new(tx: Transaction<'c, Postgres>) -> Self {
        Self {
            tx,
            carrier: Carrier::default(),
            in_effect: InEffect::new(),
        }
    }

    /// How writes carry their context (default [`Carrier::Auto`]).
    #[must_use]
    pub fn carrier(mut self, carrier: Carrier) -> Self {
        self.carrier = carrier;
        self
    }

    /// Commits the transaction.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// pool.begin().await?.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn commit(self) -> Result<(), Error> {
        self.tx.commit().await
    }

    /// Rolls the transaction back.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// pool.begin().await?.rollback().await?;
    /// # Ok(()) }
    /// ```
    pub async fn rollback(self) -> Result<(), Error> {
        self.tx.rollback().await
    }

    /// The wrapped transaction: queries through it are **not** annotated.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("SELECT 1").execute(&mut **tx.inner_mut()).await?;
    /// # Ok(()) }
    /// ```
    pub fn inner_mut(&mut self) -> &mut Transaction<'c, Postgres> {
        &mut self.tx
    }

    /// Unwraps the transaction.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// let tx: sqlx::Transaction<'_, sqlx::Postgres> = pool.begin().await?.into_inner();
    /// # Ok(()) }
    /// ```
    pub fn into_inner(self) -> Transaction<'c, Postgres> {
        self.tx
    }
}

carrying_executor!('t, &'t mut BemiTransaction<'_>, auto: Message, |this| comment: &mut *this.tx, message: Target::Transaction(&mut this.tx, &this.in_effect));

/// A pooled connection whose executor annotates writes; from [`BemiPool::acquire`].
///
/// ```no_run
/// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
/// let mut conn = pool.acquire().await?;
/// sqlx::query("INSERT INTO todo (task) VALUES ('Eat')").execute(&mut conn).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BemiConnection {
    conn: PoolConnection<Postgres>,
    carrier: Carrier,
}

impl BemiConnection {
    /// The wrapped connection: queries through it are **not** annotated.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// let mut conn = pool.acquire().await?;
    /// sqlx::query("SELECT 1").execute(&mut **conn.inner_mut()).await?;
    /// # Ok(()) }
    /// ```
    pub fn inner_mut(&mut self) -> &mut PoolConnection<Postgres> {
        &mut self.conn
    }

    /// Starts a transaction on this connection.
    ///
    /// ```no_run
    /// # async fn run(pool: bemi_sqlx::BemiPool) -> Result<(), sqlx::Error> {
    /// let mut conn = pool.acquire().await?;
    /// let tx = conn.begin().await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn begin(&mut self) -> Result<BemiTransaction<'_>, Error> {
        use sqlx::Connection;
        let carrier = self.carrier;
        let tx = self.conn.begin().await?;
        Ok(BemiTransaction::new(tx).carrier(carrier))
    }
}

carrying_executor!('c, &'c mut BemiConnection, auto: Comment, |this| comment: &mut *this.conn, message: Target::Connection(&mut this.conn));
