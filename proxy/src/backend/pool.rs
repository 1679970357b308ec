//! Backends their clients left, reset (`DISCARD ALL`) and kept for the next client that logs in
//! the same way on the same route. That client skips the connect, the authentication and the
//! server's process start, and lands on a server connection that is already warm: pgbouncer's
//! server pool, for a proxy that pins each session to one backend.
//!
//! A parked backend is only handed out under the route epoch it was parked in, so nothing parked
//! before a move (or a hold, a rollback) is ever used after it; the reaper closes those, the ones
//! idle for longer than the timeout, and the ones their server closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Backend;
use crate::metrics::{add, Metrics};
use crate::protocol::startup::Params;
use crate::{lock, Error};

/// How long the reset of a backend may take before it is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(2);
/// A backend parked for longer than this is asked a round trip before a client gets it.
pub const CHECK_AFTER: Duration = Duration::from_secs(5);
/// How long that round trip may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Who a backend was opened for: its server and every startup parameter of the client (user,
/// database, application_name, options...), since these are the session's defaults after a reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    dsn: String,
    params: Vec<(String, String)>,
    /// How it logged in: a backend logged in with a password never serves a client the server
    /// only trusted.
    proof: crate::frontend::auth::Proof,
}

impl Key {
    pub fn new(dsn: &str, params: &Params, proof: crate::frontend::auth::Proof) -> Key {
        let mut params = params.0.clone();
        params.sort();
        Key { dsn: dsn.to_string(), params, proof }
    }
}

struct Parked {
    key: Key,
    epoch: u64,
    /// The relay thread whose runtime the socket is registered on.
    thread: usize,
    since: Instant,
    backend: Backend,
}

pub struct Pool {
    /// At most this many parked backends (0: every backend is closed with its session).
    max: usize,
    /// Parked for longer than this, a backend is closed.
    timeout: Duration,
    /// Oldest first: `take` hands out the most recently parked, the warmest.
    idle: Mutex<Vec<Parked>>,
    /// Set by `close_all` (shutdown): nothing is parked any more.
    closed: AtomicBool,
}

impl Pool {
    pub fn new(max: usize, timeout: Duration) -> Pool {
        Pool { max, timeout, idle: Mutex::new(Vec::new()), closed: AtomicBool::new(false) }
    }

    /// A parked backend for `key` under route `epoch`, for a session on relay `thread`, the most
    /// recently parked first. One that
    /// waited longer than `CHECK_AFTER` answers an empty query first: a server can end an idle
    /// connection (idle_session_timeout, a restart) just before it is handed out, and the client
    /// would see that as its own failure (pgbouncer's server_check_delay).
    pub async fn checkout(&self, key: &Key, epoch: u64, thread: usize, metrics: &Metrics) -> Option<Backend> {
        loop {
            let (parked, waited) = self.take(key, epoch, metrics)?;
            let mut backend = match parked.backend.rehome(parked.thread, thread) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "parked backend closed: it could not move to this relay thread");
                    continue;
                }
            };
            if waited >= CHECK_AFTER && !matches!(tokio::time::timeout(CHECK_TIMEOUT, backend.simple_query("")).await, Ok(Ok(_))) {
                backend.close();
                continue;
            }
            add(&metrics.backends_reused_total, 1);
            return Some(backend);
        }
    }

    /// The most recently parked backend for `key` under `epoch` that its server has not visibly
    /// closed, and how long it was parked.
    fn take(&self, key: &Key, epoch: u64, metrics: &Metrics) -> Option<(Parked, Duration)> {
        let mut idle = lock(&self.idle);
        let found = loop {
            let Some(i) = idle.iter().rposition(|p| p.epoch == epoch && p.key == *key) else { break None };
            let p = idle.remove(i);
            if p.backend.alive() {
                let waited = p.since.elapsed();
                break Some((p, waited));
            }
            p.backend.close();
        };
        count(&idle, metrics);
        found
    }

    /// Reset a backend whose client left at a transaction boundary on relay `thread` and park
    /// it; a backend that cannot be reset is closed, and so is every backend once the pool is
    /// closed. The oldest parked backend makes room when the pool is full.
    pub async fn put(&self, mut backend: Backend, key: Key, epoch: u64, thread: usize, metrics: &Metrics) -> Result<(), Error> {
        if self.max == 0 || self.closed.load(Ordering::Relaxed) {
            backend.close();
            return Ok(());
        }
        let reset = tokio::time::timeout(RESET_TIMEOUT, backend.reset())
            .await
            .unwrap_or_else(|_| Err(Error::backend(&backend.endpoint().label(), format!("DISCARD ALL took longer than {RESET_TIMEOUT:?}"))));
        if let Err(e) = reset {
            backend.close();
            return Err(e);
        }
        let mut idle = lock(&self.idle);
        if self.closed.load(Ordering::Relaxed) {
            backend.close();
            return Ok(());
        }
        if idle.len() >= self.max {
            idle.remove(0).backend.close();
        }
        idle.push(Parked { key, epoch, thread, since: Instant::now(), backend });
        count(&idle, metrics);
        Ok(())
    }

    /// Close the backends parked under another route epoch, for longer than the timeout, or
    /// closed by their server. Returns how many were closed.
    pub fn reap(&self, epoch: u64, metrics: &Metrics) -> usize {
        let mut idle = lock(&self.idle);
        let before = idle.len();
        let (keep, close): (Vec<Parked>, Vec<Parked>) =
            std::mem::take(&mut *idle).into_iter().partition(|p| p.epoch == epoch && p.since.elapsed() < self.timeout && p.backend.alive());
        *idle = keep;
        for p in close {
            p.backend.close();
        }
        count(&idle, metrics);
        before - idle.len()
    }

    /// Close every parked backend, and those parked from now on (at shutdown).
    pub fn close_all(&self, metrics: &Metrics) {
        let mut idle = lock(&self.idle);
        self.closed.store(true, Ordering::Relaxed);
        for p in idle.drain(..) {
            p.backend.close();
        }
        count(&idle, metrics);
    }

    /// How often the reaper should look: often enough to honour the timeout within a quarter of it.
    pub fn reap_every(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// The `backends_idle` gauge, after every change to the parked list.
fn count(idle: &[Parked], metrics: &Metrics) {
    metrics.backends_idle.store(idle.len() as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_on_server_and_every_startup_parameter_in_any_order() {
        const P: crate::frontend::auth::Proof = crate::frontend::auth::Proof::Password;
        let a = Params(vec![("user".into(), "app".into()), ("database".into(), "orders".into())]);
        let b = Params(vec![("database".into(), "orders".into()), ("user".into(), "app".into())]);
        assert_eq!(Key::new("postgres://h/orders", &a, P), Key::new("postgres://h/orders", &b, P));
        assert_ne!(Key::new("postgres://h/orders", &a, P), Key::new("postgres://other/orders", &a, P));
        let mut named = a.clone();
        named.set("application_name", "billing");
        assert_ne!(Key::new("postgres://h/orders", &a, P), Key::new("postgres://h/orders", &named, P));
        assert_ne!(Key::new("postgres://h/orders", &a, P), Key::new("postgres://h/orders", &a, crate::frontend::auth::Proof::ServerTrust), "how it logged in counts");
    }
}
