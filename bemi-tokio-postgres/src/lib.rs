#![doc = include_str!("../README.md")]

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use futures_util::future::{Either, join, join3};
use tokio::sync::{Mutex, MutexGuard, OnceCell};
use tokio_postgres::types::{BorrowToSql, ToSql, Type};
use tokio_postgres::{Client, Error, Row, RowStream, SimpleQueryMessage, Statement, Transaction};

use bemi_core::carrier::{self, EMIT_SQL, InEffect};
use bemi_core::sql;

/// How writes carry their context ([`BemiClient::carrier`]); re-exported from
/// [`bemi_core::carrier`].
pub use bemi_core::carrier::Carrier;

mod private {
    use tokio_postgres::Statement;

    /// A query's text or statement.
    #[derive(Debug, Clone, Copy)]
    pub enum QueryParts<'a> {
        Text(&'a str),
        Prepared(&'a Statement),
    }

    /// Seals [`BemiQuery`](super::BemiQuery) to the adapter's query types, and is how the
    /// adapter reads them.
    pub trait Sealed {
        fn parts(&self) -> QueryParts<'_>;
    }
}

use private::QueryParts;

/// A query the adapter accepts: SQL text or a prepared [`Statement`].
///
/// ```
/// fn takes<T: ?Sized + bemi_tokio_postgres::BemiQuery>(_: &T) {}
/// takes("DELETE FROM todo");
/// takes(&String::from("DELETE FROM todo"));
/// ```
pub trait BemiQuery: private::Sealed + Sync {}

impl private::Sealed for str {
    fn parts(&self) -> QueryParts<'_> {
        QueryParts::Text(self)
    }
}
impl BemiQuery for str {}

impl private::Sealed for String {
    fn parts(&self) -> QueryParts<'_> {
        QueryParts::Text(self)
    }
}
impl BemiQuery for String {}

impl private::Sealed for Statement {
    fn parts(&self) -> QueryParts<'_> {
        QueryParts::Prepared(self)
    }
}
impl BemiQuery for Statement {}

/// The context a query carries, as far as the code that makes it can tell.
#[derive(Debug)]
enum Carried {
    /// Nothing to carry: a read, or (with the comment) a prepared statement.
    Nothing,
    /// This context (Message carrier: the message's JSON, not signed yet) or this annotated
    /// text (Comment carrier).
    Context(String),
    /// No context in scope where the query was made: the code that runs it may have one.
    Pending,
}

impl Carried {
    fn of(carrier: Carrier, query: QueryParts<'_>) -> Self {
        let found = match (carrier, query) {
            (Carrier::Message, QueryParts::Text(sql)) => {
                if !sql::is_write(sql) {
                    return Self::Nothing;
                }
                carrier::message_context(sql)
            }
            (Carrier::Message, QueryParts::Prepared(_)) => carrier::message_context_without_sql(),
            (_, QueryParts::Text(sql)) => {
                if !sql::is_write(sql) {
                    return Self::Nothing;
                }
                sql::annotate_current(sql)
            }
            (_, QueryParts::Prepared(_)) => return Self::Nothing,
        };
        found.map_or(Self::Pending, Self::Context)
    }

    /// The context of a query that may write (`None`: a read), looked up again where the query
    /// runs if it had none where it was made.
    fn resolve(self, carrier: Carrier, query: QueryParts<'_>) -> Option<Option<String>> {
        match self {
            Self::Nothing => None,
            Self::Context(found) => Some(Some(found)),
            Self::Pending => match Self::of(carrier, query) {
                Self::Context(found) => Some(Some(found)),
                Self::Nothing => None,
                Self::Pending => Some(None),
            },
        }
    }
}

/// What a wrapper shares with the queries made through it.
#[derive(Debug, Default)]
struct Shared {
    /// Held while a query's requests are sent, so that the requests of one write go out
    /// together, and in a transaction in the order its emissions were decided.
    sending: Mutex<()>,
    /// The prepared emission statement ([`EMIT_SQL`]) of this connection.
    emit: OnceCell<Statement>,
}

/// How a wrapper sends the emission of a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Emission {
    /// [`EMIT_SQL`], prepared once per wrapper (an owned client: once per connection).
    Prepared,
    /// [`EMIT_SQL`] as an unnamed statement with its parameter's type given (no prepare round
    /// trip, nothing kept on the connection): for wrappers over a borrowed, pooled client.
    Typed,
    /// A simple-protocol statement with the context as a literal: behind a transaction-pooling
    /// pgbouncer older than 1.21.
    Simple,
}

/// How a query runs: on a client outside a transaction, or inside one (`transaction` knows
/// which context is in effect in it).
#[derive(Clone, Copy)]
struct Session<'a> {
    client: &'a Client,
    shared: &'a Shared,
    carrier: Carrier,
    emission: Emission,
    transaction: Option<&'a InEffect>,
    /// The enclosing transaction's, in a savepoint: a context emitted here is in effect there
    /// too once the savepoint is released.
    parent: Option<&'a InEffect>,
}

/// What to send with a query.
enum Plan<'a> {
    /// The query alone (as text: annotated, with the comment carrier).
    Alone(Option<String>),
    /// Inside the open transaction (whose context in effect is this): the emission the context
    /// asks for (decided when the requests are sent), then the query.
    InTransaction(&'a InEffect, Option<String>),
    /// `BEGIN`, the emission of this (signed) message, the query, `COMMIT`.
    Wrap(String),
}

impl<'a> Session<'a> {
    /// This session with another carrier.
    fn with_carrier(mut self, carrier: Carrier) -> Self {
        self.carrier = carrier;
        self
    }

    /// The prepared emission statement, when emissions use one.
    async fn emit_statement(&self) -> Result<Option<&Statement>, Error> {
        if self.emission != Emission::Prepared {
            return Ok(None);
        }
        self.shared
            .emit
            .get_or_try_init(|| self.client.prepare(EMIT_SQL))
            .await
            .map(Some)
    }

    /// The emission of `json` (after `BEGIN` when `begin`), sent on its first poll: with the
    /// prepared statement, or in the simple protocol (always, when `simple`).
    fn emission<'e>(
        &'e self,
        json: &'e str,
        statement: Option<&'e Statement>,
        begin: bool,
        simple: bool,
    ) -> impl Future<Output = Result<(), Error>> + 'e {
        match (statement, self.emission) {
            (Some(statement), _) if !simple => Either::Left(Either::Left(async move {
                let params: [&(dyn ToSql + Sync); 1] = [&json];
                let emit = self.client.execute(statement, &params);
                if begin {
                    let (began, emitted) = join(self.client.batch_execute("BEGIN"), emit).await;
                    began?;
                    emitted.map(drop)
                } else {
                    emit.await.map(drop)
                }
            })),
            (_, Emission::Typed) if !simple => Either::Left(Either::Right(async move {
                let params: [(&(dyn ToSql + Sync), Type); 1] = [(&json, Type::TEXT)];
                let emit = self.client.execute_typed(EMIT_SQL, &params);
                if begin {
                    let (began, emitted) = join(self.client.batch_execute("BEGIN"), emit).await;
                    began?;
                    emitted.map(drop)
                } else {
                    emit.await.map(drop)
                }
            })),
            _ => Either::Right(async move {
                let sql = if begin {
                    carrier::begin_and_emit_sql(json)
                } else {
                    carrier::emit_sql_literal(json)
                };
                self.client.batch_execute(&sql).await
            }),
        }
    }

    fn plan(&self, carried: Option<Option<String>>) -> Plan<'a> {
        match (self.carrier, self.transaction, carried) {
            (_, _, None) => Plan::Alone(None),
            (Carrier::Message, None, Some(None)) => Plan::Alone(None),
            (Carrier::Message, None, Some(Some(context))) => {
                Plan::Wrap(bemi_core::signing::sign(context))
            }
            (Carrier::Message, Some(in_effect), Some(context)) => {
                Plan::InTransaction(in_effect, context)
            }
            // The comment (or `Auto`, which sessions resolve before they get here).
            (_, _, Some(annotated)) => Plan::Alone(annotated),
        }
    }

    /// Polls `future` once — which sends its requests — while holding the sending lock, then
    /// drives it to the end.
    async fn send<F: Future>(&self, future: F) -> F::Output {
        let future = pin!(future);
        let sending = self.shared.sending.lock().await;
        Self::send_holding(sending, future).await
    }

    /// [`Self::send`] with the sending lock already held. (The future is pinned by the caller
    /// and borrowed here, so that its state is not kept twice.)
    async fn send_holding<F: Future>(
        sending: MutexGuard<'_, ()>,
        mut future: std::pin::Pin<&mut F>,
    ) -> F::Output {
        let first = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
        drop(sending);
        match first {
            Poll::Ready(output) => output,
            Poll::Pending => future.await,
        }
    }

    /// Sends `query` (run by `query`, a future not polled yet) in the open transaction, after
    /// the emission that `context` needs there: none when it is the context already in
    /// effect. The decision is made under the sending lock, so that decisions and requests
    /// keep one order when tasks share the transaction. `sql` is the query's text, when known;
    /// `simple` emits in the simple protocol.
    async fn send_in_transaction<R>(
        &self,
        in_effect: &InEffect,
        context: Option<String>,
        sql: Option<&str>,
        simple: bool,
        query: impl Future<Output = Result<R, Error>>,
    ) -> Result<R, Error> {
        let sending = self.shared.sending.lock().await;
        let emission = in_effect.before_write(context);
        if let (Some(parent), Some(_)) = (self.parent, &emission) {
            parent.forget();
        }
        if let Some(sql) = sql {
            in_effect.after_statement(sql);
        }
        let Some(emission) = emission else {
            return Self::send_holding(sending, pin!(query)).await;
        };
        // Prepared on the first emission only (under the lock: once per connection), so that
        // a transaction whose writes carry no context never prepares it. Boxed: the prepare
        // future is large, and this one is polled inside every write's.
        let statement = if simple {
            None
        } else {
            Box::pin(self.emit_statement()).await?
        };
        let emit = self.emission(emission.json(), statement, false, simple);
        let (emitted, result) = Self::send_holding(sending, pin!(join(emit, query))).await;
        emitted?;
        in_effect.emitted(&emission);
        result
    }

    /// Runs `run` with the query's statement, after what the plan asks, all requests sent
    /// together.
    async fn run<'s, R, F, Fut>(
        &'s self,
        query: QueryParts<'s>,
        carried: Carried,
        run: F,
    ) -> Result<R, Error>
    where
        F: FnOnce(&'s Client, Statement) -> Fut,
        Fut: Future<Output = Result<R, Error>>,
    {
        let sql = match query {
            QueryParts::Text(sql) => Some(sql),
            QueryParts::Prepared(_) => None,
        };
        let plan = self.plan(carried.resolve(self.carrier, query));
        let statement = match (query, &plan) {
            (_, Plan::Alone(Some(annotated))) => self.client.prepare(annotated).await?,
            (QueryParts::Text(sql), _) => self.client.prepare(sql).await?,
            (QueryParts::Prepared(statement), _) => statement.clone(),
        };
        match plan {
            Plan::InTransaction(in_effect, context) => {
                let query = run(self.client, statement);
                self.send_in_transaction(in_effect, context, sql, false, query)
                    .await
            }
            Plan::Alone(annotated) => {
                if let Some(in_effect) = self.transaction {
                    // A read, or a statement carrying its own comment: what may change the
                    // context in effect unseen is noted before it is sent.
                    in_effect.after_statement(annotated.as_deref().or(sql).unwrap_or_default());
                }
                self.send(run(self.client, statement)).await
            }
            Plan::Wrap(json) => {
                let emit = self.emit_statement().await?;
                let (began, result, committed) = self
                    .send(join3(
                        self.emission(&json, emit, true, false),
                        run(self.client, statement),
                        // After a failed statement, COMMIT ends the transaction as a ROLLBACK.
                        self.client.batch_execute("COMMIT"),
                    ))
                    .await;
                began?;
                let result = result?;
                committed?;
                Ok(result)
            }
        }
    }

    /// `batch_execute` and `simple_query`: text in the simple protocol, several statements
    /// allowed; if one writes, the whole batch carries the context.
    async fn simple<R, F, Fut>(&self, query: &str, carried: Carried, run: F) -> Result<R, Error>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<R, Error>>,
    {
        match self.plan(carried.resolve(self.carrier, QueryParts::Text(query))) {
            Plan::InTransaction(in_effect, context) => {
                let batch = run(query.to_owned());
                self.send_in_transaction(in_effect, context, Some(query), true, batch)
                    .await
            }
            Plan::Alone(annotated) => {
                if let Some(in_effect) = self.transaction {
                    in_effect.after_statement(annotated.as_deref().unwrap_or(query));
                }
                self.send(run(annotated.unwrap_or_else(|| query.to_owned())))
                    .await
            }
            Plan::Wrap(json) => {
                // Three simple queries sent together: `BEGIN` with the emission, the batch,
                // `COMMIT`, which ends the transaction as a ROLLBACK after a failed statement.
                // All are sent on the first poll, so a future dropped after it never leaves the
                // transaction open.
                let opening = carrier::begin_and_emit_sql(&json);
                let (began, result, committed) = self
                    .send(join3(
                        self.client.batch_execute(&opening),
                        run(query.to_owned()),
                        self.client.batch_execute("COMMIT"),
                    ))
                    .await;
                began?;
                let result = result?;
                committed?;
                Ok(result)
            }
        }
    }
}

/// One method of [`query_methods`] that runs a statement like tokio-postgres' method of the
/// same name, carrying the context.
macro_rules! statement_method {
    ($(#[$doc:meta])* $name:ident -> $output:ty) => {
        $(#[$doc])*
        pub fn $name<'q, T>(
            &'q self,
            query: &'q T,
            params: &'q [&'q (dyn ToSql + Sync)],
        ) -> impl Future<Output = Result<$output, Error>> + Send + 'q
        where
            T: ?Sized + BemiQuery,
        {
            let carried = Carried::of(self.session().carrier, query.parts());
            async move {
                self.session()
                    .run(query.parts(), carried, |client, statement| async move {
                        client.$name(&statement, params).await
                    })
                    .await
            }
        }
    };
}

/// Generates the query methods shared by the wrappers. Each method takes the context of the
/// code that calls it, so a future made in a request keeps that context wherever it is
/// awaited; without a context there, the context of the code that awaits it.
macro_rules! query_methods {
    () => {
        statement_method!(
            /// Like tokio-postgres' `execute`: runs a statement and returns the number of rows it
            /// affected.
            execute -> u64
        );
        statement_method!(
            /// Like tokio-postgres' `query`: runs a statement and returns its rows.
            query -> Vec<Row>
        );
        statement_method!(
            /// Like tokio-postgres' `query_one`: exactly one row, or an error.
            query_one -> Row
        );
        statement_method!(
            /// Like tokio-postgres' `query_opt`: at most one row.
            query_opt -> Option<Row>
        );

        /// Like tokio-postgres' `query_raw`: a stream of rows, parameters from an iterator.
        /// Its rows arrive after the call returns, so a write outside a transaction cannot be
        /// wrapped in one: there it carries its context in a comment (a prepared statement
        /// carries none).
        pub fn query_raw<'q, T, P, I>(
            &'q self,
            query: &'q T,
            params: I,
        ) -> impl Future<Output = Result<RowStream, Error>> + Send + 'q
        where
            T: ?Sized + BemiQuery,
            P: BorrowToSql,
            I: IntoIterator<Item = P> + Send + 'q,
            I::IntoIter: ExactSizeIterator,
        {
            let session = self.session();
            let carrier = match (session.carrier, session.transaction) {
                (Carrier::Message, None) => Carrier::Comment,
                (carrier, _) => carrier,
            };
            let carried = Carried::of(carrier, query.parts());
            async move {
                self.session()
                    .with_carrier(carrier)
                    .run(query.parts(), carried, |client, statement| async move {
                        client.query_raw(&statement, params).await
                    })
                    .await
            }
        }

        /// Like tokio-postgres' `batch_execute`: several statements in one simple-protocol
        /// query. If any of them writes, the whole batch carries the context.
        pub fn batch_execute<'q>(
            &'q self,
            query: &'q str,
        ) -> impl Future<Output = Result<(), Error>> + Send + 'q {
            let carried = Carried::of(self.session().carrier, QueryParts::Text(query));
            async move {
                let client = self.session().client;
                self.session()
                    .simple(query, carried, |batch| async move {
                        client.batch_execute(&batch).await
                    })
                    .await
            }
        }

        /// Like tokio-postgres' `simple_query`, carrying the context like
        /// [`Self::batch_execute`].
        pub fn simple_query<'q>(
            &'q self,
            query: &'q str,
        ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>, Error>> + Send + 'q {
            let carried = Carried::of(self.session().carrier, QueryParts::Text(query));
            async move {
                let client = self.session().client;
                self.session()
                    .simple(query, carried, |batch| async move {
                        client.simple_query(&batch).await
                    })
                    .await
            }
        }

        /// Prepares a statement. With the message carrier, writes through it carry the
        /// context (without the `SQL` key); with the comment, they carry none.
        pub async fn prepare(&self, query: &str) -> Result<Statement, Error> {
            self.session().client.prepare(query).await
        }
    };
}

/// A tokio-postgres [`Client`] whose writes carry the current context. It may be shared by
/// many tasks (e.g. in an `Arc`): the requests of one write are never interleaved with another
/// task's.
///
/// ```no_run
/// # async fn run(client: tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
/// let client = bemi_tokio_postgres::BemiClient::new(client);
/// client.execute("DELETE FROM todo WHERE id = $1", &[&1_i64]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BemiClient {
    inner: Client,
    carrier: Carrier,
    emission: Emission,
    shared: Shared,
}

impl BemiClient {
    /// Wraps a client.
    ///
    /// ```no_run
    /// # fn run(client: tokio_postgres::Client) {
    /// let client = bemi_tokio_postgres::BemiClient::new(client);
    /// # }
    /// ```
    pub fn new(client: Client) -> Self {
        Self {
            inner: client,
            carrier: Carrier::default(),
            emission: Emission::Prepared,
            shared: Shared::default(),
        }
    }

    /// How writes carry their context (default [`Carrier::Auto`], which is the message here;
    /// see the module docs).
    #[must_use]
    pub fn carrier(mut self, carrier: Carrier) -> Self {
        self.carrier = carrier;
        self
    }

    /// Set when the client connects through a transaction-pooling pgbouncer older than 1.21
    /// (no protocol-level prepared statements): the context is then emitted with a
    /// simple-protocol statement instead of the adapter's prepared one, which the next
    /// transaction may not find on its server connection. Costs a parse per emission.
    ///
    /// ```no_run
    /// # fn run(client: tokio_postgres::Client) {
    /// let client = bemi_tokio_postgres::BemiClient::new(client).transaction_pooler(true);
    /// # }
    /// ```
    #[must_use]
    pub fn transaction_pooler(mut self, behind: bool) -> Self {
        self.emission = if behind {
            Emission::Simple
        } else {
            Emission::Prepared
        };
        self
    }

    /// The wrapped client: queries through it carry no context (see the module docs).
    pub fn inner(&self) -> &Client {
        &self.inner
    }

    /// Unwraps the client.
    pub fn into_inner(self) -> Client {
        self.inner
    }

    /// Begins a transaction whose writes carry the context.
    ///
    /// ```no_run
    /// # async fn run(mut client: bemi_tokio_postgres::BemiClient) -> Result<(), tokio_postgres::Error> {
    /// let tx = client.transaction().await?;
    /// tx.execute("DELETE FROM todo", &[]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction(&mut self) -> Result<BemiTransaction<'_>, Error> {
        let (carrier, emission) = (self.carrier, self.emission);
        let emit = self.shared.emit.get().cloned();
        let transaction = self.inner.transaction().await?;
        let mut transaction = BemiTransaction::new(transaction).carrier(carrier);
        transaction.emission = emission;
        if let Some(emit) = emit {
            let _ = transaction.shared.emit.set(emit);
        }
        Ok(transaction)
    }

    fn session(&self) -> Session<'_> {
        Session {
            client: &self.inner,
            shared: &self.shared,
            carrier: self.carrier.resolve(Carrier::Message),
            emission: self.emission,
            transaction: None,
            parent: None,
        }
    }

    query_methods!();
}

impl From<Client> for BemiClient {
    fn from(client: Client) -> Self {
        Self::new(client)
    }
}

/// A tokio-postgres [`Transaction`] whose writes carry the context; from
/// [`BemiClient::transaction`]. Dropped without [`commit`](Self::commit), it rolls back.
///
/// ```no_run
/// # async fn run(mut client: tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
/// let tx = bemi_tokio_postgres::BemiTransaction::new(client.transaction().await?);
/// tx.execute("UPDATE todo SET is_completed = true", &[]).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub struct BemiTransaction<'a> {
    inner: Transaction<'a>,
    carrier: Carrier,
    emission: Emission,
    shared: Shared,
    /// The context in effect in this transaction.
    in_effect: InEffect,
    /// The enclosing transaction's, for a savepoint.
    parent: Option<&'a InEffect>,
}

impl std::fmt::Debug for BemiTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BemiTransaction")
            .field("carrier", &self.carrier)
            .finish_non_exhaustive()
    }
}

impl<'a> BemiTransaction<'a> {
    /// Wraps a transaction.
    pub fn new(transaction: Transaction<'a>) -> Self {
        Self {
            inner: transaction,
            carrier: Carrier::default(),
            emission: Emission::Prepared,
            shared: Shared::default(),
            in_effect: InEffect::new(),
            parent: None,
        }
    }

    /// How writes carry their context (default [`Carrier::Auto`], which is the message here).
    #[must_use]
    pub fn carrier(mut self, carrier: Carrier) -> Self {
        self.carrier = carrier;
        self
    }

    /// The wrapped transaction: queries through it carry no context of their own.
    pub fn inner(&self) -> &Transaction<'a> {
        &self.inner
    }

    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), Error> {
        self.inner.commit().await
    }

    /// Rolls the transaction back.
    pub async fn rollback(self) -> Result<(), Error> {
        self.inner.rollback().await
    }

    /// Starts a nested transaction (a savepoint) whose writes carry the context.
    ///
    /// ```no_run
    /// # async fn run(mut client: bemi_tokio_postgres::BemiClient) -> Result<(), tokio_postgres::Error> {
    /// let mut tx = client.transaction().await?;
    /// let nested = tx.transaction().await?;
    /// nested.rollback().await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction(&mut self) -> Result<BemiTransaction<'_>, Error> {
        let (carrier, emission) = (self.carrier, self.emission);
        let emit = self.shared.emit.get().cloned();
        // What the outer transaction emitted is in effect in the savepoint too.
        let in_effect = self.in_effect.savepoint();
        let nested = self.inner.transaction().await?;
        let mut nested = BemiTransaction::new(nested).carrier(carrier);
        nested.emission = emission;
        if let Some(emit) = emit {
            let _ = nested.shared.emit.set(emit);
        }
        nested.in_effect = in_effect;
        nested.parent = Some(&self.in_effect);
        Ok(nested)
    }

    fn session(&self) -> Session<'_> {
        Session {
            client: self.inner.client(),
            shared: &self.shared,
            carrier: self.carrier.resolve(Carrier::Message),
            emission: self.emission,
            transaction: Some(&self.in_effect),
            parent: self.parent,
        }
    }

    query_methods!();
}

/// The adapter over a client it does not own: a pooled client that goes back to its pool
/// (deadpool-postgres' `Object` and bb8's `PooledConnection` dereference to a [`Client`]). Its
/// writes carry the context like [`BemiClient`]'s, statements prepared elsewhere included (e.g.
/// with deadpool's `prepare_cached`); the emission is an unnamed statement sent with the write
/// (nothing is kept on the connection, which the next checkout may not expect). Wrap the client
/// where it is used, once per checkout.
///
/// ```no_run
/// use bemi_tokio_postgres::BorrowedClient;
///
/// # async fn run(pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let pooled = pool.get().await?;
/// let insert = pooled.prepare_cached("INSERT INTO todo (task) VALUES ($1)").await?;
/// BorrowedClient::new(&pooled).execute(&insert, &[&"Sleep"]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BorrowedClient<'c> {
    client: &'c Client,
    carrier: Carrier,
    emission: Emission,
    shared: Shared,
}

impl<'c> BorrowedClient<'c> {
    /// Wraps a borrowed client.
    pub fn new(client: &'c Client) -> Self {
        Self {
            client,
            carrier: Carrier::default(),
            emission: Emission::Typed,
            shared: Shared::default(),
        }
    }

    /// How writes carry their context (default [`Carrier::Auto`], which is the message here).
    #[must_use]
    pub fn carrier(mut self, carrier: Carrier) -> Self {
        self.carrier = carrier;
        self
    }

    /// Set behind a transaction-pooling pgbouncer older than 1.21 (see
    /// [`BemiClient::transaction_pooler`]).
    #[must_use]
    pub fn transaction_pooler(mut self, behind: bool) -> Self {
        self.emission = if behind {
            Emission::Simple
        } else {
            Emission::Typed
        };
        self
    }

    fn session(&self) -> Session<'_> {
        Session {
            client: self.client,
            shared: &self.shared,
            carrier: self.carrier.resolve(Carrier::Message),
            emission: self.emission,
            transaction: None,
            parent: None,
        }
    }

    query_methods!();
}

/// The adapter over a transaction it does not own (deadpool-postgres' `Transaction`
/// dereferences to a tokio-postgres [`Transaction`]): its writes carry the context, and a write
/// without one after a write with one resets it, as in [`BemiTransaction`]. Commit or roll back
/// the transaction itself.
///
/// ```no_run
/// use bemi_tokio_postgres::BorrowedTransaction;
///
/// # async fn run(pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let mut pooled = pool.get().await?;
/// let tx = pooled.transaction().await?;
/// let complete = tx.prepare_cached("UPDATE todo SET is_completed = true WHERE id = $1").await?;
/// BorrowedTransaction::new(&tx).execute(&complete, &[&1_i64]).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BorrowedTransaction<'t> {
    client: &'t Client,
    carrier: Carrier,
    emission: Emission,
    shared: Shared,
    in_effect: InEffect,
    parent: Option<&'t InEffect>,
}

impl<'t> BorrowedTransaction<'t> {
    /// Wraps a borrowed transaction.
    pub fn new(transaction: &'t Transaction<'_>) -> Self {
        Self {
            client: transaction.client(),
            carrier: Carrier::default(),
            emission: Emission::Typed,
            shared: Shared::default(),
            in_effect: InEffect::new(),
            parent: None,
        }
    }

    /// Wraps a savepoint of this transaction (`transaction.transaction()` of the transaction
    /// this wraps): what this one emitted is in effect there too, and what the savepoint emits
    /// is in effect here once it is released.
    pub fn savepoint<'s>(&'s self, savepoint: &'s Transaction<'_>) -> BorrowedTransaction<'s> {
        BorrowedTransaction {
            client: savepoint.client(),
            carrier: self.carrier,
            emission: self.emission,
            shared: Shared::default(),
            in_effect: self.in_effect.savepoint(),
            parent: Some(&self.in_effect),
        }
    }

    /// How writes carry their context (default [`Carrier::Auto`], which is the message here).
    #[must_use]
    pub fn carrier(mut self, carrier: Carrier) -> Self {
        self.carrier = carrier;
        self
    }

    /// Set behind a transaction-pooling pgbouncer older than 1.21 (see
    /// [`BemiClient::transaction_pooler`]).
    #[must_use]
    pub fn transaction_pooler(mut self, behind: bool) -> Self {
        self.emission = if behind {
            Emission::Simple
        } else {
            Emission::Typed
        };
        self
    }

    fn session(&self) -> Session<'_> {
        Session {
            client: self.client,
            shared: &self.shared,
            carrier: self.carrier.resolve(Carrier::Message),
            emission: self.emission,
            transaction: Some(&self.in_effect),
            parent: self.parent,
        }
    }

    query_methods!();
}
