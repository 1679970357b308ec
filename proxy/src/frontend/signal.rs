//! A session's stop signal: raised by the hold coordinator (deadline) or at shutdown, awaited by
//! the session's relay loop without a lock (an atomic flag and an `AtomicWaker`), since the loop
//! polls it on every wake.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// End the session now, even inside a transaction.
pub const KILL: u8 = 1;
/// End the session at its next transaction boundary.
pub const SHUTDOWN: u8 = 2;

#[derive(Debug, Default)]
pub struct Signal {
    bits: AtomicU8,
    waker: AtomicWaker,
}

impl Signal {
    pub fn raise(&self, bit: u8) {
        self.bits.fetch_or(bit, Ordering::AcqRel);
        self.waker.wake();
    }

    pub fn raised(&self) -> u8 {
        self.bits.load(Ordering::Acquire)
    }

    /// Resolves with the raised bits that are in `mask`.
    pub fn wait(&self, mask: u8) -> Wait<'_> {
        Wait { signal: self, mask }
    }
}

pub struct Wait<'a> {
    signal: &'a Signal,
    mask: u8,
}

impl Future for Wait<'_> {
    type Output = u8;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u8> {
        let bits = self.signal.raised() & self.mask;
        if bits != 0 {
            return Poll::Ready(bits);
        }
        self.signal.waker.register(cx.waker());
        match self.signal.raised() & self.mask {
            0 => Poll::Pending,
            bits => Poll::Ready(bits),
        }
    }
}
