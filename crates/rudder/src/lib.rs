//! Rudder: tower layers that send each HTTP request to a ready Kubernetes Pod chosen per
//! request, without DNS and without the Service ClusterIP.
//!
//! This crate will hold `Mesh` and `MeshLayer`, the layer users wrap around their hyper or
//! tonic client. Discovery lives in `rudder-k8s` and balancing in `rudder-balance`; the
//! test API server and Pod servers in `rudder-testkit`.
//!
//! Status: the workspace foundation is in place; the layer itself is not implemented yet.
