//! Builders for the messages the proxy itself writes, to clients and to backends.

use super::startup::Params;

fn framed(tag: u8, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = vec![tag, 0, 0, 0, 0];
    body(&mut out);
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

pub fn startup(params: &Params) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0, 0, 3, 0, 0];
    for (k, v) in &params.0 {
        cstr(&mut out, k);
        cstr(&mut out, v);
    }
    out.push(0);
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// SSLRequest: asks the server for TLS before the startup packet (80877103).
pub fn ssl_request() -> [u8; 8] {
    [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]
}

pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
    out
}

pub fn query(sql: &str) -> Vec<u8> {
    framed(b'Q', |o| cstr(o, sql))
}

pub fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    framed(b'P', |o| {
        cstr(o, name);
        cstr(o, sql);
        o.extend_from_slice(&(types.len() as i16).to_be_bytes());
        for t in types {
            o.extend_from_slice(&t.to_be_bytes());
        }
    })
}

/// Bind with text parameters and text results.
pub fn bind(portal: &str, stmt: &str, params: &[Option<&[u8]>]) -> Vec<u8> {
    framed(b'B', |o| {
        cstr(o, portal);
        cstr(o, stmt);
        o.extend_from_slice(&0i16.to_be_bytes());
        o.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                None => o.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    o.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    o.extend_from_slice(v);
                }
            }
        }
        o.extend_from_slice(&0i16.to_be_bytes());
    })
}

/// Close of a prepared statement.
pub fn close_statement(name: &str) -> Vec<u8> {
    framed(b'C', |o| {
        o.push(b'S');
        cstr(o, name);
    })
}

pub fn sync() -> Vec<u8> {
    framed(b'S', |_| {})
}

pub fn copy_data(payload: &[u8]) -> Vec<u8> {
    framed(b'd', |o| o.extend_from_slice(payload))
}

pub fn copy_done() -> Vec<u8> {
    framed(b'c', |_| {})
}

pub fn copy_fail(reason: &str) -> Vec<u8> {
    framed(b'f', |o| cstr(o, reason))
}

pub fn terminate() -> Vec<u8> {
    framed(b'X', |_| {})
}

/// PasswordMessage, SASLInitialResponse and SASLResponse all use tag 'p'.
pub fn password(bytes: &[u8]) -> Vec<u8> {
    framed(b'p', |o| o.extend_from_slice(bytes))
}

pub fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
    framed(b'p', |o| {
        cstr(o, mechanism);
        o.extend_from_slice(&(data.len() as i32).to_be_bytes());
        o.extend_from_slice(data);
    })
}

/// Authentication request: 0 ok, 3 cleartext, 5 MD5 (with salt), 10 SASL, 11 continue, 12 final.
pub fn auth(code: i32, data: &[u8]) -> Vec<u8> {
    framed(b'R', |o| {
        o.extend_from_slice(&code.to_be_bytes());
        o.extend_from_slice(data);
    })
}

pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    framed(b'S', |o| {
        cstr(o, name);
        cstr(o, value);
    })
}

pub fn backend_key(pid: i32, secret: i32) -> Vec<u8> {
    framed(b'K', |o| {
        o.extend_from_slice(&pid.to_be_bytes());
        o.extend_from_slice(&secret.to_be_bytes());
    })
}

pub fn ready(status: u8) -> Vec<u8> {
    framed(b'Z', |o| o.push(status))
}

/// ErrorResponse (FATAL or ERROR) with a SQLSTATE; messages from the proxy say so.
/// A NoticeResponse with `body` (its fields, as a server sent them).
pub fn notice(body: &[u8]) -> Vec<u8> {
    framed(b'N', |o| o.extend_from_slice(body))
}

pub fn error(severity: &str, code: &str, message: &str) -> Vec<u8> {
    framed(b'E', |o| {
        for (f, v) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
            o.push(f);
            cstr(o, v);
        }
        o.push(0);
    })
}
