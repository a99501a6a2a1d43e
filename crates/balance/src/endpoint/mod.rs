//! Endpoint snapshots: what discovery publishes and balancers read.
//!
//! An [`EndpointSet`] is immutable and shared behind an `Arc`: discovery builds a new one
//! when something really changed and swaps it in, and the request path reads the newest one
//! without locking. Endpoints are sorted by address, so two sets built from the same inputs
//! compare equal and a relist of an unchanged cluster publishes nothing new.

mod clock;
#[cfg(test)]
mod tests;

pub use self::clock::{SyncClock, WatchKind};

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Whether an endpoint takes new requests normally or only as a fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Readiness {
    /// Ready: routable.
    Ready,
    /// Terminating but still serving: routable only when a Service has no ready endpoint,
    /// as kube-proxy does, so rolling updates never empty a Service.
    ServingTerminating,
}

/// One routable address of a Service: a Pod's IP and the resolved target port.
#[derive(Clone, Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    readiness: Readiness,
    weight: u32,
    /// `None` reads as [`NO_META`]: an endpoint made without metadata allocates nothing.
    meta: Option<MetaRef>,
}

/// An endpoint's metadata: its place in the block it was made with. The block is behind a
/// thin pointer, which keeps an endpoint in 56 bytes.
#[derive(Clone)]
struct MetaRef {
    block: Arc<Box<[EndpointMeta]>>,
    /// Checked against the block's length when made.
    index: u32,
}

impl MetaRef {
    fn get(&self) -> &EndpointMeta {
        &self.block[self.index as usize]
    }
}

impl fmt::Debug for MetaRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

/// The metadata of endpoints made together, in one shared allocation: discovery makes one
/// per EndpointSlice it converts. An endpoint takes its metadata from a block with
/// [`Endpoint::with_meta_in`]; copying the endpoint (as every new snapshot copies the
/// endpoints that did not change) then counts a reference on the block, which the
/// endpoints of a slice share, rather than one on metadata of its own.
///
/// ```
/// use rudder_balance::{Endpoint, EndpointMeta, MetaBlock};
///
/// let block = MetaBlock::from(vec![
///     EndpointMeta { pod: Some("web-0".into()), ..Default::default() },
///     EndpointMeta { pod: Some("web-1".into()), ..Default::default() },
/// ]);
/// let web1 = Endpoint::new("10.1.0.8:8080".parse().unwrap()).with_meta_in(&block, 1);
/// assert_eq!(web1.meta().pod.as_deref(), Some("web-1"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct MetaBlock(Arc<Box<[EndpointMeta]>>);

impl MetaBlock {
    /// How many endpoints' metadata the block holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the block holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<EndpointMeta>> for MetaBlock {
    fn from(metas: Vec<EndpointMeta>) -> Self {
        Self(Arc::new(metas.into_boxed_slice()))
    }
}

/// The metadata of every endpoint made without any.
static NO_META: EndpointMeta = EndpointMeta {
    pod: None,
    labels: Labels::new(),
    zone: None,
    node: None,
    zone_hints: ZoneHints::new(),
    app_protocol: None,
    ready_since: None,
    deletion_deadline: None,
};

impl PartialEq for Endpoint {
    /// Content equality: metadata made apart compares by value.
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
            && self.readiness == other.readiness
            && self.weight == other.weight
            && (self.shares_meta(other) || self.meta() == other.meta())
    }
}

impl Eq for Endpoint {}

/// A Pod's labels, read as a `BTreeMap`: one shared allocation per Pod, however many
/// endpoints and snapshots carry them (cloning is a reference count), none when empty.
///
/// ```
/// use rudder_balance::endpoint::Labels;
///
/// let labels: Labels = [("version", "4.2")].into_iter().collect();
/// assert_eq!(labels.get("version").map(String::as_str), Some("4.2"));
/// assert!(Labels::new().is_empty());
/// ```
#[derive(Clone, Default)]
pub struct Labels(Option<Arc<BTreeMap<String, String>>>);

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// Whether two optional shared values are the very same allocation (or both absent).
fn same_allocation<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl Labels {
    /// No labels.
    pub const fn new() -> Self {
        Self(None)
    }

    /// The labels to change: copied first when they are shared, as `Cow::to_mut` does.
    pub fn to_mut(&mut self) -> &mut BTreeMap<String, String> {
        Arc::make_mut(self.0.get_or_insert_with(Arc::default))
    }

    /// Whether `other` is the very same allocation (or both are empty).
    pub fn shares(&self, other: &Labels) -> bool {
        same_allocation(&self.0, &other.0)
    }
}

impl std::ops::Deref for Labels {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&NO_LABELS)
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(labels: BTreeMap<String, String>) -> Self {
        Self((!labels.is_empty()).then(|| Arc::new(labels)))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        iter.into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect::<BTreeMap<_, _>>()
            .into()
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        self.shares(other) || **self == **other
    }
}

impl Eq for Labels {}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// The zones an endpoint is hinted for (an EndpointSlice's `hints.forZones`, written by
/// topology-aware routing), read as a slice of zone names: endpoints with the same hints
/// can share one allocation (discovery shares them, as it shares zone names), and none is
/// made when there are none.
///
/// ```
/// use rudder_balance::endpoint::ZoneHints;
///
/// let hints: ZoneHints = ["zone-a"].into_iter().collect();
/// assert!(hints.iter().any(|z| &**z == "zone-a"));
/// assert!(ZoneHints::new().is_empty());
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ZoneHints(Option<Arc<[Arc<str>]>>);

impl ZoneHints {
    /// No hints.
    pub const fn new() -> Self {
        Self(None)
    }

    /// Whether `other` is the very same allocation (or both are empty).
    pub fn shares(&self, other: &ZoneHints) -> bool {
        same_allocation(&self.0, &other.0)
    }
}

impl std::ops::Deref for ZoneHints {
    type Target = [Arc<str>];

    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl From<Arc<[Arc<str>]>> for ZoneHints {
    fn from(zones: Arc<[Arc<str>]>) -> Self {
        Self((!zones.is_empty()).then_some(zones))
    }
}

impl<Z: Into<Arc<str>>> FromIterator<Z> for ZoneHints {
    fn from_iter<I: IntoIterator<Item = Z>>(iter: I) -> Self {
        let zones: Arc<[Arc<str>]> = iter.into_iter().map(Into::into).collect();
        zones.into()
    }
}

impl fmt::Debug for ZoneHints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// Label sets kept once each: [`share`](Self::share) gives back the equal set it already
/// keeps, so that Pods with equal labels (a Deployment's replicas carry the same ones)
/// share one allocation, in discovery's Pod cache and in every endpoint that carries them.
///
/// Bounded by what is in use: it keeps at most twice the sets that something else still
/// holds, plus 64. When it reaches that, it lets go of the sets only it holds (a Pod that
/// left), so label sets that come and go do not pile up.
///
/// ```
/// use rudder_balance::endpoint::{LabelSets, Labels};
///
/// let mut sets = LabelSets::new();
/// let a = sets.share([("app", "web"), ("version", "4.2")].into_iter().collect());
/// let b = sets.share([("app", "web"), ("version", "4.2")].into_iter().collect());
/// assert!(a.shares(&b));
/// ```
#[derive(Debug, Default)]
pub struct LabelSets {
    sets: HashSet<Arc<BTreeMap<String, String>>>,
    /// How many sets were still in use when it last let go of the others.
    in_use: usize,
}

impl LabelSets {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// `labels`, or the equal set already kept.
    pub fn share(&mut self, labels: Labels) -> Labels {
        let Some(set) = labels.0 else {
            return labels;
        };
        if let Some(kept) = self.sets.get(&*set) {
            return Labels(Some(kept.clone()));
        }
        if self.sets.len() >= 2 * self.in_use + 64 {
            // Only this table holds a set with one reference, and only this table could
            // clone it: nothing races the count.
            self.sets.retain(|s| Arc::strong_count(s) > 1);
            self.in_use = self.sets.len();
        }
        self.sets.insert(set.clone());
        Labels(Some(set))
    }

    /// How many sets it keeps.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether it keeps none.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

/// What is known about an endpoint besides its address (shared, rarely read on the
/// request path).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// The Pod's name, when the endpoint names one (`targetRef`): one allocation, shared
    /// with what discovery keeps of the slice.
    pub pod: Option<Arc<str>>,
    /// The Pod's labels; empty until the Pod is known.
    pub labels: Labels,
    /// The zone the endpoint runs in (one allocation shared by every endpoint discovery
    /// saw in that zone).
    pub zone: Option<Arc<str>>,
    /// The node the endpoint runs on (shared like `zone`).
    pub node: Option<Arc<str>>,
    /// Zones this endpoint is hinted for (topology-aware routing).
    pub zone_hints: ZoneHints,
    /// The port's `appProtocol` (e.g. `http`, `kubernetes.io/h2c`; one allocation shared
    /// by every endpoint of the port).
    pub app_protocol: Option<Arc<str>>,
    /// When the Pod last became Ready.
    pub ready_since: Option<SystemTime>,
    /// When a terminating Pod will be killed (`deletionTimestamp` + grace period).
    pub deletion_deadline: Option<SystemTime>,
}

impl Endpoint {
    /// A ready endpoint of weight 1 with no metadata.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            readiness: Readiness::Ready,
            weight: 1,
            meta: None,
        }
    }

    /// Sets how the endpoint may be used.
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Sets the relative weight (0: never chosen).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the metadata (in a block of its own: endpoints made together share one with
    /// [`with_meta_in`](Self::with_meta_in)).
    pub fn with_meta(mut self, meta: EndpointMeta) -> Self {
        self.meta = Some(MetaRef {
            block: Arc::new(Box::new([meta])),
            index: 0,
        });
        self
    }

    /// Sets the metadata to the one at `index` of `block`, shared with the other endpoints
    /// that take theirs from the block.
    ///
    /// # Panics
    /// When `index` is not below `block.len()`, as indexing a slice does.
    pub fn with_meta_in(mut self, block: &MetaBlock, index: usize) -> Self {
        assert!(
            index < block.len(),
            "metadata index {index} out of a block of {}",
            block.len()
        );
        self.meta = Some(MetaRef {
            block: block.0.clone(),
            // A block of more than `u32::MAX` metadata would not fit in memory.
            index: index as u32,
        });
        self
    }

    /// The socket address requests go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ready, or serving while terminating.
    pub fn readiness(&self) -> Readiness {
        self.readiness
    }

    /// The relative weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Pod name, labels, zone and the rest.
    pub fn meta(&self) -> &EndpointMeta {
        self.meta.as_ref().map_or(&NO_META, MetaRef::get)
    }

    /// Whether `other` carries the very same metadata (the same place in one shared block,
    /// as discovery keeps for an endpoint that did not change, or none on either side):
    /// then label matches made for one hold for the other without matching again.
    pub fn shares_meta(&self, other: &Endpoint) -> bool {
        match (&self.meta, &other.meta) {
            (Some(a), Some(b)) => a.index == b.index && Arc::ptr_eq(&a.block, &b.block),
            (None, None) => true,
            _ => false,
        }
    }

    /// Whether `other` is this endpoint as it was: the same address, readiness and weight,
    /// and the metadata shared (one block), as discovery keeps it for endpoints it did not
    /// convert again. What was derived from one holds for the other.
    pub fn is_same(&self, other: &Endpoint) -> bool {
        // The metadata first: it tells changed endpoints apart soonest.
        self.shares_meta(other)
            && self.readiness == other.readiness
            && self.weight == other.weight
            && self.addr == other.addr
    }

    /// The Pod's labels (empty when not known).
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.meta().labels
    }
}

/// What discovery knows about the Service behind an [`EndpointSet`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceState {
    /// Not synced with the API yet.
    Pending,
    /// The Service exists; its endpoints are in the set (possibly none, see
    /// [`EndpointSet::empty_reason`]).
    Active,
    /// The Service does not exist.
    NotFound,
    /// An `ExternalName` Service: requests go to this DNS name, not to endpoints.
    ExternalName(String),
    /// Never synced: the API could not be reached or failed (the error). Discovery keeps
    /// retrying; the first success replaces this state.
    Unreachable(String),
    /// Never synced: the API refused to show the Service or its endpoints to this client
    /// (a `403`, with the API's message). Not the same as absent: the Service may exist.
    Forbidden(String),
}

impl ServiceState {
    /// Whether discovery has not (yet) learnt anything about the Service: pending, or
    /// its first sync failed.
    pub fn is_unsynced(&self) -> bool {
        matches!(
            self,
            ServiceState::Pending | ServiceState::Unreachable(_) | ServiceState::Forbidden(_)
        )
    }
}

/// An endpoint discovery saw but does not route to, and why: so that "why does my Pod get
/// no traffic?" has an answer in views. Its names are shared with what discovery keeps of
/// the slice, so that copying the list (every snapshot carries it) counts references
/// rather than allocating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unroutable {
    /// The address as the API listed it.
    pub address: Arc<str>,
    /// The target port.
    pub port: u16,
    /// The Pod, from the endpoint's `targetRef`.
    pub pod: Option<Arc<str>>,
    /// The node it runs on.
    pub node: Option<Arc<str>>,
    /// Its zone.
    pub zone: Option<Arc<str>>,
    /// Why it gets no traffic.
    pub reason: UnroutableReason,
}

/// Why an endpoint is not routable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnroutableReason {
    /// Not ready (its readiness probe fails, or it is still starting).
    NotReady,
    /// Terminating and no longer serving.
    Terminating,
    /// The address is not an IP address of the slice's family.
    InvalidAddress,
}

impl UnroutableReason {
    /// A short explanation.
    pub fn as_str(self) -> &'static str {
        match self {
            UnroutableReason::NotReady => "not ready",
            UnroutableReason::Terminating => "terminating and no longer serving",
            UnroutableReason::InvalidAddress => "not an IP address of the slice's family",
        }
    }
}

/// Why a Service has no routable endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmptyReason {
    /// No endpoint at all (no Pod matches, or the Service has no slices).
    NoEndpoints,
    /// Endpoints exist but none is ready or serving.
    NoneReady,
    /// The requested port is not a port of the Service.
    NoSuchPort,
}

/// An immutable snapshot of a Service's endpoints for one port.
#[derive(Clone, Debug)]
pub struct EndpointSet {
    state: ServiceState,
    /// Sorted by address. A `Vec` so that a spent list can be patched into the next one
    /// in place ([`from_sorted_after_reusing`](Self::from_sorted_after_reusing)).
    endpoints: Arc<Vec<Endpoint>>,
    empty_reason: Option<EmptyReason>,
    unroutable: Arc<[Unroutable]>,
    service_ports: Arc<[String]>,
    clock: Option<Arc<SyncClock>>,
    /// Names the endpoint list: sets with the same id share it (clones, or sets changed
    /// only outside it). Never reused.
    id: NonZeroU64,
    /// How the list relates to the list it was made after, when it was
    /// ([`from_sorted_after`](Self::from_sorted_after)).
    lineage: Option<Lineage>,
}

/// What [`EndpointSet::from_sorted_after`] found while copying the list: how much of it is
/// the same as the list before (see [`Endpoint::is_same`]), so comparing the two sets or
/// pairing their endpoints needs no pass of its own.
#[derive(Clone, Copy, Debug)]
struct Lineage {
    /// The id of the list before.
    previous: NonZeroU64,
    /// How many endpoints at the start of both lists are the same.
    same_head: u32,
    /// How many at the end are, not overlapping `same_head`.
    same_tail: u32,
}

/// Names the endpoint list of an [`EndpointSet`] ([`EndpointSet::list_id`]): sets made
/// apart have different ids, even with equal endpoints, and an id is never reused. Clones
/// of a set, and sets changed only outside their list ([`EndpointSet::with_unroutable`]
/// and the like), keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListId(NonZeroU64);

/// What the maker of a sorted list knows of how it differs from the list of an earlier
/// set, for [`EndpointSet::from_sorted_after_reusing`]: its first `head` and its last
/// `tail` endpoints are the same ([`Endpoint::is_same`]) as those of the list named
/// `after`, not overlapping in either list. Discovery knows it from how it patched its
/// list; the set then walks only from there inward instead of from both ends of 10,000
/// endpoints. A claim about another list than `previous`'s, or that does not fit the
/// lengths, is not used. A wrong claim about the right list is a logic error: the set
/// would tell the pools that endpoints are the same that are not (debug builds check it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownEnds {
    /// The list the claim is about.
    pub after: ListId,
    /// How many endpoints at the start are the same.
    pub head: usize,
    /// How many at the end are, not overlapping `head`.
    pub tail: usize,
}

/// The next endpoint list's id.
fn next_id() -> NonZeroU64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NonZeroU64::MIN.saturating_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// How many endpoints at the start of `a` and `b` are the same ([`Endpoint::is_same`]),
/// and how many at the end, not overlapping the first, given that the first `known.0`
/// and the last `known.1` of both are (not overlapping in either; `(0, 0)` when nothing
/// is known): the walks start past them. The head found does not reach into the known
/// tail, so with a known tail it may be shorter than the longest same head.
fn same_ends(a: &[Endpoint], b: &[Endpoint], known: (usize, usize)) -> (usize, usize) {
    let (h, t) = known;
    let (a_end, b_end) = (a.len() - t, b.len() - t);
    let head = h + a[h..a_end]
        .iter()
        .zip(&b[h..b_end])
        .take_while(|(a, b)| a.is_same(b))
        .count();
    let tail = t + a[head..a_end]
        .iter()
        .rev()
        .zip(b[head..b_end].iter().rev())
        .take_while(|(a, b)| a.is_same(b))
        .count();
    (head, tail)
}

/// Makes `list` equal to `to` by replacing what lies between their same head and tail
/// (the same endpoints are kept as they are: [`Endpoint::is_same`] leaves nothing to tell
/// them apart), given that the first `known.0` and the last `known.1` are the same
/// already. Grows the list to the size it needs and no further.
fn patch_in_place(list: &mut Vec<Endpoint>, to: &[Endpoint], known: (usize, usize)) {
    let (head, tail) = same_ends(list, to, known);
    list.reserve_exact(to.len().saturating_sub(list.len()));
    let end = list.len() - tail;
    list.splice(head..end, to[head..to.len() - tail].iter().cloned());
    debug_assert_eq!(list.len(), to.len());
}

impl PartialEq for EndpointSet {
    /// Content equality; the sync clock is not content.
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state
            && self.same_endpoints(other)
            && self.empty_reason == other.empty_reason
            && self.unroutable == other.unroutable
    }
}

impl EndpointSet {
    /// A set in `state` with `endpoints`, sorted by address with duplicates removed (the
    /// first occurrence of an address wins).
    pub fn new(state: ServiceState, mut endpoints: Vec<Endpoint>) -> Self {
        // A sorted list is only checked: a sort would allocate scratch space even then.
        if !endpoints.is_sorted_by_key(Endpoint::addr) {
            endpoints.sort_by_key(Endpoint::addr);
        }
        endpoints.dedup_by_key(|e| e.addr);
        endpoints.shrink_to_fit();
        Self::with_endpoints(state, Arc::new(endpoints))
    }

    /// [`new`](Self::new) from a borrowed list: when it is already sorted by address with
    /// no address twice (checked in one pass), the set is made with one allocation and a
    /// clone of each endpoint, with no intermediate list; otherwise as `new`. This is how
    /// discovery publishes from the list it keeps patched.
    pub fn from_sorted(state: ServiceState, endpoints: &[Endpoint]) -> Self {
        if endpoints.windows(2).all(|w| w[0].addr < w[1].addr) {
            Self::with_endpoints(state, Arc::new(endpoints.to_vec()))
        } else {
            Self::new(state, endpoints.to_vec())
        }
    }

    /// [`from_sorted`](Self::from_sorted) for the set that follows `previous`: finds how
    /// much of the list, at its start and at its end, is the same as `previous`'s (see
    /// [`Endpoint::is_same`]) and keeps that with the set. Comparing the two sets then
    /// compares only what lies between, and pairing them ([`Pairing::new`]) looks at
    /// nothing else: the lists are walked once for both, not once for each. This is how
    /// discovery publishes each set after the first. A list that is not sorted (an
    /// address twice) makes the set `new` makes, which knows nothing of `previous`.
    pub fn from_sorted_after(
        state: ServiceState,
        endpoints: &[Endpoint],
        previous: &EndpointSet,
    ) -> Self {
        Self::from_sorted_after_reusing(state, endpoints, previous, None, None)
    }

    /// [`from_sorted_after`](Self::from_sorted_after), with the list of `spent` (a set
    /// that went out of use, such as the one `previous` replaced) patched into this one in
    /// place when nothing else holds it: only the endpoints between the first difference
    /// and the last are replaced, so no list is allocated, and the endpoints the two have
    /// in common are neither copied nor reference-counted again. A large Service then
    /// costs an update one read of its list (against `previous`'s; the spent list is
    /// compared past what `previous`'s lineage says the two share), not a new list (on
    /// this machine, most of that cost was the fresh memory's page faults). When `spent`
    /// is held elsewhere too, or its list has room for more than twice the new one, the
    /// set is made as `from_sorted_after` makes it. With `known` ends of `previous`'s list
    /// ([`KnownEnds`]), the walks that find the same head and tail start past them, so an
    /// update that changed a few endpoints reads only those.
    pub fn from_sorted_after_reusing(
        state: ServiceState,
        endpoints: &[Endpoint],
        previous: &EndpointSet,
        spent: Option<Arc<EndpointSet>>,
        known: Option<KnownEnds>,
    ) -> Self {
        let old = previous.endpoints();
        let start = known
            .filter(|k| {
                k.after == previous.list_id()
                    && k.head
                        .checked_add(k.tail)
                        .is_some_and(|n| n <= old.len().min(endpoints.len()))
            })
            .map_or((0, 0), |k| (k.head, k.tail));
        debug_assert!(
            old[..start.0]
                .iter()
                .zip(&endpoints[..start.0])
                .chain(
                    old[old.len() - start.1..]
                        .iter()
                        .zip(&endpoints[endpoints.len() - start.1..])
                )
                .all(|(a, b)| a.is_same(b)),
            "known ends that are not the same"
        );
        // The lists are compared from each end (or from what is known to be the same) to
        // the first difference: an update changes a few endpoints, so that is most of
        // both, walked once here rather than once by each that compares or pairs the sets.
        let (same_head, same_tail) = same_ends(old, endpoints, start);
        // The same head and tail are `previous`'s, in order with no address twice: only
        // the pairs that take in an endpoint between them need checking.
        let n = endpoints.len();
        let between = &endpoints[same_head.saturating_sub(1)..(n - same_tail + 1).min(n)];
        if !between.windows(2).all(|w| w[0].addr < w[1].addr) {
            // Sorted and deduplicated as `new` does: not the list compared.
            return Self::new(state, endpoints.to_vec());
        }
        // When `previous` was made after `spent`, what both kept of the set before them
        // is the same in `spent` and in this list: patching it starts past that.
        let known = match (&spent, previous.lineage) {
            (Some(s), Some(l)) if l.previous == s.id => (
                same_head.min(l.same_head as usize),
                same_tail.min(l.same_tail as usize),
            ),
            _ => (0, 0),
        };
        let mut spent = spent
            .and_then(|s| Arc::try_unwrap(s).ok())
            .map(|s| s.endpoints);
        let list = match spent.as_mut().and_then(Arc::get_mut) {
            // A list that shrank to under half of the spent one's room gets its own, so a
            // Service scaled down does not keep the room of its largest size for good.
            Some(buf) if buf.capacity() <= 2 * endpoints.len() => {
                patch_in_place(buf, endpoints, known);
                spent.take()
            }
            _ => None,
        };
        // A spent list not reused goes only after this one is made: the two are never
        // the same allocation.
        let list = list.unwrap_or_else(|| Arc::new(endpoints.to_vec()));
        drop(spent);
        let mut set = Self::with_endpoints(state, list);
        // Lists of more than `u32::MAX` endpoints are not pairs' business.
        set.lineage = u32::try_from(same_head)
            .ok()
            .zip(u32::try_from(same_tail).ok())
            .map(|(same_head, same_tail)| Lineage {
                previous: previous.id,
                same_head,
                same_tail,
            });
        set
    }

    /// Whether the two endpoint lists are equal, from what the sets know of each other
    /// when one was made after the other, else endpoint by endpoint.
    fn same_endpoints(&self, other: &Self) -> bool {
        if self.id == other.id {
            return true;
        }
        if self.len() != other.len() {
            return false;
        }
        match self.lineage_to(other).or_else(|| other.lineage_to(self)) {
            Some(l) => {
                let (head, tail) = (l.same_head as usize, l.same_tail as usize);
                head + tail == self.len()
                    || self.endpoints[head..self.len() - tail]
                        == other.endpoints[head..self.len() - tail]
            }
            None => self.endpoints == other.endpoints,
        }
    }

    /// The name of this set's endpoint list (see [`ListId`]).
    pub fn list_id(&self) -> ListId {
        ListId(self.id)
    }

    /// This set's lineage, when it was made after `previous`.
    fn lineage_to(&self, previous: &Self) -> Option<Lineage> {
        self.lineage.filter(|l| l.previous == previous.id)
    }

    /// Whether this set was made after `previous`
    /// ([`from_sorted_after`](Self::from_sorted_after)), so that comparing or pairing the
    /// two looks only at what changed.
    pub fn follows(&self, previous: &EndpointSet) -> bool {
        self.lineage_to(previous).is_some()
    }

    fn with_endpoints(state: ServiceState, endpoints: Arc<Vec<Endpoint>>) -> Self {
        let empty_reason = match state {
            ServiceState::Active if endpoints.is_empty() => Some(EmptyReason::NoEndpoints),
            _ => None,
        };
        Self {
            state,
            endpoints,
            empty_reason,
            unroutable: Arc::new([]),
            service_ports: Arc::new([]),
            clock: None,
            id: next_id(),
            lineage: None,
        }
    }

    /// Attaches the endpoints discovery saw but does not route to.
    pub fn with_unroutable(mut self, unroutable: Vec<Unroutable>) -> Self {
        self.unroutable = unroutable.into();
        self
    }

    /// Names the Service's ports (`8080`, `8080/http`), for sets that say
    /// [`EmptyReason::NoSuchPort`].
    pub fn with_service_ports(mut self, ports: Vec<String>) -> Self {
        self.service_ports = ports.into();
        self
    }

    /// The Service's ports, when the set was built for a port it does not have.
    pub fn service_ports(&self) -> &[String] {
        &self.service_ports
    }

    /// The endpoints discovery saw but does not route to, with why.
    pub fn unroutable(&self) -> &[Unroutable] {
        &self.unroutable
    }

    /// The set of a Service that is not synced yet.
    pub fn pending() -> Self {
        Self::new(ServiceState::Pending, Vec::new())
    }

    /// Overrides why the set is empty.
    pub fn with_empty_reason(mut self, reason: EmptyReason) -> Self {
        if self.endpoints.is_empty() {
            self.empty_reason = Some(reason);
        }
        self
    }

    /// Attaches the clock that tells how fresh the set is.
    pub fn with_clock(mut self, clock: Arc<SyncClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The Service's state.
    pub fn state(&self) -> &ServiceState {
        &self.state
    }

    /// The endpoints, sorted by address.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The routable endpoints as kube-proxy picks them: the ready ones, or if there are
    /// none, the ones serving while terminating.
    pub fn routable(&self) -> impl Iterator<Item = &Endpoint> + '_ {
        let any_ready = self
            .endpoints
            .iter()
            .any(|e| e.readiness == Readiness::Ready);
        let wanted = if any_ready {
            Readiness::Ready
        } else {
            Readiness::ServingTerminating
        };
        self.endpoints.iter().filter(move |e| e.readiness == wanted)
    }

    /// Why there is nothing to route to, if so.
    pub fn empty_reason(&self) -> Option<EmptyReason> {
        self.empty_reason
    }

    /// How long discovery has been out of touch with the API server: zero while every
    /// watch of the Service is healthy (and for sets without a clock, such as static ones),
    /// otherwise the time since the earliest failure that has not healed (see
    /// [`SyncClock`]). While the API is unreachable the last good set keeps being served
    /// and this grows.
    pub fn staleness(&self) -> Duration {
        self.clock
            .as_ref()
            .map(|c| c.staleness())
            .unwrap_or_default()
    }

    /// The clock behind [`staleness`](Self::staleness), per watch; `None` for sets
    /// without one.
    pub fn clock(&self) -> Option<&SyncClock> {
        self.clock.as_deref()
    }

    /// The position of the endpoint at `addr`, if the set has one (a binary search: the
    /// endpoints are sorted by address).
    pub fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.endpoints
            .binary_search_by_key(&addr, Endpoint::addr)
            .ok()
    }

    /// Number of endpoints (routable or not).
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the set holds no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// How the endpoints of a new set pair with those of the set before it, by address: one
/// merge walk over the part of the two address-sorted lists between the first address
/// change and the last (the runs before and after pair in order and are stored as two
/// lengths), made once per update and shared by all that carries per-endpoint state
/// (load, payload, label matches) from one to the other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairing {
    /// How many endpoints at the start of both lists have the same addresses, in order:
    /// new position `i` is old position `i` there.
    head: usize,
    /// How many at the end do (not overlapping `head`): new position `i` is old position
    /// `i - new_len + old_len` there.
    tail: usize,
    /// Per endpoint of the new set between those two runs, its position in the old one, or
    /// [`Pairing::NEW`]: an update pays for the endpoints it changed, not for the list.
    mid: Vec<u32>,
    /// The new set's length.
    new_len: usize,
    /// Positions in the old set whose addresses are gone.
    gone: Vec<u32>,
    added: usize,
    /// The old set's length.
    old_len: usize,
    /// How many endpoints at the start of both lists are the same in every field.
    same_head: usize,
    /// How many at the end of both lists are, not overlapping `same_head`.
    same_tail: usize,
}

impl Pairing {
    /// The position of an address the old set did not have.
    const NEW: u32 = u32::MAX;

    /// Pairs `next`'s endpoints with `previous`'s.
    pub fn new(previous: &EndpointSet, next: &EndpointSet) -> Self {
        let (old, new) = (previous.endpoints(), next.endpoints());
        // An update changes a few endpoints somewhere in the list. The endpoints before
        // the first change and after the last one are the same in both lists (metadata
        // shared, as discovery keeps it for endpoints it did not convert again): whatever
        // was derived from them carries over in bulk (see `same_head`). A set made after
        // `previous` already knows how many; otherwise both lists are compared.
        let (same_head, same_tail) = match next.lineage_to(previous) {
            // Found while `next` was copied.
            Some(l) => (l.same_head as usize, l.same_tail as usize),
            None if next.id == previous.id => (old.len(), 0),
            None => {
                let same = |(a, b): &(&Endpoint, &Endpoint)| a.is_same(b);
                let head = old.iter().zip(new).take_while(same).count();
                let tail = old[head..]
                    .iter()
                    .rev()
                    .zip(new[head..].iter().rev())
                    .take_while(same)
                    .count();
                (head, tail)
            }
        };
        // The addresses before the first address change and after the last one pair in
        // order and are found by equality alone (most updates keep every address: then
        // that is the whole list); only the part between is merged by address order.
        let head = same_head
            + old[same_head..]
                .iter()
                .zip(&new[same_head..])
                .take_while(|(a, b)| a.addr == b.addr)
                .count();
        // The same endpoints have the same addresses: the tail by address goes on from
        // the same tail (within what the head left).
        let same_tail_here = same_tail.min(old.len().min(new.len()) - head);
        let tail = same_tail_here
            + old[head..old.len() - same_tail_here]
                .iter()
                .rev()
                .zip(new[head..new.len() - same_tail_here].iter().rev())
                .take_while(|(a, b)| a.addr == b.addr)
                .count();
        let (old_mid, new_mid) = (head..old.len() - tail, head..new.len() - tail);
        let mut mid = Vec::with_capacity(new_mid.len());
        let mut gone = Vec::new();
        let mut added = 0;
        let mut j = old_mid.start;
        for e in &new[new_mid] {
            let addr = e.addr();
            while j < old_mid.end && old[j].addr < addr {
                gone.push(j as u32);
                j += 1;
            }
            if j < old_mid.end && old[j].addr == addr {
                mid.push(j as u32);
                j += 1;
            } else {
                mid.push(Self::NEW);
                added += 1;
            }
        }
        gone.extend((j..old_mid.end).map(|j| j as u32));
        Self {
            head,
            tail,
            mid,
            new_len: new.len(),
            gone,
            added,
            old_len: old.len(),
            same_head,
            same_tail,
        }
    }

    /// Whether this pairs `previous` with `next` as far as their lengths tell: what
    /// carries state by position checks it first, so a pairing of other sets makes it
    /// start over rather than point past the end.
    pub fn fits(&self, previous: &EndpointSet, next: &EndpointSet) -> bool {
        self.old_len == previous.len() && self.new_len == next.len()
    }

    /// The old position of new position `i`'s address, if the old set had it.
    fn from(&self, i: usize) -> Option<usize> {
        if i < self.head {
            Some(i)
        } else if i >= self.new_len - self.tail {
            Some(i + self.old_len - self.new_len)
        } else {
            let j = self.mid[i - self.head];
            (j != Self::NEW).then_some(j as usize)
        }
    }

    /// How many endpoints at the start of the new set are the same as at the start of the
    /// old one, in every field (address, readiness, weight, shared metadata): what was
    /// derived from them holds at the same positions.
    pub fn same_head(&self) -> usize {
        self.same_head
    }

    /// How many endpoints at the end of the new set are the same as at the end of the old
    /// one (as for [`same_head`](Self::same_head), never overlapping it): position `i` of
    /// the old set's tail is position `i - old.len() + new.len()` in the new one.
    pub fn same_tail(&self) -> usize {
        self.same_tail
    }

    /// One value per endpoint of the new set, carried over from `old` (one per endpoint
    /// of the old set): cloned in two runs for the endpoints before the first change and
    /// after the last (see [`same_head`](Self::same_head)), made by `make` for those
    /// between, given the new position and the old one its address had, if any.
    ///
    /// The values are collected straight into `C`, whose length is known up front: a
    /// `Vec` (what a snapshot keeps, when it has no spare list to patch with
    /// [`carry_into`](Self::carry_into)) is allocated once at its final size.
    ///
    /// # Panics
    /// If `old` does not have one value per endpoint of the old set.
    pub fn carry<T: Clone, C: FromIterator<T>>(
        &self,
        old: &[T],
        mut make: impl FnMut(usize, Option<usize>) -> T,
    ) -> C {
        assert_eq!(old.len(), self.old_len, "one value per old endpoint");
        let (n, m) = (self.new_len, self.old_len);
        let (head, tail) = (self.same_head, self.same_tail);
        // Each part has an exact length, so collecting allocates once.
        old[..head]
            .iter()
            .cloned()
            .chain((head..n - tail).map(|i| make(i, self.from(i))))
            .chain(old[m - tail..].iter().cloned())
            .collect()
    }

    /// [`carry`](Self::carry) into `list`, which holds values of some earlier set (such
    /// as a snapshot's that went out of use): `list` ends up equal to what `carry` gives.
    /// The values at its start and end that already are (`same`, e.g. [`Arc::ptr_eq`])
    /// are kept where they are, and only those between are replaced, so an update that
    /// changed a few endpoints writes, clones and drops a few values, not one per
    /// endpoint. `list` grows to exactly the size it needs, if it must.
    ///
    /// # Panics
    /// If `old` does not have one value per endpoint of the old set.
    pub fn carry_into<T: Clone>(
        &self,
        old: &[T],
        list: &mut Vec<T>,
        same: impl Fn(&T, &T) -> bool,
        mut make: impl FnMut(usize, Option<usize>) -> T,
    ) {
        assert_eq!(old.len(), self.old_len, "one value per old endpoint");
        let (n, m) = (self.new_len, self.old_len);
        let (head, tail) = (self.same_head, self.same_tail);
        // What `carry` gives at new position `i`.
        let mut value = |i: usize| {
            if i < head {
                old[i].clone()
            } else if i >= n - tail {
                old[i + m - n].clone()
            } else {
                make(i, self.from(i))
            }
        };
        // The head of the list that is already the new head, and its tail that is the new
        // tail (not overlapping the head in either list).
        let kept_head = list
            .iter()
            .zip(&old[..head])
            .take_while(|(a, b)| same(a, b))
            .count();
        let kept_tail = list[kept_head..]
            .iter()
            .rev()
            .zip(old[m - tail..].iter().rev())
            .take(n - kept_head)
            .take_while(|(a, b)| same(a, b))
            .count();
        list.reserve_exact(n.saturating_sub(list.len()));
        let end = list.len() - kept_tail;
        list.splice(kept_head..end, (kept_head..n - kept_tail).map(&mut value));
        debug_assert_eq!(list.len(), n);
    }

    /// Per endpoint of the new set, in order, its position in the old one, if any.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Option<usize>> + '_ {
        (0..self.new_len).map(|i| self.from(i))
    }

    /// Positions in the old set of the addresses the new one does not have.
    pub fn gone(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.gone.iter().map(|j| *j as usize)
    }

    /// How many of the new set's addresses the old one did not have.
    pub fn added(&self) -> usize {
        self.added
    }

    /// Whether both sets have exactly the same addresses.
    pub fn same_addresses(&self) -> bool {
        self.added == 0 && self.gone.is_empty()
    }
}
