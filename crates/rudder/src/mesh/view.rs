//! A read-only view of how the Mesh sees a Service, for dashboards and debugging.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rudder_balance::{Readiness, ServiceState, WatchKind};

use super::routed::Routed;

/// A Service as the Mesh routes to it right now.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServiceView {
    /// The Service port.
    pub service: String,
    /// Whether it exists, is synced, or is an `ExternalName`.
    pub state: ServiceState,
    /// How long discovery has been out of touch with the API: zero while every watch of
    /// the Service is healthy, otherwise the time since the earliest failure that has not
    /// healed. The last known endpoints keep being used meanwhile.
    pub staleness: Duration,
    /// The same per watch: `Service`, `endpoints` (EndpointSlices or Endpoints) and `Pods`
    /// (a Pod watch the client may not read is off, not stale).
    pub watches: Vec<(&'static str, Duration)>,
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
    /// How many times it has been ejected.
    pub ejections: u32,
    /// The node it runs on.
    pub node: Option<String>,
    /// Its zone.
    pub zone: Option<String>,
    /// The port's `appProtocol` (e.g. `kubernetes.io/h2c`).
    pub app_protocol: Option<String>,
}

impl ServiceView {
    pub(crate) fn of(routed: &Routed) -> Self {
        let snapshot = routed.pool.snapshot();
        let set = snapshot.set();
        let endpoints = set
            .endpoints()
            .iter()
            .zip(snapshot.loads())
            .map(|(e, load)| EndpointView {
                addr: e.addr(),
                pod: e.meta().pod.clone(),
                labels: e.labels().clone(),
                readiness: e.readiness(),
                weight: e.weight(),
                in_flight: load.in_flight(),
                ewma: load.ewma(),
                ejected: load.is_ejected(),
                ejections: load.ejections(),
                node: e.meta().node.clone(),
                zone: e.meta().zone.clone(),
                app_protocol: e.meta().app_protocol.clone(),
            })
            .collect();
        Self {
            service: routed.service.to_string(),
            state: set.state().clone(),
            staleness: set.staleness(),
            watches: WatchKind::ALL
                .into_iter()
                .map(|k| {
                    let stale = set.clock().map(|c| c.staleness_of(k)).unwrap_or_default();
                    (watch_name(k), stale)
                })
                .collect(),
            endpoints,
        }
    }
}

fn watch_name(kind: WatchKind) -> &'static str {
    match kind {
        WatchKind::Service => "Service",
        WatchKind::Endpoints => "endpoints",
        _ => "Pods",
    }
}
