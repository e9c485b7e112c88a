//! RAII in-flight tracking of one request on one backend.
//!
//! A [`Tracking`] guard lives in the request context from the backend pick to the end of the
//! response; it counts on the backend and its pool (`http` at first, moved to `sse` or
//! `websocket` when the response says so) and brings every count down in `Drop`, on every
//! path. Each guard registers a [`Tracked`] record in its backend's item set so a drain can
//! list streams and end work at a deadline (through the upstream socket, see [`Tracked::end`]).

use std::{net::SocketAddr, sync::Arc};

use super::{backend::BackendState, counts::Kind, items::Tracked};

/// RAII tracking of one request on one backend.
pub struct Tracking {
    backend: Arc<BackendState>,
    item: Arc<Tracked>,
    /// It took a stream on a shared HTTP/2 connection (counted in the backend's lane).
    h2_stream: bool,
}

impl Tracking {
    /// Count a new `http` request on `backend`.
    pub fn new(
        backend: Arc<BackendState>,
        route: Arc<str>,
        uri: http::Uri,
        client: Option<SocketAddr>,
    ) -> Self {
        Self::of_kind(backend, route, uri, client, Kind::Http)
    }

    /// Count a new request of a kind known from the request (`grpc`) on `backend`.
    pub fn of_kind(
        backend: Arc<BackendState>,
        route: Arc<str>,
        uri: http::Uri,
        client: Option<SocketAddr>,
        kind: Kind,
    ) -> Self {
        let item = Arc::new(Tracked::new(route, uri, client, kind));
        backend.counts.add(kind);
        backend.pool.counts.add(kind);
        backend.items.insert(item.clone());
        Self {
            backend,
            item,
            h2_stream: false,
        }
    }

    /// It got its upstream connection (socket `fd`; `h2`: a stream on a shared one).
    pub fn connected(&mut self, fd: std::os::unix::io::RawFd, h2: bool) {
        self.item.set_upstream(fd, h2);
        if h2 && !self.h2_stream {
            self.h2_stream = true;
            self.backend.h2.opened();
        }
    }

    /// Reclassify (e.g. `http` → `sse` when the response is an event stream).
    pub fn set_kind(&self, k: Kind) {
        let old = self.item.swap_kind(k);
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
        if self.h2_stream {
            self.backend.h2.closed();
        }
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
