//! TLS to PostgreSQL servers (rustls, ring), with libpq's `sslmode` and `sslrootcert`:
//! `disable`; `prefer` (the default: TLS when the server offers it); `require` (TLS, the
//! certificate checked against `sslrootcert` when one is given, as libpq does); `verify-ca` (the
//! chain against `sslrootcert`); `verify-full` (the chain and the host name). [`TlsPolicy::split`]
//! takes these out of a connection string (tokio-postgres knows neither `verify-*` nor
//! `sslrootcert`), [`negotiate`] opens a raw connection's stream, [`connect`] opens tokio-postgres
//! over one. Whoever logs in over a stream asks [`TlsPolicy::cleartext_ok`] before
//! answering a clear-text password request: only over TLS, or where the string says `disable`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// libpq's `sslmode`, the ones dmf speaks (`allow` reads as `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(format!("sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full")),
        })
    }
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// What a connection string asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TlsPolicy {
    pub mode: SslMode,
    /// `sslrootcert`: the CA certificates (PEM) a server's chain must lead to.
    pub root_cert: Option<PathBuf>,
}

/// Why TLS could not be set up or was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sslmode={0}: the server does not accept TLS")]
    Refused(&'static str),
    #[error("sslrootcert {path}: {message}")]
    RootCert { path: String, message: String },
    #[error("{0}")]
    Config(String),
    #[error("TLS handshake with {host}: {message}")]
    Handshake { host: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl TlsPolicy {
    /// The TLS policy in `dsn` (a URL or key=value string) and `dsn` without `sslmode` and
    /// `sslrootcert`, for tokio-postgres (which then gets the mode it knows: [`Self::tokio_mode`]).
    pub fn split(dsn: &str) -> Result<(TlsPolicy, String), Error> {
        let mut policy = TlsPolicy::default();
        let mut take = |key: &str, value: &str| -> Result<bool, Error> {
            match key {
                "sslmode" => policy.mode = value.parse().map_err(Error::Config)?,
                "sslrootcert" => policy.root_cert = Some(PathBuf::from(value)),
                _ => return Ok(false),
            }
            Ok(true)
        };
        let rest = if let Some((base, query)) = dsn.split_once('?').filter(|_| dsn.contains("://")) {
            let mut kept = Vec::new();
            for pair in query.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let v = if matches!(k, "sslmode" | "sslrootcert") { percent_decode(v) } else { String::new() };
                if !take(k, &v)? {
                    kept.push(pair);
                }
            }
            if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        } else if dsn.contains("://") {
            dsn.to_string()
        } else {
            let mut kept = Vec::new();
            for (k, v, raw) in key_values(dsn) {
                if !take(&k, &v)? {
                    kept.push(raw);
                }
            }
            kept.join(" ")
        };
        Ok((policy, rest))
    }

    /// The mode tokio-postgres is told of (its own TLS is never used: [`connect`] sets TLS up
    /// over the raw stream, verifying what `verify-ca` and `verify-full` ask).
    pub fn tokio_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }

    /// Whether a clear-text password may be sent over a stream that is `encrypted` or not.
    pub fn cleartext_ok(&self, encrypted: bool) -> bool {
        encrypted || self.mode == SslMode::Disable
    }

    /// The rustls configuration for this policy, made once per policy and process.
    pub fn config(&self) -> Result<Arc<ClientConfig>, Error> {
        static MADE: OnceLock<Mutex<HashMap<TlsPolicy, Arc<ClientConfig>>>> = OnceLock::new();
        let made = MADE.get_or_init(Default::default);
        if let Some(c) = made.lock().unwrap_or_else(|p| p.into_inner()).get(self) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.build()?);
        made.lock().unwrap_or_else(|p| p.into_inner()).insert(self.clone(), c.clone());
        Ok(c)
    }

    fn build(&self) -> Result<ClientConfig, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| Error::Config(e.to_string()))?;
        // libpq reads ~/.postgresql/root.crt when no sslrootcert is given
        let root = self.root_cert.clone().or_else(|| {
            let default = std::env::var_os("HOME").map(|h| Path::new(&h).join(".postgresql/root.crt"))?;
            default.exists().then_some(default)
        });
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, root) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(Error::Config(format!("sslmode={} needs sslrootcert (the CA certificates the server's must lead to)", self.mode.as_str())))
            }
            (mode, Some(path)) => {
                let roots = roots(&path)?;
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().map_err(|e| Error::Config(e.to_string()))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
            (_, None) => Arc::new(Unverified(provider)),
        };
        Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
    }
}

fn roots(path: &Path) -> Result<RootCertStore, Error> {
    let bad = |message: String| Error::RootCert { path: path.display().to_string(), message };
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        store.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(store)
}

/// `verify-ca` (and `require` with a root certificate): the chain, not the name.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: encrypted, not authenticated (libpq's
/// meaning of these modes). The handshake's signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection to a server: in the clear, or TLS.
pub enum MaybeTls<S> {
    Plain(S),
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

impl<S> MaybeTls<S> {
    pub fn encrypted(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

/// Ask the server on `stream` for TLS as `policy` says (PostgreSQL's SSLRequest) and set it up
/// for `host` (the name `verify-full` checks).
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, policy: &TlsPolicy, host: &str) -> Result<MaybeTls<S>, Error> {
    if policy.mode == SslMode::Disable {
        return Ok(MaybeTls::Plain(stream));
    }
    let config = policy.config()?;
    stream.write_all(&dmf_proxy_protocol::build::ssl_request()).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let name = ServerName::try_from(host.to_string()).map_err(|e| Error::Config(format!("server name {host:?}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| Error::Handshake { host: host.to_string(), message: e.to_string() })?;
            Ok(MaybeTls::Tls(Box::new(tls)))
        }
        _ if policy.mode == SslMode::Prefer => Ok(MaybeTls::Plain(stream)),
        _ => Err(Error::Refused(policy.mode.as_str())),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection string parsed: its TLS policy, and the rest as tokio-postgres reads it. Every
/// place dmf reads a connection string goes through this (tokio-postgres alone refuses
/// `sslmode=verify-full` and `sslrootcert`).
pub fn parse(dsn: &str) -> Result<(TlsPolicy, tokio_postgres::Config), String> {
    let (policy, rest) = TlsPolicy::split(dsn).map_err(|e| e.to_string())?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| e.to_string())?;
    config.ssl_mode(policy.tokio_mode());
    Ok((policy, config))
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad connection string: {0}")]
    BadString(String),
    #[error("{0}")]
    Tls(Error),
    #[error("connect to {0}: {1}")]
    Io(String, std::io::Error),
    #[error("connect to {0}: no answer within {1:?}")]
    Timeout(String, std::time::Duration),
    #[error("connect to {0}: {CLEARTEXT_REFUSED}")]
    Cleartext(String),
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// The stream under a tokio-postgres connection dmf makes: TCP with or without TLS, or a Unix
/// socket, watched until the login is over ([`Guarded`]).
pub type Socket = Guarded<Box<dyn Stream>>;

/// What a connection's bytes go through.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A tokio-postgres connection to `dsn` (see [`parse`]), `configure`d further by the caller (a
/// connect timeout there bounds the whole login). TLS is set up here, as the string's policy says
/// ([`negotiate`]), and tokio-postgres speaks the protocol over it; until the login is over the
/// server's messages are watched, and a request for a clear-text password over a connection
/// without TLS ends the connection unless the string says `sslmode=disable`: the password is never
/// sent. A Unix socket is local: no TLS, and the password goes as the server asks.
pub async fn connect(
    dsn: &str,
    configure: impl FnOnce(&mut tokio_postgres::Config),
) -> Result<(tokio_postgres::Client, tokio_postgres::Connection<Socket, tokio_postgres::tls::NoTlsStream>), ConnectError> {
    let (policy, mut config) = parse(dsn).map_err(ConnectError::BadString)?;
    configure(&mut config);
    let timeout = config.get_connect_timeout().copied().unwrap_or(std::time::Duration::from_secs(30));
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let (stream, cleartext_ok, label): (Box<dyn Stream>, bool, String) = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Unix(dir)) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let label = path.display().to_string();
            let s = tokio::net::UnixStream::connect(&path).await.map_err(|e| ConnectError::Io(label.clone(), e))?;
            (Box::new(s), true, label)
        }
        host => {
            let host = match host {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                _ => "localhost".to_string(),
            };
            let label = format!("{host}:{port}");
            let opened = tokio::time::timeout(timeout, async {
                let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| ConnectError::Io(label.clone(), e))?;
                let _ = tcp.set_nodelay(true);
                negotiate(tcp, &policy, &host).await.map_err(ConnectError::Tls)
            })
            .await
            .map_err(|_| ConnectError::Timeout(label.clone(), timeout))??;
            let encrypted = opened.encrypted();
            (Box::new(opened), policy.cleartext_ok(encrypted), label)
        }
    };
    // TLS is already set up (or refused) on `stream`: tokio-postgres must not ask again
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    tokio::time::timeout(timeout, config.connect_raw(Guarded::new(stream, cleartext_ok), tokio_postgres::NoTls))
        .await
        .map_err(|_| ConnectError::Timeout(label.clone(), timeout))?
        .map_err(|e| if refused_cleartext(&e) { ConnectError::Cleartext(label) } else { ConnectError::Postgres(e) })
}

/// Whether `e` is [`Guarded`]'s refusal of a clear-text password request.
fn refused_cleartext(e: &tokio_postgres::Error) -> bool {
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.to_string().contains(CLEARTEXT_REFUSED) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A stream whose server messages are watched until the login is over: an
/// AuthenticationCleartextPassword where clear text is not allowed ends it with an error, before
/// the client can answer.
pub struct Guarded<S> {
    inner: S,
    /// Server bytes of the login seen so far (empty once it is over).
    seen: Vec<u8>,
    watching: bool,
}

/// The error a refused clear-text password request reads as.
pub const CLEARTEXT_REFUSED: &str =
    "the server asks for the password in clear text over a connection without TLS; dmf sends it only over TLS, or with sslmode=disable in the connection string";

impl<S> Guarded<S> {
    pub fn new(inner: S, cleartext_ok: bool) -> Guarded<S> {
        Guarded { inner, seen: Vec::new(), watching: !cleartext_ok }
    }

    /// Look at newly read server bytes; an error when they ask for a clear-text password.
    fn watch(&mut self, new: &[u8]) -> std::io::Result<()> {
        self.seen.extend_from_slice(new);
        let mut at = 0;
        while self.seen.len() >= at + 5 {
            let tag = self.seen[at];
            let len = u32::from_be_bytes([self.seen[at + 1], self.seen[at + 2], self.seen[at + 3], self.seen[at + 4]]) as usize;
            if tag == b'N' {
                // a notice may come first: look past it (a server must not hide a clear-text
                // request behind one)
                if self.seen.len() < at + 1 + len {
                    break;
                }
                at += 1 + len;
                continue;
            }
            if tag != b'R' {
                // not an authentication request: the login is over (or failed)
                self.stop();
                return Ok(());
            }
            if self.seen.len() < at + 9 {
                break;
            }
            let code = u32::from_be_bytes([self.seen[at + 5], self.seen[at + 6], self.seen[at + 7], self.seen[at + 8]]);
            match code {
                3 => return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, CLEARTEXT_REFUSED)),
                0 => {
                    self.stop();
                    return Ok(());
                }
                _ => {}
            }
            if self.seen.len() < at + 1 + len {
                break;
            }
            at += 1 + len;
        }
        self.seen.drain(..at);
        // an authentication exchange is small: anything this large is not one
        if self.seen.len() > 64 * 1024 {
            self.stop();
        }
        Ok(())
    }

    fn stop(&mut self) {
        self.watching = false;
        self.seen = Vec::new();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.watching {
            if let Poll::Ready(Ok(())) = r {
                let new = buf.filled()[before..].to_vec();
                this.watch(&new)?;
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// For a program that logs in itself (libpq's pg_dump and pg_restore) with a password under
/// `sslmode=prefer`: the mode it must use so that the password never goes in clear text.
/// `require` when the server offers TLS; `prefer` when it does not and asks for something other
/// than a clear-text password; an error when it would ask for one.
pub async fn mode_for_libpq(config: &tokio_postgres::Config, timeout: std::time::Duration) -> Result<SslMode, crate::Error> {
    let Some(tokio_postgres::config::Host::Tcp(host)) = config.get_hosts().first() else { return Ok(SslMode::Prefer) };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let probe = async {
        let mut tcp = crate::tcp(host, port, timeout).await?;
        tcp.write_all(&dmf_proxy_protocol::build::ssl_request()).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        if answer[0] == b'S' {
            return Ok(SslMode::Require);
        }
        let user = config.get_user().unwrap_or("postgres");
        let mut params = dmf_proxy_protocol::startup::Params::default();
        params.set("user", user);
        params.set("database", config.get_dbname().unwrap_or(user));
        match crate::Conn::auth_request(crate::tcp(host, port, timeout).await?, &params).await? {
            3 => Err(crate::Error::CleartextRefused),
            _ => Ok(SslMode::Prefer),
        }
    };
    tokio::time::timeout(timeout, probe).await.map_err(|_| crate::Error::Timeout(format!("{host}:{port}")))?
}

/// A TCP connection with TLS as `policy` says, within `timeout`: the stream for
/// [`crate::Conn::start_checked`].
pub async fn connect_tcp(host: &str, port: u16, timeout: std::time::Duration, policy: &TlsPolicy) -> Result<MaybeTls<TcpStream>, crate::Error> {
    let tcp = crate::tcp(host, port, timeout).await?;
    tokio::time::timeout(timeout, negotiate(tcp, policy, host))
        .await
        .map_err(|_| crate::Error::Timeout(format!("{host}:{port}")))?
        .map_err(|e| crate::Error::Tls(e.to_string()))
}

/// `key=value` pairs of a libpq connection string (values may be quoted), each with its raw text.
fn key_values(dsn: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let b = dsn.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = dsn[start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
        }
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i] as char);
                i += 1;
            }
            i += 1;
        } else {
            let v = i;
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            value = dsn[v..i].to_string();
        }
        if !key.is_empty() {
            out.push((key, value, dsn[start..i.min(b.len())].to_string()));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_leaves_the_string_and_the_rest_stays() {
        let (p, rest) = TlsPolicy::split("postgres://u@h:5/d?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x").expect("url");
        assert_eq!(p, TlsPolicy { mode: SslMode::VerifyFull, root_cert: Some("/tmp/ca.pem".into()) });
        assert_eq!(rest, "postgres://u@h:5/d?application_name=x");
        let (p, rest) = TlsPolicy::split("postgres://u@h/d?sslmode=require").expect("url");
        assert_eq!((p.mode, rest.as_str()), (SslMode::Require, "postgres://u@h/d"));
        let (p, rest) = TlsPolicy::split("host=h sslmode=verify-ca sslrootcert='/a b/ca.pem' dbname=d").expect("kv");
        assert_eq!(p, TlsPolicy { mode: SslMode::VerifyCa, root_cert: Some("/a b/ca.pem".into()) });
        assert_eq!(rest, "host=h dbname=d");
        assert_eq!(TlsPolicy::split("postgres://h/d").expect("none").0, TlsPolicy::default());
        assert!(TlsPolicy::split("postgres://h/d?sslmode=bogus").is_err());
    }

    #[test]
    fn percent_decoding_never_splits_a_character() {
        assert_eq!(percent_decode("%2Ftmp%2Fca.pem"), "/tmp/ca.pem");
        assert_eq!(percent_decode("ab%1é"), "ab%1é");
        assert_eq!(percent_decode("%"), "%");
    }

    #[test]
    fn the_login_watch_refuses_a_clear_text_request_and_lets_the_rest_through() {
        let mut g = Guarded::new((), false);
        // SASL request, in two reads
        assert!(g.watch(&[b'R', 0, 0, 0, 23, 0, 0]).is_ok());
        assert!(g.watch(&[0, 10, b'S', b'C', b'R', b'A', b'M', b'-', b'S', b'H', b'A', b'-', b'2', b'5', b'6', 0, 0]).is_ok());
        assert!(g.watching);
        assert!(g.watch(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]).is_ok(), "AuthenticationOk");
        assert!(!g.watching, "the login is over: nothing more is looked at");
        let mut g = Guarded::new((), false);
        let e = g.watch(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).expect_err("clear text");
        assert!(e.to_string().contains("clear text"));
        let mut g = Guarded::new((), false);
        assert!(g.watch(&[b'N', 0, 0, 0, 6, b'x', 0]).is_ok(), "a notice first");
        assert!(g.watch(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).is_err(), "does not hide a clear-text request");
        let g = Guarded::new((), true);
        assert!(!g.watching, "clear text allowed: nothing to watch");
    }

    #[test]
    fn cleartext_passwords_go_only_over_tls_or_where_disable_says_so() {
        let prefer = TlsPolicy::default();
        assert!(!prefer.cleartext_ok(false) && prefer.cleartext_ok(true));
        assert!(TlsPolicy { mode: SslMode::Disable, root_cert: None }.cleartext_ok(false));
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        let e = TlsPolicy { mode: SslMode::VerifyFull, root_cert: None }.config().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("needs sslrootcert") || std::env::var_os("HOME").is_some_and(|h| Path::new(&h).join(".postgresql/root.crt").exists()), "{e}");
    }
}
