//! One client session: relays messages between the client and its backends and, at each
//! transaction boundary, applies the route. Its parts, one file each:
//! - `pump`: the messages themselves, client to backend and back, without copying when it can;
//! - `unit`: the unit of work and the transaction status, the gate a unit passes (holds, the
//!   lease, route changes);
//! - `statements`: the client's named prepared statements, replayed on a backend that lacks them;
//! - `reads`: which backend a unit runs on when reads are split (read-your-writes), and which
//!   statements are mirrored;
//! - `moving`: moving the session to a new primary with its settings.
//!
//! A "unit" is the work from one transaction boundary to the next (an autocommit statement, an
//! extended-protocol batch up to Sync, or a whole transaction). A session inside a unit is counted
//! in the gate's in-flight count; a hold waits for that count to reach zero.

mod moving;
mod pump;
mod reads;
mod statements;
#[cfg(test)]
mod tests;
mod unit;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::refusal::Refusal;
use super::signal::{Signal, KILL, SHUTDOWN};
use super::stream::{send_all, ClientStream};
use crate::backend::Backend;
use crate::protocol::startup::Params;
use crate::relay::RelayThread;
use crate::router::Route;
use crate::shadow::Capture;
use crate::{CancelTarget, Error, SessionEntry, Shared, SpareBackend};
use pump::Pumped;
use statements::Statements;
use unit::{TxStatus, Unit};

/// Room made for each read from a client or a backend.
const READ_CHUNK: usize = 16 * 1024;

pub struct Session {
    shared: Arc<Shared>,
    /// The relay thread this session runs on (`relay`).
    relay: Arc<RelayThread>,
    id: u64,
    client: ClientStream,
    /// Bytes from the client not yet forwarded.
    client_buf: BytesMut,
    /// The share of `--max-buffer-bytes` a large message in `client_buf` holds.
    buffer_lease: Option<crate::limits::BufferLease>,
    params: Params,
    primary: Backend,
    /// A read-only backend on the read endpoint, once a unit went there.
    read: Option<Backend>,
    route: Arc<Route>,
    route_rx: tokio::sync::watch::Receiver<u64>,
    /// Query, Sync and FunctionCall messages sent and not yet answered by ReadyForQuery.
    outstanding: usize,
    /// The transaction status of the last ReadyForQuery.
    status: TxStatus,
    unit: Unit,
    statements: Statements,
    /// ParseComplete / CloseComplete answers to messages the proxy injected, to drop.
    injected_answers: u32,
    /// Bytes of a client message body still to stream through (a message too large to buffer).
    client_body_left: usize,
    /// Bytes of a server message body still to stream through.
    server_body_left: usize,
    /// A unit ran on the primary that may have written since the session last read its LSN.
    wrote: bool,
    /// The primary's WAL insert position after this session's last write.
    ryw_lsn: u64,
    /// The mirrored statement of this unit, recording the primary's answer.
    capture: Option<Capture>,
    rng: u64,
    cancel: Arc<Mutex<Option<CancelTarget>>>,
    in_tx: Arc<AtomicBool>,
    signal: Arc<Signal>,
    /// Where the control task puts a backend it opened on the next primary the route announced.
    spare: SpareBackend,
    /// The spare, taken by this session while it was parked at the hold and with its state
    /// already restored on it: the release only swaps backends.
    restored: Option<Backend>,
    /// What goes to the backend when the pump adds or drops messages (else the client's bytes go
    /// out from `client_buf` itself).
    to_server: Vec<u8>,
    /// What goes to the client when the pump drops answers (else from the backend's buffer).
    to_client: Vec<u8>,
    /// The server pid the client was given (BackendKeyData): after a move, notifications from
    /// the session's own backend are rewritten to carry it.
    given_pid: i32,
    /// The backend sent the client a FATAL (or PANIC) error: the server is ending the session and
    /// has said why; its closed connection is the client's, with nothing added.
    server_fatal: bool,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(shared: Arc<Shared>, id: u64, client: ClientStream, client_buf: BytesMut, params: Params, primary: Backend, entry: SessionEntry, given_pid: i32) -> Session {
        let route = shared.route();
        let route_rx = shared.gate.subscribe();
        let seed = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
        let relay = shared.relays[entry.thread].clone();
        Session {
            shared,
            relay,
            id,
            client,
            client_buf,
            buffer_lease: None,
            params,
            primary,
            read: None,
            route,
            route_rx,
            outstanding: 0,
            status: TxStatus::Idle,
            unit: Unit::Boundary,
            statements: Statements::default(),
            injected_answers: 0,
            client_body_left: 0,
            server_body_left: 0,
            wrote: false,
            ryw_lsn: 0,
            capture: None,
            rng: seed,
            cancel: entry.cancel,
            in_tx: entry.in_tx,
            signal: entry.signal,
            spare: entry.spare,
            restored: None,
            to_server: Vec::with_capacity(16 * 1024),
            to_client: Vec::with_capacity(16 * 1024),
            given_pid,
            server_fatal: false,
        }
    }

    /// Relay until the client leaves or the session must end. The primary backend comes back,
    /// with the route epoch it was used under, when the client left it idle at a transaction
    /// boundary (for `backend::pool` to reset and keep); otherwise it is closed here.
    pub async fn run(mut self) -> (Result<(), Error>, Option<(Backend, u64)>) {
        let result = self.relay().await;
        if let Err(Error::Protocol(e)) = &result {
            self.refuse(Refusal::protocol(e)).await;
        }
        let reusable = result.is_ok() && self.left_idle();
        if let Some(r) = self.read.take() {
            r.terminate(Duration::from_millis(200)).await;
        }
        if let Some(r) = self.restored.take() {
            r.close();
        }
        if reusable {
            self.client.close(Duration::from_secs(1)).await;
            return (result, Some((self.primary, self.route.epoch)));
        }
        // the unit is left only once its backend is closed: a hold that counts this session
        // drained must not find that backend still able to commit (a reusable session left no
        // unit open); the client's connection is closed after, so that a client that does not
        // read delays neither
        let (open, shared, in_tx) = (self.unit.is_open(), self.shared.clone(), self.in_tx.clone());
        let Session { primary, mut client, .. } = self;
        primary.terminate(Duration::from_millis(200)).await;
        if open {
            unit::left(&in_tx, &shared);
        }
        client.close(Duration::from_secs(1)).await;
        (result, None)
    }

    /// The client left the primary backend idle, between transactions, with nothing half sent or
    /// half read, on the route in force and with the proxy not shutting down.
    fn left_idle(&self) -> bool {
        self.status == TxStatus::Idle
            && !self.unit.is_open()
            && self.outstanding == 0
            && self.injected_answers == 0
            && self.client_body_left == 0
            && self.server_body_left == 0
            && self.primary.drained()
            && self.signal.raised() == 0
            && !self.shared.shutdown.is_cancelled()
            && self.primary.endpoint().dsn == self.route.primary.dsn
            && self.shared.route().epoch == self.route.epoch
    }

    async fn relay(&mut self) -> Result<(), Error> {
        let signal = self.signal.clone();
        loop {
            if let Pumped::ClientLeft = unless_killed(&signal, self.pump_client()).await? {
                return Ok(());
            }
            // a read unit takes nothing more from the client until it is answered; while reads
            // are split or statements mirrored, neither does a sealed unit (the next batch is
            // routed on its own, after this one's ReadyForQuery)
            let blocked = self.unit.is_sealed() && (self.unit.on_read() || self.batch_needed());
            // shutdown ends a session at a boundary; inside a transaction only a kill does
            let stop_on = if self.unit.is_open() { KILL } else { KILL | SHUTDOWN };
            let be = in_use(&mut self.primary, &mut self.read, self.unit.on_read());
            let (endpoint, stream, rbuf) = be.relay_parts();
            // keep reads large: a buffer consumed to its end has no room left
            if rbuf.capacity() - rbuf.len() < 4096 {
                rbuf.reserve(READ_CHUNK);
            }
            if self.client_buf.capacity() - self.client_buf.len() < 4096 {
                self.client_buf.reserve(READ_CHUNK);
            }
            // reads first: a session is woken by its sockets far more often than by a kill
            tokio::select! {
                biased;
                r = stream.read_buf(rbuf) => {
                    self.relay.poll.touch();
                    if r? == 0 {
                        // the client's connection closes as the server's did: with its FATAL
                        // already relayed, or without a word (a killed server process, a lost
                        // network), which the client reports as it would directly
                        return Err(Error::backend(&endpoint.label(), "closed the connection"));
                    }
                    unless_killed(&signal, self.pump_server()).await?;
                    if self.server_fatal {
                        // the server ended the session and said why; its connection closes next
                        return Err(Error::backend(&self.backend().endpoint().label(), "ended the session"));
                    }
                }
                r = self.client.read_buf(&mut self.client_buf), if !blocked => {
                    self.relay.poll.touch();
                    if r? == 0 {
                        return Ok(());
                    }
                }
                bits = signal.wait(stop_on) => {
                    let refusal = if bits & KILL != 0 { Refusal::killed() } else { Refusal::shutting_down() };
                    self.refuse(refusal).await;
                    return Ok(());
                }
                // a large message that stops arriving must not keep its share of the budget (an
                // async block: select! evaluates a disabled branch's expression too, and a timer
                // made per read would cost every session)
                _ = async { tokio::time::sleep(crate::limits::MESSAGE_STALL).await }, if self.buffer_lease.is_some() => {
                    let held = self.buffer_lease.as_ref().map_or(0, |l| l.bytes());
                    self.refuse(Refusal::message_stalled(held, crate::limits::MESSAGE_STALL)).await;
                    return Err(Error::MessageStalled(held));
                }
            }
        }
    }

    /// Tell the client why the proxy ends its session (the caller ends it).
    async fn refuse(&mut self, refusal: Refusal) {
        let _ = tokio::time::timeout(Duration::from_secs(1), send_all(&mut self.client, &refusal.message())).await;
    }

    /// Read and drop up to `bytes` more from the client, for at most `limit`, in small pieces.
    async fn discard_client(&mut self, mut bytes: usize, limit: Duration) {
        let mut sink = vec![0u8; 64 * 1024];
        let drained = async {
            while bytes > 0 {
                match self.client.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => bytes = bytes.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(limit, drained).await;
    }

    /// The backend the unit in progress runs on.
    fn backend_mut(&mut self) -> &mut Backend {
        in_use(&mut self.primary, &mut self.read, self.unit.on_read())
    }

    fn backend(&self) -> &Backend {
        match (self.unit.on_read(), self.read.as_ref()) {
            (true, Some(r)) => r,
            _ => &self.primary,
        }
    }
}

/// Run a pump unless a kill comes while it waits on a socket: a client that stopped reading (or a
/// backend that stopped taking) must not keep a transaction open past the hold deadline. A message
/// written in part cannot be finished, so the session ends without a word: the client sees its
/// connection closed, and the backend's transaction is rolled back when its connection closes.
async fn unless_killed<T>(signal: &Signal, pump: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::select! {
        biased;
        r = pump => r,
        _ = signal.wait(KILL) => Err(Error::Closed("ended at the hold deadline while blocked on a socket".into())),
    }
}

/// The backend a unit runs on: the read backend when it runs there (and one is open), else the
/// primary. A function of the two fields, so that the session's other fields stay free to borrow.
fn in_use<'a>(primary: &'a mut Backend, read: &'a mut Option<Backend>, on_read: bool) -> &'a mut Backend {
    match (on_read, read.as_mut()) {
        (true, Some(r)) => r,
        _ => primary,
    }
}
