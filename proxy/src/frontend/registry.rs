//! The live sessions of one proxy as the rest of it sees them: how to end each one, where its
//! cancel requests go, what it holds on the primary (for a fence to spare), and the backend
//! opened for it ahead of a move.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::signal::Signal;
use crate::backend::Backend;
use crate::lock;
use crate::protocol::startup::Params;

/// Where a client's CancelRequest must go: the backend the session is using right now.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
}

impl CancelTarget {
    /// Where a cancel of what runs on `backend` goes.
    pub fn of(backend: &Backend) -> CancelTarget {
        let (pid, secret) = backend.key();
        CancelTarget { host: backend.endpoint().host.clone(), port: backend.endpoint().port, pid, secret }
    }
}

/// A session's current cancel target, updated by the session when it changes backend.
pub type SharedCancelTarget = Arc<Mutex<Option<CancelTarget>>>;

/// A backend opened ahead of a move (during a flip's hold), taken by the session when it moves.
pub type SpareBackend = Arc<Mutex<Option<Backend>>>;

/// A live session as the rest of the proxy sees it.
#[derive(Clone)]
pub struct SessionEntry {
    /// Raised to end the session (hold deadline, shutdown).
    pub signal: Arc<Signal>,
    /// Inside a transaction (or a request not yet answered).
    pub in_tx: Arc<AtomicBool>,
    /// The backend the session uses now (its pid is reported to the control plane at each
    /// acknowledgement, so that a fence spares it).
    pub cancel: SharedCancelTarget,
    /// The client's startup parameters (to log in to a new backend for it).
    pub params: Arc<Params>,
    /// A backend on the next primary the route announced, opened (and warmed) ahead of the move.
    pub spare: SpareBackend,
    /// The relay thread the session runs on (`relay`).
    pub thread: usize,
}

/// Every live session, and the cancel keys the proxy gave their clients.
#[derive(Default)]
pub struct Registry {
    /// Proxy-made cancel keys -> where each session's cancel goes now.
    cancels: Mutex<HashMap<(i32, i32), SharedCancelTarget>>,
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    next_session: AtomicU64,
}

impl Registry {
    /// Register a session that starts on server process `pid`: its id, and the cancel key its
    /// client is given. The key is that real pid (what the client sees in pg_stat_activity, its
    /// notifications, pg_terminate_backend, until the session moves to another server) with a
    /// secret the proxy makes of 32 random bits: a backend reused by another client gets another
    /// secret, so that no client can cancel another's query.
    pub fn insert(&self, entry: SessionEntry, pid: i32) -> (u64, (i32, i32)) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.sessions).insert(id, entry.clone());
        let mut cancels = lock(&self.cancels);
        let key = loop {
            // (bytes 0 to 3 of a v4 UUID are all random; 6 and 8 carry its version and variant)
            let b = *uuid::Uuid::new_v4().as_bytes();
            let secret = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            if !cancels.contains_key(&(pid, secret)) {
                break (pid, secret);
            }
        };
        cancels.insert(key, entry.cancel);
        (id, key)
    }

    pub fn remove(&self, id: u64, key: (i32, i32)) {
        lock(&self.cancels).remove(&key);
        lock(&self.sessions).remove(&id);
    }

    /// Where a cancel request with this key goes now.
    pub fn cancel_target(&self, key: (i32, i32)) -> Option<CancelTarget> {
        lock(&self.cancels).get(&key).and_then(|t| lock(t).clone())
    }

    /// A copy of every live session's entry.
    pub fn entries(&self) -> Vec<SessionEntry> {
        lock(&self.sessions).values().cloned().collect()
    }

    /// Raise `bits` on every session (or only those inside a transaction).
    pub fn raise(&self, bits: u8, only_in_transaction: bool) {
        for s in lock(&self.sessions).values() {
            if !only_in_transaction || s.in_tx.load(Ordering::SeqCst) {
                s.signal.raise(bits);
            }
        }
    }

    /// The server pids the sessions hold on `host:port`.
    pub fn backend_pids_on(&self, host: &str, port: u16) -> Vec<i32> {
        lock(&self.sessions)
            .values()
            .filter_map(|s| {
                let t = lock(&s.cancel);
                t.as_ref().filter(|t| t.host == host && t.port == port).map(|t| t.pid)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::signal::KILL;

    fn entry(in_tx: bool) -> SessionEntry {
        SessionEntry {
            signal: Arc::new(Signal::default()),
            in_tx: Arc::new(AtomicBool::new(in_tx)),
            cancel: Arc::new(Mutex::new(Some(CancelTarget { host: "db".into(), port: 5432, pid: 42, secret: 7 }))),
            params: Arc::new(Params::default()),
            spare: Arc::new(Mutex::new(None)),
            thread: 0,
        }
    }

    #[test]
    fn each_session_gets_its_own_key_and_a_removed_one_cancels_nothing() {
        let r = Registry::default();
        let (a, ka) = r.insert(entry(false), 42);
        let (b, kb) = r.insert(entry(true), 42);
        assert_ne!(a, b);
        assert_ne!(ka, kb, "two clients of one server process (one after the other) get two secrets");
        assert_eq!((ka.0, kb.0), (42, 42), "the server's pid");
        assert_eq!(r.cancel_target(ka).map(|t| t.pid), Some(42));
        r.remove(a, ka);
        assert!(r.cancel_target(ka).is_none());
        assert_eq!(r.entries().len(), 1);
        assert_eq!(r.backend_pids_on("db", 5432), vec![42]);
        assert!(r.backend_pids_on("db", 5433).is_empty());
    }

    #[test]
    fn a_kill_for_transactions_spares_sessions_at_a_boundary() {
        let r = Registry::default();
        let idle = entry(false);
        let busy = entry(true);
        r.insert(idle.clone(), 1);
        r.insert(busy.clone(), 2);
        r.raise(KILL, true);
        assert_eq!((idle.signal.raised(), busy.signal.raised()), (0, KILL));
        r.raise(KILL, false);
        assert_eq!(idle.signal.raised(), KILL);
    }
}
