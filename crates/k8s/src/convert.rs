//! From Kubernetes objects to an [`EndpointSet`]: pure functions, usable with any source
//! of objects (Discovery uses them over its watches), tested over synthetic inputs and the
//! captured real objects.
//!
//! The rules are kube-proxy's and the API's documentation: an endpoint's `ready` condition
//! when absent means ready, `serving` when absent equals `ready`, `terminating` when absent
//! is false; ready endpoints are routable, and serving-terminating ones only when a Service
//! has no ready endpoint (see [`EndpointSet::routable`]). Named target ports are resolved
//! per slice, since two slices of one Service may map the same port name to different
//! numbers. An address in two slices at once (during controller updates) counts once,
//! preferring the ready copy.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rudder_balance::{
    EmptyReason, Endpoint, EndpointMeta, EndpointSet, LabelSets, Labels, MetaBlock, Readiness,
    ServiceState, SyncClock, Unroutable, UnroutableReason, ZoneHints,
};

use crate::service_ref::PortSpec;

mod slice;

use self::slice::Address;
pub use self::slice::LeanSlice;

/// The Pod annotation that sets an endpoint's weight (a positive integer; default 1, `0`
/// takes the Pod out of rotation without failing readiness).
pub const WEIGHT_ANNOTATION: &str = "rudder.io/weight";

/// Where conversion finds the Pod an endpoint names (its `targetRef`), by Pod name:
/// a map of Pods, or two maps looked up in turn (the first that knows the Pod wins).
/// Discovery keeps its Pods in a hash map, so that each endpoint of a full rebuild costs
/// one hash lookup rather than a walk down a tree of string comparisons.
pub trait Pods {
    /// The Pod named `name`, if known.
    fn pod(&self, name: &str) -> Option<&PodInfo>;
}

impl Pods for BTreeMap<String, PodInfo> {
    fn pod(&self, name: &str) -> Option<&PodInfo> {
        self.get(name)
    }
}

impl<S: BuildHasher> Pods for HashMap<String, PodInfo, S> {
    fn pod(&self, name: &str) -> Option<&PodInfo> {
        self.get(name)
    }
}

impl<P: Pods + ?Sized> Pods for &P {
    fn pod(&self, name: &str) -> Option<&PodInfo> {
        (**self).pod(name)
    }
}

impl<A: Pods, B: Pods> Pods for (A, B) {
    fn pod(&self, name: &str) -> Option<&PodInfo> {
        self.0.pod(name).or_else(|| self.1.pod(name))
    }
}

/// What discovery keeps of a Pod: enough to label, weigh and age its endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub(crate) labels: Labels,
    pub(crate) ready_since: Option<SystemTime>,
    pub(crate) deletion_deadline: Option<SystemTime>,
    pub(crate) weight: u32,
}

fn to_system_time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Option<SystemTime> {
    let secs = t.0.as_second();
    let nanos = t.0.subsec_nanosecond();
    let since = std::time::Duration::new(secs.try_into().ok()?, nanos.try_into().ok()?);
    SystemTime::UNIX_EPOCH.checked_add(since)
}

impl PodInfo {
    /// Extracts labels, Ready time, deletion deadline and weight from a Pod.
    pub fn from_pod(pod: &Pod) -> Self {
        let ready_since = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(to_system_time);
        Self {
            ready_since,
            ..Self::from_metadata(&pod.metadata)
        }
    }

    /// The same, its labels shared with an equal set `sets` already keeps (see
    /// [`LabelSets`]): how discovery keeps Pods, so that replicas share their labels.
    pub fn with_labels_in(mut self, sets: &mut LabelSets) -> Self {
        self.labels = sets.share(std::mem::take(&mut self.labels));
        self
    }

    /// Extracts labels, deletion deadline and weight from a Pod's metadata (what a
    /// metadata-only watch delivers; the Ready time is then unknown).
    pub fn from_metadata(meta: &ObjectMeta) -> Self {
        let weight = match meta.annotations.as_ref().and_then(|a| a.get(WEIGHT_ANNOTATION)) {
            None => 1,
            Some(v) => v.trim().parse::<u32>().unwrap_or_else(|_| {
                tracing::warn!(pod = ?meta.name, value = %v, "invalid {WEIGHT_ANNOTATION} annotation; using weight 1");
                1
            }),
        };
        let deletion_deadline = meta
            .deletion_timestamp
            .as_ref()
            .and_then(to_system_time)
            .map(|t| {
                let grace = meta.deletion_grace_period_seconds.unwrap_or(0).max(0) as u64;
                t + std::time::Duration::from_secs(grace)
            });
        Self {
            labels: meta.labels.clone().unwrap_or_default().into(),
            ready_since: None,
            deletion_deadline,
            weight,
        }
    }
}

/// The Service port a reference asks for: its name (what slices use) and number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResolvedPort {
    pub(crate) name: String,
}

/// Finds the Service port `spec` names; `None` asks for the Service's only port.
fn resolve_port(service: &Service, spec: Option<&PortSpec>) -> Option<ResolvedPort> {
    let ports = service.spec.as_ref()?.ports.as_deref().unwrap_or_default();
    let found = match spec {
        Some(PortSpec::Number(n)) => ports.iter().find(|p| p.port == i32::from(*n)),
        Some(PortSpec::Name(name)) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str())),
        None if ports.len() == 1 => ports.first(),
        None => None,
    }?;
    Some(ResolvedPort {
        name: found.name.clone().unwrap_or_default(),
    })
}

/// What the Service is, before looking at endpoints.
fn service_state(service: Option<&Service>) -> ServiceState {
    let Some(svc) = service else {
        return ServiceState::NotFound;
    };
    let spec = svc.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        let name = spec
            .and_then(|s| s.external_name.clone())
            .unwrap_or_default();
        return ServiceState::ExternalName(name);
    }
    ServiceState::Active
}

/// Sorts "better" copies of an address first, so de-duplication keeps them.
fn readiness_rank(r: Readiness) -> u8 {
    match r {
        Readiness::Ready => 0,
        Readiness::ServingTerminating => 1,
    }
}

/// The order of a snapshot's endpoints: by address, the better copy of an address first.
pub(crate) fn endpoint_order(e: &Endpoint) -> (SocketAddr, u8) {
    (e.addr(), readiness_rank(e.readiness()))
}

/// Sorts endpoints by [`endpoint_order`]; a sorted list is only checked (a sort would
/// allocate scratch space even then).
pub(crate) fn sort_endpoints(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    if !endpoints.is_sorted_by_key(endpoint_order) {
        endpoints.sort_by_key(endpoint_order);
    }
    endpoints
}

/// The published set: `endpoints` (any order) and what was seen but is not routable.
pub(crate) fn finish(
    state: ServiceState,
    endpoints: Vec<Endpoint>,
    unroutable: Vec<Unroutable>,
    seen_any: bool,
    clock: &Arc<SyncClock>,
) -> EndpointSet {
    let set = EndpointSet::new(state, sort_endpoints(endpoints));
    with_unroutable(set, unroutable, seen_any, clock)
}

/// Attaches what was seen but is not routable, and says why an empty set is empty.
pub(crate) fn with_unroutable(
    set: EndpointSet,
    mut unroutable: Vec<Unroutable>,
    seen_any: bool,
    clock: &Arc<SyncClock>,
) -> EndpointSet {
    unroutable.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
    let set = set.with_unroutable(unroutable).with_clock(clock.clone());
    if set.is_empty() && seen_any {
        set.with_empty_reason(EmptyReason::NoneReady)
    } else {
        set
    }
}

fn meta_for(
    pod_name: Option<Arc<str>>,
    pods: &impl Pods,
    zone: Option<Arc<str>>,
    node: Option<Arc<str>>,
    hints: ZoneHints,
    app_protocol: Option<&Arc<str>>,
) -> (EndpointMeta, u32) {
    let pod = pod_name.as_deref().and_then(|n| pods.pod(n));
    let meta = EndpointMeta {
        pod: pod_name,
        // A Pod not seen yet is routable; its labels arrive with the Pod watch.
        labels: pod.map(|p| p.labels.clone()).unwrap_or_default(),
        zone,
        node,
        zone_hints: hints,
        app_protocol: app_protocol.cloned(),
        ready_since: pod.and_then(|p| p.ready_since),
        deletion_deadline: pod.and_then(|p| p.deletion_deadline),
    };
    (meta, pod.map_or(1, |p| p.weight))
}

/// Zone and node names kept per thread at most: a full table (nodes that came and went)
/// is emptied and filled again, so names from the API cannot grow it without bound.
const SHARED_NAMES: usize = 4096;

/// One table of shared copies per thread that decodes slices.
type Shared<T> = RefCell<HashSet<Arc<T>, foldhash::fast::RandomState>>;

thread_local! {
    static NAMES: Shared<str> = RefCell::default();
    static HINTS: Shared<[Arc<str>]> = RefCell::default();
}

/// The copy of `value` that `table` shares, made (and kept) if there is none yet: the
/// table is emptied when full, so values from the API cannot grow it without bound.
fn shared<T>(table: &'static std::thread::LocalKey<Shared<T>>, value: &T) -> Arc<T>
where
    T: ?Sized + std::hash::Hash + Eq,
    Arc<T>: for<'a> From<&'a T>,
{
    table
        .try_with(|kept| {
            let mut kept = kept.borrow_mut();
            if let Some(shared) = kept.get(value) {
                return shared.clone();
            }
            if kept.len() >= SHARED_NAMES {
                kept.clear();
            }
            let shared = Arc::from(value);
            kept.insert(shared.clone());
            shared
        })
        // The thread is exiting.
        .unwrap_or_else(|_| Arc::from(value))
}

/// The shared copy of a zone or node name: each is allocated once (per thread that
/// decodes slices) and shared by every endpoint that names it, in every slice and snapshot
/// (a Service's endpoints name a handful of zones and at most one node each).
pub(crate) fn shared_name(name: &str) -> Arc<str> {
    shared(&NAMES, name)
}

/// The shared copy of a list of hinted zones: endpoints hinted for the same zones (those
/// of one zone, under topology-aware routing) share one list, bounded like the names.
pub(crate) fn shared_hints(zones: &[Arc<str>]) -> ZoneHints {
    if zones.is_empty() {
        return ZoneHints::new();
    }
    shared(&HINTS, zones).into()
}

/// How many names this thread's table holds.
#[cfg(test)]
pub(crate) fn shared_names() -> usize {
    NAMES.with(|names| names.borrow().len())
}

/// The Service port to collect endpoints for, or, when there is nothing to collect (no
/// Service, an ExternalName, no such port), the finished set that says so.
pub(crate) fn target(
    service: Option<&Service>,
    port: Option<&PortSpec>,
    clock: &Arc<SyncClock>,
) -> Result<(ServiceState, ResolvedPort), EndpointSet> {
    let state = service_state(service);
    let Some(svc) = service.filter(|_| state == ServiceState::Active) else {
        return Err(EndpointSet::new(state, Vec::new()).with_clock(clock.clone()));
    };
    match resolve_port(svc, port) {
        Some(resolved) => Ok((state, resolved)),
        None => {
            let ports = svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .map(|p| match &p.name {
                    Some(name) if !name.is_empty() => format!("{}/{name}", p.port),
                    _ => p.port.to_string(),
                })
                .collect();
            Err(EndpointSet::new(state, Vec::new())
                .with_clock(clock.clone())
                .with_empty_reason(EmptyReason::NoSuchPort)
                .with_service_ports(ports))
        }
    }
}

/// Builds the set for one port from a Service's EndpointSlices (`port: None` asks for
/// the Service's only port; an `EndpointSlice` becomes a [`LeanSlice`] with `From`).
/// `pods` maps Pod names to what their endpoints inherit.
pub fn from_slices<'a>(
    service: Option<&Service>,
    port: Option<&PortSpec>,
    slices: impl IntoIterator<Item = &'a LeanSlice>,
    pods: &impl Pods,
    clock: &Arc<SyncClock>,
) -> EndpointSet {
    let (state, resolved) = match target(service, port, clock) {
        Ok(t) => t,
        Err(done) => return done,
    };
    let mut endpoints = Vec::new();
    let mut unroutable = Vec::new();
    let mut seen_any = false;
    for slice in slices {
        let converted = slice_endpoints(slice, &resolved.name, pods, |_| None);
        endpoints.extend(converted.endpoints);
        unroutable.extend(converted.unroutable);
        seen_any |= converted.seen_any;
    }
    finish(state, endpoints, unroutable, seen_any, clock)
}

/// What one slice contributes to a port.
#[derive(Debug, Default)]
pub(crate) struct SliceEndpoints {
    pub(crate) endpoints: Vec<Endpoint>,
    /// Per endpoint, what `ready_since` gave it (`None` where it was not asked: its Pod
    /// gave a time, or it is not Ready). The slice's next conversion takes these over for
    /// the endpoints it still lists ([`seen_ready`](Self::seen_ready)), so an update looks
    /// up only new addresses in discovery's map of them, whose entries are far apart in
    /// memory (a cache miss or two each).
    pub(crate) ready_since: Vec<Option<Option<SystemTime>>>,
    pub(crate) unroutable: Vec<Unroutable>,
    /// Whether the slice listed any endpoint for the port at all (routable or not).
    pub(crate) seen_any: bool,
}

impl SliceEndpoints {
    /// What `ready_since` gave `addr` in this conversion, looked for at `*cursor` and
    /// just past it (a slice lists its endpoints in the same order from one version to
    /// the next, give or take one that came or went); the cursor moves past a find.
    pub(crate) fn seen_ready(
        &self,
        addr: SocketAddr,
        cursor: &mut usize,
    ) -> Option<Option<SystemTime>> {
        for at in [*cursor, *cursor + 1] {
            let Some(e) = self.endpoints.get(at) else {
                break;
            };
            if e.addr() == addr {
                *cursor = at + 1;
                return self.ready_since.get(at).copied().flatten();
            }
        }
        None
    }
}

/// The endpoints one slice contributes to the port named `port_name`, and those it lists
/// but that are not routable. Discovery caches this per slice, so a slice update converts
/// only that slice. The endpoints take their metadata from one block ([`MetaBlock`]).
/// `ready_since` gives the Ready time of a Ready endpoint whose Pod gives none.
pub(crate) fn slice_endpoints(
    slice: &LeanSlice,
    port_name: &str,
    pods: &impl Pods,
    mut ready_since: impl FnMut(SocketAddr) -> Option<SystemTime>,
) -> SliceEndpoints {
    let mut out = SliceEndpoints::default();
    let slice_name = slice.metadata.name.as_deref().unwrap_or("?");
    let v6 = match slice.address_type.as_str() {
        "IPv4" => false,
        "IPv6" => true,
        other => {
            tracing::warn!(
                slice = slice_name,
                address_type = other,
                "skipping EndpointSlice: only IP addresses are routable"
            );
            return out;
        }
    };
    // Per slice: the port with the Service port's name.
    let Some(sp) = slice
        .ports
        .iter()
        .find(|p| p.name.as_deref().unwrap_or("") == port_name)
    else {
        return out;
    };
    let Some(number) = sp
        .port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
    else {
        tracing::warn!(slice = slice_name, port = ?sp.port, "skipping EndpointSlice port: not a valid port number");
        return out;
    };
    // Shared by the port's endpoints.
    let app_protocol = sp.app_protocol.as_deref().map(shared_name);
    // The routable endpoints, and their metadata for the block they will share.
    let mut routable = Vec::with_capacity(slice.endpoints.len());
    let mut metas = Vec::with_capacity(slice.endpoints.len());
    for ep in &slice.endpoints {
        let c = ep.conditions;
        let ready = c.ready.unwrap_or(true);
        let serving = c.serving.unwrap_or(ready);
        let terminating = c.terminating.unwrap_or(false);
        out.seen_any = true;
        let unroutable = |reason| Unroutable {
            address: ep
                .address
                .as_ref()
                .map_or_else(|| Arc::from(""), |a| Arc::from(a.to_string())),
            port: number,
            pod: ep.pod.clone(),
            node: ep.node_name.clone(),
            zone: ep.zone.clone(),
            reason,
        };
        let readiness = if ready {
            Readiness::Ready
        } else if serving && terminating {
            Readiness::ServingTerminating
        } else if terminating {
            out.unroutable
                .push(unroutable(UnroutableReason::Terminating));
            continue;
        } else {
            out.unroutable.push(unroutable(UnroutableReason::NotReady));
            continue;
        };
        // An address of the other family than the slice's is as malformed as a non-IP.
        let ip = match ep.address {
            Some(Address::Ip(ip)) if ip.is_ipv6() == v6 => ip,
            _ => {
                tracing::warn!(slice = slice_name, address_type = %slice.address_type, address = ?ep.address, "skipping endpoint: not an IP address of the slice's family");
                out.unroutable
                    .push(unroutable(UnroutableReason::InvalidAddress));
                continue;
            }
        };
        let (mut meta, weight) = meta_for(
            ep.pod.clone(),
            pods,
            ep.zone.clone(),
            ep.node_name.clone(),
            ep.zone_hints.clone(),
            app_protocol.as_ref(),
        );
        let addr = SocketAddr::new(ip, number);
        let asked = (readiness == Readiness::Ready && meta.ready_since.is_none()).then(|| {
            let since = ready_since(addr);
            meta.ready_since = since;
            since
        });
        metas.push(meta);
        routable.push((addr, readiness, weight));
        out.ready_since.push(asked);
    }
    if routable.is_empty() {
        return out;
    }
    let block = MetaBlock::from(metas);
    out.endpoints = routable
        .into_iter()
        .enumerate()
        .map(|(i, (addr, readiness, weight))| {
            Endpoint::new(addr)
                .with_readiness(readiness)
                .with_weight(weight)
                .with_meta_in(&block, i)
        })
        .collect();
    out
}

/// Builds the set for one port from the core `v1` Endpoints object (where EndpointSlices
/// are not available). Not-ready addresses are not routable; terminating Pods are absent
/// from Endpoints altogether.
pub fn from_endpoints(
    service: Option<&Service>,
    port: Option<&PortSpec>,
    endpoints: Option<&Endpoints>,
    pods: &impl Pods,
    clock: &Arc<SyncClock>,
) -> EndpointSet {
    let (state, resolved) = match target(service, port, clock) {
        Ok(t) => t,
        Err(done) => return done,
    };
    let mut out = Vec::new();
    let mut unroutable = Vec::new();
    let mut seen_any = false;
    for subset in endpoints
        .and_then(|e| e.subsets.as_ref())
        .into_iter()
        .flatten()
    {
        let Some(sp) = subset
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == resolved.name)
        else {
            continue;
        };
        let Some(number) = u16::try_from(sp.port).ok().filter(|p| *p > 0) else {
            continue;
        };
        for a in subset.not_ready_addresses.iter().flatten() {
            seen_any = true;
            unroutable.push(Unroutable {
                address: a.ip.as_str().into(),
                port: number,
                pod: a
                    .target_ref
                    .as_ref()
                    .filter(|t| t.kind.as_deref() == Some("Pod"))
                    .and_then(|t| t.name.as_deref())
                    .map(Arc::from),
                node: a.node_name.as_deref().map(shared_name),
                zone: None,
                reason: UnroutableReason::NotReady,
            });
        }
        // Shared by the port's endpoints.
        let app_protocol = sp.app_protocol.as_deref().map(shared_name);
        for a in subset.addresses.iter().flatten() {
            seen_any = true;
            let Ok(ip) = a.ip.parse::<IpAddr>() else {
                tracing::warn!(ip = %a.ip, "skipping Endpoints address: not an IP address");
                continue;
            };
            let pod_name = a
                .target_ref
                .as_ref()
                .filter(|t| t.kind.as_deref() == Some("Pod"))
                .and_then(|t| t.name.as_deref());
            let (meta, weight) = meta_for(
                pod_name.map(Arc::from),
                pods,
                None,
                a.node_name.as_deref().map(shared_name),
                ZoneHints::new(),
                app_protocol.as_ref(),
            );
            out.push(
                Endpoint::new(SocketAddr::new(ip, number))
                    .with_weight(weight)
                    .with_meta(meta),
            );
        }
    }
    finish(state, out, unroutable, seen_any, clock)
}
