//! Relay threads: client sessions spread over several single-threaded event loops, each thread
//! keeping the sessions it is given for their whole life.
//!
//! Why: one event loop relays every statement of every session, and under load it becomes the
//! chain every transaction waits in, while the other CPUs idle between the processes it wakes. A
//! work-stealing runtime moves tasks, and their sockets' wake-ups, between threads on every
//! statement. Separate loops keep each session's events on one thread, the way Envoy's workers
//! do, or several pgbouncers sharing a port.
//!
//! How: thread 0 is the thread that runs the proxy, with the control-plane tasks; threads 1..
//! are started by [`Relays::start`], each with a current-thread runtime of its own. The accept
//! loop gives each new connection to the thread with the fewest connections, over a channel.
//! Each thread polls after traffic on its own (`idle_poll`). A backend one thread parked may be
//! handed to a session on another: the session re-registers its socket on its own thread first
//! (`Backend::rehome`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::idle_poll::IdlePoll;
use crate::{Error, Shared};

/// What the rest of the proxy sees of one relay thread.
#[derive(Debug)]
pub struct RelayThread {
    /// Its place in `Shared::relays`: 0 is the proxy's own thread.
    pub index: usize,
    /// Client connections on this thread now, sessions and those still logging in.
    pub connections: AtomicU64,
    pub poll: IdlePoll,
}

impl RelayThread {
    pub fn new(index: usize, idle_poll: Duration) -> RelayThread {
        RelayThread { index, connections: AtomicU64::new(0), poll: IdlePoll::new(idle_poll) }
    }
}

/// A connection counted on its relay thread until it is dropped.
pub struct Slot(pub Arc<RelayThread>);

impl Slot {
    fn take(thread: &Arc<RelayThread>) -> Slot {
        thread.connections.fetch_add(1, Ordering::Relaxed);
        Slot(thread.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

type Handoff = (std::net::TcpStream, SocketAddr, Slot);

/// The relay threads other than the proxy's own, and how to reach them. Dropping this (the proxy
/// stopped, or failed before it served) ends them.
pub struct Relays {
    cluster: String,
    /// `Shared::stopped`: cancelled, it ends the threads.
    stopped: CancellationToken,
    /// To thread i + 1.
    senders: Vec<mpsc::UnboundedSender<Handoff>>,
    /// Each thread's end, once its runtime is gone.
    ended: Vec<oneshot::Receiver<()>>,
}

impl Relays {
    /// Start threads 1.. of `shared.relays`; none when the proxy relays on one thread.
    pub fn start(shared: &Arc<Shared>) -> Result<Relays, Error> {
        let mut relays = Relays { cluster: shared.opts.cluster.clone(), stopped: shared.stopped.clone(), senders: Vec::new(), ended: Vec::new() };
        for thread in 1..shared.relays.len() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Config(format!("relay thread {thread}: cannot start its runtime: {e}")))?;
            let (tx, rx) = mpsc::unbounded_channel();
            let (end_tx, end_rx) = oneshot::channel();
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("dmf-relay-{thread}"))
                .spawn(move || {
                    rt.block_on(serve(s, thread, rx).instrument(tracing::info_span!("task", name = "proxy-relay", thread)));
                    // sessions still here were killed at the drain's end: their tasks go with the
                    // runtime, and nothing may keep the thread (a name lookup in a blocking task)
                    rt.shutdown_timeout(Duration::from_secs(1));
                    let _ = end_tx.send(());
                })
                .map_err(|e| Error::Config(format!("relay thread {thread}: cannot start: {e}")))?;
            relays.senders.push(tx);
            relays.ended.push(end_rx);
        }
        Ok(relays)
    }

    /// Run a new connection on the relay thread with the fewest connections. Ties go to the last
    /// thread: thread 0 also runs the control plane's tasks.
    pub fn dispatch(&self, sock: TcpStream, peer: SocketAddr, shared: &Arc<Shared>) {
        let Some(least) = shared.relays.iter().rev().min_by_key(|r| r.connections.load(Ordering::Relaxed)) else { return };
        let here = if least.index == 0 { Some(sock) } else { self.hand_off(sock, peer, least) };
        if let Some(sock) = here {
            tokio::spawn(crate::frontend::connection(sock, peer, shared.clone(), Slot::take(&shared.relays[0])));
        }
    }

    /// Give a connection to relay thread `to` (not 0). The socket comes back if that thread is
    /// gone (it only ends at shutdown), to be served here; None once handed off, or lost (logged).
    fn hand_off(&self, sock: TcpStream, peer: SocketAddr, to: &Arc<RelayThread>) -> Option<TcpStream> {
        let (cluster, thread) = (&self.cluster, to.index);
        let sock = match sock.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(cluster = %cluster, peer = %peer, thread, error = %e, "connection closed: it could not be handed to a relay thread");
                return None;
            }
        };
        let Err(mpsc::error::SendError((sock, _, _))) = self.senders[thread - 1].send((sock, peer, Slot::take(to))) else { return None };
        match TcpStream::from_std(sock) {
            Ok(sock) => Some(sock),
            Err(e) => {
                tracing::warn!(cluster = %cluster, peer = %peer, thread, error = %e, "connection closed: relay thread gone, and it could not be taken back");
                None
            }
        }
    }

    /// End the threads (with the sessions still on them) and wait up to `wait` for them. False if
    /// one did not end in time; it is then left to end on its own.
    pub async fn join(mut self, wait: Duration) -> bool {
        self.stopped.cancel();
        self.senders.clear();
        let ended = std::mem::take(&mut self.ended);
        tokio::time::timeout(wait, futures::future::join_all(ended)).await.is_ok()
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.stopped.cancel();
    }
}

/// Relay thread `thread`: its poller, then the connections handed to it, until the proxy stops.
async fn serve(shared: Arc<Shared>, thread: usize, mut rx: mpsc::UnboundedReceiver<Handoff>) {
    let poller = tokio::spawn(crate::idle_poll::run(shared.clone(), thread).instrument(tracing::info_span!("task", name = "proxy-idle-poll", thread)));
    while let Some((sock, peer, slot)) = rx.recv().await {
        match TcpStream::from_std(sock) {
            Ok(sock) => {
                tokio::spawn(crate::frontend::connection(sock, peer, shared.clone(), slot));
            }
            Err(e) => tracing::warn!(cluster = %shared.opts.cluster, peer = %peer, thread, error = %e, "cannot take a connection on this relay thread"),
        }
    }
    // no more connections: the sessions here drain with the proxy's, and end with its runtime
    shared.stopped.cancelled().await;
    poller.abort();
}
