//! Server side: endpoints, logging in to a PostgreSQL backend with the credentials the proxy
//! holds (through `dmf_pgconn`, dmf's one protocol client), and the proxy's own short queries on
//! an idle backend.

pub mod endpoint;
pub mod pool;
pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dmf_pgconn::Conn;
use tokio::net::TcpStream;

pub use endpoint::Endpoint;
pub use stream::BackendStream;

use crate::protocol::{build, startup::Params};
use crate::Error;

/// A connected, authenticated backend, idle (ReadyForQuery seen) when handed out.
pub struct Backend {
    conn: Conn<BackendStream>,
    endpoint: Arc<Endpoint>,
    /// Prepared statements this backend holds: name -> generation of the client's Parse.
    prepared: HashMap<String, u64>,
}

/// Who to log in as: the client's user and database, with the password the proxy holds.
#[derive(Clone, Debug)]
pub struct Login<'a> {
    pub user: &'a str,
    pub password: Option<&'a str>,
    /// Startup parameters to pass on (application_name, client_encoding, options, ...).
    pub params: &'a Params,
    /// Open the session read-only (`default_transaction_read_only`): for the read endpoint.
    pub read_only: bool,
}

/// The proxy's error for what the protocol client reports about `endpoint`.
fn conn_error(endpoint: &Endpoint, e: dmf_pgconn::Error) -> Error {
    let label = endpoint.label();
    match e {
        dmf_pgconn::Error::Server(s) => Error::BackendRefused { endpoint: label, code: s.code, message: s.message },
        dmf_pgconn::Error::Io(e) => Error::Io(e),
        // the server's bytes are not the protocol: the server's fault, not the client's
        dmf_pgconn::Error::Protocol(e) => Error::backend(&label, format!("malformed message: {e}")),
        dmf_pgconn::Error::NoPassword(user) => Error::backend(&label, format!("asks a password for user \"{user}\" and the proxy holds none (users file)")),
        dmf_pgconn::Error::Closed => Error::backend(&label, "closed the connection"),
        dmf_pgconn::Error::Malformed(what) => Error::backend(&label, format!("malformed {what}")),
        other => Error::backend(&label, other),
    }
}

/// A connection to `endpoint`, with TLS as its connection string says.
async fn open_stream(endpoint: &Endpoint) -> Result<BackendStream, Error> {
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| Error::backend(&endpoint.label(), format!("connect: {e}")))?;
    tcp.set_nodelay(true)?;
    match dmf_pgconn::tls::negotiate(stream::Sock(Some(tcp)), &endpoint.tls, &endpoint.host).await {
        Ok(dmf_pgconn::tls::MaybeTls::Plain(s)) => Ok(BackendStream::Tcp(s.0.ok_or_else(|| Error::backend(&endpoint.label(), "socket lost"))?)),
        Ok(dmf_pgconn::tls::MaybeTls::Tls(t)) => Ok(BackendStream::Tls(t)),
        Err(e) => Err(Error::backend(&endpoint.label(), e)),
    }
}

/// The startup packet's parameters for `login` at `endpoint`: its user, the endpoint's database,
/// and the client's own parameters (application_name, options, ...).
fn login_params(endpoint: &Endpoint, login: &Login<'_>) -> Params {
    let mut params = Params::default();
    params.set("user", login.user);
    params.set("database", endpoint.dbname.as_deref().unwrap_or(login.user));
    for (k, v) in &login.params.0 {
        if !matches!(k.as_str(), "user" | "database" | "replication") {
            params.set(k, v);
        }
    }
    if login.read_only {
        let opts = params.get("options").map(|o| format!("{o} -c default_transaction_read_only=on"));
        params.set("options", opts.as_deref().unwrap_or("-c default_transaction_read_only=on"));
    }
    params
}

impl Backend {
    pub async fn connect(endpoint: Arc<Endpoint>, login: &Login<'_>) -> Result<Backend, Error> {
        let stream = open_stream(&endpoint).await?;
        let cleartext_ok = endpoint.tls.cleartext_ok(matches!(stream, BackendStream::Tls(_)));
        let params = login_params(&endpoint, login);
        let conn = Conn::start_checked(stream, &params, login.password.map(str::as_bytes), cleartext_ok).await.map_err(|e| conn_error(&endpoint, e))?;
        Ok(Backend { conn, endpoint, prepared: HashMap::new() })
    }

    /// The authentication request `endpoint` answers `login`'s startup packet with (0 trust,
    /// 3 clear text, 5 MD5, 10 SASL): the connection is then dropped without a word, as libpq
    /// drops one to ask its user for a password (the server logs no failed login; where it
    /// trusts the user, the login is whole and `log_connections` shows it).
    pub async fn auth_request(endpoint: &Endpoint, login: &Login<'_>) -> Result<i32, Error> {
        let stream = open_stream(endpoint).await?;
        Conn::auth_request(stream, &login_params(endpoint, login)).await.map_err(|e| conn_error(endpoint, e))
    }

    /// A backend over a stream a test's scripted server holds, already logged in.
    #[cfg(test)]
    pub fn over(stream: BackendStream, endpoint: Arc<Endpoint>) -> Backend {
        Backend { conn: Conn::over(stream), endpoint, prepared: HashMap::new() }
    }

    /// Where this backend is.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The server process and its cancel key.
    pub fn key(&self) -> (i32, i32) {
        self.conn.key()
    }

    /// ParameterStatus values the server reported: what the next client of this backend is told.
    pub fn params(&self) -> &[(String, String)] {
        self.conn.params()
    }

    /// The NoticeResponse bodies the server sent when this backend logged in: its clients are
    /// told them as they would have been logging in directly (the key it is reused under holds
    /// every startup parameter, so a reusing client would have had the same).
    pub fn startup_notices(&self) -> &[bytes::Bytes] {
        self.conn.startup_notices()
    }

    /// The generation of the client's statement `name` this backend holds, if any.
    pub fn prepared(&self, name: &str) -> Option<u64> {
        self.prepared.get(name).copied()
    }

    pub fn set_prepared(&mut self, name: &str, generation: u64) {
        self.prepared.insert(name.to_string(), generation);
    }

    pub fn forget_prepared(&mut self, name: &str) {
        self.prepared.remove(name);
    }

    /// The socket and the bytes read from it and not yet relayed, for the session's relay.
    pub fn parts_mut(&mut self) -> (&mut BackendStream, &mut BytesMut) {
        self.conn.parts_mut()
    }

    /// Where it is, its socket and its read buffer at once: the relay loop reads into the buffer
    /// and names the endpoint only if the server hangs up.
    pub fn relay_parts(&mut self) -> (&Endpoint, &mut BackendStream, &mut BytesMut) {
        let (stream, buf) = self.conn.parts_mut();
        (&self.endpoint, stream, buf)
    }

    /// Nothing read from the server is waiting to be relayed.
    pub fn drained(&self) -> bool {
        self.conn.buffered().is_empty()
    }

    /// Run the proxy's own statements on an idle backend: the rows of every result, in text.
    /// An ErrorResponse is returned as `BackendRefused` once the backend is idle again.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        self.conn.simple_query(sql).await.map_err(|e| conn_error(&self.endpoint, e))
    }

    /// Send messages built by the proxy and swallow their answers up to ReadyForQuery.
    pub async fn exchange(&mut self, messages: &[u8]) -> Result<(), Error> {
        self.conn.exchange(messages).await.map_err(|e| conn_error(&self.endpoint, e))
    }

    /// Send messages the proxy built.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.conn.send(bytes).await.map_err(|e| conn_error(&self.endpoint, e))
    }

    /// Read one whole message (setup and the proxy's own queries; the relay never calls this).
    pub async fn read_message(&mut self) -> Result<dmf_pgconn::Message, Error> {
        self.conn.read().await.map_err(|e| conn_error(&self.endpoint, e))
    }

    /// Return an idle session to its state at login for another client: `DISCARD ALL` drops
    /// settings, prepared statements, cursors, temporary tables, advisory locks and LISTENs. The
    /// parameters the server reports on the way back to their defaults are recorded.
    pub async fn reset(&mut self) -> Result<(), Error> {
        self.simple_query("DISCARD ALL").await?;
        self.prepared.clear();
        Ok(())
    }

    /// The same backend, moved from relay thread `from` to `to`, the one this runs on: its socket
    /// is registered again on this runtime (nothing to do when the threads are the same). A
    /// backend parked or opened by another relay thread would otherwise have its wake-ups go
    /// through that thread's event loop, and stop working with it.
    pub fn rehome(self, from: usize, to: usize) -> Result<Backend, Error> {
        if from == to {
            return Ok(self);
        }
        let Backend { conn, endpoint, prepared } = self;
        let conn = conn
            .map_stream(BackendStream::rehome)
            .map_err(|e| Error::backend(&endpoint.label(), format!("cannot move the connection from relay thread {from} to {to}: {e}")))?;
        Ok(Backend { conn, endpoint, prepared })
    }

    /// Whether the server still holds this idle connection: it sends nothing to an idle session
    /// unless it is ending it (a FATAL, then the close), so anything readable means gone.
    pub fn alive(&self) -> bool {
        self.drained() && !self.conn.stream().readable_now()
    }

    /// Close without waiting: a Terminate if the socket takes it now (an idle socket does), then
    /// the connection.
    pub fn close(self) {
        let _ = crate::frontend::stream::TryWrite::try_write(self.conn.stream(), &build::terminate());
    }

    /// Send Terminate, waiting at most `within` for the socket to take it, then close.
    pub async fn terminate(mut self, within: Duration) {
        let _ = tokio::time::timeout(within, self.conn.send(&build::terminate())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend whose socket was registered on a runtime that has since stopped works again
    /// once rehomed on another: what a session on one relay thread does with a backend another
    /// thread opened or parked.
    #[test]
    fn a_rehomed_backend_works_after_the_runtime_that_opened_it_stopped() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4];
            for _ in 0..2 {
                s.read_exact(&mut buf).expect("read");
                s.write_all(&buf).expect("echo");
            }
        });
        let rt = |name| tokio::runtime::Builder::new_current_thread().enable_all().thread_name(name).build().expect("runtime");
        let opener = rt("opener");
        let backend = opener.block_on(async {
            let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            let endpoint = Arc::new(Endpoint::parse(&format!("postgres://u@127.0.0.1:{port}/db")).expect("endpoint"));
            let mut b = Backend { conn: Conn::over(BackendStream::Tcp(stream)), endpoint, prepared: HashMap::new() };
            b.parts_mut().0.write_all(b"ping").await.expect("write on the opening runtime");
            let mut buf = [0u8; 4];
            b.parts_mut().0.read_exact(&mut buf).await.expect("read on the opening runtime");
            b
        });
        drop(opener);
        let other = rt("other");
        other.block_on(async {
            let mut b = backend.rehome(0, 1).expect("rehome");
            b.parts_mut().0.write_all(b"pong").await.expect("write after rehome");
            let mut buf = [0u8; 4];
            tokio::time::timeout(std::time::Duration::from_secs(5), b.parts_mut().0.read_exact(&mut buf)).await.expect("read in time").expect("read after rehome");
            assert_eq!(&buf, b"pong");
        });
        server.join().expect("echo server");
    }
}
