//! Kubernetes-native endpoint discovery for Rudder.
//!
//! [`Discovery`] watches a Service, its EndpointSlices (or `v1` Endpoints) and its Pods
//! through the caller's `kube::Client`, and publishes immutable
//! [`EndpointSet`](rudder_balance::EndpointSet) snapshots per Service port: ready
//! endpoints with their Pod's labels, zone, weight and timing, or a distinct state when the
//! Service does not exist, is an `ExternalName`, or has no endpoints. [`Static`] publishes
//! the same type from a fixed or hand-updated list, for tests and non-Kubernetes use.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), rudder_k8s::DiscoveryError> {
//! use std::time::Duration;
//! let discovery = rudder_k8s::Discovery::new(client);
//! let mut hello = discovery.subscribe_str("hello-svc.default:8080")?;
//! let set = hello.synced(Duration::from_secs(5)).await?;
//! for ep in set.routable() {
//!     println!("{} {:?}", ep.addr(), ep.meta().pod);
//! }
//! # Ok(()) }
//! ```

pub mod convert;
mod discovery;
mod error;
mod routes;
mod service_ref;
mod static_;

pub use self::convert::{PodInfo, WEIGHT_ANNOTATION};
pub use self::discovery::{Discovery, DiscoveryBuilder, PodWatch, Source, Subscription};
pub use self::error::DiscoveryError;
pub use self::routes::{
    BackendRef, HttpRoute, HttpRouteMatch, HttpRouteRule, HttpRouteSpec, ParentRef, PathMatch,
    RouteSet, RouteSubscription, RoutesState, Timeouts, ValueMatch, parse_duration,
};
pub use self::service_ref::{PortSpec, ServiceRef, ServiceRefError};
pub use self::static_::Static;
