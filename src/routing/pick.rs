//! The one place a request's pool and backend are chosen: pure, given who can take it.
//!
//! The proxy's first pick, its reroute after a drain raced the pick, the hold's readiness
//! check and the spool replayer all call [`pick`]. Without a key the split's smooth weighted
//! schedule decides; with an affinity key, weighted rendezvous over the pools that can take
//! the request ([`affinity::pool_for`]); a forced pool wins when it can take the request.
//! Inside the pool, the pool's schedule (backends in slow start passed over part of the
//! time), or with a sticky key its ketama ring. Availability comes in as closures, so the
//! function reads no clock and no atomics of its own beyond the schedules' cursors.

use super::{
    affinity::{self, Key, Ring},
    Schedule,
};

/// How a request's pool was chosen (counted per route, in the access log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum How {
    /// By the split's weights (no key).
    Split,
    /// By its affinity key, on the pool the key belongs to.
    Affinity,
    /// By its affinity key, on another pool: its own could not take it (draining,
    /// unavailable, failed for this request).
    Redealt,
    /// Pinned by the route's `force_pool` header or cookie.
    Forced,
}

impl How {
    /// Every value, in the order metrics and status list them.
    pub const ALL: [How; 4] = [How::Split, How::Affinity, How::Redealt, How::Forced];

    pub fn as_str(self) -> &'static str {
        match self {
            How::Split => "split",
            How::Affinity => "affinity",
            How::Redealt => "redealt",
            How::Forced => "forced",
        }
    }

    /// Position in [`How::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the request brings to the pick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    /// Its affinity key, if the route has affinity and the request carries one.
    pub key: Option<Key>,
    /// The key also chooses the backend inside the pool (`scope: backend`).
    pub sticky: bool,
    /// Index in the split of the pool it is forced to, if any.
    pub forced: Option<usize>,
    /// A forced pool that cannot take the request is refused instead of picked around.
    pub forced_only: bool,
}

/// A split as the pick sees it: its pools' names and weights, in split order, and the
/// smooth schedule over them. Built once per published route.
#[derive(Debug)]
pub struct Split {
    names: Box<[std::sync::Arc<str>]>,
    weights: Box<[u32]>,
    schedule: Schedule,
}

impl Split {
    pub fn new(pools: impl Iterator<Item = (std::sync::Arc<str>, u32)>) -> Split {
        let (names, weights): (Vec<_>, Vec<_>) = pools.unzip();
        Split {
            schedule: Schedule::new(&weights),
            names: names.into(),
            weights: weights.into(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The schedule's cycle (status and tests).
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The pool for `want` among those `can_take` accepts, and how it was chosen.
    fn pool(&self, want: &Want, can_take: &impl Fn(usize) -> bool) -> Option<(usize, How)> {
        let Some(key) = want.key else {
            return self.schedule.pick(can_take).map(|i| (i, How::Split));
        };
        let pools = self.names.iter().zip(self.weights.iter());
        let (chosen, own) = affinity::pool_and_own(key, pools.map(|(n, w)| (&**n, *w)), can_take)?;
        let how = if own { How::Affinity } else { How::Redealt };
        Some((chosen, how))
    }

    /// Any pool of the split with weight that `can_take` accepts, in split order.
    fn any(&self, can_take: &impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.len()).find(|i| self.weights[*i] > 0 && can_take(*i))
    }
}

/// A pool's backends as the pick sees them: the weighted schedule, and the ketama ring when
/// a route keys backends by affinity.
#[derive(Debug)]
pub struct Members {
    schedule: Schedule,
    ring: Option<Ring>,
    len: usize,
}

impl Members {
    /// Backends `(name, weight)` in pool order; `ring`: build the consistent-hash ring.
    pub fn new<'a>(backends: impl Iterator<Item = (&'a str, u32)> + Clone, ring: bool) -> Members {
        let weights: Vec<u32> = backends.clone().map(|(_, w)| w).collect();
        Members {
            schedule: Schedule::new(&weights),
            ring: ring.then(|| Ring::new(backends)),
            len: weights.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The schedule's cycle (status and tests).
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The backend for a request: by the ring for a sticky key (when the pool has one), else
    /// by weight, passing over those `admits` refuses (slow start) when others remain.
    fn backend(
        &self,
        sticky: Option<Key>,
        usable: &impl Fn(usize) -> bool,
        admits: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if let (Some(key), Some(ring)) = (sticky, &self.ring) {
            return ring.pick(key, usable);
        }
        self.schedule
            .pick(|i| usable(i) && admits(i))
            .or_else(|| self.schedule.pick(usable))
    }
}

/// A pool and a backend, and how the pool was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub pool: usize,
    pub backend: usize,
    pub how: How,
}

/// Why nothing was picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// No pool of the split with weight has a backend that can take the request.
    Nothing,
    /// The forced pool cannot take it and the route refuses rather than pick around it.
    Forced,
}

/// What the pick is told about a route's pools: their members, which backends can take this
/// request (`usable(pool, backend)`) and which slow start admits now.
pub trait View {
    fn members(&self, pool: usize) -> &Members;
    fn usable(&self, pool: usize, backend: usize) -> bool;
    fn admits(&self, pool: usize, backend: usize) -> bool;
}

/// Whether pool `p` has a backend that can take the request.
fn can_take(view: &impl View, p: usize) -> bool {
    (0..view.members(p).len()).any(|b| view.usable(p, b))
}

/// The pool for `want` on `split` and how it was chosen, without using a backend slot (the
/// proxy picks the backend when it connects). A forced pool comes first; `Err(Miss::Nothing)`
/// only when no pool of the split with weight can take the request.
pub fn pool(split: &Split, view: &impl View, want: &Want) -> Result<(usize, How), Miss> {
    if let Some(p) = want.forced.filter(|p| *p < split.len()) {
        if can_take(view, p) {
            return Ok((p, How::Forced));
        }
        if want.forced_only {
            return Err(Miss::Forced);
        }
    }
    split
        .pool(want, &|p| can_take(view, p))
        .ok_or(Miss::Nothing)
}

/// The backend of pool `p` for `want`: by the ring for a sticky key, else by weight.
pub fn backend(view: &impl View, p: usize, want: &Want) -> Option<usize> {
    let sticky = want.key.filter(|_| want.sticky);
    view.members(p)
        .backend(sticky, &|b| view.usable(p, b), &|b| view.admits(p, b))
}

/// Pool and backend for `want` on `split` in one go (the reroute after a raced drain, the
/// spool replayer). `Err(Miss::Nothing)` only when the whole split has nothing for it.
pub fn pick(split: &Split, view: &impl View, want: &Want) -> Result<Pick, Miss> {
    // A second look when availability changed between choosing the pool and its backend
    // (a drain raced the pick): the key is dealt again the same consistent way, and a
    // refusing forced pool is refused.
    for _ in 0..2 {
        let (pool, how) = self::pool(split, view, want)?;
        if let Some(backend) = backend(view, pool, want) {
            return Ok(Pick { pool, backend, how });
        }
    }
    let pool = split.any(&|p| can_take(view, p)).ok_or(Miss::Nothing)?;
    let backend = backend(view, pool, want).ok_or(Miss::Nothing)?;
    let how = if want.key.is_some() {
        How::Redealt
    } else {
        How::Split
    };
    Ok(Pick { pool, backend, how })
}

/// Whether some pool of the split with weight, or the request's forced pool, could take
/// the request (no schedule slot used: the retry budget's "elsewhere").
pub fn any_can_take(split: &Split, view: &impl View, want: &Want) -> bool {
    want.forced
        .is_some_and(|p| p < split.len() && can_take(view, p))
        || (!want.forced_only || want.forced.is_none())
            && split.any(&|p| can_take(view, p)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        members: Vec<Members>,
        down: Vec<(usize, usize)>,
    }

    impl View for Fake {
        fn members(&self, pool: usize) -> &Members {
            &self.members[pool]
        }
        fn usable(&self, pool: usize, backend: usize) -> bool {
            !self.down.contains(&(pool, backend))
        }
        fn admits(&self, _: usize, _: usize) -> bool {
            true
        }
    }

    fn fake(sizes: &[usize], ring: bool) -> Fake {
        let names: Vec<Vec<String>> = sizes
            .iter()
            .map(|n| (0..*n).map(|i| format!("b{i}")).collect())
            .collect();
        Fake {
            members: names
                .iter()
                .map(|ns| Members::new(ns.iter().map(|n| (n.as_str(), 1)), ring))
                .collect(),
            down: Vec::new(),
        }
    }

    fn split(w: &[(&str, u32)]) -> Split {
        Split::new(w.iter().map(|(n, w)| (std::sync::Arc::from(*n), *w)))
    }

    #[test]
    fn without_a_key_the_weights_decide() {
        let s = split(&[("blue", 3), ("green", 1)]);
        let v = fake(&[2, 2], false);
        let mut on = [0; 2];
        for _ in 0..400 {
            on[pick(&s, &v, &Want::default()).unwrap().pool] += 1;
        }
        assert_eq!(on, [300, 100]);
    }

    #[test]
    fn a_key_keeps_its_pool_and_is_redealt_when_it_cannot_take_it() {
        let s = split(&[("blue", 50), ("green", 50)]);
        let mut v = fake(&[1, 1], false);
        let key = |i: u32| Want {
            key: Some(Key::of(&i.to_le_bytes())),
            ..Want::default()
        };
        let first: Vec<Pick> = (0..200).map(|i| pick(&s, &v, &key(i)).unwrap()).collect();
        assert!(first.iter().all(|p| p.how == How::Affinity));
        assert!(first.iter().any(|p| p.pool == 0) && first.iter().any(|p| p.pool == 1));
        v.down.push((0, 0));
        for (i, before) in first.iter().enumerate() {
            let now = pick(&s, &v, &key(i as u32)).unwrap();
            assert_eq!(now.pool, 1);
            let how = if before.pool == 0 {
                How::Redealt
            } else {
                How::Affinity
            };
            assert_eq!(now.how, how);
        }
        v.down.push((1, 0));
        assert_eq!(pick(&s, &v, &key(1)), Err(Miss::Nothing));
    }

    #[test]
    fn a_forced_pool_wins_even_at_weight_zero_and_falls_back_as_told() {
        let s = split(&[("blue", 100), ("green", 0)]);
        let mut v = fake(&[1, 1], false);
        let forced = Want {
            forced: Some(1),
            ..Want::default()
        };
        assert_eq!(pick(&s, &v, &forced).unwrap().how, How::Forced);
        assert_eq!(pick(&s, &v, &forced).unwrap().pool, 1);
        assert_eq!(pick(&s, &v, &Want::default()).unwrap().pool, 0);
        v.down.push((1, 0));
        assert_eq!(
            pick(&s, &v, &forced).unwrap(),
            Pick {
                pool: 0,
                backend: 0,
                how: How::Split
            }
        );
        let only = Want {
            forced_only: true,
            ..forced
        };
        assert_eq!(pick(&s, &v, &only), Err(Miss::Forced));
    }

    #[test]
    fn a_sticky_key_keeps_its_backend_and_skips_a_down_one() {
        let s = split(&[("blue", 1)]);
        let mut v = fake(&[4], true);
        let want = |i: u32| Want {
            key: Some(Key::of(&i.to_le_bytes())),
            sticky: true,
            ..Want::default()
        };
        let first: Vec<usize> = (0..400)
            .map(|i| pick(&s, &v, &want(i)).unwrap().backend)
            .collect();
        for (i, b) in first.iter().enumerate() {
            assert_eq!(pick(&s, &v, &want(i as u32)).unwrap().backend, *b);
        }
        v.down.push((0, 2));
        for (i, b) in first.iter().enumerate() {
            let now = pick(&s, &v, &want(i as u32)).unwrap().backend;
            assert_ne!(now, 2);
            if *b != 2 {
                assert_eq!(now, *b, "a key of another backend moved");
            }
        }
        assert!(any_can_take(&s, &v, &Want::default()));
    }
}
