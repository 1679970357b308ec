//! Passwords kept out of everything dmf shows, logs or stores as text: [`redact`] is the one
//! function that takes them out of connection strings and of any text that contains them.

/// `text` with every password removed: from URLs (`scheme://user:password@host` keeps
/// `user@host`; a `password=` query parameter is dropped) and from key=value connection strings
/// (`password=...`, quoted or not, spaces around `=` allowed, is dropped). Whatever surrounds
/// them is kept, so that a whole error message or log line can go through it, and a connection
/// string stays one libpq accepts (without the password: then a passfile or `PGPASSWORD` serves).
pub fn redact(text: &str) -> String {
    let text = redact_userinfo(text);
    redact_keys(&text)
}

/// Where a URL's authority ends.
fn authority_end(c: char) -> bool {
    matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>' | ',' | ';' | ')' | ']' | '}') || c.is_whitespace()
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
    fn urls_lose_the_password_and_keep_the_rest() {
        assert_eq!(redact("postgres://app:s3cret@10.0.0.5:6432/orders"), "postgres://app@10.0.0.5:6432/orders");
        assert_eq!(redact("postgresql://app:p%40ss@h/db?sslmode=require"), "postgresql://app@h/db?sslmode=require");
        assert_eq!(redact("postgres://app@h/db"), "postgres://app@h/db");
        assert_eq!(redact("postgres://h:5432/db"), "postgres://h:5432/db");
        // a password with an unencoded '@' still goes: the last '@' of the authority ends it
        assert_eq!(redact("postgres://app:a@b@h/db"), "postgres://app@h/db");
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
