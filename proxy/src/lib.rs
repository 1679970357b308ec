//! The DAL sidecar: a PostgreSQL wire-protocol proxy that follows routes set in the control
//! plane, holds and moves traffic at transaction boundaries, splits reads, and mirrors shadow
//! traffic.
//!
//! Data path: `frontend` (client side: TLS, startup, authentication, the session relay) ->
//! `router` (route, statement classification, read endpoint LSN) -> `backend` (server side:
//! connect and authenticate with the credentials the proxy holds). `protocol` holds framing and
//! messages; `shadow` the mirror; `metrics` the counters.
// the metrics macro expands one json! entry per counter
#![recursion_limit = "256"]

pub mod backend;
pub mod error;
pub mod frontend;
pub mod idle_poll;
pub mod limits;
pub mod metrics;
pub mod relay;
pub use dmf_proxy_protocol as protocol;
pub mod router;
pub mod shadow;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::Error;
pub use frontend::auth::{ClientAuth, Users};
use frontend::registry::Registry;
use metrics::Metrics;
use router::gate::Gate;
use router::Route;

/// Everything `dmf proxy` is told on its command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub cluster: String,
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub database_url: String,
    pub client_auth: ClientAuth,
    pub users: Users,
    /// PEM certificate chain and private key: with them, SSLRequest is answered 'S'.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Refuse clients that did not set up TLS (`--client-tls required`).
    pub client_tls_required: bool,
    /// Without a successful heartbeat for this long, the proxy stops sending anything anywhere.
    pub lease: Duration,
    /// Route poll interval (the fallback when a notification is lost).
    pub poll: Duration,
    /// How long after it started or saw its route change the proxy listens for the route's
    /// notifications; a route at rest is then polled (`router::control`).
    pub listen_after_change: Duration,
    /// How long a transaction waits at a hold (or without a lease) before its session is closed.
    pub hold_timeout: Duration,
    /// How long shutdown waits for in-flight transactions.
    pub drain: Duration,
    pub shadow_queue: usize,
    pub shadow_workers: usize,
    /// How often the read endpoint's applied LSN is read while reads are split.
    pub lsn_poll: Duration,
    /// Backends kept after their client left, for the next client with the same login
    /// (`backend::pool`); 0 closes each backend with its session.
    pub idle_backends: usize,
    /// How long a backend stays parked without a client before it is closed.
    pub idle_backend_timeout: Duration,
    /// The longest a relay thread polls its sockets after traffic instead of sleeping
    /// (`idle_poll`); zero sleeps at once, as an event loop normally does.
    pub idle_poll: Duration,
    /// Relay threads (`relay`), each an event loop of its own; 1 relays every session on the
    /// thread that runs the proxy.
    pub threads: usize,
    /// From a client's first byte to its authentication: longer, and it is disconnected.
    pub auth_timeout: Duration,
    /// Logging in to a server for a client: longer, and the client gets an error.
    pub connect_timeout: Duration,
    /// Clients connected at once; more are refused with an error (`limits`).
    pub max_client_conn: usize,
    /// Memory all sessions together may hold in buffered messages larger than
    /// `limits::UNACCOUNTED`; a message that would pass it ends its session with an error.
    pub max_buffer_bytes: usize,
    /// Memory the statement classification cache may hold (texts and entries).
    pub classify_cache_bytes: usize,
}

/// Where the proxy listens unless told otherwise: pgbouncer's port, on loopback.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 6432));

impl Options {
    pub fn new(cluster: &str, listen: SocketAddr, database_url: &str) -> Options {
        Options {
            cluster: cluster.to_string(),
            listen,
            metrics: None,
            database_url: database_url.to_string(),
            client_auth: ClientAuth::Server,
            users: Users::default(),
            tls: None,
            client_tls_required: false,
            lease: Duration::from_secs(5),
            poll: Duration::from_secs(1),
            listen_after_change: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(30),
            drain: Duration::from_secs(10),
            shadow_queue: 1024,
            shadow_workers: 2,
            lsn_poll: Duration::from_millis(5),
            idle_backends: 16,
            idle_backend_timeout: Duration::from_secs(60),
            idle_poll: Duration::from_micros(200),
            threads: default_threads(),
            auth_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(15),
            max_client_conn: 1000,
            // PostgreSQL's largest message (1 GiB) fits, with room for the others' ordinary ones
            max_buffer_bytes: 1280 << 20,
            classify_cache_bytes: 16 << 20,
        }
    }
}

/// Statement texts and their class, with the bytes they take.
#[derive(Default)]
struct ClassifyCache {
    entries: HashMap<String, router::classify::Class>,
    bytes: usize,
}

impl ClassifyCache {
    /// What keeping `sql` costs: its text, and an entry's share of the table.
    fn cost(sql: &str) -> usize {
        sql.len() + std::mem::size_of::<(String, router::classify::Class)>() + 16
    }
}

/// Relay threads unless told otherwise: one per CPU this process may use (its affinity and cgroup
/// quota), at most 8.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

pub use frontend::registry::{CancelTarget, SessionEntry, SharedCancelTarget, SpareBackend};

/// A new connection counted in `inflight` while it opens its backend (see [`Shared::admit`]).
pub(crate) struct Admitted(Arc<Shared>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.gate.leave();
    }
}

/// State shared by every task of one proxy process.
pub struct Shared {
    pub opts: Options,
    /// The route, the hold, sessions in flight, the lease.
    pub gate: Gate,
    /// The live sessions.
    pub registry: Registry,
    pub metrics: Metrics,
    pub shadow: shadow::Shadow,
    classified: Mutex<ClassifyCache>,
    /// Clients connected and buffered bytes, against the limits (`limits`).
    pub usage: limits::Usage,
    pub shutdown: CancellationToken,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Backends their clients left, reset and waiting for the next client.
    pub idle: backend::pool::Pool,
    /// What the server asks of each user at login, for `--client-auth server`.
    pub server_answers: frontend::auth::ServerAnswers,
    /// The relay threads, the proxy's own first: their connections and idle polling.
    pub relays: Vec<Arc<relay::RelayThread>>,
    /// Cancelled when the proxy stops (after the drain, or when it fails to start): the relay
    /// threads end.
    pub stopped: CancellationToken,
}

impl Shared {
    /// A proxy's state on `route`, with no lease yet and no session.
    fn new(opts: Options, route: Arc<Route>, tls: Option<tokio_rustls::TlsAcceptor>) -> Shared {
        Shared {
            gate: Gate::new(route, opts.lease),
            registry: Registry::default(),
            metrics: Metrics::default(),
            shadow: shadow::Shadow::new(opts.shadow_queue),
            classified: Mutex::new(ClassifyCache::default()),
            usage: limits::Usage::default(),
            shutdown: CancellationToken::new(),
            tls,
            idle: backend::pool::Pool::new(opts.idle_backends, opts.idle_backend_timeout),
            server_answers: frontend::auth::ServerAnswers::default(),
            relays: (0..opts.threads.max(1)).map(|i| Arc::new(relay::RelayThread::new(i, opts.idle_poll))).collect(),
            stopped: CancellationToken::new(),
            opts,
        }
    }

    /// The route in force now.
    pub fn route(&self) -> Arc<Route> {
        self.gate.route()
    }

    /// Publish a new route (its hold first: `Gate::publish`), then its epoch in the metrics.
    pub(crate) fn set_route(&self, route: Arc<Route>) {
        let epoch = route.epoch;
        self.gate.publish(route);
        self.metrics.route_epoch.store(epoch, Ordering::Relaxed);
    }

    /// Classify with a cache bounded in bytes: applications repeat the same statement texts.
    pub fn classify(&self, sql: &str) -> router::classify::Class {
        if let Some(c) = lock(&self.classified).entries.get(sql) {
            return *c;
        }
        let c = router::classify::classify(sql);
        let cost = ClassifyCache::cost(sql);
        let cap = self.opts.classify_cache_bytes;
        // a text larger than an eighth of the cache is classified each time, never kept
        if cost <= cap / 8 {
            let mut cache = lock(&self.classified);
            if cache.bytes + cost > cap {
                cache.entries.clear();
                cache.bytes = 0;
            }
            if cache.entries.insert(sql.to_string(), c).is_none() {
                cache.bytes += cost;
            }
        }
        c
    }

    /// Let a new connection open its backend: refused without the lease, made to wait while a
    /// hold is in force (up to `hold_timeout`), then counted in flight until it is a registered
    /// session. A hold therefore waits for connections being opened too, and the backend pids it
    /// acknowledges include theirs.
    pub(crate) async fn admit(self: &Arc<Self>) -> Result<Admitted, Error> {
        self.wait_gate(true).await?;
        Ok(Admitted(self.clone()))
    }

    /// Wait as `admit` does, without entering: the route is in force (no hold) and the lease held.
    pub(crate) async fn until_open(&self) -> Result<(), Error> {
        self.wait_gate(false).await
    }

    /// Wait until the gate is open (and `enter` it), within the hold timeout.
    async fn wait_gate(&self, enter: bool) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + self.opts.hold_timeout;
        let mut changes = self.gate.subscribe();
        loop {
            if !self.gate.lease_ok() {
                return Err(Error::LeaseLost);
            }
            if if enter { self.gate.try_enter() } else { !self.gate.held() } {
                return Ok(());
            }
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                return Err(Error::HeldTooLong(self.opts.hold_timeout));
            };
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(left.min(std::time::Duration::from_millis(2))) => {}
            }
        }
    }

    /// The backends this proxy's sessions hold on the route's primary.
    pub(crate) fn primary_backend_pids(&self) -> Vec<i32> {
        let route = self.route();
        self.registry.backend_pids_on(&route.primary.host, route.primary.port)
    }

    pub fn shadow_summary_metrics(&self) -> String {
        self.shadow.summary_metrics(&self.opts.cluster, &self.metrics)
    }
}

/// Close parked backends that timed out, belong to an earlier route, or were closed by their
/// server; until shutdown.
async fn reap_idle(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.idle.reap_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let closed = shared.idle.reap(shared.route().epoch, &shared.metrics);
        if closed > 0 {
            tracing::debug!(cluster = %shared.opts.cluster, closed, "idle backends closed");
        }
    }
    shared.idle.close_all(&shared.metrics);
}

/// Long-lived tasks carry their name in a tracing span, so every log line says which task wrote it.
fn spawn_named(set: &mut tokio::task::JoinSet<()>, name: &str, fut: impl std::future::Future<Output = ()> + Send + 'static) {
    use tracing::Instrument;
    set.spawn(fut.instrument(tracing::info_span!("task", name = %name)));
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A proxy ready to run: the route is loaded and the listener bound.
pub struct Proxy {
    shared: Arc<Shared>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    db: dmf_db::Db,
    id: uuid::Uuid,
}

/// A cheap handle to stop a running proxy and read its counters.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// The counters, as the metrics endpoint and heartbeats report them.
    pub fn metrics(&self) -> serde_json::Value {
        metrics::json(&self.shared)
    }
}

/// The most control-plane connections a proxy opens: its route listener's and two more.
pub const CONTROL_PLANE_CONNECTIONS: u32 = 3;

impl Proxy {
    /// Load the route, bind the ports, register with the control plane.
    pub async fn build(opts: Options) -> Result<Proxy, Error> {
        // route polls, heartbeats and acknowledgements are short and few: the route listener
        // holds one of the pool's connections, the rest share two, whatever happens, so that a
        // fleet's proxies do not exhaust the control plane
        let db = dmf_db::Db::connect_at_most(&opts.database_url, CONTROL_PLANE_CONNECTIONS).await?;
        let row = db.route(&opts.cluster).await?.ok_or_else(|| Error::NoRoute(opts.cluster.clone()))?;
        let route = Arc::new(Route::from_row(&row, None)?);
        let tls = match &opts.tls {
            Some((cert, key)) => Some(frontend::tls::acceptor(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind(opts.listen).await.map_err(|e| Error::Config(format!("listen on {}: {e}", opts.listen)))?;
        let metrics_listener = match opts.metrics {
            Some(a) => Some(TcpListener::bind(a).await.map_err(|e| Error::Config(format!("metrics on {a}: {e}")))?),
            None => None,
        };
        let shared = Arc::new(Shared::new(opts, route, tls));
        shared.metrics.route_epoch.store(shared.route().epoch, Ordering::Relaxed);
        let id = uuid::Uuid::new_v4();
        Ok(Proxy { shared, listener, metrics_listener, db, id })
    }

    pub fn handle(&self) -> Handle {
        Handle { shared: self.shared.clone() }
    }

    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.listener.local_addr()?)
    }

    /// Serve until the handle is used; then drain sessions (up to `drain`) and deregister.
    pub async fn run(self) -> Result<(), Error> {
        let Proxy { shared, listener, metrics_listener, db, id } = self;
        // threads first: dropped on any early return, they end, and nothing was registered yet
        let relays = relay::Relays::start(&shared)?;
        let control = router::control::Control::register(db.clone(), id, shared.clone()).await?;
        let cluster = shared.opts.cluster.clone();
        tracing::info!(cluster = %cluster, listen = %shared.opts.listen, proxy = %id, epoch = shared.route().epoch, threads = shared.relays.len(), "proxy serving");
        let mut tasks = tokio::task::JoinSet::new();
        spawn_named(&mut tasks, "proxy-control", control.run());
        spawn_named(&mut tasks, "proxy-read-lsn", router::lsn::track(shared.clone(), shared.opts.lsn_poll));
        for n in 0..shared.opts.shadow_workers.max(1) {
            spawn_named(&mut tasks, &format!("proxy-shadow-{n}"), shadow::worker(shared.clone()));
        }
        if let Some(l) = metrics_listener {
            spawn_named(&mut tasks, "proxy-metrics", metrics::serve(l, shared.clone()));
        }
        spawn_named(&mut tasks, "proxy-idle-backends", reap_idle(shared.clone()));
        spawn_named(&mut tasks, "proxy-idle-poll", idle_poll::run(shared.clone(), 0));
        frontend::accept_loop(listener, shared.clone(), &relays).await;
        shared.registry.raise(frontend::signal::SHUTDOWN, false);
        // Drain: sessions close at their next transaction boundary; wait for them.
        let deadline = tokio::time::Instant::now() + shared.opts.drain;
        while shared.metrics.connections_active.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = shared.metrics.connections_active.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(cluster = %cluster, sessions = left, "drain deadline passed; closing sessions still in a transaction");
            shared.registry.raise(frontend::signal::KILL, false);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // the relay threads end with what is left of their sessions, then nothing can park a
        // backend any more
        if !relays.join(Duration::from_secs(5)).await {
            tracing::warn!(cluster = %cluster, "relay threads did not stop within 5 s");
        }
        shared.idle.close_all(&shared.metrics);
        match tokio::time::timeout(Duration::from_secs(5), tasks.join_all()).await {
            Ok(_) => {}
            Err(_) => tracing::warn!(cluster = %cluster, "background tasks did not stop within 5 s"),
        }
        if let Err(e) = db.proxy_heartbeat(id, "stopped", &metrics::json(&shared)).await {
            tracing::warn!(cluster = %cluster, error = %e, "could not mark the proxy stopped in the control plane");
        }
        tracing::info!(cluster = %cluster, proxy = %id, "proxy stopped");
        Ok(())
    }
}
