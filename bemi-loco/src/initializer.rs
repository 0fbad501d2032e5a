//! The initializer: [`BemiInitializer`] puts bemi's Tower layer on Loco's router and the
//! wrapped SeaORM connection in the [`AppContext`]; [`AppContextExt::bemi_db`] takes it out.
//!
//! ```no_run
//! use bemi_loco::BemiInitializer;
//! use loco_rs::app::{AppContext, Initializer};
//! use serde_json::json;
//!
//! # async fn initializers(_ctx: &AppContext) -> loco_rs::Result<Vec<Box<dyn Initializer>>> {
//! // In `impl Hooks for App`:
//! Ok(vec![Box::new(BemiInitializer::new(|request: &axum::extract::Request| {
//!     json!({"endpoint": request.uri().path(), "method": request.method().as_str()})
//! }))])
//! # }
//! ```

use std::fmt;

use async_trait::async_trait;
use axum::Router;
use axum::extract::Request;
use bemi_axum::BemiLayer;
use bemi_core::IntoContext;
use bemi_core::integration::{ContextMaker, MakeContext};
use bemi_seaorm::BemiConnection;
use loco_rs::app::{AppContext, Initializer};

/// The Loco [`Initializer`] of bemi: every request runs in the context its provider makes
/// (the [`BemiLayer`] of `bemi-axum`, added in `after_routes`, outermost: it sees the request
/// as the client sent it), and the [`AppContext`] holds a [`BemiConnection`] over `ctx.db`
/// (put in its shared store in `before_run`, before routes and workers are built), which
/// [`AppContextExt::bemi_db`] hands out.
///
/// ```no_run
/// use bemi_loco::BemiInitializer;
/// use serde_json::json;
///
/// let initializer = BemiInitializer::new(|request: &axum::extract::Request| {
///     let user = request.headers().get("x-user-id").and_then(|v| v.to_str().ok());
///     json!({"user_id": user, "endpoint": request.uri().path()})
/// });
/// let boxed: Box<dyn loco_rs::app::Initializer> = Box::new(initializer);
/// # let _ = boxed;
/// ```
pub struct BemiInitializer<P> {
    layer: BemiLayer<ContextMaker<P>>,
}

impl<F, C> BemiInitializer<F>
where
    F: Fn(&Request) -> C + Send + Sync + 'static,
    C: IntoContext,
{
    /// An initializer whose requests run in the context `make_context` returns for them (a JSON
    /// object; `null` for none).
    ///
    /// ```
    /// use serde_json::json;
    ///
    /// let initializer = bemi_loco::BemiInitializer::new(|request: &axum::extract::Request| {
    ///     json!({"method": request.method().as_str()})
    /// });
    /// assert_eq!(loco_rs::app::Initializer::name(&initializer), "bemi");
    /// ```
    #[must_use]
    pub fn new(make_context: F) -> Self {
        Self::with_provider(make_context)
    }
}

impl<P> BemiInitializer<P>
where
    P: MakeContext<Request> + Send + Sync + 'static,
{
    /// An initializer whose requests run in the context `provider` makes (any
    /// [`MakeContext`] implementor, for a provider with state of its own).
    ///
    /// ```
    /// use bemi_core::integration::MakeContext;
    /// use bemi_core::{Context, IntoContext as _};
    ///
    /// struct ByPath;
    /// impl MakeContext<axum::extract::Request> for ByPath {
    ///     fn make_context(&self, request: &axum::extract::Request) -> Option<Context> {
    ///         serde_json::json!({"endpoint": request.uri().path()}).into_context()
    ///     }
    /// }
    ///
    /// let initializer = bemi_loco::BemiInitializer::with_provider(ByPath);
    /// # let _ = initializer;
    /// ```
    #[must_use]
    pub fn with_provider(provider: P) -> Self {
        Self {
            layer: BemiLayer::with_provider(provider),
        }
    }
}

impl<P> fmt::Debug for BemiInitializer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BemiInitializer")
            .field("provider", &std::any::type_name::<P>())
            .finish()
    }
}

#[async_trait]
impl<P> Initializer for BemiInitializer<P>
where
    P: MakeContext<Request> + Send + Sync + 'static,
{
    fn name(&self) -> String {
        "bemi".to_owned()
    }

    /// Puts a [`BemiConnection`] over `ctx.db` in the context's shared store: Loco runs this
    /// before it builds the routes and registers the workers.
    async fn before_run(&self, ctx: &AppContext) -> loco_rs::Result<()> {
        ctx.shared_store.insert(BemiConnection::new(ctx.db.clone()));
        Ok(())
    }

    /// Adds the layer around the whole router (Loco's own middlewares included).
    async fn after_routes(&self, router: Router, _ctx: &AppContext) -> loco_rs::Result<Router> {
        Ok(router.layer(self.layer.clone()))
    }
}

/// The wrapped connection of an [`AppContext`], for controllers, workers and tasks.
///
/// ```no_run
/// use bemi_loco::AppContextExt as _;
/// use sea_orm::ConnectionTrait as _;
///
/// # async fn handler(ctx: loco_rs::app::AppContext) -> Result<(), sea_orm::DbErr> {
/// // Where Loco code passes `&ctx.db`, pass `&ctx.bemi_db()`: its writes carry the context.
/// ctx.bemi_db().execute_unprepared("UPDATE todo SET is_completed = true").await?;
/// # Ok(()) }
/// ```
pub trait AppContextExt {
    /// The [`BemiConnection`] [`BemiInitializer`] put in the context, or (without the
    /// initializer, e.g. in a unit test's context) a new one over `ctx.db`: the same pool
    /// either way, so this is cheap.
    fn bemi_db(&self) -> BemiConnection;
}

impl AppContextExt for AppContext {
    fn bemi_db(&self) -> BemiConnection {
        self.shared_store
            .get::<BemiConnection>()
            .unwrap_or_else(|| BemiConnection::new(self.db.clone()))
    }
}
