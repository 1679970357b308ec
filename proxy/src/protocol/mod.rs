//! The PostgreSQL v3 wire protocol as the proxy needs it: framing with limits, the startup
//! packets, the few message bodies the proxy reads, and builders for the messages it writes.

pub mod build;
pub mod frame;
pub mod startup;

pub use frame::{Frame, Header, Side};
pub use startup::Startup;

/// Why a byte stream is not the PostgreSQL protocol. Every variant closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("message length {len} for type {tag:?} is out of bounds")]
    BadLength { tag: char, len: i64 },
    #[error("unknown message type {0:?}")]
    UnknownTag(char),
    #[error("bad startup packet: {0}")]
    BadStartup(String),
    #[error("unsupported frontend protocol {major}.{minor}: the proxy speaks 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
    #[error("connection closed in the middle of a message")]
    Truncated,
}

/// Reads a NUL-terminated string at the start of `b`; returns it and the rest.
pub fn cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    let s = std::str::from_utf8(&b[..end]).ok()?;
    Some((s, &b[end + 1..]))
}

pub fn be_i32(b: &[u8]) -> Option<(i32, &[u8])> {
    let v = b.get(..4)?;
    Some((i32::from_be_bytes([v[0], v[1], v[2], v[3]]), &b[4..]))
}

pub fn be_i16(b: &[u8]) -> Option<(i16, &[u8])> {
    let v = b.get(..2)?;
    Some((i16::from_be_bytes([v[0], v[1]]), &b[2..]))
}

/// Feed arbitrary bytes through every decoder the proxy runs on untrusted input, as the fuzz
/// target does: a startup packet, then client frames, with the bodies the proxy inspects parsed.
pub fn decode_untrusted(data: &[u8]) -> Result<usize, Error> {
    let mut rest = data;
    if let Some((s, used)) = startup::parse(rest)? {
        rest = &rest[used..];
        if let Startup::Params(p) = s {
            let _ = p.get("user");
        }
    }
    let mut frames = 0;
    loop {
        match frame::header(rest, Side::Client)? {
            None => return Ok(frames),
            Some(h) => {
                let total = 5 + h.len;
                if rest.len() < total {
                    return Err(Error::Truncated);
                }
                let f = Frame { tag: h.tag, body: &rest[5..total] };
                f.inspect()?;
                rest = &rest[total..];
                frames += 1;
            }
        }
    }
}
