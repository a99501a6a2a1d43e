//! Shared watches per Service, publishing endpoint snapshots.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use rudder_balance::{EndpointSet, ServiceState, SyncClock};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::convert::{self, PodInfo};
use crate::error::DiscoveryError;
use crate::service_ref::{PortSpec, ServiceRef};

/// Where endpoints come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// EndpointSlices, unless the API (or the client's permissions) lacks them, then the
    /// core `v1` Endpoints object. Decided once per Service watch.
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
}

/// How long a Service's watches may stay silent before they are restarted.
const DEFAULT_STALL: Duration = Duration::from_secs(300);

/// How much of each Pod discovery watches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PodWatch {
    /// Whole Pods: labels, weight, deletion deadline and the Ready-transition time that
    /// slow start ramps from.
    #[default]
    Full,
    /// Metadata only (`PartialObjectMetadata`): labels, weight and deletion deadline, but
    /// no Ready time; fewer bytes on the wire.
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

    /// How much of each Pod to watch (default [`PodWatch::Full`]).
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

    /// Builds the handle. No request is made until a Service is subscribed to.
    pub fn build(self) -> Discovery {
        let default_namespace = self
            .default_namespace
            .unwrap_or_else(|| self.client.default_namespace().to_string());
        Discovery {
            inner: Arc::new(Inner {
                client: self.client,
                source: self.source,
                pods: self.pods,
                default_namespace,
                stall: self.stall,
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
/// once, so an unchanged cluster publishes nothing. On API errors the watches retry with
/// backoff and the last good snapshot stays published; its
/// [`staleness`](EndpointSet::staleness) tells how long discovery has been out of touch.
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
    pods: PodWatch,
    default_namespace: String,
    stall: Duration,
    services: Mutex<HashMap<(String, String), Weak<Entry>>>,
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

    /// Waits until the first sync (at most `timeout`), then returns the snapshot.
    pub async fn synced(&mut self, timeout: Duration) -> Result<Arc<EndpointSet>, DiscoveryError> {
        let wait = self.rx.wait_for(|s| *s.state() != ServiceState::Pending);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(set)) => Ok(set.clone()),
            _ => Err(DiscoveryError::NotSynced {
                service: self.service.to_string(),
                waited: timeout,
            }),
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
            pods: PodWatch::Full,
            stall: DEFAULT_STALL,
        }
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
                    self.inner.source,
                    self.inner.pods,
                    key.0.clone(),
                    key.1.clone(),
                    self.inner.stall,
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
        let mut ports = self.ports.lock().expect("ports lock");
        if let Some(tx) = ports.get(&port.cloned()) {
            return tx.subscribe();
        }
        let set = self
            .model
            .lock()
            .expect("model lock")
            .build(port, &self.clock);
        let (tx, rx) = watch::channel(Arc::new(set));
        ports.insert(port.cloned(), tx);
        rx
    }

    /// Rebuilds every subscribed port's set and publishes those that changed.
    fn publish(&self) {
        let mut model = self.model.lock().expect("model lock");
        let ports = self.ports.lock().expect("ports lock");
        for (port, tx) in ports.iter() {
            let set = model.build(port.as_ref(), &self.clock);
            tx.send_if_modified(|current| {
                if **current == set {
                    return false;
                }
                *current = Arc::new(set);
                true
            });
        }
    }
}

// === the model ===

/// A watched collection, with a relist collected apart and swapped in whole.
#[derive(Debug)]
pub(crate) struct Cache<T> {
    pub(crate) items: BTreeMap<String, T>,
    pending: Option<BTreeMap<String, T>>,
    pub(crate) synced: bool,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            pending: None,
            synced: false,
        }
    }
}

impl<T> Cache<T> {
    /// Applies one watcher event; `key` names an object, `convert` keeps what matters.
    pub(crate) fn apply<K>(
        &mut self,
        event: Event<K>,
        key: impl Fn(&K) -> String,
        convert: impl Fn(K) -> T,
    ) {
        match event {
            Event::Init => self.pending = Some(BTreeMap::new()),
            Event::InitApply(o) => {
                let k = key(&o);
                self.pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k, convert(o));
            }
            Event::InitDone => {
                self.items = self.pending.take().unwrap_or_default();
                self.synced = true;
            }
            Event::Apply(o) => {
                self.items.insert(key(&o), convert(o));
            }
            Event::Delete(o) => {
                self.items.remove(&key(&o));
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Model {
    pub(crate) source: Option<Source>,
    pub(crate) service: Cache<Service>,
    pub(crate) slices: Cache<EndpointSlice>,
    pub(crate) endpoints: Cache<Endpoints>,
    pub(crate) pods: Cache<PodInfo>,
    /// Bumped on every Pod change: converted slices carry Pod data and go stale with it.
    pub(crate) pods_epoch: u64,
    /// The first Pod list is on its way: snapshots wait for it, so the first one a client
    /// sees already carries labels (label subsets would otherwise be empty at start). A
    /// failing Pod watch (say, forbidden) ends the wait: endpoints flow without labels.
    pub(crate) pods_pending: bool,
    converted: HashMap<Option<PortSpec>, Converted>,
}

/// Per port: each slice's converted endpoints, keyed by slice name, valid for the slice's
/// resourceVersion, the port name and the Pod epoch they were made with.
#[derive(Debug, Default)]
struct Converted {
    port_name: String,
    pods_epoch: u64,
    slices: HashMap<String, (Option<String>, Vec<rudder_balance::Endpoint>, bool)>,
}

impl Model {
    /// The snapshot for `port`. Only slices that changed since the last build (or all of
    /// them after a Pod or Service change) are converted again; the rest is merged from
    /// the per-slice cache.
    pub(crate) fn build(&mut self, port: Option<&PortSpec>, clock: &Arc<SyncClock>) -> EndpointSet {
        let endpoints_synced = match self.source {
            Some(Source::Endpoints) => self.endpoints.synced,
            Some(_) => self.slices.synced,
            None => false,
        };
        if !self.service.synced || !endpoints_synced || self.pods_pending {
            return EndpointSet::pending().with_clock(clock.clone());
        }
        let service = self.service.items.values().next();
        let pods = &self.pods.items;
        if self.source == Some(Source::Endpoints) {
            return convert::from_endpoints(
                service,
                port,
                self.endpoints.items.values().next(),
                pods,
                clock,
            );
        }
        let (state, resolved) = match convert::target(service, port, clock) {
            Ok(t) => t,
            Err(done) => return done,
        };
        let cache = self.converted.entry(port.cloned()).or_default();
        if cache.port_name != resolved.name || cache.pods_epoch != self.pods_epoch {
            cache.slices.clear();
            cache.port_name.clone_from(&resolved.name);
            cache.pods_epoch = self.pods_epoch;
        }
        cache
            .slices
            .retain(|name, _| self.slices.items.contains_key(name));
        let mut all = Vec::new();
        let mut seen_any = false;
        for (name, slice) in &self.slices.items {
            let rv = slice.metadata.resource_version.clone();
            let entry = cache
                .slices
                .entry(name.clone())
                .or_insert_with(|| (None, Vec::new(), false));
            if entry.0.is_none() || entry.0 != rv {
                let (eps, seen) = convert::slice_endpoints(slice, &resolved.name, pods);
                *entry = (rv, eps, seen);
            }
            all.extend(entry.1.iter().cloned());
            seen_any |= entry.2;
        }
        convert::finish(state, all, seen_any, clock)
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

async fn choose_source(client: &kube::Client, ns: &str, name: &str, wanted: Source) -> Source {
    if wanted != Source::Auto {
        return wanted;
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default()
        .labels(&format!("kubernetes.io/service-name={name}"))
        .limit(1);
    match slices.list_metadata(&lp).await {
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {
            tracing::info!(
                service = name,
                namespace = ns,
                code = s.code,
                "EndpointSlices unavailable; using v1 Endpoints"
            );
            Source::Endpoints
        }
        _ => Source::EndpointSlices,
    }
}

enum Change {
    Service(Box<Result<Event<Service>, watcher::Error>>),
    Slice(Result<Event<EndpointSlice>, watcher::Error>),
    Endpoints(Result<Event<Endpoints>, watcher::Error>),
    // Pods are large; boxing keeps every event of the loop small.
    Pod(Box<Result<Event<Pod>, watcher::Error>>),
    PodMeta(Box<Result<Event<PartialObjectMeta<Pod>>, watcher::Error>>),
}

fn watch_stream<K>(
    api: Api<K>,
    config: watcher::Config,
) -> BoxStream<'static, Result<Event<K>, watcher::Error>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    watcher::watcher(api, config).default_backoff().boxed()
}

/// Makes the watch streams of one Service (again, after a stall).
struct Streams {
    client: kube::Client,
    ns: String,
    name: String,
    source: Source,
    pod_watch: PodWatch,
}

impl Streams {
    fn services(&self) -> BoxStream<'static, Change> {
        let by_name = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
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
                let by_name =
                    watcher::Config::default().fields(&format!("metadata.name={}", self.name));
                watch_stream(
                    Api::<Endpoints>::namespaced(self.client.clone(), &self.ns),
                    by_name,
                )
                .map(Change::Endpoints)
                .boxed()
            }
            _ => {
                let by_label = watcher::Config::default()
                    .labels(&format!("kubernetes.io/service-name={}", self.name));
                watch_stream(
                    Api::<EndpointSlice>::namespaced(self.client.clone(), &self.ns),
                    by_label,
                )
                .map(Change::Slice)
                .boxed()
            }
        }
    }

    fn pods(&self, selector: &str) -> Option<BoxStream<'static, Change>> {
        let config = watcher::Config::default().labels(selector);
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

/// The watch loop of one Service. Holds only a weak reference to its entry, so that the
/// last subscription's drop ends it (the entry also aborts it).
async fn run(
    entry: Weak<Entry>,
    client: kube::Client,
    wanted: Source,
    pod_watch: PodWatch,
    ns: String,
    name: String,
    stall: Duration,
) {
    let source = choose_source(&client, &ns, &name, wanted).await;
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
    let mut services = streams.services();
    let mut endpoints = streams.endpoints();
    let mut pods: Option<BoxStream<'static, Change>> = None;
    let mut pod_selector: Option<String> = None;
    // A watch that delivers nothing for `stall` (no events; kube-rs keeps bookmarks to
    // itself) may be stalled: restart every watch. The relist is swapped in whole, so a
    // healthy quiet Service sees no change, and a stalled one catches up.
    let mut quiet_until = tokio::time::Instant::now() + stall;
    loop {
        let change = tokio::select! {
            Some(c) = services.next() => c,
            Some(c) = endpoints.next() => c,
            Some(c) = async { match pods.as_mut() { Some(p) => p.next().await, None => std::future::pending().await } } => c,
            _ = tokio::time::sleep_until(quiet_until) => {
                tracing::info!(service = %name, namespace = %ns, quiet = ?stall, "no watch event for a while; restarting the watches");
                services = streams.services();
                endpoints = streams.endpoints();
                pods = pod_selector.as_deref().and_then(|s| streams.pods(s));
                quiet_until = tokio::time::Instant::now() + stall;
                continue;
            }
            else => return,
        };
        quiet_until = tokio::time::Instant::now() + stall;
        let Some(entry) = entry.upgrade() else { return };
        let is_pod = matches!(change, Change::Pod(_) | Change::PodMeta(_));
        let ok = {
            let mut model = entry.model.lock().expect("model lock");
            let result = match change {
                Change::Service(r) => (*r).map(|e| model.service.apply(e, name_of, |s| s)),
                Change::Slice(r) => r.map(|e| model.slices.apply(e, name_of, |s| s)),
                Change::Endpoints(r) => r.map(|e| model.endpoints.apply(e, name_of, |s| s)),
                Change::Pod(r) => r.map(|e| {
                    model.pods.apply(e, name_of, |p| PodInfo::from_pod(&p));
                    model.pods_epoch += 1;
                }),
                Change::PodMeta(r) => r.map(|e| {
                    model
                        .pods
                        .apply(e, name_of, |p| PodInfo::from_metadata(&p.metadata));
                    model.pods_epoch += 1;
                }),
            };
            if model.pods_pending && (model.pods.synced || (result.is_err() && is_pod)) {
                if !model.pods.synced {
                    tracing::warn!(service = %name, namespace = %ns, "cannot list Pods: routing without Pod labels, so label subsets stay empty");
                }
                model.pods_pending = false;
            }
            match &result {
                Err(e) => {
                    tracing::warn!(service = %name, namespace = %ns, error = %e, "watch failed; serving the last known endpoints");
                    *entry.last_error.lock().expect("error lock") = Some(error_chain(e));
                }
                Ok(()) => *entry.last_error.lock().expect("error lock") = None,
            }
            // The Pod watch follows the Service's selector.
            let selector = selector_of(model.service.items.values().next());
            if selector != pod_selector {
                pod_selector = selector.clone();
                // Only the very first Pod list holds snapshots back; later selector
                // changes keep serving while the new list arrives.
                model.pods_pending = selector.is_some()
                    && pod_watch != PodWatch::None
                    && model.pods_epoch == 0
                    && !model.pods.synced;
                model.pods = Cache::default();
                pods = selector.and_then(|s| streams.pods(&s));
            }
            result.is_ok()
        };
        if ok {
            entry.clock.synced()
        } else {
            entry.clock.failed()
        }
        entry.publish();
    }
}

#[cfg(test)]
mod tests;
