//! In-memory allocation index of one range set: a [`PoolView`] over positions `0..len`.
//!
//! Two representations with identical semantics:
//! - [`DensePool`] for sets of at most [`DENSE_MAX`] positions: a bitmap plus a Fenwick tree of
//!   per-word counts, so rank/select (and therefore `next_free`/`nth_free`) are O(log len);
//!   memory is `len / 8` bytes (8 KiB for a /16) whatever the number of reservations.
//! - [`SparsePool`] for bigger sets (a /64 has 2^64 positions): a sorted vector of allocated
//!   runs `[start, end)` with prefix counts, so queries are O(log runs); nothing is sized by
//!   `len`.
//!
//! [`Pool`] chooses between them by size.

use headcni_core::ipam::PoolView;

/// Largest set (in positions) kept as a bitmap; above it [`SparsePool`] is used.
pub const DENSE_MAX: u128 = 1 << 20;

/// The padding bits of the last word of a `len`-position bitmap.
fn pad_mask(len: u64) -> u64 {
    match len % 64 {
        0 => 0,
        rem => !0u64 << rem,
    }
}

/// Bitmap + Fenwick tree over the 64-bit words. Padding bits past `len` are permanently set so
/// every word has 64 positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DensePool {
    len: u64,
    allocated: u64,
    words: Vec<u64>,
    /// 1-based Fenwick tree of allocated bits per word (padding included).
    fen: Vec<u32>,
}

impl DensePool {
    /// An empty pool of `len` (≤ [`DENSE_MAX`]) positions.
    pub fn new(len: u64) -> DensePool {
        let nwords = len.div_ceil(64) as usize;
        let mut words = vec![0u64; nwords];
        if let Some(last) = words.last_mut() {
            *last = pad_mask(len);
        }
        let mut p = DensePool {
            len,
            allocated: 0,
            words,
            fen: Vec::new(),
        };
        p.rebuild_fenwick();
        p
    }

    /// The bitmap as little-endian 64-bit words with the padding bits cleared (the on-disk form).
    pub fn to_words(&self) -> Vec<u64> {
        let mut w = self.words.clone();
        if let Some(last) = w.last_mut() {
            *last &= !pad_mask(self.len);
        }
        w
    }

    /// Rebuilds a pool from [`DensePool::to_words`]; `None` if the word count does not fit `len`.
    pub fn from_words(len: u64, words: Vec<u64>) -> Option<DensePool> {
        if words.len() as u64 != len.div_ceil(64) {
            return None;
        }
        let mut p = DensePool {
            len,
            allocated: 0,
            words,
            fen: Vec::new(),
        };
        if let Some(last) = p.words.last_mut() {
            *last &= !pad_mask(len);
        }
        p.allocated = p.words.iter().map(|w| u64::from(w.count_ones())).sum();
        if let Some(last) = p.words.last_mut() {
            *last |= pad_mask(len);
        }
        p.rebuild_fenwick();
        Some(p)
    }

    fn rebuild_fenwick(&mut self) {
        let n = self.words.len();
        let mut fen = vec![0u32; n + 1];
        for i in 1..=n {
            fen[i] += self.words[i - 1].count_ones();
            let j = i + (i & i.wrapping_neg());
            if j <= n {
                fen[j] += fen[i];
            }
        }
        self.fen = fen;
    }

    fn fen_add(&mut self, word: usize, delta: i32) {
        let mut i = word + 1;
        while i < self.fen.len() {
            self.fen[i] = self.fen[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// Allocated bits (padding included) in words `0..w`.
    fn fen_prefix(&self, w: usize) -> u64 {
        let mut i = w;
        let mut s = 0u64;
        while i > 0 {
            s += u64::from(self.fen[i]);
            i &= i - 1;
        }
        s
    }

    fn free_before(&self, pos: u64) -> u64 {
        let w = (pos / 64) as usize;
        let b = pos % 64;
        let mut alloc = self.fen_prefix(w);
        if b != 0 {
            alloc += u64::from((self.words[w] & ((1u64 << b) - 1)).count_ones());
        }
        pos - alloc
    }

    /// Marks `pos` allocated; `false` if it already was or is out of range.
    pub fn insert(&mut self, pos: u128) -> bool {
        if pos >= u128::from(self.len) {
            return false;
        }
        let (w, b) = ((pos / 64) as usize, pos % 64);
        if self.words[w] & (1 << b) != 0 {
            return false;
        }
        self.words[w] |= 1 << b;
        self.allocated += 1;
        self.fen_add(w, 1);
        true
    }

    /// Marks `pos` free; `false` if it already was or is out of range.
    pub fn remove(&mut self, pos: u128) -> bool {
        if pos >= u128::from(self.len) {
            return false;
        }
        let (w, b) = ((pos / 64) as usize, pos % 64);
        if self.words[w] & (1 << b) == 0 {
            return false;
        }
        self.words[w] &= !(1 << b);
        self.allocated -= 1;
        self.fen_add(w, -1);
        true
    }
}

impl PoolView for DensePool {
    fn len(&self) -> u128 {
        u128::from(self.len)
    }
    fn allocated(&self) -> u128 {
        u128::from(self.allocated)
    }
    fn is_free(&self, pos: u128) -> bool {
        pos < u128::from(self.len) && self.words[(pos / 64) as usize] & (1 << (pos % 64)) == 0
    }
    fn next_free(&self, from: u128) -> Option<u128> {
        let from = if from >= u128::from(self.len) {
            0
        } else {
            from as u64
        };
        let fb = self.free_before(from);
        self.nth_free(u128::from(fb)).or_else(|| self.nth_free(0))
    }
    fn nth_free(&self, n: u128) -> Option<u128> {
        let free = u128::from(self.len - self.allocated);
        if n >= free {
            return None;
        }
        let mut rem = n as u64;
        let nw = self.words.len();
        let mut pos = 0usize;
        let mut step = if nw == 0 {
            0
        } else {
            1usize << (usize::BITS - 1 - nw.leading_zeros())
        };
        while step > 0 {
            let next = pos + step;
            if next <= nw {
                let free_here = 64 * step as u64 - u64::from(self.fen[next]);
                if free_here <= rem {
                    pos = next;
                    rem -= free_here;
                }
            }
            step >>= 1;
        }
        // The answer is the rem-th zero bit of word `pos`.
        let mut x = !*self.words.get(pos)?;
        for _ in 0..rem {
            x &= x - 1;
        }
        let p = pos as u64 * 64 + u64::from(x.trailing_zeros());
        (p < self.len).then_some(u128::from(p))
    }
}

/// One allocated run `[start, end)` and the number of allocated positions before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: u128,
    end: u128,
    before: u128,
}

/// Sorted, merged allocated runs with prefix counts. Queries are O(log runs); `insert` and
/// `remove` are O(runs) (a vector shift), which is what a reservation costs anyway when the
/// store rewrites the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparsePool {
    len: u128,
    runs: Vec<Run>,
}

impl SparsePool {
    /// An empty pool of `len` positions (any size).
    pub fn new(len: u128) -> SparsePool {
        SparsePool {
            len,
            runs: Vec::new(),
        }
    }

    /// The allocated runs as `(start, end_exclusive)`, ascending (the on-disk form).
    pub fn runs(&self) -> Vec<(u128, u128)> {
        self.runs.iter().map(|r| (r.start, r.end)).collect()
    }

    /// Rebuilds a pool from [`SparsePool::runs`]; `None` unless the runs are ascending,
    /// non-empty, disjoint, non-adjacent and inside `0..len`.
    pub fn from_runs(len: u128, runs: &[(u128, u128)]) -> Option<SparsePool> {
        let mut out = Vec::with_capacity(runs.len());
        let mut before = 0u128;
        let mut prev_end: Option<u128> = None;
        for &(start, end) in runs {
            if start >= end || end > len || prev_end.is_some_and(|p| start <= p) {
                return None;
            }
            out.push(Run { start, end, before });
            before += end - start;
            prev_end = Some(end);
        }
        Some(SparsePool { len, runs: out })
    }

    fn recount_from(&mut self, i: usize) {
        let mut before = if i == 0 {
            0
        } else {
            let r = self.runs[i - 1];
            r.before + (r.end - r.start)
        };
        for r in &mut self.runs[i..] {
            r.before = before;
            before += r.end - r.start;
        }
    }

    /// Index of the run containing `pos`, if any.
    fn run_of(&self, pos: u128) -> Option<usize> {
        let i = self.runs.partition_point(|r| r.start <= pos);
        (i > 0 && pos < self.runs[i - 1].end).then(|| i - 1)
    }

    /// Marks `pos` allocated; `false` if it already was or is out of range.
    pub fn insert(&mut self, pos: u128) -> bool {
        if pos >= self.len || self.run_of(pos).is_some() {
            return false;
        }
        let i = self.runs.partition_point(|r| r.start <= pos); // runs[..i] start before pos
        let joins_prev = i > 0 && self.runs[i - 1].end == pos;
        let joins_next = i < self.runs.len() && self.runs[i].start == pos + 1;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.runs[i - 1].end = self.runs[i].end;
                self.runs.remove(i);
                self.recount_from(i - 1);
            }
            (true, false) => {
                self.runs[i - 1].end = pos + 1;
                self.recount_from(i - 1);
            }
            (false, true) => {
                self.runs[i].start = pos;
                self.recount_from(i);
            }
            (false, false) => {
                self.runs.insert(
                    i,
                    Run {
                        start: pos,
                        end: pos + 1,
                        before: 0,
                    },
                );
                self.recount_from(i);
            }
        }
        true
    }

    /// Marks `pos` free; `false` if it already was or is out of range.
    pub fn remove(&mut self, pos: u128) -> bool {
        let Some(i) = self.run_of(pos) else {
            return false;
        };
        let r = self.runs[i];
        if r.start == pos && r.end == pos + 1 {
            self.runs.remove(i);
        } else if r.start == pos {
            self.runs[i].start = pos + 1;
        } else if r.end == pos + 1 {
            self.runs[i].end = pos;
        } else {
            self.runs[i].end = pos;
            self.runs.insert(
                i + 1,
                Run {
                    start: pos + 1,
                    end: r.end,
                    before: 0,
                },
            );
        }
        self.recount_from(i);
        true
    }

    fn allocated_before(&self, pos: u128) -> u128 {
        let i = self.runs.partition_point(|r| r.start < pos);
        if i == 0 {
            return 0;
        }
        let r = self.runs[i - 1];
        r.before + (pos.min(r.end) - r.start)
    }
}

impl PoolView for SparsePool {
    fn len(&self) -> u128 {
        self.len
    }
    fn allocated(&self) -> u128 {
        self.runs.last().map_or(0, |r| r.before + (r.end - r.start))
    }
    fn is_free(&self, pos: u128) -> bool {
        pos < self.len && self.run_of(pos).is_none()
    }
    fn next_free(&self, from: u128) -> Option<u128> {
        let from = if from >= self.len { 0 } else { from };
        let fb = from - self.allocated_before(from);
        self.nth_free(fb).or_else(|| self.nth_free(0))
    }
    fn nth_free(&self, n: u128) -> Option<u128> {
        if n >= self.len - self.allocated() {
            return None;
        }
        // Free positions before run i: start - before, non-decreasing in i.
        let k = self.runs.partition_point(|r| r.start - r.before <= n);
        let p = if k == 0 {
            n
        } else {
            let r = self.runs[k - 1];
            n + r.before + (r.end - r.start)
        };
        (p < self.len).then_some(p)
    }
}

/// The pool of one range set: dense up to [`DENSE_MAX`] positions, sparse above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pool {
    /// Bitmap form.
    Dense(DensePool),
    /// Run-list form.
    Sparse(SparsePool),
}

impl Pool {
    /// An empty pool of `len` positions in the form [`DENSE_MAX`] selects.
    pub fn new(len: u128) -> Pool {
        if len <= DENSE_MAX {
            Pool::Dense(DensePool::new(len as u64))
        } else {
            Pool::Sparse(SparsePool::new(len))
        }
    }

    /// Marks `pos` allocated; `false` if it already was or is out of range.
    pub fn insert(&mut self, pos: u128) -> bool {
        match self {
            Pool::Dense(p) => p.insert(pos),
            Pool::Sparse(p) => p.insert(pos),
        }
    }

    /// Marks `pos` free; `false` if it already was or is out of range.
    pub fn remove(&mut self, pos: u128) -> bool {
        match self {
            Pool::Dense(p) => p.remove(pos),
            Pool::Sparse(p) => p.remove(pos),
        }
    }

    fn view(&self) -> &dyn PoolView {
        match self {
            Pool::Dense(p) => p,
            Pool::Sparse(p) => p,
        }
    }
}

impl PoolView for Pool {
    fn len(&self) -> u128 {
        self.view().len()
    }
    fn allocated(&self) -> u128 {
        self.view().allocated()
    }
    fn is_free(&self, pos: u128) -> bool {
        self.view().is_free(pos)
    }
    fn next_free(&self, from: u128) -> Option<u128> {
        self.view().next_free(from)
    }
    fn nth_free(&self, n: u128) -> Option<u128> {
        self.view().nth_free(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_nth(set: &[bool], n: u128) -> Option<u128> {
        set.iter()
            .enumerate()
            .filter(|(_, a)| !**a)
            .nth(n as usize)
            .map(|(i, _)| i as u128)
    }
    fn naive_next(set: &[bool], from: u128) -> Option<u128> {
        let len = set.len();
        let from = if from as usize >= len {
            0
        } else {
            from as usize
        };
        (0..len)
            .map(|k| (from + k) % len)
            .find(|&i| !set[i])
            .map(|i| i as u128)
    }

    #[test]
    fn dense_basics_and_padding() {
        let mut p = DensePool::new(70);
        assert_eq!((p.len(), p.allocated()), (70, 0));
        assert_eq!(p.nth_free(69), Some(69));
        assert_eq!(p.nth_free(70), None);
        assert!(p.insert(0) && !p.insert(0) && !p.insert(70));
        assert_eq!(p.next_free(0), Some(1));
        for i in 0..70 {
            p.insert(i);
        }
        assert_eq!(
            (p.next_free(5), p.nth_free(0), p.allocated()),
            (None, None, 70)
        );
        assert!(p.remove(64) && !p.remove(64));
        assert_eq!((p.next_free(65), p.nth_free(0)), (Some(64), Some(64)));
        let back = DensePool::from_words(70, p.to_words()).unwrap();
        assert_eq!(back, p);
        assert!(DensePool::from_words(70, vec![0]).is_none());
    }

    #[test]
    fn sparse_huge() {
        let len = 1u128 << 64;
        let mut p = SparsePool::new(len);
        assert!(p.insert(0) && p.insert(1) && p.insert(len - 1) && p.insert(5));
        assert_eq!(p.runs(), vec![(0, 2), (5, 6), (len - 1, len)]);
        assert_eq!(p.next_free(0), Some(2));
        assert_eq!(p.next_free(len - 1), Some(2));
        assert_eq!(p.nth_free(3), Some(6));
        assert_eq!(p.nth_free(len - 5), Some(len - 2));
        assert_eq!(p.nth_free(len - 4), None);
        assert!(p.remove(1) && !p.remove(1));
        assert_eq!(p.allocated(), 3);
        assert_eq!(SparsePool::from_runs(len, &p.runs()), Some(p.clone()));
        assert!(SparsePool::from_runs(len, &[(3, 5), (5, 6)]).is_none());
        assert!(SparsePool::from_runs(10, &[(3, 11)]).is_none());
        assert!(matches!(Pool::new(len), Pool::Sparse(_)));
        assert!(matches!(Pool::new(65536), Pool::Dense(_)));
    }

    proptest! {
        /// Both representations agree with a naive boolean vector on every query.
        #[test]
        fn pools_match_naive(len in 1usize..300, ops in prop::collection::vec((any::<bool>(), 0usize..300), 0..400),
                             queries in prop::collection::vec(0u128..320, 1..20)) {
            let mut naive = vec![false; len];
            let mut d = DensePool::new(len as u64);
            let mut s = SparsePool::new(len as u128);
            for (ins, pos) in ops {
                let pos = pos % len;
                if ins {
                    let fresh = !naive[pos];
                    naive[pos] = true;
                    prop_assert_eq!(d.insert(pos as u128), fresh);
                    prop_assert_eq!(s.insert(pos as u128), fresh);
                } else {
                    let was = naive[pos];
                    naive[pos] = false;
                    prop_assert_eq!(d.remove(pos as u128), was);
                    prop_assert_eq!(s.remove(pos as u128), was);
                }
            }
            let alloc = naive.iter().filter(|a| **a).count() as u128;
            prop_assert_eq!(d.allocated(), alloc);
            prop_assert_eq!(s.allocated(), alloc);
            for q in queries {
                prop_assert_eq!(d.nth_free(q), naive_nth(&naive, q));
                prop_assert_eq!(s.nth_free(q), naive_nth(&naive, q));
                prop_assert_eq!(d.next_free(q), naive_next(&naive, q));
                prop_assert_eq!(s.next_free(q), naive_next(&naive, q));
                let free = (q as usize) < len && !naive[q as usize];
                prop_assert_eq!(d.is_free(q), free);
                prop_assert_eq!(s.is_free(q), free);
            }
            prop_assert_eq!(DensePool::from_words(len as u64, d.to_words()), Some(d.clone()));
            prop_assert_eq!(SparsePool::from_runs(len as u128, &s.runs()), Some(s.clone()));
        }
    }
}
