//! Graceful shutdown on SIGINT (Ctrl-C) and SIGTERM: the first signal cancels a token, a second
//! one ends the process at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The exit code after a second signal (128 + SIGINT, as shells report Ctrl-C).
pub(crate) const FORCED_EXIT_CODE: i32 = 130;

/// Cancels the returned token on the first SIGINT or SIGTERM; exits the process with
/// [`FORCED_EXIT_CODE`] on the second. Call it inside a tokio runtime.
pub(crate) fn on_signals() -> std::io::Result<CancellationToken> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(
            signal = name,
            "shutting down (send it again to stop at once)"
        );
        cancel.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::warn!("second signal: stopping now");
        std::process::exit(FORCED_EXIT_CODE);
    });
    Ok(token)
}
