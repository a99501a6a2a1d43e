use proptest::prelude::*;

use super::*;

#[test]
fn exact_shares_over_the_whole_range() {
    let w = WeightedIndex::new([99 * 2, 1, 1]);
    let mut counts = [0u64; 3];
    for x in 0..w.total() {
        counts[w.pick(x).unwrap()] += 1;
    }
    assert_eq!(counts, [198, 1, 1]);
}

#[test]
fn zero_weights_and_empty() {
    assert_eq!(WeightedIndex::new([]).pick(7), None);
    assert_eq!(WeightedIndex::new([0, 0]).pick(7), None);
    let w = WeightedIndex::new([0, 5, 0]);
    assert!((0..20).all(|x| w.pick(x) == Some(1)));
    assert_eq!(w.pick_two(3, 4), Some((1, None)));
}

proptest! {
    /// Every candidate is picked exactly `weight` times when x sweeps `0..total`.
    #[test]
    fn picks_honour_weights_exactly(weights in proptest::collection::vec(0u32..20, 1..30)) {
        let w = WeightedIndex::new(weights.iter().copied());
        let mut counts = vec![0u64; weights.len()];
        for x in 0..w.total() {
            counts[w.pick(x).unwrap()] += 1;
        }
        prop_assert_eq!(counts, weights.iter().map(|w| u64::from(*w)).collect::<Vec<_>>());
    }

    /// The second of a pair is distinct from the first, never weight 0, and, for a fixed
    /// first, distributed exactly by the others' weights.
    #[test]
    fn pairs_are_distinct_and_weighted(weights in proptest::collection::vec(0u32..10, 1..20), x in any::<u64>()) {
        let w = WeightedIndex::new(weights.iter().copied());
        prop_assume!(w.total() > 0);
        let (a, _) = w.pick_two(x, 0).unwrap();
        let rest = w.total() - w.weight(a);
        let mut counts = vec![0u64; weights.len()];
        for y in 0..rest {
            let (a2, b) = w.pick_two(x, y).unwrap();
            prop_assert_eq!(a2, a);
            let b = b.expect("others have weight");
            prop_assert_ne!(b, a);
            counts[b] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            let want = if i == a { 0 } else { u64::from(weights[i]) };
            prop_assert_eq!(*c, want);
        }
    }
}

proptest! {
    /// The request-path variant never returns a weight-0 or repeated candidate.
    #[test]
    fn random_pairs_are_distinct_and_never_weight_zero(weights in proptest::collection::vec(0u32..5, 1..20), r1 in any::<u64>(), r2 in any::<u64>()) {
        let w = WeightedIndex::new(weights.iter().copied());
        match w.pick_two_random(r1, r2) {
            None => prop_assert_eq!(w.total(), 0),
            Some((a, b)) => {
                prop_assert!(weights[a] > 0);
                if let Some(b) = b {
                    prop_assert_ne!(a, b);
                    prop_assert!(weights[b] > 0);
                }
            }
        }
    }
}

#[test]
fn alias_draws_follow_weights() {
    let weights = [0u32, 7, 1, 0, 2, 90];
    let w = WeightedIndex::new(weights);
    let mut counts = [0u64; 6];
    let n = 200_000u64;
    for k in 0..n {
        // Evenly spread draws stand in for uniform random ones.
        counts[w.draw(k.wrapping_mul(u64::MAX / n))] += 1;
    }
    for (c, weight) in counts.iter().zip(weights) {
        let want = n as f64 * f64::from(weight) / 100.0;
        assert!((*c as f64 - want).abs() <= n as f64 * 0.001, "{counts:?}");
    }
}

proptest! {
    /// Sweeping the alias table's draws evenly reproduces every weight within one draw per
    /// bucket.
    #[test]
    fn alias_table_is_exact(weights in proptest::collection::vec(0u64..20, 1..30)) {
        let t = Table::new(&weights);
        prop_assume!(t.total > 0);
        let n = t.len() as u64 * t.total * 64;
        let mut counts = vec![0u64; weights.len()];
        for k in 0..n {
            counts[t.draw(k.wrapping_mul(u64::MAX / n)).0] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            let want = n * weights[i] / t.total;
            prop_assert!(c.abs_diff(want) <= t.len() as u64 + 1, "{i}: {c} vs {want}");
        }
    }

    /// Draws through chunks (a chunk by the table on top, then a candidate by the
    /// chunk's table, with what is left of the same random number) follow the weights:
    /// over 50,000 random draws, every candidate's count is within six standard
    /// deviations of its share, and weight 0 is never drawn.
    #[test]
    fn chunked_draws_follow_weights(weights in proptest::collection::vec(0u32..20, 1..30), seed in any::<u64>()) {
        let w = WeightedIndex::new(weights.iter().copied());
        prop_assume!(w.total() > 0);
        let n = 50_000u64;
        let mut counts = vec![0u64; weights.len()];
        for k in 0..n {
            counts[w.draw(crate::balancer::splitmix(seed.wrapping_add(k)))] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            let p = f64::from(weights[i]) / w.total() as f64;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            let off = (*c as f64 - n as f64 * p).abs();
            prop_assert!(off <= 6.0 * sigma, "{i}: {c} vs {} ({counts:?})", n as f64 * p);
        }
    }
}

#[test]
fn equal_weights_draw_by_index_uniformly_without_replacement() {
    let w = WeightedIndex::new([3u32; 5]);
    assert!(
        w.top.alias.is_empty() && w.chunks.is_empty(),
        "equal weights need no alias table"
    );
    let (mut first, mut second) = ([0u64; 5], [0u64; 5]);
    let n = 100_000u64;
    for k in 0..n {
        // Evenly spread first draws, and second draws swept independently of them.
        let r1 = k.wrapping_mul(u64::MAX / n);
        let r2 = (k * 7919 % n).wrapping_mul(u64::MAX / n);
        let (a, b) = w.pick_two_random(r1, r2).expect("a pick");
        let b = b.expect("a second candidate");
        assert_ne!(a, b);
        first[a] += 1;
        second[b] += 1;
    }
    for counts in [first, second] {
        for c in counts {
            assert!(
                (c as f64 - n as f64 / 5.0).abs() <= n as f64 * 0.01,
                "{counts:?}"
            );
        }
    }
    let one = WeightedIndex::new([4u32]);
    assert_eq!(one.pick_two_random(123, 456), Some((0, None)));
}

#[test]
fn same_weights_means_the_same_sequence() {
    let index = WeightedIndex::new([2, 0, 5]);
    assert!(index.same_weights([2, 0, 5]));
    assert!(!index.same_weights([2, 0]));
    assert!(!index.same_weights([2, 0, 5, 0]));
    assert!(!index.same_weights([2, 5, 0]));
    assert!(!index.same_weights([1, 1, 5]));
    assert!(WeightedIndex::new([]).same_weights([]));
    assert!(!WeightedIndex::new([]).same_weights([0]));
}

/// The chunks are in order, none empty or larger than [`CHUNK`], cover every candidate,
/// and the table on top sums them.
fn assert_chunked_well(w: &WeightedIndex) {
    if w.unit > 0 || w.chunks.is_empty() {
        assert!(w.unit > 0 || w.len() <= CHUNK && w.top.len() == w.len());
        return;
    }
    assert!(w.chunks.len() > 1);
    let mut next = 0;
    for (c, chunk) in w.chunks.iter().enumerate() {
        assert_eq!(
            chunk.start, next,
            "chunk {c} starts where the one before ended"
        );
        assert!((1..=CHUNK).contains(&chunk.table.len()), "chunk {c} size");
        assert_eq!(w.top.weight(c), chunk.table.total);
        assert_eq!(chunk.table.total, chunk.table.weights().sum::<u64>());
        next += chunk.table.len();
    }
    assert_eq!(next, w.len());
    assert_eq!(w.top.total, w.total());
}

proptest! {
    /// An index spliced from the one before equals one made from scratch over the same
    /// weights (also when kept weights changed in place and `check` is set), is chunked
    /// well, and picks exactly by weight; when nothing changed it is the index before.
    #[test]
    fn spliced_indexes_equal_fresh_ones(
        old in proptest::collection::vec(0u32..6, 0..40),
        cut in (0usize..=40, 0usize..=40),
        middle in proptest::collection::vec(0u32..6, 0..12),
        bump in proptest::option::of(0usize..40),
    ) {
        let head = cut.0.min(old.len());
        let old_tail = (head + cut.1).min(old.len());
        let mut new: Vec<u32> = old[..head].to_vec();
        new.extend(&middle);
        new.extend(&old[old_tail..]);
        // With `check`, a weight may also have changed among the kept candidates.
        let check = bump.is_some();
        if let Some(i) = bump.filter(|i| *i < new.len()) {
            new[i] += 1;
        }
        let splice = Splice { head, old_tail, new_tail: head + middle.len() };
        let before = WeightedIndex::new(old.iter().copied());
        let after = before.spliced(new.len(), |i| new[i], splice, check);
        prop_assert_eq!(&after, &WeightedIndex::new(new.iter().copied()));
        assert_chunked_well(&after);
        let mut counts = vec![0u64; new.len()];
        for x in 0..after.total() {
            counts[after.pick(x).unwrap()] += 1;
        }
        prop_assert_eq!(counts, new.iter().map(|w| u64::from(*w)).collect::<Vec<_>>());
        if new == old && !old.is_empty() && before.unit().is_none() {
            prop_assert!(after.shares_tables_with(&before));
        }
    }
}

#[test]
fn a_splice_rebuilds_the_chunks_around_the_change_only() {
    // Unequal weights over 1,000 candidates: 250 chunks under test.
    let weights = |n: usize, skip: Option<usize>| -> Vec<u32> {
        (0..n)
            .filter(|i| Some(*i) != skip)
            .map(|i| 1 + (i % 3) as u32)
            .collect()
    };
    let old = weights(1000, None);
    let mut index = WeightedIndex::new(old.iter().copied());
    let chunks = index.chunks.len();
    // One candidate leaves: at most the chunk it was in and the neighbour it takes in
    // are rebuilt.
    let new = weights(1000, Some(500));
    let splice = Splice {
        head: 500,
        old_tail: 501,
        new_tail: 500,
    };
    let next = index.spliced(new.len(), |i| new[i], splice, false);
    assert_eq!(next, WeightedIndex::new(new.iter().copied()));
    // A splice that does not fit the lengths is not trusted: the index is made afresh.
    let wrong = Splice {
        head: 500,
        old_tail: 501,
        new_tail: 1_200,
    };
    let afresh = index.spliced(new.len(), |i| new[i], wrong, false);
    assert_eq!(afresh, WeightedIndex::new(new.iter().copied()));
    assert_eq!(afresh.chunks_shared_with(&index), 0);
    assert!(next.chunks_shared_with(&index) >= chunks - 2);
    // Only the replaced candidates' weights are asked for.
    let asked = std::cell::Cell::new(0);
    let _ = index.spliced(
        new.len(),
        |i| {
            asked.set(asked.get() + 1);
            new[i]
        },
        splice,
        false,
    );
    assert!(asked.get() <= 2 * CHUNK, "asked {} weights", asked.get());
    // Many such updates in a row keep chunks from shrinking away: all but one hold at
    // least CHUNK / 2 candidates.
    let mut list = old;
    let mut seed = 7u64;
    for _ in 0..2000 {
        seed = crate::balancer::splitmix(seed);
        let at = (seed % list.len() as u64) as usize;
        let (splice, next) = if seed & (1 << 40) == 0 && list.len() > 1 {
            let mut next = list.clone();
            next.remove(at);
            (
                Splice {
                    head: at,
                    old_tail: at + 1,
                    new_tail: at,
                },
                next,
            )
        } else {
            let mut next = list.clone();
            next.insert(at, 1 + (seed >> 50) as u32 % 4);
            (
                Splice {
                    head: at,
                    old_tail: at,
                    new_tail: at + 1,
                },
                next,
            )
        };
        index = index.spliced(next.len(), |i| next[i], splice, false);
        list = next;
        assert_chunked_well(&index);
        assert!(index.chunks.len() <= list.len() / (CHUNK / 2) + 1);
    }
    assert_eq!(index, WeightedIndex::new(list.iter().copied()));
}
