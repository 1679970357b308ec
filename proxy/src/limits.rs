//! The proxy's limits on what clients may make it hold: connections (`--max-client-conn`) and the
//! memory of buffered messages across all sessions (`--max-buffer-bytes`). A sidecar shares its
//! host with the application: one client must not be able to take the memory of the others.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::Shared;

/// Messages up to this size are read into a session's ordinary buffer without asking the budget:
/// what any session holds anyway.
pub const UNACCOUNTED: usize = 1 << 20;

/// How long a large message being received may go without a byte before its session is closed
/// and its share of the budget given back.
pub const MESSAGE_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Bytes of buffered messages the budget has handed out, and clients connected.
#[derive(Debug, Default)]
pub struct Usage {
    buffered: AtomicUsize,
    clients: AtomicUsize,
}

impl Usage {
    pub fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

/// Bytes a session holds of the buffer budget, given back when dropped.
pub struct BufferLease {
    shared: Arc<Shared>,
    bytes: usize,
}

impl BufferLease {
    /// Take `bytes` of the budget, or None when they would pass `--max-buffer-bytes`.
    pub fn take(shared: &Arc<Shared>, bytes: usize) -> Option<BufferLease> {
        let cap = shared.opts.max_buffer_bytes;
        let usage = &shared.usage.buffered;
        let mut now = usage.load(Ordering::Relaxed);
        loop {
            if now.checked_add(bytes).is_none_or(|total| total > cap) {
                return None;
            }
            match usage.compare_exchange_weak(now, now + bytes, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(BufferLease { shared: shared.clone(), bytes }),
                Err(seen) => now = seen,
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for BufferLease {
    fn drop(&mut self) {
        self.shared.usage.buffered.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A connected client, counted until it is dropped.
pub struct ClientSlot {
    shared: Arc<Shared>,
    /// How many clients there were with this one.
    pub count: usize,
}

impl ClientSlot {
    pub fn take(shared: &Arc<Shared>) -> ClientSlot {
        let count = shared.usage.clients.fetch_add(1, Ordering::AcqRel) + 1;
        ClientSlot { shared: shared.clone(), count }
    }

    /// Over `--max-client-conn`.
    pub fn over(&self) -> bool {
        self.count > self.shared.opts.max_client_conn
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.shared.usage.clients.fetch_sub(1, Ordering::AcqRel);
    }
}
