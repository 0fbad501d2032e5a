//! `bemi ui`: the audit trail's web UI (bemi-ui's router) on its own server.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;

use super::audit_db::AuditArgs;
use super::shutdown;

/// `bemi ui`
#[derive(Debug, clap::Args)]
pub(crate) struct UiArgs {
    /// Where to listen. Any address but a loopback one needs --token.
    #[arg(long, env = "BEMI_UI_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    #[command(flatten)]
    audit: AuditArgs,
    /// Every request needs `Authorization: Bearer TOKEN` (or the login page's cookie).
    #[arg(long, env = "BEMI_UI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Let the token holder revert changes (writes to DATABASE_URL, the source database).
    #[arg(long, env = "BEMI_UI_ALLOW_REVERT", value_parser = super::boolish())]
    allow_revert: bool,
    /// The address people reach the UI at, e.g. https://audit.example.com (behind a TLS
    /// proxy): only requests for this host are served, writes must come from it, and an https
    /// URL makes the cookies Secure. Without it only 127.0.0.1, localhost and [::1] are served
    /// (any host with --token).
    #[arg(long, env = "BEMI_UI_PUBLIC_URL")]
    public_url: Option<String>,
    /// How many live tails may stream at once (past it: 503).
    #[arg(long, env = "BEMI_UI_MAX_TAILS", default_value_t = bemi_ui::DEFAULT_MAX_TAILS)]
    max_tails: usize,
    /// The most changes one revert from the UI may undo (`bemi revert --max-changes` for more).
    #[arg(long, env = "BEMI_UI_MAX_REVERT_CHANGES", default_value_t = bemi_ui::DEFAULT_MAX_REVERT_CHANGES)]
    max_revert_changes: u64,
    /// The verification page (/verify) checks the checkpoints' signatures with this public key
    /// (its text, or a file holding it; `bemi keygen`'s `.pub`). Without it the page
    /// recomputes the hash chains only.
    #[arg(
        long,
        env = "BEMI_PUBLIC_KEY",
        value_name = "KEY|FILE",
        hide_env_values = true
    )]
    public_key: Option<String>,
}

/// Runs `bemi ui` until SIGINT or SIGTERM.
pub(super) async fn run(args: UiArgs) -> anyhow::Result<()> {
    let token = args
        .token
        .as_deref()
        .filter(|token| !token.trim().is_empty());
    if !args.addr.ip().is_loopback() && token.is_none() {
        bail!(
            "refusing to serve the audit trail on {} without a token: anyone who reaches that \
             address could read it. Pass --token (or BEMI_UI_TOKEN), or listen on 127.0.0.1",
            args.addr
        );
    }
    if args.allow_revert && token.is_none() {
        bail!(
            "--allow-revert needs --token: without one, anyone who reaches the page could revert \
             changes"
        );
    }
    if !args.addr.ip().is_loopback() && args.public_url.is_none() {
        tracing::warn!(
            addr = %args.addr,
            "serving on a network without --public-url: any Host is answered and cookies are \
             not Secure; behind TLS, pass --public-url https://HOST"
        );
    }
    let audit = args.audit.connect().await?;
    let source = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => super::connect(&url).await?,
        _ => audit.clone(),
    };
    let mut options = bemi_ui::UiOptions::new()
        .source(source)
        .max_tails(args.max_tails)
        .max_revert_changes(args.max_revert_changes);
    if let Some(key) = super::verify::public_key(args.public_key.as_deref())? {
        options = options.verify_public_key(key);
    }
    if let Some(token) = token {
        options = options.token(token, args.allow_revert);
    }
    if let Some(url) = args
        .public_url
        .as_deref()
        .filter(|url| !url.trim().is_empty())
    {
        options = options.public_url(url)?;
    }
    let shutdown = shutdown::on_signals()?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("could not listen on {}", args.addr))?;
    let address = listener.local_addr()?;
    serve(listener, bemi_ui::router(audit, options), shutdown).await?;
    tracing::info!(%address, "bemi ui stopped");
    Ok(())
}

/// Serves `router` on `listener`, printing its URL, until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    super::write_stdout(&format!("BEMI_UI_URL=http://{address}/\n"))?;
    tracing::info!(%address, "serving the audit trail's web UI");
    // The client's address limits failed logins per client.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
    .context("the web UI's server failed")
}
