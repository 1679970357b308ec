//! The proxy's counters, rendered for Prometheus on `--metrics ADDR` and sent with each heartbeat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::relay::RelayThread;
use crate::Shared;

macro_rules! counters {
    ($($name:ident : $kind:literal, $help:literal;)*) => {
        #[derive(Debug, Default)]
        pub struct Metrics { $(pub $name: AtomicU64,)* }

        impl Metrics {
            /// Prometheus text exposition format.
            pub fn render(&self, cluster: &str) -> String {
                let mut out = String::new();
                $(
                    out.push_str(concat!("# HELP dmf_proxy_", stringify!($name), " ", $help, "\n"));
                    out.push_str(concat!("# TYPE dmf_proxy_", stringify!($name), " ", $kind, "\n"));
                    out.push_str(&format!(concat!("dmf_proxy_", stringify!($name), "{{cluster=\"{}\"}} {}\n"), cluster, self.$name.load(Ordering::Relaxed)));
                )*
                out
            }

            pub fn json(&self) -> serde_json::Value {
                serde_json::json!({ $(stringify!($name): self.$name.load(Ordering::Relaxed),)* })
            }
        }
    };
}

counters! {
    connections_total: "counter", "Client connections accepted.";
    connections_active: "gauge", "Client sessions open now.";
    connections_refused: "counter", "Client connections refused (authentication, protocol, backend unreachable).";
    protocol_errors: "counter", "Connections closed because the client broke the protocol.";
    backends_reused_total: "counter", "Client connections given a backend another client left (no new server connection).";
    backends_idle: "gauge", "Backends parked for the next client right now.";
    transactions_total: "counter", "Transactions (and autocommit statements) completed through the proxy.";
    held_now: "gauge", "Transactions waiting at a hold right now.";
    held_total: "counter", "Transactions that waited at a hold.";
    hold_time_us_total: "counter", "Microseconds transactions spent waiting at holds.";
    hold_longest_us: "gauge", "The longest a transaction waited at the last hold, its move to the new primary included, microseconds.";
    route_epoch: "gauge", "Route epoch this proxy has applied.";
    reads_to_read_endpoint: "counter", "Read-only statements sent to the read endpoint.";
    reads_to_primary: "counter", "Read-only statements kept on the primary (read-your-writes, read endpoint unavailable).";
    sessions_moved: "counter", "Sessions moved to a new primary with their settings and prepared statements.";
    sessions_closed_unmovable: "counter", "Sessions closed at a move because they held state that cannot move.";
    shadow_mirrored: "counter", "Statements mirrored to the shadow endpoint.";
    shadow_dropped: "counter", "Statements not mirrored because the shadow queue was full.";
    shadow_divergences: "counter", "Mirrored statements whose outcome differed from the primary's.";
    shadow_failures: "counter", "Mirrored statements that could not be run on the shadow endpoint at all.";
    shadow_primary_us_total: "counter", "Primary latency of mirrored statements, microseconds.";
    shadow_target_us_total: "counter", "Shadow latency of mirrored statements, microseconds.";
    idle_polling: "gauge", "Relay threads polling after traffic instead of sleeping, now.";
    idle_poll_window_us: "gauge", "The widest idle-polling window among the relay threads: how long a thread polls after the last read before it sleeps, microseconds (adaptive).";
    idle_poll_us_total: "counter", "Microseconds relay threads spent in polling mode after traffic, all threads together (wall time, relaying included).";
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub fn sub(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Ordering::Relaxed);
}

/// The counters that sum up the relay threads' own.
fn refresh(shared: &Shared) {
    let polls = || shared.relays.iter().map(|r| &r.poll);
    let widest = polls().map(|p| p.window_us.load(Ordering::Relaxed)).max().unwrap_or(0);
    shared.metrics.idle_poll_window_us.store(widest, Ordering::Relaxed);
    shared.metrics.idle_poll_us_total.store(polls().map(|p| p.polled_us.load(Ordering::Relaxed)).sum(), Ordering::Relaxed);
}

/// A metric shown for each relay thread: name, kind, help, value.
type PerThread = (&'static str, &'static str, &'static str, fn(&RelayThread) -> u64);

const PER_THREAD: [PerThread; 3] = [
    ("relay_connections", "gauge", "Client connections on each relay thread now.", |r| r.connections.load(Ordering::Relaxed)),
    ("relay_idle_poll_window_us", "gauge", "Each relay thread's idle-polling window, microseconds.", |r| r.poll.window_us.load(Ordering::Relaxed)),
    ("relay_idle_poll_us_total", "counter", "Microseconds each relay thread spent in polling mode after traffic (wall time, relaying included).", |r| {
        r.poll.polled_us.load(Ordering::Relaxed)
    }),
];

/// Everything `/metrics` shows: the counters, each relay thread's own, and the shadow summary.
pub fn text(shared: &Shared) -> String {
    refresh(shared);
    let cluster = &shared.opts.cluster;
    let mut out = shared.metrics.render(cluster);
    for (name, kind, help, value) in PER_THREAD {
        out.push_str(&format!("# HELP dmf_proxy_{name} {help}\n# TYPE dmf_proxy_{name} {kind}\n"));
        for r in &shared.relays {
            out.push_str(&format!("dmf_proxy_{name}{{cluster=\"{cluster}\",thread=\"{}\"}} {}\n", r.index, value(r)));
        }
    }
    out.push_str(&shared.shadow_summary_metrics());
    out
}

/// The counters as JSON (heartbeats, `Handle::metrics`), with a `relay_threads` list of each
/// thread's own.
pub fn json(shared: &Shared) -> serde_json::Value {
    refresh(shared);
    let mut v = shared.metrics.json();
    v["relay_threads"] = shared
        .relays
        .iter()
        .map(|r| {
            let mut t = serde_json::json!({ "thread": r.index });
            for (name, _, _, value) in PER_THREAD {
                t[name] = value(r).into();
            }
            t
        })
        .collect();
    v
}

/// Serve `GET /metrics` until shutdown.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut sock, _)) = accepted else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut req = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let (status, body) = if req.starts_with(b"GET /metrics ") || req.starts_with(b"GET / ") {
                ("200 OK", text(&shared))
            } else {
                ("404 Not Found", "GET /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
