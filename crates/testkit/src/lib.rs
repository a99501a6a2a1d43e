//! Test support for Rudder and for any kube-rs client: a Kubernetes API server and Pod
//! servers that run in-process on loopback, so discovery, routing and fault handling can be
//! tested end to end without a cluster.
//!
//! - [`ApiServer`]: HTTPS list/watch/CRUD for Namespaces, Nodes, Pods, Services, Endpoints
//!   and EndpointSlices, with the EndpointSlice/Endpoints controllers and fault injection
//!   ([`Faults`]). Reach it with [`ApiServer::client`] (a `kube::Client`) or with `kubectl`
//!   through [`ApiServer::kubeconfig_path`].
//! - [`PodServer`]: a hyper server (HTTP/1.1 and HTTP/2 cleartext) on its own loopback IP
//!   that answers with its Pod name and labels, with latency, error and kill knobs.
//! - [`TestCluster`]: an API server plus N Pod servers registered as Ready Pods behind one
//!   Service, in one call.
//! - [`Trace`]: watch events with their timing, recorded by a server
//!   ([`ApiServerBuilder::record`], `rudder-apiserver --record FILE`) or captured from a real
//!   kube-apiserver ([`Trace::from_watch_stream`]), played into a server with
//!   [`ApiServer::replay`] (real, faster or instant) or one event at a time with
//!   [`ApiServer::apply`].
//!
//! The `rudder-apiserver` binary runs the same server for people and scripts.

mod apiserver;
mod cluster;
mod error;
pub mod grpc;
mod pod_server;
mod pod_tls;

pub use self::apiserver::{
    Access, ApiServer, ApiServerBuilder, Faults, Rule, Speed, Trace, TraceEvent, TraceEventKind,
    Traffic,
};
pub use self::cluster::{TestCluster, TestClusterBuilder};
pub use self::error::Error;
pub use self::pod_server::{PodReply, PodServer, next_loopback_ip};
pub use self::pod_tls::PodTls;
