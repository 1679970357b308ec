//! One raw-protocol PostgreSQL client connection: the startup packet, authentication (trust,
//! cleartext password, MD5, SCRAM-SHA-256), whole frames, simple queries. The proxy's backends
//! and the engine's COPY relay and replication connections are all a [`Conn`]; the bytes on the
//! wire come from `dmf-proxy-protocol`, which does no I/O. A TLS stream is a stream like any
//! other here: it is opened (and negotiated) before [`Conn::start`].

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub mod tls;

use dmf_proxy_protocol::startup::Params;
use dmf_proxy_protocol::tag::{auth, server};
use dmf_proxy_protocol::{be_i32, build, cstr, frame, Frame, Side};

/// Why a connection or one of its requests failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server's bytes are not the protocol (a frame header out of bounds).
    #[error("malformed message from the server: {0}")]
    Protocol(#[from] dmf_proxy_protocol::Error),
    /// A whole message from the server whose body is too short or malformed.
    #[error("malformed {0} from the server")]
    Malformed(&'static str),
    /// The server answered with an ErrorResponse.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The server asks for a password and none was given.
    #[error("the server asks a password for user \"{0}\" and none is held")]
    NoPassword(String),
    /// Authentication the client does not speak, or a SCRAM exchange that does not verify.
    #[error("authentication: {0}")]
    Auth(String),
    #[error("the server closed the connection")]
    Closed,
    #[error("connect to {0}: timed out")]
    Timeout(String),
    /// TLS could not be set up as the connection string asks (see `tls`).
    #[error("tls: {0}")]
    Tls(String),
    /// The server asks for the password in clear text over a connection that is not encrypted.
    #[error("the server asks for a clear-text password over an unencrypted connection; dmf sends it only over TLS or with sslmode=disable")]
    CleartextRefused,
    /// A message the request did not expect at this point.
    #[error("unexpected message {0:?} from the server")]
    Unexpected(char),
}

/// An ErrorResponse, with the fields dmf reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{severity}: {message} ({code})")]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ServerError {
    /// Read an ErrorResponse body. Texts in another encoding than UTF-8 (a server whose
    /// client_encoding was not set) are read lossily rather than dropped.
    pub fn of(body: &[u8]) -> ServerError {
        let (mut severity, mut code, mut message) = (None, None, None);
        let mut rest = body;
        while let Some((&kind, r)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = r.iter().position(|&b| b == 0).unwrap_or(r.len());
            let value = String::from_utf8_lossy(&r[..end]).into_owned();
            match kind {
                b'S' => severity = Some(value),
                b'C' => code = Some(value),
                b'M' => message = Some(value),
                _ => {}
            }
            rest = r.get(end + 1..).unwrap_or_default();
        }
        ServerError {
            severity: severity.unwrap_or_else(|| "ERROR".into()),
            code: code.unwrap_or_else(|| "XX000".into()),
            message: message.unwrap_or_else(|| "(no message)".into()),
        }
    }
}

/// A message read whole: its type byte and its body.
#[derive(Debug)]
pub struct Message {
    pub tag: u8,
    pub body: Bytes,
}

impl Message {
    pub fn frame(&self) -> Frame<'_> {
        Frame { tag: self.tag, body: &self.body }
    }
}

/// A logged-in connection over any byte stream.
pub struct Conn<S> {
    stream: S,
    /// Bytes read and not yet handled, at its front.
    buf: BytesMut,
    pid: i32,
    secret: i32,
    /// ParameterStatus values as the server last reported them.
    params: Vec<(String, String)>,
    /// NoticeResponse bodies the server sent while logging in (a proxy passes them on to its
    /// client, who would have had them directly).
    startup_notices: Vec<Bytes>,
}

/// A TCP connection to `host:port` with Nagle off, within `timeout`.
pub async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<tokio::net::TcpStream, Error> {
    let s = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| Error::Timeout(format!("{host}:{port}")))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Room made for each read.
const READ_CHUNK: usize = 16 * 1024;
/// The most a message's length word makes room for at once; a longer message grows the buffer
/// as it arrives.
const MAX_RESERVE: usize = 1 << 20;

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Log in over `stream`: the startup packet with `params` (`user` and `database` among them),
    /// authentication with `password` if the server asks, up to the first ReadyForQuery.
    pub async fn start(stream: S, params: &Params, password: Option<&[u8]>) -> Result<Conn<S>, Error> {
        Self::start_checked(stream, params, password, true).await
    }

    /// The authentication method the server asks of `params`' user (AuthenticationOk is 0,
    /// clear text 3): the startup packet, the first answer, and the connection dropped.
    pub async fn auth_request(stream: S, params: &Params) -> Result<i32, Error> {
        let mut conn = Conn { stream, buf: BytesMut::with_capacity(READ_CHUNK), pid: 0, secret: 0, params: Vec::new(), startup_notices: Vec::new() };
        conn.send(&build::startup(params)).await?;
        loop {
            let m = conn.read().await?;
            match m.tag {
                server::AUTHENTICATION => return be_i32(&m.body).map(|(code, _)| code).ok_or(Error::Malformed("authentication request")),
                server::ERROR_RESPONSE => return Err(ServerError::of(&m.body).into()),
                server::NOTICE_RESPONSE => continue,
                other => return Err(Error::Unexpected(other as char)),
            }
        }
    }

    /// `start`, answering a clear-text password request only when `cleartext_ok` (the stream is
    /// encrypted, or the connection string said `sslmode=disable`: `tls::TlsPolicy::cleartext_ok`).
    pub async fn start_checked(stream: S, params: &Params, password: Option<&[u8]>, cleartext_ok: bool) -> Result<Conn<S>, Error> {
        let mut conn = Conn { stream, buf: BytesMut::with_capacity(READ_CHUNK), pid: 0, secret: 0, params: Vec::new(), startup_notices: Vec::new() };
        conn.send(&build::startup(params)).await?;
        conn.authenticate(params.get("user").unwrap_or_default(), password, cleartext_ok).await?;
        loop {
            let m = conn.read().await?;
            match m.tag {
                server::PARAMETER_STATUS => conn.note_parameter(&m.body),
                server::BACKEND_KEY_DATA => {
                    let short = || Error::Malformed("BackendKeyData");
                    let (pid, rest) = be_i32(&m.body).ok_or_else(short)?;
                    let (secret, _) = be_i32(rest).ok_or_else(short)?;
                    (conn.pid, conn.secret) = (pid, secret);
                }
                server::NOTICE_RESPONSE => conn.startup_notices.push(m.body),
                server::READY_FOR_QUERY => return Ok(conn),
                server::ERROR_RESPONSE => return Err(ServerError::of(&m.body).into()),
                _ => {}
            }
        }
    }

    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>, cleartext_ok: bool) -> Result<(), Error> {
        let password = || password.ok_or_else(|| Error::NoPassword(user.to_string()));
        let mut scram: Option<ScramSha256> = None;
        loop {
            let m = self.read().await?;
            match m.tag {
                server::AUTHENTICATION => {}
                server::ERROR_RESPONSE => return Err(ServerError::of(&m.body).into()),
                server::NOTICE_RESPONSE => {
                    self.startup_notices.push(m.body);
                    continue;
                }
                other => return Err(Error::Unexpected(other as char)),
            }
            let malformed = || Error::Malformed("authentication request");
            let (code, data) = be_i32(&m.body).ok_or_else(malformed)?;
            match code {
                // a SCRAM exchange ends with the server's proof that it knows the password
                auth::OK if scram.is_some() => return Err(Error::Auth("the server ended SCRAM without its final message".into())),
                auth::OK => return Ok(()),
                auth::CLEARTEXT_PASSWORD => {
                    if !cleartext_ok {
                        return Err(Error::CleartextRefused);
                    }
                    let given = password()?;
                    if given.contains(&0) {
                        return Err(Error::Auth("the password contains a NUL byte, which a password message cannot carry".into()));
                    }
                    let mut pw = given.to_vec();
                    pw.push(0);
                    self.send(&build::password(&pw)).await?;
                }
                auth::MD5_PASSWORD => {
                    let salt: [u8; 4] = data.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(malformed)?;
                    let mut pw = md5_hash(user.as_bytes(), password()?, salt).into_bytes();
                    pw.push(0);
                    self.send(&build::password(&pw)).await?;
                }
                auth::SASL => {
                    if !data.split(|&b| b == 0).any(|m| m == SCRAM_SHA_256.as_bytes()) {
                        return Err(Error::Auth("the server offers no SASL mechanism dmf speaks (SCRAM-SHA-256)".into()));
                    }
                    let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                    self.send(&build::sasl_initial(SCRAM_SHA_256, s.message())).await?;
                    scram = Some(s);
                }
                auth::SASL_CONTINUE => {
                    let s = scram.as_mut().ok_or_else(|| Error::Auth("SASL continue before SASL start".into()))?;
                    s.update(data).map_err(|e| Error::Auth(format!("SCRAM: {e}")))?;
                    let reply = build::password(s.message());
                    self.send(&reply).await?;
                }
                auth::SASL_FINAL => {
                    let mut s = scram.take().ok_or_else(|| Error::Auth("SASL final before SASL start".into()))?;
                    s.finish(data).map_err(|e| Error::Auth(format!("SCRAM server signature: {e}")))?;
                }
                other => return Err(Error::Auth(format!("the server asks for authentication method {other}, which dmf does not speak"))),
            }
        }
    }

    /// Write `bytes` whole and flush them.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Read more from the server into the buffer; the connection's end is [`Error::Closed`].
    pub async fn fill(&mut self) -> Result<usize, Error> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(Error::Closed),
            n => Ok(n),
        }
    }

    /// The whole message at the front of the buffer, if it is all there.
    pub fn take(&mut self) -> Result<Option<Message>, Error> {
        let Some(h) = frame::header(&self.buf, Side::Server)? else { return Ok(None) };
        if self.buf.len() < 5 + h.len {
            // room for the rest, up to a bound: a length word alone reserves no gigabyte
            self.buf.reserve((5 + h.len - self.buf.len()).min(MAX_RESERVE));
            return Ok(None);
        }
        let mut m = self.buf.split_to(5 + h.len);
        m.advance(5);
        Ok(Some(Message { tag: h.tag, body: m.freeze() }))
    }

    /// The next whole message.
    pub async fn read(&mut self) -> Result<Message, Error> {
        loop {
            if let Some(m) = self.take()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Run statements with the simple protocol: the rows of every result, in text. An
    /// ErrorResponse is returned once the server is ready again.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        self.send(&build::query(sql)).await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let m = self.read().await?;
            match m.tag {
                server::DATA_ROW => rows.push(m.frame().data_row().ok_or(Error::Malformed("DataRow"))?),
                server::PARAMETER_STATUS => self.note_parameter(&m.body),
                server::ERROR_RESPONSE => failed = Some(ServerError::of(&m.body)),
                server::READY_FOR_QUERY => return failed.map_or(Ok(rows), |e| Err(e.into())),
                _ => {}
            }
        }
    }

    /// Send messages and read their answers up to ReadyForQuery, keeping only an error.
    pub async fn exchange(&mut self, messages: &[u8]) -> Result<(), Error> {
        self.send(messages).await?;
        self.finish_request().await
    }

    /// Read up to ReadyForQuery: the server's error on the way, if any.
    pub async fn finish_request(&mut self) -> Result<(), Error> {
        let mut failed = None;
        loop {
            let m = self.read().await?;
            match m.tag {
                server::PARAMETER_STATUS => self.note_parameter(&m.body),
                server::ERROR_RESPONSE => failed = Some(ServerError::of(&m.body)),
                server::READY_FOR_QUERY => return failed.map_or(Ok(()), |e| Err(e.into())),
                _ => {}
            }
        }
    }

    /// A ParameterStatus from the server.
    pub fn note_parameter(&mut self, body: &[u8]) {
        let Some((k, rest)) = cstr(body) else { return };
        let Some((v, _)) = cstr(rest) else { return };
        match self.params.iter_mut().find(|(name, _)| name == k) {
            Some((_, value)) => *value = v.to_string(),
            None => self.params.push((k.to_string(), v.to_string())),
        }
    }

    /// Send Terminate and let the connection go.
    pub async fn terminate(mut self) {
        let _ = self.send(&build::terminate()).await;
    }
}

impl<S> Conn<S> {
    /// A connection over a stream that is already past startup, with nothing read from it yet
    /// and no key or parameters known (tests drive a scripted server with it).
    pub fn over(stream: S) -> Conn<S> {
        Conn { stream, buf: BytesMut::with_capacity(READ_CHUNK), pid: 0, secret: 0, params: Vec::new(), startup_notices: Vec::new() }
    }

    /// The server process and the key that cancels its queries (BackendKeyData).
    pub fn key(&self) -> (i32, i32) {
        (self.pid, self.secret)
    }

    /// The ParameterStatus values the server reported, latest first-seen order.
    /// The NoticeResponse bodies the server sent while logging in.
    pub fn startup_notices(&self) -> &[Bytes] {
        &self.startup_notices
    }

    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Bytes read and not yet handled.
    pub fn buffered(&self) -> &BytesMut {
        &self.buf
    }

    /// The stream and the read buffer together, for a relay that reads into one while it writes
    /// the other's contents elsewhere.
    pub fn parts_mut(&mut self) -> (&mut S, &mut BytesMut) {
        (&mut self.stream, &mut self.buf)
    }

    /// The same connection over another stream of the same bytes (a socket registered again on
    /// another runtime).
    pub fn map_stream<T, E>(self, f: impl FnOnce(S) -> Result<T, E>) -> Result<Conn<T>, E> {
        let Conn { stream, buf, pid, secret, params, startup_notices } = self;
        Ok(Conn { stream: f(stream)?, buf, pid, secret, params, startup_notices })
    }
}

/// Drop the first `n` bytes of a read buffer. An emptied buffer starts over at the front of its
/// allocation, so that a relay keeps reading into the same few cache lines instead of walking
/// through its buffer.
pub fn consume(buf: &mut BytesMut, n: usize) {
    if n >= buf.len() {
        buf.clear();
        // with nothing left to move, taking back the room before the front costs nothing
        let _ = buf.try_reclaim(buf.capacity() + 1);
    } else if n > 0 {
        buf.advance(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_buffer_starts_over_at_its_front() {
        let mut b = BytesMut::with_capacity(64);
        b.extend_from_slice(&[7u8; 40]);
        let front = b.as_ptr();
        consume(&mut b, 10);
        assert_eq!(b.len(), 30);
        consume(&mut b, 30);
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), front);
        assert!(b.capacity() >= 64);
    }

    /// A scripted server that answers SCRAM's first round and then says AuthenticationOk
    /// without the final message that proves it knows the password.
    #[tokio::test]
    async fn a_server_that_skips_scrams_final_message_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(8192);
        let impostor = tokio::spawn(async move {
            let mut len = [0u8; 4];
            server.read_exact(&mut len).await.expect("startup length");
            let mut startup = vec![0u8; i32::from_be_bytes(len) as usize - 4];
            server.read_exact(&mut startup).await.expect("startup");
            server.write_all(&build::auth(auth::SASL, b"SCRAM-SHA-256\0\0")).await.expect("write");
            let mut head = [0u8; 5];
            server.read_exact(&mut head).await.expect("client-first header");
            let mut body = vec![0u8; i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4];
            server.read_exact(&mut body).await.expect("client-first");
            let text = String::from_utf8_lossy(&body).into_owned();
            let nonce = text.split("r=").nth(1).expect("a client nonce").to_string();
            let first = format!("r={nonce}server,s=c2FsdHNhbHQ=,i=4096");
            server.write_all(&build::auth(auth::SASL_CONTINUE, first.as_bytes())).await.expect("write");
            server.read_exact(&mut head).await.expect("client-final header");
            let mut body = vec![0u8; i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4];
            server.read_exact(&mut body).await.expect("client-final");
            server.write_all(&build::auth(auth::OK, b"")).await.expect("write");
            server.write_all(&build::ready(b'I')).await.expect("write");
            server
        });
        let mut params = Params::default();
        params.set("user", "migrator");
        params.set("database", "shop");
        let result = Conn::start(client, &params, Some(b"secret".as_slice())).await;
        assert!(matches!(result, Err(Error::Auth(ref m)) if m.contains("without its final message")), "{:?}", result.err());
        drop(impostor.await);
    }

    #[test]
    fn a_shared_buffer_emptied_starts_over_at_its_front_once_its_pieces_are_gone() {
        let mut b = BytesMut::with_capacity(64);
        b.extend_from_slice(&[1u8; 40]);
        let front = b.as_ptr();
        let piece = b.split_to(10).freeze();
        consume(&mut b, 30);
        assert_ne!(b.as_ptr(), front, "a piece still in use keeps its bytes");
        drop(piece);
        b.extend_from_slice(&[2u8; 4]);
        consume(&mut b, 4);
        assert_eq!(b.as_ptr(), front);
    }

    #[test]
    fn server_errors_read_their_fields() {
        let e = ServerError::of(b"SFATAL\0C28000\0Mrole \"app\" does not exist\0\0");
        assert_eq!(e.to_string(), "FATAL: role \"app\" does not exist (28000)");
        assert_eq!(ServerError::of(b"\0").code, "XX000");
        let latin1 = ServerError::of(b"SERROR\0C42P01\0Mrelation \"caf\xe9\" does not exist\0\0");
        assert_eq!((latin1.code.as_str(), latin1.message.as_str()), ("42P01", "relation \"caf\u{fffd}\" does not exist"));
        assert_eq!(ServerError::of(b"Mcut").message, "cut");
    }
}
