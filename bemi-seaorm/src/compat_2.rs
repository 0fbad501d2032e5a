//! SeaORM 2's shape of the traits: `*_raw` methods, `TransactionTrait::Transaction` (so
//! `begin` returns a [`BemiTransaction`](super::BemiTransaction)), `TransactionSession`,
//! `StreamTrait::stream_raw`.

use std::future::Future;

use sea_orm::{ConnectionTrait, DbErr, ExecResult, QueryResult, Statement};

use super::sea_orm;

pub(super) async fn execute<C: ConnectionTrait>(
    on: &C,
    stmt: Statement,
) -> Result<ExecResult, DbErr> {
    on.execute_raw(stmt).await
}

pub(super) async fn query_one<C: ConnectionTrait>(
    on: &C,
    stmt: Statement,
) -> Result<Option<QueryResult>, DbErr> {
    on.query_one_raw(stmt).await
}

pub(super) async fn query_all<C: ConnectionTrait>(
    on: &C,
    stmt: Statement,
) -> Result<Vec<QueryResult>, DbErr> {
    on.query_all_raw(stmt).await
}

/// Runs `write` (a write outside a transaction, in one of its own) here: a dropped future
/// rolls its transaction back (sqlx 0.9.1 queues the `ROLLBACK`, even of a dropped `BEGIN`).
pub(super) async fn run_to_end<T>(
    write: impl Future<Output = Result<T, DbErr>> + Send + 'static,
) -> Result<T, DbErr> {
    write.await
}

/// `ConnectionTrait` for a wrapper, through its `execute_statement` etc.
macro_rules! connection_trait {
    ($wrapper:ty) => {
        #[async_trait::async_trait]
        impl sea_orm::ConnectionTrait for $wrapper {
            fn get_database_backend(&self) -> DbBackend {
                self.backend()
            }

            async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
                self.execute_statement(stmt).await
            }

            async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
                self.execute_unprepared_sql(sql).await
            }

            async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
                self.query_one_statement(stmt).await
            }

            async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
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

/// `TransactionTrait` for a wrapper, through its `begin_transaction` etc.: its transactions
/// are [`BemiTransaction`](super::BemiTransaction)s.
macro_rules! transaction_trait {
    ($wrapper:ty) => {
        #[async_trait::async_trait]
        impl sea_orm::TransactionTrait for $wrapper {
            type Transaction = BemiTransaction;

            async fn begin(&self) -> Result<BemiTransaction, DbErr> {
                self.begin_transaction().await
            }

            async fn begin_with_config(
                &self,
                isolation_level: Option<IsolationLevel>,
                access_mode: Option<AccessMode>,
            ) -> Result<BemiTransaction, DbErr> {
                self.begin_transaction_with_config(isolation_level, access_mode)
                    .await
            }

            async fn begin_with_options(
                &self,
                options: sea_orm::TransactionOptions,
            ) -> Result<BemiTransaction, DbErr> {
                self.begin_transaction_with_config(options.isolation_level, options.access_mode)
                    .await
            }

            async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
            where
                F: for<'c> FnOnce(&'c BemiTransaction) -> Callback<'c, T, E> + Send,
                T: Send,
                E: std::fmt::Display + std::fmt::Debug + Send,
            {
                self.run_transaction(callback).await
            }

            async fn transaction_with_config<F, T, E>(
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

/// `TransactionSession` (commit, rollback) for the transaction wrapper.
macro_rules! transaction_session {
    ($wrapper:ty) => {
        #[async_trait::async_trait]
        impl sea_orm::TransactionSession for $wrapper {
            async fn commit(self) -> Result<(), DbErr> {
                self.commit_transaction().await
            }

            async fn rollback(self) -> Result<(), DbErr> {
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

            fn get_database_backend(&self) -> DbBackend {
                self.backend()
            }

            /// Streams pass through: they read.
            fn stream_raw<'a>(
                &'a self,
                stmt: Statement,
            ) -> Pin<Box<dyn Future<Output = Result<sea_orm::$($stream)+, DbErr>> + 'a + Send>> {
                sea_orm::StreamTrait::stream_raw(&self.inner, stmt)
            }
        }
    };
}
pub(super) use stream_trait;
