//! Label subsets of a Service's endpoints, computed once per snapshot.
//!
//! Blue/green and canary releases the Kubernetes way edit a Service's selector (from
//! `app=biz1,zone=prod` to `app=biz1,zone=prod,version=4.2`). A [`SubsetIndex`] does the same
//! per client and per request without touching the Service: for each [`Selector`] it holds
//! the positions of the matching routable endpoints of one [`EndpointSet`] snapshot. The
//! configured selectors (and, with a zone, their members in that zone) are indexed when the
//! snapshot arrives, off the request path, and never change afterwards. Selectors first
//! seen on a request (a header, say) are indexed on demand and cached with the snapshot,
//! but only the first [`EXTRA_SUBSETS`] of them: past that bound each is evaluated per
//! request without being kept, so a caller inventing selectors cannot grow memory.
//!
//! Weights are the endpoints' own, scaled by the [`SlowStart`] ramp of endpoints that
//! became Ready recently. When every routable endpoint of a subset is terminating (the
//! serving fallback), those that will be killed last are preferred.
//!
//! When a subset is empty, a [`Fallback`] says what happens: an error, any endpoint, or
//! another selector.

mod error;
#[cfg(test)]
mod tests;

pub use self::error::SubsetError;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::endpoint::{Endpoint, EndpointSet, Pairing, Readiness};
use crate::maglev::Maglev;
use crate::selector::Selector;
use crate::slow_start::{SlowStart, effective_weight};
use crate::weighted::{Splice, WeightedIndex};

/// How many selectors that were not configured one snapshot caches (each holds a position
/// list and weights: at most a few bytes per endpoint). Beyond this, such selectors are
/// evaluated on every request and forgotten.
pub const EXTRA_SUBSETS: usize = 64;

/// What to do when a subset has no routable endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// Fail with [`SubsetError::Empty`].
    #[default]
    NoFallback,
    /// Use every routable endpoint of the Service.
    AnyEndpoint,
    /// Use this subset instead (which must not be empty itself).
    Default(Selector),
}

/// How a snapshot is indexed: what the pool knows from configuration.
#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// The caller's zone: every subset also indexes its members in this zone (or hinted
    /// for it), for [`Picked::local`].
    pub zone: Option<String>,
    /// Ramps the weights of endpoints that became Ready recently.
    pub slow_start: Option<SlowStart>,
    /// Builds the consistent-hashing tables of configured subsets up front (for
    /// [`Algorithm::Maglev`](crate::Algorithm::Maglev)) instead of on first use.
    pub maglev: bool,
    /// The time slow-start ramps are computed for.
    pub now: SystemTime,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            zone: None,
            slow_start: None,
            maglev: false,
            now: SystemTime::now(),
        }
    }
}

/// One subset of one snapshot: positions of its endpoints and their weights.
#[derive(Debug)]
struct Members {
    set: Arc<EndpointSet>,
    positions: Vec<u32>,
    /// Effective weights (slow start applied), in member order.
    weights: WeightedIndex,
    /// A step coprime with the total weight, for weighted round robin.
    stride: u64,
    /// Weighted round robin's position, per subset: a counter shared between subsets
    /// would let interleaved requests for two subsets each see only every other turn.
    turn: AtomicU64,
    /// The consistent-hashing table over the endpoints' own weights.
    maglev: OnceLock<Option<Arc<Maglev>>>,
    /// The members in the caller's zone, when a zone is configured and some are there.
    local: Option<Arc<Members>>,
}

impl Members {
    /// `previous` is the same subset in the snapshot before: its weight tables are shared
    /// when the weights did not change (those of the members `splice` says the update
    /// kept, when it is known), its Maglev table when the addresses did not either.
    /// `uniform`: the weight every member has, when the caller knows it.
    fn new(
        set: &Arc<EndpointSet>,
        (positions, uniform, splice): Carried,
        options: &IndexOptions,
        previous: Option<&Members>,
    ) -> Self {
        let local = options.zone.as_deref().and_then(|zone| {
            let here: Vec<u32> = positions
                .iter()
                .copied()
                .filter(|p| {
                    let meta = set.endpoints()[*p as usize].meta();
                    meta.zone.as_deref() == Some(zone)
                        || meta.zone_hints.iter().any(|h| **h == *zone)
                })
                .collect();
            let before = previous.and_then(|p| p.local.as_deref());
            (!here.is_empty())
                .then(|| Arc::new(Self::flat(set, (here, None, None), options, before)))
        });
        Self {
            local,
            ..Self::flat(set, (positions, uniform, splice), options, previous)
        }
    }

    fn flat(
        set: &Arc<EndpointSet>,
        (positions, uniform, splice): Carried,
        options: &IndexOptions,
        previous: Option<&Members>,
    ) -> Self {
        let weight = |p: &u32| {
            let e = &set.endpoints()[*p as usize];
            match &options.slow_start {
                None => e.weight(),
                Some(s) => {
                    effective_weight(e.weight(), s.factor(e.meta().ready_since, options.now))
                }
            }
        };
        // The tables depend on the weights in order and nothing else: when an update left
        // them as they were (most subsets, most updates), they are shared, not rebuilt.
        // Equal weights (most Services) need no table and are not even collected.
        // Otherwise the chunks of members the update kept are shared (see
        // `WeightedIndex::spliced`); with a ramp, or with no splice known, their weights
        // are compared first, since they may have changed in place.
        let unit = uniform.unwrap_or_else(|| positions.first().map_or(0, weight));
        let weights = if unit > 0
            && (uniform.is_some() || positions.iter().all(|p| weight(p) == unit))
        {
            WeightedIndex::uniform(positions.len(), unit)
        } else {
            let unmoved =
                || (previous?.positions == positions).then(|| Splice::in_place(positions.len()));
            match previous.zip(splice.or_else(unmoved)) {
                Some((p, s)) => p.weights.spliced(
                    positions.len(),
                    |m| weight(&positions[m]),
                    s,
                    splice.is_none() || options.slow_start.is_some(),
                ),
                None => WeightedIndex::new(positions.iter().map(weight)),
            }
        };
        let stride = crate::weighted::coprime_stride(weights.total());
        // The consistent-hashing table depends on the members' addresses and own weights,
        // in order: when they stayed, the table built for the snapshot before is shared
        // (building one costs about a millisecond).
        let maglev = OnceLock::new();
        if let Some(p) = previous
            && let Some(table) = p.maglev.get()
            && p.positions.len() == positions.len()
            && p.endpoints()
                .zip(positions.iter().map(|i| &set.endpoints()[*i as usize]))
                .all(|(a, b)| a.addr() == b.addr() && a.weight() == b.weight())
        {
            let _ = maglev.set(table.clone());
        }
        Self {
            set: set.clone(),
            positions,
            weights,
            stride,
            turn: AtomicU64::new(0),
            maglev,
            local: None,
        }
    }

    /// The members' endpoints, in member order.
    fn endpoints(&self) -> impl ExactSizeIterator<Item = &Endpoint> + '_ {
        self.positions
            .iter()
            .map(|p| &self.set.endpoints()[*p as usize])
    }

    fn maglev(&self) -> Option<&Maglev> {
        self.maglev
            .get_or_init(|| {
                let ids: Vec<String> = self.endpoints().map(|e| e.addr().to_string()).collect();
                let weights: Vec<u32> = self.endpoints().map(Endpoint::weight).collect();
                Maglev::new(&ids, &weights).map(Arc::new)
            })
            .as_deref()
    }
}

/// The endpoints a request may go to: positions into a snapshot's endpoints.
///
/// A subset the index holds for the whole snapshot (every endpoint, or a configured
/// selector) is borrowed from it, so looking one up on the request path touches no
/// reference count; [`into_owned`](Self::into_owned) makes a `Picked<'static>` to keep
/// beyond the index's borrow (one reference count).
#[derive(Clone, Debug)]
pub struct Picked<'a> {
    members: Held<'a>,
    fell_back: bool,
}

/// A subset's members, borrowed from the index or shared with it.
#[derive(Clone, Debug)]
enum Held<'a> {
    Borrowed(&'a Arc<Members>),
    Shared(Arc<Members>),
}

impl std::ops::Deref for Held<'_> {
    type Target = Members;

    fn deref(&self) -> &Members {
        match self {
            Held::Borrowed(m) => m,
            Held::Shared(m) => m,
        }
    }
}

impl Picked<'_> {
    /// This subset, no longer borrowing from its index.
    pub fn into_owned(self) -> Picked<'static> {
        Picked {
            members: Held::Shared(match self.members {
                Held::Borrowed(m) => m.clone(),
                Held::Shared(m) => m,
            }),
            fell_back: self.fell_back,
        }
    }

    /// The endpoints, in address order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Endpoint> + '_ {
        self.members.endpoints()
    }

    /// The `n`th member.
    pub fn get(&self, n: usize) -> Option<&Endpoint> {
        self.members
            .positions
            .get(n)
            .map(|i| &self.members.set.endpoints()[*i as usize])
    }

    /// How many endpoints.
    pub fn len(&self) -> usize {
        self.members.positions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.positions.is_empty()
    }

    /// Whether the fallback was used because the requested subset was empty.
    pub fn fell_back(&self) -> bool {
        self.fell_back
    }

    /// Positions into [`EndpointSet::endpoints`], in member order.
    pub fn positions(&self) -> &[u32] {
        &self.members.positions
    }

    /// The members' effective weights (slow start applied), in member order.
    pub fn weights(&self) -> &WeightedIndex {
        &self.members.weights
    }

    pub(crate) fn stride(&self) -> u64 {
        self.members.stride
    }

    /// The next weighted-round-robin turn of this subset.
    pub(crate) fn next_turn(&self) -> u64 {
        self.members.turn.fetch_add(1, Ordering::Relaxed)
    }

    /// The Maglev table of this subset over the endpoints' own weights (built when the
    /// snapshot is indexed for Maglev, else on first use; `None` when every member has
    /// weight 0).
    pub fn maglev(&self) -> Option<&Maglev> {
        self.members.maglev()
    }

    /// The members in the zone the index was built for ([`IndexOptions::zone`]), or
    /// `None` when no member is there.
    pub fn local(&self) -> Option<Picked<'_>> {
        self.members.local.as_ref().map(|m| Picked {
            members: Held::Borrowed(m),
            fell_back: self.fell_back,
        })
    }

    /// The snapshot the positions point into.
    pub fn set(&self) -> &Arc<EndpointSet> {
        &self.members.set
    }
}

/// Which of the first 64 configured selectors each endpoint of a set matches, kept with a
/// snapshot so the next one matches only the endpoints whose labels changed: one slice
/// update in a 10,000-endpoint Service then matches the slice, not the Service. Selectors
/// beyond the 64th are matched in full on every index.
#[derive(Clone, Debug, Default)]
pub struct Matches {
    /// A `Vec`, so that an update can fill the list of a snapshot gone out of use rather
    /// than allocate one (see [`carry_into`](Self::carry_into)).
    bits: Vec<u64>,
}

impl Matches {
    /// The matches of `set`'s endpoints against `selectors`.
    pub fn new(set: &EndpointSet, selectors: &[&Selector]) -> Self {
        let count = selectors.len().min(64);
        let mut bits = PerLabelSet::new(|labels| Self::compute(labels, &selectors[..count]));
        Self {
            bits: set.endpoints().iter().map(|e| bits.get(e)).collect(),
        }
    }

    /// The matches of `set`'s endpoints, reusing those of `previous` (an earlier set, its
    /// matches, and how `set` pairs with it) for endpoints that share their metadata with
    /// the endpoint they pair with there: only changed endpoints are matched again. Written
    /// into `spare` (the matches of a snapshot gone out of use) rather than a new list
    /// when it is given and has no more than twice the room needed: no allocation, and so
    /// none of the fresh memory's page faults, which were most of what carrying 10,000
    /// matches cost.
    pub fn carry_into(
        set: &EndpointSet,
        selectors: &[&Selector],
        previous: &EndpointSet,
        matches: &Matches,
        pairing: &Pairing,
        spare: Option<Matches>,
    ) -> Self {
        if matches.bits.len() != previous.len() || !pairing.fits(previous, set) {
            return Self::new(set, selectors);
        }
        let count = selectors.len().min(64);
        let old = previous.endpoints();
        // The endpoints the update left as they were are copied in bulk; only those
        // between are looked at one by one.
        let mut computed = PerLabelSet::new(|labels| Self::compute(labels, &selectors[..count]));
        let make = |i: usize, before: Option<usize>| {
            let e = &set.endpoints()[i];
            match before {
                Some(j) if old[j].shares_meta(e) => matches.bits[j],
                _ => computed.get(e),
            }
        };
        let bits = match spare.filter(|s| s.bits.capacity() <= 2 * set.len()) {
            Some(Matches { mut bits }) => {
                pairing.carry_into(&matches.bits, &mut bits, |a, b| a == b, make);
                bits
            }
            None => pairing.carry(&matches.bits, make),
        };
        Self { bits }
    }

    /// The room of the list (tests tell a filled spare from a new list by it).
    #[cfg(test)]
    pub(crate) fn room(&self) -> usize {
        self.bits.capacity()
    }

    /// The bits of an endpoint with `labels`.
    fn compute(labels: &BTreeMap<String, String>, selectors: &[&Selector]) -> u64 {
        selectors
            .iter()
            .enumerate()
            .filter(|(_, s)| s.matches(labels))
            .fold(0u64, |bits, (i, _)| bits | 1 << i)
    }

    /// The bit of the selector at `index`, if it has one.
    fn bit(index: usize) -> Option<usize> {
        (index < 64).then_some(index)
    }

    fn get(&self, endpoint: usize, bit: usize) -> bool {
        self.bits[endpoint] & (1 << bit) != 0
    }

    fn len(&self) -> usize {
        self.bits.len()
    }
}

/// The subsets of one snapshot.
#[derive(Debug)]
pub struct SubsetIndex {
    set: Arc<EndpointSet>,
    options: IndexOptions,
    all: Arc<Members>,
    /// The configured selectors, indexed up front; never changes.
    known: HashMap<Selector, Arc<Members>>,
    /// Selectors first seen on requests, at most [`EXTRA_SUBSETS`].
    extra: RwLock<HashMap<Selector, Arc<Members>>>,
}

impl SubsetIndex {
    /// Indexes `set` for `selectors` (the ones configured up front).
    pub fn new<'a>(
        set: Arc<EndpointSet>,
        selectors: impl IntoIterator<Item = &'a Selector>,
    ) -> Self {
        Self::with_options(set, selectors, IndexOptions::default())
    }

    /// Indexes `set` for `selectors` with `options`.
    pub fn with_options<'a>(
        set: Arc<EndpointSet>,
        selectors: impl IntoIterator<Item = &'a Selector>,
        options: IndexOptions,
    ) -> Self {
        let selectors: Vec<&Selector> = selectors.into_iter().collect();
        let matches = Matches::new(&set, &selectors);
        Self::with_matches(set, &selectors, &matches, options)
    }

    /// [`with_options`](Self::with_options) with the label matches already made (see
    /// [`Matches`]), so endpoints whose labels did not change are not matched again.
    pub fn with_matches(
        set: Arc<EndpointSet>,
        selectors: &[&Selector],
        matches: &Matches,
        options: IndexOptions,
    ) -> Self {
        Self::with_previous(set, selectors, matches, options, None, None)
    }

    /// [`with_matches`](Self::with_matches), sharing with `previous` (the index this one
    /// replaces) the weight tables of every subset whose weights did not change, and the
    /// Maglev tables of those whose addresses did not either, so an update that leaves a
    /// subset alone does not rebuild its tables. With `pairing` (how `set` pairs with
    /// `previous`'s set), the members the update left as they were are carried over by
    /// position and only the endpoints between are matched.
    pub fn with_previous(
        set: Arc<EndpointSet>,
        selectors: &[&Selector],
        matches: &Matches,
        options: IndexOptions,
        previous: Option<&SubsetIndex>,
        pairing: Option<&Pairing>,
    ) -> Self {
        Self::with_previous_reusing(set, selectors, matches, options, previous, pairing, None)
    }

    /// [`with_previous`](Self::with_previous), filling `spare` (the list of every routable
    /// endpoint's position of an index gone out of use, see [`into_spare`](Self::into_spare))
    /// instead of allocating that list anew.
    pub(crate) fn with_previous_reusing(
        set: Arc<EndpointSet>,
        selectors: &[&Selector],
        matches: &Matches,
        options: IndexOptions,
        previous: Option<&SubsetIndex>,
        pairing: Option<&Pairing>,
        spare: Option<Vec<u32>>,
    ) -> Self {
        let before = |s: &Selector| {
            previous.and_then(|p| {
                if s.is_everything() {
                    Some(&*p.all)
                } else {
                    p.known.get(s).map(|m| &**m)
                }
            })
        };
        let build = |s: &Selector, bit: Option<usize>, spare: Option<Vec<u32>>| {
            let bit = bit.filter(|_| matches.len() == set.len());
            let matching = |i: usize, e: &Endpoint| match bit {
                Some(bit) => matches.get(i, bit),
                None => s.matches(e.labels()),
            };
            let before = before(s);
            let carried = before.zip(pairing).and_then(|(b, pairing)| {
                carried_positions(b, &set, pairing, matching, &options, spare)
            });
            let carried =
                carried.unwrap_or_else(|| (routable_positions(&set, matching), None, None));
            let m = Arc::new(Members::new(&set, carried, &options, before));
            if options.maglev {
                let _ = m.maglev();
                if let Some(local) = &m.local {
                    let _ = local.maglev();
                }
            }
            m
        };
        let all = build(&Selector::everything(), None, spare);
        let known = selectors
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_everything())
            .map(|(i, s)| ((*s).clone(), build(s, Matches::bit(i), None)))
            .collect();
        Self {
            all,
            known,
            extra: RwLock::new(HashMap::new()),
            options,
            set,
        }
    }

    /// The list of every routable endpoint's position, when nothing else holds it: for
    /// the next index to fill ([`with_previous_reusing`](Self::with_previous_reusing)).
    pub(crate) fn into_spare(self) -> Option<Vec<u32>> {
        Arc::into_inner(self.all).map(|m| m.positions)
    }

    /// The room of the list of every routable endpoint's position (see
    /// [`Matches::room`]).
    #[cfg(test)]
    pub(crate) fn room(&self) -> usize {
        self.all.positions.capacity()
    }

    /// The snapshot indexed.
    pub fn set(&self) -> &Arc<EndpointSet> {
        &self.set
    }

    /// Every routable endpoint.
    pub fn all(&self) -> Picked<'_> {
        Picked {
            members: Held::Borrowed(&self.all),
            fell_back: false,
        }
    }

    /// How many selectors first seen on requests this snapshot keeps (at most
    /// [`EXTRA_SUBSETS`]).
    pub fn extra_len(&self) -> usize {
        self.extra.read().map_or(0, |m| m.len())
    }

    /// Whether some endpoint's weight is still ramping up at the index's time.
    pub fn ramping(&self) -> bool {
        let Some(s) = &self.options.slow_start else {
            return false;
        };
        self.set
            .endpoints()
            .iter()
            .any(|e| s.ends(e.meta().ready_since, self.options.now).is_some())
    }

    fn members(&self, selector: &Selector) -> Held<'_> {
        if selector.is_everything() {
            return Held::Borrowed(&self.all);
        }
        if let Some(m) = self.known.get(selector) {
            return Held::Borrowed(m);
        }
        // A poisoned cache only loses caching, never routing.
        if let Ok(extra) = self.extra.read()
            && let Some(m) = extra.get(selector)
        {
            return Held::Shared(m.clone());
        }
        let mut matching = PerLabelSet::new(|labels| selector.matches(labels));
        let m = Arc::new(Members::new(
            &self.set,
            (
                routable_positions(&self.set, |_, e| matching.get(e)),
                None,
                None,
            ),
            &self.options,
            None,
        ));
        if let Ok(mut extra) = self.extra.write()
            && extra.len() < EXTRA_SUBSETS
        {
            return Held::Shared(extra.entry(selector.clone()).or_insert(m).clone());
        }
        Held::Shared(m)
    }

    /// The routable endpoints matching `selector`, or the fallback's when there are none.
    pub fn subset(
        &self,
        selector: &Selector,
        fallback: &Fallback,
    ) -> Result<Picked<'_>, SubsetError> {
        let members = self.members(selector);
        if !members.positions.is_empty() {
            return Ok(Picked {
                members,
                fell_back: false,
            });
        }
        let members = match fallback {
            Fallback::NoFallback => None,
            Fallback::AnyEndpoint => Some(Held::Borrowed(&self.all)),
            Fallback::Default(other) => Some(self.members(other)),
        };
        match members {
            Some(m) if !m.positions.is_empty() => Ok(Picked {
                members: m,
                fell_back: true,
            }),
            _ => Err(SubsetError::Empty {
                selector: selector.to_string(),
                fallback: fallback.clone(),
                endpoints: self.set.len(),
            }),
        }
    }
}

/// The positions [`routable_positions`] gives for a subset that was `previous` in the set
/// before, carried over through `pairing` (how `set` pairs with `previous`'s set): the
/// members among the endpoints the update left as they were keep their place (shifted
/// past the change), and only the endpoints between are matched. `None` when that does
/// not give what the full pass gives: when the subset had no ready member, or has none
/// left, the serving-terminating fallback looks at the whole subset. With the positions,
/// the weight every member has when that is known without looking at them all (the
/// previous members all had it, no ramp changes weights, and the new ones have it too),
/// and how the members changed.
fn carried_positions(
    previous: &Members,
    set: &EndpointSet,
    pairing: &Pairing,
    matches: impl Fn(usize, &Endpoint) -> bool,
    options: &IndexOptions,
    spare: Option<Vec<u32>>,
) -> Option<Carried> {
    let old_set = &*previous.set;
    let old = &previous.positions[..];
    if !pairing.fits(old_set, set) {
        return None;
    }
    let (n, m) = (set.len(), old_set.len());
    let (head, tail) = (pairing.same_head(), pairing.same_tail());
    let Some(&first) = old.first() else {
        // No member before (a configured subset no Pod matches yet, say): the endpoints
        // the update left as they were are still not routable members, so only those
        // between can be, fallback included. An update costs the change, not a pass
        // over the set for a subset that stays empty.
        return Some((
            routable_positions_in(set, head..n - tail, matches),
            None,
            None,
        ));
    };
    if old_set.endpoints()[first as usize].readiness() != Readiness::Ready {
        return None;
    }
    let before_change = old.partition_point(|p| (*p as usize) < head);
    let after_change = old.partition_point(|p| (*p as usize) < m - tail);
    let most = old.len() + (n - tail - head);
    // A spare list (a snapshot's gone out of use) with no more than twice the room is
    // filled instead of a new one, and keeps its room.
    let (mut positions, spared) = match spare.filter(|s| s.capacity() <= 2 * most) {
        Some(mut list) => {
            list.clear();
            (list, true)
        }
        None => (Vec::with_capacity(most), false),
    };
    positions.extend_from_slice(&old[..before_change]);
    let endpoints = set.endpoints();
    let mut unit = previous
        .weights
        .unit()
        .filter(|_| options.slow_start.is_none());
    for (i, e) in endpoints.iter().enumerate().take(n - tail).skip(head) {
        if e.readiness() == Readiness::Ready && matches(i, e) {
            positions.push(i as u32);
            unit = unit.filter(|u| *u == e.weight());
        }
    }
    // In range: the tail's last position is m - 1, which becomes n - 1.
    let shift = (n as u32).wrapping_sub(m as u32);
    positions.extend(old[after_change..].iter().map(|p| p.wrapping_add(shift)));
    if positions.is_empty() {
        return None;
    }
    if !spared {
        positions.shrink_to_fit();
    }
    let splice = Splice {
        head: before_change,
        old_tail: after_change,
        new_tail: positions.len() - (old.len() - after_change),
    };
    Some((positions, unit, Some(splice)))
}

/// A subset's member positions, the weight every member has when known, and how they
/// changed from the subset's members before, when known.
type Carried = (Vec<u32>, Option<u32>, Option<Splice>);

/// A function of endpoints' labels, evaluated once per label set rather than once per
/// endpoint: discovery keeps equal label sets once (see
/// [`LabelSets`](crate::endpoint::LabelSets)), so a Service's endpoints carry a few sets
/// between them (one per version, say), and an endpoint whose set is one of the last few
/// seen takes the value found for it. Sets are told apart by address, valid while the
/// endpoints are borrowed. Where every endpoint has a set of its own (a StatefulSet's
/// Pods are labelled with their names), it stops looking after a run of misses.
struct PerLabelSet<'a, T, F> {
    seen: [Option<(&'a BTreeMap<String, String>, T)>; 4],
    next: usize,
    /// Values found since the last one taken from `seen`.
    misses: u32,
    of: F,
}

/// Misses in a row after which [`PerLabelSet`] evaluates every endpoint directly.
const GIVE_UP_AFTER: u32 = 32;

impl<'a, T: Copy, F: FnMut(&BTreeMap<String, String>) -> T> PerLabelSet<'a, T, F> {
    fn new(of: F) -> Self {
        Self {
            seen: [None; 4],
            next: 0,
            misses: 0,
            of,
        }
    }

    fn get(&mut self, e: &'a Endpoint) -> T {
        let labels = e.labels();
        if self.misses >= GIVE_UP_AFTER {
            return (self.of)(labels);
        }
        for (set, value) in self.seen.iter().flatten() {
            if std::ptr::eq(*set, labels) {
                self.misses = 0;
                return *value;
            }
        }
        self.misses += 1;
        let value = (self.of)(labels);
        self.seen[self.next] = Some((labels, value));
        self.next = (self.next + 1) % self.seen.len();
        value
    }
}

/// Positions of the routable endpoints matching `selector`: its ready ones, or, when none of
/// them is ready, its serving-terminating ones (kube-proxy's rule, applied per subset so a
/// subset being rolled keeps serving). Among terminating ones, those killed last (latest
/// deletion deadline, to the second as Kubernetes writes it; unknown counts as latest) are
/// preferred: they will still be there when the request arrives.
fn routable_positions<'a>(
    set: &'a EndpointSet,
    matches: impl FnMut(usize, &'a Endpoint) -> bool,
) -> Vec<u32> {
    routable_positions_in(set, 0..set.len(), matches)
}

/// [`routable_positions`] among the endpoints at `range` only.
fn routable_positions_in<'a>(
    set: &'a EndpointSet,
    range: std::ops::Range<usize>,
    mut matches: impl FnMut(usize, &'a Endpoint) -> bool,
) -> Vec<u32> {
    // One pass over the endpoints, matching each once; sized for all of them (no copies
    // while growing) and trimmed to what matched, since the list is kept with the
    // snapshot.
    let mut ready = Vec::with_capacity(range.len());
    let mut serving: Vec<(u32, u64)> = Vec::new();
    let start = range.start;
    for (i, e) in set.endpoints()[range].iter().enumerate() {
        let i = start + i;
        if !matches(i, e) {
            continue;
        }
        match e.readiness() {
            Readiness::Ready => ready.push(i as u32),
            Readiness::ServingTerminating if ready.is_empty() => {
                let deadline = e.meta().deletion_deadline.map_or(u64::MAX, |t| {
                    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
                });
                serving.push((i as u32, deadline));
            }
            Readiness::ServingTerminating => {}
        }
    }
    if !ready.is_empty() {
        ready.shrink_to_fit();
        return ready;
    }
    let latest = serving.iter().map(|(_, d)| *d).max();
    serving
        .into_iter()
        .filter(|(_, d)| Some(*d) == latest)
        .map(|(i, _)| i)
        .collect()
}
