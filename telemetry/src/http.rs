//! A minimal HTTP/1.1 server: one request per connection, bounded heads and bodies, a deadline
//! for reading them, a bound on connections at once, on a handler's time and on each write, and
//! streamed replies for server-sent events. Enough for `/metrics` and the dashboard's pages; not a
//! general web server. Every reply says it is not to be framed, sniffed or sent as a referrer, and
//! allows scripts and styles from this server only.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The largest request head and body read; anything larger is refused.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// How long a client has to send its whole request.
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's backlog (a scraper or a browser is a
/// handful: a flood must not take the file descriptors a worker needs for its databases).
const MAX_CONNECTIONS: usize = 128;
/// How long a handler may take to answer.
const HANDLER_DEADLINE: Duration = Duration::from_secs(30);
/// How long one write may wait for a client that does not read.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
const SECURITY_HEADERS: &str = "X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n\
Content-Security-Policy: default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'\r\n";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, #[source] source: std::io::Error },
}

/// A parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoded, without the query.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: Option<std::net::SocketAddr>,
}

impl Request {
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// An `application/x-www-form-urlencoded` body's fields.
    pub fn form(&self) -> Vec<(String, String)> {
        parse_pairs(&String::from_utf8_lossy(&self.body))
    }
}

/// What a handler answers.
pub enum Body {
    Full(Vec<u8>),
    /// Server-sent events: each message is written as it comes, until the sender is dropped or
    /// the client goes away.
    Events(mpsc::Receiver<String>),
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Reply {
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply { status: 200, content_type: content_type.into(), headers: Vec::new(), body: Body::Full(body.into()) }
    }

    pub fn html(body: impl Into<Vec<u8>>) -> Reply {
        Reply::ok("text/html; charset=utf-8", body)
    }

    pub fn status(status: u16, text: &str) -> Reply {
        Reply { status, content_type: "text/plain; charset=utf-8".into(), headers: Vec::new(), body: Body::Full(format!("{text}\n").into_bytes()) }
    }

    pub fn not_found() -> Reply {
        Reply::status(404, "not found")
    }

    pub fn redirect(to: &str) -> Reply {
        let mut r = Reply::status(303, "see other");
        r.headers.push(("Location".into(), to.into()));
        r
    }

    pub fn events(rx: mpsc::Receiver<String>) -> Reply {
        Reply { status: 200, content_type: "text/event-stream".into(), headers: vec![("Cache-Control".into(), "no-cache".into())], body: Body::Events(rx) }
    }
}

/// Accept connections until `cancel`, each served by `handler` in its own task.
pub async fn serve<F, Fut>(listener: TcpListener, cancel: CancellationToken, handler: F)
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = connection(stream, peer, handler) => {}
            }
            drop(slot);
        });
    }
}

async fn connection<F, Fut>(mut stream: TcpStream, peer: std::net::SocketAddr, handler: F)
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Reply>,
{
    let request = match tokio::time::timeout(READ_DEADLINE, read_request(&mut stream)).await {
        Ok(Ok(mut r)) => {
            r.peer = Some(peer);
            r
        }
        Ok(Err(status)) => {
            let _ = write_reply(&mut stream, Reply::status(status, "bad request")).await;
            // what the client still sends is read and dropped for a moment: closing on unread
            // bytes would reset the connection and lose the answer on the way
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let mut left = 256 * 1024usize;
                while left > 0 {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            })
            .await;
            return;
        }
        Err(_) => {
            let _ = write_reply(&mut stream, Reply::status(408, "request timeout")).await;
            return;
        }
    };
    let reply = match tokio::time::timeout(HANDLER_DEADLINE, handler(request)).await {
        Ok(r) => r,
        Err(_) => Reply::status(503, "the server took too long to answer"),
    };
    let _ = write_reply(&mut stream, reply).await;
}

/// Read one request; `Err(status)` for one that is malformed or too large.
async fn read_request(stream: &mut TcpStream) -> Result<Request, u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut searched = 0;
    let head_end = loop {
        // (only what arrived since the last look, and the three bytes before it)
        if let Some(i) = find(&buf[searched..], b"\r\n\r\n") {
            break searched + i;
        }
        searched = buf.len().saturating_sub(3);
        if buf.len() > MAX_HEAD {
            return Err(431);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(|_| 400u16)?;
        if n == 0 {
            return Err(400);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| 400u16)?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    if method.is_empty() || !target.starts_with('/') {
        return Err(400);
    }
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers.iter().find(|(k, _)| k == "content-length").map(|(_, v)| v.parse().map_err(|_| 400u16)).transpose()?.unwrap_or(0);
    if length > MAX_BODY {
        return Err(413);
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(|_| 400u16)?;
        if n == 0 {
            return Err(400);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    Ok(Request { method, path: decode_path(path), query: parse_pairs(query), headers, body, peer: None })
}

async fn write_reply(stream: &mut TcpStream, reply: Reply) -> std::io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nConnection: close\r\n{SECURITY_HEADERS}", reply.status, reply.content_type);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match reply.body {
        Body::Full(body) => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            write(stream, head.as_bytes()).await?;
            write(stream, &body).await?;
        }
        Body::Events(mut rx) => {
            head.push_str("\r\n");
            write(stream, head.as_bytes()).await?;
            let mut closed = [0u8; 64];
            loop {
                tokio::select! {
                    message = rx.recv() => match message {
                        Some(m) => write(stream, m.as_bytes()).await?,
                        None => break,
                    },
                    // the client went away (or sent something: it has nothing to say)
                    _ = stream.read(&mut closed) => break,
                }
            }
        }
    }
    tokio::time::timeout(WRITE_DEADLINE, stream.shutdown()).await.unwrap_or(Ok(()))
}

/// Write and flush, or give up on a client that has not read for `WRITE_DEADLINE`.
async fn write(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let sent = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    tokio::time::timeout(WRITE_DEADLINE, sent).await.unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client not reading")))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).map(|(k, v)| (decode(k), decode(v))).collect()
}

/// Percent-decoding of a query or form value (`+` is a space), lossy for invalid UTF-8.
pub fn decode(s: &str) -> String {
    unescape(s, true)
}

/// Percent-decoding of a path (`+` is itself).
pub fn decode_path(s: &str) -> String {
    unescape(s, false)
}

fn unescape(s: &str, plus_is_space: bool) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_it_encodes_and_survives_broken_escapes() {
        assert_eq!(decode("a%20b%2Fc%3Fd%3De%26f"), "a b/c?d=e&f");
        assert_eq!(decode("%C3%BCn%C3%AF%22%3Cx%3E"), "ünï\"<x>");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("a%2"), "a%2");
        assert_eq!(decode("%zz+x"), "%zz x");
        assert_eq!(decode("%41"), "A");
        assert_eq!(decode("%+5"), "%+5".replace('+', " "), "two hex digits or nothing");
        assert_eq!(decode_path("/a+b%2Fc"), "/a+b/c");
    }

    #[tokio::test]
    async fn serves_a_request_and_refuses_an_oversized_head() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, cancel.clone(), |r: Request| async move {
            Reply::ok("text/plain", format!("{} {} {:?} {}", r.method, r.path, r.query("x"), String::from_utf8_lossy(&r.body)))
        }));
        let ask = |raw: Vec<u8>| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&raw).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = ask(b"POST /a%20b?x=1%262 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec()).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("POST /a b Some(\"1&2\") abc"), "{ok}");
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat(b'a').take(MAX_HEAD + 10));
        let refused = ask(big).await;
        assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
        cancel.cancel();
    }
}
