//! Per-endpoint load: requests in flight and a latency estimate, keyed by address so it
//! survives snapshot changes.
//!
//! The estimate has two parts, and balancers compare the larger:
//! - a **peak**: a sample above it replaces it at once (react to a slow answer
//!   immediately), and it then falls back linearly, [`PEAK_HOLD`] times slower than
//!   wall-clock time: a 3 ms stall on a 0.3 ms Pod stands out for about 11 ms, a 20 ms one for 80 ms;
//! - an **EWMA** of every sample, weighted by time (time constant `decay`, linkerd's 10 s by
//!   default): what the endpoint's latency has been lately, which a Pod that is slow for
//!   good raises and one stall barely moves.
//!
//! Finagle's, linkerd's and tower's peak EWMA keeps one number, whose peak then takes the
//! whole decay to be forgiven: in sequential traffic one stall kept an equal Pod out of
//! P2C's draw for seconds (three equal Pods got from 25 to 296 of 600 requests each). Here
//! the stall is forgiven in a few of its own lengths, while a Pod that stays slow keeps
//! raising its EWMA and stays avoided. What P2C compares is about
//! `latency × (in_flight + 1)` per unit of weight (both parts aged to one moment and
//! floored at [`LATENCY_RESOLUTION`](crate::balancer::LATENCY_RESOLUTION)): an idle fast
//! endpoint is cheapest, a busy or slow one dearer.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::endpoint::EndpointSet;

/// The process-wide origin of ejection deadlines, so an endpoint's load needs no clock of
/// its own (keeping it small: balancers read many of them per second).
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// How much slower than wall-clock time a peak falls back: a sample `s` above an endpoint's
/// EWMA keeps the endpoint's estimate above that EWMA for `PEAK_HOLD × (s − EWMA)`.
///
/// Long enough for P2C to steer around an answer that was slow (the next requests go
/// elsewhere while the Pod is checked again), short enough that a stall on an equal Pod
/// costs it only a few of its own lengths of traffic. A Pod that is slow for good is caught
/// by its EWMA, which its next answer raises by the time it was held out for (see
/// [`ewma`]).
pub const PEAK_HOLD: f64 = 4.0;

/// The EWMA update: the new estimate (nanoseconds) after `sample` arrived `elapsed` after
/// the previous update, with time constant `decay`. Every sample counts by the time since
/// the last: a sample long after the last nearly replaces the estimate.
pub fn ewma(estimate: f64, sample: f64, elapsed: Duration, decay: Duration) -> f64 {
    ewma_nanos(
        estimate,
        sample,
        elapsed.as_nanos() as f64 / (decay.as_nanos().max(1) as f64),
    )
}

/// [`ewma`] with the elapsed time already divided by the decay.
#[inline]
fn ewma_nanos(estimate: f64, sample: f64, elapsed_per_decay: f64) -> f64 {
    // `estimate × w + sample × (1 - w)`, written as a pull toward the sample: with the
    // pull `x` itself for a sample close after the last, three dependent operations
    // rather than the polynomial's seven.
    let pull = if elapsed_per_decay < LINEAR_BELOW {
        elapsed_per_decay
    } else {
        1.0 - decay_factor(elapsed_per_decay)
    };
    estimate - (estimate - sample) * pull
}

/// The peak (nanoseconds) `elapsed` nanoseconds after it was `peak`, when `sample` just
/// arrived: the sample if it is higher, the peak fallen back by `elapsed / PEAK_HOLD`
/// otherwise (0 once it is gone).
#[inline]
pub fn held_peak(peak: f64, sample: f64, elapsed: f64) -> f64 {
    sample.max(peak - elapsed * (1.0 / PEAK_HOLD))
}

/// Below this `x`, `e^-x` is taken as `1 - x`: the next term, `x² / 2`, is under 5 × 10⁻¹³,
/// far below what a latency estimate resolves. At the default decay of 10 s that covers
/// samples less than 9.5 ms apart: every sample of a busy endpoint.
const LINEAR_BELOW: f64 = 1.0 / (1u64 << 20) as f64;

/// `e^-x` for `x ≥ 0`. Busy endpoints update their estimates microseconds apart against a
/// decay of seconds, so `x` is usually around 10⁻⁶: there `1 - x` (below
/// [`LINEAR_BELOW`]) or the Taylor polynomial to the cubic term (below 1/64, exact to
/// 3 × 10⁻⁹) cost one to a few multiplications instead of a libm call (about a tenth of a
/// pick's time).
#[inline]
pub(crate) fn decay_factor(x: f64) -> f64 {
    if x < LINEAR_BELOW {
        1.0 - x
    } else if x < 1.0 / 64.0 {
        1.0 - x * (1.0 - x * (0.5 - x * (1.0 / 6.0)))
    } else {
        (-x).exp()
    }
}

/// Calibrates the clock latency samples are read from (the CPU's time-stamp counter,
/// scaled to nanoseconds), once per process. The first [`LoadTable`] does it anyway; call
/// this at startup to keep it (under a millisecond on the machines measured, 200 ms at
/// most) off whatever builds the first table.
pub fn calibrate_clock() {
    let _ = quanta::Clock::new();
}

/// Called with an endpoint's address when a failure ejects it.
pub type EjectionHook = Arc<dyn Fn(SocketAddr) + Send + Sync>;

/// Something that holds an endpoint's load: the load itself, a pool's
/// [`PoolEntry`](crate::PoolEntry) (the load with the caller's payload), or an `Arc` of
/// either. Balancers read loads through it, so a pool's entries need no separate list of
/// loads.
pub trait HoldsLoad {
    /// The load.
    fn load(&self) -> &EndpointLoad;
}

impl HoldsLoad for EndpointLoad {
    fn load(&self) -> &EndpointLoad {
        self
    }
}

impl<L: HoldsLoad + ?Sized> HoldsLoad for Arc<L> {
    fn load(&self) -> &EndpointLoad {
        (**self).load()
    }
}

/// What the table keeps per address: the load it made (see [`LoadTable::for_set`]), or
/// whatever holds the load a pool made (see `LoadTable::track`).
#[derive(Clone)]
pub(crate) enum Held {
    Own(Arc<EndpointLoad>),
    Pool(Arc<dyn HoldsLoad + Send + Sync>),
}

impl Held {
    fn load(&self) -> &EndpointLoad {
        match self {
            Held::Own(l) => l,
            Held::Pool(h) => h.load(),
        }
    }
}

/// What recording an outcome needs: the clock, the estimate's settings, the ejection policy
/// and the table's loads (for the ejection limit). Each load points here, so a request
/// holding a load records through it without holding (or counting a reference to) its
/// table.
struct Recorder {
    /// Latency samples are read from the CPU's invariant time-stamp counter where it has
    /// one (`quanta`; about 12 ns a read on this project's machines, against about 30 ns
    /// for `Instant::now`), from the OS's monotonic clock otherwise.
    clock: quanta::Clock,
    /// The clock's raw reading when the table was made: estimates are stamped relative to it.
    origin: u64,
    /// The reciprocal of the decay's time constant in nanoseconds (a division costs more
    /// than the rest of the update).
    per_decay_nanos: f64,
    ejection: Ejection,
    hook: Option<EjectionHook>,
    /// Ejections caused so far.
    ejections: AtomicU64,
    /// Every address's load (for the ejection limit). The loads point back at this
    /// recorder, so the table empties the map when it is dropped (see
    /// `Drop for LoadTable`), which ends the cycle.
    loads: Mutex<HashMap<SocketAddr, Held>>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("ejection", &self.ejection)
            .field("ejections", &self.ejections)
            .finish_non_exhaustive()
    }
}

/// Load of one endpoint; shared by every snapshot that lists its address.
pub struct EndpointLoad {
    recorder: Arc<Recorder>,
    in_flight: AtomicU32,
    /// f64 bits: the latency EWMA in nanoseconds.
    ewma: AtomicU64,
    /// f64 bits: the latency peak in nanoseconds as of `stamp` (see [`PEAK_HOLD`]).
    peak: AtomicU64,
    /// Nanoseconds after the table's origin of the last update.
    stamp: AtomicU64,
    // 16 bits each keep the whole load in 48 bytes (64 with the `Arc` counts: one cache
    // line).
    consecutive_failures: AtomicU16,
    ejections: AtomicU16,
    /// Nanoseconds after [`epoch`] until which the endpoint is ejected.
    ejected_until: AtomicU64,
}

/// Counts a request in flight until dropped; `L` holds the load (an `Arc`, so the load
/// outlives the snapshot the request was picked from).
#[derive(Debug)]
pub struct InFlight<L: HoldsLoad = Arc<EndpointLoad>>(L);

impl<L: HoldsLoad + Clone> InFlight<L> {
    fn new(holder: &L) -> Self {
        holder.load().in_flight.fetch_add(1, Ordering::Relaxed);
        Self(holder.clone())
    }
}

impl<L: HoldsLoad> InFlight<L> {
    /// The load this request counts on.
    pub fn load(&self) -> &EndpointLoad {
        self.0.load()
    }

    /// What holds the load.
    pub(crate) fn holder(&self) -> &L {
        &self.0
    }
}

impl<L: HoldsLoad> Drop for InFlight<L> {
    fn drop(&mut self) {
        self.0.load().in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for EndpointLoad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointLoad")
            .field("in_flight", &self.in_flight())
            .field("ewma", &self.ewma())
            .field("peak", &Duration::from_nanos(self.peak_nanos() as u64))
            .field("consecutive_failures", &self.consecutive_failures)
            .field("ejections", &self.ejections())
            .field("ejected", &self.is_ejected())
            .finish()
    }
}

impl EndpointLoad {
    fn new(recorder: Arc<Recorder>, initial: Duration) -> Self {
        Self {
            recorder,
            in_flight: AtomicU32::new(0),
            ewma: AtomicU64::new((initial.as_nanos() as f64).to_bits()),
            peak: AtomicU64::new(0f64.to_bits()),
            stamp: AtomicU64::new(0),
            consecutive_failures: AtomicU16::new(0),
            ejections: AtomicU16::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    /// Whether the endpoint is ejected now (see [`Ejection`]).
    #[inline]
    pub fn is_ejected(&self) -> bool {
        // Fast path without reading the clock: not ejected (0).
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && self.still_ejected(until)
    }

    /// Whether an ejection until `until` lasts; once it is over, the deadline is cleared
    /// (unless a new ejection replaced it meanwhile), so balancers stop reading the clock
    /// for this endpoint.
    #[cold]
    fn still_ejected(&self, until: u64) -> bool {
        if until > epoch().elapsed().as_nanos() as u64 {
            return true;
        }
        let _ = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    /// How many times the endpoint has been ejected.
    pub fn ejections(&self) -> u32 {
        u32::from(self.ejections.load(Ordering::Relaxed))
    }

    /// Requests currently in flight.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency EWMA as of the last update (see the [module](self) docs).
    pub fn ewma(&self) -> Duration {
        Duration::from_nanos(self.ewma_nanos() as u64)
    }

    /// When the estimate was last updated, in nanoseconds after its table's origin.
    #[inline]
    pub fn stamp_nanos(&self) -> u64 {
        self.stamp.load(Ordering::Relaxed)
    }

    /// The latency EWMA in nanoseconds as of the last update.
    #[inline]
    pub fn ewma_nanos(&self) -> f64 {
        f64::from_bits(self.ewma.load(Ordering::Relaxed))
    }

    /// The latency peak in nanoseconds as of the last update (0 when none stands out).
    #[inline]
    pub fn peak_nanos(&self) -> f64 {
        f64::from_bits(self.peak.load(Ordering::Relaxed))
    }

    /// A success ends the failure streak.
    #[inline]
    fn end_streak(&self) {
        // Read first: most successes follow successes, and a store would take the cache
        // line from every other core reading this load.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }
}

/// Load state for every address a Service has had, with the EWMA settings.
#[derive(Debug)]
pub struct LoadTable {
    recorder: Arc<Recorder>,
    initial: Duration,
}

impl Drop for LoadTable {
    fn drop(&mut self) {
        // Loads point at the recorder that holds them: forget them, so each load (and then
        // the recorder) goes with the last snapshot or request that holds it.
        let mut loads = self
            .recorder
            .loads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loads.clear();
    }
}

/// Passive outlier ejection (Envoy's consecutive-failures detector): an endpoint that fails
/// `consecutive_failures` requests in a row is taken out of rotation for
/// `base_time × (times ejected)`, capped at `max_time`. At most `max_ejected_percent` of a
/// Service's endpoints are ejected at once; failures beyond that eject nobody, so a
/// Service-wide problem never ejects everything.
#[derive(Clone, Debug, PartialEq)]
pub struct Ejection {
    /// Failures in a row that eject an endpoint (0 disables ejection).
    pub consecutive_failures: u32,
    /// The first ejection's length; later ones are multiples of it.
    pub base_time: Duration,
    /// The longest ejection.
    pub max_time: Duration,
    /// The largest share of endpoints ejected at once, 0–100.
    pub max_ejected_percent: u8,
}

impl Default for Ejection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_time: Duration::from_secs(30),
            max_time: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

impl Default for LoadTable {
    fn default() -> Self {
        Self::new(Duration::from_secs(10), Duration::from_millis(1))
    }
}

impl LoadTable {
    /// A table whose estimates decay with time constant `decay` and start at `initial`
    /// (linkerd uses 10 s and 1 ms... a new endpoint looks fast, so it gets tried).
    ///
    /// The first table a process makes calibrates the time-stamp counter against the OS
    /// clock (under a millisecond on the machines measured, 200 ms at most): make tables
    /// when the routing state is built, never on a request's path.
    pub fn new(decay: Duration, initial: Duration) -> Self {
        let clock = quanta::Clock::new();
        Self {
            recorder: Arc::new(Recorder {
                origin: clock.raw(),
                clock,
                per_decay_nanos: 1.0 / decay.as_nanos().max(1) as f64,
                ejection: Ejection::default(),
                hook: None,
                ejections: AtomicU64::new(0),
                loads: Mutex::new(HashMap::new()),
            }),
            initial,
        }
    }

    /// A table with this table's settings and the outlier-ejection policy `ejection`,
    /// calling `hook` (if any) with an endpoint's address whenever a failure ejects it (to
    /// log and count it). The new table starts empty: set the policy before asking for
    /// loads.
    pub fn with_ejection(self, ejection: Ejection, hook: Option<EjectionHook>) -> Self {
        let r = &self.recorder;
        Self {
            recorder: Arc::new(Recorder {
                clock: r.clock.clone(),
                origin: r.origin,
                per_decay_nanos: r.per_decay_nanos,
                ejection,
                hook,
                ejections: AtomicU64::new(0),
                loads: Mutex::new(HashMap::new()),
            }),
            initial: self.initial,
        }
    }

    /// How many ejections failures have caused so far.
    pub fn ejections(&self) -> u64 {
        self.recorder.ejections.load(Ordering::Relaxed)
    }

    /// Records a success: the failure streak ends.
    pub fn record_success(&self, load: &EndpointLoad) {
        load.end_streak();
    }

    /// Records a failure (connect error, reset, or a counted 5xx) of the endpoint at `addr`;
    /// returns whether this failure ejected it (then the ejection is counted and the hook,
    /// if any, called with `addr`).
    pub fn record_failure(&self, load: &EndpointLoad, addr: SocketAddr) -> bool {
        load.recorder.record_failure(load, addr)
    }

    /// The loads of `set`'s endpoints, aligned with [`EndpointSet::endpoints`]. Called
    /// once per snapshot (not per request); addresses that left the set are forgotten.
    pub fn for_set(&self, set: &EndpointSet) -> Arc<[Arc<EndpointLoad>]> {
        let mut loads = self
            .recorder
            .loads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let aligned: Arc<[Arc<EndpointLoad>]> = set
            .endpoints()
            .iter()
            .map(|e| self.held(&mut loads, e.addr()))
            .collect();
        loads.retain(|addr, _| {
            set.endpoints()
                .binary_search_by_key(addr, |e| e.addr())
                .is_ok()
        });
        aligned
    }

    /// The load the table holds for `addr`, made (and kept) if it has none.
    fn held(&self, table: &mut HashMap<SocketAddr, Held>, addr: SocketAddr) -> Arc<EndpointLoad> {
        if let Some(Held::Own(load)) = table.get(&addr) {
            return load.clone();
        }
        let load = Arc::new(self.new_load());
        table.insert(addr, Held::Own(load.clone()));
        load
    }

    /// A new load, not tracked by the table until [`track`](Self::track)ed.
    pub(crate) fn new_load(&self) -> EndpointLoad {
        EndpointLoad::new(self.recorder.clone(), self.initial)
    }

    /// Forgets the addresses in `gone` and tracks the loads in `added` (each replacing
    /// what its address had): O(changed), for a pool that keeps its own loads.
    pub(crate) fn track(
        &self,
        gone: impl IntoIterator<Item = SocketAddr>,
        added: impl IntoIterator<Item = (SocketAddr, Held)>,
    ) {
        let mut table = self
            .recorder
            .loads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for addr in gone {
            table.remove(&addr);
        }
        table.extend(added);
    }

    /// Marks a request to `load` as started; the guard ends it.
    pub fn start(&self, load: &Arc<EndpointLoad>) -> InFlight {
        InFlight::new(load)
    }

    /// Records an observed latency (e.g. time to response headers).
    pub fn record(&self, load: &EndpointLoad, latency: Duration) {
        let r = &self.recorder;
        r.record_nanos(load, latency.as_nanos() as u64, r.since_origin(r.raw_now()));
    }

    /// [`record`](Self::record) at an explicit time since the table's creation, for
    /// simulations and tests.
    pub fn record_at(&self, load: &EndpointLoad, latency: Duration, now: Duration) {
        self.recorder
            .record_nanos(load, latency.as_nanos() as u64, now.as_nanos() as u64);
    }

    /// The table clock's raw reading now.
    #[cfg(test)]
    pub(crate) fn raw_now(&self) -> u64 {
        self.recorder.raw_now()
    }

    /// Nanoseconds between two raw readings (0 when `end` is not after `start`).
    #[cfg(test)]
    pub(crate) fn elapsed_nanos(&self, start: u64, end: u64) -> u64 {
        self.recorder.elapsed_nanos(start, end)
    }

    /// The number of addresses the table holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.recorder.loads.lock().unwrap().len()
    }
}

impl Recorder {
    /// The clock's raw reading now (see [`elapsed_nanos`](Self::elapsed_nanos)).
    #[inline]
    fn raw_now(&self) -> u64 {
        self.clock.raw()
    }

    /// Nanoseconds between two raw readings (0 when `end` is not after `start`).
    #[inline]
    fn elapsed_nanos(&self, start: u64, end: u64) -> u64 {
        self.clock.delta_as_nanos(start, end)
    }

    /// Nanoseconds from the table's creation to the raw reading `raw`.
    #[inline]
    fn since_origin(&self, raw: u64) -> u64 {
        self.clock.delta_as_nanos(self.origin, raw)
    }

    /// The update itself: `latency` and `now` (since the table's creation) in nanoseconds.
    #[inline]
    fn record_nanos(&self, load: &EndpointLoad, latency: u64, now: u64) {
        // Plain loads and stores, not read-modify-writes: two samples of one endpoint
        // landing at once may lose one of them, which an average forgives, and the
        // request path saves a locked instruction.
        let last = load.stamp.load(Ordering::Relaxed);
        load.stamp.store(now, Ordering::Relaxed);
        let elapsed = now.saturating_sub(last) as f64;
        let sample = latency as f64;
        let ewma = ewma_nanos(load.ewma_nanos(), sample, elapsed * self.per_decay_nanos);
        load.ewma.store(ewma.to_bits(), Ordering::Relaxed);
        // A peak at or under the EWMA says nothing more: keep 0 then, so the balancers'
        // usual case reads one number.
        let peak = held_peak(load.peak_nanos(), sample, elapsed);
        let peak = if peak > ewma { peak } else { 0.0 };
        load.peak.store(peak.to_bits(), Ordering::Relaxed);
    }

    fn record_failure(&self, load: &EndpointLoad, addr: SocketAddr) -> bool {
        let e = &self.ejection;
        if e.consecutive_failures == 0 {
            return false;
        }
        let streak = load
            .consecutive_failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            })
            .map_or(u16::MAX, |n| n.saturating_add(1));
        if u32::from(streak) < e.consecutive_failures || load.is_ejected() {
            return false;
        }
        {
            // Ejections are rare: counting the ejected under the table lock is fine here.
            let loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
            let ejected = loads.values().filter(|l| l.load().is_ejected()).count();
            if (ejected + 1) * 100 > loads.len().max(1) * usize::from(e.max_ejected_percent) {
                return false;
            }
            let times = u32::from(
                load.ejections
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_add(1))
                    })
                    .map_or(u16::MAX, |n| n.saturating_add(1)),
            );
            let length = e.base_time.saturating_mul(times).min(e.max_time);
            let until = (epoch().elapsed() + length).as_nanos() as u64;
            load.ejected_until.store(until, Ordering::Relaxed);
            load.consecutive_failures.store(0, Ordering::Relaxed);
        }
        self.ejections.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &self.hook {
            hook(addr);
        }
        true
    }
}

/// One request's outcome, recorded through its load: started when made, in flight until
/// dropped.
#[derive(Debug)]
pub(crate) struct Outcome<L: HoldsLoad> {
    in_flight: InFlight<L>,
    /// The clock's raw reading when the request started.
    started: u64,
}

impl<L: HoldsLoad + Clone> Outcome<L> {
    pub(crate) fn start(holder: &L) -> Self {
        Self {
            in_flight: InFlight::new(holder),
            started: holder.load().recorder.raw_now(),
        }
    }
}

impl<L: HoldsLoad> Outcome<L> {
    /// What holds the load.
    pub(crate) fn holder(&self) -> &L {
        self.in_flight.holder()
    }

    pub(crate) fn load(&self) -> &EndpointLoad {
        self.in_flight.load()
    }

    /// Nanoseconds since the start.
    pub(crate) fn elapsed_nanos(&self) -> u64 {
        let r = &self.load().recorder;
        r.elapsed_nanos(self.started, r.raw_now())
    }

    /// Records a latency sample of the time since the start minus `setup` nanoseconds;
    /// returns the sample.
    pub(crate) fn sample(&self, setup: u64) -> u64 {
        let load = self.load();
        let r = &load.recorder;
        let now = r.raw_now();
        let latency = r.elapsed_nanos(self.started, now).saturating_sub(setup);
        r.record_nanos(load, latency, r.since_origin(now));
        latency
    }

    /// Records a failure; returns whether it ejected the endpoint (at `addr`).
    pub(crate) fn failure(&self, addr: SocketAddr) -> bool {
        let load = self.load();
        load.recorder.record_failure(load, addr)
    }

    /// Records a success: the failure streak ends.
    pub(crate) fn success(&self) {
        self.load().end_streak();
    }
}
