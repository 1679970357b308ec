//! Passwords kept out of everything dmf shows, logs or stores as text: [`redact`] is the one
//! function that takes them out of connection strings and of any text that contains them; a
//! [`PasswordRef`] is how the control plane holds a password (where it is, never what it is),
//! resolved by the process that connects, when it connects ([`login`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where a password is: what the manifest's `password_env` / `password_file` /
/// `password_secret` say, and what the control plane stores in their place.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PasswordRef {
    /// An environment variable of the process that connects.
    #[serde(rename = "password_env")]
    Env(String),
    /// A file (its first line) readable by the process that connects.
    #[serde(rename = "password_file")]
    File(PathBuf),
    /// An AWS Secrets Manager secret, by ARN: its SecretString, or the `password` of the JSON
    /// object it holds (as RDS's managed master passwords do). The process that connects fetches
    /// it first ([`remember`]; `dmf_aws::secrets`).
    #[serde(rename = "password_secret")]
    AwsSecret(String),
}

/// How long a fetched secret is used before it is fetched again (a rotated password is picked
/// up by then).
const FETCHED_FOR: Duration = Duration::from_secs(300);

fn fetched() -> &'static Mutex<HashMap<String, (Instant, Result<String, String>)>> {
    static FETCHED: OnceLock<Mutex<HashMap<String, (Instant, Result<String, String>)>>> = OnceLock::new();
    FETCHED.get_or_init(Default::default)
}

/// Keep what fetching the secret `arn` gave (its password, or why it could not be read) for this
/// process's next connections.
pub fn remember(arn: &str, value: Result<String, String>) {
    fetched().lock().unwrap_or_else(|p| p.into_inner()).insert(arn.to_string(), (Instant::now(), value));
}

/// Whether the secret `arn` was fetched lately (else it is fetched again before connecting).
pub fn fresh(arn: &str) -> bool {
    fetched().lock().unwrap_or_else(|p| p.into_inner()).get(arn).is_some_and(|(at, v)| v.is_ok() && at.elapsed() < FETCHED_FOR)
}

/// The AWS secrets a cluster's settings reference (its source, adopted target and roles).
pub fn aws_secrets(settings: &serde_json::Value) -> Vec<String> {
    let mut refs: Vec<&serde_json::Value> = ["source_password", "target_password"].iter().filter_map(|k| settings.get(*k)).collect();
    if let Some(roles) = settings.get("roles").and_then(|r| r.as_object()) {
        refs.extend(roles.values());
    }
    refs.iter().filter_map(|r| r.get("password_secret").and_then(|v| v.as_str())).map(str::to_string).collect()
}

impl std::fmt::Display for PasswordRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordRef::Env(v) => write!(f, "password_env {v}"),
            PasswordRef::File(p) => write!(f, "password_file {}", p.display()),
            PasswordRef::AwsSecret(arn) => write!(f, "password_secret {arn}"),
        }
    }
}

impl PasswordRef {
    /// `{"password_env": ..}`, `{"password_file": ..}` or `{"password_secret": ..}` (exactly
    /// one), as the manifest writes them into a cluster's settings; `None` when `value` is absent.
    pub fn from_json(value: Option<&serde_json::Value>) -> Result<Option<PasswordRef>, String> {
        let Some(v) = value else { return Ok(None) };
        let env = v.get("password_env").and_then(|v| v.as_str());
        let file = v.get("password_file").and_then(|v| v.as_str());
        let secret = v.get("password_secret").and_then(|v| v.as_str());
        match (env, file, secret) {
            (Some(e), None, None) => Ok(Some(PasswordRef::Env(e.to_string()))),
            (None, Some(f), None) => Ok(Some(PasswordRef::File(PathBuf::from(f)))),
            (None, None, Some(s)) => Ok(Some(PasswordRef::secret(s)?)),
            _ => Err("give exactly one of password_env, password_file and password_secret".into()),
        }
    }

    /// A Secrets Manager reference, checked to be an ARN (`arn:aws:secretsmanager:REGION:...`).
    pub fn secret(arn: &str) -> Result<PasswordRef, String> {
        let parts: Vec<&str> = arn.split(':').collect();
        if parts.len() < 7 || parts[0] != "arn" || parts[2] != "secretsmanager" || parts[3].is_empty() {
            return Err(format!("password_secret {arn:?} is not a Secrets Manager ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)"));
        }
        Ok(PasswordRef::AwsSecret(arn.to_string()))
    }

    /// The password itself, read now by this process (`who` names it in the error: "worker"). The
    /// error names the reference, never a value.
    pub fn resolve(&self, who: &str) -> Result<String, String> {
        let value = match self {
            PasswordRef::Env(var) => std::env::var(var).map_err(|_| format!("{self}: the {who}'s environment has no such variable"))?,
            PasswordRef::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{self}: cannot be read by the {who} ({})", e.kind()))?;
                text.lines().next().unwrap_or("").to_string()
            }
            PasswordRef::AwsSecret(arn) => match fetched().lock().unwrap_or_else(|p| p.into_inner()).get(arn) {
                Some((_, Ok(v))) => v.clone(),
                Some((_, Err(why))) => return Err(format!("{self}: {why}")),
                None => return Err(format!("{self}: the {who} has not fetched it")),
            },
        };
        if value.is_empty() {
            return Err(format!("{self}: it is empty"));
        }
        Ok(value)
    }
}

/// Whether a connection string carries a password of its own (inline, in the manifest).
pub fn has_password(dsn: &str) -> bool {
    redact(dsn) != dsn
}

/// A connection string that logs in with `password`: `dsn` without any password of its own, and
/// `password` added (percent-encoded in a URL's user info, quoted in key=value form).
pub fn with_password(dsn: &str, password: &str) -> String {
    let bare = redact(dsn);
    let url = ["postgres://", "postgresql://"].iter().find_map(|p| bare.strip_prefix(p).map(|rest| (*p, rest)));
    match url {
        Some((scheme, rest)) => {
            let end = rest.find(authority_end).unwrap_or(rest.len());
            let encoded = percent_encode(password);
            match rest[..end].rfind('@') {
                Some(at) if at > 0 => format!("{scheme}{}:{encoded}{}", &rest[..at], &rest[at..]),
                // no user: a query parameter, so that the user stays the default one
                _ => {
                    let rest = rest.strip_prefix('@').unwrap_or(rest);
                    let sep = if rest.contains('?') { '&' } else { '?' };
                    format!("{scheme}{rest}{sep}password={encoded}")
                }
            }
        }
        None => format!("{bare} password='{}'", password.replace('\\', "\\\\").replace('\'', "\\'")),
    }
}

/// `dsn` with the password `reference` points at, resolved now by this process (`who`); `dsn`
/// itself when there is no reference (a password inline, or none).
pub fn login(dsn: &str, reference: Option<&PasswordRef>, who: &str) -> Result<String, String> {
    match reference {
        Some(r) => Ok(with_password(dsn, &r.resolve(who)?)),
        None => Ok(dsn.to_string()),
    }
}

/// Percent-encoding of everything but unreserved characters (RFC 3986): a URL's user info, a
/// path segment, a query value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `text` with every password removed: from URLs (`scheme://user:password@host` keeps
/// `user@host`; a `password=` query parameter is dropped) and from key=value connection strings
/// (`password=...`, quoted or not, spaces around `=` allowed, is dropped). Whatever surrounds
/// them is kept, so that a whole error message or log line can go through it, and a connection
/// string stays one libpq accepts (without the password: then a passfile or `PGPASSWORD` serves).
pub fn redact(text: &str) -> String {
    let text = redact_userinfo(text);
    redact_keys(&text)
}

/// Where a URL's authority ends, as far as a password may go: `, ; ' ) ] }` are legal in user info,
/// so they do not end it (a JSON string's `"` does: a password's own is escaped there).
fn authority_end(c: char) -> bool {
    matches!(c, '/' | '?' | '#' | '"' | '`') || c.is_whitespace()
}

fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(authority_end).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let user = userinfo.split(':').next().unwrap_or("");
                out.push_str(user);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Drop `password=value` (a key=value pair or a URL query parameter). The key must stand on its
/// own: `sslpassword`, `password_env` and `password_file` are other keys.
fn redact_keys(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while let Some(found) = find_ci(&text[i..], "password") {
        let start = i + found;
        let after = start + "password".len();
        i = after;
        let before = text[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-') {
            continue;
        }
        let mut j = after;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'=' {
            continue;
        }
        j += 1;
        let in_query = matches!(before, Some('?' | '&'));
        if !in_query {
            while j < bytes.len() && bytes[j] == b' ' {
                j += 1;
            }
        }
        let end = value_end(text, j, in_query);
        // Keep a URL's `?` (when more parameters follow) and the separator before a key=value pair.
        let (cut_from, cut_to) = match before {
            Some('?') => (start, if bytes.get(end) == Some(&b'&') { end + 1 } else { end }),
            Some('&') => (start - 1, end),
            _ => {
                // key=value: also drop one space around it, so that words stay separated once
                if start > 0 && bytes[start - 1] == b' ' {
                    (start - 1, end)
                } else if bytes.get(end) == Some(&b' ') {
                    (start, end + 1)
                } else {
                    (start, end)
                }
            }
        };
        let cut_from = cut_from.max(copied);
        out.push_str(&text[copied..cut_from]);
        copied = cut_to;
        i = cut_to.max(after);
        // a URL whose only parameter was the password: drop the dangling '?'
        if before == Some('?') && bytes.get(end) != Some(&b'&') && out.ends_with('?') {
            out.pop();
        }
    }
    out.push_str(&text[copied.min(text.len())..]);
    out
}

/// Where a password value starting at `j` ends: a quoted value ('...' with \' and \\ escapes)
/// ends after its closing quote, a URL parameter at `&` or an authority end, anything else at
/// whitespace.
fn value_end(text: &str, j: usize, in_query: bool) -> usize {
    let bytes = text.as_bytes();
    if !in_query && bytes.get(j) == Some(&b'\'') {
        let mut k = j + 1;
        while k < bytes.len() {
            match bytes[k] {
                b'\\' => k += 2,
                // a doubled quote is read as one (SQL's way), which takes more, never less
                b'\'' if bytes.get(k + 1) == Some(&b'\'') => k += 2,
                b'\'' => return k + 1,
                _ => k += 1,
            }
        }
        return bytes.len();
    }
    let stop = |c: char| if in_query { c == '&' || c == '#' || c.is_whitespace() || matches!(c, '"' | '\'') } else { c.is_whitespace() || c == '"' };
    text[j..].find(stop).map_or(text.len(), |e| j + e)
}

/// Case-insensitive ASCII search.
fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    hay.as_bytes().windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn a_resolved_password_goes_into_either_form_and_parses_back() {
        use super::with_password;
        for (dsn, want) in [
            ("postgres://migrator@h:5432/db?sslmode=require", "postgres://migrator:p%40ss%20w%27rd@h:5432/db?sslmode=require"),
            ("postgres://migrator:old@h/db", "postgres://migrator:p%40ss%20w%27rd@h/db"),
            ("postgresql://h/db", "postgresql://h/db?password=p%40ss%20w%27rd"),
            ("postgresql://h/db?sslmode=require", "postgresql://h/db?sslmode=require&password=p%40ss%20w%27rd"),
            ("host=h user=migrator dbname=db", "host=h user=migrator dbname=db password='p@ss w\\'rd'"),
        ] {
            let got = with_password(dsn, "p@ss w'rd");
            assert_eq!(got, want);
            let config: tokio_postgres::Config = got.parse().expect("parses");
            assert_eq!(config.get_password(), Some(&b"p@ss w'rd"[..]), "{got}");
        }
    }

    #[test]
    fn urls_lose_the_password_and_keep_the_rest() {
        assert_eq!(redact("postgres://app:s3cret@10.0.0.5:6432/orders"), "postgres://app@10.0.0.5:6432/orders");
        assert_eq!(redact("postgresql://app:p%40ss@h/db?sslmode=require"), "postgresql://app@h/db?sslmode=require");
        assert_eq!(redact("postgres://app@h/db"), "postgres://app@h/db");
        assert_eq!(redact("postgres://h:5432/db"), "postgres://h:5432/db");
        // a password with an unencoded '@' still goes: the last '@' of the authority ends it
        assert_eq!(redact("postgres://app:a@b@h/db"), "postgres://app@h/db");
        // and one with characters that may end a URL in prose but are legal in user info
        assert_eq!(redact("postgres://migrator:Zx,9;q)'}@db1/orders"), "postgres://migrator@db1/orders");
        assert_eq!(redact("(postgres://a:b@h:5)"), "(postgres://a@h:5)");
        assert_eq!(redact("postgres://:onlypw@h/db"), "postgres://@h/db");
    }

    #[test]
    fn url_query_passwords_go_wherever_they_stand() {
        assert_eq!(redact("postgres://app@h/db?password=s3cret"), "postgres://app@h/db");
        assert_eq!(redact("postgres://app@h/db?password=s3cret&sslmode=require"), "postgres://app@h/db?sslmode=require");
        assert_eq!(redact("postgres://app@h/db?sslmode=require&password=s3cret"), "postgres://app@h/db?sslmode=require");
        assert_eq!(redact("postgres://app@h/db?a=1&password=s3cret&b=2"), "postgres://app@h/db?a=1&b=2");
        assert_eq!(redact("postgres://app@h/db?PASSWORD=s3cret"), "postgres://app@h/db");
    }

    #[test]
    fn key_value_passwords_go_quoted_or_not() {
        assert_eq!(redact("host=h password=p dbname=d"), "host=h dbname=d");
        assert_eq!(redact("password=p host=h"), "host=h");
        assert_eq!(redact("host=h password = 'a b\\' c' dbname=d"), "host=h dbname=d");
        assert_eq!(redact("host=h password='it''s'"), "host=h");
        assert_eq!(redact("host=h Password=p"), "host=h");
    }

    #[test]
    fn other_keys_that_contain_the_word_stay() {
        assert_eq!(redact("password_env = \"DB_PW\""), "password_env = \"DB_PW\"");
        assert_eq!(redact("password_file=/run/secrets/pw"), "password_file=/run/secrets/pw");
        assert_eq!(redact("the password is wrong"), "the password is wrong");
        assert_eq!(redact("sslpassword=x"), "sslpassword=x");
    }

    #[test]
    fn passwords_inside_longer_text_and_json_go_too() {
        assert_eq!(
            redact("connect to source of orders (postgres://migrator:pw@db:5432/shop): refused"),
            "connect to source of orders (postgres://migrator@db:5432/shop): refused"
        );
        assert_eq!(
            redact(r#"{"primary_endpoint":"postgres://migrator:pw@127.0.0.1:5/shop","read":"host=h password=x"}"#),
            r#"{"primary_endpoint":"postgres://migrator@127.0.0.1:5/shop","read":"host=h"}"#
        );
        // an unquoted value runs to whitespace (libpq reads a quote inside it as part of it)
        assert_eq!(redact("source = \"postgres://a:b@h/d\"\nsource = 'host=h password=z' # x"), "source = \"postgres://a@h/d\"\nsource = 'host=h # x");
        assert_eq!(redact("two: postgres://a:1@h/d and postgres://b:2@g/e"), "two: postgres://a@h/d and postgres://b@g/e");
    }
}
