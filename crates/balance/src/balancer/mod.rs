//! Choosing one endpoint of a subset per request, honouring weights.
//!
//! - [`Algorithm::P2cPeakEwma`] (default): power of two choices (Mitzenmacher; as in
//!   Finagle, linkerd and tower) over the cost `latency × (in flight + 1) / weight`, the
//!   latency being the larger of a held peak and an EWMA ([`crate::load`]), with both
//!   candidates drawn *by weight*. tower's `p2c::Balance` draws uniformly, so weights cannot
//!   steer it; here a 99/0.5/0.5 weighting really sends about 99 %. The second candidate
//!   wins only when it is clearly cheaper ([`TOLERANCE`]; latencies below
//!   [`LATENCY_RESOLUTION`] count as equal, and two idle endpoints compare by latency
//!   alone): equal Pods then get shares set by the weighted draw, not by
//!   measurement noise, sequential traffic follows the weights, and slow or busy Pods
//!   still lose.
//! - [`Algorithm::WeightedRoundRobin`]: deterministic and exact per cycle — the `k`th pick is
//!   the endpoint whose weight range holds `k × stride mod total`, with `stride` coprime to
//!   the total, so every cycle of `total` picks gives each endpoint exactly its weight,
//!   spread out rather than in bursts.
//! - [`Algorithm::LeastRequests`]: power of two choices by weight over requests in flight.
//! - [`Algorithm::Maglev`]: consistent hashing of a request key for affinity (see
//!   [`maglev`](crate::maglev)); requests without a key are drawn by weight.
//!
//! Slow start is not an algorithm: it scales the weights every algorithm draws from (see
//! [`SlowStart`](crate::SlowStart)). Each pick is O(1) in the subset size and
//! allocation-free.

#[cfg(test)]
mod tests;

use std::cell::Cell;

use crate::load::{EndpointLoad, HoldsLoad, decay_factor, held_peak};
use crate::subset::Picked;

thread_local! {
    /// Per-thread SplitMix64 state, seeded once from the OS-seeded `rand` generator: the
    /// request path needs fast, not cryptographic, randomness (ThreadRng's ChaCha costs
    /// more than the rest of a pick).
    static RNG: Cell<u64> = Cell::new(rand::random());
}

#[inline]
fn random_pair() -> (u64, u64) {
    RNG.with(|state| {
        let s = state.get();
        state.set(s.wrapping_add(GOLDEN.wrapping_mul(2)));
        (splitmix(s), splitmix(s.wrapping_add(GOLDEN)))
    })
}

/// A balancing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// Weighted power of two choices over peak-EWMA latency × requests in flight.
    #[default]
    P2cPeakEwma,
    /// Smooth, exact weighted round robin.
    WeightedRoundRobin,
    /// Weighted power of two choices over requests in flight.
    LeastRequests,
    /// Consistent hashing of a request key (Maglev), for affinity; requests without a key
    /// are spread by weight at random.
    Maglev,
}

/// How much cheaper the second P2C candidate must be to win over the first: costs within
/// 25 % of each other count as equal, so the weighted draw decides.
pub const TOLERANCE: f64 = 1.25;

/// Latency estimates below this count as equal: on loopback and in-process, differences
/// of tens of microseconds are scheduling noise, not a slower Pod.
pub const LATENCY_RESOLUTION: std::time::Duration = std::time::Duration::from_micros(100);

/// Chooses endpoints with one [`Algorithm`]; cheap to share between requests.
#[derive(Debug, Default)]
pub struct Balancer {
    algorithm: Algorithm,
    /// The reciprocal of the peak-EWMA decay in nanoseconds, used to age a stale estimate
    /// (see [`with_decay`](Self::with_decay)).
    per_decay_nanos: f64,
}

impl Balancer {
    /// A balancer using `algorithm` (peak-EWMA decay 10 s, as [`PoolConfig`](crate::PoolConfig)).
    pub fn new(algorithm: Algorithm) -> Self {
        Self {
            algorithm,
            per_decay_nanos: 1e-10,
        }
    }

    /// The peak-EWMA decay the load table uses. P2C compares two estimates as of the later
    /// of their last updates: the older one is aged by the time between them, as if it
    /// had decayed toward zero meanwhile (tower's and linkerd's estimates decay when read).
    /// Without it, an endpoint that lost every comparison after one slow sample would get
    /// no request, so no new sample, and stay starved for good in sequential traffic.
    pub fn with_decay(mut self, decay: std::time::Duration) -> Self {
        self.per_decay_nanos = 1.0 / decay.as_nanos().max(1) as f64;
        self
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Picks an endpoint of `subset`; returns its position in the snapshot (index into
    /// `loads`, which must be aligned with the snapshot's endpoints). `None` when every
    /// member has weight 0.
    pub fn pick(&self, subset: &Picked<'_>, loads: &[impl HoldsLoad]) -> Option<usize> {
        let (x, y) = random_pair();
        self.pick_with(subset, loads, x, y)
    }

    /// Zone preference: picks in `local` (the caller's zone, see
    /// [`Picked::local`](crate::Picked::local)) while it is healthy and not
    /// overloaded, spilling over to `all` otherwise. The local choice is compared with one
    /// candidate drawn from `all`; the remote one wins only when its cost per weight times
    /// `spill_factor` (e.g. 2.0: remote must be twice as cheap) is still lower, or when the
    /// local choice is ejected. The cost here weighs the latency EWMA, not the peak: one
    /// slow answer moves traffic within the zone, sustained latency out of it.
    pub fn pick_local_first(
        &self,
        local: Option<&Picked<'_>>,
        all: &Picked<'_>,
        loads: &[impl HoldsLoad],
        spill_factor: f64,
    ) -> Option<usize> {
        let Some(local) = local.filter(|l| !l.is_empty()) else {
            return self.pick(all, loads);
        };
        let Some(l) = self
            .pick(local, loads)
            .filter(|l| !loads[*l].load().is_ejected())
        else {
            return self.pick(all, loads);
        };
        let (x, _) = random_pair();
        let Some((m, _)) = all.weights().pick_two_random(x, x) else {
            return Some(l);
        };
        let r = all.positions()[m] as usize;
        // Compared by load and sustained latency: EWMAs (not peaks: one slow answer is
        // P2C's business within the zone, not a reason to leave it) aged to the same
        // moment and floored at the resolution, so scheduling noise on loopback does not
        // read as a slow zone.
        let reference = loads[l]
            .load()
            .stamp_nanos()
            .max(loads[r].load().stamp_nanos());
        let per_weight = |p: usize, w: u64| {
            let pending = f64::from(loads[p].load().in_flight() + 1) / w.max(1) as f64;
            match self.algorithm {
                Algorithm::LeastRequests => pending,
                _ => self.sustained_at(loads[p].load(), reference) * pending,
            }
        };
        let local_weight = u64::from(all.set().endpoints()[l].weight());
        let spill = !loads[r].load().is_ejected()
            && per_weight(r, all.weights().weight(m)) * spill_factor < per_weight(l, local_weight);
        Some(if spill { r } else { l })
    }

    /// Like [`pick`](Self::pick), with the request's affinity key hash (see
    /// [`hash_key`](crate::maglev::hash_key)) for [`Algorithm::Maglev`]; other algorithms
    /// ignore the key.
    pub fn pick_keyed(
        &self,
        subset: &Picked<'_>,
        loads: &[impl HoldsLoad],
        key_hash: Option<u64>,
    ) -> Option<usize> {
        match (self.algorithm, key_hash) {
            (Algorithm::Maglev, Some(h)) => {
                let pos = subset
                    .maglev()
                    .map(|m| subset.positions()[m.lookup(h)] as usize)?;
                // An ejected endpoint's keys go elsewhere until it returns.
                if loads[pos].load().is_ejected() {
                    self.pick(subset, loads)
                } else {
                    Some(pos)
                }
            }
            _ => self.pick(subset, loads),
        }
    }

    /// [`pick`](Self::pick) with the two uniformly random numbers given (for tests and
    /// simulations).
    ///
    /// Ejected endpoints are avoided: a draw that lands only on ejected ones is redrawn a
    /// few times, then the rare slow path scans the subset for one that is not. Only when
    /// every member with weight is ejected (the panic case; [`Ejection`](crate::Ejection)
    /// normally prevents it) does an ejected endpoint get the request.
    pub fn pick_with(
        &self,
        subset: &Picked<'_>,
        loads: &[impl HoldsLoad],
        x: u64,
        y: u64,
    ) -> Option<usize> {
        let (first, ejected) = self.choose(subset, loads, x, y)?;
        if !ejected {
            return Some(first);
        }
        self.avoid_ejected(subset, loads, x ^ y.rotate_left(17), first)
    }

    /// The rare path: the first choice was ejected.
    #[cold]
    #[inline(never)]
    fn avoid_ejected(
        &self,
        subset: &Picked<'_>,
        loads: &[impl HoldsLoad],
        mut seed: u64,
        first: usize,
    ) -> Option<usize> {
        for _ in 0..3 {
            seed = splitmix(seed);
            let (p, ejected) =
                self.choose(subset, loads, splitmix(seed), splitmix(seed ^ 0x5555))?;
            if !ejected {
                return Some(p);
            }
        }
        let weights = subset.weights();
        let healthy: Vec<usize> = (0..subset.len())
            .filter(|m| {
                weights.weight(*m) > 0
                    && !loads[subset.positions()[*m] as usize].load().is_ejected()
            })
            .collect();
        match healthy.as_slice() {
            [] => Some(first),
            h => Some(subset.positions()[h[(splitmix(seed) % h.len() as u64) as usize]] as usize),
        }
    }

    /// The algorithm's choice and whether it is ejected.
    fn choose(
        &self,
        subset: &Picked<'_>,
        loads: &[impl HoldsLoad],
        x: u64,
        y: u64,
    ) -> Option<(usize, bool)> {
        let weights = subset.weights();
        let positions = subset.positions();
        let position = |member: usize| positions[member] as usize;
        let checked = |pos: usize| (pos, loads[pos].load().is_ejected());
        match self.algorithm {
            Algorithm::WeightedRoundRobin => {
                let total = weights.total();
                if total == 0 {
                    return None;
                }
                let k = subset.next_turn() % total;
                let x = ((u128::from(k) * u128::from(subset.stride())) % u128::from(total)) as u64;
                weights.pick(x).map(|m| checked(position(m)))
            }
            Algorithm::Maglev => weights
                .pick_two_random(x, y)
                .map(|(a, _)| checked(position(a))),
            Algorithm::P2cPeakEwma | Algorithm::LeastRequests => {
                let (mut a, mut b) = weights.pick_two_random(x, y)?;
                // Each candidate's load is read once: the comparison below works on these
                // copies.
                let mut seen_a = Seen::of(loads[position(a)].load());
                let mut seen_b = b.map(|b| Seen::of(loads[position(b)].load()));
                // An ejected candidate would hand the other a free win (a slow endpoint
                // paired with an ejected one is chosen without comparison); draw again.
                let mut seed = x ^ y;
                for _ in 0..3 {
                    if !seen_a.ejected && !seen_b.is_some_and(|s| s.ejected) {
                        break;
                    }
                    seed = splitmix(seed);
                    (a, b) = weights.pick_two_random(splitmix(seed), splitmix(seed ^ GOLDEN))?;
                    seen_a = Seen::of(loads[position(a)].load());
                    seen_b = b.map(|b| Seen::of(loads[position(b)].load()));
                }
                let (Some(b), Some(seen_b)) = (b, seen_b) else {
                    return Some((position(a), seen_a.ejected));
                };
                Some(if self.second_wins(weights, (a, &seen_a), (b, &seen_b)) {
                    (position(b), seen_b.ejected)
                } else {
                    (position(a), seen_a.ejected)
                })
            }
        }
    }

    /// Whether P2C's second candidate is clearly cheaper than its first.
    ///
    /// Cost is the load an endpoint would carry with this request, per unit of weight, as
    /// weighted least-request balancers compare it, scaled by latency; but when both are
    /// idle their loads tie, so sequential traffic follows the weighted draw (slow start
    /// included) instead of always favouring the heavier one.
    #[inline]
    fn second_wins(
        &self,
        weights: &crate::weighted::WeightedIndex,
        (a, seen_a): (usize, &Seen),
        (b, seen_b): (usize, &Seen),
    ) -> bool {
        if seen_b.ejected {
            return false;
        }
        if seen_a.ejected {
            return true;
        }
        let both_idle = seen_a.in_flight == 0 && seen_b.in_flight == 0;
        let pending = |m: usize, seen: &Seen| {
            if both_idle {
                1.0
            } else {
                f64::from(seen.in_flight + 1) / weights.weight(m).max(1) as f64
            }
        };
        let (pending_a, pending_b) = (pending(a, seen_a), pending(b, seen_b));
        if self.algorithm == Algorithm::LeastRequests {
            return pending_b * TOLERANCE < pending_a;
        }
        // Both estimates as of the later of their last updates.
        let reference = seen_a.stamp.max(seen_b.stamp);
        self.aged(seen_b, reference) * pending_b * TOLERANCE
            < self.aged(seen_a, reference) * pending_a
    }

    /// An endpoint's latency EWMA (without its peak) as of `reference`, floored at
    /// [`LATENCY_RESOLUTION`] (see [`aged`](Self::aged)).
    fn sustained_at(&self, load: &EndpointLoad, reference: u64) -> f64 {
        let seen = Seen {
            peak: 0.0,
            ..Seen::of(load)
        };
        self.aged(&seen, reference)
    }

    /// The latency estimate P2C compares, of a load already read: the larger of its EWMA
    /// and its peak, each aged to `reference` (nanoseconds after its table's origin: an
    /// estimate with no newer sample decays toward zero, so an endpoint that stopped being
    /// picked is tried again), floored at [`LATENCY_RESOLUTION`].
    #[inline]
    fn aged(&self, seen: &Seen, reference: u64) -> f64 {
        let floor = LATENCY_RESOLUTION.as_nanos() as f64;
        let latency = seen.ewma.max(seen.peak);
        // Ageing only lowers an estimate, so one at the floor already, or one updated at
        // `reference` itself, needs no decay computed: the common cases on a busy pool.
        if latency <= floor {
            return floor;
        }
        let age = reference.saturating_sub(seen.stamp);
        if age == 0 {
            return latency;
        }
        let age = age as f64;
        let ewma = seen.ewma * decay_factor(age * self.per_decay_nanos);
        held_peak(seen.peak, ewma, age).max(floor)
    }
}

/// One P2C candidate's load, read once.
#[derive(Clone, Copy)]
struct Seen {
    ejected: bool,
    in_flight: u32,
    ewma: f64,
    peak: f64,
    stamp: u64,
}

impl Seen {
    #[inline]
    fn of(load: &EndpointLoad) -> Self {
        Self {
            ejected: load.is_ejected(),
            in_flight: load.in_flight(),
            ewma: load.ewma_nanos(),
            peak: load.peak_nanos(),
            stamp: load.stamp_nanos(),
        }
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64: the output for state `z` (the state advances by [`GOLDEN`] per draw).
#[inline]
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
