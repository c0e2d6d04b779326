//! The three [`AllocationStrategy`] implementations over a [`PoolView`].

use headcni_core::ipam::{AllocationStrategy, PoolView, Strategy};

/// host-local's round-robin: the first free position after `last_reserved`, wrapping; with no
/// (usable) last reservation, the first free position from 0 (= `rangeStart` of the first
/// range). Source: host-local `allocator/allocator.go` `GetIter` / `RangeIter.Next`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sequential;

/// A position drawn uniformly from the free positions: `nth_free(random % free)`. One draw,
/// no retries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

/// The lowest free position.
#[derive(Debug, Clone, Copy, Default)]
pub struct DensePack;

impl AllocationStrategy for Sequential {
    fn pick(
        &self,
        pool: &dyn PoolView,
        last_reserved: Option<u128>,
        _random: u128,
    ) -> Option<u128> {
        let len = pool.len();
        if len == 0 {
            return None;
        }
        let from = match last_reserved {
            Some(p) if p < len => (p + 1) % len,
            _ => 0,
        };
        pool.next_free(from)
    }
}

impl AllocationStrategy for Random {
    fn pick(
        &self,
        pool: &dyn PoolView,
        _last_reserved: Option<u128>,
        random: u128,
    ) -> Option<u128> {
        let free = pool.len() - pool.allocated();
        if free == 0 {
            return None;
        }
        pool.nth_free(random % free)
    }
}

impl AllocationStrategy for DensePack {
    fn pick(
        &self,
        pool: &dyn PoolView,
        _last_reserved: Option<u128>,
        _random: u128,
    ) -> Option<u128> {
        pool.nth_free(0)
    }
}

/// The implementation of a configured [`Strategy`].
pub fn strategy(s: Strategy) -> Box<dyn AllocationStrategy> {
    match s {
        Strategy::Sequential => Box::new(Sequential),
        Strategy::Random => Box::new(Random),
        Strategy::DensePack => Box::new(DensePack),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{DensePool, SparsePool};

    #[test]
    fn sequential_resumes_after_last_and_wraps() {
        let mut p = DensePool::new(10);
        let s = Sequential;
        assert_eq!(s.pick(&p, None, 0), Some(0));
        p.insert(5);
        assert_eq!(s.pick(&p, Some(4), 0), Some(6));
        assert_eq!(s.pick(&p, Some(9), 0), Some(0));
        p.insert(0);
        assert_eq!(s.pick(&p, Some(9), 0), Some(1));
        // A released address is not reused before the iterator wraps.
        p.remove(0);
        assert_eq!(s.pick(&p, Some(6), 0), Some(7));
        // Out-of-range last reservation: start from 0.
        assert_eq!(s.pick(&p, Some(99), 0), Some(0));
        for i in 0..10 {
            p.insert(i);
        }
        assert_eq!(s.pick(&p, Some(3), 0), None);
    }

    #[test]
    fn random_is_nth_free() {
        let mut p = SparsePool::new(8);
        for i in [0, 2, 3] {
            p.insert(i);
        }
        // free: 1 4 5 6 7
        let r = Random;
        let picks: Vec<_> = (0..5)
            .map(|k| r.pick(&p, None, k + 5 * 1000).unwrap())
            .collect();
        assert_eq!(picks, vec![1, 4, 5, 6, 7]);
        for i in 0..8 {
            p.insert(i);
        }
        assert_eq!(r.pick(&p, None, 7), None);
    }

    #[test]
    fn dense_pack_lowest() {
        let mut p = DensePool::new(300);
        for i in 0..200 {
            p.insert(i);
        }
        p.remove(130);
        assert_eq!(DensePack.pick(&p, Some(250), 77), Some(130));
        assert_eq!(strategy(Strategy::DensePack).pick(&p, None, 0), Some(130));
        assert_eq!(
            strategy(Strategy::Sequential).pick(&p, Some(150), 0),
            Some(200)
        );
    }
}
