//! Decoding the logical replication stream (pgoutput, protocol version 1) as far as the sampler
//! needs: transaction boundaries with their commit position and time, relations, and the keys of
//! the rows each change touched.

use bytes::{Buf, Bytes};

use crate::error::Error;

fn short(what: &str) -> Error {
    Error::Replication(format!("truncated pgoutput message ({what})"))
}

/// A relation as the stream describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<String>,
    /// Whether each column is part of the replica identity key.
    pub key_flags: Vec<bool>,
}

/// One column value of a tuple in the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// TOASTed and unchanged: not sent.
    Unchanged,
    Text(String),
}

/// The messages the sampler acts on; the rest are skipped.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin { final_lsn: u64, commit_time_us: i64, xid: u32 },
    Commit { end_lsn: u64, commit_time_us: i64 },
    Relation(Relation),
    /// An insert, update or delete: the relation and the tuple that carries its key (the new row,
    /// or for a delete the old key); `old_key` when an update changed the key.
    Change { relation: u32, tuple: Vec<Value>, old_key: Option<Vec<Value>> },
    Other,
}

/// A replication stream payload: XLogData ('w') carrying a pgoutput message, or a keepalive.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    XLogData { wal_end: u64, message: Message },
    Keepalive { wal_end: u64, reply_requested: bool },
}

fn string(b: &mut Bytes, what: &str) -> Result<String, Error> {
    let end = b.iter().position(|c| *c == 0).ok_or_else(|| short(what))?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(s)
}

fn need(b: &Bytes, n: usize, what: &str) -> Result<(), Error> {
    if b.remaining() < n {
        Err(short(what))
    } else {
        Ok(())
    }
}

fn tuple(b: &mut Bytes) -> Result<Vec<Value>, Error> {
    need(b, 2, "tuple")?;
    let n = b.get_u16() as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        need(b, 1, "column")?;
        match b.get_u8() {
            b'n' => out.push(Value::Null),
            b'u' => out.push(Value::Unchanged),
            b't' | b'b' => {
                need(b, 4, "column length")?;
                let len = b.get_u32() as usize;
                need(b, len, "column value")?;
                out.push(Value::Text(String::from_utf8_lossy(&b[..len]).into_owned()));
                b.advance(len);
            }
            other => return Err(Error::Replication(format!("unknown pgoutput column kind {:?}", other as char))),
        }
    }
    Ok(out)
}

/// Decode one pgoutput message.
pub fn message(mut b: Bytes) -> Result<Message, Error> {
    need(&b, 1, "tag")?;
    match b.get_u8() {
        b'B' => {
            need(&b, 20, "begin")?;
            Ok(Message::Begin { final_lsn: b.get_u64(), commit_time_us: b.get_i64(), xid: b.get_u32() })
        }
        b'C' => {
            need(&b, 25, "commit")?;
            let _flags = b.get_u8();
            let _commit_lsn = b.get_u64();
            Ok(Message::Commit { end_lsn: b.get_u64(), commit_time_us: b.get_i64() })
        }
        b'R' => {
            need(&b, 4, "relation")?;
            let id = b.get_u32();
            let schema = string(&mut b, "relation schema")?;
            let name = string(&mut b, "relation name")?;
            need(&b, 3, "relation")?;
            let _identity = b.get_u8();
            let n = b.get_u16() as usize;
            let (mut columns, mut key_flags) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for _ in 0..n {
                need(&b, 1, "relation column")?;
                let flags = b.get_u8();
                columns.push(string(&mut b, "column name")?);
                need(&b, 8, "column type")?;
                b.advance(8);
                key_flags.push(flags & 1 == 1);
            }
            Ok(Message::Relation(Relation { id, schema, name, columns, key_flags }))
        }
        b'I' => {
            need(&b, 5, "insert")?;
            let relation = b.get_u32();
            let _n = b.get_u8();
            Ok(Message::Change { relation, tuple: tuple(&mut b)?, old_key: None })
        }
        b'U' => {
            need(&b, 5, "update")?;
            let relation = b.get_u32();
            let mut kind = b.get_u8();
            let mut old_key = None;
            if kind == b'K' || kind == b'O' {
                old_key = Some(tuple(&mut b)?);
                need(&b, 1, "update")?;
                kind = b.get_u8();
            }
            if kind != b'N' {
                return Err(Error::Replication("pgoutput update without a new tuple".into()));
            }
            Ok(Message::Change { relation, tuple: tuple(&mut b)?, old_key })
        }
        b'D' => {
            need(&b, 5, "delete")?;
            let relation = b.get_u32();
            let _kind = b.get_u8();
            Ok(Message::Change { relation, tuple: tuple(&mut b)?, old_key: None })
        }
        _ => Ok(Message::Other),
    }
}

/// Decode one CopyData payload of the replication stream.
pub fn frame(mut b: Bytes) -> Result<Frame, Error> {
    need(&b, 1, "frame")?;
    match b.get_u8() {
        b'w' => {
            need(&b, 24, "XLogData")?;
            let _start = b.get_u64();
            let wal_end = b.get_u64();
            let _time = b.get_i64();
            Ok(Frame::XLogData { wal_end, message: message(b)? })
        }
        b'k' => {
            need(&b, 17, "keepalive")?;
            let wal_end = b.get_u64();
            let _time = b.get_i64();
            Ok(Frame::Keepalive { wal_end, reply_requested: b.get_u8() == 1 })
        }
        other => Err(Error::Replication(format!("unknown replication frame {:?}", other as char))),
    }
}

/// LSN text forms live with the wire protocol, shared with the proxy.
pub use dmf_proxy_protocol::lsn::{parse as parse_lsn, text as lsn_text};

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    #[test]
    fn decodes_relation_and_update_with_key() {
        let mut r = BytesMut::new();
        r.put_u8(b'R');
        r.put_u32(42);
        r.put_slice(b"public\0t\0");
        r.put_u8(b'd');
        r.put_u16(2);
        r.put_u8(1);
        r.put_slice(b"id\0");
        r.put_u32(23);
        r.put_i32(-1);
        r.put_u8(0);
        r.put_slice(b"v\0");
        r.put_u32(25);
        r.put_i32(-1);
        let rel = message(r.freeze()).expect("relation");
        assert_eq!(
            rel,
            Message::Relation(Relation { id: 42, schema: "public".into(), name: "t".into(), columns: vec!["id".into(), "v".into()], key_flags: vec![true, false] })
        );
        let mut u = BytesMut::new();
        u.put_u8(b'U');
        u.put_u32(42);
        u.put_u8(b'N');
        u.put_u16(2);
        u.put_u8(b't');
        u.put_u32(1);
        u.put_slice(b"7");
        u.put_u8(b'n');
        assert_eq!(message(u.freeze()).expect("update"), Message::Change { relation: 42, tuple: vec![Value::Text("7".into()), Value::Null], old_key: None });
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        for bytes in [&b"B\0\0"[..], b"R\0\0\0\x01pub", b"I\0\0\0\x01N\0\x02t\0\0\0\x09ab", b"w\0\0", b"k"] {
            assert!(frame(Bytes::copy_from_slice(&[b"w".as_slice(), &[0u8; 24], bytes].concat())).is_err() || frame(Bytes::copy_from_slice(bytes)).is_err());
        }
        assert!(message(Bytes::from_static(b"U\0\0\0\x01X")).is_err());
    }

    #[test]
    fn lsn_round_trips() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
    }
}
