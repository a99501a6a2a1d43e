//! Rudder: tower layers that send each HTTP request to a ready Kubernetes Pod chosen per
//! request, without DNS and without the Service ClusterIP.
//!
//! Build one [`MeshLayer`] from a `kube::Client` and wrap it around the HTTP client you
//! already use (hyper-util's pooled client for HTTP/1.1, or [`PodClient`], which also
//! speaks HTTP/2 and keeps the Service's `:authority`). Requests addressed to a Service
//! (`http://hello-svc.default:8080/`) go straight to one of its ready Pods, picked per
//! request by weighted P2C over peak-EWMA latency, optionally restricted to a label subset
//! (`version=4.2`) or split between subsets (90/10); everything else passes through. See
//! [`mesh`] for the full request path.
//!
//! Discovery lives in `rudder-k8s`, balancing in `rudder-balance`, the test API server and
//! Pod servers in `rudder-testkit`.

mod authority;
pub mod client;
mod error;
#[cfg(feature = "tonic")]
pub mod grpc;
pub mod mesh;
#[cfg(feature = "port-forward")]
mod portforward;
mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "port-forward")]
pub use self::portforward::{
    EitherConnection, EitherConnector, PortForward, PortForwardConnector, PortForwardError,
    Transport, Tunnel,
};

pub use self::client::{ConnectError, ConnectTime, PodClient, PodClientBuilder, Protocol};
pub use self::mesh::{
    Affinity, AffinityKey, CanaryGuard, CanaryView, ConfigError, EndpointView, Mesh, MeshBuilder,
    MeshConfig, MeshError, MeshLayer, ReplayBody, ResponseBody, Route, ServiceView, Subset, Target,
    UnroutableView, WatchView,
};
#[cfg(feature = "metrics")]
pub use self::telemetry::Metrics;
pub use rudder_balance::{
    Algorithm, Ejection, EmptyReason, Endpoint, EndpointMeta, EndpointSet, Fallback, Labels,
    MetaBlock, Readiness, Selector, SelectorError, ServiceState, SlowStart, Split, SplitError,
    Unroutable, UnroutableReason, WatchKind,
};
pub use rudder_k8s::{
    Discovery, DiscoveryBuilder, DiscoveryError, HttpRoute, PodWatch, PortSpec, ServiceRef,
    ServiceRefError, Source as DiscoverySource, Static, Subscription,
};

/// The error type of Rudder's services: the Mesh's own [`MeshError`] or the inner
/// service's error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The README's Rust snippets, compiled as doc tests so the quick start stays correct.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
