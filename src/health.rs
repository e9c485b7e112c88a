//! Health of one backend as a pure rise/fall streak (the health-check service feeds it).

/// Consecutive results since the last change, and whether the backend was ever checked.
#[derive(Debug, Default)]
pub struct HealthStreak {
    /// Set once the config that enabled checks has been applied to this backend.
    pub initialized: bool,
    checked: bool,
    passes: u32,
    failures: u32,
}

impl HealthStreak {
    /// Record an active check result given the `current` health; returns the new health
    /// when it changes. A never-checked backend needs a single pass; after that `rise`
    /// passes in a row. `fall` failures in a row make it unhealthy.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32, current: bool) -> Option<bool> {
        let first = !self.checked;
        self.checked = true;
        if ok {
            self.passes += 1;
            self.failures = 0;
            (!current && (first || self.passes >= rise)).then_some(true)
        } else {
            self.failures += 1;
            self.passes = 0;
            (current && self.failures >= fall).then_some(false)
        }
    }

    /// Forget history (checks turned off or on again).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_pass_then_fall_then_rise() {
        let mut h = HealthStreak::default();
        // New backend, unhealthy until its first pass.
        assert_eq!(h.record(true, 2, 3, false), Some(true));
        assert_eq!(h.record(false, 2, 3, true), None);
        assert_eq!(h.record(false, 2, 3, true), None);
        assert_eq!(h.record(false, 2, 3, true), Some(false));
        assert_eq!(h.record(true, 2, 3, false), None, "rise needs 2");
        assert_eq!(h.record(true, 2, 3, false), Some(true));
    }

    #[test]
    fn a_failure_resets_the_rise_count() {
        let mut h = HealthStreak::default();
        h.record(false, 3, 1, true);
        assert_eq!(h.record(true, 3, 1, false), None);
        assert_eq!(h.record(true, 3, 1, false), None);
        assert_eq!(h.record(false, 3, 1, false), None);
        assert_eq!(h.record(true, 3, 1, false), None);
    }
}
