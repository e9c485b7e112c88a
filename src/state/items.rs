//! One record per in-flight request or stream (for status lists and deadline ends), kept
//! in its backend's sharded [`ItemSet`].

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
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
    /// Upstream socket while attached (its number and the kernel's cookie for it); cleared
    /// when the upstream part is over.
    fd: Mutex<Option<(RawFd, Option<u64>)>>,
    /// The upstream connection may carry other requests (HTTP/2): a deadline end does not
    /// shut it down at once (see [`Tracked::end`]).
    shared: AtomicBool,
    /// A gRPC call whose response has begun: a stream for the drain deadlines.
    open: AtomicBool,
    ended: AtomicU8,
}

impl Tracked {
    /// A new record.
    pub(super) fn new(
        route: Arc<str>,
        uri: http::Uri,
        client: Option<SocketAddr>,
        kind: Kind,
    ) -> Tracked {
        Tracked {
            // Relaxed: only uniqueness matters.
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            kind: AtomicU8::new(kind as u8),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            route,
            uri,
            client,
            fd: Mutex::new(None),
            shared: AtomicBool::new(false),
            open: AtomicBool::new(false),
            ended: AtomicU8::new(0),
        }
    }

    /// Set the kind; returns the previous one.
    pub(super) fn swap_kind(&self, k: Kind) -> Kind {
        Kind::from_index(usize::from(self.kind.swap(k as u8, Ordering::Relaxed)))
    }

    /// Current kind.
    pub fn kind(&self) -> Kind {
        Kind::from_index(usize::from(self.kind.load(Ordering::Relaxed)))
    }

    /// Whether the drain deadlines treat it as a stream: SSE and WebSocket always, a gRPC
    /// call once its response has begun (server streaming, bidirectional).
    pub fn is_stream(&self) -> bool {
        let k = self.kind();
        k.is_stream() || (k == Kind::Grpc && self.open.load(Ordering::Relaxed))
    }

    /// A gRPC call's response began.
    pub fn set_open(&self) {
        self.open.store(true, Ordering::Relaxed);
    }

    /// Why it was ended on purpose, if it was.
    pub fn ended(&self) -> Option<EndReason> {
        match self.ended.load(Ordering::Acquire) {
            1 => Some(EndReason::Deadline),
            2 => Some(EndReason::Shutdown),
            _ => None,
        }
    }

    /// Remember the upstream socket and whether it is an HTTP/2 connection other requests
    /// share.
    pub fn set_upstream(&self, fd: RawFd, shared: bool) {
        self.shared.store(shared, Ordering::Relaxed);
        self.set_fd(Some(fd));
    }

    /// The connection turned out to be HTTP/2 (ALPN chose it).
    pub fn mark_shared(&self) {
        self.shared.store(true, Ordering::Relaxed);
    }

    /// Whether the upstream connection is shared (HTTP/2).
    pub fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Relaxed)
    }

    /// The kernel's id of the upstream socket, while attached.
    pub fn socket(&self) -> Option<u64> {
        self.fd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .and_then(|(_, c)| c)
    }

    /// Mark it ended on purpose without touching its connection (a shared HTTP/2 one): the
    /// proxy ends it politely at its next response chunk.
    pub fn mark_ended(&self, reason: EndReason) {
        self.ended.store(reason as u8, Ordering::Release);
    }

    /// Remember the upstream socket (set on connect; `None` when released).
    pub fn set_fd(&self, fd: Option<RawFd>) {
        let entry = fd.map(|fd| (fd, socket_cookie(fd)));
        *self.fd.lock().unwrap_or_else(|p| p.into_inner()) = entry;
    }

    /// End this work on purpose: mark it, then shut the upstream socket down so the proxy
    /// task wakes at once even when nothing is flowing. The proxy's error and body hooks see
    /// the mark and finish politely (clean end of SSE body, WebSocket close 1001).
    /// `before_shutdown` may write to the socket first (the WebSocket close frame upstream).
    /// Returns false when the work had no upstream socket (already over).
    ///
    /// pingora may close its descriptor at any moment (a failed connection is closed before
    /// the error hook runs), and the number can be reused by an unrelated socket. So this acts
    /// on a duplicate, and only when the duplicate's socket cookie is the one recorded at
    /// connect: the duplicate keeps that socket open while it is used.
    pub fn end(&self, reason: EndReason, before_shutdown: impl FnOnce(RawFd)) -> bool {
        self.ended.store(reason as u8, Ordering::Release);
        let guard = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        let Some((fd, cookie)) = *guard else {
            return false;
        };
        // SAFETY: F_DUPFD_CLOEXEC on any number is harmless: it fails on a closed one, and
        // yields a new descriptor we own otherwise.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return false;
        }
        // SAFETY: `dup` was just created and is owned by nobody else.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        if cookie.is_some() && socket_cookie(dup.as_raw_fd()) != cookie {
            // The number now belongs to another socket: ours is gone already.
            return false;
        }
        before_shutdown(dup.as_raw_fd());
        // SAFETY: `dup` is a live descriptor of this request's upstream socket (checked by its
        // cookie above). shutdown(2) ends the connection for pingora's descriptor as well; the
        // duplicate is closed when dropped.
        unsafe {
            libc::shutdown(dup.as_raw_fd(), libc::SHUT_RDWR);
        }
        true
    }

    /// Age of this work.
    pub fn age(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.started)
    }
}

/// Linux's `SO_COOKIE` (since 4.12): a socket's id, never reused, unlike its number.
const SO_COOKIE: libc::c_int = 57;

/// The kernel's cookie of the socket behind `fd`, if it has one.
fn socket_cookie(fd: RawFd) -> Option<u64> {
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `v`, a u64 on our stack.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    (r == 0 && len as usize == std::mem::size_of::<u64>()).then_some(v)
}

/// Shut down the socket behind `fd` if it is still the one with `cookie` (see
/// [`Tracked::end`] for why a duplicate is used). False when it is gone.
fn shutdown_same(fd: RawFd, cookie: Option<u64>) -> bool {
    // SAFETY: F_DUPFD_CLOEXEC on any number is harmless (fails on a closed one).
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return false;
    }
    // SAFETY: `dup` was just created and is owned by nobody else.
    let dup = unsafe { OwnedFd::from_raw_fd(dup) };
    if cookie.is_none() || socket_cookie(dup.as_raw_fd()) != cookie {
        return false;
    }
    // SAFETY: a live descriptor of the recorded socket (its cookie matched).
    unsafe {
        libc::shutdown(dup.as_raw_fd(), libc::SHUT_RDWR);
    }
    true
}

/// The upstream HTTP/2 connections opened to a pool's backends (`backend id`, socket and its
/// cookie): pingora keeps idle ones pooled, so a drain that ends closes them itself. Entries
/// whose socket is gone are dropped as new ones come.
#[derive(Debug, Default)]
pub struct H2Conns(Mutex<Vec<H2Conn>>);

/// One connection: its backend's id, its socket number and the socket's cookie.
type H2Conn = (Arc<str>, RawFd, Option<u64>);

impl H2Conns {
    /// Remember a new connection to `backend`.
    pub fn add(&self, backend: &Arc<str>, fd: RawFd) {
        let cookie = socket_cookie(fd);
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        v.retain(|(_, f, c)| socket_cookie(*f) == *c && c.is_some());
        v.push((backend.clone(), fd, cookie));
    }

    /// Close the connections of one backend (`None`: of every backend); how many were open.
    pub fn close(&self, backend: Option<&str>) -> usize {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        v.retain(|(b, fd, c)| {
            if backend.is_some_and(|x| x != &**b) {
                return true;
            }
            closed += usize::from(shutdown_same(*fd, *c));
            false
        });
        closed
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
