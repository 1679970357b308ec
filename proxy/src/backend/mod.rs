//! Server side: endpoints, connecting and authenticating to a PostgreSQL backend with the
//! credentials the proxy holds, and the proxy's own short queries on an idle backend.

pub mod endpoint;
pub mod pool;

use std::collections::HashMap;
use std::sync::Arc;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use endpoint::Endpoint;

use crate::protocol::{self, build, frame, startup::Params, Frame, Side};
use crate::Error;

/// A connected, authenticated backend, idle (ReadyForQuery seen) when handed out.
pub struct Backend {
    pub stream: TcpStream,
    pub endpoint: Arc<Endpoint>,
    /// The backend's real cancel key.
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus values reported at startup.
    pub params: Vec<(String, String)>,
    /// Prepared statements this backend holds: name -> generation of the client's Parse.
    pub prepared: HashMap<String, u64>,
    /// Bytes read from the backend that are not yet handled (kept at the front of the buffer:
    /// see `consume`).
    pub rbuf: Vec<u8>,
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

impl Backend {
    pub async fn connect(endpoint: Arc<Endpoint>, login: &Login<'_>) -> Result<Backend, Error> {
        let label = endpoint.label();
        let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| Error::backend(&label, format!("connect: {e}")))?;
        stream.set_nodelay(true)?;
        let mut be = Backend {
            stream,
            endpoint,
            pid: 0,
            secret: 0,
            params: Vec::new(),
            prepared: HashMap::new(),
            rbuf: Vec::with_capacity(16 * 1024),
        };
        let mut params = Params::default();
        params.set("user", login.user);
        params.set("database", be.endpoint.dbname.as_deref().unwrap_or(login.user));
        for (k, v) in &login.params.0 {
            if !matches!(k.as_str(), "user" | "database" | "replication") {
                params.set(k, v);
            }
        }
        if login.read_only {
            let opts = params.get("options").map(|o| format!("{o} -c default_transaction_read_only=on"));
            params.set("options", opts.as_deref().unwrap_or("-c default_transaction_read_only=on"));
        }
        be.stream.write_all(&build::startup(&params)).await?;
        be.authenticate(login).await?;
        loop {
            let (tag, body) = be.read_frame().await?;
            match tag {
                b'S' => be.note_parameter(&body),
                b'K' => {
                    let (pid, rest) = protocol::be_i32(&body).ok_or_else(|| be.err("short BackendKeyData"))?;
                    let (secret, _) = protocol::be_i32(rest).ok_or_else(|| be.err("short BackendKeyData"))?;
                    be.pid = pid;
                    be.secret = secret;
                }
                b'Z' => return Ok(be),
                b'E' => return Err(be.refused(&body)),
                _ => {}
            }
        }
    }

    async fn authenticate(&mut self, login: &Login<'_>) -> Result<(), Error> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            if tag == b'E' {
                return Err(self.refused(&body));
            }
            if tag != b'R' {
                return Err(self.err(format!("expected authentication, got {:?}", tag as char)));
            }
            let (code, data) = protocol::be_i32(&body).ok_or_else(|| self.err("short authentication message"))?;
            let password = || {
                login.password.ok_or_else(|| {
                    Error::backend(&self.endpoint.label(), format!("asks a password for user \"{}\" and the proxy holds none (users file)", login.user))
                })
            };
            match code {
                0 => return Ok(()),
                3 => {
                    let mut pw = password()?.as_bytes().to_vec();
                    pw.push(0);
                    self.stream.write_all(&build::password(&pw)).await?;
                }
                5 => {
                    let salt: [u8; 4] = data.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(|| self.err("short MD5 salt"))?;
                    let hash = postgres_protocol::authentication::md5_hash(login.user.as_bytes(), password()?.as_bytes(), salt);
                    let mut pw = hash.into_bytes();
                    pw.push(0);
                    self.stream.write_all(&build::password(&pw)).await?;
                }
                10 => {
                    let mechs: Vec<&[u8]> = data.split(|&b| b == 0).collect();
                    if !mechs.contains(&&b"SCRAM-SHA-256"[..]) {
                        return Err(self.err("offers no SASL mechanism the proxy speaks (SCRAM-SHA-256)"));
                    }
                    let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    self.stream.write_all(&build::sasl_initial("SCRAM-SHA-256", s.message())).await?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| self.err("SASL continue before SASL start"))?;
                    s.update(data).map_err(|e| self.err(format!("SCRAM: {e}")))?;
                    let msg = build::password(s.message());
                    self.stream.write_all(&msg).await?;
                }
                12 => {
                    let mut s = scram.take().ok_or_else(|| self.err("SASL final before SASL start"))?;
                    s.finish(data).map_err(|e| self.err(format!("SCRAM server signature: {e}")))?;
                }
                other => return Err(self.err(format!("asks for authentication method {other}, which the proxy does not speak"))),
            }
        }
    }

    fn err(&self, message: impl std::fmt::Display) -> Error {
        Error::backend(&self.endpoint.label(), message)
    }

    fn refused(&self, body: &[u8]) -> Error {
        let f = Frame { tag: b'E', body };
        Error::BackendRefused {
            endpoint: self.endpoint.label(),
            code: f.field(b'C').unwrap_or("XX000").to_string(),
            message: f.field(b'M').unwrap_or("(no message)").to_string(),
        }
    }

    /// Read one whole frame (setup and the proxy's own queries; the relay never calls this).
    pub async fn read_frame(&mut self) -> Result<(u8, Vec<u8>), Error> {
        loop {
            if let Some(h) = frame::header(&self.rbuf, Side::Server)? {
                if self.rbuf.len() >= 5 + h.len {
                    let body = self.rbuf[5..5 + h.len].to_vec();
                    consume(&mut self.rbuf, 5 + h.len);
                    return Ok((h.tag, body));
                }
                self.rbuf.reserve(5 + h.len - self.rbuf.len());
            }
            let n = self.stream.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return Err(self.err("closed the connection"));
            }
        }
    }

    /// Run the proxy's own statements on an idle backend: the rows of every result, in text.
    /// An ErrorResponse is returned as `BackendRefused` once the backend is idle again.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        self.stream.write_all(&build::query(sql)).await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'D' => rows.push(data_row(&body).ok_or_else(|| self.err("malformed DataRow"))?),
                b'S' => self.note_parameter(&body),
                b'E' => failed = Some(self.refused(&body)),
                b'Z' => return failed.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// A ParameterStatus from the server: what the next client of this backend is told.
    fn note_parameter(&mut self, body: &[u8]) {
        let Some((k, rest)) = protocol::cstr(body) else { return };
        let Some((v, _)) = protocol::cstr(rest) else { return };
        match self.params.iter_mut().find(|(name, _)| name == k) {
            Some((_, value)) => *value = v.to_string(),
            None => self.params.push((k.to_string(), v.to_string())),
        }
    }

    /// Return an idle session to its state at login for another client: `DISCARD ALL` drops
    /// settings, prepared statements, cursors, temporary tables, advisory locks and LISTENs. The
    /// parameters the server reports on the way back to their defaults are recorded (by the
    /// reading in `simple_query`).
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
        let Backend { stream, endpoint, pid, secret, params, prepared, rbuf } = self;
        let moved = stream.into_std().and_then(TcpStream::from_std);
        let stream = moved.map_err(|e| Error::backend(&endpoint.label(), format!("cannot move the connection from relay thread {from} to {to}: {e}")))?;
        Ok(Backend { stream, endpoint, pid, secret, params, prepared, rbuf })
    }

    /// Whether the server still holds this idle connection: it sends nothing to an idle session
    /// unless it is ending it (a FATAL, then the close), so anything readable means gone.
    pub fn alive(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Close without waiting: a Terminate if the socket takes it now (an idle socket does), then
    /// the connection.
    pub fn close(self) {
        let _ = self.stream.try_write(&build::terminate());
    }

    /// Send messages built by the proxy and swallow their answers up to ReadyForQuery.
    pub async fn exchange(&mut self, messages: &[u8]) -> Result<(), Error> {
        self.stream.write_all(messages).await?;
        let mut failed = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'E' => failed = Some(self.refused(&body)),
                b'Z' => return failed.map_or(Ok(()), Err),
                _ => {}
            }
        }
    }
}

/// Drop the first `n` bytes of a read buffer. An emptied buffer starts over at its front, so a
/// session keeps reading into the same few cache lines instead of walking through its buffer.
pub fn consume(buf: &mut Vec<u8>, n: usize) {
    if n >= buf.len() {
        buf.clear();
    } else if n > 0 {
        buf.drain(..n);
    }
}

/// Columns of a DataRow in text form (NULL as None).
pub fn data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let (n, mut rest) = protocol::be_i16(body)?;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let (len, r) = protocol::be_i32(rest)?;
        if len < 0 {
            out.push(None);
            rest = r;
        } else {
            let v = r.get(..len as usize)?;
            out.push(Some(String::from_utf8_lossy(v).into_owned()));
            rest = &r[len as usize..];
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

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
            let mut b = Backend { stream, endpoint, pid: 1, secret: 2, params: vec![], prepared: HashMap::new(), rbuf: vec![] };
            b.stream.write_all(b"ping").await.expect("write on the opening runtime");
            let mut buf = [0u8; 4];
            b.stream.read_exact(&mut buf).await.expect("read on the opening runtime");
            b
        });
        drop(opener);
        let other = rt("other");
        other.block_on(async {
            let mut b = backend.rehome(0, 1).expect("rehome");
            b.stream.write_all(b"pong").await.expect("write after rehome");
            let mut buf = [0u8; 4];
            tokio::time::timeout(std::time::Duration::from_secs(5), b.stream.read_exact(&mut buf)).await.expect("read in time").expect("read after rehome");
            assert_eq!(&buf, b"pong");
        });
        server.join().expect("echo server");
    }
}
