//! Kubernetes-native endpoint discovery for Rudder.
//!
//! This crate will watch EndpointSlices (or v1 Endpoints), Services and Pod metadata through
//! the caller's `kube::Client` and publish immutable endpoint snapshots per Service.
//!
//! Status: not implemented yet; the test API server it will be tested against lives in
//! `rudder-testkit`.
