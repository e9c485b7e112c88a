//! Drain state of a pool or backend: the pure machine behind a lock, a lock-free flag for
//! the hot path, the file's declared state, and a notifier for waiters.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{Instant, SystemTime},
};

use tokio::sync::Notify;

use crate::drain::machine::{Deadlines, Machine, Phase, TransitionError};

/// for the hot path and a notifier for waiters.
#[derive(Debug, Default)]
pub struct DrainCell {
    draining: AtomicBool,
    machine: Mutex<Machine>,
    epoch: AtomicU64,
    /// Last `state:` the config file declared (true = draining).
    declared: AtomicBool,
    /// The current drain was started by the file's `state: draining`.
    by_file: AtomicBool,
    /// Woken on every transition (drain, drained, undrain).
    pub changed: Notify,
}

impl DrainCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        // The machine is plain data updated in one assignment per transition.
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether new work must avoid it (draining or drained).
    pub fn is_draining(&self) -> bool {
        // Relaxed: a pick racing a drain may still land here; tracking counts it like any
        // in-flight work and the drain waits for it.
        self.draining.load(Ordering::Relaxed)
    }

    /// Begin a drain. Returns the drain's epoch (changes on every start/undrain).
    /// `in_flight` is read again once the flag is set: work that ended between the first
    /// read and the flag saw no drain to tell, and the drain must still see it end.
    pub fn start(
        &self,
        deadlines: Deadlines,
        in_flight: impl Fn() -> u64,
    ) -> Result<u64, TransitionError> {
        let mut m = self.lock();
        m.start((Instant::now(), SystemTime::now()), deadlines, in_flight())?;
        self.draining.store(true, Ordering::SeqCst);
        // SeqCst fence, paired with the one in `observe`: either this read sees the last
        // decrement, or that decrement's `observe` sees the flag (and waits for this lock).
        std::sync::atomic::fence(Ordering::SeqCst);
        m.observe(SystemTime::now(), in_flight());
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        drop(m);
        self.changed.notify_waiters();
        Ok(epoch)
    }

    /// Bring a drain's deadlines to now; its new epoch (`None`: not draining).
    pub fn hasten(&self) -> Option<u64> {
        let mut m = self.lock();
        if !m.hasten(Instant::now()) {
            return None;
        }
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        drop(m);
        self.changed.notify_waiters();
        Some(epoch)
    }

    /// Restore a drain that began at `started` (from the state file).
    pub fn restore(&self, started: SystemTime, deadlines: Deadlines, in_flight: u64) -> u64 {
        let mut m = self.lock();
        m.restore((Instant::now(), SystemTime::now()), started, deadlines);
        m.observe(SystemTime::now(), in_flight);
        self.draining.store(true, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Follow the file's declared state. Only a change of the declaration acts: newly
    /// `draining` starts a drain (returns its epoch); back to `active` undrains a drain the
    /// file started. So an API undrain of a file-declared drain holds until the file changes.
    pub fn follow_file(
        &self,
        declared: bool,
        deadlines: Deadlines,
        in_flight: impl Fn() -> u64,
    ) -> Option<u64> {
        let before = self.declared.swap(declared, Ordering::AcqRel);
        match (before, declared) {
            (false, true) if self.phase() == Phase::Active => {
                let epoch = self.start(deadlines, in_flight).ok()?;
                self.by_file.store(true, Ordering::Release);
                Some(epoch)
            }
            (true, false) if self.by_file.load(Ordering::Acquire) => {
                let _ = self.undrain();
                None
            }
            _ => None,
        }
    }

    /// Back to active.
    pub fn undrain(&self) -> Result<(), TransitionError> {
        let mut m = self.lock();
        m.undrain()?;
        self.by_file.store(false, Ordering::Release);
        self.draining.store(false, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        drop(m);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Record the current in-flight total (drained at zero); true when this made it drained.
    pub fn observe(&self, in_flight: u64) -> bool {
        // SeqCst, after the SeqCst decrement that reached zero (`Counts::sub`): pairs with
        // the fence in `start` (free on x86: a plain load).
        if !self.draining.load(Ordering::SeqCst) {
            return false;
        }
        let (changed, drained) = {
            let mut m = self.lock();
            let before = m.phase();
            m.observe(SystemTime::now(), in_flight);
            (
                before != m.phase(),
                m.phase() == crate::drain::machine::Phase::Drained,
            )
        };
        if changed {
            self.changed.notify_waiters();
        }
        changed && drained
    }

    /// A copy of the machine for reporting.
    /// Whether the drain is the config file's (`state: draining`), not the API's.
    pub fn by_file(&self) -> bool {
        self.by_file.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Machine {
        self.lock().clone()
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.lock().phase()
    }

    /// Current epoch (deadline tasks stop when it moves on).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last request ends between the drain's first read of in-flight and its flag: the
    /// request's `observe` sees no drain, so the drain itself must see the zero.
    #[test]
    fn work_ending_while_the_drain_starts_still_drains_it() {
        let cell = DrainCell::default();
        let reads = std::sync::atomic::AtomicU64::new(0);
        let in_flight = || {
            let n = reads.fetch_add(1, Ordering::SeqCst);
            let left = if n == 0 { 1 } else { 0 };
            if n == 0 {
                // The request ends now, before the flag is set.
                cell.observe(0);
            }
            left
        };
        let d = Deadlines {
            requests: None,
            streams: None,
            close_spread: std::time::Duration::ZERO,
        };
        cell.start(d, in_flight).unwrap();
        assert_eq!(cell.phase(), Phase::Drained);
    }
}
