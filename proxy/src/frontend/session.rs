//! One client session: relays messages between the client and its backends, tracks transaction
//! state from ReadyForQuery, and at each transaction boundary applies the route: holds, moves to
//! a new primary (settings and prepared statements follow), read routing with read-your-writes,
//! and the choice of statements to mirror.
//!
//! A "unit" is the work from one transaction boundary to the next (an autocommit statement, an
//! extended-protocol batch up to Sync, or a whole transaction). A session inside a unit is counted
//! in `Shared::inflight`; a hold waits for that count to reach zero.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::signal::{Signal, KILL, SHUTDOWN};
use super::stream::{send_all, ClientStream};
use crate::backend::{consume, Backend};
use crate::relay::RelayThread;
use crate::metrics::{add, sub};
use crate::protocol::frame::{self, Target};
use crate::protocol::startup::Params;
use crate::protocol::{build, Frame, Side};
use crate::router::classify::Class;
use crate::router::{Mode, Route};
use crate::shadow::{Capture, MirrorSpec};
use crate::{lock, CancelTarget, Error, SessionEntry, Shared, SpareBackend};

const SESSION_STATE_SQL: &str = include_str!("session_state.sql");
/// A batch bigger than this is not classified: it runs on the primary and is not mirrored.
const BATCH_CAP: usize = 256 * 1024;
/// Room made for each read from a client or a backend.
const READ_CHUNK: usize = 16 * 1024;

/// A named prepared statement as the client made it.
struct Statement {
    generation: u64,
    /// The client's whole Parse message, replayed on a backend that lacks it.
    parse: Vec<u8>,
    sql: String,
}

/// What one client message asks of the session.
enum Action {
    None,
    /// Query or Sync: one more ReadyForQuery to come, and the end of a batch.
    Sync,
    /// FunctionCall: one more ReadyForQuery to come.
    Outstanding,
    Terminate,
    /// A named Parse.
    Parse(String, String),
    /// Uses a named statement the backend may lack.
    Use(String),
    /// Closes a named statement.
    Close(String),
}

enum Pump {
    /// Everything complete was forwarded; read more.
    More,
    /// The client said Terminate.
    Terminate,
}

/// What the batch at the head of the client buffer is.
enum Batch {
    /// Complete, `len` bytes: one Query, or extended messages up to and including Sync.
    Complete(usize),
    Incomplete,
    /// Contains messages the proxy does not route (COPY data, function calls, Terminate).
    Unroutable,
}

/// One statement of a batch: its text, and for the extended protocol the Parse and Bind that run
/// it (what a mirror replays).
struct BatchStatement {
    sql: String,
    parse: Option<Vec<u8>>,
    bind: Option<Vec<u8>>,
    /// It runs (Query, or Bind): a Parse alone only prepares.
    runs: bool,
}

/// State a session holds on its backend (see `session_state.sql`).
#[derive(Debug, Default, serde::Deserialize)]
struct HeldState {
    temp_tables: i64,
    advisory_locks: i64,
    listen: i64,
    hold_cursors: i64,
    settings: Vec<(String, String)>,
    prepared: Vec<String>,
}

impl HeldState {
    fn unmovable(&self) -> Option<String> {
        let parts: Vec<String> = [
            (self.temp_tables, "temporary table"),
            (self.advisory_locks, "session advisory lock"),
            (self.listen, "LISTEN channel"),
            (self.hold_cursors, "WITH HOLD cursor"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}{}", if *n == 1 { "" } else { "s" }))
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

pub struct Session {
    shared: Arc<Shared>,
    /// The relay thread this session runs on (`relay`).
    relay: Arc<RelayThread>,
    id: u64,
    client: ClientStream,
    cbuf: Vec<u8>,
    params: Params,
    primary: Backend,
    read: Option<Backend>,
    /// The unit in progress runs on the read backend.
    on_read: bool,
    route: Arc<Route>,
    route_rx: tokio::sync::watch::Receiver<u64>,
    /// Query and Sync messages sent and not yet answered by ReadyForQuery.
    outstanding: usize,
    /// Last ReadyForQuery status: I (idle), T (transaction), E (failed transaction).
    status: u8,
    in_unit: bool,
    /// The unit's terminating Query/Sync was forwarded (a read unit takes nothing after it).
    unit_sealed: bool,
    unit_read_only: bool,
    statements: HashMap<String, Statement>,
    next_generation: u64,
    /// ParseComplete / CloseComplete answers to messages the proxy injected, to drop.
    swallow: u32,
    client_skip: usize,
    server_skip: usize,
    /// A unit ran on the primary that may have written since the session last read its LSN.
    wrote: bool,
    /// The primary's WAL insert position after this session's last write.
    ryw_lsn: u64,
    capture: Option<Capture>,
    rng: u64,
    cancel: Arc<Mutex<Option<CancelTarget>>>,
    in_tx: Arc<AtomicBool>,
    signal: Arc<Signal>,
    /// A backend on the next primary, opened when the route announced it (see `router::control`).
    spare: SpareBackend,
    /// The spare, with this session's state already restored on it while the session was parked
    /// at the hold: the release only swaps backends.
    ready: Option<Backend>,
    out: Vec<u8>,
    sout: Vec<u8>,
}

impl Session {
    pub fn new(shared: Arc<Shared>, id: u64, client: ClientStream, cbuf: Vec<u8>, params: Params, primary: Backend, entry: SessionEntry) -> Session {
        let route = shared.route();
        let route_rx = shared.route_tx.subscribe();
        let seed = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
        let relay = shared.relays[entry.thread].clone();
        Session {
            shared,
            relay,
            id,
            client,
            cbuf,
            params,
            primary,
            read: None,
            on_read: false,
            route,
            route_rx,
            outstanding: 0,
            status: b'I',
            in_unit: false,
            unit_sealed: false,
            unit_read_only: false,
            statements: HashMap::new(),
            next_generation: 1,
            swallow: 0,
            client_skip: 0,
            server_skip: 0,
            wrote: false,
            ryw_lsn: 0,
            capture: None,
            rng: seed,
            cancel: entry.cancel,
            in_tx: entry.in_tx,
            signal: entry.signal,
            spare: entry.spare,
            ready: None,
            out: Vec::with_capacity(16 * 1024),
            sout: Vec::with_capacity(16 * 1024),
        }
    }

    /// Relay until the client leaves or the session must end. The primary backend comes back,
    /// with the route epoch it was used under, when the client left it idle at a transaction
    /// boundary (for `backend::pool` to reset and keep); otherwise it is closed here.
    pub async fn run(mut self) -> (Result<(), Error>, Option<(Backend, u64)>) {
        let result = self.relay().await;
        if let Err(Error::Protocol(e)) = &result {
            let message = format!("dmf proxy: {e}");
            self.fatal("08P01", &message).await;
        }
        let reusable = result.is_ok() && self.left_idle();
        if self.in_unit {
            self.leave_unit();
        }
        let bye = build::terminate();
        if let Some(r) = self.read.as_mut() {
            let _ = tokio::time::timeout(Duration::from_millis(200), r.stream.write_all(&bye)).await;
        }
        if let Some(r) = self.ready.take() {
            r.close();
        }
        if reusable {
            return (result, Some((self.primary, self.route.epoch)));
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), self.primary.stream.write_all(&bye)).await;
        (result, None)
    }

    /// The client left the primary backend idle, between transactions, with nothing half sent or
    /// half read, on the route in force and with the proxy not shutting down.
    fn left_idle(&self) -> bool {
        self.status == b'I'
            && !self.in_unit
            && self.outstanding == 0
            && self.swallow == 0
            && self.client_skip == 0
            && self.server_skip == 0
            && self.primary.rbuf.is_empty()
            && self.signal.raised() == 0
            && !self.shared.shutdown.is_cancelled()
            && self.primary.endpoint.dsn == self.route.primary.dsn
            && self.shared.route().epoch == self.route.epoch
    }

    async fn relay(&mut self) -> Result<(), Error> {
        let signal = self.signal.clone();
        loop {
            if let Pump::Terminate = self.pump_client().await? {
                return Ok(());
            }
            // a read unit takes nothing more from the client until it is answered; while reads
            // are split or statements mirrored, neither does a sealed unit (the next batch is
            // routed on its own, after this one's ReadyForQuery)
            let blocked = self.unit_sealed && (self.on_read || self.batch_needed());
            // shutdown ends a session at a boundary; inside a transaction only a kill does
            let stop_on = if self.in_unit { KILL } else { KILL | SHUTDOWN };
            let be: &mut Backend = match (self.on_read, self.read.as_mut()) {
                (true, Some(r)) => r,
                _ => &mut self.primary,
            };
            // keep reads large: a buffer consumed to its end has no room left
            if be.rbuf.capacity() - be.rbuf.len() < 4096 {
                be.rbuf.reserve(READ_CHUNK);
            }
            if self.cbuf.capacity() - self.cbuf.len() < 4096 {
                self.cbuf.reserve(READ_CHUNK);
            }
            // reads first: a session is woken by its sockets far more often than by a kill
            tokio::select! {
                biased;
                r = be.stream.read_buf(&mut be.rbuf) => {
                    self.relay.poll.touch();
                    if r? == 0 {
                        let label = be.endpoint.label();
                        self.fatal("08006", &format!("dmf proxy: the server {label} closed the connection")).await;
                        return Err(Error::backend(&label, "closed the connection"));
                    }
                    self.pump_server().await?;
                }
                r = self.client.read_buf(&mut self.cbuf), if !blocked => {
                    self.relay.poll.touch();
                    if r? == 0 {
                        return Ok(());
                    }
                }
                bits = signal.wait(stop_on) => {
                    if bits & KILL != 0 {
                        self.fatal("57P01", "dmf proxy: session ended (a hold deadline passed or the proxy is shutting down)").await;
                    } else {
                        self.fatal("57P01", "dmf proxy: shutting down; reconnect").await;
                    }
                    return Ok(());
                }
            }
        }
    }

    async fn fatal(&mut self, code: &str, message: &str) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.write_all(&build::error("FATAL", code, message))).await;
    }

    fn backend_mut(&mut self) -> &mut Backend {
        match (self.on_read, self.read.as_mut()) {
            (true, Some(r)) => r,
            _ => &mut self.primary,
        }
    }

    /// Forward every complete client message; start a unit (gate) at each transaction boundary.
    /// Bytes go out straight from the client buffer unless the proxy injects messages.
    async fn pump_client(&mut self) -> Result<Pump, Error> {
        self.out.clear();
        // once something is injected, `out` holds everything to send
        let mut copy = false;
        let mut pos = 0;
        let mut result = Pump::More;
        let mut lease_checked = false;
        loop {
            if self.client_skip > 0 {
                if !pass_streamed(&self.cbuf, &mut pos, &mut self.client_skip, copy, &mut self.out) {
                    break;
                }
                continue;
            }
            let Some(h) = frame::header(&self.cbuf[pos..], Side::Client)? else { break };
            if !self.in_unit {
                // a unit only ends in pump_server: here nothing of this call was consumed yet
                if h.tag == b'X' {
                    result = Pump::Terminate;
                    break;
                }
                let batch = match self.batch_needed() {
                    false => None,
                    true => match batch_len(&self.cbuf)? {
                        Batch::Complete(n) => Some(n),
                        Batch::Incomplete if self.cbuf.len() < BATCH_CAP => break,
                        Batch::Incomplete | Batch::Unroutable => None,
                    },
                };
                self.begin_unit(batch).await?;
                lease_checked = true;
            } else if self.unit_sealed && (self.on_read || self.batch_needed()) {
                break;
            } else if !lease_checked {
                lease_checked = true;
                if !self.shared.lease_ok() {
                    self.fatal("57P03", "dmf proxy: the control plane has been unreachable for longer than the lease; the transaction was ended and nothing more is sent").await;
                    return Err(Error::LeaseLost);
                }
            }
            let total = 5 + h.len;
            let avail = self.cbuf.len() - pos;
            if avail < total {
                if matches!(h.tag, b'd' | b'F') {
                    // large COPY data or a function call: stream it through
                    if h.tag == b'F' {
                        self.outstanding += 1;
                    }
                    if copy {
                        self.out.extend_from_slice(&self.cbuf[pos..pos + 5]);
                    }
                    pos += 5;
                    self.client_skip = h.len;
                    continue;
                }
                self.cbuf.reserve(total - avail);
                break;
            }
            let action = {
                let f = Frame { tag: h.tag, body: &self.cbuf[pos + 5..pos + total] };
                match h.tag {
                    b'Q' => {
                        // the server checks the text's encoding; the proxy only needs the frame
                        // one NUL, at the end (`contains` on bytes is core's word-at-a-time memchr)
                        if f.body.last() != Some(&0) || f.body[..f.body.len() - 1].contains(&0) {
                            return Err(crate::protocol::Error::Malformed { what: "Query" }.into());
                        }
                        Action::Sync
                    }
                    b'S' => Action::Sync,
                    b'F' => Action::Outstanding,
                    b'X' => Action::Terminate,
                    b'P' => match f.parse()? {
                        ("", _) => Action::None,
                        (name, sql) => Action::Parse(name.to_string(), sql.to_string()),
                    },
                    b'B' => match f.bind()? {
                        (_, "") => Action::None,
                        (_, stmt) if self.prepared_here(stmt) => Action::None,
                        (_, stmt) => Action::Use(stmt.to_string()),
                    },
                    b'D' => match f.target()? {
                        Target::Statement(n) if !n.is_empty() && !self.prepared_here(n) => Action::Use(n.to_string()),
                        _ => Action::None,
                    },
                    b'C' => match f.target()? {
                        Target::Statement(n) if !n.is_empty() => Action::Close(n.to_string()),
                        _ => Action::None,
                    },
                    b'E' => {
                        f.execute()?;
                        Action::None
                    }
                    _ => Action::None,
                }
            };
            match action {
                Action::None => {}
                Action::Sync => {
                    self.outstanding += 1;
                    self.unit_sealed = true;
                }
                Action::Outstanding => self.outstanding += 1,
                Action::Terminate => {
                    result = Pump::Terminate;
                    break;
                }
                Action::Parse(name, sql) => {
                    let whole = self.cbuf[pos..pos + total].to_vec();
                    if !copy {
                        self.out.extend_from_slice(&self.cbuf[..pos]);
                        copy = true;
                    }
                    self.client_parse(&name, &sql, &whole);
                }
                Action::Use(name) => {
                    if !copy {
                        self.out.extend_from_slice(&self.cbuf[..pos]);
                        copy = true;
                    }
                    self.ensure_prepared(&name);
                }
                Action::Close(name) => {
                    self.statements.remove(&name);
                    self.backend_mut().prepared.remove(&name);
                }
            }
            if copy {
                self.out.extend_from_slice(&self.cbuf[pos..pos + total]);
            }
            pos += total;
        }
        if pos > 0 || !self.out.is_empty() {
            let be = match (self.on_read, self.read.as_mut()) {
                (true, Some(r)) => r,
                _ => &mut self.primary,
            };
            let written = if copy { send_all(&mut be.stream, &self.out).await } else { send_all(&mut be.stream, &self.cbuf[..pos]).await };
            consume(&mut self.cbuf, pos);
            written?;
        }
        Ok(result)
    }

    /// The backend in use already has the client's current version of this statement.
    fn prepared_here(&self, name: &str) -> bool {
        let be = match (self.on_read, self.read.as_ref()) {
            (true, Some(r)) => r,
            _ => &self.primary,
        };
        match (self.statements.get(name), be.prepared.get(name)) {
            (Some(st), Some(g)) => st.generation == *g,
            // unknown to the client: nothing to inject, the server answers
            (None, _) => true,
            (Some(_), None) => false,
        }
    }


    /// The client made a named statement: remember it; a backend holding a stale statement of
    /// that name (closed by the client while the session was elsewhere) gets a Close first.
    fn client_parse(&mut self, name: &str, sql: &str, bytes: &[u8]) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let client_had = self.statements.contains_key(name);
        self.statements.insert(name.to_string(), Statement { generation, parse: bytes.to_vec(), sql: sql.to_string() });
        let stale = !client_had && self.backend_mut().prepared.contains_key(name);
        if stale {
            self.out.extend_from_slice(&build::close_statement(name));
            self.swallow += 1;
        }
        self.backend_mut().prepared.insert(name.to_string(), generation);
    }

    /// Before a message that uses a named statement: make sure this backend has the client's
    /// current version of it (after a move, or on the read backend).
    fn ensure_prepared(&mut self, name: &str) {
        let Some(st) = self.statements.get(name) else { return };
        let (generation, parse) = (st.generation, st.parse.clone());
        let be = self.backend_mut();
        let have = be.prepared.get(name).copied();
        if have == Some(generation) {
            return;
        }
        be.prepared.insert(name.to_string(), generation);
        if have.is_some() {
            self.out.extend_from_slice(&build::close_statement(name));
            self.swallow += 1;
        }
        self.out.extend_from_slice(&parse);
        self.swallow += 1;
    }

    fn batch_needed(&self) -> bool {
        self.route.mode == Mode::SplitReads || (self.route.shadow.is_some() && self.route.shadow_fraction > 0.0)
    }

    /// Start a unit: wait out holds, follow route changes, pick the backend, maybe mirror.
    async fn begin_unit(&mut self, batch: Option<usize>) -> Result<(), Error> {
        self.gate().await?;
        self.unit_sealed = false;
        self.unit_read_only = false;
        self.on_read = false;
        let Some(len) = batch else { return Ok(()) };
        let bytes = self.cbuf[..len].to_vec();
        let stmts = self.batch_statements(&bytes)?;
        let route = self.route.clone();
        if route.mode == Mode::SplitReads && !stmts.is_empty() {
            let read_only = stmts.iter().all(|s| self.shared.classify(&s.sql) == Class::Read);
            self.unit_read_only = read_only;
            if read_only {
                self.on_read = self.read_allowed().await?;
                let counter = if self.on_read { &self.shared.metrics.reads_to_read_endpoint } else { &self.shared.metrics.reads_to_primary };
                add(counter, 1);
            }
        }
        if let (Some(_), [s]) = (&route.shadow, stmts.as_slice()) {
            if s.runs && self.roll() < route.shadow_fraction {
                let class = self.shared.classify(&s.sql);
                if matches!(class, Class::Read | Class::Write) {
                    let spec = MirrorSpec::new(self.params.get("user").unwrap_or_default(), &s.sql, class, s.parse.as_deref(), s.bind.as_deref());
                    self.capture = Some(Capture::new(spec));
                }
            }
        }
        Ok(())
    }

    /// The statements a complete batch runs: SQL text, and for the extended protocol the Parse
    /// and Bind messages (to mirror it). A Query with several statements is one text.
    fn batch_statements(&self, bytes: &[u8]) -> Result<Vec<BatchStatement>, Error> {
        let mut out = Vec::new();
        let mut unnamed: Option<(String, Vec<u8>)> = None;
        let mut pos = 0;
        while let Some(h) = frame::header(&bytes[pos..], Side::Client)? {
            let end = pos + 5 + h.len;
            let whole = &bytes[pos..end];
            let f = Frame { tag: h.tag, body: &whole[5..] };
            match h.tag {
                b'Q' => out.push(BatchStatement { sql: f.query()?.to_string(), parse: None, bind: None, runs: true }),
                b'P' => {
                    let (name, sql) = f.parse()?;
                    if name.is_empty() {
                        unnamed = Some((sql.to_string(), whole.to_vec()));
                    } else if !out.iter().any(|s| s.sql == sql) {
                        // a named Parse alone (PQprepare) still has to be routed: classify it
                        out.push(BatchStatement { sql: sql.to_string(), parse: None, bind: None, runs: false });
                    }
                }
                b'B' => {
                    let (_, stmt) = f.bind()?;
                    let found = if stmt.is_empty() {
                        unnamed.clone()
                    } else {
                        self.statements.get(stmt).map(|s| (s.sql.clone(), s.parse.clone()))
                            .or_else(|| named_in_batch(bytes, stmt))
                    };
                    match found {
                        Some((sql, parse)) => {
                            out.retain(|s| s.runs || s.sql != sql);
                            out.push(BatchStatement { sql, parse: Some(parse), bind: Some(whole.to_vec()), runs: true });
                        }
                        // unknown statement: the server will say so; route to the primary
                        None => out.push(BatchStatement { sql: String::new(), parse: None, bind: None, runs: false }),
                    }
                }
                _ => {}
            }
            pos = end;
            if pos >= bytes.len() {
                break;
            }
        }
        Ok(out)
    }

    fn roll(&mut self) -> f64 {
        // xorshift64*: cheap, per session, good enough to pick a fraction of statements
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Read-your-writes, and a read backend to use: may this read unit go to the read endpoint?
    async fn read_allowed(&mut self) -> Result<bool, Error> {
        if self.wrote {
            let rows = self.primary.simple_query("SELECT pg_current_wal_insert_lsn()::text").await?;
            self.ryw_lsn = rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|t| crate::protocol::lsn::parse(&t)).unwrap_or(u64::MAX);
            self.wrote = false;
        }
        if self.ryw_lsn > 0 && self.shared.read_applied_lsn.load(Ordering::Acquire) < self.ryw_lsn {
            return Ok(false);
        }
        if self.read.as_ref().is_some_and(|r| r.endpoint.dsn != self.route.read.dsn) {
            self.read = None;
        }
        if self.read.is_none() {
            match self.open_read().await {
                Ok(r) => self.read = Some(r),
                Err(e) => {
                    tracing::warn!(cluster = %self.shared.opts.cluster, session = self.id, read = %self.route.read.label(), error = %e, "read endpoint unavailable; reading from the primary");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// A read-only backend on the read endpoint carrying this session's settings.
    async fn open_read(&mut self) -> Result<Backend, Error> {
        let state = self.held_state().await?;
        let mut r = super::connect_as(self.route.read.clone(), &self.shared, &self.params, true).await?;
        replay(&mut r, &state).await?;
        Ok(r)
    }

    async fn held_state(&mut self) -> Result<HeldState, Error> {
        let rows = self.primary.simple_query(SESSION_STATE_SQL).await?;
        let text = rows.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();
        serde_json::from_str(&text).map_err(|e| Error::backend(&self.primary.endpoint.label(), format!("session state: {e}")))
    }

    /// Wait while traffic is held or the lease is lost; then enter the unit and follow the route.
    async fn gate(&mut self) -> Result<(), Error> {
        // Fast path: the route did not change, nothing is held, the lease holds. One atomic
        // increment and two loads per transaction.
        if !self.route_rx.has_changed().unwrap_or(true) && !self.route.hold && self.shared.lease_ok() {
            self.shared.inflight.fetch_add(1, Ordering::SeqCst);
            if !self.shared.hold.load(Ordering::SeqCst) {
                self.in_unit = true;
                self.in_tx.store(true, Ordering::Relaxed);
                return Ok(());
            }
            self.shared.inflight.fetch_sub(1, Ordering::SeqCst);
        }
        let mut held_since: Option<Instant> = None;
        let shared = self.shared.clone();
        let route = loop {
            self.route_rx.borrow_and_update();
            let route = shared.route();
            if shared.lease_ok() && !route.hold {
                // count ourselves in flight, then look at the hold flag: a hold that starts now
                // either sees us in `inflight` or we see it here
                shared.inflight.fetch_add(1, Ordering::SeqCst);
                if !shared.hold.load(Ordering::SeqCst) {
                    break route;
                }
                shared.inflight.fetch_sub(1, Ordering::SeqCst);
            }
            let since = *held_since.get_or_insert_with(|| {
                add(&shared.metrics.held_now, 1);
                add(&shared.metrics.held_total, 1);
                Instant::now()
            });
            let Some(left) = shared.opts.hold_timeout.checked_sub(since.elapsed()) else {
                sub(&shared.metrics.held_now, 1);
                add(&shared.metrics.hold_time_us_total, since.elapsed().as_micros() as u64);
                let why = if shared.lease_ok() { "traffic is held" } else { "the control plane is unreachable" };
                self.fatal("57P03", &format!("dmf proxy: {why} for longer than {:?}; reconnect later", shared.opts.hold_timeout)).await;
                return Err(Error::HeldTooLong(shared.opts.hold_timeout));
            };
            if self.ready.is_none() && route.hold {
                self.prepare_move(&route).await;
            }
            tokio::select! {
                _ = self.route_rx.changed() => {}
                _ = tokio::time::sleep(left.min(Duration::from_millis(2))) => {}
                _ = self.signal.wait(KILL | SHUTDOWN) => {
                    sub(&shared.metrics.held_now, 1);
                    return Err(Error::Closed("ended while held".into()));
                }
            }
        };
        if let Some(since) = held_since {
            sub(&shared.metrics.held_now, 1);
            add(&shared.metrics.hold_time_us_total, since.elapsed().as_micros() as u64);
        }
        self.in_unit = true;
        self.in_tx.store(true, Ordering::SeqCst);
        if route.epoch != self.route.epoch {
            self.follow(route).await?;
        }
        Ok(())
    }

    fn leave_unit(&mut self) {
        self.in_unit = false;
        self.in_tx.store(false, Ordering::SeqCst);
        self.shared.inflight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Apply a new route epoch at a boundary: move to a new primary, drop a stale read backend.
    async fn follow(&mut self, route: Arc<Route>) -> Result<(), Error> {
        let previous = std::mem::replace(&mut self.route, route);
        if previous.mode != Mode::SplitReads && self.route.mode == Mode::SplitReads {
            // whatever this session wrote before reads were split must be visible to its reads
            self.wrote = true;
        }
        if self.read.as_ref().is_some_and(|r| r.endpoint.dsn != self.route.read.dsn) || self.route.mode != Mode::SplitReads {
            if let Some(mut r) = self.read.take() {
                let _ = r.stream.write_all(&build::terminate()).await;
            }
        }
        if self.primary.endpoint.dsn != self.route.primary.dsn {
            self.move_primary().await?;
        }
        // a backend prepared for a move that did not happen (the flip was undone) is closed
        if let Some(mut r) = self.ready.take() {
            let _ = tokio::time::timeout(Duration::from_millis(100), r.stream.write_all(&build::terminate())).await;
        }
        Ok(())
    }

    /// A spare backend, on this session's relay thread: spares are opened by the control task,
    /// which runs on thread 0. None (and a warning) if its socket cannot move.
    fn adopt(&self, b: Backend) -> Option<Backend> {
        b.rehome(0, self.relay.index)
            .map_err(|e| tracing::warn!(cluster = %self.shared.opts.cluster, session = self.id, error = %e, "backend opened ahead of the move closed; the move opens another"))
            .ok()
    }

    /// Parked at a hold that announces the next primary: once the proxy has opened this session's
    /// backend there, check the session's state and restore it on that backend now. The session
    /// is parked at a transaction boundary, so its state cannot change before the release.
    async fn prepare_move(&mut self, route: &Route) {
        let Some(next) = route.next_primary.as_ref().filter(|n| n.dsn != self.primary.endpoint.dsn) else { return };
        let Some(b) = lock(&self.spare).take_if(|b| b.endpoint.dsn == next.dsn) else { return };
        let Some(mut b) = self.adopt(b) else { return };
        match self.held_state().await {
            Ok(state) if state.unmovable().is_none() => match replay(&mut b, &state).await {
                Ok(()) => self.ready = Some(b),
                Err(e) => tracing::debug!(cluster = %self.shared.opts.cluster, session = self.id, to = %next.label(), error = %e, "backend opened ahead is unusable; the move opens another"),
            },
            // the move itself reports (and closes the session)
            _ => {}
        }
    }

    /// Move the session to the route's primary: check it holds nothing that cannot move, open the
    /// new backend, replay settings and SQL-level prepared statements. Protocol-level prepared
    /// statements follow lazily (`ensure_prepared`).
    async fn move_primary(&mut self) -> Result<(), Error> {
        let cluster = self.shared.opts.cluster.clone();
        let from = self.primary.endpoint.label();
        let to = self.route.primary.label();
        if let Some(ready) = self.ready.take().filter(|b| b.endpoint.dsn == self.route.primary.dsn) {
            self.swap_primary(ready).await;
            tracing::debug!(cluster = %cluster, session = self.id, from = %from, to = %to, "session moved onto the backend prepared during the hold");
            return Ok(());
        }
        let state = match self.held_state().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(cluster = %cluster, session = self.id, from = %from, error = %e, "old primary did not report the session's state; moving without settings");
                HeldState::default()
            }
        };
        if let Some(what) = state.unmovable() {
            add(&self.shared.metrics.sessions_closed_unmovable, 1);
            tracing::info!(cluster = %cluster, session = self.id, from = %from, to = %to, holds = %what, "session closed at the move: its state cannot move");
            self.fatal("57P01", &format!("dmf proxy: the database moved to {to}; this session held state that cannot move ({what}) and was closed; reconnect")).await;
            return Err(Error::Closed(format!("holds state that cannot move to {to}: {what}")));
        }
        // a backend opened ahead of the move saves the connection on the critical path
        let spare = lock(&self.spare).take().filter(|b| b.endpoint.dsn == self.route.primary.dsn).and_then(|b| self.adopt(b));
        let mut next = match spare {
            Some(mut b) => match replay(&mut b, &state).await {
                Ok(()) => Some(b),
                Err(e) => {
                    tracing::debug!(cluster = %cluster, session = self.id, to = %to, error = %e, "backend opened ahead is unusable; opening another");
                    None
                }
            },
            None => None,
        };
        if next.is_none() {
            let mut b = match super::connect_as(self.route.primary.clone(), &self.shared, &self.params, false).await {
                Ok(b) => b,
                Err(e) => {
                    self.fatal("08006", &format!("dmf proxy: cannot reach the new primary {to}: {e}")).await;
                    return Err(e);
                }
            };
            if let Err(e) = replay(&mut b, &state).await {
                self.fatal("08006", &format!("dmf proxy: could not restore this session on {to}: {e}")).await;
                return Err(e);
            }
            next = Some(b);
        }
        let Some(next) = next else { return Err(Error::Closed(format!("no backend on {to}"))) };
        self.swap_primary(next).await;
        tracing::debug!(cluster = %cluster, session = self.id, from = %from, to = %to, settings = state.settings.len(), "session moved");
        Ok(())
    }

    /// Make `next` the session's primary backend and close the old one.
    async fn swap_primary(&mut self, next: Backend) {
        let mut old = std::mem::replace(&mut self.primary, next);
        let _ = tokio::time::timeout(Duration::from_millis(100), old.stream.write_all(&build::terminate())).await;
        *lock(&self.cancel) = Some(CancelTarget { host: self.primary.endpoint.host.clone(), port: self.primary.endpoint.port, pid: self.primary.pid, secret: self.primary.secret });
        add(&self.shared.metrics.sessions_moved, 1);
    }

    /// Forward backend messages to the client; track ReadyForQuery, drop answers to injected
    /// messages, and capture the outcome of a mirrored statement. Bytes go out straight from the
    /// backend's buffer unless an answer is dropped.
    async fn pump_server(&mut self) -> Result<(), Error> {
        self.sout.clear();
        let on_read = self.on_read;
        let be: &mut Backend = match (on_read, self.read.as_mut()) {
            (true, Some(r)) => r,
            _ => &mut self.primary,
        };
        let mut copy = false;
        let mut pos = 0;
        loop {
            if self.server_skip > 0 {
                if !pass_streamed(&be.rbuf, &mut pos, &mut self.server_skip, copy, &mut self.sout) {
                    break;
                }
                continue;
            }
            let Some(h) = frame::header(&be.rbuf[pos..], Side::Server)? else { break };
            let total = 5 + h.len;
            let avail = be.rbuf.len() - pos;
            if avail < total {
                let needed = matches!(h.tag, b'Z' | b'E' | b'1' | b'3') || (self.capture.is_some() && matches!(h.tag, b'D' | b'C'));
                if needed {
                    be.rbuf.reserve(total - avail);
                    break;
                }
                if copy {
                    self.sout.extend_from_slice(&be.rbuf[pos..pos + 5]);
                }
                pos += 5;
                self.server_skip = h.len;
                continue;
            }
            let body = &be.rbuf[pos + 5..pos + total];
            let mut unit_done = false;
            match h.tag {
                b'Z' => {
                    self.status = body.first().copied().unwrap_or(b'I');
                    self.outstanding = self.outstanding.saturating_sub(1);
                    self.swallow = 0;
                    if self.outstanding == 0 {
                        self.unit_sealed = false;
                        if let Some(c) = self.capture.take() {
                            self.shared.shadow.offer(c.finish(), &self.shared.metrics);
                        }
                        if self.status == b'I' && self.in_unit {
                            if self.route.mode == Mode::SplitReads && !on_read && !self.unit_read_only {
                                self.wrote = true;
                            }
                            self.on_read = false;
                            self.in_unit = false;
                            self.in_tx.store(false, Ordering::SeqCst);
                            self.shared.inflight.fetch_sub(1, Ordering::SeqCst);
                            add(&self.shared.metrics.transactions_total, 1);
                            // after a read unit nothing more is expected from the read backend
                            unit_done = on_read;
                        }
                    }
                }
                b'1' | b'3' if self.swallow > 0 => {
                    self.swallow -= 1;
                    if !copy {
                        self.sout.extend_from_slice(&be.rbuf[..pos]);
                        copy = true;
                    }
                    pos += total;
                    continue;
                }
                b'E' => {
                    self.swallow = 0;
                    if let Some(c) = self.capture.as_mut() {
                        c.error(Frame { tag: h.tag, body }.field(b'C').unwrap_or("XX000"));
                    }
                }
                b'C' => {
                    if let Some(c) = self.capture.as_mut() {
                        c.complete(Frame { tag: h.tag, body }.rows());
                    }
                }
                b'D' => {
                    if let Some(c) = self.capture.as_mut() {
                        c.row(body);
                    }
                }
                _ => {}
            }
            if copy {
                self.sout.extend_from_slice(&be.rbuf[pos..pos + total]);
                if self.sout.len() >= 256 * 1024 {
                    send_all(&mut self.client, &self.sout).await?;
                    self.sout.clear();
                }
            }
            pos += total;
            if unit_done {
                break;
            }
        }
        let written = if copy { send_all(&mut self.client, &self.sout).await } else { send_all(&mut self.client, &be.rbuf[..pos]).await };
        consume(&mut be.rbuf, pos);
        written?;
        Ok(())
    }
}


/// Pass what `buf` holds of a message body being streamed through (`skip` bytes still to come):
/// it is forwarded from `buf` itself, or copied to `out` once the pump is copying. False when
/// `buf` has nothing more.
fn pass_streamed(buf: &[u8], pos: &mut usize, skip: &mut usize, copy: bool, out: &mut Vec<u8>) -> bool {
    let n = (*skip).min(buf.len() - *pos);
    if copy {
        out.extend_from_slice(&buf[*pos..*pos + n]);
    }
    *pos += n;
    *skip -= n;
    n > 0
}

/// The batch at the head of `buf`.
fn batch_len(buf: &[u8]) -> Result<Batch, Error> {
    let mut pos = 0;
    loop {
        let Some(h) = frame::header(&buf[pos..], Side::Client)? else { return Ok(Batch::Incomplete) };
        let end = pos + 5 + h.len;
        match h.tag {
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {}
            // a Query ends a batch like Sync does (tokio-postgres sends Close without Sync
            // ahead of the next request)
            b'S' | b'Q' => return Ok(if end <= buf.len() { Batch::Complete(end) } else { Batch::Incomplete }),
            _ => return Ok(Batch::Unroutable),
        }
        if end > buf.len() {
            return Ok(Batch::Incomplete);
        }
        pos = end;
    }
}

/// A named Parse inside the batch itself (Parse and Bind sent together).
fn named_in_batch(bytes: &[u8], name: &str) -> Option<(String, Vec<u8>)> {
    let mut pos = 0;
    while let Ok(Some(h)) = frame::header(&bytes[pos..], Side::Client) {
        let end = pos + 5 + h.len;
        let whole = bytes.get(pos..end)?;
        if h.tag == b'P' {
            if let Ok((n, sql)) = (Frame { tag: b'P', body: &whole[5..] }).parse() {
                if n == name {
                    return Some((sql.to_string(), whole.to_vec()));
                }
            }
        }
        pos = end;
    }
    None
}

/// Restore settings and SQL-level prepared statements on a fresh backend.
async fn replay(be: &mut Backend, state: &HeldState) -> Result<(), Error> {
    if !state.settings.is_empty() {
        let calls: Vec<String> = state.settings.iter().map(|(k, v)| format!("set_config({}, {}, false)", literal(k), literal(v))).collect();
        be.simple_query(&format!("SELECT {}", calls.join(", "))).await?;
    }
    for stmt in &state.prepared {
        be.simple_query(stmt).await?;
    }
    Ok(())
}

/// A SQL string literal (standard_conforming_strings is on by default since 9.1; E'' is used so
/// backslashes are safe either way).
fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_end_at_sync_or_a_query() {
        let mut b = build::parse("", "select 1", &[]);
        b.extend(build::bind("", "", &[]));
        assert!(matches!(batch_len(&b), Ok(Batch::Incomplete)));
        b.extend(build::sync());
        assert!(matches!(batch_len(&b), Ok(Batch::Complete(n)) if n == b.len()));
        let q = build::query("select 1");
        let mut closed = build::close_statement("s1");
        closed.extend(q.clone());
        assert!(matches!(batch_len(&closed), Ok(Batch::Complete(n)) if n == closed.len()));
        let mut two = q.clone();
        two.extend(build::query("select 2"));
        assert!(matches!(batch_len(&two), Ok(Batch::Complete(n)) if n == q.len()));
        assert!(matches!(batch_len(&build::terminate()), Ok(Batch::Unroutable)));
    }

    #[test]
    fn state_that_cannot_move_is_named() {
        let s = HeldState { temp_tables: 2, listen: 1, ..Default::default() };
        assert_eq!(s.unmovable().as_deref(), Some("2 temporary tables, 1 LISTEN channel"));
        assert_eq!(HeldState::default().unmovable(), None);
        assert_eq!(literal("it's a \\ test"), "E'it''s a \\\\ test'");
    }
}
