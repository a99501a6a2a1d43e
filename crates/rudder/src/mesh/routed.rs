//! Per-Service routing state: the subscription, per-endpoint load and the subset index of
//! the newest snapshot, rebuilt only when discovery publishes a new one.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rudder_balance::{Balancer, EndpointLoad, EndpointSet, LoadTable, Selector, SubsetIndex};
use rudder_k8s::ServiceRef;
use tokio::sync::watch;

/// What keeps a Service's discovery running while the Mesh routes to it.
#[derive(Debug)]
pub(crate) enum Keep {
    Subscription(rudder_k8s::Subscription),
    Static,
}

/// One Service port as the Mesh routes to it.
#[derive(Debug)]
pub(crate) struct Routed {
    pub(crate) service: ServiceRef,
    rx: watch::Receiver<Arc<EndpointSet>>,
    _keep: Keep,
    pub(crate) loads: LoadTable,
    pub(crate) balancer: Balancer,
    /// Selectors indexed up front with every snapshot (the static subset, split legs and
    /// fallback), so requests never index them.
    selectors: Vec<Selector>,
    view: RwLock<Arc<View>>,
}

/// One snapshot, indexed.
#[derive(Debug)]
pub(crate) struct View {
    pub(crate) index: SubsetIndex,
    pub(crate) loads: Arc<[Arc<EndpointLoad>]>,
    /// Each endpoint's `ip:port` as a URI authority, made once per snapshot.
    pub(crate) authorities: Vec<http::uri::Authority>,
}

impl View {
    fn new(set: Arc<EndpointSet>, loads: &LoadTable, selectors: &[Selector]) -> Self {
        let authorities = set
            .endpoints()
            .iter()
            .map(|e| {
                e.addr()
                    .to_string()
                    .parse()
                    .expect("a socket address is a URI authority")
            })
            .collect();
        Self {
            loads: loads.for_set(&set),
            index: SubsetIndex::new(set, selectors),
            authorities,
        }
    }

    pub(crate) fn set(&self) -> &Arc<EndpointSet> {
        self.index.set()
    }
}

impl Routed {
    pub(crate) fn new(
        service: ServiceRef,
        rx: watch::Receiver<Arc<EndpointSet>>,
        keep: Keep,
        loads: LoadTable,
        balancer: Balancer,
        selectors: Vec<Selector>,
    ) -> Self {
        let set = rx.borrow().clone();
        let view = View::new(set, &loads, &selectors);
        Self {
            service,
            rx,
            _keep: keep,
            loads,
            balancer,
            selectors,
            view: RwLock::new(Arc::new(view)),
        }
    }

    /// The newest snapshot, indexed (built once per snapshot, by whichever request sees it
    /// first).
    pub(crate) fn view(&self) -> Arc<View> {
        let set = self.rx.borrow().clone();
        {
            let view = self.view.read().expect("view lock");
            if Arc::ptr_eq(view.set(), &set) {
                return view.clone();
            }
        }
        let mut slot = self.view.write().expect("view lock");
        if !Arc::ptr_eq(slot.set(), &set) {
            *slot = Arc::new(View::new(set, &self.loads, &self.selectors));
        }
        slot.clone()
    }

    /// The last discovery failure, if any.
    pub(crate) fn last_error(&self) -> Option<String> {
        match &self._keep {
            Keep::Subscription(s) => s.last_error(),
            Keep::Static => None,
        }
    }

    /// Waits (at most `bound`) for the first sync; whether it happened.
    pub(crate) async fn synced(&self, bound: Duration) -> bool {
        if *self.rx.borrow().state() != rudder_balance::ServiceState::Pending {
            return true;
        }
        let mut rx = self.rx.clone();
        let wait = rx.wait_for(|s| *s.state() != rudder_balance::ServiceState::Pending);
        matches!(tokio::time::timeout(bound, wait).await, Ok(Ok(_)))
    }
}
