//! A routing pool: everything one Service port needs to route a request, rebuilt when
//! discovery publishes and swapped in atomically, so a request never builds routing state.
//!
//! linkerd2-proxy feeds its balancer from a worker task that reads the resolution stream;
//! requests only ever see a ready pool. [`Pool`] is that shape without the task (the
//! caller owns it, see `rudder`'s per-Service updater): [`Pool::update`] indexes a new
//! [`EndpointSet`] (configured subsets, zone members, slow-start weights, Maglev tables,
//! per-endpoint load, and a caller payload per endpoint such as a ready-made URI
//! authority) and publishes it as one immutable [`Snapshot`]. The request path is:
//!
//! 1. [`Pool::load`]: one atomic load (`arc-swap`), no lock and no reference count;
//! 2. [`Snapshot::subset`]: a hash lookup for configured selectors;
//! 3. [`Pool::pick`]: the balancer's O(1) draw;
//! 4. [`Pool::start`]: an [`Attempt`] guard that counts the request in flight and is the
//!    one place its outcome is recorded: latency, success, failure and the ejection a
//!    failure may cause, logged through the pool's ejection hook and counted.
//!
//! The [`Attempt`] holds its endpoint's entry and nothing of the snapshot, so a request in
//! flight pins no snapshot. A caller that picks again later (the Mesh, for a retry) loads
//! the newest snapshot then and avoids the addresses it tried
//! ([`EndpointSet::position`] finds them), rather than keep the old one with
//! [`Pool::snapshot`] and the subset with [`Picked::into_owned`]: a reference count each,
//! on counters every thread shares, and a retry that may go to an endpoint gone since.
//!
//! A snapshot someone does keep (or a [`Pool::load`] borrow that an update turned into a
//! reference) may outlive its replacement; the updater keeps replaced snapshots in a
//! [`Retired`] so that their teardown, O(endpoints), happens on its task and never in a
//! request.
//!
//! Each endpoint's load state (in flight, peak EWMA, failure streaks, ejections) and
//! payload live together in one [`PoolEntry`], which every snapshot that lists the
//! endpoint unchanged shares, so a Pod keeps its history across updates and an update
//! carries one reference count per endpoint. A new Pod at an old Pod's address is a new
//! endpoint: it gets an entry (and a history) of its own.

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::balancer::{Algorithm, Balancer};
use crate::endpoint::{Endpoint, EndpointSet, Pairing};
use crate::load::{Ejection, EjectionHook, EndpointLoad, Held, HoldsLoad, LoadTable, Outcome};
use crate::selector::Selector;
use crate::slow_start::SlowStart;
use crate::subset::{Fallback, IndexOptions, Matches, Picked, SubsetError, SubsetIndex};

/// What a [`Pool`] is configured with; everything here is known before the first request.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// The balancing algorithm.
    pub algorithm: Algorithm,
    /// Selectors indexed with every snapshot (static subset, split legs, route targets,
    /// fallback): requests for them never index anything.
    pub selectors: Vec<Selector>,
    /// The caller's zone: picks prefer endpoints there (see
    /// [`Balancer::pick_local_first`]).
    pub zone: Option<String>,
    /// A remote endpoint must be this many times cheaper than the local choice to win.
    pub spill_factor: f64,
    /// Ramps new endpoints' weights.
    pub slow_start: Option<SlowStart>,
    /// Outlier ejection.
    pub ejection: Ejection,
    /// Peak-EWMA time constant.
    pub decay: Duration,
    /// The latency estimate of an endpoint not measured yet.
    pub initial_latency: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            selectors: Vec::new(),
            zone: None,
            spill_factor: 2.0,
            slow_start: None,
            ejection: Ejection::default(),
            decay: Duration::from_secs(10),
            // An endpoint not measured yet looks almost free, so every new Pod gets tried
            // (and measured) instead of losing every comparison to measured ones; its cost
            // still grows with requests in flight, so a burst does not all land on it.
            initial_latency: Duration::from_micros(1),
        }
    }
}

/// One endpoint's state in a pool: its load and the caller's payload, in one allocation
/// shared by every snapshot that lists the endpoint unchanged and by its requests in flight.
#[derive(Debug)]
pub struct PoolEntry<T> {
    load: EndpointLoad,
    /// The endpoint's address, beside its load: starting a request reads both from the
    /// one entry, not the snapshot's endpoint list too (a second cache miss per request
    /// in a large Service).
    addr: SocketAddr,
    extra: T,
}

impl<T> PoolEntry<T> {
    /// The endpoint's load.
    pub fn load(&self) -> &EndpointLoad {
        &self.load
    }

    /// The caller's payload.
    pub fn extra(&self) -> &T {
        &self.extra
    }
}

impl<T> HoldsLoad for PoolEntry<T> {
    fn load(&self) -> &EndpointLoad {
        &self.load
    }
}

/// One snapshot, indexed, with a caller payload `T` per endpoint.
#[derive(Debug)]
pub struct Snapshot<T> {
    index: SubsetIndex,
    /// One entry per endpoint, aligned with the set's endpoints. A `Vec`, so that a later
    /// update can patch the list of a snapshot gone out of use into its own (see
    /// [`Retired`]).
    entries: Arc<Vec<Arc<PoolEntry<T>>>>,
    /// The configured selectors' label matches, for the next update to reuse.
    matches: Matches,
}

impl<T> Snapshot<T> {
    /// The endpoint set.
    pub fn set(&self) -> &Arc<EndpointSet> {
        self.index.set()
    }

    /// The subset index.
    pub fn index(&self) -> &SubsetIndex {
        &self.index
    }

    /// The routable endpoints matching `selector`, or the fallback's.
    pub fn subset(
        &self,
        selector: &Selector,
        fallback: &Fallback,
    ) -> Result<Picked<'_>, SubsetError> {
        self.index.subset(selector, fallback)
    }

    /// The endpoint at `pos` with its load and payload.
    pub fn get(&self, pos: usize) -> Option<(&Endpoint, &EndpointLoad, &T)> {
        let entry = self.entries.get(pos)?;
        Some((self.set().endpoints().get(pos)?, &entry.load, &entry.extra))
    }

    /// The payload of the endpoint at `pos`.
    ///
    /// # Panics
    /// When `pos` is not a position of this snapshot.
    pub fn extra(&self, pos: usize) -> &T {
        &self.entries[pos].extra
    }

    /// Every endpoint's entry (load and payload), aligned with [`EndpointSet::endpoints`].
    pub fn entries(&self) -> &[Arc<PoolEntry<T>>] {
        &self.entries
    }
}

/// A borrow of a pool's current snapshot; see [`Pool::load`].
pub struct SnapshotGuard<T>(arc_swap::Guard<Arc<Snapshot<T>>>);

impl<T> std::ops::Deref for SnapshotGuard<T> {
    type Target = Snapshot<T>;

    fn deref(&self) -> &Snapshot<T> {
        &self.0
    }
}

impl<T> SnapshotGuard<T> {
    /// The snapshot, kept.
    pub fn into_arc(self) -> Arc<Snapshot<T>> {
        arc_swap::Guard::into_inner(self.0)
    }
}

impl<T: fmt::Debug> fmt::Debug for SnapshotGuard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// The routing state of one Service port; see the [module docs](self).
pub struct Pool<T> {
    config: PoolConfig,
    balancer: Balancer,
    table: LoadTable,
    current: ArcSwap<Snapshot<T>>,
    /// Serialises updates (normally one updater task; tests may call from anywhere).
    updating: Mutex<()>,
}

impl<T> fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.config)
            .field("endpoints", &self.current.load().set().len())
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Pool<T> {
    /// A pool routing over `set`, with `extra` computing each endpoint's payload.
    pub fn new(
        config: PoolConfig,
        set: Arc<EndpointSet>,
        extra: impl FnMut(&Endpoint) -> T,
    ) -> Self {
        Self::with_ejection_hook(config, set, extra, None)
    }

    /// [`new`](Self::new) with a hook called whenever a failure ejects an endpoint (to log
    /// and count it).
    pub fn with_ejection_hook(
        config: PoolConfig,
        set: Arc<EndpointSet>,
        mut extra: impl FnMut(&Endpoint) -> T,
        hook: Option<EjectionHook>,
    ) -> Self {
        let table = LoadTable::new(config.decay, config.initial_latency)
            .with_ejection(config.ejection.clone(), hook);
        let mut tracked = Vec::with_capacity(set.len());
        let entries = Arc::new(
            set.endpoints()
                .iter()
                .map(|e| Self::entry(&table, e, &mut extra, &mut tracked))
                .collect(),
        );
        table.track([], tracked);
        let selectors: Vec<&Selector> = config.selectors.iter().collect();
        let matches = Matches::new(&set, &selectors);
        let first = Self::index(
            &config,
            set,
            entries,
            matches,
            SystemTime::now(),
            None,
            None,
        );
        Self {
            balancer: Balancer::new(config.algorithm).with_decay(config.decay),
            config,
            table,
            current: ArcSwap::from_pointee(first),
            updating: Mutex::new(()),
        }
    }

    /// A new entry for `e`, noted in `tracked` for the load table.
    fn entry(
        table: &LoadTable,
        e: &Endpoint,
        extra: &mut impl FnMut(&Endpoint) -> T,
        tracked: &mut Vec<(SocketAddr, Held)>,
    ) -> Arc<PoolEntry<T>> {
        let entry = Arc::new(PoolEntry {
            load: table.new_load(),
            addr: e.addr(),
            extra: extra(e),
        });
        tracked.push((e.addr(), Held::Pool(entry.clone())));
        entry
    }

    fn index(
        config: &PoolConfig,
        set: Arc<EndpointSet>,
        entries: Arc<Vec<Arc<PoolEntry<T>>>>,
        matches: Matches,
        now: SystemTime,
        previous: Option<(&SubsetIndex, Option<&Pairing>)>,
        spare_positions: Option<Vec<u32>>,
    ) -> Snapshot<T> {
        let options = IndexOptions {
            zone: config.zone.clone(),
            slow_start: config.slow_start,
            maglev: config.algorithm == Algorithm::Maglev,
            now,
        };
        let selectors: Vec<&Selector> = config.selectors.iter().collect();
        Snapshot {
            index: SubsetIndex::with_previous_reusing(
                set,
                &selectors,
                &matches,
                options,
                previous.map(|(index, _)| index),
                previous.and_then(|(_, pairing)| pairing),
                spare_positions,
            ),
            entries,
            matches,
        }
    }

    /// Indexes `set` and publishes it; requests that already hold the previous snapshot
    /// finish with it. Called when discovery publishes, never on the request path.
    ///
    /// An endpoint whose address the previous snapshot had, naming the same Pod (or no
    /// Pod, both times), keeps its entry: its load and payload. Any other endpoint gets a
    /// new entry, with `extra` making its payload. When `set` has exactly the previous
    /// endpoints in that sense (a weight or label change), the entries are carried over
    /// whole; otherwise those before the first change and after the last one are copied
    /// without being compared (see [`Pairing::same_head`]), one reference count each.
    ///
    /// Returns the snapshot it replaced. Requests may still hold it; whoever drops the
    /// last reference releases its per-endpoint state, O(endpoints), after the swap and
    /// not before it. An updater keeps it in a [`Retired`], so that is the updater and
    /// not a request.
    pub fn update(
        &self,
        set: Arc<EndpointSet>,
        extra: impl FnMut(&Endpoint) -> T,
    ) -> Arc<Snapshot<T>> {
        self.update_reusing(set, extra, None)
    }

    /// [`update`](Self::update), patching `spare` (the lists of a snapshot gone out of
    /// use, from [`Retired::take_spare`]) into the new snapshot's in place rather than
    /// making new ones: only the entries between the first change and the last are
    /// replaced, so a large Service's update allocates no entry list and clones, writes
    /// and drops a few entries, not one per endpoint; the label matches and the list of
    /// routable positions are written into the spare's lists, which spares their
    /// allocation and the fresh memory's page faults. A spare list with room for more
    /// than twice what is needed is dropped instead (a Service scaled down does not keep
    /// its largest size's room).
    pub fn update_reusing(
        &self,
        set: Arc<EndpointSet>,
        mut extra: impl FnMut(&Endpoint) -> T,
        spare: Option<SpareEntries<T>>,
    ) -> Arc<Snapshot<T>> {
        let _one = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.current.load_full();
        let old = previous.set().endpoints();
        let (spare_entries, spare_matches, spare_positions) = match spare {
            Some(s) => (s.entries, Some(s.matches), s.positions),
            None => (None, None, None),
        };
        // One merge walk pairs the two address-sorted lists; entries and label matches are
        // carried through it.
        let pairing = Pairing::new(previous.set(), &set);
        let same = |a: &Endpoint, b: &Endpoint| a.shares_meta(b) || a.meta().pod == b.meta().pod;
        // Only the endpoints between the first change and the last one are compared or
        // made again one by one; those before and after are the same as they were.
        let (n, m) = (set.len(), old.len());
        let (head, tail) = (pairing.same_head(), pairing.same_tail());
        let same_pods = pairing.same_addresses()
            && old[head..m - tail]
                .iter()
                .zip(&set.endpoints()[head..n - tail])
                .all(|(a, b)| same(a, b));
        let entries = if same_pods {
            previous.entries.clone()
        } else {
            let mut tracked = Vec::new();
            let make = |i: usize, before: Option<usize>| {
                let e = &set.endpoints()[i];
                match before {
                    Some(j) if same(&old[j], e) => previous.entries[j].clone(),
                    _ => Self::entry(&self.table, e, &mut extra, &mut tracked),
                }
            };
            let spare = spare_entries.filter(|s| s.capacity() <= 2 * n);
            let entries = match spare {
                Some(mut list) => {
                    pairing.carry_into(&previous.entries, &mut list, Arc::ptr_eq, make);
                    Arc::new(list)
                }
                None => Arc::new(pairing.carry(&previous.entries, make)),
            };
            self.table
                .track(pairing.gone().map(|j| old[j].addr()), tracked);
            entries
        };
        // Label matches are made again only for endpoints whose metadata changed.
        let selectors: Vec<&Selector> = self.config.selectors.iter().collect();
        let matches = Matches::carry_into(
            &set,
            &selectors,
            previous.set(),
            &previous.matches,
            &pairing,
            spare_matches,
        );
        let next = Self::index(
            &self.config,
            set,
            entries,
            matches,
            SystemTime::now(),
            Some((&previous.index, Some(&pairing))),
            spare_positions,
        );
        self.current.store(Arc::new(next));
        previous
    }

    /// Re-indexes the current set at the current time, so slow-start weights follow their
    /// ramps; returns the snapshot it replaced, or `None` when no endpoint was ramping
    /// (then nothing changed). Call it again after [`refresh_interval`](Self::refresh_interval)
    /// while [`ramping`](Self::ramping).
    pub fn refresh(&self) -> Option<Arc<Snapshot<T>>> {
        let _one = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        if !current.index.ramping() {
            return None;
        }
        let next = Self::index(
            &self.config,
            current.set().clone(),
            current.entries.clone(),
            current.matches.clone(),
            SystemTime::now(),
            Some((&current.index, None)),
            None,
        );
        self.current.store(Arc::new(next));
        Some(current)
    }

    /// How often ramping weights are re-indexed: 1/20 of the window (so the effective
    /// weight lags its ramp by at most 5 % of the window), and not more than 10 times a
    /// second.
    pub fn refresh_interval(&self) -> Duration {
        self.config.slow_start.map_or(Duration::MAX, |s| {
            (s.window / 20).max(Duration::from_millis(100))
        })
    }

    /// Whether some endpoint is ramping up in the current snapshot.
    pub fn ramping(&self) -> bool {
        self.current.load().index.ramping()
    }

    /// The current snapshot, to keep (across an `.await`, in a response future).
    pub fn snapshot(&self) -> Arc<Snapshot<T>> {
        self.current.load_full()
    }

    /// The current snapshot for one synchronous step, such as a pick and the start of its
    /// attempt: no reference count is taken, which saves two contended atomic operations
    /// per request over [`snapshot`](Self::snapshot). Drop it before awaiting anything:
    /// each thread has a few such borrows cheap, and more fall back to a reference count.
    pub fn load(&self) -> SnapshotGuard<T> {
        SnapshotGuard(self.current.load())
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// How many ejections failures have caused so far.
    pub fn ejections(&self) -> u64 {
        self.table.ejections()
    }

    /// Picks an endpoint of `picked` (from `snapshot`); `key` is the request's affinity
    /// key hash (see [`hash_key`](crate::maglev::hash_key)), used by
    /// [`Algorithm::Maglev`]. With a zone configured, the local members are preferred.
    /// `None` when every member has weight 0.
    pub fn pick(
        &self,
        snapshot: &Snapshot<T>,
        picked: &Picked<'_>,
        key: Option<u64>,
    ) -> Option<usize> {
        let loads = &snapshot.entries[..];
        if let Some(h) = key.filter(|_| self.config.algorithm == Algorithm::Maglev) {
            return self.balancer.pick_keyed(picked, loads, Some(h));
        }
        match picked.local() {
            Some(local) => self.balancer.pick_local_first(
                Some(&local),
                picked,
                loads,
                self.config.spill_factor,
            ),
            None => self.balancer.pick(picked, loads),
        }
    }

    /// [`pick`](Self::pick), avoiding the positions in `avoid` (endpoints this request
    /// already failed on): the balancer's choice when it is not one of them (a few draws),
    /// else the least loaded of the others, else the balancer's choice.
    pub fn pick_avoiding(
        &self,
        snapshot: &Snapshot<T>,
        picked: &Picked<'_>,
        key: Option<u64>,
        avoid: &[usize],
    ) -> Option<usize> {
        let first = self.pick(snapshot, picked, key)?;
        if !avoid.contains(&first) {
            return Some(first);
        }
        let loads = &snapshot.entries[..];
        for _ in 0..3 {
            let pos = self.balancer.pick(picked, loads)?;
            if !avoid.contains(&pos) {
                return Some(pos);
            }
        }
        let others = picked
            .positions()
            .iter()
            .enumerate()
            .filter(|(m, p)| picked.weights().weight(*m) > 0 && !avoid.contains(&(**p as usize)))
            .map(|(_, p)| *p as usize);
        others
            .min_by_key(|p| (loads[*p].load.is_ejected(), loads[*p].load.in_flight()))
            .or(Some(first))
    }

    /// Starts a request to the endpoint at `pos` of `snapshot`: it counts in flight until
    /// the returned [`Attempt`] is dropped, which records nothing else on its own.
    ///
    /// # Panics
    /// When `pos` is not a position of `snapshot` (positions come from [`pick`](Self::pick)).
    pub fn start(&self, snapshot: &Snapshot<T>, pos: usize) -> Attempt<T> {
        Attempt {
            outcome: Outcome::start(&snapshot.entries[pos]),
            succeeded: false,
        }
    }
}

/// Snapshots a pool replaced, kept until no request holds them any more, so that the last
/// reference, and with it the O(endpoints) teardown of a snapshot, is dropped by the
/// updater that keeps them rather than by whichever request happened to finish last.
///
/// An updater [`keep`](Self::keep)s what [`Pool::update`] and [`Pool::refresh`] return and
/// calls [`release`](Self::release) after each update and, while some are still held, on
/// a timer. It holds nothing a request does not hold too: a snapshot goes at the first
/// release after its last request ended. Of the last snapshot to go it keeps the lists
/// alone (the entry list when no other snapshot shares it, the label matches, and the
/// list of routable positions when no request holds it), for the next update to patch or
/// fill in place ([`take_spare`](Self::take_spare), [`Pool::update_reusing`]); the rest
/// of it, the endpoint set included, is dropped then. That list still holds the entries of
/// endpoints gone since (their payloads may hold connections), so a spare no update took
/// is dropped at the second release after it was kept: an updater that releases on a
/// timer while [`is_empty`](Self::is_empty) is false lets them go within two ticks.
#[derive(Debug)]
pub struct Retired<T> {
    held: Vec<Arc<Snapshot<T>>>,
    spare: Option<SpareEntries<T>>,
    /// A release has seen the spare: the next one drops it.
    spare_seen: bool,
}

/// The lists of a snapshot gone out of use (entries, label matches, routable positions),
/// for [`Pool::update_reusing`] to patch or fill in place; see [`Retired::take_spare`].
pub struct SpareEntries<T> {
    entries: Option<Vec<Arc<PoolEntry<T>>>>,
    /// The snapshot's label matches and routable positions, filled by the next update
    /// instead of new lists.
    matches: Matches,
    positions: Option<Vec<u32>>,
}

impl<T> fmt::Debug for SpareEntries<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpareEntries")
            .field("len", &self.entries.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl<T> Default for Retired<T> {
    fn default() -> Self {
        Self {
            held: Vec::new(),
            spare: None,
            spare_seen: false,
        }
    }
}

impl<T> Retired<T> {
    /// None kept.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `replaced` while requests hold it; lets it go here when none does.
    pub fn keep(&mut self, replaced: Arc<Snapshot<T>>) {
        if Arc::strong_count(&replaced) > 1 {
            self.held.push(replaced);
        } else {
            self.spend(replaced);
        }
    }

    /// Lets go of the snapshots no request holds any more, and of a spare that a release
    /// before this one saw; returns how many snapshots are still held.
    ///
    /// A replaced snapshot cannot be referenced again (the pool no longer hands it out,
    /// and its borrows were turned into references when it was replaced), so a count of
    /// one is final.
    pub fn release(&mut self) -> usize {
        if std::mem::replace(&mut self.spare_seen, self.spare.is_some()) {
            self.spare = None;
            self.spare_seen = false;
        }
        let mut i = 0;
        while i < self.held.len() {
            if Arc::strong_count(&self.held[i]) > 1 {
                i += 1;
            } else {
                let free = self.held.swap_remove(i);
                self.spend(free);
            }
        }
        self.held.len()
    }

    /// The lists of the last snapshot let go, if they are not taken (or dropped) yet.
    pub fn take_spare(&mut self) -> Option<SpareEntries<T>> {
        self.spare_seen = false;
        self.spare.take()
    }

    /// Drops `free` (held here alone) but for its lists, kept as the spare: the entry
    /// list when no other snapshot shares it, the routable positions when no request
    /// holds them.
    fn spend(&mut self, free: Arc<Snapshot<T>>) {
        if let Some(s) = Arc::into_inner(free) {
            self.spare = Some(SpareEntries {
                entries: Arc::into_inner(s.entries),
                matches: s.matches,
                positions: s.index.into_spare(),
            });
            self.spare_seen = false;
        }
    }

    /// How many snapshots are kept (held by requests; the spare is not counted).
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is kept: no snapshot, and no spare.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.spare.is_none()
    }
}

/// One request on one endpoint, in flight until dropped; the one place its outcome is
/// recorded. It holds the endpoint's entry (load and payload) and nothing of the pool or
/// its snapshot, so a long stream pins neither.
pub struct Attempt<T> {
    outcome: Outcome<Arc<PoolEntry<T>>>,
    /// Response headers arrived and were not a counted failure: a success once the body
    /// ends (or is dropped) without an error.
    succeeded: bool,
}

impl<T> fmt::Debug for Attempt<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attempt")
            .field("addr", &self.addr())
            .finish_non_exhaustive()
    }
}

impl<T> Attempt<T> {
    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.outcome.holder().addr
    }

    /// The endpoint's payload.
    pub fn extra(&self) -> &T {
        &self.outcome.holder().extra
    }

    /// The endpoint's entry (load and payload), which the attempt holds until it ends.
    pub fn entry(&self) -> &Arc<PoolEntry<T>> {
        self.outcome.holder()
    }

    /// Response headers arrived: records the latency into peak EWMA, and a counted 5xx
    /// (`failure`) as a failure, which may eject the endpoint. Otherwise the attempt is a
    /// success when it ends, unless its body fails first ([`failed`](Self::failed)): a
    /// stream cut mid-body must not reset the endpoint's failure streak. Returns the
    /// latency. The attempt stays in flight until dropped (at the response body's end).
    pub fn responded(&mut self, failure: bool) -> Duration {
        self.responded_excluding(failure, Duration::ZERO)
    }

    /// Like [`responded`](Self::responded), with `setup` (time spent opening a new
    /// connection, TLS handshake included) left out of the latency sample: a Pod is not
    /// slow because the client had to connect to it first, and peak EWMA would otherwise
    /// remember that first request for seconds.
    pub fn responded_excluding(&mut self, failure: bool, setup: Duration) -> Duration {
        let latency = self.outcome.sample(setup.as_nanos() as u64);
        if failure {
            self.outcome.failure(self.addr());
        } else {
            self.succeeded = true;
        }
        Duration::from_nanos(latency)
    }

    /// No response (connection refused or reset, an inner error), or the response body
    /// failed: records a failure, which may eject the endpoint, and ends the attempt.
    /// Returns the time since the attempt started.
    pub fn failed(mut self) -> Duration {
        self.succeeded = false;
        self.outcome.failure(self.addr());
        Duration::from_nanos(self.outcome.elapsed_nanos())
    }
}

impl<T> Drop for Attempt<T> {
    fn drop(&mut self) {
        if self.succeeded {
            self.outcome.success();
        }
    }
}
