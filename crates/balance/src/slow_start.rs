//! Slow start: a Pod that just became Ready gets a growing share of its weight.
//!
//! The model is Envoy's (`slow_start_config`): during `window` after the Pod's Ready
//! transition its effective weight is `weight × max(min_weight, (age / window)^(1 /
//! aggression))`. Aggression 1 ramps linearly; above 1 the ramp is faster at first. The
//! factor applies to the weights every algorithm draws from (weighted P2C, least requests,
//! round robin, unkeyed picks under Maglev), so it shapes traffic the same whatever the
//! algorithm. Keyed Maglev picks keep full weights: a ramp would move keys between Pods
//! every time the factor changes.
//!
//! The Ready time comes from discovery (the Pod's `Ready` condition), so a client that
//! starts late does not restart a Pod's ramp.

use std::time::{Duration, SystemTime};

/// How new endpoints ramp up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowStart {
    /// How long the ramp lasts after the Pod became Ready.
    pub window: Duration,
    /// The ramp's curve: 1.0 is linear, larger values ramp faster at first.
    pub aggression: f64,
    /// The smallest share of its weight an endpoint gets, 0.0–1.0 (Envoy's default: 10 %).
    pub min_weight: f64,
}

impl SlowStart {
    /// A linear ramp over `window` starting at 10 % of the weight.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            aggression: 1.0,
            min_weight: 0.1,
        }
    }

    /// The share of its weight (0–1] an endpoint Ready since `ready_since` gets at `now`;
    /// 1.0 outside the window or when the Ready time is unknown.
    pub fn factor(&self, ready_since: Option<SystemTime>, now: SystemTime) -> f64 {
        let Some(since) = ready_since else {
            return 1.0;
        };
        if self.window.is_zero() {
            return 1.0;
        }
        // A Ready time in the future (clock skew) counts as just Ready.
        let age = now.duration_since(since).unwrap_or_default();
        if age >= self.window {
            return 1.0;
        }
        let time = age.as_secs_f64() / self.window.as_secs_f64();
        let aggression = if self.aggression.is_finite() && self.aggression > 0.0 {
            self.aggression
        } else {
            1.0
        };
        time.powf(1.0 / aggression)
            .max(self.min_weight.clamp(0.0, 1.0))
            .clamp(f64::MIN_POSITIVE, 1.0)
    }

    /// When the ramp of an endpoint Ready since `ready_since` ends (`None`: not ramping).
    pub fn ends(&self, ready_since: Option<SystemTime>, now: SystemTime) -> Option<SystemTime> {
        let end = ready_since? + self.window;
        (end > now).then_some(end)
    }
}

/// Weights are scaled by this much so that a ramp factor keeps three digits: weight 1 at
/// 10 % becomes 100 of 1,000 rather than rounding to 0.
pub(crate) const SCALE: u64 = 1_000;

/// `weight` scaled by [`SCALE`] and multiplied by `factor`, at least 1 when `weight` is
/// positive (a ramping endpoint is never cut off), saturating at `u32::MAX`.
pub(crate) fn effective_weight(weight: u32, factor: f64) -> u32 {
    if weight == 0 {
        return 0;
    }
    let scaled = (u64::from(weight) * SCALE) as f64 * factor;
    (scaled.round() as u64).clamp(1, u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_ramp_with_a_floor() {
        let s = SlowStart::new(Duration::from_secs(100));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |secs: u64| s.factor(Some(t0), t0 + Duration::from_secs(secs));
        assert_eq!(at(0), 0.1);
        assert_eq!(at(5), 0.1);
        assert!((at(50) - 0.5).abs() < 1e-9);
        assert!((at(90) - 0.9).abs() < 1e-9);
        assert_eq!(at(100), 1.0);
        assert_eq!(s.factor(None, t0), 1.0);
        // Ready in the future: just ready.
        assert_eq!(s.factor(Some(t0 + Duration::from_secs(10)), t0), 0.1);
        let fast = SlowStart {
            aggression: 2.0,
            ..s
        };
        assert!((fast.factor(Some(t0), t0 + Duration::from_secs(25)) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn effective_weights_keep_small_factors() {
        assert_eq!(effective_weight(1, 0.1), 100);
        assert_eq!(effective_weight(1, 1.0), 1_000);
        assert_eq!(effective_weight(0, 1.0), 0);
        assert_eq!(effective_weight(1, 1e-9), 1);
        assert_eq!(effective_weight(u32::MAX, 1.0), u32::MAX);
    }
}
