//! Smooth weighted picking without locks: a schedule computed once per config build.
//!
//! Weights are reduced by their GCD, then one cycle of nginx's smooth weighted round robin is
//! laid out (every step: each item's current weight grows by its weight, the largest is picked
//! and loses the total). Each item's picks are evenly spaced (3:1 gives `A A B A`, never the
//! `A A A B` bursts of an expanded array; 100:1 puts the one pick mid-cycle), and every prefix
//! of the cycle stays within one pick of the exact share. SWRR costs `cycle × items` to lay
//! out, so very large pools (over 20 M steps) use stride scheduling instead (slot `k` of item
//! `i` at virtual time `(2k+1)/(2w_i)`), which is as smooth within about 1.3 picks.
//! A pick at request time is one `fetch_add` and an index: no lock.

use std::{
    cmp::Ordering as CmpOrdering,
    collections::BinaryHeap,
    sync::atomic::{AtomicUsize, Ordering},
};

/// A precomputed, immutable pick order with a shared cursor.
#[derive(Debug, Default)]
pub struct Schedule {
    order: Box<[u32]>,
    /// Items with a non-zero weight, for the bounded fallback in `pick`.
    weighted: Box<[u32]>,
    cursor: AtomicUsize,
}

/// Heap entry: the next virtual time of an item, `num / den`, smallest first, ties by index.
#[derive(PartialEq, Eq)]
struct Slot {
    num: u64,
    den: u64,
    item: u32,
}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // BinaryHeap is a max-heap: reverse so the earliest virtual time pops first.
        let a = u128::from(self.num) * u128::from(other.den);
        let b = u128::from(other.num) * u128::from(self.den);
        b.cmp(&a).then_with(|| other.item.cmp(&self.item))
    }
}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Above this many `cycle × items` steps, lay out with stride scheduling instead of SWRR.
const SWRR_MAX_STEPS: u64 = 20_000_000;

/// nginx's smooth weighted round robin, one full cycle. Item indexes fit in u32: pools and
/// splits are bounded far below that.
fn smooth_wrr(weights: &[u64], total: u64) -> Vec<u32> {
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] || (weights[best] == 0 && *w > 0) {
                best = i;
            }
        }
        current[best] -= total as i64;
        order.push(best as u32);
    }
    order
}

/// Stride scheduling with a heap: `O(cycle × log items)`.
fn stride(weights: &[u64], total: u64) -> Vec<u32> {
    let mut heap: BinaryHeap<Slot> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(i, w)| Slot {
            num: 1,
            den: 2 * w,
            item: i as u32,
        })
        .collect();
    let mut order = Vec::with_capacity(total as usize);
    while order.len() < total as usize {
        let Some(mut s) = heap.pop() else { break };
        order.push(s.item);
        s.num += 2;
        heap.push(s);
    }
    order
}

impl Schedule {
    /// Build from per-item weights; items with weight 0 never appear.
    pub fn new(weights: &[u32]) -> Self {
        let g = weights
            .iter()
            .filter(|w| **w > 0)
            .fold(0u64, |g, w| gcd(g, u64::from(*w)));
        let reduced: Vec<u64> = weights.iter().map(|w| u64::from(*w) / g.max(1)).collect();
        let total: u64 = reduced.iter().sum();
        let order = if total.saturating_mul(reduced.len() as u64) <= SWRR_MAX_STEPS {
            smooth_wrr(&reduced, total)
        } else {
            stride(&reduced, total)
        };
        let weighted = (0..weights.len() as u32)
            .filter(|i| weights[*i as usize] > 0)
            .collect();
        Self {
            order: order.into_boxed_slice(),
            weighted,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Length of one full cycle.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when every weight was zero.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The raw cycle (for tests and status).
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// Next item for which `eligible` holds, following the schedule. Ineligible items are
    /// skipped in schedule order, so the remaining items keep their relative shares.
    /// `None` only when no scheduled item is eligible.
    pub fn pick(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.order.len();
        if n == 0 {
            return None;
        }
        // A skipped slot is consumed like a taken one, so the eligible items keep their
        // relative shares (walking forward instead would hand every skipped slot to whoever
        // follows it). The walk is bounded; one pass over the items settles the rest.
        let window = n.min(4 * self.weighted.len() + 64);
        for _ in 0..window {
            // Relaxed: the cursor only spreads picks; no other memory depends on its value.
            let slot = self.cursor.fetch_add(1, Ordering::Relaxed);
            let item = self.order[slot % n] as usize;
            if eligible(item) {
                return Some(item);
            }
        }
        // Other threads advance the shared cursor between our draws, so even a window as long
        // as the cycle may have missed an eligible item: always finish with the item pass.
        self.weighted
            .iter()
            .map(|i| *i as usize)
            .find(|i| eligible(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(order: &[u32], items: usize) -> Vec<usize> {
        let mut c = vec![0; items];
        for i in order {
            c[*i as usize] += 1;
        }
        c
    }

    #[test]
    fn full_cycle_matches_reduced_weights() {
        let s = Schedule::new(&[300, 100]);
        assert_eq!(s.len(), 4);
        assert_eq!(counts(s.order(), 2), vec![3, 1]);
        let s = Schedule::new(&[80, 20, 0]);
        assert_eq!(counts(s.order(), 3), vec![4, 1, 0]);
    }

    #[test]
    fn never_bursts_the_minor_item_to_an_edge() {
        // 100:1 — the single B slot must not sit next to the cycle boundary in a way that
        // produces two B picks close together across cycles.
        let s = Schedule::new(&[100, 1]);
        let pos = s.order().iter().position(|i| *i == 1).unwrap();
        assert!((40..=60).contains(&pos), "B at {pos}");
    }

    #[test]
    fn stride_fallback_is_nearly_as_smooth() {
        let w = [10u64, 47, 21, 17, 27, 7];
        let total = w.iter().sum();
        let order = stride(&w, total);
        let mut c = [0f64; 6];
        for (k, i) in order.iter().enumerate() {
            c[*i as usize] += 1.0;
            for j in 0..6 {
                let exact = (k + 1) as f64 * w[j] as f64 / total as f64;
                assert!((c[j] - exact).abs() < 1.5);
            }
        }
    }

    #[test]
    fn every_prefix_stays_within_one_pick_of_exact_share() {
        // Deterministic pseudo-random weight sets (xorshift), checked on every prefix.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200 {
            let n = 1 + (x % 7) as usize;
            let weights: Vec<u32> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 50) as u32
                })
                .collect();
            let s = Schedule::new(&weights);
            let g = weights
                .iter()
                .filter(|w| **w > 0)
                .fold(0u64, |g, w| gcd(g, *w as u64));
            let total: u64 = weights.iter().map(|w| *w as u64).sum::<u64>() / g.max(1);
            let mut c = vec![0f64; n];
            for (k, item) in s.order().iter().enumerate() {
                c[*item as usize] += 1.0;
                for (i, w) in weights.iter().enumerate() {
                    let exact = (k + 1) as f64 * (*w as f64 / g.max(1) as f64) / total as f64;
                    assert!(
                        (c[i] - exact).abs() <= 1.0,
                        "weights {weights:?} prefix {k} item {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn pick_skips_ineligible_and_keeps_shares() {
        let s = Schedule::new(&[2, 1, 1]);
        let mut c = [0i32; 3];
        for _ in 0..300 {
            c[s.pick(|i| i != 0).unwrap()] += 1;
        }
        assert_eq!(c[0], 0);
        assert!((c[1] - c[2]).abs() <= 2, "{c:?}");
        assert_eq!(s.pick(|_| false), None);
        assert_eq!(Schedule::new(&[0, 0]).pick(|_| true), None);
    }

    #[test]
    fn pick_finds_the_eligible_item_despite_concurrent_draws() {
        // Two items, one eligible: other threads drawing between our draws can make every
        // slot we see the ineligible one. The pick must still find the eligible item.
        let s = std::sync::Arc::new(Schedule::new(&[1, 1]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || (0..20_000).all(|_| s.pick(|i| i == 1) == Some(1)))
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
    }

    #[test]
    fn pick_falls_back_past_the_window() {
        // Large cycle where only the rare item is eligible: found through the item pass.
        let s = Schedule::new(&[1000, 1000, 1000, 1]);
        for _ in 0..10 {
            assert_eq!(s.pick(|i| i == 3), Some(3));
        }
    }
}
