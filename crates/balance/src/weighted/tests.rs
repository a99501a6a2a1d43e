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
    fn alias_table_is_exact(weights in proptest::collection::vec(0u32..20, 1..30)) {
        let w = WeightedIndex::new(weights.iter().copied());
        prop_assume!(w.total() > 0);
        let n = w.len() as u64 * w.total() * 64;
        let mut counts = vec![0u64; weights.len()];
        for k in 0..n {
            counts[w.draw(k.wrapping_mul(u64::MAX / n))] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            let want = n * u64::from(weights[i]) / w.total();
            prop_assert!(c.abs_diff(want) <= w.len() as u64 + 1, "{i}: {c} vs {want}");
        }
    }
}

#[test]
fn equal_weights_draw_by_index_uniformly_without_replacement() {
    let w = WeightedIndex::new([3u32; 5]);
    assert!(w.alias.is_empty(), "equal weights need no alias table");
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
