//! Traffic policy from the cluster: Gateway API `HTTPRoute`s whose parent is a Service
//! (the GAMMA way), compiled when discovery publishes them, evaluated per request.
//!
//! A request for Service `S` that matches a rule of a route attached to `S` goes to one of
//! the rule's backend Services, chosen by weight; its Rudder subset (extension, header,
//! code routes, split) then picks Pods within that backend Service. A request that matches
//! no rule goes to `S` itself. Routes are applied whole or not at all: one with a field
//! Rudder cannot honour (filters, backends of other kinds or namespaces, `backendRequest`
//! timeouts, invalid expressions) is skipped with a warning naming the field.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderName, Method, Request};
use regex::Regex;
use rudder_k8s::{
    HttpRoute, HttpRouteMatch, PortSpec, RouteSet, RouteSubscription, RoutesState, ServiceRef,
};

/// Guards canary backends of HTTPRoute rules from inside the client (off by default; see
/// [`MeshBuilder::canary_guard`](crate::MeshBuilder::canary_guard)).
///
/// In a rule with several backends, the one with the largest weight is the stable one and
/// the others are canaries. Each backend's requests and failures (no response, or a 5xx)
/// are counted over a sliding window. When a canary has at least `min_requests` in the
/// window and its failure rate exceeds the stable backend's by more than `margin`, this
/// client stops sending it traffic (its share goes to the stable backend), logs it at WARN
/// and shows it in [`MeshLayer::canaries`](crate::MeshLayer::canaries). A `probe_share` of
/// the canary's normal traffic still reaches it; once those probes (at least a quarter of
/// `min_requests`) fail no more than the stable backend's rate plus half the margin, its
/// weight comes back (logged at INFO). With `probe_share` 0 a guarded canary gets nothing
/// until the route changes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct CanaryGuard {
    /// How much higher than the stable backend's a canary's failure rate may be (0-1).
    pub margin: f64,
    /// Requests a backend needs in the window before it is judged.
    pub min_requests: u32,
    /// How far back requests count.
    pub window: Duration,
    /// Share (0-1) of a guarded canary's normal traffic still sent to it as probes.
    pub probe_share: f64,
}

impl Default for CanaryGuard {
    /// A 10-point margin, 20 requests, a 30 s window, 5 % probes.
    fn default() -> Self {
        Self {
            margin: 0.1,
            min_requests: 20,
            window: Duration::from_secs(30),
            probe_share: 0.05,
        }
    }
}

impl CanaryGuard {
    /// A guard with these settings.
    pub fn new(margin: f64, min_requests: u32, window: Duration, probe_share: f64) -> Self {
        Self {
            margin,
            min_requests,
            window,
            probe_share,
        }
    }

    pub(crate) fn is_valid(&self) -> bool {
        (0.0..=1.0).contains(&self.margin)
            && (0.0..=1.0).contains(&self.probe_share)
            && self.min_requests > 0
            && !self.window.is_zero()
    }
}

/// A canary backend as the guard sees it (see [`MeshLayer::canaries`](crate::MeshLayer::canaries)).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct CanaryView {
    /// The route, `namespace/name`.
    pub route: String,
    /// The backend Service (`name.namespace:port`).
    pub backend: String,
    /// Its weight in the route.
    pub weight: u32,
    /// Whether the guard holds its traffic back.
    pub guarded: bool,
    /// Requests in the window (since the last change of state).
    pub requests: u32,
    /// Failures in the window (since the last change of state).
    pub failures: u32,
}

/// Requests and failures over a sliding window: two half-window buckets.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    start: Option<tokio::time::Instant>,
    current: (u32, u32),
    previous: (u32, u32),
}

impl Window {
    fn roll(&mut self, now: tokio::time::Instant, span: Duration) {
        let half = span / 2;
        match self.start {
            None => self.start = Some(now),
            Some(start) if now.duration_since(start) >= span => {
                *self = Window {
                    start: Some(now),
                    ..Window::default()
                };
            }
            Some(start) if now.duration_since(start) >= half => {
                self.previous = self.current;
                self.current = (0, 0);
                self.start = Some(start + half);
            }
            Some(_) => {}
        }
    }

    fn record(&mut self, failed: bool, now: tokio::time::Instant, span: Duration) {
        self.roll(now, span);
        self.current.0 += 1;
        self.current.1 += u32::from(failed);
    }

    fn totals(&self) -> (u32, u32) {
        (
            self.current.0 + self.previous.0,
            self.current.1 + self.previous.1,
        )
    }
}

fn rate((requests, failures): (u32, u32)) -> f64 {
    if requests == 0 {
        0.0
    } else {
        f64::from(failures) / f64::from(requests)
    }
}

/// The guard's state of one rule.
#[derive(Debug)]
struct Guard {
    config: CanaryGuard,
    stable: usize,
    windows: std::sync::Mutex<Vec<Window>>,
    guarded: Vec<std::sync::atomic::AtomicBool>,
    probes: AtomicU64,
}

/// A namespace's routes, compiled, followed while the Mesh uses the namespace.
pub(crate) struct NsRoutes {
    guard: Option<CanaryGuard>,
    compiled: Arc<ArcSwap<Compiled>>,
    rx: tokio::sync::watch::Receiver<Arc<RouteSet>>,
    task: tokio::task::AbortHandle,
    _sub: RouteSubscription,
}

impl Drop for NsRoutes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for NsRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsRoutes").finish_non_exhaustive()
    }
}

impl NsRoutes {
    /// Follows `sub`, compiling each new set of routes of `namespace` off the request path.
    pub(crate) fn follow(
        namespace: &str,
        sub: RouteSubscription,
        guard: Option<CanaryGuard>,
    ) -> Self {
        let mut rx = sub.receiver();
        let first = rx.borrow_and_update().clone();
        let compiled = Arc::new(ArcSwap::from_pointee(
            Compiled::from_set(namespace, guard, &first, None).seen_through(rx.clone()),
        ));
        let out = compiled.clone();
        let ns = namespace.to_string();
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let set = rx.borrow_and_update().clone();
                // A request may have compiled this set already (see `ready_now`).
                let current = out.load_full();
                if !Arc::ptr_eq(&current.source, &set) || current.outdated() {
                    out.store(Arc::new(
                        Compiled::from_set(&ns, guard, &set, Some(&current))
                            .seen_through(rx.clone()),
                    ));
                }
            }
        });
        Self {
            guard,
            compiled,
            rx: sub.receiver(),
            task: task.abort_handle(),
            _sub: sub,
        }
    }

    /// The compiled routes once the namespace's list is known (or known to be
    /// unavailable), waiting at most `bound`; `None` if that was not enough.
    pub(crate) async fn ready(&self, bound: Duration) -> Option<Arc<Compiled>> {
        if let Some(compiled) = self.ready_now() {
            return Some(compiled);
        }
        // Only the first requests of a namespace wait (and clone the receiver).
        let mut rx = self.rx.clone();
        let wait = rx.wait_for(|s| s.state != RoutesState::Pending);
        if !matches!(tokio::time::timeout(bound, wait).await, Ok(Ok(_))) {
            return None;
        }
        self.ready_now()
    }

    /// The compiled routes for a request that does not wait; `None` while the namespace's
    /// list is pending. A load of the shared pointer and an atomic read of the routes'
    /// version: nothing written that other threads read (no reference count, no lock).
    /// When a newer set arrived and the follower has not compiled it yet, the request
    /// compiles it, once, for every request after it too: a route change reaches
    /// requests as soon as it is published, not when the follower next runs.
    pub(crate) fn now(&self) -> Option<arc_swap::Guard<Arc<Compiled>>> {
        let current = self.compiled.load();
        if current.outdated() {
            drop(current);
            self.ready_now()?;
            return Some(self.compiled.load());
        }
        (current.source.state != RoutesState::Pending).then_some(current)
    }

    /// The compiled routes if the namespace's list is known (or known to be unavailable),
    /// without waiting; `None` while it is still pending. The newest set is compiled here
    /// if the follower has not compiled it yet.
    fn ready_now(&self) -> Option<Arc<Compiled>> {
        let current = self.compiled.load_full();
        let mut seen = self.rx.clone();
        let set = seen.borrow_and_update().clone();
        if set.state == RoutesState::Pending {
            return None;
        }
        // The same set, and a table that knows it is current.
        if Arc::ptr_eq(&current.source, &set) && !current.outdated() {
            return Some(current);
        }
        let next = Arc::new(
            Compiled::from_set(&current.namespace, self.guard, &set, Some(&current))
                .seen_through(seen),
        );
        self.compiled.store(next.clone());
        Some(next)
    }

    /// The guard's view of this namespace's canaries.
    pub(crate) fn canaries(&self) -> Vec<CanaryView> {
        self.compiled.load().canaries()
    }
}

/// One namespace's applicable rules, per parent Service, in precedence order.
#[derive(Debug)]
pub(crate) struct Compiled {
    namespace: String,
    /// The set this was compiled from.
    source: Arc<RouteSet>,
    /// A receiver that has seen `source`: it tells, with one atomic load and no write,
    /// whether a newer set was published since (see [`NsRoutes::now`]).
    seen: Option<tokio::sync::watch::Receiver<Arc<RouteSet>>>,
    by_parent: HashMap<String, Vec<Entry>>,
}

#[derive(Debug)]
struct Entry {
    /// The Service port the route attaches to (every port when `None`).
    port: Option<u16>,
    matcher: Matcher,
    target: Arc<Target>,
}

#[derive(Debug)]
enum Cond {
    Exact(String),
    Regex(Regex),
}

impl Cond {
    fn matches(&self, v: &str) -> bool {
        match self {
            Cond::Exact(e) => e == v,
            Cond::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Debug)]
enum PathCond {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
struct Matcher {
    path: PathCond,
    method: Option<Method>,
    headers: Vec<(HeaderName, Cond)>,
    query: Vec<(String, Cond)>,
}

impl Matcher {
    fn matches<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        let path_ok = match &self.path {
            PathCond::Exact(p) => path == p,
            PathCond::Prefix(p) => {
                // Element-wise: `/foo` takes `/foo` and `/foo/bar`, not `/foobar`.
                let p = p.trim_end_matches('/');
                path.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathCond::Regex(r) => r.is_match(path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == req.method())
            && self.headers.iter().all(|(name, cond)| {
                req.headers()
                    .get_all(name)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| cond.matches(v)))
            })
            && self.query.iter().all(|(name, cond)| {
                let value = req.uri().query().and_then(|q| {
                    q.split('&').find_map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        (k == name).then_some(v)
                    })
                });
                value.is_some_and(|v| cond.matches(v))
            })
    }

    /// Gateway API precedence: exact paths, then longer prefixes, then a method, then
    /// more header matches, then more query matches (larger sorts first).
    fn rank(&self) -> (u8, usize, bool, usize, usize) {
        let (kind, len) = match &self.path {
            PathCond::Exact(p) => (3, p.len()),
            PathCond::Prefix(p) => (2, p.trim_end_matches('/').len()),
            PathCond::Regex(_) => (1, 0),
        };
        (
            kind,
            len,
            self.method.is_some(),
            self.headers.len(),
            self.query.len(),
        )
    }
}

/// Where a rule sends requests.
#[derive(Debug)]
pub(crate) struct Target {
    /// `namespace/name` of the route, for logs and errors.
    pub(crate) route: String,
    /// The rule's index in the route.
    rule: usize,
    backends: Vec<(ServiceRef, u32)>,
    total: u32,
    step: u64,
    turn: AtomicU64,
    /// The rule's request timeout.
    pub(crate) timeout: Option<Duration>,
    guard: Option<Guard>,
}

impl Target {
    /// The next backend, by weight: over every `total` requests each backend gets exactly
    /// its weight, spread out rather than in runs. `None` when every weight is 0.
    pub(crate) fn pick(&self) -> Option<(usize, &ServiceRef)> {
        if self.total == 0 {
            return None;
        }
        let n = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut slot = (n.wrapping_mul(self.step) % u64::from(self.total)) as u32;
        let mut chosen = None;
        for (i, (_, w)) in self.backends.iter().enumerate() {
            if slot < *w {
                chosen = Some(i);
                break;
            }
            slot -= w;
        }
        let mut i = chosen?;
        if let Some(g) = &self.guard
            && g.guarded[i].load(Ordering::Relaxed)
        {
            // A guarded canary's turn goes to the stable backend, but for its probes.
            let every = if g.config.probe_share > 0.0 {
                (1.0 / g.config.probe_share).round().max(1.0) as u64
            } else {
                0
            };
            let probe = every > 0 && g.probes.fetch_add(1, Ordering::Relaxed) % every == 0;
            if !probe {
                i = g.stable;
            }
        }
        Some((i, &self.backends[i].0))
    }

    /// Counts the outcome of a request sent to backend `i`, and guards or releases it.
    pub(crate) fn record(&self, i: usize, failed: bool) {
        let Some(g) = &self.guard else { return };
        let now = tokio::time::Instant::now();
        let span = g.config.window;
        let mut windows = g.windows.lock().expect("guard lock");
        if i >= windows.len() {
            return;
        }
        windows[i].record(failed, now, span);
        if i == g.stable {
            return;
        }
        windows[g.stable].roll(now, span);
        let stable = rate(windows[g.stable].totals());
        let canary = windows[i].totals();
        let backend = &self.backends[i].0;
        if !g.guarded[i].load(Ordering::Relaxed) {
            if canary.0 >= g.config.min_requests && rate(canary) > stable + g.config.margin {
                g.guarded[i].store(true, Ordering::Relaxed);
                // Recovery is judged on what comes after.
                windows[i] = Window::default();
                tracing::warn!(route = %self.route, backend = %backend, canary_failure_rate = rate(canary), stable_failure_rate = stable, "canary guard: holding the canary's traffic back");
            }
        } else if canary.0 >= (g.config.min_requests / 4).max(1)
            && rate(canary) <= stable + g.config.margin / 2.0
        {
            g.guarded[i].store(false, Ordering::Relaxed);
            windows[i] = Window::default();
            tracing::info!(route = %self.route, backend = %backend, "canary guard: the canary recovered; its weight is back");
        }
    }

    fn views(&self) -> Vec<CanaryView> {
        let Some(g) = &self.guard else {
            return Vec::new();
        };
        let windows = g.windows.lock().expect("guard lock");
        self.backends
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != g.stable)
            .map(|(i, (svc, weight))| {
                let (requests, failures) = windows[i].totals();
                CanaryView {
                    route: self.route.clone(),
                    backend: svc.to_string(),
                    weight: *weight,
                    guarded: g.guarded[i].load(Ordering::Relaxed),
                    requests,
                    failures,
                }
            })
            .collect()
    }
}

impl Compiled {
    /// The rule a request for `svc` follows, if any route attached to `svc` has one that
    /// matches.
    pub(crate) fn target<B>(&self, svc: &ServiceRef, req: &Request<B>) -> Option<&Arc<Target>> {
        let port = match svc.port() {
            Some(PortSpec::Number(n)) => Some(*n),
            _ => None,
        };
        self.by_parent
            .get(svc.name())?
            .iter()
            .filter(|e| e.port.is_none() || e.port == port)
            .find(|e| e.matcher.matches(req))
            .map(|e| &e.target)
    }

    /// The target of rule `rule` of route `route` (`namespace/name`), if compiled.
    fn target_of(&self, route: &str, rule: usize) -> Option<Arc<Target>> {
        self.by_parent
            .values()
            .flatten()
            .find(|e| e.target.route == route && e.target.rule == rule)
            .map(|e| e.target.clone())
    }

    /// The guard's view of every canary of these routes.
    pub(crate) fn canaries(&self) -> Vec<CanaryView> {
        let mut seen: Vec<*const Target> = Vec::new();
        let mut out = Vec::new();
        for e in self.by_parent.values().flatten() {
            let ptr = Arc::as_ptr(&e.target);
            if !seen.contains(&ptr) {
                seen.push(ptr);
                out.extend(e.target.views());
            }
        }
        out
    }

    fn from_set(
        namespace: &str,
        guard: Option<CanaryGuard>,
        set: &Arc<RouteSet>,
        previous: Option<&Compiled>,
    ) -> Self {
        let mut routes: Vec<&Arc<HttpRoute>> = set.routes.values().collect();
        // Older routes first, then by name (the spec's tie-breakers).
        routes.sort_by(|a, b| {
            let at = |r: &HttpRoute| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
            at(a)
                .cmp(&at(b))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        let mut entries: Vec<(String, usize, Entry)> = Vec::new();
        for route in routes {
            let name = format!(
                "{namespace}/{}",
                route.metadata.name.as_deref().unwrap_or("")
            );
            match compile(namespace, &name, route, guard, previous) {
                Ok(list) => {
                    let base = entries.len();
                    entries.extend(
                        list.into_iter()
                            .enumerate()
                            .map(|(i, (parent, e))| (parent, base + i, e)),
                    );
                }
                Err(why) => {
                    tracing::warn!(route = %name, reason = %why, "HTTPRoute skipped: Rudder applies a route whole or not at all");
                }
            }
        }
        let mut by_parent: HashMap<String, Vec<(usize, Entry)>> = HashMap::new();
        for (parent, order, e) in entries {
            by_parent.entry(parent).or_default().push((order, e));
        }
        let by_parent = by_parent
            .into_iter()
            .map(|(parent, mut list)| {
                // Precedence first; among equals, the order of routes and rules.
                list.sort_by_key(|(order, e)| (Reverse(e.matcher.rank()), *order));
                (parent, list.into_iter().map(|(_, e)| e).collect())
            })
            .collect();
        Compiled {
            namespace: namespace.to_string(),
            source: set.clone(),
            seen: None,
            by_parent,
        }
    }

    /// Notes `rx`, which has seen this table's set, to tell when a newer one arrives.
    fn seen_through(mut self, rx: tokio::sync::watch::Receiver<Arc<RouteSet>>) -> Self {
        self.seen = Some(rx);
        self
    }

    /// Whether a newer set than this table's was published (not when unknown).
    fn outdated(&self) -> bool {
        self.seen
            .as_ref()
            .is_some_and(|rx| rx.has_changed().unwrap_or(false))
    }
}

/// Compiles one route into (parent Service, entry) pairs, or says why it cannot apply.
fn compile(
    namespace: &str,
    name: &str,
    route: &HttpRoute,
    guard: Option<CanaryGuard>,
    previous: Option<&Compiled>,
) -> Result<Vec<(String, Entry)>, String> {
    let spec = &route.spec;
    let parents: Vec<(String, Option<u16>)> = spec
        .parent_refs
        .iter()
        .filter(|p| {
            p.kind.as_deref() == Some("Service")
                && p.group.as_deref().unwrap_or("").is_empty()
                && p.namespace.as_deref().is_none_or(|n| n == namespace)
        })
        .map(|p| {
            let port = p
                .port
                .map(|n| u16::try_from(n).map_err(|_| format!("parentRefs: port {n}")))
                .transpose()?;
            Ok((p.name.clone(), port))
        })
        .collect::<Result<_, String>>()?;
    if parents.is_empty() {
        // Attached to Gateways (or other namespaces' Services): not Rudder's.
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let rules: Vec<rudder_k8s::HttpRouteRule> = if spec.rules.is_empty() {
        vec![rudder_k8s::HttpRouteRule::default()]
    } else {
        spec.rules.clone()
    };
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if !rule.filters.is_empty() {
            return Err(format!("{at}.filters: not supported"));
        }
        let timeout = match &rule.timeouts {
            None => None,
            Some(t) => {
                if t.backend_request.is_some() {
                    return Err(format!("{at}.timeouts.backendRequest: not supported"));
                }
                match t.request.as_deref() {
                    None | Some("0s") => None,
                    Some(v) => Some(rudder_k8s::parse_duration(v).ok_or_else(|| {
                        format!("{at}.timeouts.request: {v:?} is not a duration")
                    })?),
                }
            }
        };
        let mut backends = Vec::new();
        for (j, b) in rule.backend_refs.iter().enumerate() {
            let at = format!("{at}.backendRefs[{j}]");
            if !b.filters.is_empty() {
                return Err(format!("{at}.filters: not supported"));
            }
            if b.kind.as_deref().unwrap_or("Service") != "Service"
                || !b.group.as_deref().unwrap_or("").is_empty()
            {
                return Err(format!("{at}: only Service backends are supported"));
            }
            if b.namespace.as_deref().is_some_and(|n| n != namespace) {
                return Err(format!(
                    "{at}.namespace: backends in other namespaces (ReferenceGrant) are not supported"
                ));
            }
            let port = b
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{at}.port: a Service backend needs a port"))?;
            let weight = b.weight.unwrap_or(1);
            let weight = u32::try_from(weight)
                .ok()
                .filter(|w| *w <= 1_000_000)
                .ok_or_else(|| format!("{at}.weight: {weight} is not within 0-1000000"))?;
            let svc = ServiceRef::parse_in(&format!("{}.{namespace}:{port}", b.name), namespace)
                .map_err(|e| format!("{at}.name: {e}"))?;
            backends.push((svc, weight));
        }
        let total: u32 = backends.iter().map(|(_, w)| w).sum();
        let guard = guard.filter(|_| backends.len() > 1).map(|config| {
            // The stable backend: the largest weight (the first of equals).
            let stable = backends
                .iter()
                .enumerate()
                .max_by_key(|(i, (_, w))| (*w, Reverse(*i)))
                .map_or(0, |(i, _)| i);
            Guard {
                config,
                stable,
                windows: std::sync::Mutex::new(vec![Window::default(); backends.len()]),
                guarded: (0..backends.len())
                    .map(|_| std::sync::atomic::AtomicBool::new(false))
                    .collect(),
                probes: AtomicU64::new(0),
            }
        });
        // A rule that did not change keeps its target, with its turn and the guard's
        // counts and state, across changes to other routes.
        let same = previous.and_then(|p| p.target_of(name, i)).filter(|t| {
            t.backends == backends
                && t.timeout == timeout
                && t.guard.as_ref().map(|g| g.config) == guard.as_ref().map(|g| g.config)
        });
        let target = match same {
            Some(t) => t,
            None => Arc::new(Target {
                route: name.to_string(),
                rule: i,
                step: spread_step(total),
                backends,
                total,
                turn: AtomicU64::new(0),
                timeout,
                guard,
            }),
        };
        let default_match = [HttpRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default_match[..]
        } else {
            &rule.matches[..]
        };
        for (j, m) in matches.iter().enumerate() {
            let matcher = matcher(m).map_err(|e| format!("{at}.matches[{j}].{e}"))?;
            for (parent, port) in &parents {
                out.push((
                    parent.clone(),
                    Entry {
                        port: *port,
                        matcher: matcher.clone_shallow()?,
                        target: target.clone(),
                    },
                ));
            }
        }
    }
    Ok(out)
}

impl Matcher {
    /// A copy for another parent (regular expressions compile again: they are small).
    fn clone_shallow(&self) -> Result<Matcher, String> {
        let cond = |c: &Cond| match c {
            Cond::Exact(s) => Ok(Cond::Exact(s.clone())),
            Cond::Regex(r) => Regex::new(r.as_str())
                .map(Cond::Regex)
                .map_err(|e| e.to_string()),
        };
        Ok(Matcher {
            path: match &self.path {
                PathCond::Exact(p) => PathCond::Exact(p.clone()),
                PathCond::Prefix(p) => PathCond::Prefix(p.clone()),
                PathCond::Regex(r) => {
                    PathCond::Regex(Regex::new(r.as_str()).map_err(|e| e.to_string())?)
                }
            },
            method: self.method.clone(),
            headers: self
                .headers
                .iter()
                .map(|(n, c)| Ok((n.clone(), cond(c)?)))
                .collect::<Result<_, String>>()?,
            query: self
                .query
                .iter()
                .map(|(n, c)| Ok((n.clone(), cond(c)?)))
                .collect::<Result<_, String>>()?,
        })
    }
}

/// A step coprime with `total`, so that stepping through the slots spreads each
/// backend's turns over the cycle.
fn spread_step(total: u32) -> u64 {
    let total = u64::from(total.max(1));
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    // Near the golden ratio of the cycle; any coprime step visits every slot once.
    let mut step = (total * 618 / 1000).max(1);
    while gcd(step, total) != 1 {
        step += 1;
    }
    step
}

fn matcher(m: &HttpRouteMatch) -> Result<Matcher, String> {
    let regex = |field: &str, v: &str| {
        // Anchored: the whole value must match, as the Gateway API intends.
        Regex::new(&format!("^(?:{v})$"))
            .map_err(|e| format!("{field}: invalid expression {v:?}: {e}"))
    };
    let path = match &m.path {
        None => PathCond::Prefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => PathCond::Exact(value),
                "PathPrefix" => PathCond::Prefix(value),
                "RegularExpression" => PathCond::Regex(regex("path", &value)?),
                other => return Err(format!("path.type: {other:?} is not supported")),
            }
        }
    };
    let cond = |field: &str, kind: Option<&str>, value: &str| match kind.unwrap_or("Exact") {
        "Exact" => Ok(Cond::Exact(value.to_string())),
        "RegularExpression" => regex(field, value).map(Cond::Regex),
        other => Err(format!("{field}.type: {other:?} is not supported")),
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("headers[{i}].name: {:?} is not a header name", h.name))?;
            Ok((
                name,
                cond(&format!("headers[{i}]"), h.kind.as_deref(), &h.value)?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let query = m
        .query_params
        .iter()
        .enumerate()
        .map(|(i, q)| {
            Ok((
                q.name.clone(),
                cond(&format!("queryParams[{i}]"), q.kind.as_deref(), &q.value)?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let method = m
        .method
        .as_deref()
        .map(|v| Method::from_bytes(v.as_bytes()).map_err(|_| format!("method: {v:?}")))
        .transpose()?;
    Ok(Matcher {
        path,
        method,
        headers,
        query,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use rudder_k8s::{HttpRoute, RouteSet, RoutesState, ServiceRef};
    use serde_json::json;

    use super::Compiled;

    fn set(routes: &[serde_json::Value]) -> Arc<RouteSet> {
        let routes: BTreeMap<String, Arc<HttpRoute>> = routes
            .iter()
            .map(|r| {
                let route: HttpRoute = serde_json::from_value(r.clone()).unwrap();
                (route.metadata.name.clone().unwrap(), Arc::new(route))
            })
            .collect();
        Arc::new(RouteSet {
            state: RoutesState::Synced,
            routes,
        })
    }

    fn rule(matches: serde_json::Value, backend: &str) -> serde_json::Value {
        json!({"matches": matches, "backendRefs": [{"name": backend, "port": 80}]})
    }

    fn to(table: &Compiled, method: &str, uri: &str, header: Option<(&str, &str)>) -> String {
        let mut req = http::Request::builder().method(method).uri(uri);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let req = req.body(()).unwrap();
        let svc = ServiceRef::parse_in("web:80", "ns").unwrap();
        table
            .target(&svc, &req)
            .and_then(|t| t.pick().map(|(_, s)| s.name().to_string()))
            .unwrap_or_else(|| "web".into())
    }

    /// Gateway API precedence across rules and routes: exact path, then the longest
    /// prefix, then a method, then more headers; prefixes match whole path elements.
    #[test]
    fn precedence_and_path_elements() {
        let parent = json!([{"group": "", "kind": "Service", "name": "web"}]);
        let table = Compiled::from_set(
            "ns",
            None,
            &set(&[
                json!({"metadata": {"name": "a"}, "spec": {"parentRefs": parent, "rules": [
                    rule(json!([{"path": {"type": "PathPrefix", "value": "/api"}}]), "prefix"),
                    rule(json!([{"path": {"type": "PathPrefix", "value": "/api/v2/"}}]), "longer"),
                    rule(json!([{"path": {"type": "Exact", "value": "/api/v2/x"}}]), "exact"),
                ]}}),
                json!({"metadata": {"name": "b"}, "spec": {"parentRefs": parent, "rules": [
                    rule(json!([{"path": {"type": "PathPrefix", "value": "/api"}, "method": "POST"}]), "post"),
                    rule(json!([{"path": {"type": "PathPrefix", "value": "/api"}, "method": "POST",
                                 "headers": [{"name": "x-v", "type": "RegularExpression", "value": "2|3"}]}]), "post-v"),
                ]}}),
            ]),
            None,
        );
        assert_eq!(to(&table, "GET", "/api/v2/x", None), "exact");
        assert_eq!(to(&table, "GET", "/api/v2/y", None), "longer");
        assert_eq!(to(&table, "GET", "/api/v2", None), "longer");
        assert_eq!(to(&table, "GET", "/api", None), "prefix");
        assert_eq!(
            to(&table, "GET", "/apis", None),
            "web",
            "element-wise prefix"
        );
        assert_eq!(to(&table, "POST", "/api/x", None), "post");
        assert_eq!(to(&table, "POST", "/api/x", Some(("x-v", "3"))), "post-v");
        assert_eq!(
            to(&table, "POST", "/api/x", Some(("x-v", "23"))),
            "post",
            "anchored"
        );
    }

    /// A route Rudder cannot honour is skipped whole; a Gateway parent is not Rudder's.
    #[test]
    fn unsupported_routes_are_skipped_whole() {
        let parent = json!([{"group": "", "kind": "Service", "name": "web"}]);
        let table = Compiled::from_set(
            "ns",
            None,
            &set(&[
                json!({"metadata": {"name": "filters"}, "spec": {"parentRefs": parent, "rules": [
                    rule(json!([{"path": {"type": "Exact", "value": "/a"}}]), "a"),
                    {"filters": [{"type": "RequestRedirect"}], "backendRefs": [{"name": "b", "port": 80}]},
                ]}}),
                json!({"metadata": {"name": "bad-regex"}, "spec": {"parentRefs": parent, "rules": [
                    rule(json!([{"path": {"type": "RegularExpression", "value": "("}}]), "c"),
                ]}}),
                json!({"metadata": {"name": "elsewhere"}, "spec": {"parentRefs": parent, "rules": [
                    {"backendRefs": [{"name": "d", "namespace": "other", "port": 80}]},
                ]}}),
                json!({"metadata": {"name": "gateway"}, "spec": {"parentRefs": [{"name": "web"}], "rules": [
                    rule(json!([{"path": {"type": "Exact", "value": "/g"}}]), "g"),
                ]}}),
            ]),
            None,
        );
        for path in ["/a", "/b", "/g", "/"] {
            assert_eq!(to(&table, "GET", path, None), "web", "{path}");
        }
    }

    /// A rule that did not change keeps its target (turns, guard state) when other routes
    /// change; a rule that changed starts afresh.
    #[test]
    fn unchanged_rules_keep_their_state_across_recompiles() {
        let split = |v2: u32| {
            json!({"metadata": {"name": "split"}, "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                "rules": [{"backendRefs": [
                    {"name": "v1", "port": 80, "weight": 90},
                    {"name": "v2", "port": 80, "weight": v2}]}]}})
        };
        let other = json!({"metadata": {"name": "other"}, "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "api"}],
            "rules": [{"backendRefs": [{"name": "api-v1", "port": 80}]}]}});
        let guard = Some(super::CanaryGuard::new(
            0.1,
            5,
            std::time::Duration::from_secs(600),
            0.0,
        ));
        let first = Compiled::from_set("ns", guard, &set(&[split(10)]), None);
        let svc = ServiceRef::parse_in("web:80", "ns").unwrap();
        let req = http::Request::get("/").body(()).unwrap();
        let target = first.target(&svc, &req).unwrap().clone();
        for _ in 0..5 {
            target.record(1, true);
        }
        assert!(first.canaries()[0].guarded);
        // Another route appears: the split keeps its target and its guard.
        let second = Compiled::from_set("ns", guard, &set(&[split(10), other]), Some(&first));
        assert!(Arc::ptr_eq(second.target(&svc, &req).unwrap(), &target));
        assert!(second.canaries().iter().any(|c| c.guarded));
        // The split itself changes: a new target, judged afresh.
        let third = Compiled::from_set("ns", guard, &set(&[split(20)]), Some(&second));
        assert!(!Arc::ptr_eq(third.target(&svc, &req).unwrap(), &target));
        assert!(third.canaries().iter().all(|c| !c.guarded));
    }

    /// Weights are exact over each cycle and spread within it.
    #[test]
    fn weights_are_exact_and_spread() {
        let table = Compiled::from_set(
            "ns",
            None,
            &set(&[json!({"metadata": {"name": "split"}, "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                "rules": [{"backendRefs": [
                    {"name": "v1", "port": 80, "weight": 9},
                    {"name": "v2", "port": 80, "weight": 1}]}]}})]),
            None,
        );
        let picks: Vec<String> = (0..100).map(|_| to(&table, "GET", "/", None)).collect();
        assert_eq!(picks.iter().filter(|p| *p == "v2").count(), 10);
        // Never two v2 in a row over a 9:1 split.
        assert!(picks.windows(2).all(|w| !(w[0] == "v2" && w[1] == "v2")));
    }

    /// What the request path relies on to use a compiled table without locking the
    /// routes' channel: a table knows when a newer set was published after its own, and
    /// does not before.
    #[test]
    fn a_table_knows_when_a_newer_set_was_published() {
        let (tx, mut rx) = tokio::sync::watch::channel(set(&[]));
        let first = rx.borrow_and_update().clone();
        let table = Compiled::from_set("ns", None, &first, None).seen_through(rx.clone());
        assert!(!table.outdated(), "nothing newer yet");
        tx.send_replace(set(&[]));
        assert!(table.outdated(), "a newer set was published");
        let newer = rx.borrow_and_update().clone();
        let next = Compiled::from_set("ns", None, &newer, Some(&table)).seen_through(rx.clone());
        assert!(!next.outdated(), "compiled from the newest");
        assert!(
            !Compiled::from_set("ns", None, &newer, None).outdated(),
            "a table with no receiver is never taken for outdated"
        );
        drop(tx);
        assert!(!next.outdated(), "no sender, no newer set");
    }
}
