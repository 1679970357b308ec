//! Client side: accepting connections, SSL/GSS negotiation, cancel requests, authentication,
//! the first backend, then the session relay.

pub mod auth;
pub mod refusal;
pub mod registry;
pub mod session;
pub mod signal;
pub mod stream;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::backend::{Backend, Login};
use crate::metrics::{add, sub};
use crate::protocol::{self, build, startup, Startup};
use crate::{CancelTarget, Error, SessionEntry, Shared};
use refusal::Refusal;
use stream::{send_all, ClientStream};

/// Accept until shutdown; each connection runs in its own task, on the relay thread `relays`
/// picks.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, relays: &crate::relay::Relays) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((sock, peer)) => relays.dispatch(sock, peer, &shared),
            Err(e) => {
                tracing::warn!(cluster = %shared.opts.cluster, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One client connection, on the relay thread of `slot` (counted there until it ends), from its
/// first byte to its end.
pub(crate) async fn connection(sock: TcpStream, peer: SocketAddr, shared: Arc<Shared>, slot: crate::relay::Slot) {
    let _ = sock.set_nodelay(true);
    let client = ClientStream::Plain(sock);
    let mut buf = BytesMut::with_capacity(8192);
    let cluster = shared.opts.cluster.clone();
    // counted from its first byte: clients that never finish logging in count too
    let counted = crate::limits::ClientSlot::take(&shared);
    let auth_deadline = tokio::time::Instant::now() + shared.opts.auth_timeout;
    let negotiated = tokio::time::timeout_at(auth_deadline, negotiate(client, &mut buf, &shared)).await;
    let (mut client, params) = match negotiated {
        Ok((Some(c), Ok(Some(p)))) => (c, p),
        Ok((_, Ok(None))) => return,
        Ok((c, Err(e))) => {
            add(&shared.metrics.connections_refused, 1);
            if matches!(e, Error::Protocol(_)) {
                add(&shared.metrics.protocol_errors, 1);
            }
            tracing::info!(cluster = %cluster, peer = %peer, error = %e, "connection refused before startup");
            // a first packet of no startup length is closed without a word, as PostgreSQL does
            let silent = matches!(e, Error::Protocol(protocol::Error::StartupLength(_)));
            if let (Some(mut c), false) = (c, silent) {
                turn_away(&mut c, &Refusal::protocol(&e)).await;
            }
            return;
        }
        Ok((None, Ok(Some(_)))) => return,
        Err(_) => {
            add(&shared.metrics.connections_refused, 1);
            tracing::info!(cluster = %cluster, peer = %peer, timeout = ?shared.opts.auth_timeout, "no startup packet in time (--auth-timeout-s)");
            return;
        }
    };
    let user = params.get("user").unwrap_or_default().to_string();
    if shared.opts.client_tls_required && !matches!(client, ClientStream::Tls(_)) {
        add(&shared.metrics.connections_refused, 1);
        tracing::info!(cluster = %cluster, peer = %peer, user = %user, "client refused: no TLS (--client-tls required)");
        turn_away(&mut client, &Refusal::tls_required()).await;
        return;
    }
    if counted.over() {
        add(&shared.metrics.connections_refused, 1);
        tracing::warn!(cluster = %cluster, peer = %peer, user = %user, clients = counted.count, "client refused: --max-client-conn reached");
        turn_away(&mut client, &Refusal::too_many_clients(shared.opts.max_client_conn)).await;
        return;
    }
    add(&shared.metrics.connections_total, 1);
    match open(&mut client, &mut buf, peer, &params, &shared, slot.0.index, auth_deadline).await {
        Ok((backend, admitted, proof)) => {
            add(&shared.metrics.connections_active, 1);
            let signal = Arc::new(signal::Signal::default());
            if shared.shutdown.is_cancelled() {
                signal.raise(signal::SHUTDOWN);
            }
            let in_tx = Arc::new(AtomicBool::new(false));
            let target = Arc::new(Mutex::new(Some(CancelTarget::of(&backend))));
            let entry = SessionEntry { signal, in_tx, cancel: target, params: Arc::new(params.clone()), spare: Arc::new(Mutex::new(None)), thread: slot.0.index };
            let (id, (pid, secret)) = shared.registry.insert(entry.clone(), backend.key().0);
            // registered: a hold from now on finds this session's backend among the sessions
            drop(admitted);
            let _registered = Registered { shared: shared.clone(), id, key: (pid, secret) };
            let mut hello = Vec::new();
            for n in backend.startup_notices() {
                hello.extend_from_slice(&build::notice(n));
            }
            for (k, v) in backend.params() {
                hello.extend_from_slice(&build::parameter_status(k, v));
            }
            hello.extend_from_slice(&build::backend_key(pid, secret));
            hello.extend_from_slice(&build::ready(crate::protocol::tag::status::IDLE));
            if tell(&mut client, &hello).await {
                let login = entry.params.clone();
                let entry_cancel = entry.cancel.clone();
                let s = session::Session::new(shared.clone(), id, client, buf, params, backend, entry, pid);
                let (result, left) = s.run().await;
                if let Err(e) = result {
                    if matches!(e, Error::Protocol(_)) {
                        add(&shared.metrics.protocol_errors, 1);
                    }
                    tracing::info!(cluster = %cluster, user = %user, peer = %peer, error = %e, "session ended");
                }
                if let Some((backend, epoch)) = left {
                    // the client's cancel key no longer reaches the backend it leaves to the next
                    drop(_registered);
                    *crate::lock(&entry_cancel) = None;
                    let key = crate::backend::pool::Key::new(&backend.endpoint().dsn, &login, proof);
                    if let Err(e) = shared.idle.put(backend, key, epoch, slot.0.index, &shared.metrics).await {
                        tracing::debug!(cluster = %cluster, user = %user, error = %e, "backend not kept for reuse");
                    }
                }
            } else {
                backend.close();
            }
        }
        Err(e) => {
            add(&shared.metrics.connections_refused, 1);
            tracing::info!(cluster = %cluster, user = %user, peer = %peer, error = %e, "connection refused");
            turn_away(&mut client, &Refusal::connection(&e)).await;
        }
    }
}

/// How long a refusal or the greeting may wait for a client to take it.
const TELL_WITHIN: Duration = Duration::from_secs(5);

/// Send a refusal or the greeting to a client not yet in a session (small, flushed); false when
/// it did not go: a client that does not read must not keep its connection's task.
async fn tell(client: &mut ClientStream, bytes: &[u8]) -> bool {
    matches!(tokio::time::timeout(TELL_WITHIN, send_all(client, bytes)).await, Ok(Ok(())))
}

/// Refuse a client not yet in a session: the refusal, then the connection closed as PostgreSQL
/// closes it.
async fn turn_away(client: &mut ClientStream, refusal: &Refusal) {
    if tell(client, &refusal.message()).await {
        client.close(TELL_WITHIN).await;
    }
}

/// A session's entries in the shared registries and its count in `connections_active`, removed
/// however the session ends: at shutdown a relay thread's runtime drops its sessions mid-relay.
struct Registered {
    shared: Arc<Shared>,
    id: u64,
    key: (i32, i32),
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.registry.remove(self.id, self.key);
        sub(&self.shared.metrics.connections_active, 1);
    }
}

/// Read the startup packet, answering SSL/GSS requests and serving cancel requests. `None` when
/// the connection was a cancel request (or the client left). The stream comes back (TLS or not)
/// unless a TLS handshake consumed it.
async fn negotiate(mut client: ClientStream, buf: &mut BytesMut, shared: &Arc<Shared>) -> (Option<ClientStream>, Result<Option<startup::Params>, Error>) {
    loop {
        let parsed = match startup::parse(buf) {
            Ok(p) => p,
            Err(e) => return (Some(client), Err(e.into())),
        };
        let Some((packet, used)) = parsed else {
            match client.read_buf(buf).await {
                Ok(0) => return (Some(client), Ok(None)),
                Ok(_) => continue,
                Err(e) => return (Some(client), Err(e.into())),
            }
        };
        buf.advance(used);
        let step: Result<(), Error> = match packet {
            Startup::Ssl => match (client, &shared.tls) {
                (ClientStream::Plain(mut sock), Some(acceptor)) if buf.is_empty() => {
                    if let Err(e) = sock.write_all(b"S").await {
                        return (Some(ClientStream::Plain(sock)), Err(e.into()));
                    }
                    match acceptor.accept(sock).await {
                        Ok(tls) => {
                            client = ClientStream::Tls(Box::new(tls));
                            continue;
                        }
                        Err(e) => return (None, Err(Error::Tls(format!("handshake: {e}")))),
                    }
                }
                (c @ ClientStream::Tls(_), _) => {
                    client = c;
                    Err(protocol::Error::BadStartup("SSLRequest inside TLS".into()).into())
                }
                (c, _) => {
                    client = c;
                    send_all(&mut client, b"N").await.map_err(Error::from)
                }
            },
            Startup::GssEnc => send_all(&mut client, b"N").await.map_err(Error::from),
            Startup::Cancel { pid, secret } => {
                cancel(shared, pid, secret).await;
                return (Some(client), Ok(None));
            }
            Startup::Params(p) => {
                if p.get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
                    return (Some(client), Err(protocol::Error::BadStartup("replication connections are not proxied; connect to the database directly".into()).into()));
                }
                return (Some(client), Ok(Some(p)));
            }
        };
        if let Err(e) = step {
            return (Some(client), Err(e));
        }
    }
}

/// Authenticate the client, wait out a hold, and log in to the route's primary for it.
#[allow(clippy::too_many_arguments)]
async fn open(
    client: &mut ClientStream,
    buf: &mut BytesMut,
    peer: SocketAddr,
    params: &startup::Params,
    shared: &Arc<Shared>,
    thread: usize,
    auth_deadline: tokio::time::Instant,
) -> Result<(Backend, crate::Admitted, auth::Proof), Error> {
    let user = params.get("user").unwrap_or_default();
    let route = shared.route();
    let dmf_roles: Vec<&str> =
        [Some(&route.primary), Some(&route.read), route.next_primary.as_ref(), route.shadow.as_ref()].into_iter().flatten().filter_map(|e| e.user.as_deref()).collect();
    // dmf's own roles are asked for a password whatever the server says: no probe for them
    let server_asks = match shared.opts.client_auth {
        auth::ClientAuth::Server if !auth::is_dmf_role(user, &dmf_roles) => {
            // nothing is sent anywhere without the lease, nor to a primary a hold is moving away from
            shared.until_open().await?;
            Some(server_asks(shared.route().primary.clone(), shared, user, auth_deadline).await?)
        }
        auth::ClientAuth::Server => Some(10),
        _ => None,
    };
    let encrypted = matches!(client, ClientStream::Tls(_));
    let asking = auth::Asking { user, loopback: peer.ip().is_loopback(), encrypted, dmf_roles: &dmf_roles, server_asks };
    let proof = tokio::time::timeout_at(auth_deadline, auth::authenticate(client, buf, shared.opts.client_auth, &shared.opts.users, asking))
        .await
        .map_err(|_| Error::AuthTimeout(shared.opts.auth_timeout))??;
    // the route serves one database; any other does not exist here (PostgreSQL's default
    // database is the user's name)
    let admitted = shared.admit().await?;
    let route = shared.route();
    let requested = params.get("database").filter(|d| !d.is_empty()).unwrap_or(user);
    let served = route.primary.dbname.as_deref().unwrap_or(user);
    if identifier(requested) != identifier(served) {
        return Err(Error::NoSuchDatabase(requested.to_string()));
    }
    let key = crate::backend::pool::Key::new(&route.primary.dsn, params, proof);
    let backend = match shared.idle.checkout(&key, route.epoch, thread, &shared.metrics).await {
        Some(b) => b,
        None => connect_as(route.primary.clone(), shared, params, proof, false).await?,
    };
    Ok((backend, admitted, proof))
}

/// A name as PostgreSQL looks it up: cut to 63 bytes (NAMEDATALEN - 1) on a character boundary.
pub(crate) fn identifier(name: &str) -> &str {
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Log in to `endpoint` as the client's user with the password the users file holds for it, or
/// with none for a client the server trusted (`proof`): the route's own credentials serve dmf's
/// connections only, never a client's.
pub async fn connect_as(endpoint: Arc<crate::backend::Endpoint>, shared: &Shared, params: &startup::Params, proof: auth::Proof, read_only: bool) -> Result<Backend, Error> {
    let user = params.get("user").unwrap_or_default();
    let password = match proof {
        auth::Proof::Password => shared.opts.users.password(user),
        auth::Proof::ServerTrust => None,
    };
    let timeout = shared.opts.connect_timeout;
    let label = endpoint.label();
    tokio::time::timeout(timeout, Backend::connect(endpoint, &Login { user, password, params, read_only }))
        .await
        .map_err(|_| Error::backend(&label, format!("no login within {timeout:?} (--server-connect-timeout-s)")))?
}

/// What `endpoint` asks of `user` at login (`--client-auth server`): a startup packet with the
/// user and database only (none of the client's parameters reach a server before the client
/// has authenticated), its first answer, and that connection dropped; the answer is kept for
/// `auth::SERVER_ANSWER_FOR`, and one probe at a time is made per server, user and database.
/// Within `--server-connect-timeout-s` and the client's authentication deadline. The server's
/// refusal (no pg_hba.conf line for this user, too many connections) is the client's, in the
/// server's words.
async fn server_asks(endpoint: Arc<crate::backend::Endpoint>, shared: &Shared, user: &str, auth_deadline: tokio::time::Instant) -> Result<i32, Error> {
    let database = endpoint.dbname.as_deref().unwrap_or(user);
    if let Some(code) = shared.server_answers.get(&endpoint.dsn, user, database) {
        return Ok(code);
    }
    let timeout = shared.opts.connect_timeout;
    let deadline = auth_deadline.min(tokio::time::Instant::now() + timeout);
    let lock = shared.server_answers.probe_lock(&endpoint.dsn, user, database);
    let probe = async {
        let _probing = lock.lock().await;
        // another login's probe may have answered while this one waited
        if let Some(code) = shared.server_answers.get(&endpoint.dsn, user, database) {
            return Ok(code);
        }
        let mut bare = startup::Params::default();
        bare.set("user", user);
        let login = Login { user, password: None, params: &bare, read_only: false };
        let code = Backend::auth_request(&endpoint, &login).await?;
        shared.server_answers.put(&endpoint.dsn, user, database, code);
        Ok(code)
    };
    tokio::time::timeout_at(deadline, probe)
        .await
        .map_err(|_| Error::backend(&endpoint.label(), format!("no answer to a login within {timeout:?} (--server-connect-timeout-s)")))?
}

/// Forward a client's cancel request to the backend its session is using now.
async fn cancel(shared: &Shared, pid: i32, secret: i32) {
    let Some(t) = shared.registry.cancel_target((pid, secret)) else {
        tracing::info!(cluster = %shared.opts.cluster, "cancel request for an unknown session ignored");
        return;
    };
    match TcpStream::connect((t.host.as_str(), t.port)).await {
        Ok(mut s) => {
            let _ = s.write_all(&build::cancel_request(t.pid, t.secret)).await;
            let mut sink = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut sink)).await;
        }
        Err(e) => tracing::warn!(cluster = %shared.opts.cluster, backend = %format!("{}:{}", t.host, t.port), error = %e, "cancel request could not be forwarded"),
    }
}
