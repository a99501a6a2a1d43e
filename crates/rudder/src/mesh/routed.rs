//! Per-Service routing state: a [`Pool`] kept current by an updater task that follows
//! discovery, so requests only ever load a ready snapshot.
//!
//! This is linkerd2-proxy's shape (a worker task feeds the balancer's pool from the
//! resolution stream): indexing a new snapshot, building Maglev tables, re-weighting
//! slow-start ramps and making each endpoint's URI authority all happen in the updater,
//! never while a request waits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use rudder_balance::{EmptyReason, Endpoint, EndpointSet, Pool, PoolConfig, Retired, ServiceState};
use rudder_k8s::ServiceRef;
use tokio::sync::watch;

use crate::telemetry::{EndpointTelemetry, Telemetry};

/// What keeps a Service's discovery running while the Mesh routes to it.
#[derive(Debug)]
pub(crate) enum Keep {
    Subscription(rudder_k8s::Subscription),
    Static,
}

/// What the request path needs of each endpoint besides its address, made once per
/// snapshot.
#[derive(Debug)]
pub(crate) struct EndpointExtra {
    /// The endpoint's `ip:port` as a URI authority.
    pub(crate) authority: http::uri::Authority,
    /// Its metric handles, per subset label.
    pub(crate) telemetry: EndpointTelemetry,
    /// The Pod behind it, if known (for port-forward tunnels).
    #[cfg_attr(not(feature = "port-forward"), allow(dead_code))]
    pub(crate) pod: Option<Arc<str>>,
    /// Its port-forward registration, made on its first request and dropped with it.
    #[cfg(feature = "port-forward")]
    pub(crate) tunnel: std::sync::OnceLock<crate::portforward::Release>,
}

/// One request on one endpoint, as the Mesh records it.
pub(crate) type Attempt = rudder_balance::Attempt<EndpointExtra>;

/// A new endpoint's payload (an address that stays with the same Pod keeps its own).
fn extra(telemetry: &Telemetry, e: &Endpoint) -> EndpointExtra {
    super::local::endpoint_arrived();
    EndpointExtra {
        // Shared from the start: bytes made from a `String` (as `parse` makes them)
        // allocate again on their first clone, which would be a request's.
        authority: Authority::from_maybe_shared(Bytes::from_owner(e.addr().to_string()))
            .expect("a socket address is a URI authority"),
        telemetry: telemetry.endpoint(),
        pod: e.meta().pod.clone(),
        #[cfg(feature = "port-forward")]
        tunnel: std::sync::OnceLock::new(),
    }
}

/// One Service port as the Mesh routes to it.
#[derive(Debug)]
pub(crate) struct Routed {
    pub(crate) service: ServiceRef,
    /// The Service as a metric label and log field, made once.
    pub(crate) label: Arc<str>,
    pub(crate) pool: Arc<Pool<EndpointExtra>>,
    /// The Mesh's settings, telemetry and retry budget.
    pub(crate) policy: Arc<super::Policy>,
    /// Flips to `true` once discovery has decided: synced, or its first attempt failed.
    synced: watch::Receiver<bool>,
    /// The same, read by every request without the watch channel's lock; also set when a
    /// request gave up waiting, so later ones fail (or fall back) at once.
    is_synced: Arc<AtomicBool>,
    /// Discovery and the updater, until the Mesh releases this Service (dropping them stops
    /// the watches and the updater; the pool keeps its last snapshot).
    running: Mutex<Option<(Keep, watch::Sender<()>)>>,
    /// Set by requests, cleared by the Mesh's sweeper: whether the Service was used since
    /// the last sweep.
    used: AtomicBool,
    /// When the sweeper last saw it used (or made it).
    pub(crate) last_used: Mutex<Instant>,
    /// When its watches were released after a negative answer.
    pub(crate) released: Mutex<Option<Instant>>,
    /// Its namespace's HTTPRoutes, found on its first request (so later ones need no map
    /// lookup).
    pub(crate) routes: std::sync::OnceLock<Arc<super::gamma::NsRoutes>>,
    /// The name its Pods are verified as over TLS.
    #[cfg(feature = "tls")]
    pub(crate) tls_name: Option<rustls::pki_types::ServerName<'static>>,
}

impl Routed {
    /// Builds the pool from the newest snapshot in `rx` and starts its updater.
    pub(crate) fn new(
        service: ServiceRef,
        mut rx: watch::Receiver<Arc<EndpointSet>>,
        keep: Keep,
        config: PoolConfig,
        policy: Arc<super::Policy>,
    ) -> Self {
        let telemetry = policy.telemetry.clone();
        let label: Arc<str> = service.to_string().into();
        let hook = telemetry.ejection_hook(label.clone());
        let set = rx.borrow_and_update().clone();
        let is_synced = *set.state() != ServiceState::Pending;
        let pool = Arc::new(Pool::with_ejection_hook(
            config,
            set,
            |e| extra(&telemetry, e),
            Some(hook),
        ));
        let (synced_tx, synced) = watch::channel(is_synced);
        let is_synced = Arc::new(AtomicBool::new(is_synced));
        let (stop, stopped) = watch::channel(());
        tokio::spawn(follow(
            Arc::downgrade(&pool),
            rx,
            (synced_tx, is_synced.clone()),
            stopped,
            telemetry,
        ));
        Self {
            service,
            label,
            pool,
            policy,
            synced,
            is_synced,
            running: Mutex::new(Some((keep, stop))),
            used: AtomicBool::new(true),
            last_used: Mutex::new(Instant::now()),
            released: Mutex::new(None),
            routes: std::sync::OnceLock::new(),
            #[cfg(feature = "tls")]
            tls_name: None,
        }
    }

    /// The last discovery failure, if any.
    pub(crate) fn last_error(&self) -> Option<String> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.as_ref().map(|(keep, _)| keep) {
            Some(Keep::Subscription(s)) => s.last_error(),
            _ => None,
        }
    }

    /// Waits (at most `bound`) until discovery has decided about the Service (synced, or
    /// failed its first attempt); `false` when the wait ran out. With `give_up`, later
    /// calls then return at once until discovery decides.
    pub(crate) async fn decided(&self, bound: Duration, give_up: bool) -> bool {
        if self.is_synced.load(Ordering::Acquire) {
            return true;
        }
        let mut rx = self.synced.clone();
        let decided = matches!(
            tokio::time::timeout(bound, rx.wait_for(|s| *s)).await,
            Ok(Ok(_))
        );
        if give_up {
            // Fail fast from now on: one request paid the wait.
            self.is_synced.store(true, Ordering::Release);
        }
        decided
    }

    /// Whether discovery has decided (or a request gave up waiting): no wait ahead.
    pub(crate) fn is_decided(&self) -> bool {
        self.is_synced.load(Ordering::Acquire)
    }

    /// Marks the Service as used (cheap: a read, and a write once per sweep).
    pub(crate) fn touch(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Whether it was used since the last call.
    pub(crate) fn take_used(&self) -> bool {
        self.used.swap(false, Ordering::Relaxed)
    }

    /// Whether discovery's answer is negative (no such Service or port, or not allowed to
    /// look): then its watches can go, and the answer is kept for a while.
    pub(crate) fn is_negative(&self) -> bool {
        let snapshot = self.pool.snapshot();
        let set = snapshot.set();
        match set.state() {
            ServiceState::NotFound | ServiceState::Forbidden(_) => true,
            ServiceState::Active => set.empty_reason() == Some(EmptyReason::NoSuchPort),
            _ => false,
        }
    }

    /// Whether its watches were released.
    pub(crate) fn is_released(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Stops discovery and the updater; the pool keeps its last snapshot.
    pub(crate) fn release(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(running);
    }
}

/// How often the updater looks again at replaced snapshots that were still held.
pub(crate) const RELEASE_EVERY: Duration = Duration::from_millis(250);

/// The updater: re-indexes the pool whenever discovery publishes, and while slow-start
/// ramps run, every [`Pool::refresh_interval`]. Replaced snapshots that something still
/// holds (a request's [`Pool::load`] borrow that the swap turned into a reference, a view,
/// or, once the Mesh released the Service, the pool that requests in flight still reach)
/// are kept until they no longer are, then dropped here (see [`Retired`]): a request never
/// tears down a snapshot, O(endpoints). Stops updating when the [`Routed`] is released or
/// dropped or discovery ends, and ends once nothing else holds a snapshot it replaced.
async fn follow(
    pool: Weak<Pool<EndpointExtra>>,
    mut rx: watch::Receiver<Arc<EndpointSet>>,
    (synced, is_synced): (watch::Sender<bool>, Arc<AtomicBool>),
    mut stop: watch::Receiver<()>,
    telemetry: Arc<Telemetry>,
) {
    let mut ramp = pool
        .upgrade()
        .and_then(|p| p.ramping().then(|| p.refresh_interval()));
    let mut retired = Retired::new();
    'routed: loop {
        let tick = async {
            match ramp {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        let held = !retired.is_empty();
        let release = async move {
            match held {
                true => tokio::time::sleep(RELEASE_EVERY).await,
                false => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    break 'routed;
                }
                let set = rx.borrow_and_update().clone();
                let Some(p) = pool.upgrade() else { break 'routed };
                let set_synced = *set.state() != ServiceState::Pending;
                // A new Pod at an old Pod's address gets a payload of its own (its
                // port-forward tunnels name the Pod): the pool asks only for those.
                // The entry list of the last snapshot let go is patched into the new one.
                let spare = retired.take_spare();
                retired.keep(p.update_reusing(set, |e| extra(&telemetry, e), spare));
                retired.release();
                ramp = p.ramping().then(|| p.refresh_interval());
                if set_synced {
                    // The flag first: a request that sees the watch flip also sees it.
                    is_synced.store(true, Ordering::Release);
                    synced.send_if_modified(|s| !std::mem::replace(s, true));
                }
            }
            () = tick => {
                let Some(p) = pool.upgrade() else { break 'routed };
                if let Some(replaced) = p.refresh() {
                    retired.keep(replaced);
                }
                ramp = p.ramping().then(|| p.refresh_interval());
            }
            () = release => {
                retired.release();
            }
            _ = stop.changed() => {
                // Released: requests in flight may still hold the Service's routing
                // state, the pool and its snapshot with it, and the last of them would
                // tear that down. Kept here too, it is torn down here.
                if let Some(p) = pool.upgrade() {
                    retired.keep(p.snapshot());
                }
                break 'routed;
            }
        }
    }
    // Released (or discovery ended): requests still in flight may hold snapshots this
    // updater replaced, or the last one. It stays until they let go, so that the last of
    // them does not tear one down.
    while !retired.is_empty() {
        tokio::time::sleep(RELEASE_EVERY).await;
        retired.release();
    }
}
