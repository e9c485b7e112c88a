//! One record per in-flight request or stream (for status lists and deadline ends), kept
//! in its backend's sharded [`ItemSet`].

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::unix::io::RawFd,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::{Instant, SystemTime},
};

use super::counts::Kind;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why work was ended on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Deadline = 1,
    Shutdown = 2,
}

/// One in-flight request or stream.
#[derive(Debug)]
pub struct Tracked {
    pub id: u64,
    kind: AtomicU8,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub route: Arc<str>,
    pub uri: http::Uri,
    pub client: Option<SocketAddr>,
    /// Upstream socket while attached; cleared when the upstream part is over.
    fd: Mutex<Option<RawFd>>,
    ended: AtomicU8,
}

impl Tracked {
    /// A new `http` record.
    pub(super) fn new(route: Arc<str>, uri: http::Uri, client: Option<SocketAddr>) -> Tracked {
        Tracked {
            // Relaxed: only uniqueness matters.
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            kind: AtomicU8::new(Kind::Http as u8),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            route,
            uri,
            client,
            fd: Mutex::new(None),
            ended: AtomicU8::new(0),
        }
    }

    /// Set the kind; returns the previous one.
    pub(super) fn swap_kind(&self, k: Kind) -> Kind {
        Kind::from_u8(self.kind.swap(k as u8, Ordering::Relaxed))
    }

    /// Current kind.
    pub fn kind(&self) -> Kind {
        Kind::from_u8(self.kind.load(Ordering::Relaxed))
    }

    /// Why it was ended on purpose, if it was.
    pub fn ended(&self) -> Option<EndReason> {
        match self.ended.load(Ordering::Acquire) {
            1 => Some(EndReason::Deadline),
            2 => Some(EndReason::Shutdown),
            _ => None,
        }
    }

    /// Remember the upstream socket (set on connect; `None` when released).
    pub fn set_fd(&self, fd: Option<RawFd>) {
        *self.fd.lock().unwrap_or_else(|p| p.into_inner()) = fd;
    }

    /// End this work on purpose: mark it, then shut the upstream socket down so the proxy
    /// task wakes at once even when nothing is flowing. The proxy's error and body hooks see
    /// the mark and finish politely (clean end of SSE body, WebSocket close 1001).
    /// `before_shutdown` may write to the socket first (the WebSocket close frame upstream).
    /// Returns false when the work had no upstream socket (already over).
    pub fn end(&self, reason: EndReason, before_shutdown: impl FnOnce(RawFd)) -> bool {
        self.ended.store(reason as u8, Ordering::Release);
        let guard = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fd) = *guard else { return false };
        before_shutdown(fd);
        // SAFETY: `fd` is the live upstream socket of this request: it is registered after
        // connect and cleared under this same lock before the connection is released, so it
        // cannot have been closed or reused while we hold the lock. shutdown(2) does not
        // close the descriptor; pingora still owns and closes it.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
        true
    }

    /// Age of this work.
    pub fn age(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.started)
    }
}

const SHARDS: usize = 8;

/// The tracked records of one backend, sharded to keep lock contention low.
#[derive(Debug, Default)]
pub struct ItemSet {
    shards: [Mutex<HashMap<u64, Arc<Tracked>>>; SHARDS],
}

impl ItemSet {
    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        // Poisoning cannot leave a map half-updated (single insert/remove).
        self.shards[id as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn insert(&self, t: Arc<Tracked>) {
        self.shard(t.id).insert(t.id, t);
    }

    pub(super) fn remove(&self, id: u64) {
        self.shard(id).remove(&id);
    }

    /// Every record, oldest first.
    pub fn all(&self) -> Vec<Arc<Tracked>> {
        let mut v: Vec<_> = (0..SHARDS as u64)
            .flat_map(|s| self.shard(s).values().cloned().collect::<Vec<_>>())
            .collect();
        v.sort_by_key(|t| t.started);
        v
    }
}
