//! Database URLs as logs and error messages may show them: without their passwords.

/// `url` with its passwords replaced by `***`, for logs and messages: the one of the user
/// info (`user:PASSWORD@`) and the values of the `password` and `sslpassword` query
/// parameters (their names compared as libpq and sqlx read them: percent-decoded; here in any
/// case). Everything else is kept as written.
///
/// ```
/// use bemi_worker::without_password;
///
/// assert_eq!(without_password("postgres://bemi:s3cret@db:5432/app"), "postgres://bemi:***@db:5432/app");
/// assert_eq!(
///     without_password("postgres://bemi@db/app?password=s3cret&sslmode=require"),
///     "postgres://bemi@db/app?password=***&sslmode=require"
/// );
/// assert_eq!(without_password("postgres://db/app"), "postgres://db/app");
/// ```
// Every index is where `find`/`rfind` found an ASCII pattern (`://`, `@`, `?`, `:`), or just
// after it: on char boundaries.
#[allow(clippy::string_slice)]
pub fn without_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    // The user info ends at the last `@` of the URL, so that a password with an unencoded `/`,
    // `#`, `?` or `@` is masked whole (an `@` in a query value masks more, never less).
    let user_info_end = url[scheme_end..].rfind('@').map(|i| scheme_end + i);
    let host_start = user_info_end.unwrap_or(scheme_end);
    let (before_query, query) = match url[host_start..].find('?') {
        Some(i) => url.split_at(host_start + i),
        None => (url, ""),
    };
    let mut masked = String::with_capacity(url.len() + 8);
    let colon = user_info_end.and_then(|end| url[scheme_end..end].find(':'));
    match (user_info_end, colon) {
        (Some(end), Some(colon)) => {
            masked.push_str(&url[..scheme_end + colon]);
            masked.push_str(":***");
            masked.push_str(&before_query[end..]);
        }
        _ => masked.push_str(before_query),
    }
    let Some(query) = query.strip_prefix('?') else {
        return masked;
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    masked.push('?');
    let mut hid_one = false;
    for (i, parameter) in query.split('&').enumerate() {
        if i > 0 {
            masked.push('&');
        }
        match parameter.split_once('=') {
            Some((name, _)) if is_password_parameter(name) => {
                masked.push_str(name);
                masked.push_str("=***");
                hid_one = true;
            }
            _ => masked.push_str(parameter),
        }
    }
    if let Some(fragment) = fragment {
        masked.push('#');
        // An unencoded `#` in a password value starts a "fragment" that is the rest of it.
        masked.push_str(if hid_one { "***" } else { fragment });
    }
    masked
}

/// Whether a URL query parameter's name (as written) is a password's.
fn is_password_parameter(name: &str) -> bool {
    let decoded: String = url::form_urlencoded::parse(name.as_bytes())
        .map(|(key, _)| key.into_owned())
        .collect();
    ["password", "sslpassword"]
        .iter()
        .any(|secret| decoded.trim().eq_ignore_ascii_case(secret))
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn passwords_of_the_user_info_and_of_the_query_are_hidden() {
        let cases = [
            (
                "postgres://bemi:s3cret@db:5432/app?sslmode=require",
                "postgres://bemi:***@db:5432/app?sslmode=require",
            ),
            (
                "postgres://u@h/db?password=SECRET&sslmode=require",
                "postgres://u@h/db?password=***&sslmode=require",
            ),
            (
                "postgres://h/db?sslmode=verify-full&password=SECRET",
                "postgres://h/db?sslmode=verify-full&password=***",
            ),
            (
                "postgres://u:one@h/db?user=u&password=two&sslpassword=three&application_name=x",
                "postgres://u:***@h/db?user=u&password=***&sslpassword=***&application_name=x",
            ),
            // Names as libpq and sqlx decode them.
            (
                "postgres://h/db?pass%77ord=SECRET&Password=SECRET",
                "postgres://h/db?pass%77ord=***&Password=***",
            ),
            // A password with unencoded `/`, `#` or `@` is hidden whole.
            ("postgres://u:se/cr#e@t@h/db", "postgres://u:***@h/db"),
            // … and `?`; a `#` in a password value starts the "fragment": hidden too.
            ("postgres://u:Se?cret1@h/db", "postgres://u:***@h/db"),
            (
                "postgres://h/db?password=SECRET#frag",
                "postgres://h/db?password=***#***",
            ),
            (
                "postgres://h/db?sslmode=require#frag",
                "postgres://h/db?sslmode=require#frag",
            ),
            // Nothing to hide: unchanged.
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h/db?", "postgres://h/db?"),
            (
                "postgres://h/db?sslmode=require&passwordless=1",
                "postgres://h/db?sslmode=require&passwordless=1",
            ),
            ("postgres://h/db?password", "postgres://h/db?password"),
            ("not a url", "not a url"),
        ];
        for (url, expected) in cases {
            let masked = without_password(url);
            assert_eq!(masked, expected, "{url}");
            assert!(
                !masked.contains("SECRET") && !masked.contains("s3cret"),
                "{masked}"
            );
        }
    }
}
