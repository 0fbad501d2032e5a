//! The adapters' two lines under the same tests: sqlx 0.9 and 0.8 (`bemi_sqlx` and
//! `bemi_sqlx::v0_8`), SeaORM 2 and 1.1 (`bemi_seaorm` and `bemi_seaorm::v1`).
//!
//! Tests written inside `sqlx_lines! { … }` (or `seaorm_lines! { … }`) are compiled once per
//! line, in a module named after it — `sqlx_0_9`, `sqlx_0_8`, `seaorm_2`, `seaorm_1` — where
//! `sqlx` and `bemi_sqlx` (`sea_orm` and `bemi_seaorm`) name that line's crates, and `line`
//! the few helpers whose shape differs between the lines (below). The parent module's items are
//! in scope. A test's name gets the line's module: `adapters::sqlx_0_8::` runs one module's
//! tests on sqlx 0.8; `sqlx_0_8::` all of them.
//!
//! In a line's block, name the line's crates in paths (`sqlx::query`, `bemi_sqlx::BemiPool`)
//! or with `use self::sqlx::…`: a bare `use sqlx::…` would be ambiguous with the crate.

/// Compiles the tests in the block once per sqlx line (see the module docs).
macro_rules! sqlx_lines {
    ($($body:tt)*) => {
        /// The tests on sqlx 0.9 (`bemi_sqlx`'s root).
        mod sqlx_0_9 {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use ::bemi_sqlx;
            #[allow(unused_imports)]
            use ::sqlx;
            #[allow(unused_imports)]
            use crate::lines::sqlx_0_9 as line;

            $($body)*
        }

        /// The same tests on sqlx 0.8 (`bemi_sqlx::v0_8`).
        mod sqlx_0_8 {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use ::bemi_sqlx::v0_8 as bemi_sqlx;
            #[allow(unused_imports)]
            use ::sqlx_0_8 as sqlx;
            #[allow(unused_imports)]
            use crate::lines::sqlx_0_8 as line;

            $($body)*
        }
    };
}
pub(crate) use sqlx_lines;

/// Compiles the tests in the block once per SeaORM line (see the module docs).
macro_rules! seaorm_lines {
    ($($body:tt)*) => {
        /// The tests on SeaORM 2 (`bemi_seaorm`'s root).
        mod seaorm_2 {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use ::bemi_seaorm;
            #[allow(unused_imports)]
            use ::sea_orm;
            #[allow(unused_imports)]
            use ::sea_orm::{TransactionSession as _, TransactionTrait as _};
            #[allow(unused_imports)]
            use crate::lines::seaorm_2 as line;

            $($body)*
        }

        /// The same tests on SeaORM 1.1 (`bemi_seaorm::v1`).
        mod seaorm_1 {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use ::bemi_seaorm::v1 as bemi_seaorm;
            #[allow(unused_imports)]
            use ::sea_orm_1 as sea_orm;
            #[allow(unused_imports)]
            use ::sea_orm_1::TransactionTrait as _;
            #[allow(unused_imports)]
            use crate::lines::seaorm_1 as line;

            $($body)*
        }
    };
}
pub(crate) use seaorm_lines;

/// The `todo` table as an entity of the line's SeaORM (whose macros name `sea_orm`).
macro_rules! todo_entity {
    () => {
        /// The `todo` table. (SeaORM's derives make public items: the entity's items are
        /// public too.)
        #[allow(unreachable_pub)]
        pub(crate) mod todo {
            use self::sea_orm::entity::prelude::*;
            use super::sea_orm;

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
    };
}

/// sqlx 0.9's side.
pub(crate) mod sqlx_0_9 {
    use bemi_tests::TestDb;

    /// The test database's pool, wrapped.
    pub(crate) async fn bemi_pool(db: &TestDb) -> anyhow::Result<bemi_sqlx::BemiPool> {
        Ok(db.bemi_pool())
    }

    /// SQL made at run time, as this line's `query` takes it.
    pub(crate) fn sql(text: &str) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(text.to_owned())
    }

    /// SQL to prepare, as this line's `Executor::prepare` takes it.
    pub(crate) fn to_prepare(text: &'static str) -> sqlx::SqlStr {
        sqlx::SqlSafeStr::into_sql_str(text)
    }
}

/// sqlx 0.8's side.
pub(crate) mod sqlx_0_8 {
    use bemi_tests::TestDb;

    /// A new pool of the test database (as the 0.9 line's: default options), wrapped.
    pub(crate) async fn bemi_pool(db: &TestDb) -> anyhow::Result<bemi_sqlx::v0_8::BemiPool> {
        Ok(bemi_sqlx::v0_8::BemiPool::connect(&db.url).await?)
    }

    /// SQL made at run time, as this line's `query` takes it.
    pub(crate) fn sql(text: &str) -> &str {
        text
    }

    /// SQL to prepare, as this line's `Executor::prepare` takes it.
    pub(crate) fn to_prepare(text: &'static str) -> &'static str {
        text
    }
}

/// SeaORM 2's side.
pub(crate) mod seaorm_2 {
    use ::sea_orm;

    use self::sea_orm::{ConnectionTrait, DbErr, ExecResult, QueryResult, Statement};

    todo_entity!();

    /// `ConnectionTrait::execute_raw` (1.1: `execute`).
    pub(crate) async fn execute<C: ConnectionTrait>(
        on: &C,
        stmt: Statement,
    ) -> Result<ExecResult, DbErr> {
        on.execute_raw(stmt).await
    }

    /// `ConnectionTrait::query_one_raw` (1.1: `query_one`).
    pub(crate) async fn query_one<C: ConnectionTrait>(
        on: &C,
        stmt: Statement,
    ) -> Result<Option<QueryResult>, DbErr> {
        on.query_one_raw(stmt).await
    }
}

/// SeaORM 1.1's side.
pub(crate) mod seaorm_1 {
    use ::sea_orm_1 as sea_orm;

    use self::sea_orm::{ConnectionTrait, DbErr, ExecResult, QueryResult, Statement};

    todo_entity!();

    /// `ConnectionTrait::execute` (2: `execute_raw`).
    pub(crate) async fn execute<C: ConnectionTrait>(
        on: &C,
        stmt: Statement,
    ) -> Result<ExecResult, DbErr> {
        on.execute(stmt).await
    }

    /// `ConnectionTrait::query_one` (2: `query_one_raw`).
    pub(crate) async fn query_one<C: ConnectionTrait>(
        on: &C,
        stmt: Statement,
    ) -> Result<Option<QueryResult>, DbErr> {
        on.query_one(stmt).await
    }
}
