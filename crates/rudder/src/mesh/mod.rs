//! The Mesh: a tower layer that sends each request addressed to a Kubernetes Service
//! straight to one of its Pods, chosen per request.
//!
//! For every request, [`Mesh`]:
//!
//! 1. reads the authority (URI, else `Host`) and decides whether it names a Service (the
//!    cluster DNS rule: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`, with an
//!    optional port; short names whose Service does not exist fall through to the inner
//!    service unchanged, as a Pod's DNS search path does, and so do IP literals and other
//!    names);
//! 2. subscribes to the Service port through discovery (once per Service, shared by every
//!    clone), waiting at most the sync timeout for the first snapshot;
//! 3. chooses the subset: the request's [`Subset`] extension, else the subset header
//!    (`x-rudder-subset: version=4.2`), else the first matching [`Route`], else the
//!    configured split, else the configured subset, else every ready Pod, with the
//!    configured fallback when it is empty;
//! 4. picks a Pod with the balancer (weighted P2C over peak EWMA by default) and rewrites
//!    the URI to the Pod's `ip:port`, keeping the caller's authority in `Host`; no DNS
//!    lookup, no ClusterIP (the response body tells where it went: [`Target`]);
//! 5. records the outcome: latency to response headers feeds peak EWMA; errors and
//!    (configurably) 5xx count towards outlier ejection; the request stays counted in
//!    flight until the response body ends or is dropped ([`ResponseBody`]). A request that
//!    failed before reaching any application (connection refused or reset before a
//!    response) is retried on another Pod when its body is empty, within a retry budget.
//!
//! # Why the URI names the Pod
//!
//! hyper-util's client pools connections by URI authority, so a URI naming the Pod gives
//! one pool per Pod for free and its connector never resolves anything. HTTP/1.1 Pods see
//! the Service's authority in `Host`, which the Mesh sets and the client keeps. For
//! HTTP/2, `:authority` comes from the URI; [`PodClient`](crate::PodClient) (hyper's
//! `client::conn` with one multiplexed connection per Pod) restores the Service's
//! authority from `Host` as `:authority` before sending, so HTTP/2 Pods see exactly what they would
//! through the ClusterIP. Any other inner service gets a normal absolute-form request.

mod body;
mod budget;
mod builder;
mod config;
mod error;
mod ext;
mod gamma;
mod head;
mod local;
mod replay;
mod route;
mod routed;
mod service;
#[cfg(test)]
mod tests;
mod view;

pub use self::body::ResponseBody;
pub use self::builder::{ConfigError, MeshBuilder};
pub use self::config::{
    AffinityConfig, AlgorithmConfig, CanaryGuardConfig, EjectionConfig, FallbackConfig, MeshConfig,
    RouteConfig, SplitLeg, TransportConfig,
};
pub use self::error::MeshError;
pub use self::ext::{Affinity, AffinityKey, Subset, Target};
pub use self::gamma::{CanaryGuard, CanaryView};
pub use self::replay::{DEFAULT_MAX_REPLAY_BODY, ReplayBody};
pub use self::route::Route;
pub use self::service::{Mesh, ResponseFuture};
pub use self::view::{EndpointView, ServiceView, UnroutableView, WatchView};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use rudder_balance::{PoolConfig, Selector, SelectorError, ServiceState, Split};
use rudder_k8s::ServiceRef;

use self::builder::{Settings, Source};
use self::routed::{Keep, Routed};

/// The conventional header naming a per-request subset; read only when enabled
/// ([`MeshBuilder::trust_subset_header`]).
pub const DEFAULT_SUBSET_HEADER: &str = "x-rudder-subset";

/// A [`tower::Layer`] wrapping an HTTP client in a [`Mesh`]. Cheap to clone; every Mesh
/// it makes shares discovery, load state and the retry budget.
///
/// ```no_run
/// # async fn demo(client: kube::Client) -> Result<(), rudder::BoxError> {
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower::{Layer, ServiceExt};
///
/// // The Mesh hands its inner client `rudder::ReplayBody`s (so retries can resend bodies).
/// let http = Client::builder(TokioExecutor::new()).build_http();
/// let mesh = rudder::MeshLayer::builder(client).build()?.layer(http);
/// let req = http::Request::get("http://hello-svc.default:8080/").body(Empty::<bytes::Bytes>::new())?;
/// let res = mesh.oneshot(req).await?;
/// println!("{}", res.status());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct MeshLayer {
    shared: Arc<Shared>,
}

impl MeshLayer {
    /// Settings for a Mesh discovering Services through `client`.
    pub fn builder(client: kube::Client) -> MeshBuilder {
        MeshBuilder::new(Some(client))
    }

    /// Settings for a Mesh over an existing [`Discovery`]: every Mesh (and any other user)
    /// of one `Discovery` shares its watches, one set per Service, however many layers a
    /// process builds. Take it from another layer with [`discovery`](Self::discovery), or
    /// build one with [`Discovery::builder`]; discovery settings belong to it (setting them
    /// here is a [`ConfigError::SharedDiscovery`]).
    ///
    /// [`Discovery`]: rudder_k8s::Discovery
    /// [`Discovery::builder`]: rudder_k8s::Discovery::builder
    pub fn builder_with_discovery(discovery: rudder_k8s::Discovery) -> MeshBuilder {
        MeshBuilder::with_discovery(discovery)
    }

    /// The discovery this Mesh watches Services with (none for a static Mesh): hand it to
    /// [`builder_with_discovery`](Self::builder_with_discovery) so that another layer
    /// shares its watches.
    pub fn discovery(&self) -> Option<&rudder_k8s::Discovery> {
        match &self.shared.source {
            Source::Kube(d) => Some(d),
            Source::Static(_) => None,
        }
    }

    /// Settings for a Mesh over fixed endpoint lists
    /// ([`static_service`](MeshBuilder::static_service)), without Kubernetes.
    pub fn builder_static() -> MeshBuilder {
        MeshBuilder::new(None)
    }

    /// Replaces the traffic split for every request that does not name its own subset;
    /// `None` returns to the configured subset. Takes effect with the next request, without
    /// touching the Service: a blue/green switch or a canary promotion is one call.
    pub fn set_split(&self, split: Option<Split>) {
        self.shared.split.store(split);
    }

    /// The connector for hyper-util's client that matches this Mesh's transport: tunnels
    /// through the API server when it was built with
    /// [`port_forward`](MeshBuilder::port_forward) or a `transport` of `port_forward` (or
    /// `auto` outside a cluster) in its [`MeshConfig`], direct TCP otherwise.
    #[cfg(feature = "port-forward")]
    pub fn connector(&self) -> crate::EitherConnector {
        match &self.shared.settings.port_forward {
            Some(pf) => pf.connector_for(crate::Transport::PortForward),
            None => {
                let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
                http.set_nodelay(true);
                crate::EitherConnector::Direct(http)
            }
        }
    }

    /// What the canary guard ([`MeshBuilder::canary_guard`]) sees: every canary backend of
    /// the HTTPRoutes this Mesh routed by, whether it is held back, and its requests and
    /// failures in the window. Empty without the guard.
    pub fn canaries(&self) -> Vec<CanaryView> {
        self.shared.canaries()
    }

    /// How many Services discovery watches for this Mesh right now (each with its
    /// Service, endpoints and Pod watches). Services unused for the
    /// [idle timeout](MeshBuilder::idle_timeout), deleted, or answered negatively lose
    /// theirs.
    pub fn watched_services(&self) -> usize {
        self.shared.watched_services()
    }

    /// Starts discovery of `services` (`name[.namespace]:port`, as
    /// [`ServiceRef`] parses them) now rather than on their first request, and waits until
    /// each has synced (at most the [sync timeout](MeshBuilder::sync_timeout) each). Call it
    /// at startup so that the first requests find their Pods known, and so that a missing
    /// permission or Service shows before traffic does.
    ///
    /// ```no_run
    /// # async fn demo(layer: rudder::MeshLayer) -> Result<(), rudder::MeshError> {
    /// layer.warm(["hello-svc:8080", "biz1.prod:8080"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn warm<I>(&self, services: I) -> Result<(), MeshError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let settings = &self.shared.settings;
        let mut routed = Vec::new();
        for name in services {
            let svc = ServiceRef::parse_in(name.as_ref(), &settings.default_namespace)
                .map_err(rudder_k8s::DiscoveryError::from)?;
            routed.push(self.shared.routed(&svc)?);
        }
        for r in routed {
            r.decided(settings.sync_timeout, true).await;
            let set = r.pool.snapshot();
            match set.set().state() {
                ServiceState::Forbidden(message) => {
                    return Err(MeshError::Forbidden {
                        service: r.service.to_string(),
                        message: message.clone(),
                    });
                }
                ServiceState::NotFound => {
                    return Err(MeshError::ServiceNotFound {
                        service: r.service.to_string(),
                    });
                }
                state if state.is_unsynced() => {
                    return Err(MeshError::NotSynced {
                        service: r.service.to_string(),
                        waited: settings.sync_timeout,
                        last_error: r.last_error(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether every Service this Mesh routes to has synced with the API at least once
    /// (for a readiness probe: `false` while any is pending or its first sync failed to
    /// reach the API). An answer counts as synced, negative ones included: a Service that
    /// does not exist, or that this client may not read (a name that falls through).
    pub fn is_synced(&self) -> bool {
        self.views().iter().all(|v| {
            !matches!(
                v.state,
                ServiceState::Pending | ServiceState::Unreachable(_)
            )
        })
    }

    /// The current view of every Service this Mesh has routed to.
    pub fn views(&self) -> Vec<ServiceView> {
        self.shared.views()
    }

    /// The current view of a Service (`name[.namespace]:port`), if this Mesh has routed to
    /// it.
    pub fn view(&self, service: &str) -> Option<ServiceView> {
        self.shared.view(service)
    }
}

impl<S> tower::Layer<S> for MeshLayer {
    type Service = Mesh<S>;

    fn layer(&self, inner: S) -> Mesh<S> {
        Mesh::new(inner, self.shared.clone())
    }
}

/// What an authority resolved to, cached per `(authority, port)`.
#[derive(Clone, Debug)]
pub(crate) enum Resolved {
    /// A Service port: one shared value, so a request takes one reference count rather
    /// than one per field (counts every core writes are the Mesh's scaling limit).
    Service(Arc<Addressed>),
    /// Not a Service name.
    Other,
}

/// A Service port a request's authority names.
#[derive(Debug)]
pub(crate) struct Addressed {
    pub(crate) routed: Arc<Routed>,
    /// A short name (`web`, `web.ns`), which goes out as written when it names no Service.
    pub(crate) short: bool,
    /// The authority as a `Host` value, made once rather than per request.
    pub(crate) host: http::HeaderValue,
    /// The cached authority: cloning it shares its bytes instead of copying the request's.
    pub(crate) authority: http::uri::Authority,
}

/// How many distinct authorities the resolution cache holds; beyond that (a client talking
/// to unboundedly many hosts) new ones are classified per request instead.
const RESOLVED_CACHE: usize = 4096;

/// Per authority text, per scheme default port (the port when the authority names none):
/// almost always one entry.
type Resolutions = HashMap<Box<str>, Vec<(u16, Resolved)>, foldhash::fast::RandomState>;

/// How many distinct subset header values the parse cache holds; others (a caller sending
/// ever new ones) are parsed per request.
const HEADER_SELECTORS: usize = 64;

/// Subset header values, as sent, and the selectors they parse to.
type HeaderSelectors = HashMap<Box<str>, Arc<Selector>, foldhash::fast::RandomState>;

/// State shared by every clone of a Mesh.
/// Where an HTTPRoute sends a request.
pub(crate) struct RouteChoice {
    /// The backend Service.
    pub(crate) routed: Arc<Routed>,
    /// The rule's request timeout.
    pub(crate) timeout: Option<Duration>,
    /// The rule and the backend's index in it, to count the outcome for the canary guard.
    pub(crate) rule: (Arc<gamma::Target>, usize),
}

#[derive(Debug)]
pub(crate) struct Shared {
    source: Source,
    /// Settings, telemetry and retry budget (`Shared` derefs to them).
    policy: Arc<Policy>,
    routed: RwLock<HashMap<ServiceRef, Arc<Routed>>>,
    /// Read on every request without a lock; copied on the rare insert.
    resolved: ArcSwap<Resolutions>,
    resolving: Mutex<()>,
    /// Read on every request with a subset header; copied on the rare insert.
    header_selectors: ArcSwap<HeaderSelectors>,
    /// The split in force (see [`MeshLayer::set_split`]).
    pub(crate) split: SplitCell,
    /// Per namespace routed to, its HTTPRoutes (compiled as discovery publishes them).
    gamma: RwLock<HashMap<String, Arc<gamma::NsRoutes>>>,
    /// Itself, for the sweeper task it starts on first use.
    me: Weak<Shared>,
    sweeper: OnceLock<()>,
}

/// What a request reads once its call returned: the Mesh's settings, telemetry and retry
/// budget. Each Service's routing state holds it too, so a request in flight reaches it
/// through the Service it resolved to and takes no reference count of its own on a
/// counter every thread shares.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) settings: Settings,
    pub(crate) budget: budget::RetryBudget,
    pub(crate) telemetry: Arc<crate::telemetry::Telemetry>,
}

impl std::ops::Deref for Shared {
    type Target = Policy;

    fn deref(&self) -> &Policy {
        &self.policy
    }
}

/// The split in force, with a flag that spares requests the load while there is none
/// (most Meshes never set one).
#[derive(Debug)]
pub(crate) struct SplitCell {
    any: AtomicBool,
    split: ArcSwapOption<Split>,
}

impl SplitCell {
    fn new(split: Option<Arc<Split>>) -> Self {
        Self {
            any: AtomicBool::new(split.is_some()),
            split: ArcSwapOption::new(split),
        }
    }

    fn store(&self, split: Option<Split>) {
        // The flag goes up after the split is there and down after it is gone, so a
        // request that sees it up finds a split or, at worst, none.
        let any = split.is_some();
        if any {
            self.split.store(split.map(Arc::new));
            self.any.store(true, Ordering::Release);
        } else {
            self.any.store(false, Ordering::Release);
            self.split.store(None);
        }
    }

    /// The split in force, if any.
    pub(crate) fn load(&self) -> Option<Arc<Split>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.split.load_full()
    }
}

impl Shared {
    fn new(
        source: Source,
        settings: Settings,
        telemetry: crate::telemetry::Telemetry,
        me: Weak<Shared>,
    ) -> Self {
        let (percent, min) = settings.retry_budget;
        let telemetry = telemetry.with_subsets(settings.selectors());
        Self {
            me,
            sweeper: OnceLock::new(),
            split: SplitCell::new(settings.split.clone()),
            policy: Arc::new(Policy {
                telemetry: Arc::new(telemetry),
                budget: budget::RetryBudget::new(percent, min),
                settings,
            }),
            source,
            routed: RwLock::new(HashMap::new()),
            gamma: RwLock::new(HashMap::new()),
            resolved: ArcSwap::default(),
            resolving: Mutex::new(()),
            header_selectors: ArcSwap::default(),
        }
    }

    /// The selector a subset header value parses to: parsed once per distinct value (up
    /// to [`HEADER_SELECTORS`] of them), so a request carrying one allocates nothing.
    pub(crate) fn header_selector(&self, text: &str) -> Result<Arc<Selector>, SelectorError> {
        if let Some(s) = self.header_selectors.load().get(text) {
            return Ok(s.clone());
        }
        let selector = Arc::new(text.parse::<Selector>()?);
        let _one = self.resolving.lock().unwrap_or_else(|e| e.into_inner());
        let cache = self.header_selectors.load();
        if cache.len() < HEADER_SELECTORS && !cache.contains_key(text) {
            let mut next = HeaderSelectors::clone(&cache);
            next.insert(text.into(), selector.clone());
            self.header_selectors.store(Arc::new(next));
        }
        Ok(selector)
    }

    /// Resolves a request's authority (the request path's first step): cached, so the
    /// name rule and the Service lookup run once per authority, not per request.
    pub(crate) fn resolve(
        &self,
        authority: &http::uri::Authority,
        uri: &http::Uri,
    ) -> Result<Resolved, MeshError> {
        // Keyed by the authority's text as written (one fast hash, no per-byte case
        // folding) and the scheme's default port, which is the port when the authority
        // names none; the port itself is parsed only on a miss.
        let default_port = crate::authority::default_port(uri);
        let cached = |map: &Resolutions| {
            map.get(authority.as_str())?
                .iter()
                .find(|(p, _)| *p == default_port)
                .map(|(_, r)| r.clone())
        };
        if let Some(r) = cached(&self.resolved.load()) {
            return Ok(r);
        }
        let port = crate::authority::port_of(authority, uri);
        let named = crate::authority::classify(
            authority.host(),
            port,
            &self.settings.default_namespace,
            &self.settings.cluster_domain,
        );
        let allowed = |svc: &ServiceRef| {
            self.settings
                .namespaces
                .as_ref()
                .is_none_or(|list| list.iter().any(|ns| ns == svc.namespace()))
        };
        let resolved = match named {
            crate::authority::Named::Service { svc, .. } if !allowed(&svc) => Resolved::Other,
            crate::authority::Named::Service { svc, short } => {
                Resolved::Service(Arc::new(Addressed {
                    routed: self.routed(&svc)?,
                    short,
                    host: http::HeaderValue::from_str(authority.as_str())
                        .expect("a URI authority is a valid header value"),
                    authority: authority.as_str().parse().expect("an authority parses"),
                }))
            }
            crate::authority::Named::Other => Resolved::Other,
        };
        let _one = self.resolving.lock().unwrap_or_else(|e| e.into_inner());
        let cache = self.resolved.load();
        if cache.len() < RESOLVED_CACHE && cached(&cache).is_none() {
            let mut next = Resolutions::clone(&cache);
            next.entry(authority.as_str().into())
                .or_default()
                .push((default_port, resolved.clone()));
            self.resolved.store(Arc::new(next));
        }
        Ok(resolved)
    }

    /// The routing state of `svc`, subscribing on first use.
    /// The compiled HTTPRoutes of `svc`'s namespace, once listed (waiting at most
    /// `bound` for the first list); `None` for a static Mesh or routes not listed in time.
    pub(crate) async fn route_table(
        &self,
        routed: &Routed,
        bound: Duration,
    ) -> Result<Option<Arc<gamma::Compiled>>, MeshError> {
        if let Some(routes) = routed.routes.get() {
            return Ok(routes.ready(bound).await);
        }
        let Source::Kube(discovery) = &self.source else {
            return Ok(None);
        };
        let ns = routed.service.namespace();
        let routes = self.gamma.read().expect("gamma lock").get(ns).cloned();
        let routes = match routes {
            Some(r) => r,
            None => {
                let mut all = self.gamma.write().expect("gamma lock");
                match all.get(ns) {
                    Some(r) => r.clone(),
                    None => {
                        let sub = discovery.subscribe_routes(ns)?;
                        let r =
                            Arc::new(gamma::NsRoutes::follow(ns, sub, self.settings.canary_guard));
                        all.insert(ns.to_string(), r.clone());
                        r
                    }
                }
            }
        };
        let _ = routed.routes.set(routes.clone());
        let compiled = routes.ready(bound).await;
        if compiled.is_none() {
            tracing::debug!(
                namespace = ns,
                "HTTPRoutes not listed in time; routing without them"
            );
        }
        Ok(compiled)
    }

    /// [`route_table`](Self::route_table) when it needs no wait: `Some` once the routes
    /// of `routed`'s namespace are known (or there are none to know), `None` while its
    /// first request must still subscribe or wait for the list.
    pub(crate) fn route_table_now(
        &self,
        routed: &Routed,
    ) -> Option<Option<arc_swap::Guard<Arc<gamma::Compiled>>>> {
        match (routed.routes.get(), &self.source) {
            (Some(routes), _) => routes.now().map(Some),
            (None, Source::Kube(_)) => None,
            (None, _) => Some(None),
        }
    }

    /// Where an HTTPRoute attached to `svc` sends `req`: the backend Service's routing
    /// state and the rule's request timeout, or `None` when no rule matches.
    pub(crate) fn http_route<B>(
        &self,
        table: &gamma::Compiled,
        svc: &ServiceRef,
        req: &http::Request<B>,
    ) -> Result<Option<RouteChoice>, MeshError> {
        let Some(target) = table.target(svc, req) else {
            return Ok(None);
        };
        let (index, backend) = target.pick().ok_or_else(|| MeshError::NoRouteBackend {
            service: svc.to_string(),
            route: target.route.clone(),
        })?;
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(service = %svc, route = %target.route, backend = %backend, "HTTPRoute");
        }
        Ok(Some(RouteChoice {
            routed: self.routed(backend)?,
            timeout: target.timeout,
            rule: (target.clone(), index),
        }))
    }

    pub(crate) fn routed(&self, svc: &ServiceRef) -> Result<Arc<Routed>, MeshError> {
        if let Some(r) = self.routed.read().expect("routed lock").get(svc) {
            return Ok(r.clone());
        }
        let mut routed = self.routed.write().expect("routed lock");
        if let Some(r) = routed.get(svc) {
            return Ok(r.clone());
        }
        let limit = self.settings.max_services;
        if routed.len() >= limit {
            // Negative answers kept for their TTL make room first.
            let released: Vec<_> = routed
                .values()
                .filter(|r| r.is_released())
                .cloned()
                .collect();
            drop(routed);
            self.forget(&released);
            routed = self.routed.write().expect("routed lock");
            if let Some(r) = routed.get(svc) {
                return Ok(r.clone());
            }
            if routed.len() >= limit {
                return Err(MeshError::TooManyServices { limit });
            }
        }
        let (rx, keep) = match &self.source {
            Source::Kube(discovery) => {
                let sub = discovery.subscribe(svc)?;
                (sub.receiver(), Keep::Subscription(sub))
            }
            Source::Static(statics) => {
                let key = (svc.namespace().to_string(), svc.name().to_string());
                let rx = match statics.get(&key) {
                    Some(s) => s.subscribe(),
                    None => {
                        tokio::sync::watch::channel(Arc::new(rudder_balance::EndpointSet::new(
                            rudder_balance::ServiceState::NotFound,
                            Vec::new(),
                        )))
                        .1
                    }
                };
                (rx, Keep::Static)
            }
        };
        let s = &self.settings;
        let config = PoolConfig {
            algorithm: s.algorithm,
            selectors: s.selectors(),
            zone: s.zone.clone(),
            slow_start: s.slow_start,
            ejection: s.ejection.clone(),
            ..PoolConfig::default()
        };
        #[allow(unused_mut, reason = "set only with the tls feature")]
        let mut r = Routed::new(svc.clone(), rx, keep, config, self.policy.clone());
        #[cfg(feature = "tls")]
        {
            r.tls_name = s.tls.as_ref().and_then(|t| t.server_name_of(svc));
        }
        let r = Arc::new(r);
        routed.insert(svc.clone(), r.clone());
        drop(routed);
        self.start_sweeper();
        Ok(r)
    }

    /// Starts the task that releases idle and negative Services (once per Mesh).
    fn start_sweeper(&self) {
        self.sweeper.get_or_init(|| {
            let s = &self.settings;
            let every = (s.idle_timeout.min(s.negative_ttl) / 4)
                .clamp(Duration::from_millis(20), Duration::from_secs(5));
            tokio::spawn(sweep(self.me.clone(), every));
        });
    }

    /// One sweep: Services with a negative answer (no such Service or port, or forbidden)
    /// lose their watches and keep the answer for `negative_ttl`; Services unused for
    /// `idle_timeout`, and negative answers that expired, are forgotten (the next request
    /// subscribes again).
    pub(crate) fn sweep(&self, now: Instant) {
        let s = &self.settings;
        let mut forget = Vec::new();
        for r in self.routed.read().expect("routed lock").values() {
            let mut last_used = r.last_used.lock().unwrap_or_else(|e| e.into_inner());
            if r.take_used() {
                *last_used = now;
            }
            let mut released = r.released.lock().unwrap_or_else(|e| e.into_inner());
            match *released {
                Some(at) if now.duration_since(at) >= s.negative_ttl => forget.push(r.clone()),
                Some(_) => {}
                None if r.is_negative() => {
                    tracing::debug!(service = %r.service, "no such Service or port, or not allowed: releasing its watches");
                    r.release();
                    *released = Some(now);
                }
                None if now.duration_since(*last_used) >= s.idle_timeout => {
                    tracing::debug!(service = %r.service, idle = ?s.idle_timeout, "unused: releasing its watches");
                    forget.push(r.clone());
                }
                None => {}
            }
        }
        self.forget(&forget);
    }

    /// Drops the routing state of `gone` (from the map and the authority cache) and
    /// releases its watches; in-flight requests keep what they hold.
    fn forget(&self, gone: &[Arc<Routed>]) {
        if gone.is_empty() {
            return;
        }
        {
            let mut routed = self.routed.write().expect("routed lock");
            for r in gone {
                if routed.get(&r.service).is_some_and(|x| Arc::ptr_eq(x, r)) {
                    routed.remove(&r.service);
                }
            }
        }
        let _one = self.resolving.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Resolutions::clone(&self.resolved.load());
        next.retain(|_, entries| {
            entries.retain(|(_, resolved)| match resolved {
                Resolved::Service(a) => !gone.iter().any(|f| Arc::ptr_eq(f, &a.routed)),
                Resolved::Other => true,
            });
            !entries.is_empty()
        });
        self.resolved.store(Arc::new(next));
        for r in gone {
            r.release();
        }
        // A namespace none of whose Services is routed to any more loses its route watch.
        let used: std::collections::HashSet<String> = self
            .routed
            .read()
            .expect("routed lock")
            .keys()
            .map(|s| s.namespace().to_string())
            .collect();
        self.gamma
            .write()
            .expect("gamma lock")
            .retain(|ns, _| used.contains(ns));
    }

    /// The canary guard's view of the HTTPRoutes of every namespace routed to.
    pub(crate) fn canaries(&self) -> Vec<gamma::CanaryView> {
        let all: Vec<Arc<gamma::NsRoutes>> = self
            .gamma
            .read()
            .expect("gamma lock")
            .values()
            .cloned()
            .collect();
        all.iter().flat_map(|r| r.canaries()).collect()
    }

    /// How many Services have running watches.
    fn watched_services(&self) -> usize {
        match &self.source {
            Source::Kube(discovery) => discovery.watched_services(),
            Source::Static(_) => 0,
        }
    }

    /// Every Service port routed to now.
    #[cfg(feature = "metrics")]
    pub(crate) fn routed_now(&self) -> Vec<Arc<Routed>> {
        let routed = self.routed.read().expect("routed lock");
        routed.values().cloned().collect()
    }

    pub(crate) fn views(&self) -> Vec<ServiceView> {
        let routed: Vec<_> = self
            .routed
            .read()
            .expect("routed lock")
            .values()
            .cloned()
            .collect();
        routed.iter().map(|r| ServiceView::of(r)).collect()
    }

    pub(crate) fn view(&self, service: &str) -> Option<ServiceView> {
        let svc = ServiceRef::parse_in(service, &self.settings.default_namespace).ok()?;
        let routed = self.routed.read().expect("routed lock").get(&svc)?.clone();
        Some(ServiceView::of(&routed))
    }
}

/// The sweeper: runs [`Shared::sweep`] every `every` until the Mesh is dropped.
async fn sweep(shared: Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.sweep(Instant::now());
    }
}
