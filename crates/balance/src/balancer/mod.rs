//! Choosing one endpoint of a subset per request, honouring weights.
//!
//! - [`Algorithm::P2cPeakEwma`] (default): power of two choices (Mitzenmacher; as in
//!   Finagle, linkerd and tower) over peak-EWMA cost, with both candidates drawn *by
//!   weight* and their costs divided by weight. tower's `p2c::Balance` draws uniformly, so
//!   weights cannot steer it; here a 99/0.5/0.5 weighting really sends about 99 %.
//! - [`Algorithm::WeightedRoundRobin`]: deterministic and exact per cycle — the `k`th pick is
//!   the endpoint whose weight range holds `k × stride mod total`, with `stride` coprime to
//!   the total, so every cycle of `total` picks gives each endpoint exactly its weight,
//!   spread out rather than in bursts.
//! - [`Algorithm::LeastRequests`]: power of two choices by weight over requests in flight.
//! - [`Algorithm::Maglev`]: consistent hashing of a request key for affinity (see
//!   [`maglev`](crate::maglev)).
//!
//! Each pick is O(log n) in the subset size and allocation-free.

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::load::EndpointLoad;
use crate::subset::Picked;

thread_local! {
    /// Per-thread SplitMix64 state, seeded once from the OS-seeded `rand` generator: the
    /// request path needs fast, not cryptographic, randomness (ThreadRng's ChaCha costs
    /// more than the rest of a pick).
    static RNG: Cell<u64> = Cell::new(rand::random());
}

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

/// Chooses endpoints with one [`Algorithm`]; cheap to share between requests.
#[derive(Debug, Default)]
pub struct Balancer {
    algorithm: Algorithm,
    turn: AtomicU64,
    slow_start: Option<std::time::Duration>,
}

impl Balancer {
    /// A balancer using `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        Self {
            algorithm,
            turn: AtomicU64::new(0),
            slow_start: None,
        }
    }

    /// Ramps new endpoints up over `window` after their Pod became Ready (P2C and least
    /// requests; round robin and Maglev use full weights).
    pub fn with_slow_start(mut self, window: std::time::Duration) -> Self {
        self.slow_start = Some(window);
        self
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Picks an endpoint of `subset`; returns its position in the snapshot (index into
    /// `loads`, which must be aligned with the snapshot's endpoints). `None` when every
    /// member has weight 0.
    pub fn pick(&self, subset: &Picked, loads: &[Arc<EndpointLoad>]) -> Option<usize> {
        let (x, y) = random_pair();
        self.pick_with(subset, loads, x, y)
    }

    /// Zone preference: picks in `local` (the caller's zone, see
    /// [`SubsetIndex::in_zone`](crate::SubsetIndex::in_zone)) while it is healthy and not
    /// overloaded, spilling over to `all` otherwise. The local choice is compared with one
    /// candidate drawn from `all`; the remote one wins only when its cost per weight times
    /// `spill_factor` (e.g. 2.0: remote must be twice as cheap) is still lower, or when the
    /// local choice is ejected.
    pub fn pick_local_first(
        &self,
        local: Option<&Picked>,
        all: &Picked,
        loads: &[Arc<EndpointLoad>],
        spill_factor: f64,
    ) -> Option<usize> {
        let Some(local) = local.filter(|l| !l.is_empty()) else {
            return self.pick(all, loads);
        };
        let Some(l) = self.pick(local, loads).filter(|l| !loads[*l].is_ejected()) else {
            return self.pick(all, loads);
        };
        let (x, _) = random_pair();
        let Some((m, _)) = all.weights().pick_two_random(x, x) else {
            return Some(l);
        };
        let r = all.positions()[m] as usize;
        let per_weight = |p: usize, w: u64| loads[p].cost() / w.max(1) as f64;
        let local_weight = u64::from(all.set().endpoints()[l].weight());
        let spill = !loads[r].is_ejected()
            && per_weight(r, all.weights().weight(m)) * spill_factor < per_weight(l, local_weight);
        Some(if spill { r } else { l })
    }

    /// Like [`pick`](Self::pick), with the request's affinity key hash (see
    /// [`hash_key`](crate::maglev::hash_key)) for [`Algorithm::Maglev`]; other algorithms
    /// ignore the key.
    pub fn pick_keyed(
        &self,
        subset: &Picked,
        loads: &[Arc<EndpointLoad>],
        key_hash: Option<u64>,
    ) -> Option<usize> {
        match (self.algorithm, key_hash) {
            (Algorithm::Maglev, Some(h)) => {
                let pos = subset
                    .maglev()
                    .map(|m| subset.positions()[m.lookup(h)] as usize)?;
                // An ejected endpoint's keys go elsewhere until it returns.
                if loads[pos].is_ejected() {
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
        subset: &Picked,
        loads: &[Arc<EndpointLoad>],
        x: u64,
        y: u64,
    ) -> Option<usize> {
        let first = self.choose(subset, loads, x, y)?;
        if !loads[first].is_ejected() {
            return Some(first);
        }
        self.avoid_ejected(subset, loads, x ^ y.rotate_left(17), first)
    }

    /// The rare path: the first choice was ejected.
    #[cold]
    #[inline(never)]
    fn avoid_ejected(
        &self,
        subset: &Picked,
        loads: &[Arc<EndpointLoad>],
        mut seed: u64,
        first: usize,
    ) -> Option<usize> {
        for _ in 0..3 {
            seed = splitmix(seed);
            let p = self.choose(subset, loads, splitmix(seed), splitmix(seed ^ 0x5555))?;
            if !loads[p].is_ejected() {
                return Some(p);
            }
        }
        let weights = subset.weights();
        let healthy: Vec<usize> = (0..subset.len())
            .filter(|m| {
                weights.weight(*m) > 0 && !loads[subset.positions()[*m] as usize].is_ejected()
            })
            .collect();
        match healthy.as_slice() {
            [] => Some(first),
            h => Some(subset.positions()[h[(splitmix(seed) % h.len() as u64) as usize]] as usize),
        }
    }

    fn choose(
        &self,
        subset: &Picked,
        loads: &[Arc<EndpointLoad>],
        x: u64,
        y: u64,
    ) -> Option<usize> {
        let weights = subset.weights();
        let position = |member: usize| subset.positions()[member] as usize;
        match self.algorithm {
            Algorithm::WeightedRoundRobin => {
                let total = weights.total();
                if total == 0 {
                    return None;
                }
                let k = self.turn.fetch_add(1, Ordering::Relaxed) % total;
                let x = ((u128::from(k) * u128::from(subset.stride())) % u128::from(total)) as u64;
                weights.pick(x).map(position)
            }
            Algorithm::Maglev => weights.pick_two_random(x, y).map(|(a, _)| position(a)),
            Algorithm::P2cPeakEwma | Algorithm::LeastRequests => {
                let (mut a, mut b) = weights.pick_two_random(x, y)?;
                // An ejected candidate would hand the other a free win (a slow endpoint
                // paired with an ejected one is chosen without comparison); draw again.
                let ejected = |m: usize| loads[position(m)].is_ejected();
                let mut seed = x ^ y;
                for _ in 0..3 {
                    if !ejected(a) && !b.is_some_and(ejected) {
                        break;
                    }
                    seed = splitmix(seed);
                    (a, b) = weights.pick_two_random(splitmix(seed), splitmix(seed ^ GOLDEN))?;
                }
                let Some(b) = b else { return Some(position(a)) };
                let cost = |m: usize| {
                    let load = &loads[position(m)];
                    if load.is_ejected() {
                        return f64::INFINITY;
                    }
                    let c = match self.algorithm {
                        Algorithm::LeastRequests => f64::from(load.in_flight() + 1),
                        _ => load.cost(),
                    };
                    c / (weights.weight(m) as f64 * self.ramp(subset, m))
                };
                Some(position(if cost(b) < cost(a) { b } else { a }))
            }
        }
    }

    /// Slow start: the share of its weight a member gets, growing linearly from 10 % to
    /// 100 % over the window after its Pod became Ready (known from discovery, so a client
    /// that starts late does not restart the ramp).
    fn ramp(&self, subset: &Picked, member: usize) -> f64 {
        let Some(window) = self.slow_start.filter(|w| !w.is_zero()) else {
            return 1.0;
        };
        let Some(since) = subset.get(member).and_then(|e| e.meta().ready_since) else {
            return 1.0;
        };
        let age = std::time::SystemTime::now()
            .duration_since(since)
            .unwrap_or_default();
        (age.as_secs_f64() / window.as_secs_f64()).clamp(0.1, 1.0)
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64: the output for state `z` (the state advances by [`GOLDEN`] per draw).
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
