//! The untagged first packet of a connection: StartupMessage, SSLRequest, GSSENCRequest and
//! CancelRequest.

use super::Error;

/// PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
pub const MAX_LEN: usize = 10_000;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
const V3: i32 = 196_608;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Startup {
    Params(Params),
    Ssl,
    GssEnc,
    Cancel { pid: i32, secret: i32 },
}

/// Startup parameters in the order the client sent them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_string(),
            None => self.0.push((key.to_string(), value.to_string())),
        }
    }
}

/// The packet at the start of `buf` and the bytes it used, or `None` while incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<(Startup, usize)>, Error> {
    let Some(len) = buf.get(..4) else { return Ok(None) };
    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    if len < 8 || len as usize > MAX_LEN {
        return Err(Error::StartupLength(len));
    }
    let len = len as usize;
    let Some(packet) = buf.get(..len) else { return Ok(None) };
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    let s = match code {
        SSL_REQUEST | GSSENC_REQUEST if !body.is_empty() => return Err(Error::BadStartup("request with a body".into())),
        SSL_REQUEST => Startup::Ssl,
        GSSENC_REQUEST => Startup::GssEnc,
        CANCEL_REQUEST => {
            if body.len() != 8 {
                return Err(Error::BadStartup("cancel request of the wrong length".into()));
            }
            Startup::Cancel {
                pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
            }
        }
        V3 => Startup::Params(params(body)?),
        other => {
            return Err(Error::UnsupportedProtocol { major: (other >> 16) as u16, minor: (other & 0xffff) as u16 });
        }
    };
    Ok(Some((s, len)))
}

fn params(mut body: &[u8]) -> Result<Params, Error> {
    let mut out = Params::default();
    loop {
        match body {
            [0] => break,
            [] => return Err(Error::BadStartup("parameters not terminated".into())),
            _ => {}
        }
        let (k, rest) = super::cstr(body).ok_or_else(|| Error::BadStartup("bad parameter name".into()))?;
        let (v, rest) = super::cstr(rest).ok_or_else(|| Error::BadStartup(format!("bad value for {k:?}")))?;
        if k.is_empty() {
            return Err(Error::BadStartup("empty parameter name".into()));
        }
        out.0.push((k.to_string(), v.to_string()));
        body = rest;
    }
    if out.get("user").is_none_or(str::is_empty) {
        return Err(Error::BadStartup("no user name given".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;

    #[test]
    fn startup_packets_round_trip_and_bad_ones_are_named() {
        let mut p = Params::default();
        p.set("user", "app");
        p.set("database", "db");
        let pkt = build::startup(&p);
        assert_eq!(parse(&pkt), Ok(Some((Startup::Params(p), pkt.len()))));
        assert_eq!(parse(&pkt[..pkt.len() - 1]), Ok(None));
        assert_eq!(parse(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]), Ok(Some((Startup::Ssl, 8))));
        assert!(matches!(parse(&[0, 0, 0, 3]), Err(Error::StartupLength(3))));
        assert!(matches!(parse(&[0x7f, 0, 0, 0]), Err(Error::StartupLength(_))));
        assert!(matches!(parse(&[0, 0, 0, 8, 0, 2, 0, 0]), Err(Error::UnsupportedProtocol { major: 2, minor: 0 })));
        assert!(matches!(parse(&[0, 0, 0, 10, 0, 3, 0, 0, b'x', 0]), Err(Error::BadStartup(_))));
        let no_user = [0, 0, 0, 9, 0, 3, 0, 0, 0];
        assert!(matches!(parse(&no_user), Err(Error::BadStartup(_))));
    }
}
