//! The PostgreSQL v3 wire protocol as the dmf proxy needs it: framing with limits, the startup
//! packets, the few message bodies the proxy reads, and builders for the messages it writes.
//! No I/O: the proxy's `frontend` and `backend` feed it bytes, and so does the fuzz target.

pub mod build;
pub mod frame;
pub mod lsn;
pub mod startup;
pub mod tag;

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
    /// A first packet whose length no startup packet has (a client that sent something else,
    /// such as a Terminate before its startup packet): PostgreSQL closes without an answer.
    #[error("invalid length of startup packet: {0}")]
    StartupLength(i32),
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
/// target does: as a client connection (startup packet, then frames with the bodies the proxy
/// inspects), and as a server's answers. Returns how many whole frames the client pass accepted.
pub fn decode_untrusted(data: &[u8]) -> Result<usize, Error> {
    decode_server(data);
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

fn decode_server(mut rest: &[u8]) {
    while let Ok(Some(h)) = frame::header(rest, Side::Server) {
        let Some(body) = rest.get(5..5 + h.len) else { return };
        let f = Frame { tag: h.tag, body };
        let _ = (f.field(b'C'), f.rows());
        rest = &rest[5 + h.len..];
    }
}

#[cfg(test)]
mod tests {
    /// A cheap stand-in for the fuzzer that runs with every `cargo test`: a million random and
    /// mutated inputs, none of which may panic.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut seeds: Vec<Vec<u8>> = vec![crate::build::query("select 1"), crate::build::parse("s", "select $1", &[23]), crate::build::bind("", "s", &[Some(b"1"), None])];
        let mut p = crate::startup::Params::default();
        p.set("user", "u");
        seeds.push(crate::build::startup(&p));
        for i in 0..1_000_000u32 {
            let mut input = if i % 2 == 0 {
                let len = (next() % 64) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                let mut s = seeds[(next() % seeds.len() as u64) as usize].clone();
                let flips = 1 + next() % 4;
                for _ in 0..flips {
                    let at = (next() % s.len() as u64) as usize;
                    s[at] = next() as u8;
                }
                if next() % 3 == 0 {
                    s.truncate((next() % s.len() as u64) as usize);
                }
                s
            };
            if i % 5 == 0 {
                let mut q = crate::build::startup(&p);
                q.append(&mut input);
                input = q;
            }
            let _ = super::decode_untrusted(&input);
        }
    }
}
