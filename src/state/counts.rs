//! In-flight counts by kind (`http`, `sse`, `websocket`) on a backend or a pool.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

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

    pub(crate) fn from_u8(v: u8) -> Kind {
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

impl Counts {
    pub(crate) fn add(&self, k: Kind) {
        // Relaxed: the increment publishes nothing; readers of zero use the AcqRel decrement.
        self.0[k as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Decrement; true when the total over all kinds is now zero.
    pub(crate) fn sub(&self, k: Kind) -> bool {
        // SeqCst: orders the decrement before a waiter that reads zero, and before the
        // drain flag load in `DrainCell::observe` (the pairing with `DrainCell::start`).
        // The same locked instruction as AcqRel on x86.
        self.0[k as usize].fetch_sub(1, Ordering::SeqCst);
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
    pub fn snapshot(&self) -> crate::api::InFlight {
        crate::api::InFlight {
            http: self.get(Kind::Http),
            sse: self.get(Kind::Sse),
            websocket: self.get(Kind::WebSocket),
        }
    }
}
