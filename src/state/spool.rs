//! Spool depth of one route, as the proxy and the replayer share it: items pending and dead
//! (refreshed from the store), writes under way, and the age of the oldest pending item.
//!
//! While anything is pending or being written, new spoolable requests of the route are
//! spooled behind it rather than sent ahead of it (arrival order holds).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// One route's spool counts. Kept by route name across reloads.
#[derive(Debug, Default)]
pub struct SpoolDepth {
    pending: AtomicU64,
    dead: AtomicU64,
    /// Writes accepted but not yet committed.
    writing: AtomicU64,
    /// Creation time (unix ms) of the oldest pending item; 0 = none.
    oldest_ms: AtomicU64,
    /// Woken when an item is committed (the replayer waits on it).
    pub committed: Notify,
}

/// A write under way; counts as queued until it is committed or dropped.
pub struct Writing<'a>(&'a SpoolDepth);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        // AcqRel pairs with the Acquire in `queued`: a committed item is counted as pending
        // before the write stops counting.
        self.0.writing.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SpoolDepth {
    /// Whether items are pending or being written: new requests must queue behind them.
    pub fn queued(&self) -> bool {
        self.writing.load(Ordering::Acquire) > 0 || self.pending.load(Ordering::Acquire) > 0
    }

    /// Items pending.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// Items dead (kept for an operator).
    pub fn dead(&self) -> u64 {
        // Relaxed: a statistic.
        self.dead.load(Ordering::Relaxed)
    }

    /// Items stored, pending or dead, plus writes under way (the `max_items` check).
    pub fn total(&self) -> u64 {
        self.pending() + self.dead() + self.writing.load(Ordering::Acquire)
    }

    /// Oldest pending item's creation time (unix ms), if any.
    pub fn oldest_ms(&self) -> Option<u64> {
        Some(self.oldest_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    /// Start a write (counted as queued until the guard drops).
    pub fn begin_write(&self) -> Writing<'_> {
        self.writing.fetch_add(1, Ordering::AcqRel);
        Writing(self)
    }

    /// A write committed the item created at `created_ms`.
    pub fn committed(&self, created_ms: u64) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let _ =
            self.oldest_ms
                .compare_exchange(0, created_ms, Ordering::Relaxed, Ordering::Relaxed);
        self.committed.notify_waiters();
        self.committed.notify_one();
    }

    /// An item left the pending set (delivered, dead or deleted).
    pub fn left_pending(&self) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// A pending item died (kept for an operator).
    pub fn died(&self) {
        self.left_pending();
        self.dead.fetch_add(1, Ordering::Relaxed);
    }

    /// Replace the counts with the store's.
    pub fn set(&self, pending: u64, dead: u64, oldest_ms: Option<u64>) {
        self.pending.store(pending, Ordering::Release);
        self.dead.store(dead, Ordering::Relaxed);
        self.oldest_ms
            .store(oldest_ms.unwrap_or(0), Ordering::Relaxed);
    }
}
