//! The relay of messages themselves: every complete client message to the backend in use, every
//! server message back to the client. Bytes go out straight from the buffer they were read into;
//! only when the proxy adds messages (a statement the backend lacks) or drops answers (to those)
//! does a pump copy into `to_server` / `to_client`. A message too large to buffer streams through.

use super::reads::{batch_len, Batch, BATCH_CAP};
use super::unit::TxStatus;
use super::{Refusal, Session};
use super::in_use;
use crate::frontend::stream::send_all;
use crate::protocol::frame::{self, Target};
use crate::protocol::tag::{client, server};
use crate::protocol::{Frame, Side};
use crate::Error;
use dmf_pgconn::consume;

/// What a pump of the client's messages ended with.
pub(super) enum Pumped {
    /// Everything complete was forwarded; read more from the client.
    ReadMore,
    /// The client said Terminate.
    ClientLeft,
}

/// What one client message asks of the session.
enum Action {
    /// Nothing: forwarded as it is.
    Pass,
    /// Query or Sync: the end of a request, one more ReadyForQuery to come.
    EndsRequest,
    /// FunctionCall: one more ReadyForQuery to come.
    FunctionCall,
    Terminate,
    /// A named Parse: the client makes statement `name` with text `sql`.
    Prepare { name: String, sql: String },
    /// Uses a named statement the backend in use may lack.
    UsesStatement(String),
    /// Closes a named statement.
    CloseStatement(String),
}

impl Session {
    /// What the complete client message `f` asks of the session.
    fn action(&self, f: Frame<'_>) -> Result<Action, Error> {
        Ok(match f.tag {
            client::QUERY => {
                // the server checks the text's encoding; the proxy only needs the frame
                // one NUL, at the end (`contains` on bytes is core's word-at-a-time memchr)
                if f.body.last() != Some(&0) || f.body[..f.body.len() - 1].contains(&0) {
                    return Err(crate::protocol::Error::Malformed { what: "Query" }.into());
                }
                Action::EndsRequest
            }
            client::SYNC => Action::EndsRequest,
            client::FUNCTION_CALL => Action::FunctionCall,
            client::TERMINATE => Action::Terminate,
            client::PARSE => match f.parse()? {
                ("", _) => Action::Pass,
                (name, sql) => Action::Prepare { name: name.to_string(), sql: sql.to_string() },
            },
            client::BIND => match f.bind()? {
                (_, "") => Action::Pass,
                (_, stmt) if self.prepared_here(stmt) => Action::Pass,
                (_, stmt) => Action::UsesStatement(stmt.to_string()),
            },
            client::DESCRIBE => match f.target()? {
                Target::Statement(n) if !n.is_empty() && !self.prepared_here(n) => Action::UsesStatement(n.to_string()),
                _ => Action::Pass,
            },
            client::CLOSE => match f.target()? {
                Target::Statement(n) if !n.is_empty() => Action::CloseStatement(n.to_string()),
                _ => Action::Pass,
            },
            client::EXECUTE => {
                f.execute()?;
                Action::Pass
            }
            _ => Action::Pass,
        })
    }

    /// Forward every complete client message; start a unit (the gate) at each transaction
    /// boundary.
    pub(super) async fn pump_client(&mut self) -> Result<Pumped, Error> {
        self.to_server.clear();
        // once something is injected, `to_server` holds everything to send
        let mut copy = false;
        let mut pos = 0;
        let mut result = Pumped::ReadMore;
        let mut lease_checked = false;
        loop {
            if self.client_body_left > 0 {
                if !pass_streamed(&self.client_buf, &mut pos, &mut self.client_body_left, copy, &mut self.to_server) {
                    break;
                }
                continue;
            }
            let Some(h) = frame::header(&self.client_buf[pos..], Side::Client)? else { break };
            if !self.unit.is_open() {
                // a unit only ends in pump_server: here nothing of this call was consumed yet
                if h.tag == client::TERMINATE {
                    result = Pumped::ClientLeft;
                    break;
                }
                let batch = match self.batch_needed() {
                    false => None,
                    true => match batch_len(&self.client_buf)? {
                        Batch::Complete(n) => Some(n),
                        Batch::Incomplete if self.client_buf.len() < BATCH_CAP => break,
                        Batch::Incomplete | Batch::Unroutable => None,
                    },
                };
                self.begin_unit(batch).await?;
                lease_checked = true;
            } else if self.unit.is_sealed() && (self.unit.on_read() || self.batch_needed()) {
                break;
            } else if !lease_checked {
                lease_checked = true;
                if !self.shared.gate.lease_ok() {
                    self.refuse(Refusal::lease_lost()).await;
                    return Err(Error::LeaseLost);
                }
            }
            let total = 5 + h.len;
            let avail = self.client_buf.len() - pos;
            if avail < total {
                if matches!(h.tag, client::COPY_DATA | client::FUNCTION_CALL) {
                    // large COPY data or a function call: stream it through
                    if h.tag == client::FUNCTION_CALL {
                        self.outstanding += 1;
                    }
                    if copy {
                        self.to_server.extend_from_slice(&self.client_buf[pos..pos + 5]);
                    }
                    pos += 5;
                    self.client_body_left = h.len;
                    continue;
                }
                if total > crate::limits::UNACCOUNTED && self.buffer_lease.as_ref().is_none_or(|l| l.bytes() < total) {
                    // a large message is held whole (its text decides where it goes): from the
                    // budget all sessions share, or not at all
                    self.buffer_lease = None;
                    match crate::limits::BufferLease::take(&self.shared, total) {
                        Some(lease) => self.buffer_lease = Some(lease),
                        None => {
                            let (in_use, cap) = (self.shared.usage.buffered(), self.shared.opts.max_buffer_bytes);
                            self.refuse(Refusal::buffer_full(total, in_use, cap)).await;
                            // let the client finish sending the message, so that it reads the
                            // error instead of a reset connection
                            self.discard_client(total - avail, std::time::Duration::from_secs(5)).await;
                            return Err(Error::BufferFull { message: total, in_use, cap });
                        }
                    }
                }
                self.client_buf.reserve(total - avail);
                break;
            }
            let action = self.action(Frame { tag: h.tag, body: &self.client_buf[pos + 5..pos + total] })?;
            match action {
                Action::Pass => {}
                Action::EndsRequest => {
                    self.outstanding += 1;
                    self.unit.seal();
                }
                Action::FunctionCall => self.outstanding += 1,
                Action::Terminate => {
                    result = Pumped::ClientLeft;
                    break;
                }
                Action::Prepare { name, sql } => {
                    let whole = self.client_buf[pos..pos + total].to_vec();
                    if !copy {
                        self.to_server.extend_from_slice(&self.client_buf[..pos]);
                        copy = true;
                    }
                    self.client_parse(&name, &sql, &whole);
                }
                Action::UsesStatement(name) => {
                    if !copy {
                        self.to_server.extend_from_slice(&self.client_buf[..pos]);
                        copy = true;
                    }
                    self.ensure_prepared(&name);
                }
                Action::CloseStatement(name) => self.client_close(&name),
            }
            if copy {
                self.to_server.extend_from_slice(&self.client_buf[pos..pos + total]);
            }
            pos += total;
        }
        if pos > 0 || !self.to_server.is_empty() {
            let stream = in_use(&mut self.primary, &mut self.read, self.unit.on_read()).parts_mut().0;
            let written = if copy { send_all(stream, &self.to_server).await } else { send_all(stream, &self.client_buf[..pos]).await };
            consume(&mut self.client_buf, pos);
            written?;
        }
        if self.buffer_lease.is_some() && self.client_buf.len() <= crate::limits::UNACCOUNTED {
            // the large message is gone: its memory goes back, and so does its share of the budget
            let rest = self.client_buf.split();
            self.client_buf = bytes::BytesMut::with_capacity(8192);
            self.client_buf.extend_from_slice(&rest);
            self.buffer_lease = None;
        }
        Ok(result)
    }

    /// Forward backend messages to the client; track ReadyForQuery, drop answers to injected
    /// messages, and capture the outcome of a mirrored statement.
    pub(super) async fn pump_server(&mut self) -> Result<(), Error> {
        self.to_client.clear();
        let on_read = self.unit.on_read();
        // after a move the backend's pid is not the one the client was given: the session's own
        // notifications are rewritten to carry the given one (others' pass as they are)
        let own_pid = self.primary.key().0;
        let rewrite_pid = !on_read && own_pid != self.given_pid;
        let mut copy = false;
        let mut pos = 0;
        loop {
            let rbuf = in_use(&mut self.primary, &mut self.read, on_read).parts_mut().1;
            if self.server_body_left > 0 {
                if !pass_streamed(rbuf, &mut pos, &mut self.server_body_left, copy, &mut self.to_client) {
                    break;
                }
                continue;
            }
            let h = match frame::header(&rbuf[pos..], Side::Server) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Err(self.malformed_server(on_read, e).await),
            };
            let total = 5 + h.len;
            let avail = rbuf.len() - pos;
            if avail < total {
                let needed = matches!(h.tag, server::READY_FOR_QUERY | server::ERROR_RESPONSE | server::PARSE_COMPLETE | server::CLOSE_COMPLETE)
                    || (self.capture.is_some() && matches!(h.tag, server::DATA_ROW | server::COMMAND_COMPLETE))
                    || (rewrite_pid && h.tag == server::NOTIFICATION);
                if needed {
                    rbuf.reserve(total - avail);
                    break;
                }
                if copy {
                    self.to_client.extend_from_slice(&rbuf[pos..pos + 5]);
                }
                pos += 5;
                self.server_body_left = h.len;
                continue;
            }
            let body = &rbuf[pos + 5..pos + total];
            let mut unit_done = false;
            match h.tag {
                server::READY_FOR_QUERY => {
                    let status = TxStatus::of(body);
                    unit_done = self.ready_for_query(status);
                }
                server::PARSE_COMPLETE | server::CLOSE_COMPLETE if self.injected_answers > 0 => {
                    self.injected_answers -= 1;
                    if !copy {
                        self.to_client.extend_from_slice(&rbuf[..pos]);
                        copy = true;
                    }
                    pos += total;
                    continue;
                }
                server::ERROR_RESPONSE => {
                    self.injected_answers = 0;
                    if ends_session(body) {
                        self.server_fatal = true;
                    }
                    if let Some(c) = self.capture.as_mut() {
                        c.error(Frame { tag: h.tag, body }.field(b'C').unwrap_or("XX000"));
                    }
                }
                server::COMMAND_COMPLETE => {
                    if let Some(c) = self.capture.as_mut() {
                        c.complete(Frame { tag: h.tag, body }.rows());
                    }
                }
                server::DATA_ROW => {
                    if let Some(c) = self.capture.as_mut() {
                        c.row(body);
                    }
                }
                // the session's own pid and the one it was given trade places: its own notifications
                // carry the given pid, and another process's that has the given pid on this server
                // is not taken for its own
                server::NOTIFICATION if rewrite_pid && matches!(body.get(..4), Some(p) if p == own_pid.to_be_bytes() || p == self.given_pid.to_be_bytes()) => {
                    if !copy {
                        self.to_client.extend_from_slice(&rbuf[..pos]);
                        copy = true;
                    }
                    let shown = if body.get(..4) == Some(&own_pid.to_be_bytes()[..]) { self.given_pid } else { own_pid };
                    self.to_client.extend_from_slice(&rbuf[pos..pos + 5]);
                    self.to_client.extend_from_slice(&shown.to_be_bytes());
                    self.to_client.extend_from_slice(&rbuf[pos + 9..pos + total]);
                    pos += total;
                    continue;
                }
                _ => {}
            }
            if copy {
                let rbuf = in_use(&mut self.primary, &mut self.read, on_read).parts_mut().1;
                self.to_client.extend_from_slice(&rbuf[pos..pos + total]);
                if self.to_client.len() >= 256 * 1024 {
                    send_all(&mut self.client, &self.to_client).await?;
                    self.to_client.clear();
                }
            }
            pos += total;
            if unit_done {
                break;
            }
        }
        let rbuf = in_use(&mut self.primary, &mut self.read, on_read).parts_mut().1;
        let written = if copy { send_all(&mut self.client, &self.to_client).await } else { send_all(&mut self.client, &rbuf[..pos]).await };
        consume(rbuf, pos);
        written?;
        Ok(())
    }
}

impl Session {
    /// The backend in use sent bytes that are not the protocol: the session ends as when a server
    /// hangs up (08006 to the client), not as a client's protocol violation.
    async fn malformed_server(&mut self, on_read: bool, e: crate::protocol::Error) -> Error {
        let be = if on_read { self.read.as_ref().unwrap_or(&self.primary) } else { &self.primary };
        let label = be.endpoint().label();
        self.refuse(Refusal::server_malformed(&label, &e)).await;
        Error::backend(&label, format!("malformed message: {e}"))
    }
}

/// Whether an ErrorResponse body ends the session: its non-localized severity (V, PostgreSQL 9.6
/// and later; else the localized S) is FATAL or PANIC. Read as bytes: a message in another
/// encoding than UTF-8 is still read.
fn ends_session(body: &[u8]) -> bool {
    let (mut v, mut s) = (None, None);
    let mut rest = body;
    while let Some((&kind, r)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = r.iter().position(|&b| b == 0).unwrap_or(r.len());
        match kind {
            b'V' => v = Some(&r[..end]),
            b'S' => s = Some(&r[..end]),
            _ => {}
        }
        rest = r.get(end + 1..).unwrap_or_default();
    }
    matches!(v.or(s), Some(b"FATAL" | b"PANIC"))
}

/// Pass what `buf` holds of a message body being streamed through (`left` bytes still to come):
/// it is forwarded from `buf` itself, or copied to `out` once the pump is copying. False when
/// `buf` has nothing more.
fn pass_streamed(buf: &[u8], pos: &mut usize, left: &mut usize, copy: bool, out: &mut Vec<u8>) -> bool {
    let n = (*left).min(buf.len() - *pos);
    if copy {
        out.extend_from_slice(&buf[*pos..*pos + n]);
    }
    *pos += n;
    *left -= n;
    n > 0
}

#[cfg(test)]
mod tests {
    use super::ends_session;

    #[test]
    fn a_fatal_or_panic_ends_the_session_whatever_the_language_of_its_severity() {
        assert!(ends_session(b"SFATAL\0VFATAL\0C57P01\0Mterminating connection\0\0"));
        assert!(ends_session(b"S\xc9chec\0VPANIC\0C XX000\0\0"), "V wins over a translated S in another encoding");
        assert!(ends_session(b"SFATAL\0C57P01\0\0"), "before 9.6: S");
        assert!(!ends_session(b"SERROR\0VERROR\0C22012\0Mdivision by zero\0\0"));
        assert!(!ends_session(b""));
        assert!(!ends_session(b"VFAT"), "truncated");
    }
}
