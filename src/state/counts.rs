//! In-flight counts by kind (see [`Kind`]) on a backend or a pool.

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::api::Kind;

/// In-flight counts by kind.
#[derive(Debug, Default)]
pub struct Counts([AtomicU64; Kind::COUNT]);

impl Counts {
    pub(crate) fn add(&self, k: Kind) {
        // Relaxed: the increment publishes nothing; readers of zero use the AcqRel decrement.
        self.0[k.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Decrement; true when the total over all kinds is now zero.
    pub(crate) fn sub(&self, k: Kind) -> bool {
        // SeqCst: orders the decrement before a waiter that reads zero, and before the
        // drain flag load in `DrainCell::observe` (the pairing with `DrainCell::start`).
        // The same locked instruction as AcqRel on x86.
        self.0[k.index()].fetch_sub(1, Ordering::SeqCst);
        self.total() == 0
    }

    /// Count of one kind.
    pub fn get(&self, k: Kind) -> u64 {
        self.0[k.index()].load(Ordering::Acquire)
    }

    /// Sum over kinds.
    pub fn total(&self) -> u64 {
        Kind::ALL.iter().map(|k| self.get(*k)).sum()
    }

    /// All counts.
    pub fn snapshot(&self) -> crate::api::InFlight {
        crate::api::InFlight(std::array::from_fn(|i| self.get(Kind::from_index(i))))
    }
}
