//! Passive health of one backend: failed connects in a row, the `down` flag they set, the
//! single-flight probe that clears it, and a recovery epoch that tells a request which
//! failed here that the backend is worth another try.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Lock-free passive health state (the hot path reads `is_down` only).
#[derive(Debug, Default)]
pub struct Passive {
    /// Failed connects in a row (requests and probes).
    streak: AtomicU32,
    /// Marked down after `fall` failures in a row; cleared by the first successful connect.
    down: AtomicBool,
    /// A probe task runs for this backend (at most one).
    probing: AtomicBool,
    /// Bumped whenever a failing backend connects again.
    recovered: AtomicU64,
}

impl Passive {
    /// Whether new requests must avoid it.
    pub fn is_down(&self) -> bool {
        // Relaxed: a flag read; a request racing the change is bounded by its own attempts.
        self.down.load(Ordering::Relaxed)
    }

    /// Whether the last connect (request or probe) failed.
    pub fn is_failing(&self) -> bool {
        self.streak.load(Ordering::Acquire) > 0
    }

    /// The recovery epoch (see [`Passive::ok`]).
    pub fn recovered(&self) -> u64 {
        self.recovered.load(Ordering::Acquire)
    }

    /// Failed connects in a row.
    pub fn streak(&self) -> u32 {
        self.streak.load(Ordering::Acquire)
    }

    /// Count a failed connect. Returns true when this one marked the backend down.
    pub fn fail(&self, fall: u32) -> bool {
        // AcqRel: the streak decides `down`; concurrent failures must all count.
        let n = self.streak.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        n >= fall && !self.down.swap(true, Ordering::AcqRel)
    }

    /// A connect succeeded. Returns true when the backend was failing (its streak reset,
    /// `down` cleared and the recovery epoch moved): held requests should be woken.
    /// A load and nothing else when it was not failing, so the hot path stays cheap.
    pub fn ok(&self) -> bool {
        if self.streak.load(Ordering::Acquire) == 0 && !self.down.load(Ordering::Acquire) {
            return false;
        }
        self.streak.store(0, Ordering::Release);
        self.down.store(false, Ordering::Release);
        self.recovered.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Claim the probe; false when one already runs.
    pub fn start_probe(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// Release the probe claim.
    pub fn end_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_fall_then_one_success_clears_it() {
        let p = Passive::default();
        assert!(!p.fail(3));
        assert!(!p.fail(3));
        assert!(!p.is_down());
        assert!(p.fail(3), "third failure marks it down");
        assert!(!p.fail(3), "already down: reported once");
        assert!(p.is_down());
        let e = p.recovered();
        assert!(p.ok());
        assert!(!p.is_down());
        assert!(!p.is_failing());
        assert_eq!(p.recovered(), e + 1);
        assert!(!p.ok(), "a healthy success changes nothing");
        assert_eq!(p.recovered(), e + 1);
    }

    #[test]
    fn one_probe_at_a_time() {
        let p = Passive::default();
        assert!(p.start_probe());
        assert!(!p.start_probe());
        p.end_probe();
        assert!(p.start_probe());
    }
}
