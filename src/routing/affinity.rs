//! Affinity: the same key (a cookie tidegate sets, a header, the client address) goes to the
//! same pool, and optionally the same backend, for as long as the weights allow.
//!
//! Pools: weighted rendezvous hashing. Each eligible pool scores `w / -ln(u)`, `u` a uniform
//! hash of (key, pool name) in (0, 1); the highest wins. A pool then gets exactly its share of
//! keys (`w / Σw`: the race of exponentials), and when weight moves from pool A to pool B only
//! keys that now score higher on B move, all of them from A's side of the change: through a
//! ramp blue → green a key switches at most once and never back. A pool that is not eligible
//! (draining, unavailable, weight 0) is left out; its keys go to their next-best pool, the
//! same one every time, and come back with it. O(pools) per pick: splits have a few pools.
//!
//! Backends: a ketama ring (pingora-ketama, nginx's consistent hashing) over the backends'
//! names, weighted by backend weight: adding or removing one of N moves about 1/N of the
//! keys; a backend that cannot take the request is skipped by walking the ring from the key,
//! so no other backend's keys move. O(log points) per pick.

use std::net::{Ipv6Addr, SocketAddr};

use pingora_ketama::{Bucket, Continuum};

/// An affinity key, hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key(u32);

impl Key {
    /// The key of these bytes (a cookie value, a header value, an address).
    pub fn of(bytes: &[u8]) -> Key {
        Key(crc32fast::hash(bytes))
    }

    /// `u` in (0, 1) for this key and `name`.
    fn uniform(self, name: &str) -> f64 {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.0.to_le_bytes());
        h.update(name.as_bytes());
        // Mix the 32 bits (crc is linear) and keep u away from 0 and 1.
        let x = mix(u64::from(h.finalize()) << 32 | u64::from(self.0));
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// splitmix64's finalizer: every output bit depends on every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pool for `key` among `(name, weight, eligible)`: its index, `None` when none is
/// eligible with a weight above 0.
pub fn pool_for<'a>(key: Key, pools: impl Iterator<Item = (&'a str, u32, bool)>) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, (name, w, eligible)) in pools.enumerate() {
        if !eligible || w == 0 {
            continue;
        }
        let score = f64::from(w) / -key.uniform(name).ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// Like [`pool_for`] over `(name, weight)`, also telling whether the pool is the key's own:
/// the one it gets when every pool with weight can take it (`false`: the key was dealt
/// elsewhere). One pass; `eligible` is asked only of pools that would beat the best so far.
pub fn pool_and_own<'a>(
    key: Key,
    pools: impl Iterator<Item = (&'a str, u32)>,
    eligible: &impl Fn(usize) -> bool,
) -> Option<(usize, bool)> {
    let mut best: Option<(usize, f64)> = None;
    let mut own: Option<(usize, f64)> = None;
    for (i, (name, w)) in pools.enumerate() {
        if w == 0 {
            continue;
        }
        let score = f64::from(w) / -key.uniform(name).ln();
        if own.is_none_or(|(_, s)| score > s) {
            own = Some((i, score));
        }
        if best.is_none_or(|(_, s)| score > s) && eligible(i) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| (i, own.is_some_and(|(o, _)| o == i)))
}

/// A consistent-hash ring over a pool's backends.
pub struct Ring {
    continuum: Continuum,
    /// Ring identities (from names), sorted, with the backend's index.
    ids: Vec<(SocketAddr, usize)>,
    /// Points on the ring (a walk longer than this has seen every one).
    points: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("backends", &self.ids.len())
            .finish()
    }
}

/// A ring identity for a backend name: stable across restarts and reorders (the address
/// may change with DNS; the name does not).
fn identity(name: &str) -> SocketAddr {
    // 64 bits of two independent CRCs (the second over the name seeded differently), so two
    // names share an identity only if both collide.
    let mut second = crc32fast::Hasher::new_with_initial(0x9e37_79b9);
    second.update(name.as_bytes());
    let a = mix(u64::from(crc32fast::hash(name.as_bytes())) << 32 | u64::from(second.finalize()));
    let b = mix(a ^ name.len() as u64);
    let ip = Ipv6Addr::from((u128::from(a) << 64) | u128::from(b));
    SocketAddr::new(ip.into(), 0)
}

impl Ring {
    /// A ring over `(name, weight)`, in pool order.
    pub fn new<'a>(backends: impl Iterator<Item = (&'a str, u32)>) -> Ring {
        let mut ids = Vec::new();
        let mut buckets = Vec::new();
        let mut points = 0usize;
        for (i, (name, w)) in backends.enumerate() {
            let id = identity(name);
            ids.push((id, i));
            buckets.push(Bucket::new(id, w.max(1)));
            points += w.max(1) as usize * pingora_ketama::DEFAULT_POINT_MULTIPLE as usize;
        }
        ids.sort();
        Ring {
            continuum: Continuum::new(&buckets),
            ids,
            points,
        }
    }

    /// The backend for `key`: the first one on the ring from the key's point that `usable`
    /// accepts (`None` when none does).
    pub fn pick(&self, key: Key, usable: impl Fn(usize) -> bool) -> Option<usize> {
        // The common case first: the key's own backend takes it.
        let first = self.continuum.node(&key.0.to_le_bytes()).and_then(|a| {
            let i = self.ids.binary_search_by(|(b, _)| b.cmp(&a)).ok()?;
            Some(self.ids[i].1)
        });
        if let Some(i) = first.filter(|i| usable(*i)) {
            return Some(i);
        }
        if !(0..self.ids.len()).any(&usable) {
            return None;
        }
        self.continuum
            .node_iter(&key.0.to_le_bytes())
            .take(self.points)
            .filter_map(|addr| {
                let i = self.ids.binary_search_by(|(a, _)| a.cmp(addr)).ok()?;
                Some(self.ids[i].1)
            })
            .find(|i| usable(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<Key> {
        (0..n)
            .map(|i| Key::of(format!("key-{i}").as_bytes()))
            .collect()
    }

    #[test]
    fn a_ramp_moves_each_key_at_most_once_and_keeps_the_shares() {
        let keys = keys(10_000);
        let mut last: Vec<Option<usize>> = vec![None; keys.len()];
        let mut moved = vec![0u32; keys.len()];
        for step in 0..=10u32 {
            let green = step * 10;
            let pools = [("blue", 100 - green, true), ("green", green, true)];
            let mut on_green = 0;
            for (i, k) in keys.iter().enumerate() {
                let p = pool_for(*k, pools.iter().copied()).unwrap();
                if last[i].is_some_and(|l| l != p) {
                    moved[i] += 1;
                    assert_eq!(p, 1, "a key moved back to blue at step {step}");
                }
                last[i] = Some(p);
                on_green += usize::from(p == 1);
            }
            let share = on_green as f64 / keys.len() as f64 * 100.0;
            assert!(
                (share - f64::from(green)).abs() <= 2.0,
                "step {step}: {share:.1}% on green"
            );
        }
        assert!(moved.iter().all(|m| *m <= 1));
    }

    #[test]
    fn an_ineligible_pool_deals_its_keys_consistently_and_gets_them_back() {
        let keys = keys(5_000);
        let all = [("a", 1, true), ("b", 1, true), ("c", 1, true)];
        let no_b = [("a", 1, true), ("b", 1, false), ("c", 1, true)];
        for k in &keys {
            let before = pool_for(*k, all.iter().copied()).unwrap();
            let during = pool_for(*k, no_b.iter().copied()).unwrap();
            assert_ne!(during, 1);
            if before != 1 {
                assert_eq!(before, during, "a key of another pool moved");
            }
            assert_eq!(during, pool_for(*k, no_b.iter().copied()).unwrap());
            assert_eq!(before, pool_for(*k, all.iter().copied()).unwrap());
        }
        assert_eq!(
            pool_for(keys[0], [("a", 0, true), ("b", 5, false)].into_iter()),
            None
        );
    }

    #[test]
    fn one_backend_more_moves_about_its_share_and_only_to_it() {
        let keys = keys(10_000);
        let four: Vec<String> = (0..4).map(|i| format!("app-{i}")).collect();
        let mut five = four.clone();
        five.push("app-4".into());
        let r4 = Ring::new(four.iter().map(|n| (n.as_str(), 1)));
        let r5 = Ring::new(five.iter().map(|n| (n.as_str(), 1)));
        let mut moved = 0;
        for k in &keys {
            let (a, b) = (
                r4.pick(*k, |_| true).unwrap(),
                r5.pick(*k, |_| true).unwrap(),
            );
            if a != b {
                assert_eq!(b, 4, "a key moved between the old four");
                moved += 1;
            }
        }
        let share = moved as f64 / keys.len() as f64;
        assert!((0.14..=0.26).contains(&share), "{share}");
        // A backend that cannot take requests is walked past: nobody else's keys move.
        for k in &keys {
            let a = r5.pick(*k, |_| true).unwrap();
            let b = r5.pick(*k, |i| i != 2).unwrap();
            assert_ne!(b, 2);
            if a != 2 {
                assert_eq!(a, b);
            }
        }
        assert_eq!(r5.pick(keys[0], |_| false), None);
    }

    #[test]
    fn weights_and_names_not_order() {
        // Listing order does not move keys; weight 3 gets about three times the keys.
        let a = Ring::new([("x", 1), ("y", 3)].into_iter());
        let b = Ring::new([("y", 3), ("x", 1)].into_iter());
        let keys = keys(8_000);
        let mut on_y = 0;
        for k in &keys {
            let (i, j) = (a.pick(*k, |_| true).unwrap(), b.pick(*k, |_| true).unwrap());
            assert_eq!(i == 1, j == 0);
            on_y += usize::from(i == 1);
        }
        let share = on_y as f64 / keys.len() as f64;
        assert!((0.68..=0.82).contains(&share), "{share}");
    }
}
