//! What the request path reports: always `tracing` events; with the `metrics` feature, also
//! Prometheus metrics. The request path calls these methods unconditionally; without the
//! feature they compile to nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rudder_balance::{EjectionHook, Selector};
use rudder_k8s::ServiceRef;

#[cfg(feature = "metrics")]
pub use self::prometheus::Metrics;

/// How a request ended, for metrics.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    /// A response that is not a counted failure.
    Success,
    /// A response counted as an endpoint failure (5xx).
    Failure,
    /// No response: an error from the inner service.
    Error,
}

/// The Mesh's reporting hooks.
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<Metrics>,
    /// The configured subsets: the only selectors that become `subset` label values.
    subsets: Vec<Selector>,
}

/// An endpoint's request counters and latency histogram per subset label, made on first
/// use and held with the endpoint's routing state: a request records without building
/// labels or allocating, and a scrape reports them while the endpoint is in its Service's
/// current snapshot (see [`Metrics`]), so the series of Pods that left go with them.
#[derive(Debug, Default)]
pub(crate) struct EndpointTelemetry {
    #[cfg(feature = "metrics")]
    slots: Box<[std::sync::OnceLock<self::prometheus::Handles>]>,
}

/// The `subset` label value of requests for a selector that was not configured (from a
/// header or an extension): one value for all of them, so callers cannot grow the series.
#[cfg(feature = "metrics")]
pub(crate) const OTHER_SUBSET: &str = "other";

#[cfg_attr(
    not(feature = "metrics"),
    allow(unused_variables, reason = "only metrics use the arguments")
)]
impl Telemetry {
    /// Sets the configured subsets (label values), de-duplicated.
    pub(crate) fn with_subsets(mut self, subsets: impl IntoIterator<Item = Selector>) -> Self {
        for s in subsets {
            if !s.is_everything() && !self.subsets.contains(&s) {
                self.subsets.push(s);
            }
        }
        self
    }

    /// The label slot of `selector`: 0 for every endpoint, then the configured subsets,
    /// then [`OTHER_SUBSET`].
    pub(crate) fn slot(&self, selector: &Selector) -> usize {
        if selector.is_everything() {
            return 0;
        }
        self.subsets
            .iter()
            .position(|s| s == selector)
            .map_or(self.subsets.len() + 1, |i| i + 1)
    }

    #[cfg(feature = "metrics")]
    pub(crate) fn slot_label(&self, slot: usize) -> String {
        match slot {
            0 => String::new(),
            i if i <= self.subsets.len() => self.subsets[i - 1].to_string(),
            _ => OTHER_SUBSET.to_string(),
        }
    }

    /// Empty handles for a new endpoint of a snapshot.
    pub(crate) fn endpoint(&self) -> EndpointTelemetry {
        #[cfg(feature = "metrics")]
        if self.metrics.is_some() {
            return EndpointTelemetry {
                slots: (0..self.subsets.len() + 2)
                    .map(|_| std::sync::OnceLock::new())
                    .collect(),
            };
        }
        EndpointTelemetry::default()
    }

    /// What a pool calls when a failure ejects an endpoint: the one place ejections are
    /// logged and counted.
    pub(crate) fn ejection_hook(&self, service: Arc<str>) -> EjectionHook {
        #[cfg(feature = "metrics")]
        let counter = self.metrics.as_ref().map(|m| m.ejections_of(&service));
        Arc::new(move |endpoint: SocketAddr| {
            tracing::info!(service = %service, %endpoint, "endpoint ejected after consecutive failures");
            #[cfg(feature = "metrics")]
            if let Some(c) = &counter {
                c.inc();
            }
        })
    }

    pub(crate) fn request(
        &self,
        endpoint: &EndpointTelemetry,
        slot: usize,
        outcome: Outcome,
        latency: Duration,
    ) {
        #[cfg(feature = "metrics")]
        if let Some(handles) = endpoint.slots.get(slot) {
            handles
                .get_or_init(self::prometheus::Handles::new)
                .record(outcome, latency);
        }
    }

    pub(crate) fn retry(&self, service: &str) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.retry(service);
        }
    }

    /// Counts a request the Mesh itself failed.
    pub(crate) fn mesh_error(&self, e: &crate::MeshError) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.mesh_error(e);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = e;
    }

    pub(crate) fn dns_fallback(&self, service: &ServiceRef) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.dns_fallback(&service.to_string());
        }
    }
}

#[cfg(feature = "metrics")]
mod prometheus {
    use std::sync::{Arc, OnceLock, Weak};
    use std::time::Duration;

    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
    use prometheus_client::metrics::MetricType;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
    use prometheus_client::registry::Registry;

    use super::Outcome;
    use crate::mesh::Shared;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct RequestLabels {
        service: String,
        subset: String,
        endpoint: String,
        outcome: &'static str,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct LatencyLabels {
        service: String,
        subset: String,
        endpoint: String,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ServiceLabels {
        service: String,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct CanaryLabels {
        route: String,
        backend: String,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct StateLabels {
        service: String,
        state: &'static str,
    }

    /// One endpoint's series under one subset label: not in any registry, reported by
    /// [`Views`] while the endpoint is in its Service's snapshot.
    #[derive(Debug)]
    pub(crate) struct Handles {
        success: Counter,
        failure: Counter,
        error: Counter,
        latency: Histogram,
    }

    impl Handles {
        pub(crate) fn new() -> Self {
            Self {
                success: Counter::default(),
                failure: Counter::default(),
                error: Counter::default(),
                latency: latency_histogram(),
            }
        }

        pub(crate) fn record(&self, outcome: Outcome, latency: Duration) {
            let counter = match outcome {
                Outcome::Success => &self.success,
                Outcome::Failure => &self.failure,
                Outcome::Error => {
                    self.error.inc();
                    return;
                }
            };
            counter.inc();
            self.latency.observe(latency.as_secs_f64());
        }
    }

    fn latency_histogram() -> Histogram {
        // 100 µs to ~3.3 s.
        Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
    }

    /// The Mesh's Prometheus metrics, registered under the `rudder_` prefix by
    /// [`MeshBuilder::metrics`](crate::MeshBuilder::metrics):
    ///
    /// - `rudder_requests_total{service, subset, endpoint, outcome}` (`success`, `failure`
    ///   for a counted 5xx, `error` without a response);
    /// - `rudder_request_duration_seconds{service, subset, endpoint}`: time to response
    ///   headers;
    /// - `rudder_retries_total`, `rudder_ejections_total`, `rudder_dns_fallbacks_total`
    ///   per `service`;
    /// - `rudder_mesh_errors_total{service, reason}`: requests the Mesh failed itself
    ///   (`not_synced`, `forbidden`, `service_not_found`, `no_endpoints`, `timeout`,
    ///   `failed` (no response from the Pods tried), `invalid_subset`, `not_a_service`,
    ///   `missing_authority`, `discovery`); `service` is set only for `no_endpoints`,
    ///   `timeout` and `failed` (Services that exist), since the others can name anything
    ///   a caller writes;
    /// - at scrape time: `rudder_endpoints{service, state}` (`ready`, `terminating`,
    ///   `ejected`) and `rudder_discovery_staleness_seconds{service}` (0 while discovery is
    ///   in sync with the API).
    ///
    /// `subset` takes only configured values (the static subset, split legs, route targets,
    /// the fallback; empty for every endpoint): requests for any other selector (from the
    /// subset header or a [`Subset`](crate::Subset) extension) share the value `other`, so
    /// no caller can grow the number of series.
    ///
    /// Endpoint labels make one series per Pod: fine for Services of tens or hundreds of
    /// Pods; for thousands, aggregate in the scrape configuration. A scrape reports the
    /// per-endpoint series of the endpoints in each routed Service's current snapshot:
    /// those of a Pod that left (a rollout, a scale-down, readiness lost) are gone from the
    /// next scrape, so Pod churn does not grow the series, and start again from zero if
    /// the endpoint comes back.
    #[derive(Clone, Debug)]
    pub struct Metrics {
        retries: Family<ServiceLabels, Counter>,
        ejections: Family<ServiceLabels, Counter>,
        dns_fallbacks: Family<ServiceLabels, Counter>,
        mesh_errors: Family<ErrorLabels, Counter>,
        pub(crate) shared: Arc<OnceLock<Weak<Shared>>>,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ErrorLabels {
        service: String,
        reason: &'static str,
    }

    impl Metrics {
        pub(crate) fn register(registry: &mut Registry) -> Self {
            let m = Self {
                retries: Family::default(),
                ejections: Family::default(),
                dns_fallbacks: Family::default(),
                mesh_errors: Family::default(),
                shared: Arc::new(OnceLock::new()),
            };
            let r = registry.sub_registry_with_prefix("rudder");
            r.register(
                "retries",
                "Requests retried on another endpoint",
                m.retries.clone(),
            );
            r.register(
                "ejections",
                "Endpoints ejected as outliers",
                m.ejections.clone(),
            );
            r.register(
                "dns_fallbacks",
                "Requests sent through cluster DNS because discovery could not sync",
                m.dns_fallbacks.clone(),
            );
            r.register(
                "mesh_errors",
                "Requests the Mesh failed itself, by reason",
                m.mesh_errors.clone(),
            );
            r.register_collector(Box::new(Views(m.shared.clone())));
            m
        }

        /// The ejection counter of `service`.
        pub(crate) fn ejections_of(&self, service: &str) -> Counter {
            self.ejections
                .get_or_create(&ServiceLabels {
                    service: service.into(),
                })
                .clone()
        }

        fn service(family: &Family<ServiceLabels, Counter>, service: &str) {
            family
                .get_or_create(&ServiceLabels {
                    service: service.into(),
                })
                .inc();
        }

        pub(crate) fn retry(&self, service: &str) {
            Self::service(&self.retries, service);
        }

        pub(crate) fn dns_fallback(&self, service: &str) {
            Self::service(&self.dns_fallbacks, service);
        }

        pub(crate) fn mesh_error(&self, e: &crate::MeshError) {
            use crate::MeshError as E;
            let (reason, service) = match e {
                E::NotSynced { .. } => ("not_synced", None),
                E::Forbidden { .. } => ("forbidden", None),
                E::ServiceNotFound { .. } => ("service_not_found", None),
                E::NoEndpoints { service, .. } => ("no_endpoints", Some(service)),
                E::Timeout { service, .. } => ("timeout", Some(service)),
                E::Failed { service, .. } => ("failed", Some(service)),
                E::InvalidSubset { .. } | E::SubsetNotAscii { .. } => ("invalid_subset", None),
                E::NotAService { .. } => ("not_a_service", None),
                E::TooManyServices { .. } => ("too_many_services", None),
                E::MissingAuthority => ("missing_authority", None),
                E::NoRouteBackend { service, .. } => ("no_route_backend", Some(service)),
                _ => ("discovery", None),
            };
            self.mesh_errors
                .get_or_create(&ErrorLabels {
                    service: service.cloned().unwrap_or_default(),
                    reason,
                })
                .inc();
        }
    }

    /// Endpoint states and discovery staleness, read from the Mesh at scrape time.
    #[derive(Debug)]
    struct Views(Arc<OnceLock<Weak<Shared>>>);

    impl Collector for Views {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
            let Some(shared) = self.0.get().and_then(Weak::upgrade) else {
                return Ok(());
            };
            // Per endpoint of each Service's current snapshot, per subset label it took
            // requests under.
            let snapshots: Vec<_> = shared
                .routed_now()
                .into_iter()
                .map(|r| (r.label.clone(), r.pool.snapshot()))
                .collect();
            let series = || {
                snapshots.iter().flat_map(|(service, snapshot)| {
                    let addrs = snapshot.set().endpoints().iter().map(|e| e.addr());
                    addrs
                        .zip(snapshot.entries())
                        .flat_map(move |(addr, entry)| {
                            let slots = entry.extra().telemetry.slots.iter().enumerate();
                            slots.filter_map(move |(slot, h)| Some((service, slot, addr, h.get()?)))
                        })
                })
            };
            let telemetry = &shared.telemetry;
            let mut family = encoder.encode_descriptor(
                "requests",
                "Requests routed to endpoints",
                None,
                MetricType::Counter,
            )?;
            for (service, slot, addr, h) in series() {
                for (outcome, counter) in [
                    ("success", &h.success),
                    ("failure", &h.failure),
                    ("error", &h.error),
                ] {
                    let labels = RequestLabels {
                        service: service.to_string(),
                        subset: telemetry.slot_label(slot),
                        endpoint: addr.to_string(),
                        outcome,
                    };
                    counter.encode(family.encode_family(&labels)?)?;
                }
            }
            let mut family = encoder.encode_descriptor(
                "request_duration_seconds",
                "Time to response headers",
                None,
                MetricType::Histogram,
            )?;
            for (service, slot, addr, h) in series() {
                let labels = LatencyLabels {
                    service: service.to_string(),
                    subset: telemetry.slot_label(slot),
                    endpoint: addr.to_string(),
                };
                h.latency.encode(family.encode_family(&labels)?)?;
            }
            let views = shared.views();
            let probe = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(
                "endpoints",
                "Endpoints per state",
                None,
                probe.metric_type(),
            )?;
            for v in &views {
                let ejected = v.endpoints.iter().filter(|e| e.ejected).count();
                let ready = v
                    .endpoints
                    .iter()
                    .filter(|e| !e.ejected && e.readiness == rudder_balance::Readiness::Ready)
                    .count();
                let terminating = v.endpoints.len() - ejected - ready;
                for (state, n) in [
                    ("ready", ready),
                    ("terminating", terminating),
                    ("ejected", ejected),
                ] {
                    let labels = StateLabels {
                        service: v.service.clone(),
                        state,
                    };
                    ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
                }
            }
            let probe = ConstGauge::new(0f64);
            let mut family = encoder.encode_descriptor(
                "discovery_staleness_seconds",
                "Time since discovery last heard from the API while out of sync (0 in sync)",
                None,
                probe.metric_type(),
            )?;
            for v in &views {
                let labels = ServiceLabels {
                    service: v.service.clone(),
                };
                let stale = v.staleness.as_secs_f64();
                ConstGauge::new(stale).encode(family.encode_family(&labels)?)?;
            }
            // Route and backend names come from the cluster's HTTPRoutes, not from
            // requests: bounded by what the cluster holds.
            let canaries = shared.canaries();
            if !canaries.is_empty() {
                let probe = ConstGauge::new(0i64);
                let mut family = encoder.encode_descriptor(
                    "canary_guarded",
                    "1 while the canary guard holds an HTTPRoute backend's traffic back",
                    None,
                    probe.metric_type(),
                )?;
                for c in &canaries {
                    let labels = CanaryLabels {
                        route: c.route.clone(),
                        backend: c.backend.clone(),
                    };
                    ConstGauge::new(i64::from(c.guarded)).encode(family.encode_family(&labels)?)?;
                }
            }
            Ok(())
        }
    }
}
