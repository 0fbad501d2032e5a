#![doc = include_str!("../README.md")]

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextSubscribe,
};
use async_graphql::futures_util::stream::BoxStream;
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument};
use async_graphql::{Request, Response, ServerResult, Variables};
use serde_json::{Value, json};

use bemi_core::context::{self, Context, IntoContext};
use bemi_core::integration::{ContextMaker, MakeContext, SharedContext};

/// The default bound on the `variables` the extension copies into an operation's context:
/// 100 000 bytes of JSON, a tenth of the whole context's bound
/// ([`MAX_CONTEXT_BYTES`](bemi_core::protocol::MAX_CONTEXT_BYTES)), which leaves room for the HTTP
/// context and the `SQL` key. Change it with [`BemiExtension::max_variables_bytes`].
pub const MAX_VARIABLES_BYTES: usize = 100_000;

/// The key of the marker object that replaces `variables` bigger than the bound:
/// `{"_bemi_dropped": {"reason": "too large", "bytes": N, "limit_bytes": L}}`.
pub const VARIABLES_DROPPED_KEY: &str = "_bemi_dropped";

/// The provider of [`BemiExtension::with_context`], whatever its type.
type OperationContext = dyn for<'a> MakeContext<Operation<'a>> + Send + Sync;

/// The async-graphql extension that runs each operation's resolvers inside its context; see the
/// [module docs](self).
///
/// ```
/// use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};
/// use bemi_async_graphql::BemiExtension;
///
/// struct Query;
/// #[Object]
/// impl Query {
///     async fn version(&self) -> &str { "1" }
/// }
///
/// let schema = Schema::build(Query, EmptyMutation, EmptySubscription)
///     .extension(BemiExtension::new())
///     .finish();
/// # let _ = schema;
/// ```
#[derive(Clone, Debug)]
pub struct BemiExtension {
    make_context: Option<ContextMaker<OperationContext>>,
    max_variables_bytes: usize,
}

impl Default for BemiExtension {
    fn default() -> Self {
        Self {
            make_context: None,
            max_variables_bytes: MAX_VARIABLES_BYTES,
        }
    }
}

impl BemiExtension {
    /// The extension that adds `operationName` and `variables`.
    ///
    /// ```
    /// let extension = bemi_async_graphql::BemiExtension::new();
    /// # let _ = extension;
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The extension that adds `operationName`, `variables`, and then the fields the closure
    /// `make_context` returns for the operation (which replace fields of the same name). For a
    /// [`MakeContext`] implementor that is not a closure, see
    /// [`BemiExtension::with_provider`].
    ///
    /// ```
    /// use bemi_async_graphql::{BemiExtension, Operation};
    /// use serde_json::json;
    ///
    /// /// Put in the request's data by the HTTP handler (`Request::data`).
    /// struct CurrentUser(i64);
    ///
    /// let extension = BemiExtension::with_context(|op: &Operation<'_>| {
    ///     json!({
    ///         "user_id": op.data::<CurrentUser>().map(|user| user.0),
    ///         "variables": null, // keep variables out of the audit trail
    ///     })
    /// });
    /// # let _ = extension;
    /// ```
    #[must_use]
    pub fn with_context<F, C>(make_context: F) -> Self
    where
        F: Fn(&Operation<'_>) -> C + Send + Sync + 'static,
        C: IntoContext,
    {
        Self::with_provider(make_context)
    }

    /// [`BemiExtension::with_context`] for any [`MakeContext`]`<Operation<'_>>` implementor,
    /// e.g. a struct:
    ///
    /// ```
    /// use bemi_async_graphql::{BemiExtension, Operation};
    /// use bemi_core::integration::MakeContext;
    /// use bemi_core::{Context, IntoContext as _};
    /// use serde_json::json;
    ///
    /// /// Keeps the variables out of the audit trail, and names the API.
    /// struct Redacted {
    ///     api: &'static str,
    /// }
    ///
    /// impl MakeContext<Operation<'_>> for Redacted {
    ///     fn make_context(&self, op: &Operation<'_>) -> Option<Context> {
    ///         json!({"api": self.api, "variables": null, "op": op.name()}).into_context()
    ///     }
    /// }
    ///
    /// let extension = BemiExtension::with_provider(Redacted { api: "todo" });
    /// assert!(format!("{extension:?}").contains("Redacted"));
    /// ```
    #[must_use]
    pub fn with_provider<P>(provider: P) -> Self
    where
        P: for<'a> MakeContext<Operation<'a>> + Send + Sync + 'static,
    {
        let make_context =
            ContextMaker::new(provider).coerce(|maker| maker as Arc<OperationContext>);
        Self {
            make_context: Some(make_context),
            ..Self::default()
        }
    }

    /// Bounds the `variables` copied into the context to `bytes` of JSON (default:
    /// [`MAX_VARIABLES_BYTES`]); bigger variables are replaced by a marker that says how big
    /// they were, with a `tracing` warning. The other keys of the context are kept.
    ///
    /// ```
    /// let extension = bemi_async_graphql::BemiExtension::new().max_variables_bytes(10_000);
    /// # let _ = extension;
    /// ```
    #[must_use]
    pub fn max_variables_bytes(mut self, bytes: usize) -> Self {
        self.max_variables_bytes = bytes;
        self
    }
}

impl ExtensionFactory for BemiExtension {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PerRequest {
            make_context: self.make_context.clone(),
            max_variables_bytes: self.max_variables_bytes,
            variables: Mutex::new(None),
            stream: Mutex::new(None),
        })
    }
}

/// What [`BemiExtension::with_context`]'s closure learns about the operation.
///
/// ```
/// use bemi_async_graphql::{BemiExtension, Operation};
/// use serde_json::json;
///
/// let extension = BemiExtension::with_context(|op: &Operation<'_>| {
///     json!({"graphql": {"name": op.name(), "task": op.variables().get("task")}})
/// });
/// # let _ = extension;
/// ```
pub struct Operation<'a> {
    name: Option<&'a str>,
    variables: &'a Value,
    extension_context: &'a ExtensionContext<'a>,
}

impl<'a> Operation<'a> {
    /// The name of the operation that runs, if it has one.
    ///
    /// ```
    /// # use bemi_async_graphql::{BemiExtension, Operation};
    /// let ext = BemiExtension::with_context(|op: &Operation<'_>| serde_json::json!({"op": op.name()}));
    /// # let _ = ext;
    /// ```
    pub fn name(&self) -> Option<&'a str> {
        self.name
    }

    /// The request's variables as a JSON object.
    ///
    /// ```
    /// # use bemi_async_graphql::{BemiExtension, Operation};
    /// let ext = BemiExtension::with_context(|op: &Operation<'_>| serde_json::json!({"id": op.variables()["id"]}));
    /// # let _ = ext;
    /// ```
    pub fn variables(&self) -> &'a Value {
        self.variables
    }

    /// Data of type `D` from the request (`Request::data`), the session or the schema.
    ///
    /// ```
    /// # use bemi_async_graphql::{BemiExtension, Operation};
    /// struct UserId(i64);
    /// let ext = BemiExtension::with_context(|op: &Operation<'_>| {
    ///     serde_json::json!({"user_id": op.data::<UserId>().map(|id| id.0)})
    /// });
    /// # let _ = ext;
    /// ```
    pub fn data<D: Any + Send + Sync>(&self) -> Option<&'a D> {
        self.extension_context.data_opt::<D>()
    }
}

impl fmt::Debug for Operation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operation")
            .field("name", &self.name)
            .field("variables", &self.variables)
            .finish_non_exhaustive()
    }
}

/// The extension instance of one GraphQL request.
struct PerRequest {
    make_context: Option<ContextMaker<OperationContext>>,
    max_variables_bytes: usize,
    /// The request's variables as JSON, recorded when its query is parsed and taken when the
    /// operation's context is made.
    variables: Mutex<Option<Value>>,
    /// Set when the request runs as a stream (`execute_stream`, subscriptions): the context that
    /// every poll of the stream enters.
    stream: Mutex<Option<StreamState>>,
}

/// The context of a request that runs as a stream.
struct StreamState {
    /// Entered by every poll of the stream: the outer context's copy until the query is parsed,
    /// the operation's context after that.
    context: SharedContext,
    /// The operation name the request asked for, recorded by `prepare_request`.
    requested_name: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PerRequest {
    /// `base` (a copy of the outer context) plus `operationName`, the (bounded) `variables` and
    /// the closure's fields.
    fn operation_context(
        &self,
        ctx: &ExtensionContext<'_>,
        mut base: Context,
        name: Option<&str>,
        variables: Value,
    ) -> Context {
        let fields = self.make_context.as_ref().and_then(|make_context| {
            let operation = Operation {
                name,
                variables: &variables,
                extension_context: ctx,
            };
            make_context.get_ref().make_context(&operation)
        });
        if let Some(name) = name {
            base.insert("operationName".to_owned(), Value::from(name));
        }
        // Variables the closure replaces are neither measured nor copied.
        if !fields.as_ref().is_some_and(|f| f.contains_key("variables")) {
            let variables = bounded_variables(variables, self.max_variables_bytes);
            base.insert("variables".to_owned(), variables);
        }
        if let Some(fields) = fields {
            base.extend(fields);
        }
        base
    }

    fn take_variables(&self) -> Value {
        lock(&self.variables)
            .take()
            .unwrap_or_else(|| Value::Object(Context::new()))
    }
}

fn variables_json(variables: &Variables) -> Value {
    serde_json::to_value(variables).unwrap_or_else(|_| Value::Object(Context::new()))
}

/// `variables`, or the marker of [`VARIABLES_DROPPED_KEY`] when their JSON is bigger than
/// `limit` bytes.
fn bounded_variables(variables: Value, limit: usize) -> Value {
    let bytes = json_len(&variables);
    if bytes <= limit {
        return variables;
    }
    tracing::warn!(
        bytes,
        limit_bytes = limit,
        "the GraphQL variables are {bytes} bytes of JSON, more than the {limit} bytes bemi copies \
         into the audit context: the context holds a marker instead (its other keys are kept); \
         raise BemiExtension::max_variables_bytes, or pick the variables you need with \
         BemiExtension::with_context"
    );
    json!({VARIABLES_DROPPED_KEY: {"reason": "too large", "bytes": bytes, "limit_bytes": limit}})
}

/// The length of `value` as JSON text, without building the text.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The name of the operation that runs, chosen as async-graphql chooses it: the requested one,
/// else the only operation of the document.
fn operation_name(requested: Option<String>, document: &ExecutableDocument) -> Option<String> {
    if requested.is_some() {
        return requested;
    }
    match &document.operations {
        DocumentOperations::Multiple(operations) if operations.len() == 1 => {
            operations.keys().next().map(ToString::to_string)
        }
        DocumentOperations::Single(_) | DocumentOperations::Multiple(_) => None,
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for PerRequest {
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        // Called where `execute_stream` is called: copy the outer context now. The GraphQL keys
        // are added once the query is parsed, inside the stream's first poll.
        let context = SharedContext::new(context::current().unwrap_or_default());
        *lock(&self.stream) = Some(StreamState {
            context: context.clone(),
            requested_name: None,
        });
        Box::pin(context.scope(next.run(ctx, stream)))
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        if let Some(stream) = lock(&self.stream).as_mut() {
            stream.requested_name.clone_from(&request.operation_name);
        }
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let variables_value = variables_json(variables);
        let document = next.run(ctx, query, variables).await?;
        let stream = lock(&self.stream)
            .as_mut()
            .map(|stream| (stream.context.clone(), stream.requested_name.take()));
        match stream {
            // A stream has no `execute` for subscriptions: its context becomes the operation's
            // now, before any resolver runs.
            Some((shared, requested)) => {
                let name = operation_name(requested, &document);
                let operation = self.operation_context(
                    ctx,
                    shared.snapshot(),
                    name.as_deref(),
                    variables_value,
                );
                // Cannot fail: `set` runs inside the scope it replaces.
                let _ = shared.sync_scope(|| context::set(operation));
            }
            None => *lock(&self.variables) = Some(variables_value),
        }
        Ok(document)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        if lock(&self.stream).is_some() {
            // A query or mutation sent as a stream: every poll already runs inside the
            // operation's context.
            return next.run(ctx, operation_name).await;
        }
        let base = context::current().unwrap_or_default();
        let context = self.operation_context(ctx, base, operation_name, self.take_variables());
        SharedContext::new(context)
            .scope(next.run(ctx, operation_name))
            .await
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::futures_util::{Stream, StreamExt as _, stream};
    use async_graphql::{BatchRequest, Object, Request, Schema, Subscription};
    use serde_json::json;

    use super::*;

    fn current_json() -> String {
        Value::Object(context::current().unwrap_or_default()).to_string()
    }

    /// Resolvers that report the context they run in, as JSON text.
    struct Query;

    #[Object]
    impl Query {
        async fn context(&self) -> String {
            current_json()
        }

        /// An object whose own resolver is async.
        async fn outer(&self) -> Outer {
            tokio::task::yield_now().await;
            Outer
        }

        /// What a write made here would be annotated with.
        async fn annotated(&self) -> String {
            bemi_core::sql::annotate_current("INSERT INTO todo (task) VALUES ($1)")
                .unwrap_or_default()
        }
    }

    struct Outer;

    #[Object]
    impl Outer {
        async fn nested(&self) -> String {
            tokio::task::yield_now().await;
            current_json()
        }
    }

    /// Streams that report, in each event, the context they are polled in.
    struct Subscription;

    #[Subscription]
    impl Subscription {
        /// `count` events, each produced after an await point.
        async fn contexts(&self, count: i32) -> impl Stream<Item = String> + use<> {
            stream::unfold(0, move |n| async move {
                if n >= count {
                    return None;
                }
                tokio::task::yield_now().await;
                Some((current_json(), n + 1))
            })
        }
    }

    struct Mutation;

    #[Object]
    impl Mutation {
        /// Merges `{"step": step}` into the context, then reports it after an await point.
        async fn enrich(&self, step: String) -> String {
            context::merge(json!({"step": step})).unwrap();
            tokio::task::yield_now().await;
            Value::Object(context::current().unwrap_or_default()).to_string()
        }
    }

    fn schema(extension: BemiExtension) -> Schema<Query, Mutation, Subscription> {
        Schema::build(Query, Mutation, Subscription)
            .extension(extension)
            .finish()
    }

    fn seen(response: &Response, field: &str) -> Value {
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        let data = response.data.clone().into_json().unwrap();
        serde_json::from_str(data[field].as_str().unwrap()).unwrap()
    }

    fn vars(value: Value) -> Variables {
        Variables::from_json(value)
    }

    #[tokio::test]
    async fn without_an_outer_context_the_operation_has_its_own() {
        let response = schema(BemiExtension::new()).execute("{ context }").await;
        assert_eq!(seen(&response, "context"), json!({"variables": {}}));
        assert_eq!(context::current(), None);
    }

    #[tokio::test]
    async fn a_single_named_operation_is_named_without_operation_name() {
        let response = schema(BemiExtension::new())
            .execute("query Mine { context }")
            .await;
        assert_eq!(
            seen(&response, "context"),
            json!({"operationName": "Mine", "variables": {}})
        );
    }

    #[tokio::test]
    async fn the_closure_adds_and_replaces_fields_and_sees_request_data() {
        struct UserId(i64);
        let extension = BemiExtension::with_context(|op: &Operation<'_>| {
            json!({
                "user_id": op.data::<UserId>().map(|user| user.0),
                "endpoint": format!("graphql:{}", op.name().unwrap_or("anonymous")),
                "variables": null,
                "step_given": op.variables()["step"],
            })
        });
        let request = Request::new("mutation Enrich($step: String!) { enrich(step: $step) }")
            .variables(vars(json!({"step": "store"})))
            .data(UserId(187234));
        let outer = json!({"endpoint": "/graphql", "method": "POST"});
        let response = context::scope(outer, schema(extension).execute(request)).await;
        assert_eq!(
            seen(&response, "enrich"),
            json!({
                "user_id": 187234,
                "endpoint": "graphql:Enrich",
                "method": "POST",
                "operationName": "Enrich",
                "variables": null,
                "step_given": "store",
                "step": "store",
            })
        );
    }

    #[tokio::test]
    async fn a_non_object_from_the_closure_is_ignored() {
        let extension =
            BemiExtension::with_context(|_: &Operation<'_>| json!(["not", "an", "object"]));
        let response = schema(extension).execute("query Q { context }").await;
        assert_eq!(
            seen(&response, "context"),
            json!({"operationName": "Q", "variables": {}})
        );
    }

    #[tokio::test]
    async fn batched_operations_keep_their_own_context_and_leave_the_outer_one_alone() {
        let batch = BatchRequest::Batch(vec![
            Request::new("mutation A($step: String!) { enrich(step: $step) }")
                .variables(vars(json!({"step": "a"}))),
            Request::new("mutation B { enrich(step: \"b\") }"),
        ]);
        let outer = SharedContext::new(json!({"user_id": 1}));
        let responses = outer
            .scope(schema(BemiExtension::new()).execute_batch(batch))
            .await;
        let async_graphql::BatchResponse::Batch(responses) = responses else {
            panic!("a batch answers with a batch");
        };
        assert_eq!(
            seen(&responses[0], "enrich"),
            json!({"user_id": 1, "operationName": "A", "variables": {"step": "a"}, "step": "a"})
        );
        assert_eq!(
            seen(&responses[1], "enrich"),
            json!({"user_id": 1, "operationName": "B", "variables": {}, "step": "b"})
        );
        assert_eq!(Value::Object(outer.snapshot()), json!({"user_id": 1}));
    }

    fn user(user_id: i64) -> Value {
        json!({"user_id": user_id, "endpoint": "/graphql", "method": "POST"})
    }

    #[tokio::test]
    async fn nested_async_resolvers_see_the_operation_context() {
        let request =
            Request::new("query Nested { outer { nested } }").variables(vars(json!({"n": 1})));
        let response = context::scope(user(7), schema(BemiExtension::new()).execute(request)).await;
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        let data = response.data.into_json().unwrap();
        let seen: Value = serde_json::from_str(data["outer"]["nested"].as_str().unwrap()).unwrap();
        assert_eq!(
            seen,
            json!({
                "user_id": 7,
                "endpoint": "/graphql",
                "method": "POST",
                "operationName": "Nested",
                "variables": {"n": 1},
            })
        );
    }

    #[tokio::test]
    async fn every_poll_of_a_subscription_runs_in_the_operation_context() {
        struct Tenant(&'static str);
        let extension = BemiExtension::with_context(
            |op: &Operation<'_>| json!({"tenant": op.data::<Tenant>().map(|tenant| tenant.0)}),
        );
        let schema = schema(extension);
        let request = Request::new("subscription Watch($count: Int!) { contexts(count: $count) }")
            .variables(vars(json!({"count": 3})))
            .data(Tenant("acme"));
        // The outer context is copied where the stream is made (a handler, say)...
        let mut events = context::sync_scope(user(187234), || schema.execute_stream(request));
        // ...and the stream is polled elsewhere, without it.
        let expected = json!({
            "user_id": 187234,
            "endpoint": "/graphql",
            "method": "POST",
            "operationName": "Watch",
            "variables": {"count": 3},
            "tenant": "acme",
        });
        let mut count = 0;
        while let Some(event) = events.next().await {
            assert_eq!(seen(&event, "contexts"), expected);
            assert_eq!(context::current(), None, "nothing leaks out of a poll");
            count += 1;
        }
        assert_eq!(count, 3);
    }

    #[tokio::test]
    async fn a_query_sent_as_a_stream_has_its_context_once() {
        let request = Request::new("query A { context } query B { context }").operation_name("B");
        let events: Vec<_> = context::sync_scope(user(1), || {
            schema(BemiExtension::new()).execute_stream(request)
        })
        .collect()
        .await;
        assert_eq!(events.len(), 1);
        assert_eq!(
            seen(&events[0], "context"),
            json!({
                "user_id": 1,
                "endpoint": "/graphql",
                "method": "POST",
                "operationName": "B",
                "variables": {},
            })
        );
    }

    #[tokio::test]
    async fn oversized_variables_become_a_marker_and_the_other_keys_stay() {
        let big = "x".repeat(bemi_core::protocol::MAX_CONTEXT_BYTES + 1);
        let request =
            Request::new("query Big { context annotated }").variables(vars(json!({"big": big})));
        let response =
            context::scope(user(187234), schema(BemiExtension::new()).execute(request)).await;
        let bytes = json_len(&json!({"big": big}));
        assert_eq!(
            seen(&response, "context"),
            json!({
                "user_id": 187234,
                "endpoint": "/graphql",
                "method": "POST",
                "operationName": "Big",
                "variables": {"_bemi_dropped": {
                    "reason": "too large",
                    "bytes": bytes,
                    "limit_bytes": MAX_VARIABLES_BYTES,
                }},
            })
        );
        // A write keeps its context: not the whole-context marker of the 1 MB bound.
        let data = response.data.into_json().unwrap();
        let annotated = data["annotated"].as_str().unwrap();
        assert!(annotated.contains(r#""user_id":187234"#), "{annotated}");
        assert!(
            !annotated.contains(bemi_core::protocol::DROPPED_KEY),
            "{annotated}"
        );
    }

    #[tokio::test]
    async fn the_variables_bound_is_configurable_and_skipped_when_replaced() {
        let request =
            || Request::new("query Q { context }").variables(vars(json!({"task": "Sleep well"})));
        let small = BemiExtension::new().max_variables_bytes(10);
        let response = schema(small).execute(request()).await;
        assert_eq!(
            seen(&response, "context")["variables"],
            json!({"_bemi_dropped": {"reason": "too large", "bytes": 21, "limit_bytes": 10}})
        );

        let exact = BemiExtension::new().max_variables_bytes(21);
        let response = schema(exact).execute(request()).await;
        assert_eq!(
            seen(&response, "context")["variables"],
            json!({"task": "Sleep well"})
        );

        // The closure sees the whole variables; what it puts under `variables` is kept as is.
        let picked = BemiExtension::with_context(
            |op: &Operation<'_>| json!({"variables": {"task": op.variables()["task"]}}),
        )
        .max_variables_bytes(10);
        let response = schema(picked).execute(request()).await;
        assert_eq!(
            seen(&response, "context")["variables"],
            json!({"task": "Sleep well"})
        );
    }

    #[test]
    fn closures_need_no_type_annotation_and_debug_names_the_provider() {
        // `with_context` keeps its closure bound, so the operation's type is inferred.
        let extension = BemiExtension::with_context(|op| json!({"op": op.name()}));
        let debug = format!("{extension:?}");
        assert!(
            debug.contains("make_context: Some(ContextMaker("),
            "{debug}"
        );
        assert!(debug.contains("max_variables_bytes: 100000"), "{debug}");
    }
}
