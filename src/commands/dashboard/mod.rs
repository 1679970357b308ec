//! `dmf dashboard`: the fleet in a browser, live. Server-rendered HTML with one small
//! hand-written script (live updates by server-sent events, the table filter, the action
//! confirmation) and SVG charts; no JavaScript build step. Also the fleet-level Prometheus gauges
//! (`/metrics`, read from the control plane at each scrape) and, with `--allow-actions`, resume,
//! abort and rollback for operators named in a token file.

mod gauges;
mod operators;
mod pages;
mod svg;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dmf_db::Db;
use dmf_db::secret::percent_encode as encode;
use dmf_telemetry::http::{Reply, Request};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ControlPlane;

#[derive(clap::Args, Clone)]
#[command(after_help = "Pages: / (the fleet, problems first), /cluster/NAME (timeline, lag, hydration, audit, cutovers, \
events), /metrics (fleet gauges for Prometheus), /events (server-sent change notices).\n\
Examples:\n  dmf dashboard --listen 127.0.0.1:8080\n  \
dmf dashboard --listen 0.0.0.0:8080 --allow-actions --operators /etc/dmf/operators\n\
The operators file has one `NAME TOKEN` per line (tokens of 16 characters or more; `#` starts a comment); \
an action asks for the token and the cluster's name typed again, and is written to the event log as \
`dashboard:NAME`.")]
pub struct Args {
    #[command(flatten)]
    pub cp: ControlPlane,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Offer resume, abort and rollback on each cluster's page (needs --operators).
    #[arg(long, requires = "operators")]
    pub allow_actions: bool,
    /// The operators allowed to act, one `NAME TOKEN` per line.
    #[arg(long, value_name = "FILE")]
    pub operators: Option<std::path::PathBuf>,
    /// How often the control plane is checked for changes pushed to open pages, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub refresh_ms: u64,
}

/// What every request handler shares.
pub(crate) struct Dash {
    pub db: Db,
    pub operators: Option<operators::Operators>,
    /// The control plane's change mark, as last read (one reader for every open page).
    pub changes: watch::Receiver<String>,
    /// The address served: on a loopback address, only requests naming it as their `Host` are
    /// answered (a web page elsewhere cannot read the dashboard through DNS rebinding).
    pub bound: SocketAddr,
    /// Event streams open now (`MAX_STREAMS` at most).
    pub streams: Arc<std::sync::atomic::AtomicUsize>,
    /// The fleet page's `<main>` as last rendered, with the change mark it was rendered at: every
    /// open page asks for it after the same notice.
    pub fleet_cache: tokio::sync::Mutex<Option<(String, String)>>,
}

/// Event streams served at once (a page holds one; browsers allow six connections per host).
const MAX_STREAMS: usize = 64;
/// Change notices go out at most this often: a fleet's lag samples move the mark every second.
const NOTICE_EVERY: Duration = Duration::from_secs(2);

pub async fn run(a: Args) -> anyhow::Result<()> {
    let db = a.cp.connect().await?;
    let shutdown = super::shutdown_signal();
    let bound = start(db, &a, shutdown.clone()).await?;
    eprintln!("dashboard on http://{bound}/");
    shutdown.cancelled().await;
    Ok(())
}

/// Serve the dashboard until `cancel`; returns the address bound (`dmf demo --dashboard` too).
pub async fn start(db: Db, a: &Args, cancel: CancellationToken) -> anyhow::Result<SocketAddr> {
    let operators = match (&a.operators, a.allow_actions) {
        (Some(path), true) => Some(operators::Operators::load(path)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(a.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", a.listen))?;
    let bound = listener.local_addr()?;
    let (tx, rx) = watch::channel(String::new());
    tokio::spawn(watch_changes(db.clone(), tx, Duration::from_millis(a.refresh_ms.max(100)), cancel.clone()));
    let dash = Arc::new(Dash { db, operators, changes: rx, bound, streams: Arc::default(), fleet_cache: tokio::sync::Mutex::new(None) });
    tracing::info!(%bound, actions = dash.operators.is_some(), "dashboard serving");
    tokio::spawn(dmf_telemetry::http::serve(listener, cancel, move |req| {
        let dash = dash.clone();
        async move { route(&dash, req).await }
    }));
    Ok(bound)
}

/// The one task that reads the control plane's change mark for every open page.
async fn watch_changes(db: Db, tx: watch::Sender<String>, every: Duration, cancel: CancellationToken) {
    loop {
        match db.change_mark().await {
            Ok(mark) => {
                tx.send_if_modified(|m| {
                    let changed = *m != mark;
                    *m = mark;
                    changed
                });
            }
            Err(e) => tracing::debug!(error = %e, "dashboard: change mark not read"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Whether the request names this server as a loopback server is reached (any `Host` when it
/// serves a non-loopback address: its operator chose to expose it).
fn host_allowed(bound: SocketAddr, host: Option<&str>) -> bool {
    if !bound.ip().is_loopback() {
        return true;
    }
    let port = bound.port();
    host.is_some_and(|h| [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")].iter().any(|ok| ok == h))
}

async fn route(dash: &Dash, req: Request) -> Reply {
    if !host_allowed(dash.bound, req.header("host")) {
        return Reply::status(421, "this dashboard answers only as 127.0.0.1 or localhost");
    }
    let path = req.path.clone();
    let result = match (req.method.as_str(), path.as_str()) {
        ("GET", "/") => pages::fleet(dash, req.query("fragment").is_some()).await,
        ("GET", "/metrics") => gauges::render(&dash.db).await.map(|text| Reply::ok(dmf_telemetry::metrics::CONTENT_TYPE, text)),
        ("GET", "/events") => Ok(events(dash)),
        ("GET", "/assets/dashboard.js") => Ok(Reply::ok("text/javascript; charset=utf-8", include_str!("assets/dashboard.js"))),
        ("GET", "/assets/dashboard.css") => Ok(Reply::ok("text/css; charset=utf-8", include_str!("assets/dashboard.css"))),
        ("GET", p) if p.starts_with("/cluster/") => {
            let hours = req.query("hours").and_then(|h| h.parse::<f64>().ok()).filter(|h| h.is_finite() && *h > 0.0).unwrap_or(1.0).min(24.0 * 90.0);
            pages::cluster(dash, &p["/cluster/".len()..], hours, req.query("fragment").is_some(), req.query("done")).await
        }
        ("POST", p) => match p.strip_prefix("/cluster/").and_then(|r| r.strip_suffix("/action")).filter(|c| !c.is_empty()) {
            Some(cluster) => {
                // a browser sends its page's origin: a form posted from another site is refused
                if req.header("origin").is_some_and(|o| !same_origin(o, req.header("host"))) {
                    return Reply::status(403, "cross-origin request refused");
                }
                Ok(operators::act(dash, cluster, &req.form()).await)
            }
            None => Ok(Reply::not_found()),
        },
        ("GET", _) => Ok(Reply::not_found()),
        _ => Ok(Reply::status(405, "method not allowed")),
    };
    result.unwrap_or_else(|e| {
        let text = dmf_db::secret::redact(&format!("{e:#}"));
        tracing::warn!(path = ?path, error = %text, "dashboard request failed");
        Reply::status(if text.contains("no cluster named") { 404 } else { 503 }, &text)
    })
}

/// Server-sent events: a message whenever the control plane's change mark moves (at most one per
/// `NOTICE_EVERY`); the page then fetches its fragment again (`assets/dashboard.js`).
fn events(dash: &Dash) -> Reply {
    use std::sync::atomic::Ordering;
    if dash.streams.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
        dash.streams.fetch_sub(1, Ordering::Relaxed);
        return Reply::status(503, "too many open dashboard pages");
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut changes = dash.changes.clone();
    let open = dash.streams.clone();
    tokio::spawn(async move {
        struct Open(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Open {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _open = Open(open);
        // a retry hint, and the current mark so that the page knows where it stands
        let first = format!("retry: 2000\ndata: {}\n\n", changes.borrow_and_update().clone());
        if tx.send(first).await.is_err() {
            return;
        }
        loop {
            let message = tokio::select! {
                changed = changes.changed() => match changed {
                    Ok(()) => format!("data: {}\n\n", changes.borrow_and_update().clone()),
                    Err(_) => return,
                },
                // a comment now and then: proxies and browsers keep the stream open
                _ = tokio::time::sleep(Duration::from_secs(15)) => ": keepalive\n\n".to_string(),
                _ = tx.closed() => return,
            };
            if tx.send(message).await.is_err() {
                return;
            }
            tokio::time::sleep(NOTICE_EVERY).await;
        }
    });
    Reply::events(rx)
}

/// Whether an `Origin` header names this server (as the browser reached it: `Host`).
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    host.is_some_and(|h| origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(h))
}

/// The link to a cluster's page.
pub(crate) fn cluster_href(cluster: &str) -> String {
    format!("/cluster/{}", encode(cluster))
}
