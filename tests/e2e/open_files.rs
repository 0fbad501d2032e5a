//! The limit on open files. The load tests hold both ends of 1 000 connections at once, more
//! than the common soft limit of 1 024: `main` raises the soft limit to the hard one, and tests
//! that need more than that fail with a message that says how to raise it.

use std::io;
use std::sync::Arc;

use anyhow::ensure;
use bemi_tests::{TestCluster, TestResult};

/// The (soft, hard) limits on open files of this process.
pub(crate) fn limits() -> io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises the soft limit on open files to the hard limit (what a process may do without
/// privileges). Failing, it says so on stderr and leaves the limit alone: only the tests that
/// need many files are affected, and they say what to do.
pub(crate) fn raise_to_hard_limit() {
    let outcome = limits().and_then(|(soft, hard)| {
        if soft >= hard {
            return Ok(());
        }
        let raised = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: `raised` is a valid `rlimit`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    });
    if let Err(error) = outcome {
        eprintln!("warning: could not raise the soft limit on open files (RLIMIT_NOFILE): {error}");
    }
}

/// Fails, saying how to fix it, unless this process may open `needed` files.
pub(crate) fn ensure_at_least(needed: libc::rlim_t, what: &str) -> anyhow::Result<()> {
    let (soft, hard) = limits()?;
    if soft >= needed {
        return Ok(());
    }
    if soft < hard {
        anyhow::bail!(
            "{what} needs {needed} open files, but this process may open only {soft} \
             (RLIMIT_NOFILE: soft {soft}, hard {hard}) and raising the soft limit failed (see the \
             warning at the start of the run); run the tests after `ulimit -Sn {hard}`"
        );
    }
    anyhow::bail!(
        "{what} needs {needed} open files, but this process may open only {soft} (RLIMIT_NOFILE: \
         soft {soft}, hard {hard}; the test binary already raised the soft limit to the hard \
         one). Raise the hard limit and run the tests again: `ulimit -n {needed}` in a root \
         shell, `--ulimit nofile={needed}:{needed}` for docker, `LimitNOFILE={needed}` for a \
         systemd service, or `nofile` in /etc/security/limits.conf."
    )
}

async fn the_soft_open_files_limit_is_raised_to_the_hard_limit(
    _cluster: Arc<TestCluster>,
) -> TestResult {
    let (soft, hard) = limits()?;
    ensure!(
        soft == hard || hard == libc::RLIM_INFINITY,
        "main() should have raised the soft RLIMIT_NOFILE ({soft}) to the hard limit ({hard})"
    );
    Ok(())
}
e2e_test!(the_soft_open_files_limit_is_raised_to_the_hard_limit);
