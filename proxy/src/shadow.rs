//! Shadow traffic: a sampled autocommit statement is mirrored to the shadow endpoint inside a
//! transaction that is always rolled back, and its outcome (error class, row count, hash of the
//! rows) and latency are compared with the primary's. The client never waits for the mirror: the
//! queue is bounded and a full queue drops (and counts) the statement.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::metrics::{add, Metrics};
use crate::protocol::startup::Params;
use crate::protocol::build;
use crate::protocol::tag::server;
use crate::router::classify::Class;
use crate::{lock, Shared};

/// Divergences kept for `dmf route show` and the heartbeat.
const RECENT: usize = 20;

/// What to run on the shadow endpoint.
#[derive(Clone, Debug)]
pub struct MirrorSpec {
    pub user: String,
    pub sql: String,
    pub class: Class,
    /// Query, or unnamed Parse + Bind + Execute + Sync.
    pub messages: Vec<u8>,
}

impl MirrorSpec {
    pub fn new(user: &str, sql: &str, class: Class, parse: Option<&[u8]>, bind: Option<&[u8]>) -> MirrorSpec {
        let messages = match (parse, bind) {
            (Some(p), Some(b)) => {
                let mut m = unnamed(p, 1);
                m.extend(unnamed(b, 2));
                m.extend_from_slice(&[crate::protocol::tag::client::EXECUTE, 0, 0, 0, 9, 0, 0, 0, 0, 0]);
                m.extend(build::sync());
                m
            }
            _ => build::query(sql),
        };
        MirrorSpec { user: user.to_string(), sql: sql.to_string(), class, messages }
    }
}

/// The same message with its first `names` names (statement, portal) made empty.
fn unnamed(msg: &[u8], names: usize) -> Vec<u8> {
    let mut body = &msg[5..];
    for _ in 0..names {
        let end = body.iter().position(|&b| b == 0).map_or(body.len(), |e| e + 1);
        body = &body[end..];
    }
    let mut out = vec![msg[0], 0, 0, 0, 0];
    out.extend(std::iter::repeat_n(0u8, names));
    out.extend_from_slice(body);
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

/// What one side answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// SQLSTATE of the error, if any.
    pub error: Option<String>,
    pub rows: Option<u64>,
    /// FNV-1a of the DataRow bodies, in order.
    pub hash: u64,
}

impl Outcome {
    fn same_as(&self, other: &Outcome, class: Class) -> bool {
        let class_of = |e: &Option<String>| e.as_ref().map(|c| c.get(..2).unwrap_or("").to_string());
        class_of(&self.error) == class_of(&other.error)
            && (self.error.is_some() || self.rows == other.rows)
            && (class != Class::Read || self.error.is_some() || self.hash == other.hash)
    }
}

/// The primary's side of a mirrored statement, captured while the answer streams to the client.
pub struct Capture {
    spec: MirrorSpec,
    started: Instant,
    outcome: Outcome,
}

impl Capture {
    pub fn new(spec: MirrorSpec) -> Capture {
        Capture { spec, started: Instant::now(), outcome: Outcome { hash: FNV_OFFSET, ..Default::default() } }
    }

    pub fn row(&mut self, body: &[u8]) {
        self.outcome.hash = fnv(self.outcome.hash, body);
    }

    pub fn complete(&mut self, rows: Option<u64>) {
        self.outcome.rows = rows;
    }

    pub fn error(&mut self, code: &str) {
        self.outcome.error = Some(code.to_string());
    }

    pub fn finish(self) -> MirrorItem {
        MirrorItem { spec: self.spec, primary: self.outcome, primary_latency: self.started.elapsed() }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub struct MirrorItem {
    spec: MirrorSpec,
    primary: Outcome,
    primary_latency: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct Divergence {
    pub sql: String,
    pub primary: Outcome,
    pub shadow: Outcome,
    pub at_unix_ms: u64,
}

pub struct Shadow {
    tx: mpsc::Sender<MirrorItem>,
    rx: tokio::sync::Mutex<mpsc::Receiver<MirrorItem>>,
    recent: Mutex<VecDeque<Divergence>>,
}

impl Shadow {
    pub fn new(capacity: usize) -> Shadow {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Shadow { tx, rx: tokio::sync::Mutex::new(rx), recent: Mutex::new(VecDeque::new()) }
    }

    /// Queue a mirror without ever waiting: a full queue drops it.
    pub fn offer(&self, item: MirrorItem, metrics: &Metrics) {
        if self.tx.try_send(item).is_err() {
            add(&metrics.shadow_dropped, 1);
        }
    }

    /// Counters, latency ratio and the latest divergences, for the heartbeat.
    pub fn summary(&self, m: &Metrics) -> serde_json::Value {
        let primary = m.shadow_primary_us_total.load(Ordering::Relaxed);
        let target = m.shadow_target_us_total.load(Ordering::Relaxed);
        serde_json::json!({
            "mirrored": m.shadow_mirrored.load(Ordering::Relaxed),
            "dropped": m.shadow_dropped.load(Ordering::Relaxed),
            "divergences": m.shadow_divergences.load(Ordering::Relaxed),
            "failures": m.shadow_failures.load(Ordering::Relaxed),
            "latency_ratio": (primary > 0).then(|| target as f64 / primary as f64),
            "recent_divergences": lock(&self.recent).iter().cloned().collect::<Vec<_>>(),
        })
    }

    pub fn summary_metrics(&self, cluster: &str, m: &Metrics) -> String {
        let primary = m.shadow_primary_us_total.load(Ordering::Relaxed);
        let target = m.shadow_target_us_total.load(Ordering::Relaxed);
        let ratio = if primary > 0 { target as f64 / primary as f64 } else { 0.0 };
        format!(
            "# HELP dmf_proxy_shadow_latency_ratio Shadow latency over primary latency of mirrored statements.\n# TYPE dmf_proxy_shadow_latency_ratio gauge\ndmf_proxy_shadow_latency_ratio{{cluster=\"{cluster}\"}} {ratio}\n"
        )
    }
}

/// Run mirrored statements on the shadow endpoint, one at a time per worker.
pub async fn worker(shared: Arc<Shared>) {
    let mut conns: HashMap<(String, String), Backend> = HashMap::new();
    loop {
        let item = {
            let mut rx = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                rx = shared.shadow.rx.lock() => rx,
            };
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                item = rx.recv() => match item { Some(i) => i, None => return },
            }
        };
        let Some(endpoint) = shared.route().shadow.clone() else { continue };
        let key = (item.spec.user.clone(), endpoint.dsn.clone());
        if !conns.contains_key(&key) {
            let params = Params(vec![("user".into(), item.spec.user.clone()), ("application_name".into(), "dmf-shadow".into())]);
            match super::frontend::connect_as(endpoint.clone(), &shared, &params, super::frontend::auth::Proof::Password, false).await {
                Ok(b) => {
                    conns.insert(key.clone(), b);
                }
                Err(e) => {
                    add(&shared.metrics.shadow_failures, 1);
                    tracing::warn!(cluster = %shared.opts.cluster, shadow = %endpoint.label(), error = %e, "shadow endpoint unreachable");
                    continue;
                }
            }
        }
        let Some(conn) = conns.get_mut(&key) else { continue };
        match run_mirrored(conn, &item.spec).await {
            Ok((outcome, latency)) => {
                add(&shared.metrics.shadow_mirrored, 1);
                add(&shared.metrics.shadow_primary_us_total, item.primary_latency.as_micros() as u64);
                add(&shared.metrics.shadow_target_us_total, latency.as_micros() as u64);
                if !item.primary.same_as(&outcome, item.spec.class) {
                    add(&shared.metrics.shadow_divergences, 1);
                    tracing::info!(cluster = %shared.opts.cluster, sql = %truncate(&item.spec.sql), primary = ?item.primary, shadow = ?outcome, "shadow divergence");
                    let mut recent = lock(&shared.shadow.recent);
                    if recent.len() == RECENT {
                        recent.pop_front();
                    }
                    let at_unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                    recent.push_back(Divergence { sql: truncate(&item.spec.sql), primary: item.primary, shadow: outcome, at_unix_ms });
                }
            }
            Err(e) => {
                add(&shared.metrics.shadow_failures, 1);
                tracing::warn!(cluster = %shared.opts.cluster, error = %e, "mirrored statement failed to run");
                conns.remove(&key);
            }
        }
    }
}

fn truncate(sql: &str) -> String {
    match sql.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &sql[..i]),
        None => sql.to_string(),
    }
}

/// BEGIN; the statement; ROLLBACK, in one write. The outcome is what came between the first and
/// the second ReadyForQuery.
async fn run_mirrored(conn: &mut Backend, spec: &MirrorSpec) -> Result<(Outcome, Duration), crate::Error> {
    let mut msgs = build::query("BEGIN");
    msgs.extend_from_slice(&spec.messages);
    msgs.extend(build::query("ROLLBACK"));
    conn.send(&msgs).await?;
    let mut ready = 0;
    let mut started = Instant::now();
    let mut latency = Duration::ZERO;
    let mut out = Outcome { hash: FNV_OFFSET, ..Default::default() };
    while ready < 3 {
        let m = conn.read_message().await?;
        let (tag, body, f) = (m.tag, &m.body[..], m.frame());
        match (tag, ready) {
            (server::READY_FOR_QUERY, 0) => {
                ready = 1;
                started = Instant::now();
            }
            (server::READY_FOR_QUERY, 1) => {
                ready = 2;
                latency = started.elapsed();
            }
            (server::READY_FOR_QUERY, _) => ready = 3,
            (server::DATA_ROW, 1) => out.hash = fnv(out.hash, body),
            (server::COMMAND_COMPLETE, 1) => out.rows = f.rows(),
            (server::ERROR_RESPONSE, 1) => out.error = Some(f.field(b'C').unwrap_or("XX000").to_string()),
            _ => {}
        }
    }
    Ok((out, latency))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrored_messages_use_the_unnamed_statement_and_portal() {
        let p = build::parse("stmt_7", "select $1", &[23]);
        let b = build::bind("portal", "stmt_7", &[Some(b"1")]);
        let spec = MirrorSpec::new("app", "select $1", Class::Read, Some(&p), Some(&b));
        let mut expected = build::parse("", "select $1", &[23]);
        expected.extend(build::bind("", "", &[Some(b"1")]));
        expected.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
        expected.extend(build::sync());
        assert_eq!(spec.messages, expected);
    }

    #[test]
    fn outcomes_compare_by_error_class_rows_and_read_hash() {
        let a = Outcome { error: None, rows: Some(1), hash: 5 };
        assert!(a.same_as(&a.clone(), Class::Read));
        assert!(!a.same_as(&Outcome { hash: 6, ..a.clone() }, Class::Read));
        assert!(a.same_as(&Outcome { hash: 6, ..a.clone() }, Class::Write));
        assert!(!a.same_as(&Outcome { rows: Some(2), ..a.clone() }, Class::Write));
        let e1 = Outcome { error: Some("23505".into()), rows: None, hash: 0 };
        let e2 = Outcome { error: Some("23503".into()), rows: None, hash: 0 };
        assert!(e1.same_as(&e2, Class::Write));
        assert!(!e1.same_as(&a, Class::Write));
    }
}
