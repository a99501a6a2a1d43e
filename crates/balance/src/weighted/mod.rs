//! Weighted choice: the primitive under every weighted balancer.
//!
//! [`WeightedIndex`] keeps cumulative weights; a uniformly random number in `0..total`
//! lands in exactly one endpoint's range, so each endpoint is chosen with probability
//! `weight / total`, exactly, and weight 0 is never chosen. Power-of-two-choices needs two
//! *distinct* candidates drawn by weight: [`WeightedIndex::pick_two`] draws the second from
//! the total minus the first's weight and skips over the first's range, which is the exact
//! distribution of drawing without replacement, with no retry loop.
//!
//! The request path draws with random numbers through [`WeightedIndex::pick_two_random`]:
//! when every weight is the same, a draw is an index (no table at all); otherwise through
//! alias tables (Walker, built with Vose's method in exact integer arithmetic): one
//! bucket and one comparison per draw (two above 1,024 candidates, see below), where a
//! binary search over 10,000 cumulative weights costs fourteen dependent loads. A second draw equal to the first is rejected
//! and redrawn, which is again the exact distribution without replacement; after a few
//! rejections (one candidate holding nearly all the weight) it finishes with the
//! cumulative method.
//!
//! Unequal weights are kept in chunks of at most 1,024 candidates, each with its own
//! tables, under one more table over the chunks' totals: a draw picks a chunk, then a
//! candidate in it, with what is left of the same random number. An update that changes
//! a few candidates of a large list rebuilds the chunks around the change and the small
//! table on top, and shares the others with the index before, so it costs the change
//! rather than the list.

#[cfg(test)]
mod tests;

use std::sync::Arc;

/// The most candidates a chunk holds (small under test, so every test crosses chunks).
/// Larger chunks cost an update more to rebuild; more chunks cost a draw more (with 1,024,
/// a list of up to 1,024 draws through one table, as it did before chunks).
const CHUNK: usize = if cfg!(test) { 4 } else { 1024 };

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

/// Weighted choice among a list of candidates.
///
/// Equal weights need no tables; up to 1,024 candidates are drawn through one table;
/// more are kept in chunks, each with its own tables, under a table of the chunks'
/// totals (see the [module docs](self)).
#[derive(Clone, Debug, Default)]
pub struct WeightedIndex {
    /// Over the candidates when there are no chunks; over the chunks' totals otherwise.
    top: Table,
    /// The candidates in order, in chunks (shared: a snapshot whose subset kept the
    /// weights of some of them shares those chunks with the one before); empty when
    /// every weight is the same or `top` is over the candidates.
    chunks: Arc<[Chunk]>,
    /// The weight every candidate has, when they all have the same one (not 0): then
    /// there are no tables at all; 0 otherwise.
    unit: u64,
    /// How many candidates.
    len: usize,
    /// The sum of the weights (kept beside the tables: every draw reads it).
    total: u64,
    /// Whether exactly one candidate has weight (then it has no second).
    sole: bool,
}

/// A run of consecutive candidates and their tables.
#[derive(Clone, Debug)]
struct Chunk {
    /// The first candidate's index.
    start: usize,
    table: Table,
}

/// Cumulative weights and an alias table over one list of weights (shared between
/// indexes that keep them).
#[derive(Clone, Debug, Default)]
struct Table {
    /// `ends[i]` is the sum of the weights of `0..=i`.
    ends: Arc<[u64]>,
    /// One bucket per weight; empty when the total is 0.
    alias: Arc<[Bucket]>,
    total: u64,
    /// The weight every entry has, when they all have the same one; 0 otherwise.
    unit: u64,
    /// How many entries have weight.
    weighted: usize,
}

/// One alias bucket: it holds `total` units, `keep` of them its own candidate's and the
/// rest `alias`'s. A draw landing in it with fraction `f` (out of 2^64) keeps `i` when
/// `f × total / 2^64 < keep`: one multiply, and building the table divides nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    keep: u64,
    alias: u32,
}

impl Table {
    /// Tables over `weights`, at most `u32::MAX` of them (one chunk, or the chunks'
    /// totals).
    fn new(weights: &[u64]) -> Self {
        let mut total = 0u64;
        let ends = weights
            .iter()
            .map(|w| {
                total += w;
                total
            })
            .collect();
        let unit = match weights.first() {
            Some(&first) if weights.iter().all(|w| *w == first) => first,
            _ => 0,
        };
        Self {
            ends,
            alias: alias_table(weights, total).into(),
            total,
            unit,
            weighted: weights.iter().filter(|w| **w > 0).count(),
        }
    }

    /// Whether `other` is this table, shared.
    fn is(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ends, &other.ends)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The sum of the weights before `i`.
    fn start(&self, i: usize) -> u64 {
        if i == 0 { 0 } else { self.ends[i - 1] }
    }

    fn weight(&self, i: usize) -> u64 {
        self.ends[i] - self.start(i)
    }

    fn weights(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len()).map(|i| self.weight(i))
    }

    /// The entry whose range holds `x < total`; weight-0 ranges are empty and never
    /// hold it.
    fn find(&self, x: u64) -> usize {
        self.ends.partition_point(|end| *end <= x)
    }

    /// One draw by weight through the alias table (total not 0): the high half of
    /// `r × n` is the bucket, the low half the coin. Returns the entry and what is left
    /// of `r`'s randomness for a draw below it: the coin's own fraction, uniform and
    /// independent of the outcome up to the 2^-64 granularity.
    #[inline]
    fn draw(&self, r: u64) -> (usize, u64) {
        let wide = u128::from(r) * self.alias.len() as u128;
        let i = (wide >> 64) as usize;
        let coin = u128::from(wide as u64) * u128::from(self.total);
        let rest = coin as u64;
        if ((coin >> 64) as u64) < self.alias[i].keep {
            (i, rest)
        } else {
            (self.alias[i].alias as usize, rest)
        }
    }
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
    // A chunk's weights are `u32`s and there are at most `CHUNK` of them; the table on
    // top weighs chunk totals (at most `CHUNK × 2^32`), at most one per `CHUNK / 2`
    // candidates: either way `weight × n` and `total` fit a `u64` below 2^31 candidates.
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

/// How an update changed a list of candidates: the first `head` are the old list's first
/// `head`, and the new list's candidates from `new_tail` on are the old list's from
/// `old_tail` on, weights included. What lies between was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Splice {
    pub(crate) head: usize,
    pub(crate) old_tail: usize,
    pub(crate) new_tail: usize,
}

impl Splice {
    /// The same candidates at the same places (their weights may differ).
    pub(crate) fn in_place(len: usize) -> Self {
        Self {
            head: len,
            old_tail: len,
            new_tail: len,
        }
    }
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
        if weights.len() <= CHUNK {
            return Self::flat(Table::new(&weights));
        }
        let chunks = weights
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, w)| Chunk {
                start: i * CHUNK,
                table: Table::new(w),
            })
            .collect();
        Self::over(chunks, weights.len())
    }

    /// The index whose table is over the candidates themselves.
    fn flat(top: Table) -> Self {
        Self {
            len: top.len(),
            total: top.total,
            sole: top.weighted == 1,
            top,
            chunks: Arc::default(),
            unit: 0,
        }
    }

    /// The index over `chunks` (covering `len` candidates, in order), with the table on
    /// top made for them; equal weights become [`uniform`](Self::uniform), and one chunk
    /// [`flat`](Self::flat).
    fn over(mut chunks: Vec<Chunk>, len: usize) -> Self {
        if let Some(unit) = chunks.first().map(|c| c.table.unit)
            && unit > 0
            && chunks.iter().all(|c| c.table.unit == unit)
        {
            return Self::uniform(len, unit as u32);
        }
        if chunks.len() == 1 {
            return Self::flat(chunks.remove(0).table);
        }
        let totals: Vec<u64> = chunks.iter().map(|c| c.table.total).collect();
        let top = Table::new(&totals);
        let mut weighted = chunks.iter().filter(|c| c.table.weighted > 0);
        let sole = top.weighted == 1 && weighted.next().is_some_and(|c| c.table.weighted == 1);
        Self {
            total: top.total,
            top,
            chunks: chunks.into(),
            unit: 0,
            len,
            sole,
        }
    }

    /// `len` candidates of weight `unit` each: no tables, O(1) to make. With `unit` 0,
    /// as [`new`](Self::new) of `len` zeros.
    pub fn uniform(len: usize, unit: u32) -> Self {
        if unit == 0 {
            return Self::new(std::iter::repeat_n(0, len));
        }
        Self {
            top: Table::default(),
            chunks: Arc::default(),
            unit: u64::from(unit),
            len,
            total: u64::from(unit) * len as u64,
            sole: len == 1,
        }
    }

    /// The index of `len` candidates, the `i`th of weight `weight(i)`, made from `self`
    /// (the index of the list before) as `splice` says the list changed: the chunks
    /// that hold only candidates the update kept are shared, not rebuilt, and `weight`
    /// is asked only about the others, unless `check` (when weights may have changed in
    /// place, as slow-start ramps do): then every kept chunk is compared, and rebuilt
    /// only if its weights differ. Costs the chunks around the change and the table on
    /// top; the result equals [`new`](Self::new) of the same weights.
    pub(crate) fn spliced(
        &self,
        len: usize,
        weight: impl Fn(usize) -> u32,
        splice: Splice,
        check: bool,
    ) -> Self {
        let Splice {
            head,
            old_tail,
            new_tail,
        } = splice;
        let fits = head <= old_tail
            && head <= new_tail
            && old_tail <= self.len
            && new_tail <= len
            && len - new_tail == self.len - old_tail;
        // Equal weights and short lists have no chunks: their tables are shared whole or
        // not at all.
        if self.chunks.is_empty() || len <= CHUNK || !fits {
            if len == self.len
                && self
                    .weights()
                    .enumerate()
                    .all(|(i, w)| w == u64::from(weight(i)))
            {
                return self.clone();
            }
            return Self::new((0..len).map(weight));
        }
        let old = &self.chunks[..];
        let same_weights = |c: &Chunk| {
            c.table
                .weights()
                .enumerate()
                .all(|(i, w)| w == u64::from(weight(c.start + i)))
        };
        let rebuilt = |start: usize, end: usize| Chunk {
            start,
            table: Table::new(
                &(start..end)
                    .map(|i| u64::from(weight(i)))
                    .collect::<Vec<_>>(),
            ),
        };
        // Checked: shared when its weights are the same, rebuilt in place otherwise.
        let checked = |c: &Chunk| {
            if same_weights(c) {
                c.clone()
            } else {
                rebuilt(c.start, c.start + c.table.len())
            }
        };
        if new_tail == old_tail {
            // As many candidates replaced as there were: every chunk keeps its place, and
            // those holding replaced ones are checked (a label change keeps the weights).
            let end = |c: &Chunk| c.start + c.table.len();
            let chunks: Vec<Chunk> = old
                .iter()
                .map(|c| {
                    if check || (c.start < old_tail && end(c) > head) {
                        checked(c)
                    } else {
                        c.clone()
                    }
                })
                .collect();
            return self.sharing(chunks, len);
        }
        let end = |c: usize| old.get(c + 1).map_or(self.len, |n| n.start);
        // Chunks wholly before the change, and wholly after it.
        let mut kept_head = old.partition_point(|c| c.start < head);
        if kept_head > 0 && end(kept_head - 1) > head {
            // The chunk holding `head` (chunks are contiguous: only the last can).
            kept_head -= 1;
        }
        let mut kept_tail = old.partition_point(|c| c.start < old_tail).max(kept_head);
        // Between them, the new candidates from `from` to `to` are chunked again; a gap
        // too small for a chunk of its own takes in a neighbour, so chunks do not shrink
        // away over many updates.
        let shifted = |c: usize| shifted_start(old[c].start, old_tail, new_tail);
        let gap = |kept_head: usize, kept_tail: usize| {
            let from = kept_head.checked_sub(1).map_or(0, end);
            let to = if kept_tail < old.len() {
                shifted(kept_tail)
            } else {
                len
            };
            (from, to)
        };
        let (mut from, mut to) = gap(kept_head, kept_tail);
        while to > from && to - from < CHUNK / 2 && (kept_head > 0 || kept_tail < old.len()) {
            if kept_tail < old.len() {
                kept_tail += 1;
            } else {
                kept_head -= 1;
            }
            (from, to) = gap(kept_head, kept_tail);
        }
        let kept = |c: &Chunk| if check { checked(c) } else { c.clone() };
        let pieces = (to - from).div_ceil(CHUNK);
        let mut chunks = Vec::with_capacity(old.len() + pieces);
        chunks.extend(old[..kept_head].iter().map(kept));
        for k in 0..pieces {
            // As equal as they can be: sizes differ by one at most.
            let at = |k: usize| from + (to - from) * k / pieces;
            chunks.push(rebuilt(at(k), at(k + 1)));
        }
        chunks.extend(old[kept_tail..].iter().map(|c| {
            kept(&Chunk {
                start: shifted_start(c.start, old_tail, new_tail),
                table: c.table.clone(),
            })
        }));
        self.sharing(chunks, len)
    }

    /// The index over `chunks`, or a clone of `self` when they are its own.
    fn sharing(&self, chunks: Vec<Chunk>, len: usize) -> Self {
        let unchanged = chunks.len() == self.chunks.len()
            && chunks
                .iter()
                .zip(&self.chunks[..])
                .all(|(a, b)| a.start == b.start && a.table.is(&b.table));
        if unchanged {
            return self.clone();
        }
        Self::over(chunks, len)
    }

    /// The weight every candidate has, when they all have the same one (not 0).
    pub(crate) fn unit(&self) -> Option<u32> {
        u32::try_from(self.unit).ok().filter(|u| *u > 0)
    }

    /// The chunk holding candidate `i` (there are chunks).
    fn chunk_of(&self, i: usize) -> &Chunk {
        &self.chunks[self.chunks.partition_point(|c| c.start <= i) - 1]
    }

    /// The sum of the weights of the candidates before `i`.
    fn start(&self, i: usize) -> u64 {
        if self.unit > 0 {
            return i as u64 * self.unit;
        }
        if self.chunks.is_empty() {
            return self.top.start(i);
        }
        let c = self.chunks.partition_point(|c| c.start <= i) - 1;
        let chunk = &self.chunks[c];
        self.top.start(c) + chunk.table.start(i - chunk.start)
    }

    /// The weights in order.
    fn weights(&self) -> impl Iterator<Item = u64> + '_ {
        let unit = (self.unit > 0).then_some(self.unit);
        let uniform = unit
            .into_iter()
            .flat_map(|u| std::iter::repeat_n(u, self.len));
        let flat = self.chunks.is_empty().then(|| self.top.weights());
        let chunked = self.chunks.iter().flat_map(|c| c.table.weights());
        uniform.chain(flat.into_iter().flatten()).chain(chunked)
    }

    /// Whether `weights` are exactly this index's, in order (then it needs no rebuilding).
    pub fn same_weights(&self, weights: impl IntoIterator<Item = u32>) -> bool {
        self.weights().eq(weights.into_iter().map(u64::from))
    }

    /// Whether `other` shares this index's tables (rather than equal copies of them).
    #[cfg(test)]
    pub(crate) fn shares_tables_with(&self, other: &Self) -> bool {
        // Equal weights have no tables: the same count and weight is all there is to share.
        if self.unit > 0 || other.unit > 0 {
            return self.unit == other.unit && self.len == other.len;
        }
        self.top.is(&other.top) && Arc::ptr_eq(&self.chunks, &other.chunks)
    }

    /// How many of `other`'s chunks this index shares (for tests of
    /// [`spliced`](Self::spliced)).
    #[cfg(test)]
    pub(crate) fn chunks_shared_with(&self, other: &Self) -> usize {
        self.chunks
            .iter()
            .filter(|c| other.chunks.iter().any(|o| c.table.is(&o.table)))
            .count()
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
        if self.chunks.is_empty() {
            return self.top.weight(i);
        }
        let chunk = self.chunk_of(i);
        chunk.table.weight(i - chunk.start)
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

    /// The candidate whose range holds `x < total`.
    fn find(&self, x: u64) -> usize {
        // Equal weights: the range is a division away (`unit` is 0 otherwise).
        if let Some(i) = x.checked_div(self.unit) {
            return i as usize;
        }
        let c = self.top.find(x);
        match self.chunks.get(c) {
            None => c,
            Some(chunk) => chunk.start + chunk.table.find(x - self.top.start(c)),
        }
    }

    /// Two distinct candidates, each drawn by weight, the second among the others: the
    /// first is `pick(x)`, the second is `None` when no other candidate has weight.
    pub fn pick_two(&self, x: u64, y: u64) -> Option<(usize, Option<usize>)> {
        self.two(x % self.total().max(1), |rest| y % rest)
    }

    /// [`pick_two`](Self::pick_two) from two uniformly random `u64`s, scaled into range
    /// by a multiply instead of a division (Lemire), which is what the request path uses.
    #[inline]
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
        if self.total == 0 {
            return None;
        }
        let a = self.draw(r1);
        if self.sole {
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
        let weight_a = self.weight(a);
        let rest = self.total - weight_a;
        let start_a = self.start(a);
        let mut z = scale(r, rest);
        if z >= start_a {
            z += weight_a;
        }
        Some((a, Some(self.find(z))))
    }

    /// One draw by weight (the total must not be 0): an index when the weights are
    /// equal, else through the alias table over the candidates, or through the one
    /// over the chunks and then the chosen chunk's.
    #[inline]
    fn draw(&self, r: u64) -> usize {
        if self.unit > 0 {
            return scale(r, self.len as u64) as usize;
        }
        let (c, r) = self.top.draw(r);
        match self.chunks.get(c) {
            None => c,
            Some(chunk) => chunk.start + chunk.table.draw(r).0,
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
        let start_a = self.start(a);
        let mut z = second(rest);
        if z >= start_a {
            z += wa;
        }
        Some((a, Some(self.find(z))))
    }
}

/// Where a chunk that started at `start`, past the change, starts after it.
fn shifted_start(start: usize, old_tail: usize, new_tail: usize) -> usize {
    start + new_tail - old_tail
}

impl PartialEq for WeightedIndex {
    /// The same weights in the same order, however they are chunked.
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.total == other.total && self.weights().eq(other.weights())
    }
}

impl Eq for WeightedIndex {}
