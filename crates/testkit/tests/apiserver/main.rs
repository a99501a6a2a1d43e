//! End-to-end tests of the test API server: through `kube::Client`, through `kubectl`,
//! against the golden captures of a real kube-apiserver, under faults and garbage.

mod binary;
mod faults;
mod garbage;
mod golden;
mod kube_api;
mod kubectl;
mod kubectl_golden;
mod pod_server;
mod support;
mod trace;
