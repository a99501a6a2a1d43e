//! A read-only view of how the Mesh sees a Service, for dashboards and debugging.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rudder_balance::{Readiness, ServiceState};

use super::routed::Routed;

/// A Service as the Mesh routes to it right now.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServiceView {
    /// The Service port.
    pub service: String,
    /// Whether it exists, is synced, or is an `ExternalName`.
    pub state: ServiceState,
    /// How long since discovery last heard from the API, when it is not in sync.
    pub staleness: Option<Duration>,
    /// Every endpoint of the snapshot, in address order.
    pub endpoints: Vec<EndpointView>,
}

/// One endpoint and its load.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointView {
    /// The Pod's address.
    pub addr: SocketAddr,
    /// The Pod's name, when known.
    pub pod: Option<String>,
    /// The Pod's labels.
    pub labels: BTreeMap<String, String>,
    /// Ready, or serving while terminating.
    pub readiness: Readiness,
    /// The balancing weight.
    pub weight: u32,
    /// Requests in flight from this process.
    pub in_flight: u32,
    /// Peak-EWMA latency estimate.
    pub ewma: Duration,
    /// Whether outlier ejection has taken it out of rotation.
    pub ejected: bool,
}

impl ServiceView {
    pub(crate) fn of(routed: &Routed) -> Self {
        let view = routed.view();
        let set = view.set();
        let endpoints = set
            .endpoints()
            .iter()
            .zip(view.loads.iter())
            .map(|(e, load)| EndpointView {
                addr: e.addr(),
                pod: e.meta().pod.clone(),
                labels: e.labels().clone(),
                readiness: e.readiness(),
                weight: e.weight(),
                in_flight: load.in_flight(),
                ewma: load.ewma(),
                ejected: load.is_ejected(),
            })
            .collect();
        Self {
            service: routed.service.to_string(),
            state: set.state().clone(),
            staleness: set.staleness(),
            endpoints,
        }
    }
}
