//! Weighted choice in O(log n): the primitive under every weighted balancer.
//!
//! [`WeightedIndex`] keeps cumulative weights; a uniformly random number in `0..total`
//! lands in exactly one endpoint's range, so each endpoint is chosen with probability
//! `weight / total`, exactly, and weight 0 is never chosen. Power-of-two-choices needs two
//! *distinct* candidates drawn by weight: [`WeightedIndex::pick_two`] draws the second from
//! the total minus the first's weight and skips over the first's range, which is the exact
//! distribution of drawing without replacement, still in O(log n) and with no retry loop.
//!
//! The request path draws with random numbers through [`WeightedIndex::pick_two_random`]:
//! when every weight is the same, a draw is an index (no table at all); otherwise through
//! an alias table (Walker, built with Vose's method in exact integer arithmetic): one
//! bucket and one comparison per draw, O(1) and a single cache line, where a
//! binary search over 10,000 cumulative weights costs fourteen dependent loads. A second
//! draw equal to the first is rejected and redrawn, which is again the exact distribution
//! without replacement; after a few rejections (one candidate holding nearly all the weight)
//! it finishes with the cumulative method.

#[cfg(test)]
mod tests;

use std::sync::Arc;

/// A step near `total / φ` that is coprime with `total`, so `k × step mod total` visits
/// every value once per `total` steps, well spread (a low-discrepancy sequence): the walk
/// behind weighted round robin and splits.
pub(crate) fn coprime_stride(total: u64) -> u64 {
    fn gcd(mut a: u64, mut b: u64) -> u64 {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }
    if total <= 1 {
        return 1;
    }
    let mut s = (((total as f64) * 0.618_033_988_75) as u64).max(1);
    while gcd(s, total) != 1 {
        s += 1;
    }
    s
}

/// `r` (uniform over `u64`) mapped uniformly onto `0..n`.
fn scale(r: u64, n: u64) -> u64 {
    ((u128::from(r) * u128::from(n)) >> 64) as u64
}

/// Cumulative weights of a list of candidates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightedIndex {
    /// `ends[i]` is the sum of the weights of candidates `0..=i` (shared: a snapshot whose
    /// subset kept its weights shares the tables of the one before); empty when every
    /// weight is the same (then `ends[i]` is `(i + 1) × unit`).
    ends: Arc<[u64]>,
    /// The alias table, one bucket per candidate; empty when the total is 0, and when
    /// every weight is the same (then a draw is an index).
    alias: Arc<[Bucket]>,
    /// The weight every candidate has, when they all have the same one (not 0): then
    /// there are no tables at all; 0 otherwise.
    unit: u64,
    /// How many candidates.
    len: usize,
    /// The sum of the weights (kept beside the table: every alias draw reads it).
    total: u64,
}

/// One alias bucket: it holds `total` units, `keep` of them its own candidate's and the
/// rest `alias`'s. A draw landing in it with fraction `f` (out of 2^64) keeps `i` when
/// `f × total / 2^64 < keep`: one multiply, and building the table divides nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    keep: u64,
    alias: u32,
}

/// Vose's alias method in integers: every bucket holds `total` units; candidate `i` brings
/// `weight × n` units, poured into its own bucket and into the buckets of lighter
/// candidates, so each is drawn with probability exactly `weight / total` (up to the 2^-64
/// granularity of a draw's fraction).
fn alias_table(weights: &[u64], total: u64) -> Vec<Bucket> {
    let n = weights.len();
    if total == 0 || u32::try_from(n).is_err() {
        return Vec::new();
    }
    // Weights are `u32`s and `n` fits a `u32`, so `weight × n` (at most
    // (2^32 - 1)^2) and `total` fit a `u64`: no wide arithmetic.
    let n = n as u64;
    let mut units: Vec<u64> = weights.iter().map(|w| w * n).collect();
    let mut table: Vec<Bucket> = (0..n as u32)
        .map(|i| Bucket {
            keep: total,
            alias: i,
        })
        .collect();
    // Sized for the worst case up front: growing them would copy them again and again.
    let mut small = Vec::with_capacity(weights.len());
    let mut large = Vec::with_capacity(weights.len());
    for (i, u) in units.iter().enumerate() {
        if *u < total {
            small.push(i as u32);
        } else {
            large.push(i as u32);
        }
    }
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        let (s, l) = (s as usize, l as usize);
        // Bucket `s` keeps its own units and is topped up from `l`.
        table[s] = Bucket {
            keep: units[s],
            alias: l as u32,
        };
        units[l] -= total - units[s];
        if units[l] < total {
            large.pop();
            small.push(l as u32);
        }
    }
    table
}

impl WeightedIndex {
    /// Indexes `weights` in order.
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let weights: Vec<u64> = weights.into_iter().map(u64::from).collect();
        // Equal weights (the common case: every Pod at weight 1, none ramping) are drawn
        // by index; indexing a snapshot then skips building any table.
        if let Some(&unit) = weights.first()
            && unit > 0
            && weights.iter().all(|w| *w == unit)
        {
            return Self::uniform(weights.len(), unit as u32);
        }
        let mut total = 0u64;
        let ends = weights
            .iter()
            .map(|w| {
                total += w;
                total
            })
            .collect();
        let alias = alias_table(&weights, total).into();
        Self {
            ends,
            alias,
            unit: 0,
            len: weights.len(),
            total,
        }
    }

    /// `len` candidates of weight `unit` each: no tables, O(1) to make. With `unit` 0,
    /// as [`new`](Self::new) of `len` zeros.
    pub fn uniform(len: usize, unit: u32) -> Self {
        if unit == 0 {
            return Self::new(std::iter::repeat_n(0, len));
        }
        Self {
            ends: Arc::default(),
            alias: Arc::default(),
            unit: u64::from(unit),
            len,
            total: u64::from(unit) * len as u64,
        }
    }

    /// The weight every candidate has, when they all have the same one (not 0).
    pub(crate) fn unit(&self) -> Option<u32> {
        u32::try_from(self.unit).ok().filter(|u| *u > 0)
    }

    /// The sum of the weights of candidates `0..=i`.
    fn end(&self, i: usize) -> u64 {
        if self.unit > 0 {
            (i as u64 + 1) * self.unit
        } else {
            self.ends[i]
        }
    }

    /// Whether `weights` are exactly this index's, in order (then it needs no rebuilding).
    pub fn same_weights(&self, weights: impl IntoIterator<Item = u32>) -> bool {
        if self.unit > 0 {
            let mut n = 0;
            return weights.into_iter().all(|w| {
                n += 1;
                u64::from(w) == self.unit
            }) && n == self.len;
        }
        let mut end = 0u64;
        let mut ends = self.ends.iter();
        weights.into_iter().all(|w| {
            end += u64::from(w);
            ends.next() == Some(&end)
        }) && ends.next().is_none()
    }

    /// Whether `other` shares this index's tables (rather than equal copies of them).
    #[cfg(test)]
    pub(crate) fn shares_tables_with(&self, other: &Self) -> bool {
        // Equal weights have no tables: the same count and weight is all there is to share.
        if self.unit > 0 || other.unit > 0 {
            return self.unit == other.unit && self.len == other.len;
        }
        Arc::ptr_eq(&self.ends, &other.ends) && Arc::ptr_eq(&self.alias, &other.alias)
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How many candidates (including weight 0 ones).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no candidates.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The weight of candidate `i`.
    pub fn weight(&self, i: usize) -> u64 {
        if self.unit > 0 {
            return self.unit;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.ends[i] - start
    }

    /// The candidate whose range holds `x` (taken modulo the total); `None` when every
    /// weight is 0.
    pub fn pick(&self, x: u64) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        Some(self.find(x % total))
    }

    fn find(&self, x: u64) -> usize {
        // Equal weights: the range is a division away (`unit` is 0 otherwise).
        if let Some(i) = x.checked_div(self.unit) {
            return i as usize;
        }
        // The first candidate whose range ends after x; weight-0 ranges are empty and
        // never contain x.
        self.ends.partition_point(|end| *end <= x)
    }

    /// Two distinct candidates, each drawn by weight, the second among the others: the
    /// first is `pick(x)`, the second is `None` when no other candidate has weight.
    pub fn pick_two(&self, x: u64, y: u64) -> Option<(usize, Option<usize>)> {
        self.two(x % self.total().max(1), |rest| y % rest)
    }

    /// [`pick_two`](Self::pick_two) from two uniformly random `u64`s, scaled into range
    /// by a multiply instead of a division (Lemire), which is what the request path uses.
    pub fn pick_two_random(&self, r1: u64, r2: u64) -> Option<(usize, Option<usize>)> {
        if self.unit > 0 {
            // Uniform without replacement: the second among the other n - 1, skipping
            // over the first.
            let n = self.len as u64;
            let a = scale(r1, n);
            if n == 1 {
                return Some((a as usize, None));
            }
            let mut b = scale(r2, n - 1);
            if b >= a {
                b += 1;
            }
            return Some((a as usize, Some(b as usize)));
        }
        if self.alias.is_empty() {
            // Total 0, or more candidates than a bucket can name.
            return self.two(scale(r1, self.total()), |rest| scale(r2, rest));
        }
        let a = self.draw(r1);
        if self.weight(a) == self.total() {
            return Some((a, None));
        }
        let mut r = r2;
        for _ in 0..4 {
            let b = self.draw(r);
            if b != a {
                return Some((a, Some(b)));
            }
            r = crate::balancer::splitmix(r);
        }
        // `a` holds most of the weight: draw among the others directly.
        let rest = self.total() - self.weight(a);
        let start_a = self.end(a) - self.weight(a);
        let mut z = scale(r, rest);
        if z >= start_a {
            z += self.weight(a);
        }
        Some((a, Some(self.find(z))))
    }

    /// One draw by weight: an index when the weights are equal, else through the alias
    /// table (which must not be empty then): the high half of `r × n` is the bucket, the
    /// low half the coin.
    fn draw(&self, r: u64) -> usize {
        if self.unit > 0 {
            return scale(r, self.len as u64) as usize;
        }
        let wide = u128::from(r) * self.alias.len() as u128;
        let i = (wide >> 64) as usize;
        if scale(wide as u64, self.total) < self.alias[i].keep {
            i
        } else {
            self.alias[i].alias as usize
        }
    }

    fn two(&self, x: u64, second: impl FnOnce(u64) -> u64) -> Option<(usize, Option<usize>)> {
        if self.total() == 0 {
            return None;
        }
        let a = self.find(x);
        let wa = self.weight(a);
        let rest = self.total() - wa;
        if rest == 0 {
            return Some((a, None));
        }
        let start_a = self.end(a) - wa;
        let mut z = second(rest);
        if z >= start_a {
            z += wa;
        }
        Some((a, Some(self.find(z))))
    }
}
