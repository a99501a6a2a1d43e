//! An in-process Kubernetes API server that speaks the real wire protocol on loopback.
//!
//! [`ApiServer`] serves `v1` Namespaces, Nodes, Pods (with `status`), Services and Endpoints,
//! and `discovery.k8s.io/v1` EndpointSlices over HTTPS (HTTP/1.1 and HTTP/2) with bearer
//! tokens. It implements get, list (label and field selectors, `limit`/`continue`), watch
//! (`resourceVersion` replay, bookmarks, `410 Gone`), create, update, patch (merge, JSON and
//! the strategic-merge patches `kubectl label`/`annotate` send), delete (graceful for Pods)
//! and metadata-only (`PartialObjectMetadata`) responses, with errors as `Status` objects.
//! Controllers keep each selector Service's EndpointSlices and Endpoints up to date, the
//! way `kube-controller-manager` does, and mirror hand-made Endpoints of selector-less
//! Services into slices.
//!
//! The wire format was checked against captures from kube-apiserver v1.34 (the fixtures in
//! the repository's `shared/fixtures`); the crate's tests compare the two field by field.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rudder_testkit::Error> {
//! use k8s_openapi::api::core::v1::Pod;
//! use kube::api::{Api, ListParams};
//!
//! let server = rudder_testkit::ApiServer::start().await?;
//! let pods: Api<Pod> = Api::namespaced(server.client().await?, "default");
//! assert!(pods.list(&ListParams::default()).await?.items.is_empty());
//! # Ok(()) }
//! ```

mod access;
mod admission;
mod controller;
mod discovery;
mod faults;
mod handler;
mod query;
mod resource;
mod server;
mod status;
mod store;
mod table;
mod tls;
mod watch;

pub use self::access::{Access, Rule};
pub use self::faults::Faults;
pub use self::server::{ApiServer, ApiServerBuilder};
