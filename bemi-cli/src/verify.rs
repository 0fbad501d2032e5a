//! `bemi verify` (the hash chain and the signed checkpoints of `changes`), `bemi keygen` (a
//! checkpoint signing key pair), and the checkpoint flags of `bemi worker`, `bemi store` and
//! `bemi prune`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bemi_audit::checkpoint::{CheckpointPolicy, PublicKey, SigningKey};
use bemi_audit::verify::Verifier;

use super::audit_db::{AuditArgs, finish_output};
use super::time::parse_duration;
use super::write_stdout;
use crate::text::timestamp_text;

/// A key given as its text or as the path of a file that holds it.
fn key_text(value: &str, flag: &str) -> anyhow::Result<String> {
    let value = value.trim();
    if value.starts_with("bemi-ed25519-") {
        return Ok(value.to_owned());
    }
    std::fs::read_to_string(value)
        .map(|text| text.trim().to_owned())
        .with_context(|| {
            format!("{flag}: {value:?} is neither a key nor a readable file holding one (make a pair with `bemi keygen --out PREFIX`)")
        })
}

/// `--checkpoint-key` alone (`bemi prune`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CheckpointKeyArg {
    /// Sign checkpoints with this secret key (its text, or a file holding it; `bemi keygen`
    /// makes one). Without it, no interval checkpoints are made, and prune's are unsigned.
    #[arg(
        long,
        env = "BEMI_CHECKPOINT_KEY",
        value_name = "KEY|FILE",
        hide_env_values = true
    )]
    pub(crate) checkpoint_key: Option<String>,
}

impl CheckpointKeyArg {
    /// The key, if one was given.
    pub(crate) fn key(&self) -> anyhow::Result<Option<SigningKey>> {
        self.checkpoint_key
            .as_deref()
            .filter(|value| !value.trim().is_empty())
            .map(|value| {
                key_text(value, "--checkpoint-key")?
                    .parse::<SigningKey>()
                    .map_err(|error| anyhow!("--checkpoint-key: {error}"))
            })
            .transpose()
    }
}

/// The checkpoint flags `bemi worker`, `bemi dev` and `bemi store` share.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CheckpointArgs {
    #[command(flatten)]
    key: CheckpointKeyArg,
    /// Sign the chain's head after this many new changes.
    #[arg(
        long,
        env = "BEMI_CHECKPOINT_EVERY_CHANGES",
        value_name = "N",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    checkpoint_every_changes: u64,
    /// Sign the chain's head after this long with new changes (30s, 5m).
    #[arg(
        long,
        env = "BEMI_CHECKPOINT_EVERY",
        value_name = "DURATION",
        default_value = "60s",
        value_parser = parse_duration
    )]
    checkpoint_every: Duration,
    /// Also append each checkpoint, as a JSON line, to this file (keep it where the
    /// destination database's owner cannot rewrite it; `bemi verify --checkpoint-file`).
    #[arg(long, env = "BEMI_CHECKPOINT_FILE", value_name = "PATH")]
    checkpoint_file: Option<PathBuf>,
}

impl CheckpointArgs {
    /// The policy these flags describe.
    pub(crate) fn policy(&self) -> anyhow::Result<CheckpointPolicy> {
        Ok(CheckpointPolicy::new(self.key.key()?)
            .every_changes(self.checkpoint_every_changes)
            .every(self.checkpoint_every)
            .file(self.checkpoint_file.clone()))
    }
}

/// `bemi verify`
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    db: AuditArgs,
    /// Check the checkpoints' signatures with this public key (its text, or a file holding
    /// it). Without it only the hash chain is checked: anyone can recompute a chain.
    #[arg(
        long,
        env = "BEMI_PUBLIC_KEY",
        value_name = "KEY|FILE",
        hide_env_values = true
    )]
    public_key: Option<String>,
    /// Also check the checkpoints of this file (written by `--checkpoint-file`).
    #[arg(long, env = "BEMI_CHECKPOINT_FILE", value_name = "PATH")]
    checkpoint_file: Option<PathBuf>,
}

/// The checkpoints' public key of `--public-key` (its text, or a file holding it); `None` when
/// not given (or empty).
pub(super) fn public_key(value: Option<&str>) -> anyhow::Result<Option<PublicKey>> {
    value
        .filter(|value| !value.trim().is_empty())
        .map(|value| {
            key_text(value, "--public-key")?
                .parse::<PublicKey>()
                .map_err(|error| anyhow!("--public-key: {error}"))
        })
        .transpose()
}

/// Runs `bemi verify`: prints what was checked and every break; fails when there is one.
pub(super) async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let public_key = public_key(args.public_key.as_deref())?;
    let pool = args.db.connect().await?;
    let mut conn = pool.acquire().await?;
    let report = Verifier::new()
        .public_key(public_key)
        .checkpoint_file(args.checkpoint_file.clone())
        .run(&mut conn)
        .await
        .context("could not verify the audit trail")?;
    drop(conn);
    pool.close().await;
    let mut text = String::new();
    for chain in &report.chains {
        text.push_str(&format!(
            "chain {}: {} change{}",
            chain.chain,
            chain.changes,
            if chain.changes == 1 { "" } else { "s" }
        ));
        if let (Some(first), Some(last)) = (chain.first_seq, chain.last_seq) {
            text.push_str(&format!(" (seq {first}..{last})"));
        }
        if let Some(through) = chain.pruned_through {
            text.push_str(&format!(", pruned through seq {through}"));
        }
        match chain.last_verified_checkpoint {
            Some((seq, at)) => text.push_str(&format!(
                ", last verified checkpoint seq {seq} signed {}, {} change{} after it",
                timestamp_text(at),
                chain.unsigned_tail,
                if chain.unsigned_tail == 1 { "" } else { "s" }
            )),
            None if report.signatures_checked => {
                text.push_str(", no verified checkpoint");
            }
            None => {}
        }
        text.push('\n');
    }
    if report.chains.is_empty() {
        text.push_str("no chained changes\n");
    }
    if let Some((from, to)) = report.unchained_range {
        text.push_str(&format!(
            "unchained: {} change{} committed {} .. {} (stored before the hash chain; not \
             verifiable)\n",
            report.unchained,
            if report.unchained == 1 { "" } else { "s" },
            timestamp_text(from),
            timestamp_text(to)
        ));
    }
    if report.signatures_checked {
        text.push_str(&format!(
            "checkpoints: {} signature{} verified\n",
            report.checkpoints_verified,
            if report.checkpoints_verified == 1 {
                ""
            } else {
                "s"
            }
        ));
    } else {
        text.push_str(
            "checkpoints: signatures not checked (give --public-key; without it a chain \
             recomputed by someone with write access is not detected)\n",
        );
    }
    for problem in &report.breaks {
        text.push_str(&format!("BREAK: {problem}\n"));
    }
    if report.is_intact() {
        text.push_str("verified: no break found\n");
    }
    finish_output(write_stdout(&text))?;
    if report.is_intact() {
        Ok(())
    } else {
        Err(anyhow!(
            "the audit trail was altered: {} break{} found (see above)",
            report.breaks.len(),
            if report.breaks.len() == 1 { "" } else { "s" }
        ))
    }
}

/// `bemi keygen`
#[derive(Debug, clap::Args)]
pub(crate) struct KeygenArgs {
    /// Write the secret key to PREFIX.key (readable by its owner only) and the public key to
    /// PREFIX.pub; without it, print both.
    #[arg(long, env = "BEMI_KEYGEN_OUT", value_name = "PREFIX")]
    out: Option<PathBuf>,
}

/// Runs `bemi keygen`.
pub(super) fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    let key = SigningKey::generate().map_err(|error| {
        anyhow!("could not get random bytes from the operating system: {error}")
    })?;
    let (secret, public) = key.to_text_pair();
    let Some(prefix) = &args.out else {
        return finish_output(write_stdout(&format!("{secret}\n{public}\n")));
    };
    let with = |extension: &str| {
        let mut path = prefix.clone().into_os_string();
        path.push(extension);
        PathBuf::from(path)
    };
    let (secret_path, public_path) = (with(".key"), with(".pub"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&secret_path).with_context(|| {
        format!(
            "could not create {} (an existing key is never overwritten)",
            secret_path.display()
        )
    })?;
    std::io::Write::write_all(&mut file, format!("{secret}\n").as_bytes())?;
    std::fs::write(&public_path, format!("{public}\n"))
        .with_context(|| format!("could not write {}", public_path.display()))?;
    finish_output(write_stdout(&format!(
        "secret key: {} (give it to the worker or store: --checkpoint-key)\npublic key: {} \
         (give it to whoever verifies: bemi verify --public-key)\n{public}\n",
        secret_path.display(),
        public_path.display()
    )))
}
