//! A minimal raw-protocol connection: on a replication connection (`replication=database`) it
//! creates a logical slot with an exported snapshot and keeps that snapshot alive while the copy
//! runs; on plain connections it relays COPY data from source to target without decoding rows.
//!
//! tokio-postgres can do neither (no replication connections; rows of a COPY pass one by one
//! through its channels), so this speaks the protocol with the postgres-protocol message codecs:
//! startup, authentication (trust, password, MD5, SCRAM-SHA-256), simple queries, COPY relay.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use dmf_proxy_protocol::frame::{self, Side};

use crate::error::Error;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct ReplConn {
    stream: Box<dyn Stream>,
    buf: BytesMut,
}

/// What CREATE_REPLICATION_SLOT returned.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    pub slot: String,
    pub consistent_point: String,
    pub snapshot: String,
}

/// Byte runs in flight between the relay's reader and writer.
const RELAY_QUEUE: usize = 16;
/// Read again only into at least this much free buffer...
const RELAY_READ_MIN: usize = 64 * 1024;
/// ...growing it by this much when it has less.
const RELAY_READ_RESERVE: usize = 512 * 1024;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The length of the whole message (tag, length, body) at the front of `buf`, once all of it is there.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    let header = frame::header(buf, Side::Server).map_err(|e| perr(format!("malformed message from the server: {e}")))?;
    Ok(header.map(|h| 5 + h.len).filter(|&total| buf.len() >= total))
}

fn perr(e: impl std::fmt::Display) -> Error {
    Error::Replication(e.to_string())
}

impl ReplConn {
    /// A replication connection (`replication=database`).
    pub async fn connect(dsn: &str) -> Result<ReplConn, Error> {
        Self::open(dsn, true).await
    }

    /// A plain connection speaking the raw protocol: the copy relay uses it to pass COPY data
    /// from source to target without decoding it.
    pub async fn connect_plain(dsn: &str) -> Result<ReplConn, Error> {
        Self::open(dsn, false).await
    }

    /// A replication connection whose session runs with `options` (e.g. `-c TimeZone=UTC`): the
    /// walsender formats streamed values with these settings.
    pub async fn connect_with_options(dsn: &str, options: &str) -> Result<ReplConn, Error> {
        Self::open_with(dsn, true, Some(options)).await
    }

    async fn open(dsn: &str, replication: bool) -> Result<ReplConn, Error> {
        Self::open_with(dsn, replication, None).await
    }

    async fn open_with(dsn: &str, replication: bool, options: Option<&str>) -> Result<ReplConn, Error> {
        let config: tokio_postgres::Config = dsn.parse().map_err(perr)?;
        let user = config.get_user().unwrap_or("postgres").to_string();
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let host = config.get_hosts().first().cloned().ok_or_else(|| perr("no host in connection string"))?;
        let stream: Box<dyn Stream> = match host {
            tokio_postgres::config::Host::Tcp(h) => {
                let s = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect((h.as_str(), port)))
                    .await
                    .map_err(|_| perr(format!("connect to {h}:{port} timed out")))?
                    .map_err(|e| perr(format!("connect to {h}:{port}: {e}")))?;
                s.set_nodelay(true).map_err(perr)?;
                Box::new(s)
            }
            tokio_postgres::config::Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Box::new(tokio::net::UnixStream::connect(&path).await.map_err(|e| perr(format!("{}: {e}", path.display())))?)
            }
        };
        let mut conn = ReplConn { stream, buf: BytesMut::new() };
        let mut out = BytesMut::new();
        let mut params = vec![("user", user.as_str()), ("database", dbname.as_str()), ("application_name", "dmf")];
        if replication {
            params.push(("replication", "database"));
        }
        if let Some(o) = options {
            params.push(("options", o));
        }
        frontend::startup_message(params, &mut out).map_err(perr)?;
        conn.send(&out).await?;
        let password = config.get_password().map(|p| p.to_vec());
        conn.authenticate(&user, password.as_deref()).await?;
        Ok(conn)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).await.map_err(perr)?;
        self.stream.flush().await.map_err(perr)
    }

    async fn next(&mut self) -> Result<backend::Message, Error> {
        loop {
            if let Some(msg) = backend::Message::parse(&mut self.buf).map_err(perr)? {
                return Ok(msg);
            }
            let n = self.stream.read_buf(&mut self.buf).await.map_err(perr)?;
            if n == 0 {
                return Err(perr("server closed the replication connection"));
            }
        }
    }

    fn server_error(body: &backend::ErrorResponseBody) -> Error {
        perr(fields::describe(body))
    }

    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<(), Error> {
        let need_password = || perr("the server asks for a password and the connection string has none");
        loop {
            match self.next().await? {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    let mut out = BytesMut::new();
                    frontend::password_message(password.ok_or_else(need_password)?, &mut out).map_err(perr)?;
                    self.send(&out).await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(user.as_bytes(), password.ok_or_else(need_password)?, body.salt());
                    let mut out = BytesMut::new();
                    frontend::password_message(hash.as_bytes(), &mut out).map_err(perr)?;
                    self.send(&out).await?;
                }
                backend::Message::AuthenticationSasl(_) => {
                    let mut scram = sasl::ScramSha256::new(password.ok_or_else(need_password)?, sasl::ChannelBinding::unsupported());
                    let mut out = BytesMut::new();
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), &mut out).map_err(perr)?;
                    self.send(&out).await?;
                    match self.next().await? {
                        backend::Message::AuthenticationSaslContinue(body) => scram.update(body.data()).map_err(perr)?,
                        backend::Message::ErrorResponse(body) => return Err(Self::server_error(&body)),
                        _ => return Err(perr("unexpected message during SCRAM")),
                    }
                    let mut out = BytesMut::new();
                    frontend::sasl_response(scram.message(), &mut out).map_err(perr)?;
                    self.send(&out).await?;
                    match self.next().await? {
                        backend::Message::AuthenticationSaslFinal(body) => scram.finish(body.data()).map_err(perr)?,
                        backend::Message::ErrorResponse(body) => return Err(Self::server_error(&body)),
                        _ => return Err(perr("unexpected message during SCRAM")),
                    }
                }
                backend::Message::ErrorResponse(body) => return Err(Self::server_error(&body)),
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ParameterStatus(_) | backend::Message::BackendKeyData(_) | backend::Message::NoticeResponse(_) => {}
                _ => return Err(perr("unsupported authentication request")),
            }
        }
    }

    /// Run one simple query and return its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(perr)?;
        self.send(&out).await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.next().await? {
                backend::Message::DataRow(body) => {
                    rows.push(fields::row_values(&body).map_err(perr)?);
                }
                backend::Message::ErrorResponse(body) => failure = Some(Self::server_error(&body)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// `CREATE_REPLICATION_SLOT name LOGICAL pgoutput (SNAPSHOT 'export')`. The snapshot stays
    /// importable while this connection stays open and idle.
    pub async fn create_slot_with_snapshot(&mut self, slot: &str) -> Result<CreatedSlot, Error> {
        let rows = self
            .simple_query(&format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')", crate::pg::ident(slot)))
            .await?;
        let row = rows.first().ok_or_else(|| perr("CREATE_REPLICATION_SLOT returned no row"))?;
        let col = |i: usize| row.get(i).cloned().flatten().ok_or_else(|| perr("CREATE_REPLICATION_SLOT returned a short row"));
        Ok(CreatedSlot { slot: col(0)?, consistent_point: col(1)?, snapshot: col(2)? })
    }

    /// Relay one COPY: run `copy_out` here (the source) and `copy_in` on `target`, passing the
    /// CopyData messages through verbatim. Reading the source and writing the target run
    /// concurrently (a reader and a writer joined by a small bounded queue of byte runs), so that
    /// neither server waits on the other while dmf moves bytes. `progress(rows, bytes)` is called
    /// about once a second. Returns (rows, bytes); the rows are the server's own count.
    pub async fn relay_copy(
        &mut self,
        copy_out: &str,
        target: &mut ReplConn,
        copy_in: &str,
        cancel: &tokio_util::sync::CancellationToken,
        progress: impl FnMut(i64, i64),
    ) -> Result<(i64, i64), Error> {
        let mut out = BytesMut::new();
        frontend::query(copy_in, &mut out).map_err(perr)?;
        target.send(&out).await?;
        loop {
            match target.next().await? {
                backend::Message::CopyInResponse(_) => break,
                backend::Message::ErrorResponse(body) => {
                    target.drain_until_ready().await;
                    return Err(Self::server_error(&body));
                }
                _ => {}
            }
        }
        out.clear();
        frontend::query(copy_out, &mut out).map_err(perr)?;
        self.send(&out).await?;

        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(RELAY_QUEUE);
        let reader = self.read_copy_data(tx, cancel, progress);
        let target_stream = &mut target.stream;
        let writer = async move {
            while let Some(run) = rx.recv().await {
                target_stream.write_all(&run).await.map_err(perr)?;
            }
            Ok::<(), Error>(())
        };
        let (read, written) = tokio::join!(reader, writer);
        let (messages, bytes, source_error) = read?;
        written?;

        if let Some(e) = source_error {
            self.drain_until_ready().await;
            let mut fail = BytesMut::new();
            frontend::copy_fail("source failed", &mut fail).map_err(perr)?;
            target.send(&fail).await?;
            target.drain_until_ready().await;
            return Err(e);
        }
        self.drain_until_ready().await;
        let mut done = BytesMut::new();
        frontend::copy_done(&mut done);
        target.send(&done).await?;
        let mut rows = None;
        let mut failure = None;
        loop {
            match target.next().await? {
                backend::Message::CommandComplete(body) => {
                    let tag = body.tag().map_err(perr)?;
                    rows = tag.rsplit(' ').next().and_then(|n| n.parse::<i64>().ok());
                }
                backend::Message::ErrorResponse(body) => failure = Some(Self::server_error(&body)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok((rows.unwrap_or(messages), bytes))
    }

    /// The reading half of the relay: hand every run of complete CopyData messages to `tx` as it
    /// arrives, until CopyDone (left in the buffer for the caller) or an error from the source.
    /// Returns (messages, payload bytes, the source's error if it sent one).
    async fn read_copy_data(
        &mut self,
        tx: tokio::sync::mpsc::Sender<Bytes>,
        cancel: &tokio_util::sync::CancellationToken,
        mut progress: impl FnMut(i64, i64),
    ) -> Result<(i64, i64, Option<Error>), Error> {
        let (mut messages, mut bytes) = (0i64, 0i64);
        let mut last = std::time::Instant::now();
        loop {
            // Walk the complete messages at the front of the buffer; runs of CopyData go out as one
            // slice, without copying.
            let mut end = 0usize;
            let mut stop = None;
            loop {
                let rest = &self.buf[end..];
                let Some(len) = frame_len(rest)? else { break };
                if rest[0] == b'd' {
                    messages += 1;
                    bytes += (len - 5) as i64;
                    end += len;
                } else {
                    stop = Some((rest[0], len));
                    break;
                }
            }
            if end > 0 {
                let run = self.buf.split_to(end).freeze();
                if tx.send(run).await.is_err() {
                    // The writer stopped: its own error is what the caller reports.
                    return Ok((messages, bytes, None));
                }
            }
            match stop {
                // CopyDone: the caller reads it and what follows.
                Some((b'c', _)) => return Ok((messages, bytes, None)),
                Some((b'E', len)) => {
                    let mut m = self.buf.split_to(len);
                    let error = match backend::Message::parse(&mut m) {
                        Ok(Some(backend::Message::ErrorResponse(body))) => Self::server_error(&body),
                        _ => perr("the source failed during COPY"),
                    };
                    return Ok((messages, bytes, Some(error)));
                }
                // Notices, parameter changes and notifications may arrive mid-COPY: not ours to pass.
                Some((b'H' | b'N' | b'S' | b'A', len)) => {
                    let _ = self.buf.split_to(len);
                    continue;
                }
                Some((other, _)) => return Err(perr(format!("unexpected message {:?} during COPY", other as char))),
                None => {}
            }
            if last.elapsed() >= Duration::from_secs(1) {
                last = std::time::Instant::now();
                progress(messages, bytes);
            }
            // Read in large pieces: a nearly full buffer would make each read (and each write on
            // the other side) tiny.
            if self.buf.capacity() - self.buf.len() < RELAY_READ_MIN {
                self.buf.reserve(RELAY_READ_RESERVE);
            }
            let n = tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                n = self.stream.read_buf(&mut self.buf) => n.map_err(perr)?,
            };
            if n == 0 {
                return Err(perr("the source closed the connection during COPY"));
            }
        }
    }

    /// `START_REPLICATION` of a pgoutput slot from where it stands, for `publication`; afterwards
    /// `next_copy_data` yields the stream's messages.
    pub async fn start_logical(&mut self, slot: &str, publication: &str) -> Result<(), Error> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names {})",
            crate::pg::ident(slot),
            crate::pg::literal(&crate::pg::ident(publication))
        );
        let mut out = BytesMut::new();
        frontend::query(&sql, &mut out).map_err(perr)?;
        self.send(&out).await?;
        loop {
            let frame = self.next_raw().await?;
            match frame[0] {
                b'W' => return Ok(()),
                b'E' => return Err(Self::raw_error(frame)),
                _ => {}
            }
        }
    }

    /// The next CopyData payload of a replication stream, or None when `wait` passes first.
    pub async fn next_copy_data(&mut self, wait: Duration) -> Result<Option<Bytes>, Error> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = self.take_raw()? {
                match frame[0] {
                    b'd' => return Ok(Some(frame.freeze().split_off(5))),
                    b'E' => return Err(Self::raw_error(frame)),
                    b'c' => return Err(perr("the server ended the replication stream")),
                    _ => continue,
                }
            }
            let n = match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Ok(None),
                Ok(n) => n.map_err(perr)?,
            };
            if n == 0 {
                return Err(perr("server closed the replication connection"));
            }
        }
    }

    /// Standby status update: everything up to `lsn` is flushed, so the slot may move past it.
    pub async fn send_standby_status(&mut self, lsn: u64) -> Result<(), Error> {
        let mut body = Vec::with_capacity(34);
        body.push(b'r');
        for v in [lsn, lsn, lsn] {
            body.extend_from_slice(&v.to_be_bytes());
        }
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64 - PG_EPOCH_OFFSET_US)
            .unwrap_or(0);
        body.extend_from_slice(&now_us.to_be_bytes());
        body.push(0);
        let mut out = BytesMut::new();
        out.extend_from_slice(b"d");
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&body);
        self.send(&out).await
    }

    /// One whole message (tag, length and body) out of the buffer, if there is one.
    fn take_raw(&mut self) -> Result<Option<BytesMut>, Error> {
        Ok(frame_len(&self.buf)?.map(|len| self.buf.split_to(len)))
    }

    async fn next_raw(&mut self) -> Result<BytesMut, Error> {
        loop {
            if let Some(m) = self.take_raw()? {
                return Ok(m);
            }
            let n = self.stream.read_buf(&mut self.buf).await.map_err(perr)?;
            if n == 0 {
                return Err(perr("server closed the replication connection"));
            }
        }
    }

    fn raw_error(mut frame: BytesMut) -> Error {
        match backend::Message::parse(&mut frame) {
            Ok(Some(backend::Message::ErrorResponse(b))) => Self::server_error(&b),
            _ => perr("the server sent an error"),
        }
    }

    /// Read and drop messages up to the next ReadyForQuery.
    async fn drain_until_ready(&mut self) {
        while let Ok(msg) = self.next().await {
            if matches!(msg, backend::Message::ReadyForQuery(_)) {
                break;
            }
        }
    }

    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.send(&out).await;
    }
}

/// Reading postgres-protocol's fallible iterators.
mod fields {
    use fallible_iterator::FallibleIterator;
    use postgres_protocol::message::backend::{DataRowBody, ErrorResponseBody};

    pub fn describe(body: &ErrorResponseBody) -> String {
        let mut fields = body.fields();
        let (mut severity, mut message, mut code) = (String::new(), String::new(), String::new());
        while let Ok(Some(f)) = fields.next() {
            let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
            match f.type_() {
                b'S' => severity = value,
                b'M' => message = value,
                b'C' => code = value,
                _ => {}
            }
        }
        format!("{severity}: {message} ({code})")
    }

    pub fn row_values(body: &DataRowBody) -> std::io::Result<Vec<Option<String>>> {
        let mut ranges = body.ranges();
        let buf = body.buffer();
        let mut out = Vec::new();
        while let Some(r) = ranges.next()? {
            out.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
        }
        Ok(out)
    }
}
