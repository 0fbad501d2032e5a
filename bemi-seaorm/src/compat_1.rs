//! SeaORM 1.1's shape of the traits: `execute`/`query_one`/`query_all` take a `Statement`,
//! `StreamTrait::stream`, and `TransactionTrait::begin` returns SeaORM's own
//! `DatabaseTransaction` — which could not carry a context — so the wrappers begin their
//! transactions with methods of their own (same names and arguments) instead of that trait.

use std::future::Future;

use sea_orm::{ConnectionTrait, DbErr, ExecResult, QueryResult, Statement};

use super::sea_orm;

pub(super) async fn execute<C: ConnectionTrait>(
    on: &C,
    stmt: Statement,
) -> Result<ExecResult, DbErr> {
    on.execute(stmt).await
}

pub(super) async fn query_one<C: ConnectionTrait>(
    on: &C,
    stmt: Statement,
) -> Result<Option<QueryResult>, DbErr> {
    on.query_one(stmt).await
}

pub(super) async fn query_all<C: ConnectionTrait>(
    on: &C,
    stmt: Statement,
) -> Result<Vec<QueryResult>, DbErr> {
    on.query_all(stmt).await
}

/// Runs `write` (a write outside a transaction, in one of its own) to its end in a task of its
/// own, even if this future is dropped.
///
/// sqlx 0.8 counts a transaction only once its `BEGIN` has been answered: a future dropped
/// while the `BEGIN` is on its way leaves the server in a transaction that nothing rolls back,
/// and the pool lends that connection to a next user whose writes run in it and are lost with
/// it (sqlx 0.9.1 fixed this). So a dropped write here may still run — with its own context,
/// as a write may have when dropped anyway — but never leaves a transaction open.
pub(super) async fn run_to_end<T: Send + 'static>(
    write: impl Future<Output = Result<T, DbErr>> + Send + 'static,
) -> Result<T, DbErr> {
    tokio::spawn(write)
        .await
        .map_err(|error| DbErr::Custom(format!("bemi-seaorm: the write's task failed: {error}")))?
}

/// `ConnectionTrait` for a wrapper, through its `execute_statement` etc.
macro_rules! connection_trait {
    ($wrapper:ty) => {
        #[async_trait::async_trait]
        impl sea_orm::ConnectionTrait for $wrapper {
            fn get_database_backend(&self) -> DbBackend {
                self.backend()
            }

            async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
                self.execute_statement(stmt).await
            }

            async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
                self.execute_unprepared_sql(sql).await
            }

            async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
                self.query_one_statement(stmt).await
            }

            async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
                self.query_all_statement(stmt).await
            }

            fn support_returning(&self) -> bool {
                self.returns()
            }

            fn is_mock_connection(&self) -> bool {
                self.is_mock()
            }
        }
    };
}
pub(super) use connection_trait;

/// `TransactionTrait`'s methods as the wrapper's own (SeaORM 1.1's trait cannot return a
/// [`BemiTransaction`](super::BemiTransaction)), through its `begin_transaction` etc.
macro_rules! transaction_trait {
    ($wrapper:ty) => {
        impl $wrapper {
            /// Begins a transaction (in a transaction: a savepoint) whose writes carry the
            /// context in scope when each runs. SeaORM 1.1's `TransactionTrait::begin` would
            /// return a `DatabaseTransaction`, whose writes carry none: this is not that trait.
            ///
            /// ```no_run
            /// # use sea_orm_1 as sea_orm;
            /// # async fn run(db: bemi_seaorm::v1::BemiConnection) -> Result<(), sea_orm::DbErr> {
            /// let tx = db.begin().await?;
            /// tx.commit().await
            /// # }
            /// ```
            pub async fn begin(&self) -> Result<BemiTransaction, DbErr> {
                self.begin_transaction().await
            }

            /// [`begin`](Self::begin) with an isolation level and an access mode.
            ///
            /// ```no_run
            /// # use sea_orm_1 as sea_orm;
            /// use sea_orm::IsolationLevel;
            ///
            /// # async fn run(db: bemi_seaorm::v1::BemiConnection) -> Result<(), sea_orm::DbErr> {
            /// let tx = db.begin_with_config(Some(IsolationLevel::Serializable), None).await?;
            /// tx.commit().await
            /// # }
            /// ```
            pub async fn begin_with_config(
                &self,
                isolation_level: Option<IsolationLevel>,
                access_mode: Option<AccessMode>,
            ) -> Result<BemiTransaction, DbErr> {
                self.begin_transaction_with_config(isolation_level, access_mode)
                    .await
            }

            /// Runs `callback` in a transaction begun with [`begin`](Self::begin): commits
            /// when it returns `Ok`, rolls back when it returns `Err`.
            ///
            /// ```no_run
            /// # use sea_orm_1 as sea_orm;
            /// use sea_orm::{ConnectionTrait, TransactionError};
            ///
            /// # async fn run(db: bemi_seaorm::v1::BemiConnection) -> Result<(), TransactionError<sea_orm::DbErr>> {
            /// db.transaction::<_, _, sea_orm::DbErr>(|tx| {
            ///     Box::pin(async move {
            ///         tx.execute_unprepared("DELETE FROM todo WHERE id = 1").await?;
            ///         Ok(())
            ///     })
            /// })
            /// .await
            /// # }
            /// ```
            pub async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
            where
                F: for<'c> FnOnce(&'c BemiTransaction) -> Callback<'c, T, E> + Send,
                T: Send,
                E: std::fmt::Display + std::fmt::Debug + Send,
            {
                self.run_transaction(callback).await
            }

            /// [`transaction`](Self::transaction) with an isolation level and an access mode.
            ///
            /// ```no_run
            /// # use sea_orm_1 as sea_orm;
            /// use sea_orm::{AccessMode, TransactionError};
            ///
            /// # async fn run(db: bemi_seaorm::v1::BemiConnection) -> Result<(), TransactionError<sea_orm::DbErr>> {
            /// db.transaction_with_config::<_, _, sea_orm::DbErr>(
            ///     |_tx| Box::pin(async move { Ok(()) }),
            ///     None,
            ///     Some(AccessMode::ReadWrite),
            /// )
            /// .await
            /// # }
            /// ```
            pub async fn transaction_with_config<F, T, E>(
                &self,
                callback: F,
                isolation_level: Option<IsolationLevel>,
                access_mode: Option<AccessMode>,
            ) -> Result<T, TransactionError<E>>
            where
                F: for<'c> FnOnce(&'c BemiTransaction) -> Callback<'c, T, E> + Send,
                T: Send,
                E: std::fmt::Display + std::fmt::Debug + Send,
            {
                self.run_transaction_with_config(callback, isolation_level, access_mode)
                    .await
            }
        }
    };
}
pub(super) use transaction_trait;

/// Commit and rollback, as SeaORM 1.1's `DatabaseTransaction` has them: methods of its own.
macro_rules! transaction_session {
    ($wrapper:ty) => {
        impl $wrapper {
            /// Commits the transaction (in a savepoint: releases it).
            ///
            /// ```no_run
            /// # use sea_orm_1 as sea_orm;
            /// # async fn run(db: bemi_seaorm::v1::BemiConnection) -> Result<(), sea_orm::DbErr> {
            /// db.begin().await?.commit().await
            /// # }
            /// ```
            pub async fn commit(self) -> Result<(), DbErr> {
                self.commit_transaction().await
            }

            /// Rolls the transaction (or savepoint) back.
            ///
            /// ```no_run
            /// # use sea_orm_1 as sea_orm;
            /// # async fn run(db: bemi_seaorm::v1::BemiConnection) -> Result<(), sea_orm::DbErr> {
            /// db.begin().await?.rollback().await
            /// # }
            /// ```
            pub async fn rollback(self) -> Result<(), DbErr> {
                self.rollback_transaction().await
            }
        }
    };
}
pub(super) use transaction_session;

/// `StreamTrait` for a wrapper: streams pass through (they read).
macro_rules! stream_trait {
    ($wrapper:ty, $($stream:tt)+) => {
        impl sea_orm::StreamTrait for $wrapper {
            type Stream<'a> = sea_orm::$($stream)+;

            /// Streams pass through: they read.
            fn stream<'a>(
                &'a self,
                stmt: Statement,
            ) -> Pin<Box<dyn Future<Output = Result<sea_orm::$($stream)+, DbErr>> + 'a + Send>> {
                sea_orm::StreamTrait::stream(&self.inner, stmt)
            }
        }
    };
}
pub(super) use stream_trait;
