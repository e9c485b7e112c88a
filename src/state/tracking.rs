//! In-flight tracking by kind, with a record per request for status lists and deadlines.
//!
//! A [`Tracking`] guard lives in the request context from the backend pick to the end of the
//! response; it counts on the backend and its pool (`http` at first, moved to `sse` or
//! `websocket` when the response says so) and brings every count down in `Drop`, on every
//! path. Each guard registers a [`Tracked`] record in its backend's sharded set so a drain can
//! list streams and end work at a deadline (through the upstream socket, see [`Tracked::end`]).

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

use serde::Serialize;

use super::backend::BackendState;

/// What kind of work a request turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Http = 0,
    Sse = 1,
    WebSocket = 2,
}

impl Kind {
    /// All kinds, in index order.
    pub const ALL: [Kind; 3] = [Kind::Http, Kind::Sse, Kind::WebSocket];

    /// Name as used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Sse => "sse",
            Kind::WebSocket => "websocket",
        }
    }

    /// SSE and WebSocket are streams (their own deadline).
    pub fn is_stream(self) -> bool {
        self != Kind::Http
    }

    fn from_u8(v: u8) -> Kind {
        match v {
            1 => Kind::Sse,
            2 => Kind::WebSocket,
            _ => Kind::Http,
        }
    }
}

/// In-flight counts by kind.
#[derive(Debug, Default)]
pub struct Counts([AtomicU64; 3]);

/// A snapshot of [`Counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CountsSnapshot {
    pub http: u64,
    pub sse: u64,
    pub websocket: u64,
}

impl CountsSnapshot {
    /// Sum over kinds.
    pub fn total(&self) -> u64 {
        self.http + self.sse + self.websocket
    }
}

impl Counts {
    pub(crate) fn add(&self, k: Kind) {
        // Relaxed: the increment publishes nothing; readers of zero use the AcqRel decrement.
        self.0[k as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Decrement; true when the total over all kinds is now zero.
    pub(crate) fn sub(&self, k: Kind) -> bool {
        // AcqRel: orders the decrement before a waiter that reads zero.
        self.0[k as usize].fetch_sub(1, Ordering::AcqRel);
        self.total() == 0
    }

    /// Count of one kind.
    pub fn get(&self, k: Kind) -> u64 {
        self.0[k as usize].load(Ordering::Acquire)
    }

    /// Sum over kinds.
    pub fn total(&self) -> u64 {
        Kind::ALL.iter().map(|k| self.get(*k)).sum()
    }

    /// All counts.
    pub fn snapshot(&self) -> CountsSnapshot {
        CountsSnapshot {
            http: self.get(Kind::Http),
            sse: self.get(Kind::Sse),
            websocket: self.get(Kind::WebSocket),
        }
    }
}

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

    fn insert(&self, t: Arc<Tracked>) {
        self.shard(t.id).insert(t.id, t);
    }

    fn remove(&self, id: u64) {
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

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// RAII tracking of one request on one backend.
pub struct Tracking {
    backend: Arc<BackendState>,
    item: Arc<Tracked>,
}

impl Tracking {
    /// Count a new `http` request on `backend`.
    pub fn new(
        backend: Arc<BackendState>,
        route: Arc<str>,
        uri: http::Uri,
        client: Option<SocketAddr>,
    ) -> Self {
        let item = Arc::new(Tracked {
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
        });
        backend.counts.add(Kind::Http);
        backend.pool.counts.add(Kind::Http);
        backend.items.insert(item.clone());
        Self { backend, item }
    }

    /// Reclassify (e.g. `http` → `sse` when the response is an event stream).
    pub fn set_kind(&self, k: Kind) {
        let old = Kind::from_u8(self.item.kind.swap(k as u8, Ordering::Relaxed));
        if old != k {
            // Add before subtracting so the total never dips to a false zero.
            self.backend.counts.add(k);
            self.backend.pool.counts.add(k);
            self.backend.counts.sub(old);
            self.backend.pool.counts.sub(old);
        }
    }

    /// The record.
    pub fn item(&self) -> &Arc<Tracked> {
        &self.item
    }

    /// The backend counted on.
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.backend
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        self.item.set_fd(None);
        self.backend.items.remove(self.item.id);
        let k = self.item.kind();
        if self.backend.counts.sub(k) {
            self.backend.on_idle();
        }
        if self.backend.pool.counts.sub(k) {
            self.backend.pool.on_idle();
        }
    }
}
