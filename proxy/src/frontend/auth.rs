//! Client authentication: trust on loopback (never for dmf's own role), MD5 / SCRAM-SHA-256
//! against the users file, or, per user, what the server itself asks of that user.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Buf, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::stream::{send_all, ClientStream};
use crate::protocol::{build, cstr, frame, Side};
use crate::Error;

/// How clients prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Loopback clients only, no password, and never dmf's own role (the route's user).
    Trust,
    Md5,
    Scram,
    /// Ask each client what the server asks of its user (nothing where it trusts, a clear-text
    /// password, MD5 or SCRAM), checked against the users file: a client sees the login it would
    /// see directly. The server's answer to the proxy's address stands for a loopback client's
    /// only: a client on another host, or one naming dmf's own role, proves itself with SCRAM
    /// where the server trusts.
    Server,
}

impl std::fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientAuth::Trust => "trust",
            ClientAuth::Md5 => "md5",
            ClientAuth::Scram => "scram",
            ClientAuth::Server => "server",
        })
    }
}

impl std::str::FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "trust" => Ok(ClientAuth::Trust),
            "md5" => Ok(ClientAuth::Md5),
            "scram" | "scram-sha-256" => Ok(ClientAuth::Scram),
            "server" => Ok(ClientAuth::Server),
            _ => Err(format!("unknown client auth {s:?}: use trust, md5, scram or server")),
        }
    }
}

/// Passwords the proxy holds, per user: checked against clients, used towards backends.
#[derive(Clone)]
pub struct Users {
    passwords: HashMap<String, String>,
    /// SCRAM secrets derived once per user (salt, iterations, StoredKey, ServerKey).
    scram: HashMap<String, ScramSecret>,
    /// A random key of this process: an unknown user's mock salt is derived from it and the
    /// name, so that it is the same at every attempt, as a real user's is (PostgreSQL's mock
    /// authentication does the same).
    mock_key: [u8; 32],
}

impl Default for Users {
    fn default() -> Users {
        Users { passwords: HashMap::new(), scram: HashMap::new(), mock_key: random_bytes::<32>() }
    }
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.passwords.keys().collect();
        names.sort();
        f.debug_struct("Users").field("users", &names).finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
struct ScramSecret {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Users {
    /// Read a pgbouncer-style users file: one `"user" "password"` per line; `#` comments.
    pub fn load(path: &Path) -> Result<Users, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::UsersFile { path: path.display().to_string(), line: 0, message: e.to_string() })?;
        let mut users = Users::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |m: &str| Error::UsersFile { path: path.display().to_string(), line: i + 1, message: m.to_string() };
            let fields = quoted_fields(line).ok_or_else(|| bad("expected \"user\" \"password\""))?;
            let [user, password] = fields.as_slice() else { return Err(bad("expected exactly two quoted fields")) };
            if password.starts_with("md5") && password.len() == 35 || password.starts_with("SCRAM-SHA-256$") {
                return Err(bad("hashed passwords cannot log in to backends: give the password itself"));
            }
            users.insert(user, password);
        }
        Ok(users)
    }

    pub fn insert(&mut self, user: &str, password: &str) {
        self.passwords.insert(user.to_string(), password.to_string());
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        if let Some(s) = parse_verifier(&verifier) {
            self.scram.insert(user.to_string(), s);
        }
    }

    pub fn password(&self, user: &str) -> Option<&str> {
        self.passwords.get(user).map(String::as_str)
    }

    /// Some user the proxy holds a password for (the proxy's own connections use it).
    pub fn first_user(&self) -> Option<String> {
        let mut names: Vec<&String> = self.passwords.keys().collect();
        names.sort();
        names.first().map(|s| s.to_string())
    }
}

fn quoted_fields(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some('"') => {}
            Some(_) => return None,
        }
        let mut f = String::new();
        loop {
            match chars.next()? {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    f.push('"');
                }
                '"' => break,
                c => f.push(c),
            }
        }
        out.push(f);
    }
}

/// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`
fn parse_verifier(v: &str) -> Option<ScramSecret> {
    let rest = v.strip_prefix("SCRAM-SHA-256$")?;
    let (iter_salt, keys) = rest.split_once('$')?;
    let (iter, salt) = iter_salt.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    Some(ScramSecret {
        salt: B64.decode(salt).ok()?,
        iterations: iter.parse().ok()?,
        stored_key: B64.decode(stored).ok()?,
        server_key: B64.decode(server).ok()?,
    })
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(16) {
        let u = uuid::Uuid::new_v4();
        chunk.copy_from_slice(&u.as_bytes()[..chunk.len()]);
    }
    out
}

/// Read one password-class message ('p') from the client during authentication.
async fn read_auth(client: &mut ClientStream, buf: &mut BytesMut) -> Result<BytesMut, Error> {
    loop {
        if let Some(h) = frame::header(buf, Side::ClientAuth)? {
            if h.tag == crate::protocol::tag::client::TERMINATE {
                return Err(Error::AuthFailed("(client gave up)".into()));
            }
            if buf.len() >= 5 + h.len {
                buf.advance(5);
                return Ok(buf.split_to(h.len));
            }
        }
        if client.read_buf(buf).await? == 0 {
            return Err(crate::protocol::Error::Truncated.into());
        }
    }
}

/// How long the server's answer to a user's login is taken as its answer (`--client-auth
/// server`): a burst of logins costs the server one probe, and a pg_hba.conf change is followed
/// within this long.
pub const SERVER_ANSWER_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers kept at most; past it they are all dropped (a client cycling through user names must
/// not grow the proxy without bound).
const ANSWERS_KEPT: usize = 4096;

/// The authentication requests servers answered logins with, by server, user and database, each
/// for [`SERVER_ANSWER_FOR`].
#[derive(Default)]
pub struct ServerAnswers {
    answers: std::sync::Mutex<HashMap<(String, String, String), (i32, std::time::Instant)>>,
    /// One probe at a time per server, user and database: a burst of logins waits for the
    /// first one's answer instead of each opening a connection.
    probing: std::sync::Mutex<HashMap<(String, String, String), Arc<tokio::sync::Mutex<()>>>>,
}

impl ServerAnswers {
    pub fn get(&self, server: &str, user: &str, database: &str) -> Option<i32> {
        let answers = crate::lock(&self.answers);
        let key = (server.to_string(), user.to_string(), database.to_string());
        answers.get(&key).filter(|(_, at)| at.elapsed() < SERVER_ANSWER_FOR).map(|(code, _)| *code)
    }

    pub fn put(&self, server: &str, user: &str, database: &str, code: i32) {
        let mut answers = crate::lock(&self.answers);
        if answers.len() >= ANSWERS_KEPT {
            // expired answers go first; only a table full of fresh ones is emptied
            answers.retain(|_, (_, at)| at.elapsed() < SERVER_ANSWER_FOR);
            if answers.len() >= ANSWERS_KEPT {
                answers.clear();
            }
        }
        answers.insert((server.to_string(), user.to_string(), database.to_string()), (code, std::time::Instant::now()));
    }

    /// The lock the probe of this server, user and database is made under (see `probing`).
    pub fn probe_lock(&self, server: &str, user: &str, database: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut probing = crate::lock(&self.probing);
        if probing.len() >= ANSWERS_KEPT {
            // locks no probe holds are dropped (a held one has another reference)
            probing.retain(|_, l| Arc::strong_count(l) > 1);
        }
        probing.entry((server.to_string(), user.to_string(), database.to_string())).or_default().clone()
    }
}

/// What a client proved at login, and so how the proxy logs it in to servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proof {
    /// Its password, or trust under `--client-auth trust` (the proxy holds its clients'
    /// passwords): the users file's password logs it in.
    Password,
    /// Nothing, because the server trusts its user: its first login, to that server, is made
    /// without a password, so a server that stopped trusting the user (a pg_hba.conf change the
    /// proxy's kept answer has not seen) refuses it. A move to another server (a flip, the read
    /// endpoint) logs it in with the users file's password: the database moves under the
    /// application without an error, as dmf promises, to a target that may ask one.
    ServerTrust,
}

/// Who is asking: the client's address and the roles trust never admits.
pub struct Asking<'a> {
    pub user: &'a str,
    pub loopback: bool,
    /// The client's connection is encrypted: a clear-text password may be asked over it.
    pub encrypted: bool,
    /// dmf's own roles (the route's users): a client must prove it is one with a password.
    pub dmf_roles: &'a [&'a str],
    /// Under `--client-auth server`: the authentication request the server answered this user's
    /// startup packet with (0 trust, 3 clear text, 5 MD5, 10 SASL).
    pub server_asks: Option<i32>,
}

/// What a client is asked to prove at login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    Nothing,
    Cleartext,
    Md5,
    Scram,
}

/// What `mode` asks of this client, or why it is refused before it is asked anything.
fn ask(mode: ClientAuth, asking: &Asking<'_>) -> Result<Ask, Error> {
    let user = asking.user;
    let dmf_role = is_dmf_role(user, asking.dmf_roles);
    let refuse = |why| Error::TrustRefused { user: user.to_string(), why };
    match mode {
        ClientAuth::Trust if !asking.loopback => Err(refuse("trust is for loopback clients only; run the proxy with --client-auth scram and a --users-file")),
        ClientAuth::Trust if dmf_role => Err(refuse(
            "it is dmf's own role; applications log in as their own roles (run the proxy with --client-auth scram to require passwords)",
        )),
        ClientAuth::Trust => Ok(Ask::Nothing),
        ClientAuth::Md5 => Ok(Ask::Md5),
        ClientAuth::Scram => Ok(Ask::Scram),
        ClientAuth::Server => match asking.server_asks {
            // the server trusts the proxy's address, which is the client's only on loopback
            Some(0) if asking.loopback && !dmf_role => Ok(Ask::Nothing),
            Some(0) => Ok(Ask::Scram),
            // a clear-text password crosses no network unencrypted that the server's would not
            Some(3) if asking.loopback || asking.encrypted => Ok(Ask::Cleartext),
            Some(3) => Ok(Ask::Scram),
            Some(5) => Ok(Ask::Md5),
            Some(10) => Ok(Ask::Scram),
            other => Err(Error::AuthNotMirrored { user: user.to_string(), code: other.unwrap_or(-1) }),
        },
    }
}

/// Whether `user` is one of dmf's own roles, as PostgreSQL compares role names (cut to 63 bytes).
pub fn is_dmf_role(user: &str, dmf_roles: &[&str]) -> bool {
    dmf_roles.iter().any(|r| crate::frontend::identifier(r) == crate::frontend::identifier(user))
}

/// Authenticate a client; on success AuthenticationOk has been sent, and what it proved is
/// returned.
pub async fn authenticate(client: &mut ClientStream, buf: &mut BytesMut, mode: ClientAuth, users: &Users, asking: Asking<'_>) -> Result<Proof, Error> {
    let user = asking.user;
    let mut proof = Proof::Password;
    match ask(mode, &asking)? {
        Ask::Nothing if mode == ClientAuth::Server => proof = Proof::ServerTrust,
        Ask::Nothing => {}
        Ask::Cleartext => {
            send_all(client, &build::auth(3, &[])).await?;
            let msg = read_auth(client, buf).await?;
            let given = cstr(&msg).map(|(s, _)| s).unwrap_or("");
            // compared as keyed hashes: the time taken says nothing of the password's length
            let ok = users.password(user).is_some_and(|pw| same(&hmac(&users.mock_key, pw.as_bytes()), &hmac(&users.mock_key, given.as_bytes())));
            if !ok {
                return Err(Error::AuthFailed(user.to_string()));
            }
        }
        Ask::Md5 => {
            let salt = random_bytes::<4>();
            send_all(client, &build::auth(5, &salt)).await?;
            let msg = read_auth(client, buf).await?;
            let given = cstr(&msg).map(|(s, _)| s).unwrap_or("");
            let ok = users.password(user).is_some_and(|pw| same(postgres_protocol::authentication::md5_hash(user.as_bytes(), pw.as_bytes(), salt).as_bytes(), given.as_bytes()));
            if !ok {
                return Err(Error::AuthFailed(user.to_string()));
            }
        }
        Ask::Scram => scram(client, buf, users, user).await?,
    }
    send_all(client, &build::auth(0, &[])).await?;
    Ok(proof)
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn scram(client: &mut ClientStream, buf: &mut BytesMut, users: &Users, user: &str) -> Result<(), Error> {
    let fail = || Error::AuthFailed(user.to_string());
    send_all(client, &build::auth(10, b"SCRAM-SHA-256\0\0")).await?;
    let first = read_auth(client, buf).await?;
    let (mech, rest) = cstr(&first).ok_or_else(fail)?;
    if mech != "SCRAM-SHA-256" {
        return Err(fail());
    }
    let (len, data) = crate::protocol::be_i32(rest).ok_or_else(fail)?;
    if len < 0 || data.len() != len as usize {
        return Err(fail());
    }
    let client_first = std::str::from_utf8(data).map_err(|_| fail())?;
    // gs2 header: "n,," (no channel binding) or "y,," (client could, server did not offer)
    let (gs2, bare) = match client_first.get(..3) {
        Some(h @ ("n,," | "y,,")) => (h, &client_first[3..]),
        _ => return Err(fail()),
    };
    let client_nonce = bare.split(',').find_map(|a| a.strip_prefix("r=")).ok_or_else(fail)?;
    // A user without a password still goes through the exchange, with a salt that is the same
    // at every attempt (derived from the process's mock key and the name) and throwaway keys, so
    // a client cannot tell unknown users from wrong passwords.
    let secret = users.scram.get(user).cloned().unwrap_or_else(|| ScramSecret {
        salt: hmac(&users.mock_key, user.as_bytes())[..16].to_vec(),
        iterations: 4096,
        stored_key: random_bytes::<32>().to_vec(),
        server_key: random_bytes::<32>().to_vec(),
    });
    let nonce = format!("{client_nonce}{}", B64.encode(random_bytes::<18>()));
    let server_first = format!("r={nonce},s={},i={}", B64.encode(&secret.salt), secret.iterations);
    send_all(client, &build::auth(11, server_first.as_bytes())).await?;
    let fin = read_auth(client, buf).await?;
    let client_final = std::str::from_utf8(&fin).map_err(|_| fail())?;
    let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or_else(fail)?;
    let mut binding = None;
    let mut final_nonce = None;
    for a in without_proof.split(',') {
        if let Some(c) = a.strip_prefix("c=") {
            binding = Some(c);
        } else if let Some(r) = a.strip_prefix("r=") {
            final_nonce = Some(r);
        }
    }
    if binding != Some(B64.encode(gs2).as_str()) || final_nonce != Some(nonce.as_str()) {
        return Err(fail());
    }
    let proof = B64.decode(proof).map_err(|_| fail())?;
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac(&secret.stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() || !users.scram.contains_key(user) {
        return Err(fail());
    }
    let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
    if !same(Sha256::digest(&client_key).as_slice(), &secret.stored_key) {
        return Err(fail());
    }
    let server_sig = hmac(&secret.server_key, auth_message.as_bytes());
    send_all(client, &build::auth(12, format!("v={}", B64.encode(server_sig)).as_bytes())).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_lines_parse_and_bad_lines_are_named() {
        assert_eq!(quoted_fields(r#""app" "pa""ss""#), Some(vec!["app".into(), "pa\"ss".into()]));
        assert_eq!(quoted_fields("app pass"), None);
        let dir = std::env::temp_dir().join(format!("dmf-users-{}", uuid::Uuid::new_v4()));
        std::fs::write(&dir, "# users\n\"app\" \"secret\"\n\n\"bob\" \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n").expect("write");
        let err = Users::load(&dir).expect_err("hashed password refused").to_string();
        assert!(err.contains("line 4"), "{err}");
        std::fs::write(&dir, "\"app\" \"secret\"\n").expect("write");
        let users = Users::load(&dir).expect("load");
        assert_eq!(users.password("app"), Some("secret"));
        assert!(users.scram.contains_key("app"));
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn under_server_auth_a_client_is_asked_what_the_server_asks_unless_the_servers_trust_is_not_the_clients() {
        let asking = |user, loopback, server_asks| Asking { user, loopback, encrypted: false, dmf_roles: &["dmf_admin"], server_asks };
        let server = |a: &Asking<'_>| ask(ClientAuth::Server, a).ok();
        assert_eq!(server(&asking("app", true, Some(0))), Some(Ask::Nothing));
        assert_eq!(server(&asking("app", true, Some(3))), Some(Ask::Cleartext));
        // no clear-text password from another host over an unencrypted connection
        assert_eq!(server(&asking("app", false, Some(3))), Some(Ask::Scram));
        assert_eq!(server(&Asking { encrypted: true, ..asking("app", false, Some(3)) }), Some(Ask::Cleartext));
        assert_eq!(server(&asking("app", true, Some(5))), Some(Ask::Md5));
        assert_eq!(server(&asking("app", false, Some(10))), Some(Ask::Scram));
        // the server trusts the proxy's address, not a client on another host, nor dmf's role
        assert_eq!(server(&asking("app", false, Some(0))), Some(Ask::Scram));
        assert_eq!(server(&asking("dmf_admin", true, Some(0))), Some(Ask::Scram));
        let long = format!("{}{}", "r".repeat(63), "-and-more");
        assert!(is_dmf_role(&long, &[&"r".repeat(63)]), "role names compare cut to 63 bytes, as PostgreSQL's");
        // GSSAPI and the like cannot be asked in the server's place
        let err = ask(ClientAuth::Server, &asking("app", true, Some(7))).expect_err("GSSAPI");
        assert!(err.to_string().contains("app") && err.to_string().contains("--client-auth scram"), "{err}");
        assert!(ask(ClientAuth::Trust, &asking("app", false, None)).is_err());
        assert!(ask(ClientAuth::Trust, &asking("dmf_admin", true, None)).is_err());
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }

    #[test]
    fn the_servers_answers_are_kept_per_server_user_and_database_and_bounded() {
        let answers = ServerAnswers::default();
        answers.put("db1", "app", "shop", 10);
        assert_eq!(answers.get("db1", "app", "shop"), Some(10));
        assert_eq!(answers.get("db2", "app", "shop"), None, "another server asks for itself");
        assert_eq!(answers.get("db1", "app", "other"), None, "pg_hba.conf lines name databases too");
        for i in 0..ANSWERS_KEPT + 1 {
            answers.put("db1", &format!("user{i}"), "shop", 0);
        }
        assert!(crate::lock(&answers.answers).len() <= ANSWERS_KEPT, "bounded");
        // an answer older than SERVER_ANSWER_FOR is asked again
        let old = std::time::Instant::now().checked_sub(SERVER_ANSWER_FOR + std::time::Duration::from_secs(1));
        if let Some(old) = old {
            crate::lock(&answers.answers).insert(("db1".into(), "stale".into(), "shop".into()), (0, old));
            assert_eq!(answers.get("db1", "stale", "shop"), None);
        }
    }
}
