//! The drain state machine of one pool or backend: pure transitions, `now` passed in.
//!
//! `active → draining → drained`; `undrain` returns to `active` from either. `drained` is
//! reached when in-flight work hits zero while draining, and left again (back to draining)
//! if work shows up after all (a request picked just before the drain began).

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// Phase of a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Active,
    Draining,
    Drained,
}

impl Phase {
    /// The further along of two phases (a backend in a draining pool is draining).
    pub fn max_with(self, other: Phase) -> Phase {
        let rank = |p: Phase| match p {
            Phase::Active => 0,
            Phase::Drained => 1,
            Phase::Draining => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }

    /// The state as the API shows it.
    pub fn shown(self) -> crate::api::State {
        match self {
            Phase::Active => crate::api::State::Active,
            Phase::Draining => crate::api::State::Draining,
            Phase::Drained => crate::api::State::Drained,
        }
    }

    /// Lowercase name as used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Active => "active",
            Phase::Draining => "draining",
            Phase::Drained => "drained",
        }
    }
}

/// Deadlines of one drain. `None` = wait forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Deadlines {
    pub requests: Option<Duration>,
    pub streams: Option<Duration>,
    pub close_spread: Duration,
}

/// Why a transition was refused (→ 409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("already {0}")]
    AlreadyDraining(&'static str),
    #[error("not draining")]
    NotDraining,
}

/// One drain's state.
#[derive(Clone, Debug)]
pub struct Machine {
    phase: Phase,
    started: Option<(Instant, SystemTime)>,
    drained: Option<SystemTime>,
    deadlines: Deadlines,
}

impl Default for Machine {
    fn default() -> Self {
        Self {
            phase: Phase::Active,
            started: None,
            drained: None,
            deadlines: Deadlines::default(),
        }
    }
}

impl Machine {
    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When the drain started (wall clock), if draining or drained.
    pub fn started_at(&self) -> Option<SystemTime> {
        self.started.map(|s| s.1)
    }

    /// When in-flight work reached zero, if drained.
    pub fn drained_at(&self) -> Option<SystemTime> {
        self.drained
    }

    /// Deadlines of the current drain.
    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    /// Begin draining. `in_flight` decides whether it is drained at once.
    pub fn start(
        &mut self,
        now: (Instant, SystemTime),
        deadlines: Deadlines,
        in_flight: u64,
    ) -> Result<(), TransitionError> {
        if self.phase != Phase::Active {
            return Err(TransitionError::AlreadyDraining(self.phase.as_str()));
        }
        self.phase = Phase::Draining;
        self.started = Some(now);
        self.deadlines = deadlines;
        self.drained = None;
        self.observe(now.1, in_flight);
        Ok(())
    }

    /// A drain under way: its deadlines become `now` (a hard drain after a soft one).
    /// `false` when it is not draining.
    pub fn hasten(&mut self, now: Instant) -> bool {
        let (Phase::Draining, Some((start, _))) = (self.phase, self.started) else {
            return false;
        };
        let at = now.saturating_duration_since(start) + Duration::from_millis(1);
        self.deadlines = Deadlines {
            requests: Some(at),
            streams: Some(at),
            close_spread: Duration::ZERO,
        };
        true
    }

    /// Restore a drain (from the state file) that began at `started_wall`.
    pub fn restore(
        &mut self,
        now: (Instant, SystemTime),
        started_wall: SystemTime,
        deadlines: Deadlines,
    ) {
        let elapsed = now.1.duration_since(started_wall).unwrap_or_default();
        let started_mono = now.0.checked_sub(elapsed).unwrap_or(now.0);
        self.phase = Phase::Draining;
        self.started = Some((started_mono, started_wall));
        self.deadlines = deadlines;
        self.drained = None;
    }

    /// Back to active.
    pub fn undrain(&mut self) -> Result<(), TransitionError> {
        if self.phase == Phase::Active {
            return Err(TransitionError::NotDraining);
        }
        *self = Self::default();
        Ok(())
    }

    /// Record the in-flight count: drained at zero, draining again above it.
    /// Returns true when this observation made it drained.
    pub fn observe(&mut self, now: SystemTime, in_flight: u64) -> bool {
        match (self.phase, in_flight) {
            (Phase::Draining, 0) => {
                self.phase = Phase::Drained;
                self.drained = Some(now);
                true
            }
            (Phase::Drained, n) if n > 0 => {
                self.phase = Phase::Draining;
                self.drained = None;
                false
            }
            _ => false,
        }
    }

    /// Instant at which the deadline for plain requests (`streams = false`) or streams falls.
    pub fn deadline_at(&self, streams: bool) -> Option<Instant> {
        let (start, _) = self.started?;
        let d = if streams {
            self.deadlines.streams
        } else {
            self.deadlines.requests
        }?;
        Some(start + d)
    }
}

/// When the `i`-th of `n` forced stream ends happens, spread evenly over `spread`
/// (first at 0, last at `spread`).
pub fn spread_offset(i: usize, n: usize, spread: Duration) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    spread.mul_f64(i as f64 / (n - 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> (Instant, SystemTime) {
        (Instant::now(), SystemTime::now())
    }

    #[test]
    fn lifecycle() {
        let mut m = Machine::default();
        assert_eq!(m.phase(), Phase::Active);
        assert_eq!(m.undrain(), Err(TransitionError::NotDraining));
        m.start(now(), Deadlines::default(), 3).unwrap();
        assert_eq!(m.phase(), Phase::Draining);
        assert_eq!(
            m.start(now(), Deadlines::default(), 3),
            Err(TransitionError::AlreadyDraining("draining"))
        );
        assert!(!m.observe(SystemTime::now(), 1));
        assert!(m.observe(SystemTime::now(), 0));
        assert_eq!(m.phase(), Phase::Drained);
        assert!(m.drained_at().is_some());
        // Late work: back to draining until it ends.
        m.observe(SystemTime::now(), 1);
        assert_eq!(m.phase(), Phase::Draining);
        m.undrain().unwrap();
        assert_eq!(m.phase(), Phase::Active);
        assert!(m.started_at().is_none());
    }

    #[test]
    fn idle_drain_is_drained_at_once_and_deadlines_are_relative_to_start() {
        let mut m = Machine::default();
        let t = now();
        let d = Deadlines {
            requests: Some(Duration::from_secs(30)),
            streams: None,
            close_spread: Duration::ZERO,
        };
        m.start(t, d, 0).unwrap();
        assert_eq!(m.phase(), Phase::Drained);
        assert_eq!(m.deadline_at(false), Some(t.0 + Duration::from_secs(30)));
        assert_eq!(m.deadline_at(true), None);
    }

    #[test]
    fn restore_keeps_the_original_start() {
        let mut m = Machine::default();
        let t = now();
        let wall = t.1 - Duration::from_secs(10);
        m.restore(
            t,
            wall,
            Deadlines {
                requests: Some(Duration::from_secs(30)),
                ..Default::default()
            },
        );
        let left = m.deadline_at(false).unwrap() - t.0;
        assert!(
            left <= Duration::from_secs(20) && left >= Duration::from_secs(19),
            "{left:?}"
        );
    }

    #[test]
    fn spread_is_even_from_zero_to_window() {
        let s = Duration::from_secs(10);
        assert_eq!(spread_offset(0, 5, s), Duration::ZERO);
        assert_eq!(spread_offset(4, 5, s), s);
        assert_eq!(spread_offset(2, 5, s), Duration::from_secs(5));
        assert_eq!(spread_offset(0, 1, s), Duration::ZERO);
    }
}
