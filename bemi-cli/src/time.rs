//! Times on the command line: bemi-audit's `PointInTime` and `parse_duration`, with a time
//! nobody can read turned into a usage error (exit code 2) naming the flag.

use chrono::{DateTime, Utc};

use bemi_audit::time::TimeError;
pub(crate) use bemi_audit::time::{PointInTime, parse_duration};

/// A time argument that neither bemi nor PostgreSQL reads as a time: a usage error (exit
/// code 2), found when the command runs.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The instant of `point` (see [`PointInTime::resolve`]); a [`UsageError`] naming `flag` when it
/// is not a time.
pub(crate) async fn resolve(
    point: &PointInTime,
    flag: &str,
    pool: &sqlx::PgPool,
    now: DateTime<Utc>,
) -> anyhow::Result<DateTime<Utc>> {
    match point.resolve(pool, now).await {
        Ok(instant) => Ok(instant),
        Err(TimeError::NotATime(error)) => Err(UsageError(format!("{flag} {error}")).into()),
        Err(TimeError::Database(error)) => Err(error.into()),
        Err(other) => Err(other.into()),
    }
}

/// [`resolve`] for an optional flag.
pub(crate) async fn resolve_optional(
    point: Option<&PointInTime>,
    flag: &str,
    pool: &sqlx::PgPool,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    match point {
        Some(point) => resolve(point, flag, pool, now).await.map(Some),
        None => Ok(None),
    }
}
