//! NATS URLs as logs and error messages may show them: without their secrets.

/// A NATS URL as logs and error messages may show it: the password of `user:PASSWORD@` and a
/// token (`nats://TOKEN@host`, user info without a colon) replaced by `***`.
///
/// ```
/// use bemi_nats::without_nats_secrets;
///
/// assert_eq!(without_nats_secrets("nats://bemi:s3cret@nats:4222"), "nats://bemi:***@nats:4222");
/// assert_eq!(without_nats_secrets("tls://t0ken@nats:4222"), "tls://***@nats:4222");
/// assert_eq!(without_nats_secrets("nats://nats:4222"), "nats://nats:4222");
/// ```
pub fn without_nats_secrets(url: &str) -> String {
    let masked = bemi_worker::without_password(url);
    let (scheme, rest) = match masked.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, masked.as_str()),
    };
    // A token: user info without a colon (`user:***` was masked above).
    match rest.rsplit_once('@') {
        Some((user_info, host)) if scheme.is_none() || !user_info.contains(':') => match scheme {
            Some(scheme) => format!("{scheme}://***@{host}"),
            None => format!("***@{host}"),
        },
        _ => masked,
    }
}

#[cfg(test)]
mod tests {
    use super::without_nats_secrets;

    #[test]
    fn nats_passwords_and_tokens_are_hidden() {
        for (url, expected) in [
            ("nats://u:SECRET@h:4222", "nats://u:***@h:4222"),
            ("tls://SECRET@h:4222", "tls://***@h:4222"),
            ("nats://u:se@cr/et@h:4222", "nats://u:***@h:4222"),
            ("nats://h:4222", "nats://h:4222"),
            ("SECRET@h", "***@h"),
        ] {
            assert_eq!(without_nats_secrets(url), expected, "{url}");
        }
    }
}
