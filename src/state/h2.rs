//! One backend's upstream HTTP/2 lane: calls take a stream on a shared connection one at a
//! time, so pingora (which opens a connection whenever it finds none free at that instant)
//! opens one only when every connection is full, and the number of connections stays within
//! `h2.max_connections`.

use std::{
    sync::{
        atomic::{AtomicU8, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Streams open to one backend and the turn for taking the next one.
#[derive(Debug)]
pub struct H2Lane {
    turn: Arc<Semaphore>,
    streams: AtomicUsize,
    /// What ALPN chose on the backend's last answered connection (`protocol: auto`):
    /// [`UNKNOWN`], [`HTTP1`] or [`HTTP2`].
    alpn: AtomicU8,
}

const UNKNOWN: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

impl Default for H2Lane {
    fn default() -> Self {
        Self {
            turn: Arc::new(Semaphore::new(1)),
            streams: AtomicUsize::new(0),
            alpn: AtomicU8::new(UNKNOWN),
        }
    }
}

/// Why a call could not have a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum NoStream {
    /// `max_connections × max_streams` streams are open already.
    Full { streams: usize },
    /// The call ahead took longer than `wait` to get its stream (a slow connect).
    Waited,
}

impl H2Lane {
    /// Wait for this call's turn (at most `wait`), then admit it if the backend has room
    /// for one more stream. Hold the permit until the stream is taken (connected or failed).
    pub async fn admit(
        &self,
        max_streams: usize,
        max_connections: usize,
        wait: Duration,
    ) -> Result<OwnedSemaphorePermit, NoStream> {
        let turn = tokio::time::timeout(wait, self.turn.clone().acquire_owned()).await;
        let Ok(Ok(permit)) = turn else {
            return Err(NoStream::Waited);
        };
        let streams = self.streams();
        if streams >= max_streams.saturating_mul(max_connections) {
            return Err(NoStream::Full { streams });
        }
        Ok(permit)
    }

    /// A call took its stream.
    pub fn opened(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    /// A call that took a stream ended.
    pub fn closed(&self) {
        // Saturating: a stray decrement must never wrap into "full".
        let _ = self
            .streams
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// `protocol: auto`: an answer came over HTTP/2 (`true`) or HTTP/1.1. `true` when that
    /// is news (the first answer, or ALPN chose otherwise than before).
    pub fn answered_over(&self, h2: bool) -> bool {
        let v = if h2 { HTTP2 } else { HTTP1 };
        // Relaxed: a hint for the next calls; a stale read costs one call a turn, or none.
        self.alpn.load(Ordering::Relaxed) != v && self.alpn.swap(v, Ordering::Relaxed) != v
    }

    /// `protocol: auto` and the backend's ALPN chose HTTP/1.1 last: each call has its own
    /// connection, so calls need no turn (taking turns would set up one connection at a time).
    /// Unknown or HTTP/2: turns, until an answer says otherwise.
    pub fn speaks_http1(&self) -> bool {
        self.alpn.load(Ordering::Relaxed) == HTTP1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_turn_at_a_time_and_full_past_the_cap() {
        let lane = H2Lane::default();
        let wait = Duration::from_millis(50);
        let first = lane.admit(2, 1, wait).await.expect("room");
        assert_eq!(lane.admit(2, 1, wait).await.err(), Some(NoStream::Waited));
        lane.opened();
        drop(first);
        let second = lane.admit(2, 1, wait).await.expect("room for a second");
        lane.opened();
        drop(second);
        assert_eq!(
            lane.admit(2, 1, wait).await.err(),
            Some(NoStream::Full { streams: 2 })
        );
        lane.closed();
        assert!(lane.admit(2, 1, wait).await.is_ok());
        lane.closed();
        lane.closed();
        assert_eq!(lane.streams(), 0, "never below zero");
    }

    #[test]
    fn alpn_is_learned_from_answers_both_ways() {
        let lane = H2Lane::default();
        assert!(!lane.speaks_http1(), "unknown: take turns");
        assert!(lane.answered_over(false), "news");
        assert!(!lane.answered_over(false), "not news");
        assert!(lane.speaks_http1());
        assert!(lane.answered_over(true));
        assert!(
            !lane.speaks_http1(),
            "an upgraded backend takes turns again"
        );
    }
}
