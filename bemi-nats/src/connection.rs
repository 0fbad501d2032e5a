//! Where the change stream is and how to reach it: [`NatsConfig`], the checked connection, and
//! the stream (created if missing).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::error::NatsError;
use crate::secrets::without_nats_secrets;

/// Partitions of a new stream, unless configured.
pub const DEFAULT_PARTITIONS: u32 = 8;

/// Where the change stream is, and how to reach it.
///
/// ```
/// let nats = bemi_nats::NatsConfig::new("tls://bemi:s3cret@nats.internal:4222")
///     .stream("audit")
///     .ca_file("/etc/bemi/nats-ca.pem");
/// assert_eq!(nats.subject(3), "audit.changes.3");
/// // Logs and errors show the URL without its password (or token).
/// assert_eq!(nats.display_url(), "tls://bemi:***@nats.internal:4222");
/// assert!(!format!("{nats:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsConfig {
    /// The server: `nats://HOST:PORT`, or `tls://HOST:PORT` for TLS; either with
    /// `user:password@` or `token@` before the host.
    pub url: String,
    /// The stream's name (created if missing).
    pub stream: String,
    /// Partitions of the stream when the capture creates it (fixed afterwards: the stream's
    /// description records it).
    pub partitions: u32,
    /// A credentials file (a user JWT and its nkey seed, as `nsc` writes them).
    pub credentials_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU…`), for nkey authentication.
    pub nkey_file: Option<PathBuf>,
    /// The PEM file of the CA that signed the server's certificate (TLS is then required).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, PEM files (TLS is then required).
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.display_url())
            .field("stream", &self.stream)
            .field("partitions", &self.partitions)
            .field("credentials_file", &self.credentials_file)
            .field("nkey_file", &self.nkey_file)
            .field("ca_file", &self.ca_file)
            .field("client_certificate", &self.client_certificate)
            .finish()
    }
}

impl NatsConfig {
    /// The stream `bemi` on `url`, with [`DEFAULT_PARTITIONS`].
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "bemi".to_owned(),
            partitions: DEFAULT_PARTITIONS,
            credentials_file: None,
            nkey_file: None,
            ca_file: None,
            client_certificate: None,
        }
    }

    /// Another stream name.
    #[must_use]
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = stream.into();
        self
    }

    /// Partitions for a stream the capture creates.
    #[must_use]
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Authenticates with a credentials file (user JWT and nkey seed).
    #[must_use]
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// Authenticates with the nkey seed in a file.
    #[must_use]
    pub fn nkey_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.nkey_file = Some(path.into());
        self
    }

    /// Trusts the CA of this PEM file for the server's certificate, and requires TLS.
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate (PEM files of the certificate and its key), and
    /// requires TLS.
    #[must_use]
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_certificate = Some((cert.into(), key.into()));
        self
    }

    /// The URL without its password or token, for logs and messages.
    pub fn display_url(&self) -> String {
        without_nats_secrets(&self.url)
    }

    /// The subject of a partition.
    pub fn subject(&self, partition: u32) -> String {
        format!("{}.changes.{partition}", self.stream)
    }

    /// Checks the names and files before connecting.
    pub(crate) fn validate(&self) -> Result<(), NatsError> {
        let valid = !self.stream.is_empty()
            && self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(NatsError::InvalidConfig(format!(
                "stream name {:?}: use letters, digits, '-' and '_'",
                self.stream
            )));
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(NatsError::InvalidConfig(format!(
                "{} partitions: use 1 to 1024",
                self.partitions
            )));
        }
        self.server()?;
        let files = [
            (
                "credentials file (--nats-creds)",
                self.credentials_file.as_ref(),
            ),
            ("nkey seed file (--nats-nkey)", self.nkey_file.as_ref()),
            ("CA file (--nats-ca)", self.ca_file.as_ref()),
            (
                "client certificate (--nats-cert)",
                self.client_certificate.as_ref().map(|(cert, _)| cert),
            ),
            (
                "client key (--nats-key)",
                self.client_certificate.as_ref().map(|(_, key)| key),
            ),
        ];
        for (what, path) in files {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(NatsError::InvalidConfig(format!(
                    "the NATS {what} {} is not a readable file: fix the path",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    /// The server's address without credentials, and the credentials of the URL.
    fn server(&self) -> Result<(String, UrlCredentials), NatsError> {
        let invalid = || {
            NatsError::InvalidConfig(format!(
                "{:?} is not a NATS URL: write nats://HOST:PORT (or tls://HOST:PORT), with                  user:password@ or token@ before the host if the server asks for them",
                self.display_url()
            ))
        };
        let mut url = url::Url::parse(self.url.trim()).map_err(|_| invalid())?;
        if !matches!(url.scheme(), "nats" | "tls") || url.host_str().is_none_or(str::is_empty) {
            return Err(invalid());
        }
        let user = percent_decode(url.username());
        let password = url.password().map(percent_decode);
        let credentials = match (user.is_empty(), password) {
            (true, None) => UrlCredentials::None,
            (false, None) => UrlCredentials::Token(user),
            (_, Some(password)) => UrlCredentials::UserPassword(user, password),
        };
        url.set_username("").map_err(|()| invalid())?;
        url.set_password(None).map_err(|()| invalid())?;
        Ok((url.to_string(), credentials))
    }

    /// Whether the connection must use TLS.
    fn tls_required(&self) -> bool {
        self.url.trim_start().starts_with("tls://")
            || self.ca_file.is_some()
            || self.client_certificate.is_some()
    }
}

/// Credentials written in the URL.
enum UrlCredentials {
    None,
    Token(String),
    UserPassword(String, String),
}

/// `%XX` escapes of a URL's user info, decoded (invalid ones kept as written).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection to the server, checked: JetStream on, version 2.9 or newer.
pub(crate) struct Connection {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
}

/// Connects as `name`.
pub(crate) async fn connect(config: &NatsConfig, name: &str) -> Result<Connection, NatsError> {
    config.validate()?;
    let (server, credentials) = config.server()?;
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5));
    match credentials {
        UrlCredentials::None => {}
        UrlCredentials::Token(token) => options = options.token(token),
        UrlCredentials::UserPassword(user, password) => {
            options = options.user_and_password(user, password);
        }
    }
    if let Some(path) = &config.credentials_file {
        options = options.credentials_file(path).await.map_err(|error| {
            NatsError::InvalidConfig(format!(
                "the NATS credentials file {} cannot be used ({error}): give the .creds file                  nsc wrote, holding a user JWT and its nkey seed",
                path.display()
            ))
        })?;
    }
    if let Some(path) = &config.nkey_file {
        let seed = std::fs::read_to_string(path).map_err(|error| {
            NatsError::InvalidConfig(format!(
                "the NATS nkey seed file {} cannot be read ({error}): fix the path",
                path.display()
            ))
        })?;
        options = options.nkey(seed.trim().to_owned());
    }
    if config.tls_required() {
        // rustls cannot choose a crypto provider by itself here (two are compiled in).
        bemi_worker::install_crypto_provider();
        options = options.require_tls(true);
    }
    if let Some(path) = &config.ca_file {
        options = options.add_root_certificates(path.clone());
    }
    if let Some((cert, key)) = &config.client_certificate {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let client = options.connect(server.as_str()).await.map_err(|error| {
        let message = error.to_string();
        let lower = message.to_lowercase();
        let hint = if lower.contains("authorization") || lower.contains("authentication") {
            " (the server refused the credentials: check the user and password or the token \
             in the URL, --nats-creds or --nats-nkey)"
        } else if lower.contains("tls") || lower.contains("certificate") {
            " (check TLS: tls:// in the URL, --nats-ca with the CA that signed the server's \
             certificate, --nats-cert and --nats-key if the server asks for a client \
             certificate)"
        } else {
            " (check that nats-server runs there and that the URL is right)"
        };
        NatsError::Nats(format!(
            "connecting to {}: {}{hint}",
            config.display_url(),
            redact(&message, config)
        ))
    })?;
    let info = client.server_info();
    check_server(&info.version, info.jetstream)?;
    let jetstream = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client.clone());
    Ok(Connection { client, jetstream })
}

/// `message` without the URL's secrets, should a library have quoted them.
fn redact(message: &str, config: &NatsConfig) -> String {
    let mut message = message.replace(config.url.trim(), &config.display_url());
    if let Ok((_, credentials)) = config.server() {
        let secret = match credentials {
            UrlCredentials::None => None,
            UrlCredentials::Token(token) => Some(token),
            UrlCredentials::UserPassword(_, password) => Some(password),
        };
        if let Some(secret) = secret.filter(|secret| !secret.is_empty()) {
            message = message.replace(&secret, "***");
        }
    }
    message
}

/// Refuses a server that cannot do what the stream needs, naming the fix.
fn check_server(version: &str, jetstream: bool) -> Result<(), NatsError> {
    let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
    let (major, minor) = (parts.next().flatten(), parts.next().flatten());
    match (major, minor) {
        (Some(major), Some(minor)) if (major, minor) >= (2, 9) => {}
        _ => {
            return Err(NatsError::InvalidConfig(format!(
                "nats-server {version} is too old: the change stream needs 2.9 or newer \
                 (message de-duplication, pull consumers); upgrade it"
            )));
        }
    }
    if !jetstream {
        return Err(NatsError::InvalidConfig(
            "nats-server runs without JetStream: start it with -js (or a `jetstream {}` block \
             in its configuration)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The stream's description, which records its partitions.
fn description(partitions: u32) -> String {
    format!("bemi-rs change stream; partitions={partitions}")
}

/// The partitions a stream's description records.
fn partitions_of(description: Option<&str>) -> Option<u32> {
    description?
        .strip_prefix("bemi-rs change stream; partitions=")?
        .parse()
        .ok()
}

/// The change stream and its partitions: created (file storage, work queue) if missing.
pub(crate) async fn ensure_stream(
    jetstream: &jetstream::Context,
    config: &NatsConfig,
) -> Result<(stream::Stream, u32), NatsError> {
    let stream = match jetstream.get_stream(&config.stream).await {
        Ok(stream) => stream,
        Err(error) if is_stream_not_found(&error) => jetstream
            .create_stream(stream::Config {
                name: config.stream.clone(),
                description: Some(description(config.partitions)),
                subjects: vec![format!("{}.changes.*", config.stream)],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: Duration::from_secs(120),
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|error| {
                NatsError::Nats(format!("creating the stream {:?}: {error}", config.stream))
            })?,
        Err(error) => {
            return Err(NatsError::Nats(format!(
                "looking up the stream {:?}: {error}",
                config.stream
            )));
        }
    };
    let partitions =
        partitions_of(stream.cached_info().config.description.as_deref()).ok_or_else(|| {
            NatsError::InvalidConfig(format!(
                "the stream {:?} exists but was not created by bemi (its description does not \
                 record partitions): give bemi a stream of its own with --stream",
                config.stream
            ))
        })?;
    Ok((stream, partitions))
}

fn is_stream_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_servers_and_servers_without_jetstream_are_refused_with_the_fix() {
        assert!(check_server("2.9.10", true).is_ok());
        assert!(check_server("2.10.1", true).is_ok());
        let old = check_server("2.8.4", true).unwrap_err().to_string();
        assert!(old.contains("2.9 or newer"), "{old}");
        let off = check_server("2.9.10", false).unwrap_err().to_string();
        assert!(off.contains("-js"), "{off}");
    }

    #[test]
    fn the_description_records_the_partitions() {
        assert_eq!(partitions_of(Some(&description(12))), Some(12));
        assert_eq!(partitions_of(Some("someone else's")), None);
        assert_eq!(partitions_of(None), None);
    }

    #[test]
    fn credentials_come_out_of_the_url_and_never_into_messages() {
        let config = NatsConfig::new("nats://bemi:s%40cret@127.0.0.1:4222");
        let (server, credentials) = config.server().unwrap();
        assert_eq!(server, "nats://127.0.0.1:4222");
        assert!(matches!(credentials,
            UrlCredentials::UserPassword(user, password) if user == "bemi" && password == "s@cret"));
        let token = NatsConfig::new("tls://t0ken@nats.internal:4222");
        let (server, credentials) = token.server().unwrap();
        assert_eq!(server, "tls://nats.internal:4222");
        assert!(matches!(credentials, UrlCredentials::Token(token) if token == "t0ken"));
        assert!(token.tls_required());
        assert!(!config.tls_required());
        let error = NatsConfig::new("http://u:SECRET@x")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            !error.contains("SECRET") && error.contains("nats://"),
            "{error}"
        );
        assert_eq!(
            redact(
                "failed: s@cret at nats://bemi:s%40cret@127.0.0.1:4222",
                &config
            ),
            "failed: *** at nats://bemi:***@127.0.0.1:4222"
        );
        let missing = NatsConfig::new("tls://x:4222")
            .ca_file("/nonexistent/ca.pem")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(missing.contains("--nats-ca"), "{missing}");
    }

    #[tokio::test]
    async fn a_credentials_file_that_is_not_one_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.creds");
        std::fs::write(&path, "not a credentials file").unwrap();
        let config = NatsConfig::new("nats://127.0.0.1:1").credentials_file(&path);
        let Err(error) = connect(&config, "test").await else {
            panic!("connected with a bad credentials file");
        };
        let message = error.to_string();
        assert!(matches!(error, NatsError::InvalidConfig(_)), "{message}");
        assert!(
            message.contains("user.creds") && message.contains("nsc"),
            "{message}"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(NatsConfig::new("nats://127.0.0.1:4222").validate().is_ok());
        assert!(NatsConfig::new("tls://127.0.0.1:4222").validate().is_ok());
        assert!(NatsConfig::new("http://x").validate().is_err());
        assert!(
            NatsConfig::new("nats://x")
                .stream("a.b")
                .validate()
                .is_err()
        );
        assert!(
            NatsConfig::new("nats://x")
                .partitions(0)
                .validate()
                .is_err()
        );
    }
}
