//! Building a [`MeshLayer`]: where endpoints come from and how requests are routed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use rudder_balance::{
    Algorithm, Ejection, Fallback, Selector, SelectorError, SlowStart, Split, SplitError,
};
use rudder_k8s::{Discovery, DiscoveryBuilder, ServiceRef, ServiceRefError, Static};
use thiserror::Error;

use super::config::{AffinityConfig, AlgorithmConfig, FallbackConfig, MeshConfig};
use super::ext::Affinity;
use super::{MeshLayer, Shared};

/// Why a configuration was refused (at build time, so requests have nothing left to
/// reject).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A label selector (in `field`) does not parse.
    #[error("invalid selector in {field}: {source}")]
    Selector {
        /// The setting holding it.
        field: &'static str,
        /// What is wrong, naming the offending part.
        source: SelectorError,
    },
    /// The split has no weight.
    #[error("invalid split: {0}")]
    Split(#[from] SplitError),
    /// The subset header is not a valid header name.
    #[error("invalid subset header name {0:?}")]
    HeaderName(String),
    /// A static Service name does not parse.
    #[error("invalid static Service: {0}")]
    Service(#[from] ServiceRefError),
    /// A route rule names neither a subset nor a split.
    #[error("a route needs a destination: to_subset or to_split")]
    RouteWithoutDestination,
    /// A route's header name or value is invalid.
    #[error("invalid route header {0:?}")]
    RouteHeader(String),
    /// The retry budget share is not within 0–1000 %.
    #[error("retry budget percent {0} is not within 0-1000")]
    RetryBudget(f32),
    /// The retries always allowed per second exceed 1,000,000.
    #[error("retry floor {0} per second is above 1000000")]
    RetryFloor(u32),
    /// Slow start's aggression is not a positive number, or its minimum weight is not
    /// within 0-100 %.
    #[error("invalid slow start: aggression {aggression}, minimum weight {min_weight_percent} %")]
    SlowStart {
        /// The ramp's curve.
        aggression: f64,
        /// The smallest share of its weight, in percent.
        min_weight_percent: f64,
    },
    /// The canary guard's margin or probe share is not within 0-1, or its minimum request
    /// count or window is zero.
    #[error("invalid canary guard: {0:?}")]
    CanaryGuard(super::CanaryGuard),
    /// A status code to retry on is not a valid HTTP status.
    #[error("invalid status code {0} in retry_on_status")]
    RetryStatus(u16),
    /// The affinity header is not a valid header name.
    #[error("invalid affinity header name {0:?}")]
    AffinityHeader(String),
    /// The configuration asks for a transport this build cannot provide (port-forward
    /// without the `port-forward` feature, or without a kube client).
    #[error("transport {0:?} is not available: {1}")]
    Transport(super::TransportConfig, &'static str),
    /// Discovery settings were given for a Mesh over a shared [`Discovery`], whose
    /// settings are its own.
    #[error(
        "discovery settings ({0}) cannot apply to a shared Discovery; set them where it is built"
    )]
    SharedDiscovery(&'static str),
}

#[derive(Debug)]
pub(crate) enum Source {
    Kube(Discovery),
    /// Fixed endpoint lists keyed by (namespace, name).
    Static(HashMap<(String, String), Static>),
}

/// Routing settings, validated.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) default_namespace: String,
    pub(crate) cluster_domain: String,
    pub(crate) subset: Option<Selector>,
    pub(crate) fallback: Fallback,
    pub(crate) subset_header: Option<HeaderName>,
    pub(crate) split: Option<Arc<Split>>,
    pub(crate) routes: Vec<super::Route>,
    pub(crate) algorithm: Algorithm,
    pub(crate) sync_timeout: Duration,
    pub(crate) pass_through: bool,
    pub(crate) dns_fallback: bool,
    pub(crate) failure_on_5xx: bool,
    /// Guards HTTPRoute canaries (off by default).
    pub(crate) canary_guard: Option<super::CanaryGuard>,
    /// Pods are reached through port-forward tunnels (the connector's registry).
    #[cfg(feature = "port-forward")]
    pub(crate) port_forward: Option<crate::PortForward>,
    pub(crate) max_retries: u32,
    pub(crate) retry_budget: (f32, u32),
    pub(crate) timeout: Option<Duration>,
    pub(crate) response_timeout: Option<Duration>,
    pub(crate) max_replay_body: usize,
    pub(crate) retry_statuses: Vec<http::StatusCode>,
    pub(crate) slow_start: Option<SlowStart>,
    pub(crate) affinity: Option<Affinity>,
    pub(crate) ejection: Ejection,
    /// The caller's zone, for topology-aware routing.
    pub(crate) zone: Option<String>,
    /// Discovery restarts a Service's watches after this long without an event.
    pub(crate) watch_stall_timeout: Option<Duration>,
    /// A Service unused this long loses its watches.
    pub(crate) idle_timeout: Duration,
    /// How long a negative answer (no such Service or port, forbidden) is kept.
    pub(crate) negative_ttl: Duration,
    /// The only namespaces whose Service names are routed (`None`: all).
    pub(crate) namespaces: Option<Vec<String>>,
    /// The most distinct Services routed (and watched) at once.
    pub(crate) max_services: usize,
    /// TLS to Pods: the server name of each Service, recorded per Pod for the connectors.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::TlsConfig>,
}

/// Settings for a [`MeshLayer`]; start from [`MeshLayer::builder`] (Kubernetes discovery)
/// or [`MeshLayer::builder_static`] (fixed endpoint lists).
pub struct MeshBuilder {
    client: Option<kube::Client>,
    /// A discovery shared with other Meshes (`MeshLayer::builder_with_discovery`).
    shared_discovery: Option<Discovery>,
    discovery: Option<Box<dyn FnOnce(DiscoveryBuilder) -> DiscoveryBuilder + Send>>,
    statics: HashMap<(String, String), Static>,
    settings: Settings,
    error: Option<ConfigError>,
    telemetry: crate::telemetry::Telemetry,
}

impl std::fmt::Debug for MeshBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshBuilder")
            .field("kube", &self.client.is_some())
            .field("statics", &self.statics.keys().collect::<Vec<_>>())
            .field("settings", &self.settings)
            .finish()
    }
}

/// The highest retry floor accepted (tower's budget refuses `i32::MAX` and above).
const MAX_RETRY_FLOOR: u32 = 1_000_000;

fn selector(field: &'static str, s: &str) -> Result<Selector, ConfigError> {
    s.parse()
        .map_err(|source| ConfigError::Selector { field, source })
}

fn slow_start(ramp: SlowStart) -> Result<SlowStart, ConfigError> {
    let valid = ramp.aggression.is_finite()
        && ramp.aggression > 0.0
        && (0.0..=1.0).contains(&ramp.min_weight);
    if !valid {
        return Err(ConfigError::SlowStart {
            aggression: ramp.aggression,
            min_weight_percent: ramp.min_weight * 100.0,
        });
    }
    Ok(ramp)
}

impl Settings {
    /// Every selector the configuration names: the static subset, split legs, route
    /// targets and the fallback. Pools index them up front, and they are the only values
    /// of the `subset` metric label.
    pub(crate) fn selectors(&self) -> Vec<Selector> {
        let mut selectors: Vec<Selector> = self.subset.iter().cloned().collect();
        if let Some(split) = &self.split {
            selectors.extend(split.legs().iter().map(|(sel, _)| sel.clone()));
        }
        for route in &self.routes {
            selectors.extend(route.selectors());
        }
        if let Fallback::Default(sel) = &self.fallback {
            selectors.push(sel.clone());
        }
        selectors
    }
}

impl MeshBuilder {
    pub(crate) fn with_discovery(discovery: Discovery) -> Self {
        let mut b = Self::new(None);
        b.settings.default_namespace = discovery.default_namespace().to_string();
        b.shared_discovery = Some(discovery);
        b
    }

    pub(crate) fn new(client: Option<kube::Client>) -> Self {
        let default_namespace = client
            .as_ref()
            .map_or("default", |c| c.default_namespace())
            .to_string();
        let config = MeshConfig::default();
        Self {
            client,
            shared_discovery: None,
            discovery: None,
            statics: HashMap::new(),
            settings: Settings {
                default_namespace,
                cluster_domain: config.cluster_domain.clone(),
                subset: None,
                fallback: Fallback::NoFallback,
                subset_header: None,
                split: None,
                routes: Vec::new(),
                algorithm: Algorithm::default(),
                sync_timeout: config.sync_timeout(),
                pass_through: config.pass_through,
                dns_fallback: config.dns_fallback,
                failure_on_5xx: config.failure_on_5xx,
                canary_guard: None,
                #[cfg(feature = "port-forward")]
                port_forward: None,
                max_retries: config.max_retries,
                retry_budget: (config.retry_budget_percent, config.retry_min_per_second),
                timeout: None,
                response_timeout: config.response_timeout(),
                max_replay_body: config.max_replay_body_bytes,
                retry_statuses: Vec::new(),
                slow_start: None,
                affinity: None,
                ejection: Ejection::default(),
                zone: None,
                watch_stall_timeout: None,
                idle_timeout: config.idle_timeout(),
                negative_ttl: config.negative_ttl(),
                namespaces: None,
                max_services: config.max_services,
                #[cfg(feature = "tls")]
                tls: None,
            },
            error: None,
            telemetry: crate::telemetry::Telemetry::default(),
        }
    }

    /// Applies every setting of `config` (replacing earlier ones).
    pub fn config(mut self, config: &MeshConfig) -> Result<Self, ConfigError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let s = &mut self.settings;
        if let Some(ns) = &config.default_namespace {
            s.default_namespace = ns.clone();
        }
        s.cluster_domain = config.cluster_domain.trim_matches('.').to_string();
        s.subset = config
            .subset
            .as_deref()
            .map(|v| selector("subset", v))
            .transpose()?;
        s.fallback = match &config.fallback {
            FallbackConfig::None => Fallback::NoFallback,
            FallbackConfig::Any => Fallback::AnyEndpoint,
            FallbackConfig::Default(v) => Fallback::Default(selector("fallback", v)?),
        };
        s.subset_header = config
            .subset_header
            .as_deref()
            .map(|h| HeaderName::try_from(h).map_err(|_| ConfigError::HeaderName(h.into())))
            .transpose()?;
        s.split = if config.split.is_empty() {
            None
        } else {
            let legs = config
                .split
                .iter()
                .map(|l| Ok((selector("split", &l.selector)?, l.weight)))
                .collect::<Result<Vec<_>, ConfigError>>()?;
            Some(Arc::new(Split::new(legs)?))
        };
        s.routes = config
            .routes
            .iter()
            .map(|r| {
                let mut route = super::Route::new();
                if let Some(p) = &r.path_prefix {
                    route = route.path_prefix(p.clone());
                }
                for (k, v) in &r.headers {
                    let name = HeaderName::try_from(k.as_str())
                        .map_err(|_| ConfigError::RouteHeader(k.clone()))?;
                    let value = http::HeaderValue::try_from(v.as_str())
                        .map_err(|_| ConfigError::RouteHeader(format!("{k}: {v}")))?;
                    route = route.header_typed(name, value);
                }
                route = match (&r.subset, r.split.is_empty()) {
                    (Some(sel), true) => route.to_subset(selector("routes[].subset", sel)?),
                    (None, false) => {
                        let legs = r
                            .split
                            .iter()
                            .map(|l| Ok((selector("routes[].split", &l.selector)?, l.weight)))
                            .collect::<Result<Vec<_>, ConfigError>>()?;
                        route.to_split(Split::new(legs)?)
                    }
                    _ => return Err(ConfigError::RouteWithoutDestination),
                };
                Ok(route)
            })
            .collect::<Result<_, ConfigError>>()?;
        s.algorithm = match config.algorithm {
            AlgorithmConfig::P2cPeakEwma => Algorithm::P2cPeakEwma,
            AlgorithmConfig::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
            AlgorithmConfig::LeastRequests => Algorithm::LeastRequests,
            AlgorithmConfig::Maglev => Algorithm::Maglev,
        };
        s.affinity = match &config.affinity {
            None => None,
            Some(AffinityConfig::Header(h)) => Some(Affinity::Header(
                HeaderName::try_from(h.as_str())
                    .map_err(|_| ConfigError::AffinityHeader(h.clone()))?,
            )),
            Some(AffinityConfig::Cookie(c)) => Some(Affinity::Cookie(c.clone())),
        };
        s.sync_timeout = config.sync_timeout();
        s.pass_through = config.pass_through;
        s.dns_fallback = config.dns_fallback;
        s.failure_on_5xx = config.failure_on_5xx;
        s.max_retries = config.max_retries;
        if !(0.0..=1000.0).contains(&config.retry_budget_percent) {
            return Err(ConfigError::RetryBudget(config.retry_budget_percent));
        }
        if config.retry_min_per_second > MAX_RETRY_FLOOR {
            return Err(ConfigError::RetryFloor(config.retry_min_per_second));
        }
        s.retry_budget = (config.retry_budget_percent, config.retry_min_per_second);
        s.timeout = config.timeout_ms.map(Duration::from_millis);
        s.response_timeout = config.response_timeout();
        s.max_replay_body = config.max_replay_body_bytes;
        s.retry_statuses = config
            .retry_on_status
            .iter()
            .map(|c| http::StatusCode::from_u16(*c).map_err(|_| ConfigError::RetryStatus(*c)))
            .collect::<Result<_, _>>()?;
        s.zone.clone_from(&config.zone);
        s.watch_stall_timeout = config.watch_stall_timeout_ms.map(Duration::from_millis);
        s.idle_timeout = config.idle_timeout();
        s.negative_ttl = config.negative_ttl();
        s.namespaces.clone_from(&config.namespaces);
        s.max_services = config.max_services;
        s.slow_start = match config.slow_start_ms {
            None => None,
            Some(ms) => Some(slow_start(SlowStart {
                window: Duration::from_millis(ms),
                aggression: config.slow_start_aggression,
                min_weight: f64::from(config.slow_start_min_weight_percent) / 100.0,
            })?),
        };
        let tunnels = match config.transport {
            super::TransportConfig::Direct => false,
            super::TransportConfig::PortForward => true,
            super::TransportConfig::Auto => {
                #[cfg(feature = "port-forward")]
                {
                    crate::Transport::auto() == crate::Transport::PortForward
                }
                #[cfg(not(feature = "port-forward"))]
                {
                    false
                }
            }
        };
        if tunnels {
            #[cfg(feature = "port-forward")]
            match &self.client {
                Some(client) => {
                    self.settings.port_forward = Some(crate::PortForward::new(client.clone()));
                }
                None => {
                    return Err(ConfigError::Transport(
                        config.transport,
                        "port-forward needs the Mesh's kube client (MeshLayer::builder)",
                    ));
                }
            }
            #[cfg(not(feature = "port-forward"))]
            return Err(ConfigError::Transport(
                config.transport,
                "build rudder with the port-forward feature",
            ));
        }
        let s = &mut self.settings;
        if let Some(g) = &config.canary_guard {
            let guard = super::CanaryGuard::new(
                g.margin_percent / 100.0,
                g.min_requests,
                Duration::from_millis(g.window_ms),
                g.probe_percent / 100.0,
            );
            if !guard.is_valid() {
                return Err(ConfigError::CanaryGuard(guard));
            }
            s.canary_guard = Some(guard);
        }
        let e = &config.ejection;
        s.ejection = Ejection {
            consecutive_failures: e.consecutive_failures,
            base_time: Duration::from_millis(e.base_time_ms),
            max_time: Duration::from_millis(e.max_time_ms),
            max_ejected_percent: e.max_ejected_percent.min(100),
        };
        Ok(self)
    }

    /// Namespace of Service names written without one (default: the kube client's).
    pub fn default_namespace(mut self, ns: impl Into<String>) -> Self {
        self.settings.default_namespace = ns.into();
        self
    }

    /// The cluster DNS domain (default `cluster.local`).
    pub fn cluster_domain(mut self, domain: impl Into<String>) -> Self {
        self.settings.cluster_domain = domain.into().trim_matches('.').to_string();
        self
    }

    /// Sends every request to the Pods matching `selector`, unless the request names its
    /// own subset (extension or header).
    pub fn subset(mut self, selector: Selector) -> Self {
        self.settings.subset = Some(selector);
        self
    }

    /// What to do when a subset is empty (default: fail with `NoEndpoints`).
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.settings.fallback = fallback;
        self
    }

    /// The header carrying a per-request subset; `None` (the default) ignores subset
    /// headers.
    ///
    /// Off by default because a header is whatever the caller says: a service that
    /// forwards incoming headers to its own calls (tracing and auth middlewares often do)
    /// would let any outside client steer its traffic to any label subset, including Pods
    /// not meant to be reached (a canary, a debug build). Turn it on for clients whose
    /// requests are built by trusted code, and strip the header at your edge. Code can
    /// always choose a subset with the [`Subset`](crate::Subset) request extension, which
    /// no remote caller can set.
    pub fn subset_header(mut self, header: Option<HeaderName>) -> Self {
        self.settings.subset_header = header;
        self
    }

    /// Reads per-request subsets from `x-rudder-subset` ([`DEFAULT_SUBSET_HEADER`](
    /// crate::mesh::DEFAULT_SUBSET_HEADER)); see [`subset_header`](Self::subset_header)
    /// for why this is off by default.
    pub fn trust_subset_header(self) -> Self {
        self.subset_header(Some(HeaderName::from_static(super::DEFAULT_SUBSET_HEADER)))
    }

    /// Splits requests between subsets by weight (canary, blue/green); takes precedence
    /// over [`subset`](Self::subset), not over a request's own subset.
    pub fn split(mut self, split: Split) -> Self {
        self.settings.split = Some(Arc::new(split));
        self
    }

    /// Adds a route rule; rules are tried in the order added, after a request's own subset
    /// (extension or header) and before the split and the static subset.
    pub fn route(mut self, route: super::Route) -> Result<Self, ConfigError> {
        if !route.has_destination() {
            return Err(ConfigError::RouteWithoutDestination);
        }
        self.settings.routes.push(route);
        Ok(self)
    }

    /// The balancing algorithm (default weighted P2C over peak EWMA).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.settings.algorithm = algorithm;
        self
    }

    /// How long a request waits for its Service's first discovery sync (default 5 s).
    pub fn sync_timeout(mut self, timeout: Duration) -> Self {
        self.settings.sync_timeout = timeout;
        self
    }

    /// Whether requests that do not name a Service pass through unchanged (default) or
    /// fail with `NotAService`.
    pub fn pass_through(mut self, pass: bool) -> Self {
        self.settings.pass_through = pass;
        self
    }

    /// When discovery cannot sync a Service (no credentials, forbidden, API unreachable),
    /// send its requests to the original authority — cluster DNS and the ClusterIP — and
    /// log it, instead of failing with `NotSynced` (the default).
    pub fn dns_fallback(mut self, enabled: bool) -> Self {
        self.settings.dns_fallback = enabled;
        self
    }

    /// Whether 5xx responses count as endpoint failures for ejection (default true).
    pub fn failure_on_5xx(mut self, enabled: bool) -> Self {
        self.settings.failure_on_5xx = enabled;
        self
    }

    /// Retries for requests that failed before reaching an application (connection
    /// refused or reset before any response), on another endpoint, when the body is empty;
    /// at most `max` per request and within a budget of `percent` of requests plus
    /// `min_per_second` (defaults 2, 20 %, 10/s). `max` 0 disables retries.
    pub fn retries(mut self, max: u32, percent: f32, min_per_second: u32) -> Self {
        if !(0.0..=1000.0).contains(&percent) {
            self.error = Some(ConfigError::RetryBudget(percent));
        }
        if min_per_second > MAX_RETRY_FLOOR {
            self.error = Some(ConfigError::RetryFloor(min_per_second));
        }
        self.settings.max_retries = max;
        self.settings.retry_budget = (percent, min_per_second);
        self
    }

    /// Guards the canaries of HTTPRoute rules from inside this client (see
    /// [`CanaryGuard`](super::CanaryGuard)): a canary failing more than its stable backend
    /// by the margin loses its traffic here until probes show it recovered. Off by default.
    pub fn canary_guard(mut self, guard: super::CanaryGuard) -> Self {
        if guard.is_valid() {
            self.settings.canary_guard = Some(guard);
        } else {
            self.error.get_or_insert(ConfigError::CanaryGuard(guard));
        }
        self
    }

    /// Reaches Pods through the API server's port-forward: the Mesh tells `pf` which Pod
    /// each request goes to, and `pf.connector()` (hyper-util's connector) opens a tunnel
    /// to it. For clients outside the cluster (see [`PortForward`](crate::PortForward)).
    #[cfg(feature = "port-forward")]
    pub fn port_forward(mut self, pf: crate::PortForward) -> Self {
        self.settings.port_forward = Some(pf);
        self
    }

    /// Fails a request (with `Timeout`) that has no response headers after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = Some(timeout);
        self
    }

    /// Ramps new Pods' weights up linearly over `window` after they became Ready,
    /// starting at 10 % (see [`SlowStart`]).
    pub fn slow_start(mut self, window: Duration) -> Self {
        self.settings.slow_start = Some(SlowStart::new(window));
        self
    }

    /// Ramps new Pods' weights with a custom curve (Envoy's aggression and minimum weight).
    pub fn slow_start_with(mut self, ramp: SlowStart) -> Self {
        match slow_start(ramp) {
            Ok(r) => self.settings.slow_start = Some(r),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Where requests' affinity keys come from for [`Algorithm::Maglev`] (a request's own
    /// [`AffinityKey`](crate::AffinityKey) extension wins). Requests without a key are
    /// spread by weight.
    pub fn affinity(mut self, affinity: Affinity) -> Self {
        self.settings.affinity = Some(affinity);
        self
    }

    /// Prefers endpoints in `zone` (the caller's `topology.kubernetes.io/zone`) or hinted
    /// for it, while they are healthy and not much busier than the rest: a remote endpoint
    /// wins only when it is at least twice as cheap (latency estimates under 100 µs count
    /// as 100 µs, so loopback-scale noise never leaves the zone), or the local choice is
    /// ejected.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.settings.zone = Some(zone.into());
        self
    }

    /// How long a Service's watches may deliver nothing before discovery restarts them
    /// (default 5 minutes; see `rudder_k8s::DiscoveryBuilder::stall_timeout`).
    pub fn watch_stall_timeout(mut self, quiet: Duration) -> Self {
        self.settings.watch_stall_timeout = Some(quiet);
        self
    }

    /// Adjusts discovery's settings (where endpoints come from, how much of each Pod is
    /// watched, backoff), applied last when the layer is built:
    ///
    /// ```no_run
    /// # fn demo(client: kube::Client) -> Result<(), rudder::ConfigError> {
    /// // A client whose Role grants v1 Endpoints but not EndpointSlices.
    /// let layer = rudder::MeshLayer::builder(client)
    ///     .discovery(|d| d.source(rudder::DiscoverySource::Endpoints))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn discovery(
        mut self,
        tune: impl FnOnce(DiscoveryBuilder) -> DiscoveryBuilder + Send + 'static,
    ) -> Self {
        self.discovery = Some(Box::new(tune));
        self
    }

    /// Also retries idempotent requests (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) whose
    /// response has one of `statuses` (say 502, 503, 504 from a Pod shedding load) on
    /// another Pod, within the same retry limit and budget as every retry, with the body
    /// when it was kept. Off by default: only the application knows which of its statuses
    /// mean "try elsewhere". The last response is returned as it is.
    pub fn retry_on_status(mut self, statuses: impl IntoIterator<Item = http::StatusCode>) -> Self {
        self.settings.retry_statuses = statuses.into_iter().collect();
        self
    }

    /// The largest request body kept for a retry (default
    /// [`DEFAULT_MAX_REPLAY_BODY`](crate::mesh::DEFAULT_MAX_REPLAY_BODY), 64 KiB; 0 keeps
    /// none). A request whose attempt never reached an application is sent again on
    /// another Pod, body and all, if its body was within this size; larger bodies stream
    /// through without being kept, and are not retried. Memory per request in flight is
    /// bounded by it.
    pub fn max_replay_body(mut self, bytes: usize) -> Self {
        self.settings.max_replay_body = bytes;
        self
    }

    /// How long one attempt may wait for the Pod's response headers (default 15 seconds;
    /// `None` waits forever). The response body is never cut by it, so streams and large
    /// downloads are unaffected.
    ///
    /// Without it, a Pod that is Ready but stopped answering (deadlocked, paused, on a
    /// node that lost its network after accepting the connection) would hang a request
    /// forever. 15 seconds is Envoy's default route timeout: far above the response time
    /// of a healthy RPC, short enough that a hung Pod fails requests instead of piling
    /// them up. The attempt counts as a failure towards ejection, and the request fails
    /// with [`MeshError::Timeout`](crate::MeshError::Timeout) (it may have reached the
    /// application, so it is not retried). Long-polling APIs should raise it.
    pub fn response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.response_timeout = timeout;
        self
    }

    /// Releases a Service's watches once no request has named it for `idle` (default 5
    /// minutes); the next request subscribes again and waits for the first sync. A
    /// long-lived client calling many hosts keeps watches only for those in use.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.settings.idle_timeout = idle;
        self
    }

    /// How long a negative answer is kept (default 5 seconds): a Service that does not
    /// exist, a port it does not have, or one this client may not read. Its watches are
    /// released at once, and requests get the answer (a short name falls through, a full
    /// name fails) without asking the API again until it expires. A Service created
    /// meanwhile is seen when the answer expires.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.settings.negative_ttl = ttl;
        self
    }

    /// Routes Service names only in these namespaces; names in any other (say
    /// `example.com`, which reads as Service `example` in namespace `com`) pass through
    /// unchanged, without any API request. Default: every namespace.
    pub fn namespaces<I>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.settings.namespaces = Some(namespaces.into_iter().map(Into::into).collect());
        self
    }

    /// TLS to Pods for `https` requests (feature `tls`): for each Pod an `https` request
    /// goes to, the Mesh records the server name of its Service (`name.namespace.svc`
    /// unless `tls` says otherwise) for the connectors made from the same `tls`
    /// ([`TlsConfig::connector`](crate::tls::TlsConfig::connector),
    /// [`PodClientBuilder::tls`](crate::PodClientBuilder::tls)), which send it as SNI and
    /// verify the Pod's certificate against it.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::TlsConfig) -> Self {
        self.settings.tls = Some(tls);
        self
    }

    /// The most distinct Service ports the Mesh routes to, and so watches, at once
    /// (default 256). A request naming one more fails with
    /// [`MeshError::TooManyServices`](crate::MeshError::TooManyServices) (negative answers
    /// kept for their TTL make room first; idle Services leave after the idle timeout).
    /// It bounds what a caller that makes up host names can cost in memory, watches and
    /// API requests; [`namespaces`](Self::namespaces) keeps such names away entirely.
    pub fn max_services(mut self, limit: usize) -> Self {
        self.settings.max_services = limit;
        self
    }

    /// Outlier ejection settings.
    pub fn ejection(mut self, ejection: Ejection) -> Self {
        self.settings.ejection = ejection;
        self
    }

    /// Registers the Mesh's Prometheus metrics in `registry` (see
    /// [`Metrics`](crate::Metrics)) and records them from then on.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, registry: &mut prometheus_client::registry::Registry) -> Self {
        self.telemetry.metrics = Some(crate::Metrics::register(registry));
        self
    }

    /// Serves Service `name` (`name` or `name.namespace`) from `endpoints` (static
    /// builders only; with a kube client the Service comes from the API).
    pub fn static_service(mut self, name: &str, endpoints: Static) -> Result<Self, ConfigError> {
        let svc = ServiceRef::parse_in(name, &self.settings.default_namespace)?;
        self.statics.insert(
            (svc.namespace().to_string(), svc.name().to_string()),
            endpoints,
        );
        Ok(self)
    }

    /// The layer.
    pub fn build(self) -> Result<MeshLayer, ConfigError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        // Routing pools are made when a Service is first asked for, some while a request
        // waits: calibrate their latency clock now instead.
        rudder_balance::calibrate_clock();
        let source = match (self.shared_discovery, self.client) {
            (Some(shared), _) => {
                if self.discovery.is_some() {
                    return Err(ConfigError::SharedDiscovery("discovery(..)"));
                }
                if self.settings.watch_stall_timeout.is_some() {
                    return Err(ConfigError::SharedDiscovery("watch_stall_timeout"));
                }
                Source::Kube(shared)
            }
            (None, Some(client)) => {
                let mut discovery = Discovery::builder(client)
                    .default_namespace(self.settings.default_namespace.clone());
                if let Some(quiet) = self.settings.watch_stall_timeout {
                    discovery = discovery.stall_timeout(quiet);
                }
                if let Some(tune) = self.discovery {
                    discovery = tune(discovery);
                }
                Source::Kube(discovery.build())
            }
            (None, None) => Source::Static(self.statics),
        };
        let shared =
            Arc::new_cyclic(|me| Shared::new(source, self.settings, self.telemetry, me.clone()));
        #[cfg(feature = "metrics")]
        if let Some(m) = &shared.telemetry.metrics {
            let _ = m.shared.set(Arc::downgrade(&shared));
        }
        Ok(MeshLayer { shared })
    }
}
