//! Discovery without Kubernetes: a fixed or hand-updated endpoint list.

use std::sync::Arc;

use rudder_balance::{Endpoint, EndpointSet, ServiceState};
use tokio::sync::watch;

/// Publishes [`EndpointSet`]s from a list the caller controls, with the same output type as
/// [`Discovery`](crate::Discovery): for tests, local development and non-Kubernetes use.
///
/// ```
/// use rudder_balance::Endpoint;
/// let s = rudder_k8s::Static::new(vec![Endpoint::new("127.0.0.1:8080".parse().unwrap())]);
/// let rx = s.subscribe();
/// s.set(vec![]);
/// assert!(rx.borrow().is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct Static {
    tx: Arc<watch::Sender<Arc<EndpointSet>>>,
}

impl Static {
    /// Starts with `endpoints` (an active Service).
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        let (tx, _) = watch::channel(Arc::new(EndpointSet::new(ServiceState::Active, endpoints)));
        Self { tx: Arc::new(tx) }
    }

    /// A receiver of the snapshots.
    pub fn subscribe(&self) -> watch::Receiver<Arc<EndpointSet>> {
        self.tx.subscribe()
    }

    /// Replaces the endpoints; receivers see a new snapshot if the content changed.
    pub fn set(&self, endpoints: Vec<Endpoint>) {
        let set = EndpointSet::new(ServiceState::Active, endpoints);
        self.tx.send_if_modified(|cur| {
            if **cur == set {
                return false;
            }
            *cur = Arc::new(set);
            true
        });
    }
}
