//! The last minutes of each pool, kept in the proxy (bounded) so a status page opened
//! mid-deploy sees the minutes before: samples taken by `services::history`, and marks at
//! the moments of reloads, split changes, drains and maintenance.

use std::{collections::VecDeque, sync::Mutex};

use crate::api;

/// Seconds between samples.
pub const INTERVAL_SECONDS: f64 = 2.0;
/// Samples kept: 15 minutes.
pub const KEEP_SAMPLES: usize = 450;
/// Marks kept (a ramp marks every step).
pub const KEEP_MARKS: usize = 200;

#[derive(Debug, Default)]
struct Ring {
    samples: VecDeque<api::Sample>,
    marks: VecDeque<api::Mark>,
    seq: u64,
}

/// Samples and marks, oldest first, each with a sequence number.
#[derive(Debug, Default)]
pub struct History(Mutex<Ring>);

impl History {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Plain data, each change one push: usable after a panic elsewhere.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a sample (its `seq` is set here).
    pub fn sample(&self, mut s: api::Sample) {
        let mut r = self.ring();
        r.seq += 1;
        s.seq = r.seq;
        r.samples.push_back(s);
        while r.samples.len() > KEEP_SAMPLES {
            r.samples.pop_front();
        }
        let oldest = r.samples.front().map_or(0.0, |s| s.t);
        while r.marks.front().is_some_and(|m| m.t < oldest) || r.marks.len() > KEEP_MARKS {
            r.marks.pop_front();
        }
    }

    /// Add a mark at unix time `t`.
    pub fn mark(&self, t: f64, kind: &str, text: String) {
        let mut r = self.ring();
        r.seq += 1;
        let seq = r.seq;
        r.marks.push_back(api::Mark {
            seq,
            t,
            kind: kind.to_string(),
            text,
        });
    }

    /// The newest sequence number.
    pub fn seq(&self) -> u64 {
        self.ring().seq
    }

    /// Samples and marks newer than `seq` (0: everything kept).
    pub fn since(&self, seq: u64) -> api::History {
        let r = self.ring();
        api::History {
            interval_seconds: INTERVAL_SECONDS,
            samples: r.samples.iter().filter(|s| s.seq > seq).cloned().collect(),
            marks: r.marks.iter().filter(|m| m.seq > seq).cloned().collect(),
        }
    }
}
