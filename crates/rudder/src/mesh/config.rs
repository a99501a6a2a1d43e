//! The serde form of the Mesh's settings, for services that read their configuration from
//! a file or environment.

use std::time::Duration;

use serde::Deserialize;

/// Every [`MeshBuilder`](crate::MeshBuilder) setting as plain data.
///
/// ```
/// let config: rudder::MeshConfig = serde_json::from_str(r#"{
///     "subset": "version=4.1",
///     "fallback": { "default": "version=4.0" },
///     "algorithm": "least_requests",
///     "sync_timeout_ms": 2000
/// }"#).unwrap();
/// assert_eq!(config.subset.as_deref(), Some("version=4.1"));
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MeshConfig {
    /// Namespace of Service names written without one (default: the kube client's).
    pub default_namespace: Option<String>,
    /// The cluster DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Label selector of the Pods every request goes to, unless a request says otherwise.
    pub subset: Option<String>,
    /// What to do when the chosen subset is empty.
    pub fallback: FallbackConfig,
    /// Header naming a per-request subset, e.g. `x-rudder-subset` (default: none, see
    /// [`MeshBuilder::subset_header`](crate::MeshBuilder::subset_header) for why).
    pub subset_header: Option<String>,
    /// Weighted traffic split between subsets (canary); replaces `subset` when non-empty.
    pub split: Vec<SplitLeg>,
    /// Route rules, tried in order.
    pub routes: Vec<RouteConfig>,
    /// The balancing algorithm.
    pub algorithm: AlgorithmConfig,
    /// How long a request waits for the first discovery sync of its Service.
    pub sync_timeout_ms: u64,
    /// Pass requests whose authority is not a Service through unchanged (else an error).
    pub pass_through: bool,
    /// When discovery cannot sync, send requests to the original authority (cluster DNS and
    /// ClusterIP) instead of failing.
    pub dns_fallback: bool,
    /// Count 5xx responses as endpoint failures for ejection.
    pub failure_on_5xx: bool,
    /// Retries of requests that never reached an application (0 disables).
    pub max_retries: u32,
    /// Retries allowed as a share of requests, in percent.
    pub retry_budget_percent: f32,
    /// Retries always allowed per second, whatever the share.
    pub retry_min_per_second: u32,
    /// Per-request timeout (none by default).
    pub timeout_ms: Option<u64>,
    /// The largest request body kept for a retry, in bytes (default 65,536; 0 keeps none).
    pub max_replay_body_bytes: usize,
    /// Status codes on which idempotent requests are retried on another Pod (default none).
    pub retry_on_status: Vec<u16>,
    /// How long one attempt waits for response headers (default 15,000; `0` waits
    /// forever). Response bodies are never cut.
    pub response_timeout_ms: u64,
    /// Slow start window after a Pod became Ready (none by default).
    pub slow_start_ms: Option<u64>,
    /// Slow start's curve: 1.0 is linear, larger ramps faster at first.
    pub slow_start_aggression: f64,
    /// The smallest share of its weight a ramping Pod gets, in percent (default 10).
    pub slow_start_min_weight_percent: u8,
    /// Where affinity keys come from for the `maglev` algorithm: `{"header": "x-user"}`
    /// or `{"cookie": "session"}` (none by default).
    pub affinity: Option<AffinityConfig>,
    /// Outlier ejection.
    pub ejection: EjectionConfig,
    /// The caller's zone, for topology-aware routing (none by default).
    pub zone: Option<String>,
    /// Restart a Service's watches after this long without an event (default 300,000).
    pub watch_stall_timeout_ms: Option<u64>,
    /// Release a Service's watches after this long without a request (default 300,000).
    pub idle_timeout_ms: u64,
    /// How long an answer that a Service or port does not exist, or may not be read, is
    /// kept before asking the API again (default 5,000).
    pub negative_ttl_ms: u64,
    /// The only namespaces whose Service names are routed; names in others pass through
    /// without any API request (default: every namespace).
    pub namespaces: Option<Vec<String>>,
    /// The most distinct Service ports routed (and watched) at once (default 256).
    pub max_services: usize,
    /// Guards HTTPRoute canaries in this client (see [`CanaryGuard`](crate::CanaryGuard));
    /// absent: off.
    pub canary_guard: Option<CanaryGuardConfig>,
    /// How Pods are reached: `direct` (default), `port_forward` through the API server, or
    /// `auto` (direct inside a Pod, port-forward elsewhere). Needs the `port-forward`
    /// feature for anything but `direct`; build the HTTP client with
    /// `MeshLayer::connector()` so that it matches.
    pub transport: TransportConfig,
}

/// How Pods are reached, as data (see [`MeshConfig::transport`]).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TransportConfig {
    /// Straight to Pod IPs.
    #[default]
    Direct,
    /// Through the API server's `pods/portforward`.
    PortForward,
    /// Direct inside a Pod, port-forward elsewhere (logged).
    Auto,
}

/// [`CanaryGuard`](crate::CanaryGuard) as data.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CanaryGuardConfig {
    /// How much higher than the stable backend's a canary's failure rate may be, percent.
    pub margin_percent: f64,
    /// Requests a backend needs in the window before it is judged.
    pub min_requests: u32,
    /// How far back requests count.
    pub window_ms: u64,
    /// Share of a guarded canary's normal traffic still sent as probes, percent.
    pub probe_percent: f64,
}

impl Default for CanaryGuardConfig {
    fn default() -> Self {
        let g = crate::CanaryGuard::default();
        Self {
            margin_percent: g.margin * 100.0,
            min_requests: g.min_requests,
            window_ms: g.window.as_millis() as u64,
            probe_percent: g.probe_share * 100.0,
        }
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            default_namespace: None,
            cluster_domain: "cluster.local".into(),
            subset: None,
            fallback: FallbackConfig::None,
            subset_header: None,
            split: Vec::new(),
            routes: Vec::new(),
            algorithm: AlgorithmConfig::P2cPeakEwma,
            sync_timeout_ms: 5_000,
            pass_through: true,
            dns_fallback: false,
            failure_on_5xx: true,
            max_retries: 2,
            retry_budget_percent: 20.0,
            retry_min_per_second: 10,
            timeout_ms: None,
            max_replay_body_bytes: crate::mesh::DEFAULT_MAX_REPLAY_BODY,
            retry_on_status: Vec::new(),
            response_timeout_ms: 15_000,
            slow_start_ms: None,
            slow_start_aggression: 1.0,
            slow_start_min_weight_percent: 10,
            affinity: None,
            ejection: EjectionConfig::default(),
            zone: None,
            watch_stall_timeout_ms: None,
            idle_timeout_ms: 300_000,
            negative_ttl_ms: 5_000,
            namespaces: None,
            max_services: 256,
            canary_guard: None,
            transport: TransportConfig::Direct,
        }
    }
}

impl MeshConfig {
    pub(crate) fn sync_timeout(&self) -> Duration {
        Duration::from_millis(self.sync_timeout_ms)
    }

    pub(crate) fn response_timeout(&self) -> Option<Duration> {
        (self.response_timeout_ms > 0).then(|| Duration::from_millis(self.response_timeout_ms))
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub(crate) fn negative_ttl(&self) -> Duration {
        Duration::from_millis(self.negative_ttl_ms)
    }
}

/// [`Fallback`](rudder_balance::Fallback) as data: `"none"`, `"any"` or
/// `{ "default": "<selector>" }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FallbackConfig {
    /// Fail with `NoEndpoints`.
    #[default]
    None,
    /// Use every ready endpoint of the Service.
    Any,
    /// Use this subset instead.
    Default(String),
}

/// One leg of a split.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SplitLeg {
    /// The subset's label selector.
    pub selector: String,
    /// Its share of requests, relative to the other legs.
    pub weight: u32,
}

/// [`Algorithm`](rudder_balance::Algorithm) as data.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlgorithmConfig {
    /// Weighted P2C over peak EWMA.
    #[default]
    P2cPeakEwma,
    /// Exact weighted round robin.
    WeightedRoundRobin,
    /// Weighted P2C over requests in flight.
    LeastRequests,
    /// Maglev consistent hashing of the request's affinity key (see `affinity`).
    Maglev,
}

/// Where affinity keys come from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum AffinityConfig {
    /// A request header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
}

/// [`Ejection`](rudder_balance::Ejection) as data.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EjectionConfig {
    /// Failures in a row that eject an endpoint (0 disables ejection).
    pub consecutive_failures: u32,
    /// First ejection's length.
    pub base_time_ms: u64,
    /// Longest ejection.
    pub max_time_ms: u64,
    /// Largest share of endpoints ejected at once, percent.
    pub max_ejected_percent: u8,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        let e = rudder_balance::Ejection::default();
        Self {
            consecutive_failures: e.consecutive_failures,
            base_time_ms: e.base_time.as_millis() as u64,
            max_time_ms: e.max_time.as_millis() as u64,
            max_ejected_percent: e.max_ejected_percent,
        }
    }
}

/// A [`Route`](crate::Route) as data: conditions, then exactly one of `subset` or `split`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// Matches paths starting with this.
    pub path_prefix: Option<String>,
    /// Matches requests carrying each of these header values.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The subset matching requests go to.
    pub subset: Option<String>,
    /// Or the split between subsets they go to.
    pub split: Vec<SplitLeg>,
}
