//! An in-process harness for the session: the relay runs on in-memory streams, the test plays
//! the client on one end and a scripted server on the other. Edge cases of the relay (streamed
//! messages, a server that goes away, a malformed message, holds, kills) are checked here without
//! a PostgreSQL server or a proxy process; the end-to-end tests in `tests/` run the real thing.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::Session;
use crate::backend::{Backend, BackendStream, Endpoint};
use crate::frontend::signal::{Signal, KILL};
use crate::frontend::stream::ClientStream;
use crate::protocol::startup::Params;
use crate::protocol::tag::{client, server};
use crate::protocol::{build, frame, Frame, Side};
use crate::router::{Mode, Route};
use crate::{Error, Options, SessionEntry, Shared};

/// Long enough for anything the session does in memory; only reached when a test fails.
const WAIT: Duration = Duration::from_secs(5);

struct Harness {
    shared: Arc<Shared>,
    /// The test's end of the client connection.
    client: DuplexStream,
    /// The test's end of the backend connection.
    server: DuplexStream,
    /// The session: its result, and whether it gave its backend back for reuse.
    done: tokio::task::JoinHandle<(Result<(), Error>, bool)>,
}

fn route(epoch: u64, hold: bool) -> Route {
    let primary = Arc::new(Endpoint::parse("postgres://app@scripted.invalid:5432/shop").expect("endpoint"));
    Route {
        epoch,
        read: primary.clone(),
        primary,
        mode: Mode::Primary,
        hold,
        hold_deadline: Duration::from_secs(1),
        shadow: None,
        shadow_fraction: 0.0,
        next_primary: None,
    }
}

impl Harness {
    /// A session on a route to the scripted server, started at a transaction boundary.
    fn start(hold: bool) -> Harness {
        Harness::start_with(hold, WAIT)
    }

    /// The same, with transactions held for at most `hold_timeout`.
    fn start_with(hold: bool, hold_timeout: Duration) -> Harness {
        let mut opts = Options::new("harness", "127.0.0.1:0".parse().expect("addr"), "postgres://unused.invalid/dmf");
        opts.threads = 1;
        opts.hold_timeout = hold_timeout;
        let shared = Arc::new(Shared::new(opts, Arc::new(route(1, hold)), None));
        shared.gate.extend_lease(std::time::Instant::now() + Duration::from_secs(600));
        let (client, proxy_client) = tokio::io::duplex(64 * 1024);
        let (server, proxy_server) = tokio::io::duplex(64 * 1024);
        let backend = Backend::over(BackendStream::Memory(proxy_server), shared.route().primary.clone());
        let mut params = Params::default();
        params.set("user", "app");
        let entry = SessionEntry {
            signal: Arc::new(Signal::default()),
            in_tx: Arc::new(AtomicBool::new(false)),
            cancel: Arc::new(Mutex::new(None)),
            params: Arc::new(params.clone()),
            spare: Arc::new(Mutex::new(None)),
            thread: 0,
        };
        let pid = backend.key().0;
        let (id, _) = shared.registry.insert(entry.clone(), pid);
        let session = Session::new(shared.clone(), id, ClientStream::Memory(proxy_client), BytesMut::new(), params, backend, entry, pid);
        let done = tokio::spawn(async move {
            let (result, kept) = session.run().await;
            (result, kept.is_some())
        });
        Harness { shared, client, server, done }
    }

    async fn finish(self) -> (Result<(), Error>, bool) {
        tokio::time::timeout(WAIT, self.done).await.expect("the session ends").expect("the session does not panic")
    }
}

/// The next whole message on `stream` from `side`: its tag and body.
async fn next(stream: &mut DuplexStream, side: Side) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    tokio::time::timeout(WAIT, stream.read_exact(&mut head)).await.expect("a message in time").expect("a message");
    let h = frame::header(&head, side).expect("a valid header").expect("five bytes");
    let mut body = vec![0u8; h.len];
    tokio::time::timeout(WAIT, stream.read_exact(&mut body)).await.expect("the body in time").expect("the body");
    (h.tag, body)
}

/// Nothing arrives on `stream` for a while.
async fn quiet(stream: &mut DuplexStream) {
    let mut b = [0u8; 1];
    assert!(tokio::time::timeout(Duration::from_millis(200), stream.read(&mut b)).await.is_err(), "nothing should arrive yet");
}

/// The SQLSTATE of an ErrorResponse from the proxy.
fn code(tag: u8, body: &[u8]) -> String {
    assert_eq!(tag, server::ERROR_RESPONSE, "an ErrorResponse");
    Frame { tag, body }.field(b'C').expect("a SQLSTATE").to_string()
}

fn answer(rows: usize, status: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rows {
        out.extend_from_slice(&[server::DATA_ROW, 0, 0, 0, 11, 0, 1, 0, 0, 0, 1, b'1']);
    }
    out.extend_from_slice(&[server::COMMAND_COMPLETE, 0, 0, 0, 13]);
    out.extend_from_slice(b"SELECT 1\0");
    out.extend_from_slice(&build::ready(status));
    out
}

#[tokio::test]
async fn an_answered_query_passes_byte_for_byte_and_an_idle_client_leaves_its_backend_for_reuse() {
    let mut h = Harness::start(false);
    h.client.write_all(&build::query("select 1")).await.expect("write");
    let (tag, body) = next(&mut h.server, Side::Client).await;
    assert_eq!((tag, Frame { tag, body: &body }.query().expect("text")), (client::QUERY, "select 1"));
    assert_eq!(h.shared.gate.in_flight(), 1, "a unit in progress is counted in flight");
    let reply = answer(1, b'I');
    h.server.write_all(&reply).await.expect("write");
    let mut got = vec![0u8; reply.len()];
    tokio::time::timeout(WAIT, h.client.read_exact(&mut got)).await.expect("in time").expect("read");
    assert_eq!(got, reply);
    h.client.write_all(&build::terminate()).await.expect("write");
    let shared = h.shared.clone();
    let (result, kept) = h.finish().await;
    assert!(result.is_ok(), "{result:?}");
    assert!(kept, "a backend left idle goes back to the pool");
    assert_eq!(shared.gate.in_flight(), 0);
}

#[tokio::test]
async fn a_client_that_leaves_inside_a_transaction_does_not_hand_its_backend_on() {
    let mut h = Harness::start(false);
    h.client.write_all(&build::query("begin")).await.expect("write");
    next(&mut h.server, Side::Client).await;
    h.server.write_all(&build::ready(b'T')).await.expect("write");
    assert_eq!(next(&mut h.client, Side::Server).await.0, server::READY_FOR_QUERY);
    assert_eq!(h.shared.gate.in_flight(), 1, "a transaction stays in flight between its statements: a hold waits for it");
    h.client.write_all(&build::terminate()).await.expect("write");
    let shared = h.shared.clone();
    let (result, kept) = h.finish().await;
    assert!(result.is_ok(), "{result:?}");
    assert!(!kept, "a backend inside a transaction is closed, never reused");
    assert_eq!(shared.gate.in_flight(), 0, "the unit left in flight is let go");
}

#[tokio::test]
async fn a_message_larger_than_the_buffers_streams_through_whole() {
    let mut h = Harness::start(false);
    h.client.write_all(&build::query("select big")).await.expect("write");
    next(&mut h.server, Side::Client).await;
    let value = vec![b'x'; 1 << 20];
    let mut reply = vec![server::DATA_ROW];
    reply.extend_from_slice(&((4 + 2 + 4 + value.len()) as i32).to_be_bytes());
    reply.extend_from_slice(&1i16.to_be_bytes());
    reply.extend_from_slice(&(value.len() as i32).to_be_bytes());
    reply.extend_from_slice(&value);
    reply.extend_from_slice(&answer(0, b'I'));
    // the start of the message reaches the client while the server still holds back the rest:
    // streamed, not buffered whole (the pipes hold 64 KiB, the message 1 MiB)
    let half = reply.len() / 2;
    let (go_on, rest_may_go) = tokio::sync::oneshot::channel::<()>();
    let mut server = h.server;
    let sending = tokio::spawn(async move {
        server.write_all(&reply[..half]).await.expect("write");
        rest_may_go.await.expect("the test lets the rest go");
        server.write_all(&reply[half..]).await.expect("write");
        server
    });
    let mut first = vec![0u8; 5 + 6 + 1000];
    tokio::time::timeout(WAIT, h.client.read_exact(&mut first)).await.expect("the start of the message before its end was sent").expect("read");
    assert_eq!(first[0], server::DATA_ROW);
    go_on.send(()).expect("the server waits");
    let mut body = first[5..].to_vec();
    let mut more = vec![0u8; 4 + 2 + value.len() - body.len()];
    tokio::time::timeout(WAIT, h.client.read_exact(&mut more)).await.expect("in time").expect("read");
    body.extend_from_slice(&more);
    assert!(body[6..].iter().all(|&b| b == b'x'));
    assert_eq!(next(&mut h.client, Side::Server).await.0, server::COMMAND_COMPLETE);
    assert_eq!(next(&mut h.client, Side::Server).await.0, server::READY_FOR_QUERY);
    h.server = sending.await.expect("sent");
    assert_eq!(h.shared.gate.in_flight(), 0, "the unit ended at its ReadyForQuery");
}

#[tokio::test]
async fn a_server_that_goes_away_without_a_word_closes_the_clients_connection_without_one() {
    let mut h = Harness::start(false);
    h.client.write_all(&build::query("select 1")).await.expect("write");
    next(&mut h.server, Side::Client).await;
    drop(h.server);
    // as directly: the connection closes, and the client reports the server closing it
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, h.client.read_to_end(&mut rest)).await.expect("closed in time").expect("read");
    assert!(rest.is_empty(), "nothing from the proxy: {rest:?}");
    let (result, kept) = tokio::time::timeout(WAIT, h.done).await.expect("ends").expect("no panic");
    assert!(result.is_err() && !kept);
    assert_eq!(h.shared.gate.in_flight(), 0, "a session that failed is not left in flight");
}

#[tokio::test]
async fn a_query_with_a_nul_inside_is_a_protocol_violation_and_reaches_no_server() {
    let mut h = Harness::start(false);
    let mut bad = build::query("select 1");
    bad[7] = 0;
    h.client.write_all(&bad).await.expect("write");
    let (tag, body) = next(&mut h.client, Side::Server).await;
    assert_eq!(code(tag, &body), "08P01");
    let mut server = h.server;
    let (result, _) = tokio::time::timeout(WAIT, h.done).await.expect("ends").expect("no panic");
    assert!(matches!(result, Err(Error::Protocol(_))), "{result:?}");
    assert_eq!(h.shared.gate.in_flight(), 0, "the unit opened for the message is let go");
    // the session sent the server only its Terminate
    assert_eq!(next(&mut server, Side::Client).await.0, client::TERMINATE);
}

#[tokio::test]
async fn a_transaction_waits_at_a_hold_and_goes_on_when_it_is_lifted() {
    let mut h = Harness::start(true);
    h.client.write_all(&build::query("select 1")).await.expect("write");
    quiet(&mut h.server).await;
    assert_eq!(h.shared.gate.in_flight(), 0, "a held transaction is not in flight");
    h.shared.set_route(Arc::new(route(2, false)));
    let (tag, _) = next(&mut h.server, Side::Client).await;
    assert_eq!(tag, client::QUERY);
    h.server.write_all(&answer(1, b'I')).await.expect("write");
    assert_eq!(next(&mut h.client, Side::Server).await.0, server::DATA_ROW);
}

#[tokio::test]
async fn a_kill_inside_a_transaction_ends_the_session_with_57p01() {
    let mut h = Harness::start(false);
    h.client.write_all(&build::query("begin")).await.expect("write");
    next(&mut h.server, Side::Client).await;
    h.server.write_all(&build::ready(b'T')).await.expect("write");
    next(&mut h.client, Side::Server).await;
    // as a hold deadline does: every session inside a transaction
    h.shared.registry.raise(KILL, true);
    let (tag, body) = next(&mut h.client, Side::Server).await;
    assert_eq!(code(tag, &body), "57P01");
    let (result, kept) = h.finish().await;
    assert!(result.is_ok() && !kept);
}

#[tokio::test]
async fn a_transaction_held_past_the_hold_timeout_is_refused_with_57p03_and_reaches_no_server() {
    let mut h = Harness::start_with(true, Duration::from_millis(300));
    h.client.write_all(&build::query("select 1")).await.expect("write");
    let (tag, body) = next(&mut h.client, Side::Server).await;
    assert_eq!(code(tag, &body), "57P03");
    let (result, kept) = h.finish().await;
    assert!(matches!(result, Err(Error::HeldTooLong(_))) && !kept, "{result:?}");
}

#[tokio::test]
async fn a_status_byte_the_protocol_does_not_define_is_not_a_transaction_boundary() {
    let mut h = Harness::start(false);
    h.client.write_all(&build::query("select 1")).await.expect("write");
    next(&mut h.server, Side::Client).await;
    h.server.write_all(&build::ready(b'?')).await.expect("write");
    assert_eq!(next(&mut h.client, Side::Server).await.0, server::READY_FOR_QUERY);
    assert_eq!(h.shared.gate.in_flight(), 1, "still in flight: a hold waits for it");
}

#[tokio::test]
async fn a_server_that_breaks_the_protocol_is_a_connection_failure_not_the_clients_fault() {
    let mut h = Harness::start(false);
    h.client.write_all(&build::query("select 1")).await.expect("write");
    next(&mut h.server, Side::Client).await;
    h.server.write_all(&[1, 0, 0, 0, 4]).await.expect("write");
    let (tag, body) = next(&mut h.client, Side::Server).await;
    assert_eq!(code(tag, &body), "08006");
    let shared = h.shared.clone();
    let (result, kept) = h.finish().await;
    // a Backend error, not Protocol: the connection does not count it among clients' protocol errors
    assert!(matches!(result, Err(Error::Backend { .. })) && !kept, "{result:?}");
    assert_eq!(shared.gate.in_flight(), 0);
}
