//! What the request path reports: always `tracing` events; with the `metrics` feature, also
//! Prometheus metrics. The request path calls these methods unconditionally; without the
//! feature they compile to nothing.

use std::net::SocketAddr;
use std::time::Duration;

use rudder_balance::Selector;
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
}

#[cfg_attr(
    not(feature = "metrics"),
    allow(unused_variables, reason = "only metrics use the arguments")
)]
impl Telemetry {
    pub(crate) fn request(
        &self,
        service: &ServiceRef,
        subset: &Selector,
        endpoint: SocketAddr,
        outcome: Outcome,
        latency: Duration,
    ) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.request(
                &service.to_string(),
                &subset.to_string(),
                &endpoint.to_string(),
                outcome,
                latency,
            );
        }
    }

    pub(crate) fn retry(&self, service: &ServiceRef) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.retry(&service.to_string());
        }
    }

    pub(crate) fn ejection(&self, service: &ServiceRef) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.ejection(&service.to_string());
        }
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
    struct StateLabels {
        service: String,
        state: &'static str,
    }

    type Histograms = Family<LatencyLabels, Histogram, fn() -> Histogram>;

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
    /// - at scrape time: `rudder_endpoints{service, state}` (`ready`, `terminating`,
    ///   `ejected`) and `rudder_discovery_staleness_seconds{service}` (0 while discovery is
    ///   in sync with the API).
    ///
    /// Endpoint labels make one series per Pod: fine for Services of tens or hundreds of
    /// Pods; for thousands, aggregate in the scrape configuration.
    #[derive(Clone, Debug)]
    pub struct Metrics {
        requests: Family<RequestLabels, Counter>,
        latency: Histograms,
        retries: Family<ServiceLabels, Counter>,
        ejections: Family<ServiceLabels, Counter>,
        dns_fallbacks: Family<ServiceLabels, Counter>,
        pub(crate) shared: Arc<OnceLock<Weak<Shared>>>,
    }

    impl Metrics {
        pub(crate) fn register(registry: &mut Registry) -> Self {
            let m = Self {
                requests: Family::default(),
                latency: Histograms::new_with_constructor(latency_histogram),
                retries: Family::default(),
                ejections: Family::default(),
                dns_fallbacks: Family::default(),
                shared: Arc::new(OnceLock::new()),
            };
            let r = registry.sub_registry_with_prefix("rudder");
            r.register(
                "requests",
                "Requests routed to endpoints",
                m.requests.clone(),
            );
            r.register(
                "request_duration_seconds",
                "Time to response headers",
                m.latency.clone(),
            );
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
            r.register_collector(Box::new(Views(m.shared.clone())));
            m
        }

        pub(crate) fn request(
            &self,
            service: &str,
            subset: &str,
            endpoint: &str,
            outcome: Outcome,
            latency: Duration,
        ) {
            let outcome = match outcome {
                Outcome::Success => "success",
                Outcome::Failure => "failure",
                Outcome::Error => "error",
            };
            self.requests
                .get_or_create(&RequestLabels {
                    service: service.into(),
                    subset: subset.into(),
                    endpoint: endpoint.into(),
                    outcome,
                })
                .inc();
            if !matches!(outcome, "error") {
                self.latency
                    .get_or_create(&LatencyLabels {
                        service: service.into(),
                        subset: subset.into(),
                        endpoint: endpoint.into(),
                    })
                    .observe(latency.as_secs_f64());
            }
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

        pub(crate) fn ejection(&self, service: &str) {
            Self::service(&self.ejections, service);
        }

        pub(crate) fn dns_fallback(&self, service: &str) {
            Self::service(&self.dns_fallbacks, service);
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
                let stale = v.staleness.unwrap_or_default().as_secs_f64();
                ConstGauge::new(stale).encode(family.encode_family(&labels)?)?;
            }
            Ok(())
        }
    }
}
