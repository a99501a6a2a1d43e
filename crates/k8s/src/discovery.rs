//! Shared watches per Service, publishing endpoint snapshots.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::watcher::{self, Event};
use rudder_balance::{
    Endpoint, EndpointSet, KnownEnds, LabelSets, ListId, Readiness, ServiceState, SyncClock,
    WatchKind,
};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::convert::{self, PodInfo};
use crate::error::DiscoveryError;
use crate::service_ref::{PortSpec, ServiceRef};

/// Where endpoints come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// EndpointSlices, unless the API lacks them, then the core `v1` Endpoints object.
    /// Decided once per [`Discovery`], by the first Service it watches.
    #[default]
    Auto,
    /// `discovery.k8s.io/v1` EndpointSlices labelled `kubernetes.io/service-name`.
    EndpointSlices,
    /// The core `v1` Endpoints object named after the Service (at most 1000 addresses).
    Endpoints,
}

/// Settings for [`Discovery`].
#[derive(Clone)]
pub struct DiscoveryBuilder {
    client: kube::Client,
    source: Source,
    default_namespace: Option<String>,
    pods: PodWatch,
    stall: Duration,
    max_backoff: Duration,
    forbidden_retry: Duration,
}

/// How long a Service's watches may stay silent before they are restarted.
const DEFAULT_STALL: Duration = Duration::from_secs(300);

/// The longest wait between two attempts of a failing watch, jitter included.
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long a watch the API refused (403) rests before it asks again.
const DEFAULT_FORBIDDEN_RETRY: Duration = Duration::from_secs(30);

/// The first wait after a watch fails.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// How much of each Pod discovery watches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PodWatch {
    /// Whole Pods: labels, weight, deletion deadline and the Ready condition's transition
    /// time that slow start ramps from. Every Pod status update (probes, restarts) is
    /// sent to every client in full.
    Full,
    /// Metadata only (`PartialObjectMetadata`, the default): labels, weight and deletion
    /// deadline. Slow start ramps from when discovery first saw an endpoint Ready (Pods
    /// already Ready at the first snapshot do not ramp), which is what a running client
    /// sees anyway; a client that starts during another Pod's ramp sees that Pod at full
    /// weight. About half the bytes of whole Pods per Pod update (`benches/scale.rs`,
    /// `docs/scale.md`).
    #[default]
    Metadata,
    /// No Pod watch: endpoints carry no labels (label subsets cannot match), for clients
    /// that may not read Pods.
    None,
}

impl std::fmt::Debug for DiscoveryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryBuilder")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("source", &self.source)
            .field("default_namespace", &self.default_namespace)
            .finish_non_exhaustive()
    }
}

impl DiscoveryBuilder {
    /// Where endpoints come from (default [`Source::Auto`]).
    pub fn source(mut self, source: Source) -> Self {
        self.source = source;
        self
    }

    /// How much of each Pod to watch (default [`PodWatch::Metadata`]).
    pub fn pods(mut self, pods: PodWatch) -> Self {
        self.pods = pods;
        self
    }

    /// The namespace of references that name none (default: the client's).
    pub fn default_namespace(mut self, ns: impl Into<String>) -> Self {
        self.default_namespace = Some(ns.into());
        self
    }

    /// Restarts a Service's watches when none of them has delivered an event for `quiet`
    /// (default 5 minutes): a stalled watch (a proxy holding the connection open, an API
    /// server that stopped sending) then costs at most this long. A quiet healthy Service
    /// pays one relist per period, with no visible change.
    pub fn stall_timeout(mut self, quiet: Duration) -> Self {
        self.stall = quiet;
        self
    }

    /// The longest wait between two attempts of a failing watch, jitter included
    /// (default 1 second; at least 100 ms). Waits start at 50 ms and double up to this;
    /// a success resets them. It bounds both how long discovery stays blind after the API
    /// server returns and how often each watch asks a server that is down (at most about
    /// once per `max / 2`).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max.max(2 * MIN_BACKOFF);
        self
    }

    /// How long a watch the API refused (`403 Forbidden`) waits before asking again
    /// (default 30 seconds), so a client without permission neither hammers the API nor
    /// floods its log, and notices a new RoleBinding within this time.
    pub fn forbidden_retry(mut self, wait: Duration) -> Self {
        self.forbidden_retry = wait;
        self
    }

    /// Builds the handle. No request is made until a Service is subscribed to.
    pub fn build(self) -> Discovery {
        let default_namespace = self
            .default_namespace
            .unwrap_or_else(|| self.client.default_namespace().to_string());
        Discovery {
            inner: Arc::new(Inner {
                client: self.client,
                source: self.source,
                auto: Arc::default(),
                routes: Default::default(),
                pods: self.pods,
                default_namespace,
                timing: Timing {
                    stall: self.stall,
                    max_backoff: self.max_backoff,
                    forbidden_retry: self.forbidden_retry,
                },
                services: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// Endpoint discovery from the Kubernetes API over the caller's `kube::Client`.
///
/// Cheap to clone. [`subscribe`](Self::subscribe) hands out a [`Subscription`] per
/// [`ServiceRef`]: a `tokio::sync::watch` of immutable `Arc<EndpointSet>` snapshots for the
/// referenced port. One set of watches (Service, EndpointSlices or Endpoints, Pods) runs
/// per Service per `Discovery`, shared by every subscription to that Service whatever its
/// port, and stops when the last subscription drops.
///
/// The watches use `kube::runtime::watcher`: list, then watch from the list's version,
/// with bookmarks, relisting on `410 Gone`. A relist is collected in full and swapped in at
/// once, so an unchanged cluster publishes nothing. On API errors a watch starts over with
/// a list after a pause (50 ms doubling to at most [`max_backoff`](DiscoveryBuilder::max_backoff),
/// 1 s, reset by a success), and the last good snapshot stays published; its
/// [`staleness`](EndpointSet::staleness) tells how long discovery has been out of touch.
/// A watch the API refuses (`403`) rests for
/// [`forbidden_retry`](DiscoveryBuilder::forbidden_retry) instead.
///
/// Before the first sync, a failure is the answer: the snapshot's state becomes
/// [`ServiceState::Forbidden`] (a `403`: not allowed, which is not "absent") or
/// [`ServiceState::Unreachable`], so callers can fail or fall back at once rather than wait.
///
/// Pods are watched (scoped to the Service's selector) to join labels, Ready time,
/// deletion deadline and the [`WEIGHT_ANNOTATION`](crate::WEIGHT_ANNOTATION) weight onto
/// endpoints through `targetRef`. The default watches whole Pods, because the Ready-transition
/// time (for slow start) is in the Pod's status; [`PodWatch::Metadata`] trades it for a
/// metadata-only watch. An endpoint whose Pod is not known yet is still routable
/// with no labels: readiness comes from the slice, which the control plane already derived
/// from the Pod, and withholding it would only delay new Pods. Selector-less Services get
/// no Pod labels.
#[derive(Clone, Debug)]
pub struct Discovery {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    source: Source,
    /// What `Source::Auto` chose: asked once per Discovery (the API has EndpointSlices or
    /// it does not), not once per Service.
    auto: Arc<tokio::sync::OnceCell<Source>>,
    /// Per namespace, the HTTPRoute watch.
    routes: crate::routes::RouteWatches,
    pods: PodWatch,
    default_namespace: String,
    timing: Timing,
    services: Mutex<HashMap<(String, String), Weak<Entry>>>,
}

/// How the watches of a Service pace themselves.
#[derive(Clone, Copy, Debug)]
struct Timing {
    stall: Duration,
    max_backoff: Duration,
    forbidden_retry: Duration,
}

/// A subscription to one Service port; dropping the last one of a Service stops its watches.
#[derive(Debug, Clone)]
pub struct Subscription {
    rx: watch::Receiver<Arc<EndpointSet>>,
    service: ServiceRef,
    _entry: Arc<Entry>,
}

impl Subscription {
    /// The newest snapshot.
    pub fn current(&self) -> Arc<EndpointSet> {
        self.rx.borrow().clone()
    }

    /// A receiver of snapshots (each clone keeps the watches alive only while this
    /// subscription lives).
    pub fn receiver(&self) -> watch::Receiver<Arc<EndpointSet>> {
        self.rx.clone()
    }

    /// Waits for the next snapshot that differs from the last one seen.
    pub async fn changed(&mut self) -> Arc<EndpointSet> {
        // The sender lives in the entry this subscription keeps alive.
        let _ = self.rx.changed().await;
        self.rx.borrow_and_update().clone()
    }

    /// Waits until the first sync (at most `timeout`), then returns the snapshot. Fails
    /// as soon as the first attempt fails ([`DiscoveryError::Forbidden`],
    /// [`DiscoveryError::Unreachable`]; discovery keeps retrying, so a later call may
    /// succeed) or when `timeout` passes ([`DiscoveryError::NotSynced`]).
    pub async fn synced(&mut self, timeout: Duration) -> Result<Arc<EndpointSet>, DiscoveryError> {
        let wait = self.rx.wait_for(|s| *s.state() != ServiceState::Pending);
        let service = || self.service.to_string();
        let set = match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(set)) => set.clone(),
            _ => {
                return Err(DiscoveryError::NotSynced {
                    service: service(),
                    waited: timeout,
                });
            }
        };
        match set.state() {
            ServiceState::Forbidden(message) => Err(DiscoveryError::Forbidden {
                service: service(),
                message: message.clone(),
            }),
            ServiceState::Unreachable(error) => Err(DiscoveryError::Unreachable {
                service: service(),
                error: error.clone(),
            }),
            _ => Ok(set),
        }
    }

    /// The last failure talking to the API (TLS, authorization, connection), with its
    /// causes, until discovery succeeds again; `None` while healthy.
    pub fn last_error(&self) -> Option<String> {
        self._entry.last_error.lock().expect("error lock").clone()
    }

    /// The Service this subscription follows.
    pub fn service(&self) -> &ServiceRef {
        &self.service
    }
}

impl Discovery {
    /// Discovery with default settings.
    pub fn new(client: kube::Client) -> Self {
        Self::builder(client).build()
    }

    /// Settings for discovery over `client`.
    pub fn builder(client: kube::Client) -> DiscoveryBuilder {
        DiscoveryBuilder {
            client,
            source: Source::Auto,
            default_namespace: None,
            pods: PodWatch::Metadata,
            stall: DEFAULT_STALL,
            max_backoff: DEFAULT_MAX_BACKOFF,
            forbidden_retry: DEFAULT_FORBIDDEN_RETRY,
        }
    }

    /// Follows the Gateway API `HTTPRoute`s of `namespace` (one watch per namespace,
    /// shared by every subscription, ended when the last one drops). Routes attach to
    /// Services through their `parentRefs` (GAMMA); which apply to a Service is the
    /// caller's business. Without the Gateway API CRDs, or without permission to read
    /// them, the set says [`RoutesState::Unavailable`](crate::RoutesState::Unavailable)
    /// and holds no routes.
    pub fn subscribe_routes(
        &self,
        namespace: &str,
    ) -> Result<crate::RouteSubscription, DiscoveryError> {
        self.inner.routes.subscribe(
            &self.inner.client,
            namespace,
            self.inner.timing.forbidden_retry,
            self.inner.timing.max_backoff,
        )
    }

    /// The namespace of references that name none.
    pub fn default_namespace(&self) -> &str {
        &self.inner.default_namespace
    }

    /// How many Services have running watches (one set per Service, however many
    /// subscriptions and ports).
    pub fn watched_services(&self) -> usize {
        let services = self.inner.services.lock().expect("services lock");
        services.values().filter(|w| w.strong_count() > 0).count()
    }

    /// Parses `s` (see [`ServiceRef`]) in the default namespace and subscribes to it.
    pub fn subscribe_str(&self, s: &str) -> Result<Subscription, DiscoveryError> {
        let svc = ServiceRef::parse_in(s, &self.inner.default_namespace)?;
        self.subscribe(&svc)
    }

    /// Subscribes to a Service port, starting the Service's watches if this is the first
    /// subscription. Must be called within a Tokio runtime.
    pub fn subscribe(&self, svc: &ServiceRef) -> Result<Subscription, DiscoveryError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| DiscoveryError::NoRuntime)?;
        let key = (svc.namespace().to_string(), svc.name().to_string());
        let mut services = self.inner.services.lock().expect("services lock");
        services.retain(|_, w| w.strong_count() > 0);
        let entry = match services.get(&key).and_then(Weak::upgrade) {
            Some(e) => e,
            None => {
                let entry = Arc::new(Entry::new());
                let task = runtime.spawn(run(
                    Arc::downgrade(&entry),
                    self.inner.client.clone(),
                    (self.inner.source, self.inner.auto.clone()),
                    self.inner.pods,
                    key.0.clone(),
                    key.1.clone(),
                    self.inner.timing,
                ));
                let _ = entry.task.set(task.abort_handle());
                services.insert(key, Arc::downgrade(&entry));
                entry
            }
        };
        let rx = entry.receiver(svc.port());
        Ok(Subscription {
            rx,
            service: svc.clone(),
            _entry: entry,
        })
    }
}

// === impl Entry ===

/// One Service's watches and the snapshots published per port.
#[derive(Debug)]
struct Entry {
    clock: Arc<SyncClock>,
    model: Mutex<Model>,
    ports: Mutex<HashMap<Option<PortSpec>, watch::Sender<Arc<EndpointSet>>>>,
    task: std::sync::OnceLock<AbortHandle>,
    /// The last API failure, until the next success.
    last_error: Mutex<Option<String>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(t) = self.task.get() {
            t.abort();
        }
    }
}

impl Entry {
    fn new() -> Self {
        Self {
            clock: Arc::new(SyncClock::new()),
            model: Mutex::new(Model::default()),
            ports: Mutex::new(HashMap::new()),
            task: std::sync::OnceLock::new(),
            last_error: Mutex::new(None),
        }
    }

    fn receiver(&self, port: Option<&PortSpec>) -> watch::Receiver<Arc<EndpointSet>> {
        let key = port.cloned();
        if let Some(tx) = self.ports.lock().expect("ports lock").get(&key) {
            return tx.subscribe();
        }
        // A new port: the model, then the ports, in the order `publish` takes them (the
        // other order deadlocked a first request against a publish).
        let mut model = self.model.lock().expect("model lock");
        let mut ports = self.ports.lock().expect("ports lock");
        if let Some(tx) = ports.get(&key) {
            return tx.subscribe();
        }
        let set = model.build(port, &self.clock);
        let (tx, rx) = watch::channel(Arc::new(set));
        ports.insert(key, tx);
        rx
    }

    /// Rebuilds every subscribed port's set and publishes those that changed. Takes the
    /// model, then the ports (as [`receiver`](Self::receiver) does).
    fn publish(&self) {
        let mut model = self.model.lock().expect("model lock");
        let ports = self.ports.lock().expect("ports lock");
        for (port, tx) in ports.iter() {
            // Made after the set in force: comparing the two, and the pools' pairing of
            // them, look only at what changed.
            let previous = tx.borrow().clone();
            let set = model.build_after(port.as_ref(), &self.clock, Some(&previous));
            drop(previous);
            // The set replaced, or the one not published: either is spent.
            let mut spent = None;
            tx.send_if_modified(|current| {
                if **current == set {
                    spent = Some(Arc::new(set));
                    return false;
                }
                spent = Some(std::mem::replace(current, Arc::new(set)));
                true
            });
            model.spend(port.as_ref(), spent);
        }
    }
}

// === the model ===

/// A watched collection, with a relist collected apart and swapped in whole. Kept in a
/// map `M` keyed by object name: ordered where the order of the objects matters (slices
/// are merged in name order), hashed where they are only looked up (Pods).
#[derive(Debug)]
pub(crate) struct Cache<T, M = BTreeMap<String, T>> {
    pub(crate) items: M,
    pending: Option<M>,
    pub(crate) synced: bool,
    _item: std::marker::PhantomData<fn() -> T>,
}

impl<T, M: Default> Default for Cache<T, M> {
    fn default() -> Self {
        Self {
            items: M::default(),
            pending: None,
            synced: false,
            _item: std::marker::PhantomData,
        }
    }
}

/// The map a [`Cache`] keeps its objects in.
pub(crate) trait Named<T>: Default {
    /// Puts `value` under `name`, returning what was there.
    fn put(&mut self, name: String, value: T) -> Option<T>;
    /// Takes what is under `name` out.
    fn take(&mut self, name: &str) -> Option<T>;
}

impl<T> Named<T> for BTreeMap<String, T> {
    fn put(&mut self, name: String, value: T) -> Option<T> {
        self.insert(name, value)
    }
    fn take(&mut self, name: &str) -> Option<T> {
        self.remove(name)
    }
}

impl<T, S: std::hash::BuildHasher + Default> Named<T> for HashMap<String, T, S> {
    fn put(&mut self, name: String, value: T) -> Option<T> {
        self.insert(name, value)
    }
    fn take(&mut self, name: &str) -> Option<T> {
        self.remove(name)
    }
}

/// The Pods discovery knows, by name: only looked up (once per endpoint of a slice being
/// converted), never walked in order.
pub(crate) type PodMap = HashMap<String, PodInfo, foldhash::fast::RandomState>;

impl<T, M: Named<T>> Cache<T, M> {
    /// Applies one watcher event; `key` names an object, `convert` keeps what matters.
    /// Returns what an `Apply` or `Delete` replaced: the object's previous value, if any.
    pub(crate) fn apply<K>(
        &mut self,
        event: Event<K>,
        key: impl Fn(&K) -> String,
        mut convert: impl FnMut(K) -> T,
    ) -> Option<T> {
        match event {
            Event::Init => self.pending = Some(M::default()),
            Event::InitApply(o) => {
                let k = key(&o);
                self.pending
                    .get_or_insert_with(M::default)
                    .put(k, convert(o));
            }
            Event::InitDone => {
                self.items = self.pending.take().unwrap_or_default();
                self.synced = true;
            }
            Event::Apply(o) => return self.items.put(key(&o), convert(o)),
            Event::Delete(o) => return self.items.take(&key(&o)),
        }
        None
    }
}

#[derive(Debug, Default)]
pub(crate) struct Model {
    pub(crate) source: Option<Source>,
    pub(crate) service: Cache<Service>,
    pub(crate) slices: Cache<convert::LeanSlice>,
    pub(crate) endpoints: Cache<Endpoints>,
    pub(crate) pods: Cache<PodInfo, PodMap>,
    /// Bumped when the Pods change whole (a relist, a selector change): every converted
    /// slice carries Pod data and goes stale with it. A change of single Pods only makes
    /// the slices naming them stale (see `Converted::stale_pods`).
    pub(crate) pods_epoch: u64,
    /// Slices converted so far (each costs its endpoints), for tests of what an event
    /// costs.
    pub(crate) conversions: u64,
    /// The first Pod list is on its way: snapshots wait for it, so the first one a client
    /// sees already carries labels (label subsets would otherwise be empty at start). A
    /// failing Pod watch (say, forbidden) ends the wait: endpoints flow without labels.
    pub(crate) pods_pending: bool,
    /// The Service's selector changed and the new Pod list is on its way: nothing is
    /// published until it is complete, so endpoints the slices add meanwhile (Pods the
    /// wider selector takes in) never appear without their labels.
    pub(crate) pods_relisting: bool,
    /// Pods the last selector change left out of the Pod watch, with their last labels,
    /// kept while slices still name them: a Pod that leaves a Service leaves its slices a
    /// moment later, and until then it is still that Pod, labels and all.
    pub(crate) pods_departed: PodMap,
    /// The Pods' label sets, each kept once: a Deployment's replicas share theirs.
    pub(crate) label_sets: LabelSets,
    /// Per watch, its last failure while it has not succeeded since: before the first
    /// sync, that is what the Service's state reports.
    pub(crate) errors: [Option<ServiceState>; 3],
    converted: HashMap<Option<PortSpec>, Converted>,
}

/// Per port: each slice's converted endpoints, keyed by slice name, valid for the slice's
/// resourceVersion, the port name and the Pod epoch they were made with.
#[derive(Debug, Default)]
struct Converted {
    port_name: String,
    pods_epoch: u64,
    slices: HashMap<String, (Option<String>, convert::SliceEndpoints), foldhash::fast::RandomState>,
    /// When this port's ready endpoints were first seen Ready (`None`: already Ready when
    /// the port's first snapshot was built), for those whose Pod gives no Ready time.
    /// Looked up for every endpoint of every slice converted, so hashed with foldhash
    /// (the keys are addresses the API server listed, not a caller's input).
    first_ready: HashMap<std::net::SocketAddr, Option<SystemTime>, foldhash::fast::RandomState>,
    /// Pods whose labels, weight or times changed since the port's last build: the slices
    /// naming them are converted again, the rest are not.
    stale_pods: Vec<String>,
    built: bool,
    /// Every cached slice's endpoints, sorted by [`convert::endpoint_order`] (duplicates
    /// kept): patched with each slice change instead of merged again from every slice.
    merged: Option<Vec<Endpoint>>,
    /// The set whose endpoint list is `merged` as it is now, endpoint for endpoint: what a
    /// patch of `merged` left as it was is the same in that set's list too, and the next
    /// set, made after it, starts comparing past that ([`KnownEnds`]).
    merged_as: Option<ListId>,
    /// The set the last publish replaced: by the next build its subscribers have usually
    /// moved on, and its list is then patched into the new set's instead of a new list
    /// being allocated (see [`EndpointSet::from_sorted_after_reusing`]). One per port.
    spent: Option<Arc<EndpointSet>>,
}

impl Model {
    /// The snapshot for `port`. Only slices that changed since the last build (or all of
    /// them after a Pod or Service change) are converted again; the rest is merged from
    /// the per-slice cache.
    pub(crate) fn build(&mut self, port: Option<&PortSpec>, clock: &Arc<SyncClock>) -> EndpointSet {
        self.build_after(port, clock, None)
    }

    /// [`build`](Self::build), for the set that follows `previous` (see
    /// [`EndpointSet::from_sorted_after`]).
    pub(crate) fn build_after(
        &mut self,
        port: Option<&PortSpec>,
        clock: &Arc<SyncClock>,
        previous: Option<&EndpointSet>,
    ) -> EndpointSet {
        let endpoints_synced = match self.source {
            Some(Source::Endpoints) => self.endpoints.synced,
            Some(_) => self.slices.synced,
            None => false,
        };
        if !self.service.synced || !endpoints_synced || self.pods_pending {
            let state = self.errors.iter().flatten().next();
            let state = state.cloned().unwrap_or(ServiceState::Pending);
            return EndpointSet::new(state, Vec::new()).with_clock(clock.clone());
        }
        self.forget_departed_pods();
        let service = self.service.items.values().next();
        // The watched Pods, then those a selector change left out while slices still
        // name them: looked up in turn, not merged into one map per build.
        let pods = (&self.pods.items, &self.pods_departed);
        if self.source == Some(Source::Endpoints) {
            return convert::from_endpoints(
                service,
                port,
                self.endpoints.items.values().next(),
                &pods,
                clock,
            );
        }
        let (state, resolved) = match convert::target(service, port, clock) {
            Ok(t) => t,
            Err(done) => return done,
        };
        let cache = self.converted.entry(port.cloned()).or_default();
        // Addresses that may have left the port's ready endpoints: those of slices
        // converted again or gone. Only they are checked against the new set, so a slice
        // update costs the slice, not the Service.
        let mut left = Vec::new();
        // The converted endpoints that leave the merged list and those that join it.
        let mut removed = Vec::new();
        let mut added = Vec::new();
        if cache.port_name != resolved.name || cache.pods_epoch != self.pods_epoch {
            left.extend(cache.slices.values().flat_map(|(_, c)| ready_addrs(c)));
            cache.slices.clear();
            cache.merged = None;
            cache.port_name.clone_from(&resolved.name);
            cache.pods_epoch = self.pods_epoch;
            cache.stale_pods.clear();
        } else if !cache.stale_pods.is_empty() {
            // Only the slices naming a changed Pod are converted again (below).
            let stale = std::mem::take(&mut cache.stale_pods);
            for (version, converted) in cache.slices.values_mut() {
                let names_one = converted.endpoints.iter().any(|e| {
                    let pod = e.meta().pod.as_deref();
                    pod.is_some_and(|p| stale.iter().any(|s| s == p))
                });
                if names_one {
                    *version = None;
                }
            }
        }
        // Without a merged list to patch (the first build, or every slice converted
        // again), changes are not collected: the list is made from every slice.
        let patching = cache.merged.is_some();
        let first = !std::mem::replace(&mut cache.built, true);
        let now = SystemTime::now();
        let mut unroutable = Vec::new();
        let mut seen_any = false;
        for (name, slice) in &self.slices.items {
            let rv = &slice.metadata.resource_version;
            let entry = match cache.slices.get_mut(name) {
                Some(entry) => entry,
                None => cache
                    .slices
                    .entry(name.clone())
                    .or_insert_with(|| (None, convert::SliceEndpoints::default())),
            };
            if entry.0.is_none() || entry.0 != *rv {
                left.extend(ready_addrs(&entry.1));
                self.conversions += 1;
                // Slow start needs to know when an endpoint became Ready. A whole Pod
                // says so (its Ready condition's transition time); Pod metadata does not,
                // so for endpoints without that time discovery uses when it first saw them
                // Ready: those in a port's first snapshot count as long Ready (no ramp),
                // later ones ramp from their arrival, and one that leaves and comes back
                // ramps again (see `left` below). Set as the slice is converted, so the
                // time stays with the converted endpoint and costs nothing on later builds.
                // The slice's conversion before this one knows the times of the endpoints
                // it listed Ready: only new ones are looked up in `first_ready`.
                let first_ready = &mut cache.first_ready;
                let before = &entry.1;
                let mut cursor = 0;
                let converted = convert::slice_endpoints(slice, &resolved.name, &pods, |addr| {
                    before.seen_ready(addr, &mut cursor).unwrap_or_else(|| {
                        *first_ready
                            .entry(addr)
                            .or_insert_with(|| (!first).then_some(now))
                    })
                });
                let before = std::mem::replace(entry, (rv.clone(), converted));
                if patching {
                    removed.extend(before.1.endpoints);
                    added.extend(entry.1.endpoints.iter().cloned());
                }
            }
            unroutable.extend(entry.1.unroutable.iter().cloned());
            seen_any |= entry.1.seen_any;
        }
        // Every slice has its conversion now: more conversions than slices means some
        // are of slices gone. Only then are they looked for, not on every build.
        if cache.slices.len() > self.slices.items.len() {
            cache.slices.retain(|name, (_, converted)| {
                let keep = self.slices.items.contains_key(name);
                if !keep {
                    left.extend(ready_addrs(converted));
                    if patching {
                        removed.append(&mut converted.endpoints);
                    }
                }
                keep
            });
        }
        // The merged list is patched with what changed; when it cannot be (the first
        // build, or an address listed twice), it is made again from every slice.
        let patched = cache.merged.take().and_then(|mut merged| {
            let (head, tail) = patch_merged(&mut merged, removed, added)?;
            Some((merged, head, tail))
        });
        let made_as = cache.merged_as.take();
        let (merged, known) = match patched {
            Some((merged, head, tail)) => {
                let known = made_as.map(|after| KnownEnds { after, head, tail });
                (merged, known)
            }
            // In slice-name order, as the sort is stable: where an address is listed
            // twice with the same readiness, the first slice's copy wins, every time.
            _ => (
                convert::sort_endpoints(
                    self.slices
                        .items
                        .keys()
                        .filter_map(|name| cache.slices.get(name))
                        .flat_map(|(_, c)| c.endpoints.iter().cloned())
                        .collect(),
                ),
                None,
            ),
        };
        // One that left and comes back ramps again.
        for addr in left {
            let here = merged.partition_point(|e| e.addr() < addr);
            let ready = merged
                .get(here)
                .is_some_and(|e| e.addr() == addr && e.readiness() == Readiness::Ready);
            if !ready {
                cache.first_ready.remove(&addr);
            }
        }
        let spent = cache.spent.take();
        let set = match previous {
            Some(previous) => {
                EndpointSet::from_sorted_after_reusing(state, &merged, previous, spent, known)
            }
            None => EndpointSet::from_sorted(state, &merged),
        };
        let set = convert::with_unroutable(set, unroutable, seen_any, clock);
        // The set's list is `merged` with any address listed twice taken out: the same
        // length, the same list.
        cache.merged_as = (set.len() == merged.len()).then(|| set.list_id());
        cache.merged = Some(merged);
        set
    }

    /// Keeps `spent`, a set `port` no longer publishes, for its next build to reuse.
    fn spend(&mut self, port: Option<&PortSpec>, spent: Option<Arc<EndpointSet>>) {
        if let Some(cache) = self.converted.get_mut(&port.cloned()) {
            cache.spent = spent;
        }
    }
}

/// Patches `merged` (every slice's endpoints, sorted by [`convert::endpoint_order`]) by
/// taking out `removed` and putting in `added`. An endpoint in both (a slice converted
/// again, that endpoint unchanged) stays as it was. A few changes are made in place (a
/// binary search and a move of the tail each); many, by one merge pass that moves
/// endpoints without cloning them. `false` (and `merged` in an unknown state) when the
/// patch would not give what a full build gives: an endpoint to take out is not there, or
/// an added address is listed twice, where which copy wins depends on the slices' order.
/// Else how many endpoints at the start and at the end of the list it left as they were
/// (not overlapping; `(0, 0)` after a merge pass, which does not count them).
fn patch_merged(
    merged: &mut Vec<Endpoint>,
    mut removed: Vec<Endpoint>,
    mut added: Vec<Endpoint>,
) -> Option<(usize, usize)> {
    use convert::endpoint_order as key;
    /// Up to this many changes are made in place.
    const FEW: usize = 64;
    removed.sort_by_key(key);
    added.sort_by_key(key);
    cancel_unchanged(&mut removed, &mut added);
    if removed.len() + added.len() <= FEW {
        let before = merged.len();
        // Each change below replaces the endpoints in `from..to` of the list it leaves
        // (the rest only moves): what lies before the first such range and after the
        // last is as it was.
        let (mut head, mut tail) = (usize::MAX, usize::MAX);
        let mut changed = |merged: &[Endpoint], from: usize, to: usize| {
            head = head.min(from);
            tail = tail.min(merged.len() - to);
        };
        let find = |merged: &[Endpoint], r: &Endpoint| {
            let from = merged.partition_point(|e| key(e) < key(r));
            (from..merged.len())
                .take_while(|i| key(&merged[*i]) == key(r))
                .find(|i| merged[*i] == *r)
        };
        // An endpoint that changed is one out and one in, usually at about the same place
        // (a readiness flip, a new label): the endpoints between the two places shift by
        // one, not the whole rest of the list twice.
        let pairs = removed.len().min(added.len());
        let mut added = added.into_iter();
        for (r, a) in removed.iter().zip(added.by_ref().take(pairs)) {
            let i = find(merged, r)?;
            // Where `a` goes once `r` is out, and its neighbours there.
            let at = merged.partition_point(|e| key(e) < key(&a));
            let to = if at > i { at - 1 } else { at };
            let without = |q: usize| if q < i { q } else { q + 1 };
            let taken = |q: usize| q < merged.len() - 1 && merged[without(q)].addr() == a.addr();
            if taken(to) || (to > 0 && taken(to - 1)) {
                return None;
            }
            if to >= i {
                merged[i..=to].rotate_left(1);
            } else {
                merged[to..=i].rotate_right(1);
            }
            merged[to] = a;
            changed(merged, i.min(to), i.max(to) + 1);
        }
        for r in &removed[pairs..] {
            let i = find(merged, r)?;
            merged.remove(i);
            changed(merged, i, i);
        }
        for a in added {
            let i = merged.partition_point(|e| key(e) < key(&a));
            let taken = |j: usize| merged.get(j).is_some_and(|e| e.addr() == a.addr());
            if taken(i) || (i > 0 && taken(i - 1)) {
                return None;
            }
            merged.insert(i, a);
            changed(merged, i, i + 1);
        }
        let shorter = before.min(merged.len());
        let head = head.min(shorter);
        return Some((head, tail.min(shorter - head)));
    }
    let capacity = merged.len() + added.len();
    let old = std::mem::replace(merged, Vec::with_capacity(capacity));
    let mut removed = removed.into_iter().peekable();
    let mut added = added.into_iter().peekable();
    for e in old {
        if removed.peek() == Some(&e) {
            removed.next();
            continue;
        }
        while let Some(a) = added.next_if(|a| key(a) <= key(&e)) {
            if a.addr() == e.addr() || merged.last().is_some_and(|l| l.addr() == a.addr()) {
                return None;
            }
            merged.push(a);
        }
        if added.peek().is_some_and(|a| a.addr() == e.addr()) {
            return None;
        }
        merged.push(e);
    }
    for a in added {
        if merged.last().is_some_and(|l| l.addr() == a.addr()) {
            return None;
        }
        merged.push(a);
    }
    removed.peek().is_none().then_some((0, 0))
}

/// Drops from both sorted lists the endpoints they share (equal in every field), so what
/// is left is what changed.
fn cancel_unchanged(removed: &mut Vec<Endpoint>, added: &mut Vec<Endpoint>) {
    use convert::endpoint_order as key;
    let (mut i, mut j) = (0, 0);
    let mut keep_removed = vec![true; removed.len()];
    let mut keep_added = vec![true; added.len()];
    while i < removed.len() && j < added.len() {
        match key(&removed[i]).cmp(&key(&added[j])) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal if removed[i] == added[j] => {
                keep_removed[i] = false;
                keep_added[j] = false;
                i += 1;
                j += 1;
            }
            // The same address and readiness listed differently: both stay, the patch
            // takes one out and puts the other in.
            std::cmp::Ordering::Equal => i += 1,
        }
    }
    let mut keep = keep_removed.into_iter();
    removed.retain(|_| keep.next().unwrap_or(true));
    let mut keep = keep_added.into_iter();
    added.retain(|_| keep.next().unwrap_or(true));
}

/// The ready endpoints of a converted slice whose ramp discovery times itself.
fn ready_addrs(converted: &convert::SliceEndpoints) -> impl Iterator<Item = SocketAddr> + '_ {
    converted
        .endpoints
        .iter()
        .filter(|e| e.readiness() == Readiness::Ready)
        .map(Endpoint::addr)
}

impl Model {
    /// Applies a Pod watch event. The list that completes a relist after a selector change
    /// ends the hold on publishing and keeps the Pods it no longer has as departed.
    fn apply_pod<K>(&mut self, event: Event<K>, convert: impl Fn(K) -> PodInfo)
    where
        K: kube::Resource,
    {
        let relisted = matches!(event, Event::InitDone);
        let named = match &event {
            Event::Apply(o) | Event::Delete(o) => Some(name_of(o)),
            _ => None,
        };
        let before = (self.pods_relisting && relisted).then(|| self.pods.items.clone());
        let sets = &mut self.label_sets;
        let was = self
            .pods
            .apply(event, name_of, |o| convert(o).with_labels_in(sets));
        match named {
            // One Pod: only when what discovery keeps of it changed (most Pod updates
            // are status the endpoints do not carry), and then only its slices.
            Some(name) if self.pods.items.get(&name) != was.as_ref() => self.pod_changed(name),
            Some(_) => {}
            // A list replaces the Pods whole; its items before `InitDone` are not in force.
            None if relisted => self.pods_epoch += 1,
            None => {}
        }
        if let Some(before) = before {
            self.pods_departed = before
                .into_iter()
                .filter(|(name, _)| !self.pods.items.contains_key(name))
                .collect();
            self.pods_relisting = false;
        }
    }

    /// Marks the slices naming `pod` stale in every port's cache; past a few changed Pods
    /// at once, converting every slice again costs less than finding theirs.
    fn pod_changed(&mut self, pod: String) {
        const FEW: usize = 16;
        if self.converted.values().any(|c| c.stale_pods.len() >= FEW) {
            self.pods_epoch += 1;
            return;
        }
        for cache in self.converted.values_mut() {
            cache.stale_pods.push(pod.clone());
        }
    }

    /// Drops departed Pods once no slice or Endpoints names them any more.
    fn forget_departed_pods(&mut self) {
        if self.pods_departed.is_empty() {
            return;
        }
        let mut named = self
            .slices
            .items
            .values()
            .flat_map(|s| s.endpoints.iter())
            .filter_map(|e| e.pod.as_deref())
            .chain(
                self.endpoints
                    .items
                    .values()
                    .flat_map(|e| e.subsets.iter().flatten())
                    .flat_map(|s| {
                        s.addresses
                            .iter()
                            .flatten()
                            .chain(s.not_ready_addresses.iter().flatten())
                    })
                    .filter_map(|a| a.target_ref.as_ref()?.name.as_deref()),
            );
        if !named.any(|n| self.pods_departed.contains_key(n)) {
            self.pods_departed.clear();
        }
    }
}

/// An error and its sources on one line (a TLS failure hides two levels down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

fn name_of<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

/// The Service's selector as a label selector string (`None` for selector-less Services).
fn selector_of(service: Option<&Service>) -> Option<String> {
    let sel = service?
        .spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())?;
    Some(
        sel.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// `Source::Auto`'s one question to the API: does it serve EndpointSlices?
async fn choose_source(client: &kube::Client, ns: &str, name: &str) -> Source {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default()
        .labels(&format!("kubernetes.io/service-name={name}"))
        .limit(1);
    // Only a 404 says the API has no EndpointSlices. A 403 says this client may not read
    // them: that is reported as the Service's state (with a hint), never taken for absence.
    match slices.list_metadata(&lp).await {
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::info!(
                service = name,
                namespace = ns,
                "the API serves no EndpointSlices; using v1 Endpoints"
            );
            Source::Endpoints
        }
        Err(kube::Error::Api(s)) if s.code == 403 => {
            tracing::warn!(
                service = name,
                namespace = ns,
                "this client may not list EndpointSlices: grant get/list/watch on endpointslices (see deploy/rbac.yaml), or choose Source::Endpoints explicitly"
            );
            Source::EndpointSlices
        }
        _ => Source::EndpointSlices,
    }
}

enum Change {
    Service(Box<Result<Event<Service>, watcher::Error>>),
    Slice(Result<Event<convert::LeanSlice>, watcher::Error>),
    Endpoints(Result<Event<Endpoints>, watcher::Error>),
    // Pods are large; boxing keeps every event of the loop small.
    Pod(Box<Result<Event<Pod>, watcher::Error>>),
    PodMeta(Box<Result<Event<PartialObjectMeta<Pod>>, watcher::Error>>),
}

impl Change {
    /// Whether this is news from the API (an `Init` only announces a list attempt).
    fn is_news(&self) -> bool {
        fn news<K>(r: &Result<Event<K>, watcher::Error>) -> bool {
            matches!(r, Ok(e) if !matches!(e, Event::Init))
        }
        match self {
            Change::Service(r) => news(r),
            Change::Slice(r) => news(r),
            Change::Endpoints(r) => news(r),
            Change::Pod(r) => news(r),
            Change::PodMeta(r) => news(r),
        }
    }

    fn kind(&self) -> WatchKind {
        match self {
            Change::Service(_) => WatchKind::Service,
            Change::Slice(_) | Change::Endpoints(_) => WatchKind::Endpoints,
            Change::Pod(_) | Change::PodMeta(_) => WatchKind::Pods,
        }
    }
}

/// The HTTP status of an API refusal inside a watcher error, if it is one.
fn api_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

/// Exponential backoff from [`MIN_BACKOFF`] up to `max` with jitter included (jitter adds
/// up to the current delay, so delays stop doubling at `max / 2`).
fn backoff(max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(max / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Every watch lists with `resourceVersion=0` (`ListSemantic::Any`), as client-go's
/// informers do: the API server answers from its watch cache instead of a quorum read
/// from etcd, which is what keeps thousands of clients cheap. The list may lag the newest
/// write by a moment; the watch that follows catches up. Unpaginated: kube-rs leaves
/// `resourceVersion=0` out of a list with a `limit` (and a server ignores the limit of
/// such a list anyway); the selectors keep each list to one Service's objects.
fn watch_config() -> watcher::Config {
    let mut config = watcher::Config::default().any_semantic();
    config.page_size = None;
    config
}

fn watch_stream<K>(
    api: Api<K>,
    config: watcher::Config,
) -> BoxStream<'static, Result<Event<K>, watcher::Error>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    watcher::watcher(api, config).boxed()
}

/// `stream`, started after `wait`.
fn later(stream: BoxStream<'static, Change>, wait: Duration) -> BoxStream<'static, Change> {
    futures::stream::once(async move {
        tokio::time::sleep(wait).await;
        stream
    })
    .flatten()
    .boxed()
}

/// Makes the watch streams of one Service (again, after a stall or a refusal).
struct Streams {
    client: kube::Client,
    ns: String,
    name: String,
    source: Source,
    pod_watch: PodWatch,
}

impl Streams {
    fn make(
        &self,
        kind: WatchKind,
        pod_selector: Option<&str>,
    ) -> Option<BoxStream<'static, Change>> {
        match kind {
            WatchKind::Service => Some(self.services()),
            WatchKind::Endpoints => Some(self.endpoints()),
            _ => pod_selector.and_then(|s| self.pods(s)),
        }
    }

    fn services(&self) -> BoxStream<'static, Change> {
        let by_name = watch_config().fields(&format!("metadata.name={}", self.name));
        watch_stream(
            Api::<Service>::namespaced(self.client.clone(), &self.ns),
            by_name,
        )
        .map(|r| Change::Service(Box::new(r)))
        .boxed()
    }

    fn endpoints(&self) -> BoxStream<'static, Change> {
        match self.source {
            Source::Endpoints => {
                let by_name = watch_config().fields(&format!("metadata.name={}", self.name));
                watch_stream(
                    Api::<Endpoints>::namespaced(self.client.clone(), &self.ns),
                    by_name,
                )
                .map(Change::Endpoints)
                .boxed()
            }
            _ => {
                let by_label =
                    watch_config().labels(&format!("kubernetes.io/service-name={}", self.name));
                watch_stream(
                    Api::<convert::LeanSlice>::namespaced(self.client.clone(), &self.ns),
                    by_label,
                )
                .map(Change::Slice)
                .boxed()
            }
        }
    }

    fn pods(&self, selector: &str) -> Option<BoxStream<'static, Change>> {
        let config = watch_config().labels(selector);
        match self.pod_watch {
            PodWatch::Full => Some(
                watch_stream(
                    Api::<Pod>::namespaced(self.client.clone(), &self.ns),
                    config,
                )
                .map(|r| Change::Pod(Box::new(r)))
                .boxed(),
            ),
            PodWatch::Metadata => Some(
                watch_stream(
                    Api::<PartialObjectMeta<Pod>>::namespaced(self.client.clone(), &self.ns),
                    config,
                )
                .map(|r| Change::PodMeta(Box::new(r)))
                .boxed(),
            ),
            PodWatch::None => None,
        }
    }
}

/// The three watches of a Service, any of which may be absent (no Pod watch yet, or one
/// resting after a refusal is replaced by a delayed stream).
#[derive(Default)]
struct Watches {
    streams: [Option<BoxStream<'static, Change>>; 3],
}

impl Watches {
    fn set(&mut self, kind: WatchKind, stream: Option<BoxStream<'static, Change>>) {
        self.streams[index(kind)] = stream;
    }

    async fn next(&mut self) -> Option<Change> {
        let [a, b, c] = &mut self.streams;
        async fn one(s: &mut Option<BoxStream<'static, Change>>) -> Option<Change> {
            match s.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            Some(c) = one(a) => Some(c),
            Some(c) = one(b) => Some(c),
            Some(c) = one(c) => Some(c),
            else => None,
        }
    }
}

fn index(kind: WatchKind) -> usize {
    match kind {
        WatchKind::Service => 0,
        WatchKind::Endpoints => 1,
        _ => 2,
    }
}

fn kind_name(kind: WatchKind) -> &'static str {
    match kind {
        WatchKind::Service => "Service",
        WatchKind::Endpoints => "endpoints",
        _ => "Pods",
    }
}

/// The watch loop of one Service. Holds only a weak reference to its entry, so that the
/// last subscription's drop ends it (the entry also aborts it).
///
/// Failures are logged once per watch at WARN when they start (repeats at DEBUG) and
/// once at INFO when the watch heals. A watch the API refuses (403) rests for
/// `forbidden_retry` instead of retrying with backoff; a refused Pod watch only costs
/// label subsets, so it is not counted as stale.
async fn run(
    entry: Weak<Entry>,
    client: kube::Client,
    (wanted, auto): (Source, Arc<tokio::sync::OnceCell<Source>>),
    pod_watch: PodWatch,
    ns: String,
    name: String,
    timing: Timing,
) {
    let source = match wanted {
        Source::Auto => {
            *auto
                .get_or_init(|| choose_source(&client, &ns, &name))
                .await
        }
        chosen => chosen,
    };
    match entry.upgrade() {
        Some(e) => e.model.lock().expect("model lock").source = Some(source),
        None => return,
    }
    let streams = Streams {
        client: client.clone(),
        ns: ns.clone(),
        name: name.clone(),
        source,
        pod_watch,
    };
    let mut watches = Watches::default();
    watches.set(WatchKind::Service, streams.make(WatchKind::Service, None));
    watches.set(
        WatchKind::Endpoints,
        streams.make(WatchKind::Endpoints, None),
    );
    let mut pod_selector: Option<String> = None;
    // Per watch: failing since its last success (for logging once per outage), and the
    // delays before its next attempts.
    let mut failing = [false; 3];
    let mut delays: [_; 3] = std::array::from_fn(|_| backoff(timing.max_backoff));
    let stall = timing.stall;
    // A watch that delivers nothing for `stall` (no events; kube-rs keeps bookmarks to
    // itself) may be stalled: restart every watch. The relist is swapped in whole, so a
    // healthy quiet Service sees no change, and a stalled one catches up.
    let mut quiet_until = tokio::time::Instant::now() + stall;
    loop {
        let change = tokio::select! {
            c = watches.next() => match c {
                Some(c) => c,
                None => return,
            },
            _ = tokio::time::sleep_until(quiet_until) => {
                tracing::info!(service = %name, namespace = %ns, quiet = ?stall, "no watch event for a while; restarting the watches");
                for kind in WatchKind::ALL {
                    watches.set(kind, streams.make(kind, pod_selector.as_deref()));
                }
                quiet_until = tokio::time::Instant::now() + stall;
                continue;
            }
        };
        quiet_until = tokio::time::Instant::now() + stall;
        let Some(entry) = entry.upgrade() else { return };
        let kind = change.kind();
        let news = change.is_news();
        let result = {
            let mut model = entry.model.lock().expect("model lock");
            let result = match change {
                Change::Service(r) => (*r).map(|e| drop(model.service.apply(e, name_of, |s| s))),
                Change::Slice(r) => r.map(|e| drop(model.slices.apply(e, name_of, |s| s))),
                Change::Endpoints(r) => r.map(|e| drop(model.endpoints.apply(e, name_of, |s| s))),
                Change::Pod(r) => r.map(|e| model.apply_pod(e, |p| PodInfo::from_pod(&p))),
                Change::PodMeta(r) => {
                    r.map(|e| model.apply_pod(e, |p| PodInfo::from_metadata(&p.metadata)))
                }
            };
            let is_pod = kind == WatchKind::Pods;
            if model.pods_pending && (model.pods.synced || (result.is_err() && is_pod)) {
                if !model.pods.synced {
                    tracing::warn!(service = %name, namespace = %ns, "cannot list Pods: routing without Pod labels, so label subsets stay empty");
                }
                model.pods_pending = false;
            }
            if result.is_err() && is_pod && model.pods_relisting {
                // No new list is coming soon: publish with the labels known so far.
                model.pods_relisting = false;
            }
            if let Err(e) = &result {
                let text = error_chain(e);
                let refused = api_code(e) == Some(403);
                // Before the first sync, the failure is the Service's state (a Pod
                // watch's failure only costs labels).
                if !is_pod {
                    model.errors[index(kind)] = Some(if refused {
                        ServiceState::Forbidden(text.clone())
                    } else {
                        ServiceState::Unreachable(text.clone())
                    });
                }
                *entry.last_error.lock().expect("error lock") = Some(text);
                let first = !std::mem::replace(&mut failing[index(kind)], true);
                if refused {
                    if first {
                        tracing::warn!(service = %name, namespace = %ns, watch = kind_name(kind), error = %e, retry = ?timing.forbidden_retry, "the API refuses this watch; serving the last known endpoints");
                    } else {
                        tracing::debug!(service = %name, namespace = %ns, watch = kind_name(kind), error = %e, "the API still refuses this watch");
                    }
                    let again = streams.make(kind, pod_selector.as_deref());
                    watches.set(kind, again.map(|s| later(s, timing.forbidden_retry)));
                } else {
                    if first {
                        tracing::warn!(service = %name, namespace = %ns, watch = kind_name(kind), error = %e, "watch failed; serving the last known endpoints");
                    } else {
                        tracing::debug!(service = %name, namespace = %ns, watch = kind_name(kind), error = %e, "watch still failing");
                    }
                    // Start over with a list after a pause: a watch that resumes quietly
                    // would never say it healed, and a list that completes does.
                    let wait = delays[index(kind)].next().unwrap_or(timing.max_backoff);
                    let again = streams.make(kind, pod_selector.as_deref());
                    watches.set(kind, again.map(|s| later(s, wait)));
                }
                if refused && is_pod {
                    // Routing goes on without labels: an answer, not an outage.
                    entry.clock.synced(kind);
                } else {
                    entry.clock.failed(kind);
                }
            } else if news {
                delays[index(kind)] = backoff(timing.max_backoff);
                if std::mem::replace(&mut failing[index(kind)], false) {
                    tracing::info!(service = %name, namespace = %ns, watch = kind_name(kind), "watch recovered");
                }
                entry.clock.synced(kind);
                model.errors[index(kind)] = None;
                if !failing.iter().any(|f| *f) {
                    *entry.last_error.lock().expect("error lock") = None;
                }
            }
            // The Pod watch follows the Service's selector.
            let selector = selector_of(model.service.items.values().next());
            if selector != pod_selector {
                pod_selector = selector.clone();
                // The very first Pod list holds snapshots back as `pods_pending`. On later
                // selector changes the known Pods keep their labels until the new list
                // replaces them whole (as on a relist), so label subsets never empty in
                // between, and publishing waits for that list (`pods_relisting`).
                model.pods_pending = selector.is_some()
                    && pod_watch != PodWatch::None
                    && model.pods_epoch == 0
                    && !model.pods.synced;
                // Later changes hold publishing until the new list is complete.
                model.pods_relisting =
                    selector.is_some() && pod_watch != PodWatch::None && model.pods.synced;
                model.pods_departed.clear();
                if selector.is_none() {
                    model.pods = Cache::default();
                    model.pods_epoch += 1;
                }
                failing[index(WatchKind::Pods)] = false;
                entry.clock.synced(WatchKind::Pods);
                watches.set(
                    WatchKind::Pods,
                    streams.make(WatchKind::Pods, selector.as_deref()),
                );
            }
            (result, model.pods_relisting)
        };
        let (result, hold) = result;
        drop(result);
        if !hold {
            entry.publish();
        }
    }
}

#[cfg(test)]
mod tests;
