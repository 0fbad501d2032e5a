//! Waiting for asynchronous results: poll with a deadline, never a fixed sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `probe` every few milliseconds until it returns `Some`, or fails after `timeout` with
/// `what` in the message.
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// let value = bemi_tests::wait_until("the answer", std::time::Duration::from_secs(5), || async {
///     Ok(Some(42))
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(5);
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}
