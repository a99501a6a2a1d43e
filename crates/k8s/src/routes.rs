//! Gateway API `HTTPRoute`s (`gateway.networking.k8s.io/v1`), the fields Rudder reads, and
//! a per-namespace watch of them.
//!
//! The `gateway-api` crate of the kube-rs organisation would be the natural source of these
//! types, but its releases build on kube 4 and k8s-openapi 0.28 (and Rust 1.92), not on
//! the kube 5 / k8s-openapi 0.29 this workspace uses, so the few types Rudder reads are
//! written here. Fields Rudder does not read are not kept; fields it reads but cannot honour
//! (filters) are kept so that such a route can be refused whole rather than half-applied.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// An `HTTPRoute`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct HttpRoute {
    /// Standard object metadata.
    pub metadata: ObjectMeta,
    /// What the route says.
    #[serde(default)]
    pub spec: HttpRouteSpec,
}

impl kube::Resource for HttpRoute {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "HTTPRoute".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "gateway.networking.k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "httproutes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// `HTTPRoute.spec`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// What the route attaches to: for Rudder (GAMMA), Services (`kind: Service`, `group: ""`).
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Host names (not used for Service parents).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The rules; none means one rule matching everything with no backends.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// A `parentRefs` entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// API group of the parent (`""` for a Service; the schema defaults it to the Gateway
    /// API group).
    pub group: Option<String>,
    /// Kind of the parent (`Service`; the schema defaults it to `Gateway`).
    pub kind: Option<String>,
    /// Namespace of the parent (the route's own when unset).
    pub namespace: Option<String>,
    /// Name of the parent.
    #[serde(default)]
    pub name: String,
    /// The Service port the route applies to (every port when unset).
    pub port: Option<i32>,
    /// A named section of the parent (not used for Services).
    pub section_name: Option<String>,
}

/// A `rules` entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Conditions, any of which selects the rule (a `/` prefix when none).
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Where matching requests go, by weight.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Request or response changes (Rudder applies none: a route with filters is refused).
    #[serde(default)]
    pub filters: Vec<k8s_openapi::serde_json::Value>,
    /// Timeouts.
    pub timeouts: Option<Timeouts>,
}

/// A `matches` entry: every condition given must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// The path condition.
    pub path: Option<PathMatch>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    /// The request method.
    pub method: Option<String>,
}

/// A path condition.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct PathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The path, prefix or expression (default `/`).
    pub value: Option<String>,
}

/// A header or query parameter condition.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ValueMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The header or parameter name.
    #[serde(default)]
    pub name: String,
    /// The value or expression.
    #[serde(default)]
    pub value: String,
}

/// A `backendRefs` entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// API group (`""`, a Service, by default).
    pub group: Option<String>,
    /// Kind (`Service` by default).
    pub kind: Option<String>,
    /// Name of the backend.
    #[serde(default)]
    pub name: String,
    /// Namespace (the route's own when unset; another one needs a ReferenceGrant).
    pub namespace: Option<String>,
    /// The Service port.
    pub port: Option<i32>,
    /// Share of the rule's requests (1 by default; 0 sends none).
    pub weight: Option<i32>,
    /// Per-backend filters (Rudder applies none).
    #[serde(default)]
    pub filters: Vec<k8s_openapi::serde_json::Value>,
}

/// A rule's `timeouts`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// The whole request (Gateway API duration: `10s`, `500ms`, `1m30s`).
    pub request: Option<String>,
    /// One attempt to a backend.
    pub backend_request: Option<String>,
}

/// Parses a Gateway API duration (`1h`, `30s`, `500ms`, `1m30s`; at most four parts).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(n * 3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(n * 60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(n), 1)
        } else {
            return None;
        };
        total += unit;
        rest = &rest[len..];
        parts += 1;
        if parts > 4 {
            return None;
        }
    }
    (parts > 0).then_some(total)
}

/// Whether a namespace's routes are known.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoutesState {
    /// Not listed yet.
    Pending,
    /// Listed: [`RouteSet::routes`] are the namespace's routes.
    Synced,
    /// The API has no HTTPRoutes (the Gateway API CRDs are not installed) or this client
    /// may not read them: no routes apply. Asked again every
    /// [`forbidden_retry`](crate::DiscoveryBuilder::forbidden_retry).
    Unavailable(String),
}

/// A namespace's HTTPRoutes as last listed and watched.
#[derive(Clone, Debug)]
pub struct RouteSet {
    /// Whether the list is known.
    pub state: RoutesState,
    /// The routes, by name.
    pub routes: BTreeMap<String, Arc<HttpRoute>>,
}

/// A namespace's HTTPRoutes, followed from the API while held. See
/// [`Discovery::subscribe_routes`](crate::Discovery::subscribe_routes).
#[derive(Debug)]
pub struct RouteSubscription {
    rx: watch::Receiver<Arc<RouteSet>>,
    _entry: Arc<RouteEntry>,
}

impl RouteSubscription {
    /// The current set.
    pub fn current(&self) -> Arc<RouteSet> {
        self.rx.borrow().clone()
    }

    /// A receiver of every new set.
    pub fn receiver(&self) -> watch::Receiver<Arc<RouteSet>> {
        self.rx.clone()
    }
}

#[derive(Debug)]
pub(crate) struct RouteEntry {
    tx: watch::Sender<Arc<RouteSet>>,
    task: std::sync::OnceLock<AbortHandle>,
}

impl Drop for RouteEntry {
    fn drop(&mut self) {
        if let Some(t) = self.task.get() {
            t.abort();
        }
    }
}

/// Per namespace, the route watch shared by every subscription.
#[derive(Debug, Default)]
pub(crate) struct RouteWatches(Mutex<BTreeMap<String, Weak<RouteEntry>>>);

impl RouteWatches {
    pub(crate) fn subscribe(
        &self,
        client: &kube::Client,
        namespace: &str,
        retry: Duration,
        max_backoff: Duration,
    ) -> Result<RouteSubscription, crate::DiscoveryError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| crate::DiscoveryError::NoRuntime)?;
        let mut watches = self.0.lock().expect("routes lock");
        watches.retain(|_, w| w.strong_count() > 0);
        if let Some(entry) = watches.get(namespace).and_then(Weak::upgrade) {
            return Ok(RouteSubscription {
                rx: entry.tx.subscribe(),
                _entry: entry,
            });
        }
        let (tx, rx) = watch::channel(Arc::new(RouteSet {
            state: RoutesState::Pending,
            routes: BTreeMap::new(),
        }));
        let entry = Arc::new(RouteEntry {
            tx,
            task: std::sync::OnceLock::new(),
        });
        let task = runtime.spawn(follow(
            Arc::downgrade(&entry),
            Api::namespaced(client.clone(), namespace),
            namespace.to_string(),
            retry,
            max_backoff,
        ));
        let _ = entry.task.set(task.abort_handle());
        watches.insert(namespace.to_string(), Arc::downgrade(&entry));
        Ok(RouteSubscription { rx, _entry: entry })
    }
}

/// Lists and watches one namespace's routes for as long as anyone holds the entry.
async fn follow(
    entry: Weak<RouteEntry>,
    api: Api<HttpRoute>,
    namespace: String,
    retry: Duration,
    max_backoff: Duration,
) {
    let mut pending: Option<BTreeMap<String, Arc<HttpRoute>>> = None;
    let mut failures = 0u32;
    loop {
        let mut config = watcher::Config::default().any_semantic();
        config.page_size = None;
        let mut stream = watcher::watcher(api.clone(), config).boxed();
        while let Some(event) = stream.next().await {
            let Some(entry) = entry.upgrade() else { return };
            match event {
                Ok(event) => {
                    // `Init` only announces a list attempt; anything else is news.
                    if !matches!(event, Event::Init) {
                        failures = 0;
                    }
                    let name = |r: &HttpRoute| r.metadata.name.clone().unwrap_or_default();
                    match event {
                        Event::Init => pending = Some(BTreeMap::new()),
                        Event::InitApply(r) => {
                            pending
                                .get_or_insert_with(BTreeMap::new)
                                .insert(name(&r), Arc::new(r));
                        }
                        Event::InitDone => {
                            let routes = pending.take().unwrap_or_default();
                            entry.tx.send_replace(Arc::new(RouteSet {
                                state: RoutesState::Synced,
                                routes,
                            }));
                        }
                        Event::Apply(r) => entry.tx.send_modify(|set| {
                            let mut next = (**set).clone();
                            next.routes.insert(name(&r), Arc::new(r));
                            *set = Arc::new(next);
                        }),
                        Event::Delete(r) => entry.tx.send_modify(|set| {
                            let mut next = (**set).clone();
                            next.routes.remove(&name(&r));
                            *set = Arc::new(next);
                        }),
                    }
                }
                Err(e) => {
                    let code = match &e {
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
                        watcher::Error::WatchError(s) => Some(s.code),
                        _ => None,
                    };
                    let unavailable = match code {
                        Some(404) => Some(
                            "the API serves no HTTPRoutes (Gateway API CRDs not installed)"
                                .to_string(),
                        ),
                        Some(403) => Some(format!(
                            "this client may not read HTTPRoutes in {namespace}: grant get/list/watch on httproutes.gateway.networking.k8s.io (see deploy/rbac.yaml)"
                        )),
                        _ => None,
                    };
                    match unavailable {
                        Some(why) => {
                            // An answer: no routes apply. Ask again later.
                            if entry.tx.borrow().state != RoutesState::Unavailable(why.clone()) {
                                tracing::info!(namespace = %namespace, reason = %why, "no HTTPRoutes apply");
                            }
                            entry.tx.send_replace(Arc::new(RouteSet {
                                state: RoutesState::Unavailable(why),
                                routes: BTreeMap::new(),
                            }));
                            drop(entry);
                            tokio::time::sleep(retry).await;
                        }
                        None => {
                            failures += 1;
                            if failures == 1 {
                                tracing::warn!(namespace = %namespace, error = %e, "HTTPRoute watch failed; keeping the last known routes");
                            }
                            drop(entry);
                            let wait = Duration::from_millis(50)
                                .saturating_mul(1 << failures.min(10))
                                .min(max_backoff);
                            tokio::time::sleep(wait).await;
                        }
                    }
                    // Start over with a list.
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn gateway_durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "1x", "123456s", "1h1m1s1ms1s", "-1s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
