//! Weighted traffic splits between subsets: canary 90/10, blue/green 100/0.
//!
//! A [`Split`] chooses a subset per request with the same exact, spread-out walk as
//! weighted round robin: over every `total` consecutive requests each leg gets exactly its
//! weight (so a 90/10 canary is 90/10 after 100 requests, not merely on average), and
//! consecutive requests alternate rather than come in bursts. A blue/green switch is just
//! a new split (`version=4.1` 0, `version=4.2` 100).

use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::selector::Selector;
use crate::weighted::WeightedIndex;

/// Why a split is not valid.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SplitError {
    /// No leg, or every leg has weight 0.
    #[error("a split needs at least one leg with a positive weight")]
    NoWeight,
}

/// Weighted legs, each a subset selector.
#[derive(Debug)]
pub struct Split {
    legs: Vec<(Selector, u32)>,
    weights: WeightedIndex,
    stride: u64,
    turn: AtomicU64,
}

impl Split {
    /// A split over `legs` (selector, weight). Validated here, so choosing cannot fail.
    pub fn new(legs: impl IntoIterator<Item = (Selector, u32)>) -> Result<Self, SplitError> {
        let legs: Vec<(Selector, u32)> = legs.into_iter().collect();
        let weights = WeightedIndex::new(legs.iter().map(|(_, w)| *w));
        if weights.total() == 0 {
            return Err(SplitError::NoWeight);
        }
        let stride = crate::weighted::coprime_stride(weights.total());
        Ok(Self {
            legs,
            weights,
            stride,
            turn: AtomicU64::new(0),
        })
    }

    /// The legs and their weights.
    pub fn legs(&self) -> &[(Selector, u32)] {
        &self.legs
    }

    /// The subset for the next request.
    pub fn choose(&self) -> &Selector {
        &self.legs[self.choose_leg()].0
    }

    /// The index into [`legs`](Self::legs) of the subset for the next request.
    pub fn choose_leg(&self) -> usize {
        let total = self.weights.total();
        let k = self.turn.fetch_add(1, Ordering::Relaxed) % total;
        let x = ((u128::from(k) * u128::from(self.stride)) % u128::from(total)) as u64;
        self.weights
            .pick(x)
            .expect("validated: positive total weight")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_90_10_is_exact_per_100_requests_and_spread() {
        let stable: Selector = "version=4.1".parse().unwrap();
        let canary: Selector = "version=4.2".parse().unwrap();
        let split = Split::new([(stable.clone(), 90), (canary.clone(), 10)]).unwrap();
        for _ in 0..3 {
            let picks: Vec<bool> = (0..100).map(|_| split.choose() == &canary).collect();
            assert_eq!(picks.iter().filter(|c| **c).count(), 10);
            assert!(
                picks.windows(2).all(|w| !(w[0] && w[1])),
                "canary requests are spread out"
            );
        }
    }

    #[test]
    fn blue_green_is_a_new_split() {
        let blue: Selector = "version=4.1".parse().unwrap();
        let green: Selector = "version=4.2".parse().unwrap();
        let split = Split::new([(blue, 0), (green.clone(), 100)]).unwrap();
        assert!((0..1000).all(|_| split.choose() == &green));
        assert_eq!(Split::new([]).unwrap_err(), SplitError::NoWeight);
        assert_eq!(Split::new([(green, 0)]).unwrap_err(), SplitError::NoWeight);
    }
}
