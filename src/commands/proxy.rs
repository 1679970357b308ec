//! `dmf proxy --cluster NAME --listen ADDR`: the DAL sidecar in front of an application.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use super::ControlPlane;

#[derive(clap::Args)]
#[command(long_about = "Run the DAL sidecar for one cluster. Applications connect here instead of to the \
database; the proxy follows the cluster's route in the control plane (primary, read endpoint, holds, \
shadow traffic), registers itself and heartbeats. If it cannot reach the control plane for longer than \
--lease-ms it sends nothing anywhere until it can again.\n\n\
On a loopback listener each client is asked by default what the server asks of its user \
(--client-auth server: nothing where the server trusts it, else its password, checked against \
--users-file), so that it logs in as it would directly; on any other listener the default is \
--client-auth scram, which needs a --users-file. The users file also holds the passwords the proxy \
uses to log in to the backends as each client's user (the route's credentials never serve a \
client):\n\n\
    \"app\" \"app-password\"\n\n\
Example: dmf proxy --cluster orders --listen 127.0.0.1:6432 --metrics 127.0.0.1:9187")]
pub struct Args {
    #[command(flatten)]
    cp: ControlPlane,
    /// The cluster whose route this proxy follows (as named in the fleet manifest).
    #[arg(long)]
    cluster: String,
    /// Address the applications connect to.
    #[arg(long, default_value_t = dmf_proxy::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// How clients authenticate. server: each client is asked what the server asks of its user
    /// (nothing where the server trusts it, a clear-text password, MD5 or SCRAM), as it would be
    /// logging in directly; learning the server's answer costs a short login per server, user
    /// and database every 10 s. Where the server trusts, a client on another host or naming
    /// dmf's own role is asked for SCRAM all the same, and SCRAM replaces a clear-text password
    /// from another host without TLS; a client the server trusts is logged in without a
    /// password. trust: loopback clients, never as dmf's own role, logged in with the users
    /// file's passwords. md5, scram: every client. Passwords are checked against --users-file.
    /// Default: server on a loopback listener, scram on any other.
    #[arg(long)]
    client_auth: Option<dmf_proxy::ClientAuth>,
    /// pgbouncer-style users file: `"user" "password"` per line; used for clients and backends.
    #[arg(long, env = "DMF_PROXY_USERS_FILE")]
    users_file: Option<PathBuf>,
    /// PEM certificate chain for TLS to clients (with --tls-key); without it SSLRequest gets 'N'.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TLS from clients: `optional` (SSLRequest answered 'S' when --tls-cert is given) or
    /// `required` (clients without TLS are refused; needs --tls-cert).
    #[arg(long, default_value = "optional", value_parser = ["optional", "required"])]
    client_tls: String,
    /// Without a heartbeat for this long, stop sending statements anywhere.
    #[arg(long, default_value_t = D.lease.as_millis() as u64)]
    lease_ms: u64,
    /// How long a transaction may wait at a hold before its session is closed.
    #[arg(long, default_value_t = D.hold_timeout.as_secs())]
    hold_timeout_s: u64,
    /// On SIGTERM, how long to let transactions in flight finish.
    #[arg(long, default_value_t = D.drain.as_secs())]
    drain_s: u64,
    /// Shadow traffic queue length; a full queue drops mirrors (counted), never slows clients.
    #[arg(long, default_value_t = D.shadow_queue)]
    shadow_queue: usize,
    /// Connections that run mirrored statements.
    #[arg(long, default_value_t = D.shadow_workers)]
    shadow_workers: usize,
    /// Backends kept after their client disconnects, reset with DISCARD ALL, for the next client
    /// that logs in with the same user, database and startup parameters: it skips connecting and
    /// authenticating, and gets a warm server connection. 0 closes each backend with its client.
    #[arg(long, default_value_t = D.idle_backends)]
    idle_backends: usize,
    /// Seconds a kept backend waits for a client before it is closed.
    #[arg(long, default_value_t = D.idle_backend_timeout.as_secs())]
    idle_backend_timeout_s: u64,
    /// After traffic, poll the sockets for up to this long instead of sleeping at once, so that
    /// the next message needs no wake-up (the window adapts: gaps longer than this turn polling
    /// off). Whenever a poll finds nothing, threads waiting for the CPU run first, but polling is
    /// CPU time all the same and counts against a CPU quota: 0 turns it off. Each relay thread
    /// polls on its own, only while its own sessions have traffic.
    #[arg(long, default_value_t = D.idle_poll.as_micros() as u64)]
    idle_poll_us: u64,
    /// Relay threads, each an event loop of its own: a new client goes to the thread with the
    /// fewest connections and stays there. Default: the CPUs this process may use (its affinity
    /// and cgroup quota), at most 8. 1 relays everything on one thread, like pgbouncer.
    #[arg(long, env = "DMF_PROXY_THREADS")]
    threads: Option<usize>,
    /// Seconds a client has from its first byte to finishing authentication; then it is
    /// disconnected (clients that connect and go silent hold nothing for long).
    #[arg(long, default_value_t = D.auth_timeout.as_secs())]
    auth_timeout_s: u64,
    /// Seconds a login to a server for a client may take; then the client gets an error.
    #[arg(long, default_value_t = D.connect_timeout.as_secs())]
    server_connect_timeout_s: u64,
    /// Seconds the proxy keeps listening for route notifications after it started or saw its
    /// route change. A route at rest (every statement to one primary, no hold, no announced move)
    /// is then read every 4 s instead: each notification in the control plane wakes every session
    /// listening there, so a fleet's idle proxies listening would cost it more than their polls.
    /// A hold (`dmf route set --hold`, a flip, a rollback) first gets every proxy listening. At
    /// least 15: the proxies of a cluster answer that wake up to 5 s apart, and the first must
    /// still listen when the hold comes.
    #[arg(long, default_value_t = D.listen_after_change.as_secs())]
    listen_after_change_s: u64,
    /// Clients connected at once; the next ones are refused with SQLSTATE 53300.
    #[arg(long, default_value_t = D.max_client_conn)]
    max_client_conn: usize,
    /// Memory all sessions together may hold in buffered messages over 1 MiB (the proxy reads a
    /// Query or Parse whole to route it; COPY data streams through). A message that would pass it
    /// ends its session with SQLSTATE 53200; the other sessions carry on. The default lets one
    /// message of PostgreSQL's own largest size (1 GiB) through.
    #[arg(long, default_value_t = D.max_buffer_bytes)]
    max_buffer_bytes: usize,
}

/// The proxy's defaults, which the flags show and start from: defaults live in dmf-proxy.
static D: LazyLock<dmf_proxy::Options> =
    LazyLock::new(|| dmf_proxy::Options::new("", dmf_proxy::DEFAULT_LISTEN, ""));

pub async fn run(a: Args) -> anyhow::Result<()> {
    let mut opts = dmf_proxy::Options::new(&a.cluster, a.listen, &a.cp.database_url);
    opts.metrics = a.metrics;
    opts.client_auth = match a.client_auth {
        Some(mode) => mode,
        None if a.listen.ip().is_loopback() => dmf_proxy::ClientAuth::Server,
        None => dmf_proxy::ClientAuth::Scram,
    };
    if let Some(path) = &a.users_file {
        opts.users = dmf_proxy::Users::load(path)?;
    } else if !matches!(opts.client_auth, dmf_proxy::ClientAuth::Trust | dmf_proxy::ClientAuth::Server) {
        let why = if a.client_auth.is_none() { format!(" (the default on {}, which is not a loopback address)", a.listen) } else { String::new() };
        anyhow::bail!("--client-auth {}{why} needs --users-file with the users' passwords; --client-auth trust admits loopback clients only", opts.client_auth);
    }
    if a.users_file.is_none() && opts.client_auth == dmf_proxy::ClientAuth::Server {
        tracing::warn!(cluster = %a.cluster, "no --users-file: only users the server trusts can log in through this proxy");
    }
    opts.tls = a.tls_cert.zip(a.tls_key);
    opts.client_tls_required = a.client_tls == "required";
    if opts.client_tls_required && opts.tls.is_none() {
        anyhow::bail!("--client-tls required needs --tls-cert and --tls-key");
    }
    opts.lease = Duration::from_millis(a.lease_ms.max(100));
    opts.hold_timeout = Duration::from_secs(a.hold_timeout_s);
    opts.drain = Duration::from_secs(a.drain_s);
    opts.shadow_queue = a.shadow_queue;
    opts.shadow_workers = a.shadow_workers;
    opts.idle_backends = a.idle_backends;
    opts.idle_backend_timeout = Duration::from_secs(a.idle_backend_timeout_s.max(1));
    opts.idle_poll = Duration::from_micros(a.idle_poll_us);
    opts.threads = match a.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => opts.threads,
    };
    opts.auth_timeout = Duration::from_secs(a.auth_timeout_s.max(1));
    opts.connect_timeout = Duration::from_secs(a.server_connect_timeout_s.max(1));
    opts.max_client_conn = a.max_client_conn.max(1);
    opts.listen_after_change = Duration::from_secs(a.listen_after_change_s);
    opts.max_buffer_bytes = a.max_buffer_bytes;
    let proxy = dmf_proxy::Proxy::build(opts).await?;
    let handle = proxy.handle();
    let stop = super::shutdown_signal();
    tokio::spawn(async move {
        stop.cancelled().await;
        handle.shutdown();
    });
    proxy.run().await?;
    Ok(())
}
