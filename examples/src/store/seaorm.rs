//! The todo queries through SeaORM 2, on [`BemiConnection`]: an entity, the ORM's own calls,
//! and every write carries the context.
//!
//! ```no_run
//! use bemi_examples::store::TodoStore as _;
//!
//! # async fn run() -> Result<(), sea_orm::DbErr> {
//! let db = bemi_seaorm::BemiConnection::new(sea_orm::Database::connect("postgres://localhost/app").await?);
//! let ctx = serde_json::json!({"user_id": 187234});
//! let todo = bemi_core::context::scope(ctx, db.create("Sleep")).await?;
//! # Ok(()) }
//! ```

use bemi_seaorm::BemiConnection;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, QueryOrder as _};

use crate::startup::{RouterFuture, connect_error};
use crate::store::TodoStore;
use crate::todo::Todo;

/// The axum app on SeaORM for the database of `url` (`todo-seaorm`).
///
/// ```no_run
/// # async fn run() -> Result<(), bemi_examples::startup::StartupError> {
/// let app = bemi_examples::store::seaorm::router("postgres://localhost/app".into()).await?;
/// # Ok(()) }
/// ```
pub fn router(url: String) -> RouterFuture {
    Box::pin(async move {
        let db = sea_orm::Database::connect(&url)
            .await
            .map_err(|error| connect_error(&url, error))?;
        Ok(crate::axum_app::router_for(BemiConnection::new(db)))
    })
}

/// The `todo` table as a SeaORM entity.
pub mod todo {
    use sea_orm::entity::prelude::*;

    /// A row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "todo")]
    pub struct Model {
        /// The primary key.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// What to do.
        pub task: String,
        /// Whether it is done.
        pub is_completed: bool,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl From<todo::Model> for Todo {
    fn from(model: todo::Model) -> Self {
        Self {
            id: model.id,
            task: model.task,
            is_completed: model.is_completed,
        }
    }
}

impl TodoStore for BemiConnection {
    type Error = DbErr;

    async fn create(&self, task: &str) -> Result<Todo, DbErr> {
        let new = todo::ActiveModel {
            task: Set(task.to_owned()),
            ..Default::default()
        };
        Ok(new.insert(self).await?.into())
    }

    async fn complete(&self, id: i64) -> Result<Option<Todo>, DbErr> {
        let updated = todo::Entity::update_many()
            .col_expr(todo::Column::IsCompleted, Expr::value(true))
            .filter(todo::Column::Id.eq(id))
            .exec_with_returning(self)
            .await?;
        Ok(updated.into_iter().next().map(Todo::from))
    }

    async fn delete(&self, id: i64) -> Result<bool, DbErr> {
        Ok(todo::Entity::delete_by_id(id)
            .exec(self)
            .await?
            .rows_affected
            > 0)
    }

    async fn list(&self) -> Result<Vec<Todo>, DbErr> {
        let rows = todo::Entity::find()
            .order_by_asc(todo::Column::Id)
            .all(self)
            .await?;
        Ok(rows.into_iter().map(Todo::from).collect())
    }
}
