//! Replication and COPY-relay connections on dmf's one protocol client (`dmf_pgconn`): on a
//! replication connection (`replication=database`) it creates a logical slot with an exported
//! snapshot and keeps that snapshot alive while the copy runs, or streams a slot; on plain
//! connections it relays COPY data from source to target without decoding rows.
//!
//! tokio-postgres can do neither (no replication connections; rows of a COPY pass one by one
//! through its channels), so these speak the protocol through `dmf_pgconn::Conn`.

use std::time::Duration;

use bytes::Bytes;
use dmf_pgconn::{Conn, ServerError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use dmf_proxy_protocol::startup::Params;
use dmf_proxy_protocol::tag::server;
use dmf_proxy_protocol::{build, frame, Side};

use crate::error::Error;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct ReplConn {
    conn: Conn<Box<dyn Stream>>,
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
/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What the protocol client reports, as this crate's error; a closed connection says which kind.
fn cerr(e: dmf_pgconn::Error) -> Error {
    match e {
        dmf_pgconn::Error::Closed => perr("server closed the replication connection"),
        dmf_pgconn::Error::NoPassword(_) => perr("the server asks for a password and the connection string has none"),
        other => perr(other),
    }
}

impl ReplConn {
    /// A replication connection (`replication=database`).
    pub async fn connect(dsn: &str) -> Result<ReplConn, Error> {
        Self::open(dsn, true, None).await
    }

    /// A plain connection speaking the raw protocol: the copy relay uses it to pass COPY data
    /// from source to target without decoding it.
    pub async fn connect_plain(dsn: &str) -> Result<ReplConn, Error> {
        Self::open(dsn, false, None).await
    }

    /// A replication connection whose session runs with `options` (e.g. `-c TimeZone=UTC`): the
    /// walsender formats streamed values with these settings.
    pub async fn connect_with_options(dsn: &str, options: &str) -> Result<ReplConn, Error> {
        Self::open(dsn, true, Some(options)).await
    }

    async fn open(dsn: &str, replication: bool, options: Option<&str>) -> Result<ReplConn, Error> {
        let (policy, config) = dmf_pgconn::tls::parse(dsn).map_err(perr)?;
        let user = config.get_user().unwrap_or("postgres").to_string();
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let host = config.get_hosts().first().cloned().ok_or_else(|| perr("no host in connection string"))?;
        let (stream, encrypted, unix): (Box<dyn Stream>, bool, bool) = match host {
            tokio_postgres::config::Host::Tcp(h) => {
                let s = dmf_pgconn::tls::connect_tcp(&h, port, CONNECT_TIMEOUT, &policy).await.map_err(|e| match e {
                    dmf_pgconn::Error::Timeout(_) => perr(format!("connect to {h}:{port} timed out")),
                    e => perr(format!("connect to {h}:{port}: {e}")),
                })?;
                let encrypted = s.encrypted();
                (Box::new(s), encrypted, false)
            }
            tokio_postgres::config::Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                (Box::new(tokio::net::UnixStream::connect(&path).await.map_err(|e| perr(format!("{}: {e}", path.display())))?), false, true)
            }
        };
        let mut params = Params::default();
        params.set("user", &user);
        params.set("database", &dbname);
        params.set("application_name", "dmf");
        if replication {
            params.set("replication", "database");
        }
        if let Some(o) = options {
            params.set("options", o);
        }
        // a Unix socket is local: no TLS there, and a password may go as the server asks
        let cleartext_ok = policy.cleartext_ok(encrypted) || unix;
        let conn = Conn::start_checked(stream, &params, config.get_password(), cleartext_ok).await.map_err(cerr)?;
        Ok(ReplConn { conn })
    }

    /// Run one simple query and return its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        self.conn.simple_query(sql).await.map_err(cerr)
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
        target.conn.send(&build::query(copy_in)).await.map_err(cerr)?;
        loop {
            let m = target.conn.read().await.map_err(cerr)?;
            match m.tag {
                server::COPY_IN => break,
                server::ERROR_RESPONSE => {
                    target.drain_until_ready().await;
                    return Err(perr(ServerError::of(&m.body)));
                }
                _ => {}
            }
        }
        self.conn.send(&build::query(copy_out)).await.map_err(cerr)?;

        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(RELAY_QUEUE);
        let reader = self.read_copy_data(tx, cancel, progress);
        let target_stream = target.conn.stream_mut();
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
            target.conn.send(&build::copy_fail("source failed")).await.map_err(cerr)?;
            target.drain_until_ready().await;
            return Err(e);
        }
        self.drain_until_ready().await;
        target.conn.send(&build::copy_done()).await.map_err(cerr)?;
        let mut rows = None;
        let mut failure = None;
        loop {
            let m = target.conn.read().await.map_err(cerr)?;
            match m.tag {
                server::COMMAND_COMPLETE => rows = m.frame().rows().and_then(|n| i64::try_from(n).ok()),
                server::ERROR_RESPONSE => failure = Some(perr(ServerError::of(&m.body))),
                server::READY_FOR_QUERY => break,
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
        let (stream, buf) = self.conn.parts_mut();
        loop {
            // Walk the complete messages at the front of the buffer; runs of CopyData go out as one
            // slice, without copying.
            let mut end = 0usize;
            let mut stop = None;
            loop {
                let rest = &buf[end..];
                let Some(len) = frame_len(rest)? else { break };
                if rest[0] == server::COPY_DATA {
                    messages += 1;
                    bytes += (len - 5) as i64;
                    end += len;
                } else {
                    stop = Some((rest[0], len));
                    break;
                }
            }
            if end > 0 {
                let run = buf.split_to(end).freeze();
                if tx.send(run).await.is_err() {
                    // The writer stopped: its own error is what the caller reports.
                    return Ok((messages, bytes, None));
                }
            }
            match stop {
                // CopyDone: the caller reads it and what follows.
                Some((server::COPY_DONE, _)) => return Ok((messages, bytes, None)),
                Some((server::ERROR_RESPONSE, len)) => {
                    let m = buf.split_to(len);
                    return Ok((messages, bytes, Some(perr(ServerError::of(&m[5..])))));
                }
                // Notices, parameter changes and notifications may arrive mid-COPY: not ours to pass.
                Some((server::COPY_OUT | server::NOTICE_RESPONSE | server::PARAMETER_STATUS | server::NOTIFICATION, len)) => {
                    let _ = buf.split_to(len);
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
            if buf.capacity() - buf.len() < RELAY_READ_MIN {
                buf.reserve(RELAY_READ_RESERVE);
            }
            let n = tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                n = stream.read_buf(buf) => n.map_err(perr)?,
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
        self.conn.send(&build::query(&sql)).await.map_err(cerr)?;
        loop {
            let m = self.conn.read().await.map_err(cerr)?;
            match m.tag {
                server::COPY_BOTH => return Ok(()),
                server::ERROR_RESPONSE => return Err(perr(ServerError::of(&m.body))),
                _ => {}
            }
        }
    }

    /// The next CopyData payload of a replication stream, or None when `wait` passes first.
    pub async fn next_copy_data(&mut self, wait: Duration) -> Result<Option<Bytes>, Error> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(m) = self.conn.take().map_err(cerr)? {
                match m.tag {
                    server::COPY_DATA => return Ok(Some(m.body)),
                    server::ERROR_RESPONSE => return Err(perr(ServerError::of(&m.body))),
                    server::COPY_DONE => return Err(perr("the server ended the replication stream")),
                    _ => continue,
                }
            }
            match tokio::time::timeout_at(deadline, self.conn.fill()).await {
                Err(_) => return Ok(None),
                Ok(n) => n.map_err(cerr)?,
            };
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
        self.conn.send(&build::copy_data(&body)).await.map_err(cerr)
    }

    /// Read and drop messages up to the next ReadyForQuery (the error, if any, was reported by
    /// the caller already).
    async fn drain_until_ready(&mut self) {
        let _ = self.conn.finish_request().await;
    }

    pub async fn close(self) {
        self.conn.terminate().await;
    }
}
