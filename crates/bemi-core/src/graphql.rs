//! async-graphql 7 extension (feature `async-graphql`): every resolver of a GraphQL operation runs
//! inside a context that holds the operation's `operationName` and `variables`.
//!
//! Add [`BemiExtension`] to the schema. When the operation runs inside an HTTP-level context
//! (from `bemi_axum::BemiLayer` or `bemi_actix::Bemi`), the operation's context is a copy of it
//! with the GraphQL keys added, so writes carry both:
//!
//! ```
//! use async_graphql::{EmptySubscription, Object, Request, Schema, Variables};
//! use bemi_core::{context, graphql::BemiExtension};
//! use serde_json::{Value, json};
//!
//! struct Query;
//!
//! #[Object]
//! impl Query {
//!     /// The context a write made here would carry.
//!     async fn context(&self) -> String {
//!         Value::Object(context::current().unwrap_or_default()).to_string()
//!     }
//! }
//!
//! struct Mutation;
//!
//! #[Object]
//! impl Mutation {
//!     async fn create_todo(&self, task: String) -> String {
//!         // e.g. sqlx::query("INSERT INTO todo (task) VALUES ($1)").bind(task).execute(&pool)
//!         Value::Object(context::current().unwrap_or_default()).to_string()
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let schema = Schema::build(Query, Mutation, EmptySubscription)
//!     .extension(BemiExtension::new())
//!     .finish();
//!
//! let request = Request::new("mutation CreateTodo($task: String!) { createTodo(task: $task) }")
//!     .variables(Variables::from_json(json!({"task": "Sleep"})));
//! // The HTTP layer's context, as `BemiLayer` would set it.
//! let http = json!({"user_id": 187234, "endpoint": "/graphql"}).as_object().unwrap().clone();
//! let response = context::scope(http, schema.execute(request)).await;
//!
//! let data = response.data.into_json().unwrap();
//! let seen: Value = serde_json::from_str(data["createTodo"].as_str().unwrap()).unwrap();
//! assert_eq!(
//!     seen,
//!     json!({
//!         "user_id": 187234,
//!         "endpoint": "/graphql",
//!         "operationName": "CreateTodo",
//!         "variables": {"task": "Sleep"},
//!     })
//! );
//! # }
//! ```
//!
//! # How the context is made
//!
//! For each operation (each request of a batch is its own operation):
//!
//! 1. a copy of the context in scope where the schema executes it (the HTTP-level context), or an
//!    empty object when there is none;
//! 2. plus `operationName` (the name of the operation that runs, when it has one) and
//!    `variables` (the request's variables, a JSON object);
//! 3. plus, shallow-merged last, the fields returned by your closure if you gave one
//!    ([`BemiExtension::with_context`]): it can add fields or replace any of the above (e.g.
//!    `"variables": null` to keep secrets out of the audit trail). It may return `null` for
//!    nothing to add; a non-object is ignored with a `tracing` warning.
//!
//! A [`merge`](crate::context::merge) made by a resolver changes the operation's context (later
//! writes of the operation see it), not the HTTP-level one.
//!
//! # Resolvers that leave the operation's task
//!
//! Every resolver is polled inside the context, but work handed to `tokio::spawn` (a
//! `DataLoader` built with `tokio::spawn` as its spawner, for instance) runs without it: wrap
//! that future with [`ContextExt::in_current_context`](crate::context::ContextExt). Subscriptions
//! are not scoped by this extension.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Response, ServerResult, Variables};
use serde_json::Value;

use crate::context::{self, Context, SharedContext};

/// The closure of [`BemiExtension::with_context`].
type MakeContext = dyn Fn(&Operation<'_>) -> Value + Send + Sync;

/// The async-graphql extension that runs each operation's resolvers inside its context; see the
/// [module docs](self).
///
/// ```
/// use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};
/// use bemi_core::graphql::BemiExtension;
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
#[derive(Clone, Default)]
pub struct BemiExtension {
    make_context: Option<Arc<MakeContext>>,
}

impl BemiExtension {
    /// The extension that adds `operationName` and `variables`.
    ///
    /// ```
    /// let extension = bemi_core::graphql::BemiExtension::new();
    /// # let _ = extension;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The extension that adds `operationName`, `variables`, and then the fields `make_context`
    /// returns for the operation (which replace fields of the same name).
    ///
    /// ```
    /// use bemi_core::graphql::{BemiExtension, Operation};
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
    pub fn with_context<F>(make_context: F) -> Self
    where
        F: Fn(&Operation<'_>) -> Value + Send + Sync + 'static,
    {
        Self {
            make_context: Some(Arc::new(make_context)),
        }
    }
}

impl fmt::Debug for BemiExtension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BemiExtension")
            .field("with_context", &self.make_context.is_some())
            .finish()
    }
}

impl ExtensionFactory for BemiExtension {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PerRequest {
            make_context: self.make_context.clone(),
            variables: Mutex::new(None),
        })
    }
}

/// What [`BemiExtension::with_context`]'s closure learns about the operation.
///
/// ```
/// use bemi_core::graphql::{BemiExtension, Operation};
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
    /// # use bemi_core::graphql::{BemiExtension, Operation};
    /// let ext = BemiExtension::with_context(|op: &Operation<'_>| serde_json::json!({"op": op.name()}));
    /// # let _ = ext;
    /// ```
    pub fn name(&self) -> Option<&'a str> {
        self.name
    }

    /// The request's variables as a JSON object.
    ///
    /// ```
    /// # use bemi_core::graphql::{BemiExtension, Operation};
    /// let ext = BemiExtension::with_context(|op: &Operation<'_>| serde_json::json!({"id": op.variables()["id"]}));
    /// # let _ = ext;
    /// ```
    pub fn variables(&self) -> &'a Value {
        self.variables
    }

    /// Data of type `D` from the request (`Request::data`), the session or the schema.
    ///
    /// ```
    /// # use bemi_core::graphql::{BemiExtension, Operation};
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
    make_context: Option<Arc<MakeContext>>,
    /// The request's variables as JSON, recorded when its query is parsed.
    variables: Mutex<Option<Value>>,
}

impl PerRequest {
    fn operation_context(&self, ctx: &ExtensionContext<'_>, name: Option<&str>) -> Context {
        let variables = self
            .variables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| Value::Object(Context::new()));
        let mut context = context::current().unwrap_or_default();
        if let Some(name) = name {
            context.insert("operationName".to_owned(), Value::from(name));
        }
        context.insert("variables".to_owned(), variables.clone());
        if let Some(make_context) = &self.make_context {
            let operation = Operation {
                name,
                variables: &variables,
                extension_context: ctx,
            };
            match context::into_context(make_context(&operation)) {
                Ok(Some(fields)) => context.extend(fields),
                Ok(None) => {}
                Err(error) => tracing::warn!(
                    kind = error.kind,
                    "the BemiExtension closure returned a JSON {}, not an object: its fields \
                     are ignored; return serde_json::json!({{...}}), or null for none",
                    error.kind
                ),
            }
        }
        context
    }
}

fn variables_json(variables: &Variables) -> Value {
    serde_json::to_value(variables).unwrap_or_else(|_| Value::Object(Context::new()))
}

#[async_graphql::async_trait::async_trait]
impl Extension for PerRequest {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        *self
            .variables
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(variables_json(variables));
        next.run(ctx, query, variables).await
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let context = self.operation_context(ctx, operation_name);
        SharedContext::new(context)
            .scope(next.run(ctx, operation_name))
            .await
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::{BatchRequest, EmptySubscription, Object, Request, Schema};
    use serde_json::json;

    use super::*;

    /// Resolvers that report the context they run in, as JSON text.
    struct Query;

    #[Object]
    impl Query {
        async fn context(&self) -> String {
            Value::Object(context::current().unwrap_or_default()).to_string()
        }
    }

    struct Mutation;

    #[Object]
    impl Mutation {
        /// Merges `{"step": step}` into the context, then reports it after an await point.
        async fn enrich(&self, step: String) -> String {
            context::merge(json!({"step": step}).as_object().unwrap().clone()).unwrap();
            tokio::task::yield_now().await;
            Value::Object(context::current().unwrap_or_default()).to_string()
        }
    }

    fn schema(extension: BemiExtension) -> Schema<Query, Mutation, EmptySubscription> {
        Schema::build(Query, Mutation, EmptySubscription)
            .extension(extension)
            .finish()
    }

    fn seen(response: &async_graphql::Response, field: &str) -> Value {
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
        let response = context::scope(
            outer.as_object().unwrap().clone(),
            schema(extension).execute(request),
        )
        .await;
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
        let outer = SharedContext::new(json!({"user_id": 1}).as_object().unwrap().clone());
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
        assert_eq!(
            outer.snapshot(),
            *json!({"user_id": 1}).as_object().unwrap()
        );
    }
}
