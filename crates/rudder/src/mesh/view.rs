//! A read-only view of how the Mesh sees a Service, for dashboards, debugging and probes.
//! Every type here is `serde::Serialize` (durations as seconds), so a debug endpoint can
//! serve `MeshLayer::views()` as JSON.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rudder_balance::{Readiness, ServiceState, WatchKind};
use serde::{Serialize, Serializer};

use super::routed::Routed;

/// A Service as the Mesh routes to it right now.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ServiceView {
    /// The Service port.
    pub service: String,
    /// Whether it exists, is synced, is an `ExternalName`, or could not be synced.
    #[serde(serialize_with = "state")]
    pub state: ServiceState,
    /// How long discovery has been out of touch with the API: zero while every watch of
    /// the Service is healthy, otherwise the time since the earliest failure that has not
    /// healed. The last known endpoints keep being used meanwhile.
    #[serde(serialize_with = "secs")]
    pub staleness: Duration,
    /// The same per watch (a Pod watch the client may not read is off, not stale).
    pub watches: Vec<WatchView>,
    /// Whether its watches were released (a negative answer kept for a while); the next
    /// request after that subscribes again.
    pub released: bool,
    /// Every routable endpoint of the snapshot, in address order.
    pub endpoints: Vec<EndpointView>,
    /// Endpoints discovery saw but does not route to, with why.
    pub unroutable: Vec<UnroutableView>,
}

/// One watch of a Service and how stale it is.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct WatchView {
    /// `Service`, `endpoints` (EndpointSlices or Endpoints) or `Pods`.
    pub watch: &'static str,
    /// Zero while healthy; otherwise the time since its first unhealed failure.
    #[serde(serialize_with = "secs")]
    pub staleness: Duration,
}

/// One routable endpoint and its load.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct EndpointView {
    /// The Pod's address.
    pub addr: SocketAddr,
    /// The Pod's name, when known.
    pub pod: Option<String>,
    /// The Pod's labels.
    pub labels: BTreeMap<String, String>,
    /// Ready, or serving while terminating.
    #[serde(serialize_with = "readiness")]
    pub readiness: Readiness,
    /// The balancing weight.
    pub weight: u32,
    /// Requests in flight from this process.
    pub in_flight: u32,
    /// Peak-EWMA latency estimate.
    #[serde(serialize_with = "secs")]
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
    /// Why it gets no new requests right now, if so: ejected, weight 0, or terminating
    /// while ready endpoints exist.
    pub idle_because: Option<&'static str>,
}

/// An endpoint discovery saw but does not route to.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct UnroutableView {
    /// The address as the API listed it, and the port.
    pub address: String,
    /// The target port.
    pub port: u16,
    /// The Pod.
    pub pod: Option<String>,
    /// The node.
    pub node: Option<String>,
    /// Why it gets no traffic (`not ready`, `terminating and no longer serving`, ...).
    pub reason: &'static str,
}

impl ServiceView {
    pub(crate) fn of(routed: &Routed) -> Self {
        let snapshot = routed.pool.snapshot();
        let set = snapshot.set();
        let any_ready = set
            .endpoints()
            .iter()
            .any(|e| e.readiness() == Readiness::Ready);
        let endpoints = set
            .endpoints()
            .iter()
            .zip(snapshot.entries().iter().map(|x| x.load()))
            .map(|(e, load)| EndpointView {
                addr: e.addr(),
                pod: e.meta().pod.as_deref().map(str::to_owned),
                labels: e.labels().clone(),
                readiness: e.readiness(),
                weight: e.weight(),
                in_flight: load.in_flight(),
                ewma: load.ewma(),
                ejected: load.is_ejected(),
                ejections: load.ejections(),
                node: e.meta().node.as_deref().map(str::to_owned),
                zone: e.meta().zone.as_deref().map(str::to_owned),
                app_protocol: e.meta().app_protocol.as_deref().map(str::to_string),
                idle_because: if load.is_ejected() {
                    Some("ejected after consecutive failures")
                } else if e.weight() == 0 {
                    Some("weight 0")
                } else if e.readiness() == Readiness::ServingTerminating && any_ready {
                    Some("terminating: used only while no endpoint is ready")
                } else {
                    None
                },
            })
            .collect();
        let unroutable = set
            .unroutable()
            .iter()
            .map(|u| UnroutableView {
                address: u.address.to_string(),
                port: u.port,
                pod: u.pod.as_deref().map(str::to_string),
                node: u.node.as_deref().map(str::to_string),
                reason: u.reason.as_str(),
            })
            .collect();
        Self {
            service: routed.service.to_string(),
            state: set.state().clone(),
            staleness: set.staleness(),
            watches: WatchKind::ALL
                .into_iter()
                .map(|k| WatchView {
                    watch: watch_name(k),
                    staleness: set.clock().map(|c| c.staleness_of(k)).unwrap_or_default(),
                })
                .collect(),
            released: routed.is_released(),
            endpoints,
            unroutable,
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

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn readiness<S: Serializer>(r: &Readiness, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match r {
        Readiness::Ready => "ready",
        Readiness::ServingTerminating => "serving-terminating",
    })
}

/// The state as `{"state": "forbidden", "detail": "..."}`-like data: a tag and, where
/// there is one, its text.
fn state<S: Serializer>(state: &ServiceState, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let (tag, detail) = match state {
        ServiceState::Pending => ("pending", None),
        ServiceState::Active => ("active", None),
        ServiceState::NotFound => ("not-found", None),
        ServiceState::ExternalName(n) => ("external-name", Some(n)),
        ServiceState::Unreachable(e) => ("unreachable", Some(e)),
        ServiceState::Forbidden(m) => ("forbidden", Some(m)),
        _ => ("unknown", None),
    };
    let mut map = s.serialize_map(None)?;
    map.serialize_entry("name", tag)?;
    if let Some(d) = detail {
        map.serialize_entry("detail", d)?;
    }
    map.end()
}
