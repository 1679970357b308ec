//! Tagged frames (`tag`, `int32 length`, body): header checks with PostgreSQL's own limits, and
//! readers for the bodies the proxy looks into.

use super::{be_i16, be_i32, cstr, Error};

/// PostgreSQL's limit for large messages (MaxAllocSize - 1).
pub const LARGE: usize = 0x3fff_ffff;
/// PostgreSQL's limit for messages that are always small (Sync, Execute, Describe, ...).
pub const SMALL: usize = 10_000;
/// The limit for authentication messages (PG_MAX_AUTH_TOKEN_LENGTH).
pub const AUTH: usize = 65_535;

/// Who sent the bytes: it decides which tags are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A client after startup.
    Client,
    /// A client during authentication (only password / SASL messages).
    ClientAuth,
    /// A PostgreSQL server.
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Length of the body, without the tag and the length word.
    pub len: usize,
}

/// The header at the start of `buf`, or `None` when fewer than 5 bytes are there.
pub fn header(buf: &[u8], side: Side) -> Result<Option<Header>, Error> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let raw = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as i64;
    let limit = limit(tag, side)?;
    if raw < 4 || raw as usize - 4 > limit {
        return Err(Error::BadLength { tag: tag as char, len: raw });
    }
    Ok(Some(Header { tag, len: raw as usize - 4 }))
}

fn limit(tag: u8, side: Side) -> Result<usize, Error> {
    match side {
        Side::Client => match tag {
            b'Q' | b'P' | b'B' | b'F' | b'd' | b'p' => Ok(LARGE),
            b'E' | b'C' | b'D' | b'H' | b'S' | b'X' | b'c' | b'f' => Ok(SMALL),
            t => Err(Error::UnknownTag(t as char)),
        },
        Side::ClientAuth => match tag {
            b'p' => Ok(AUTH),
            b'X' => Ok(SMALL),
            t => Err(Error::UnknownTag(t as char)),
        },
        Side::Server => match tag {
            b'R' | b'K' | b'S' | b'Z' | b'T' | b'D' | b'C' | b'E' | b'N' | b'A' | b'1' | b'2' | b'3' | b'n'
            | b's' | b'I' | b't' | b'G' | b'H' | b'W' | b'd' | b'c' | b'V' | b'v' => Ok(LARGE),
            t => Err(Error::UnknownTag(t as char)),
        },
    }
}

/// One whole frame.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub tag: u8,
    pub body: &'a [u8],
}

/// A Describe or Close target: a prepared statement or a portal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Statement(&'a str),
    Portal(&'a str),
}

impl<'a> Frame<'a> {
    /// Check the body of every client message the proxy interprets.
    pub fn inspect(&self) -> Result<(), Error> {
        match self.tag {
            b'Q' => self.query().map(|_| ()),
            b'P' => self.parse().map(|_| ()),
            b'B' => self.bind().map(|_| ()),
            b'D' | b'C' => self.target().map(|_| ()),
            b'E' => self.execute().map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Query: the SQL text.
    pub fn query(&self) -> Result<&'a str, Error> {
        match cstr(self.body) {
            Some((q, [])) => Ok(q),
            _ => Err(Error::Malformed { what: "Query" }),
        }
    }

    /// Parse: statement name and SQL text (parameter types are checked, not returned).
    pub fn parse(&self) -> Result<(&'a str, &'a str), Error> {
        let bad = || Error::Malformed { what: "Parse" };
        let (name, rest) = cstr(self.body).ok_or_else(bad)?;
        let (sql, rest) = cstr(rest).ok_or_else(bad)?;
        let (n, rest) = be_i16(rest).ok_or_else(bad)?;
        if n < 0 || rest.len() != n as usize * 4 {
            return Err(bad());
        }
        Ok((name, sql))
    }

    /// Bind: portal and statement names; the parameter and format sections are checked.
    pub fn bind(&self) -> Result<(&'a str, &'a str), Error> {
        let bad = || Error::Malformed { what: "Bind" };
        let (portal, rest) = cstr(self.body).ok_or_else(bad)?;
        let (stmt, rest) = cstr(rest).ok_or_else(bad)?;
        let (nfmt, mut rest) = be_i16(rest).ok_or_else(bad)?;
        if nfmt < 0 {
            return Err(bad());
        }
        rest = rest.get(nfmt as usize * 2..).ok_or_else(bad)?;
        let (nparams, mut rest) = be_i16(rest).ok_or_else(bad)?;
        if nparams < 0 {
            return Err(bad());
        }
        for _ in 0..nparams {
            let (len, r) = be_i32(rest).ok_or_else(bad)?;
            rest = if len == -1 {
                r
            } else if len < 0 {
                return Err(bad());
            } else {
                r.get(len as usize..).ok_or_else(bad)?
            };
        }
        let (nres, rest) = be_i16(rest).ok_or_else(bad)?;
        if nres < 0 || rest.len() != nres as usize * 2 {
            return Err(bad());
        }
        Ok((portal, stmt))
    }

    /// Describe or Close: what it names.
    pub fn target(&self) -> Result<Target<'a>, Error> {
        let bad = || Error::Malformed { what: if self.tag == b'D' { "Describe" } else { "Close" } };
        let (&kind, rest) = self.body.split_first().ok_or_else(bad)?;
        match cstr(rest) {
            Some((name, [])) => match kind {
                b'S' => Ok(Target::Statement(name)),
                b'P' => Ok(Target::Portal(name)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    /// Execute: portal name.
    pub fn execute(&self) -> Result<&'a str, Error> {
        let bad = || Error::Malformed { what: "Execute" };
        let (portal, rest) = cstr(self.body).ok_or_else(bad)?;
        if rest.len() != 4 {
            return Err(bad());
        }
        Ok(portal)
    }

    /// ErrorResponse / NoticeResponse: the value of field `code` (e.g. b'C' for SQLSTATE).
    pub fn field(&self, code: u8) -> Option<&'a str> {
        let mut rest = self.body;
        while let Some((&c, r)) = rest.split_first() {
            if c == 0 {
                return None;
            }
            let (v, r) = cstr(r)?;
            if c == code {
                return Some(v);
            }
            rest = r;
        }
        None
    }

    /// DataRow: each column in text form (NULL as None); None when the body is malformed.
    pub fn data_row(&self) -> Option<Vec<Option<String>>> {
        let (n, mut rest) = be_i16(self.body)?;
        // each column takes at least its 4-byte length: a count the body cannot hold allocates nothing
        let mut out = Vec::with_capacity((n.max(0) as usize).min(rest.len() / 4));
        for _ in 0..n {
            let (len, r) = be_i32(rest)?;
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

    /// CommandComplete: the rows a command reported (`SELECT 3`, `INSERT 0 3`, `UPDATE 3`).
    pub fn rows(&self) -> Option<u64> {
        let (tag, _) = cstr(self.body)?;
        tag.rsplit(' ').next()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;

    #[test]
    fn absurd_lengths_and_unknown_tags_are_refused() {
        assert!(matches!(header(b"Q\x7f\xff\xff\xff", Side::Client), Err(Error::BadLength { .. })));
        assert!(matches!(header(b"Q\x00\x00\x00\x03", Side::Client), Err(Error::BadLength { .. })));
        assert!(matches!(header(b"S\x00\x01\x00\x00", Side::Client), Err(Error::BadLength { .. })));
        assert_eq!(header(b"\x01\x00\x00\x00\x04", Side::Client), Err(Error::UnknownTag('\u{1}')));
        assert_eq!(header(b"Q\x00\x00", Side::Client), Ok(None));
        assert_eq!(header(b"Q\x00\x00\x00\x09", Side::Client), Ok(Some(Header { tag: b'Q', len: 5 })));
        assert_eq!(header(b"Q\x00\x00\x00\x09", Side::ClientAuth), Err(Error::UnknownTag('Q')));
    }

    #[test]
    fn bodies_are_checked_to_the_byte() {
        let q = build::query("select 1");
        assert_eq!(Frame { tag: b'Q', body: &q[5..] }.query(), Ok("select 1"));
        assert!(Frame { tag: b'Q', body: b"select 1" }.query().is_err());
        let p = build::parse("s1", "select $1", &[23]);
        assert_eq!(Frame { tag: b'P', body: &p[5..] }.parse(), Ok(("s1", "select $1")));
        assert!(Frame { tag: b'P', body: &p[5..p.len() - 1] }.parse().is_err());
        let b = build::bind("", "s1", &[Some(b"42")]);
        assert_eq!(Frame { tag: b'B', body: &b[5..] }.bind(), Ok(("", "s1")));
        assert!(Frame { tag: b'B', body: &b[5..b.len() - 3] }.bind().is_err());
        assert_eq!(Frame { tag: b'C', body: b"Sx\0" }.target(), Ok(Target::Statement("x")));
        assert!(Frame { tag: b'C', body: b"Zx\0" }.target().is_err());
        let e = b"SERROR\0C42P01\0Mno such table\0\0";
        assert_eq!(Frame { tag: b'E', body: e }.field(b'C'), Some("42P01"));
        assert_eq!(Frame { tag: b'C', body: b"INSERT 0 3\0" }.rows(), Some(3));
        let row = b"\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff";
        assert_eq!(Frame { tag: b'D', body: row }.data_row(), Some(vec![Some("ab".to_string()), None]));
        assert_eq!(Frame { tag: b'D', body: &row[..5] }.data_row(), None);
    }
}
