//! TLS settings of a database URL, read once for all of the worker's connections: the
//! replication connection (pgwire-replication) and the sqlx ones (catalog, destination, CLI).
//!
//! The settings are libpq's: `sslmode` (`disable`, `allow`, `prefer` — the default —,
//! `require`, `verify-ca`, `verify-full`), `sslrootcert`, `sslcert`, `sslkey`, each also from
//! its `PG…` environment variable, and sqlx's spellings (`ssl-root-cert`, `ssl-ca`, `ssl-cert`,
//! `ssl-key`). Files are checked up front, so that a typo stops the worker with the setting to
//! fix instead of failing every reconnect.
//!
//! Differences from libpq, each a limit of the client libraries:
//! - `sslrootcert=system` is refused; without `sslrootcert`, Mozilla's root certificates are
//!   trusted (the same list, built in).
//! - `require` never verifies, even with `sslrootcert` (libpq then verifies the chain).
//! - `verify-ca` is refused for the replication connection (pgwire-replication 0.5 checks the
//!   host name anyway); use `verify-full` with the name the certificate carries.
//! - The sqlx connections trust Mozilla's roots *in addition to* `sslrootcert`.

use std::path::PathBuf;

use pgwire_replication::{SslMode, TlsConfig};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::error::WorkerError;

/// Makes ring the process's TLS crypto provider, once; later calls do nothing. rustls cannot
/// pick one by itself when two are compiled in (pgwire-replication brings aws-lc-rs along), and
/// sqlx's `verify-ca` path asks for the process default. [`Worker::run`](crate::worker::Worker::run)
/// and the `bemi` CLI call it; call it yourself before opening other sqlx connections with
/// `sslmode=verify-ca` in a process that links bemi-worker.
pub fn install_crypto_provider() {
    // An error only says that a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS settings of one database URL.
#[derive(Debug, Clone)]
pub(crate) struct TlsSettings {
    mode: PgSslMode,
    root_cert: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsSettings {
    /// Reads and checks the settings of `url` (and the `PG…` environment variables): the
    /// certificate files must exist, and a client certificate needs its key.
    pub(crate) fn from_url(url: &str) -> Result<Self, WorkerError> {
        let invalid = |detail: String| WorkerError::InvalidConfig(detail);
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| invalid(format!("database URL: {e}")))?;
        let parsed = url::Url::parse(url).map_err(|e| invalid(format!("database URL: {e}")))?;
        let setting = |names: &[&str], variable: &str| -> Option<String> {
            names
                .iter()
                .find_map(|name| {
                    parsed
                        .query_pairs()
                        .find(|(key, _)| key == name)
                        .map(|(_, value)| value.into_owned())
                })
                .or_else(|| std::env::var(variable).ok())
                .filter(|value| !value.is_empty())
        };
        let existing =
            |name: &str, value: Option<String>| -> Result<Option<PathBuf>, WorkerError> {
                let Some(value) = value else { return Ok(None) };
                let path = PathBuf::from(value);
                if path.is_file() {
                    Ok(Some(path))
                } else {
                    Err(invalid(format!(
                        "{name}={} in the database URL: no such file; give the path of a PEM file \
                     readable by the worker",
                        path.display()
                    )))
                }
            };
        let root = setting(&["sslrootcert", "ssl-root-cert", "ssl-ca"], "PGSSLROOTCERT");
        if root.as_deref() == Some("system") {
            return Err(invalid(
                "sslrootcert=system is not supported: leave sslrootcert out to trust Mozilla's \
                 root certificates (built in), or give the path of the CA's PEM file"
                    .to_owned(),
            ));
        }
        let root_cert = existing("sslrootcert", root)?;
        let cert = existing("sslcert", setting(&["sslcert", "ssl-cert"], "PGSSLCERT"))?;
        let key = existing("sslkey", setting(&["sslkey", "ssl-key"], "PGSSLKEY"))?;
        let client_cert = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "a client certificate needs both sslcert and sslkey in the database URL \
                     (or PGSSLCERT and PGSSLKEY)"
                        .to_owned(),
                ));
            }
        };
        Ok(Self {
            mode: options.get_ssl_mode(),
            root_cert,
            client_cert,
        })
    }

    /// Whether the URL names a root certificate that its `sslmode` will not check against
    /// (`prefer` or `require`: libpq would verify the chain with `require`, these clients do
    /// not). Worth a warning: the URL reads as verifying and does not.
    pub(crate) fn ignores_root_cert(&self) -> bool {
        self.root_cert.is_some() && matches!(self.mode, PgSslMode::Prefer | PgSslMode::Require)
    }

    /// The replication connection's TLS configuration.
    pub(crate) fn replication(&self) -> Result<TlsConfig, WorkerError> {
        let mut tls = match self.mode {
            PgSslMode::Disable | PgSslMode::Allow => return Ok(TlsConfig::disabled()),
            PgSslMode::Prefer => TlsConfig {
                mode: SslMode::Prefer,
                ..TlsConfig::default()
            },
            PgSslMode::Require => TlsConfig::require(),
            PgSslMode::VerifyCa => {
                return Err(WorkerError::InvalidConfig(
                    "sslmode=verify-ca is not supported on the replication connection (its TLS \
                     client checks the host name anyway): use sslmode=verify-full with the host \
                     name the server's certificate carries"
                        .to_owned(),
                ));
            }
            PgSslMode::VerifyFull => TlsConfig::verify_full(self.root_cert.clone()),
        };
        if let Some((cert, key)) = &self.client_cert {
            tls = tls.with_client_cert(cert.clone(), key.clone());
        }
        Ok(tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_full_verifies_the_host_name_on_replication() {
        use crate::tls::TlsSettings;

        let settings =
            TlsSettings::from_url("postgres://u@db.internal/app?sslmode=verify-full").unwrap();
        assert!(settings.replication().unwrap().mode.verifies_hostname());
    }

    #[test]
    fn a_missing_root_certificate_file_is_refused_with_its_setting() {
        use crate::tls::TlsSettings;

        let error = TlsSettings::from_url(
            "postgres://u@db/app?sslmode=verify-full&sslrootcert=/nowhere/ca.pem",
        )
        .unwrap_err();
        assert!(error.to_string().contains("sslrootcert"));
    }

    #[test]
    fn require_with_a_root_certificate_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "PEM").unwrap();
        use crate::tls::TlsSettings;

        let url = format!(
            "postgres://u@db/app?sslmode=require&sslrootcert={}",
            ca.display()
        );
        assert!(TlsSettings::from_url(&url).unwrap().ignores_root_cert());
    }

    #[test]
    fn verify_ca_is_refused_for_replication_naming_verify_full() {
        use crate::tls::TlsSettings;

        let settings = TlsSettings::from_url("postgres://u@db/app?sslmode=verify-ca").unwrap();
        assert!(
            settings
                .replication()
                .unwrap_err()
                .to_string()
                .contains("verify-full")
        );
    }

    fn replication_of(url: &str) -> Result<TlsConfig, WorkerError> {
        TlsSettings::from_url(url)?.replication()
    }

    #[test]
    fn the_url_sslmode_chooses_the_replication_connections_tls() {
        let cases = [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-full", SslMode::VerifyFull),
        ];
        for (sslmode, expected) in cases {
            let tls = replication_of(&format!("postgres://u@db/app?sslmode={sslmode}")).unwrap();
            assert_eq!(tls.mode, expected, "sslmode={sslmode}");
        }
        let error = replication_of("postgres://u@db/app?sslmode=verify-ca").unwrap_err();
        assert!(error.to_string().contains("sslmode=verify-full"), "{error}");
    }

    #[test]
    fn certificate_files_come_from_the_url_under_either_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, "PEM").unwrap();
            path.display().to_string()
        };
        let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
        let tls = replication_of(&format!(
            "postgres://u@db/app?sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"
        ))
        .unwrap();
        assert_eq!(tls.ca_pem_path, Some(ca.clone().into()));
        assert_eq!(tls.client_cert_pem_path, Some(cert.clone().into()));
        assert_eq!(tls.client_key_pem_path, Some(key.clone().into()));
        let sqlx_spelling = replication_of(&format!(
            "postgres://u@db/app?sslmode=verify-full&ssl-root-cert={ca}&ssl-cert={cert}&ssl-key={key}"
        ))
        .unwrap();
        assert_eq!(sqlx_spelling, tls);
    }

    #[test]
    fn missing_files_system_roots_and_a_certificate_without_its_key_are_refused() {
        for (query, named) in [
            ("sslrootcert=/nowhere/ca.pem", "sslrootcert=/nowhere/ca.pem"),
            ("sslcert=/nowhere/c.pem&sslkey=/nowhere/c.key", "sslcert"),
            ("sslrootcert=system", "sslrootcert=system"),
        ] {
            let error = TlsSettings::from_url(&format!("postgres://u@db/app?{query}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{query}: {error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.pem");
        std::fs::write(&cert, "PEM").unwrap();
        let error = TlsSettings::from_url(&format!(
            "postgres://u@db/app?sslmode=require&sslcert={}",
            cert.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("sslcert and sslkey"), "{error}");
    }
}
