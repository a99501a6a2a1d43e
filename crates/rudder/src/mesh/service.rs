//! The Mesh service: resolve, pick, dispatch, record.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use rudder_balance::{EmptyReason, Selector, ServiceState, Snapshot};
use tower::ServiceExt;
use tower::retry::budget::Budget;
use tower_service::Service;

use super::Resolved;
use super::Shared;
use super::body::ResponseBody;
use super::error::MeshError;
use super::ext::{AffinityKey, Subset, Target};
use super::replay::ReplayBody;
use super::routed::{EndpointExtra, Routed};
use crate::BoxError;
use crate::authority;
use crate::telemetry::Outcome;

/// Routes requests addressed to Kubernetes Services to their Pods through the inner
/// service `S`; built by [`MeshLayer`](crate::MeshLayer). See the [module docs](crate::mesh).
pub struct Mesh<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for Mesh<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Mesh<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Mesh<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The response future of [`Mesh`]: the wait for the first sync, the pick, the dispatch and
/// its retries are one `async` state machine, boxed once per request.
pub struct ResponseFuture<T> {
    inner: Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>,
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S, B, RB> Service<Request<B>> for Mesh<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Send + 'static,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready service goes with this request; the clone serves the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let inner = Box::pin(counted(self.shared.clone(), inner, req));
        ResponseFuture { inner }
    }
}

/// Sends `req` to the inner service unchanged.
async fn pass<S, B, RB>(inner: S, req: Request<B>) -> Result<Response<ResponseBody<RB>>, BoxError>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    let req = req.map(|b| ReplayBody::first(b, 0).0);
    let res = inner.oneshot(req).await.map_err(Into::into)?;
    Ok(res.map(|b| ResponseBody::new(b, None, None)))
}

/// [`route`], counting the Mesh's own failures.
async fn counted<S, B, RB>(
    shared: Arc<Shared>,
    inner: S,
    req: Request<B>,
) -> Result<Response<ResponseBody<RB>>, BoxError>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Send,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    let result = route(&shared, inner, req).await;
    if let Err(e) = &result
        && let Some(e) = e.downcast_ref::<MeshError>()
    {
        shared.telemetry.mesh_error(e);
    }
    result
}

async fn route<S, B, RB>(
    shared: &Shared,
    inner: S,
    req: Request<B>,
) -> Result<Response<ResponseBody<RB>>, BoxError>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Send,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    let settings = &shared.settings;
    let resolved = {
        let Some(authority) = authority::of_request(&req) else {
            return Err(MeshError::MissingAuthority.into());
        };
        match shared.resolve(&authority, req.uri())? {
            Resolved::Other if !settings.pass_through => {
                return Err(MeshError::NotAService {
                    authority: authority.to_string(),
                }
                .into());
            }
            resolved => resolved,
        }
    };
    // The cached authority: cloning it shares its bytes instead of copying the request's.
    let Resolved::Service {
        routed,
        short,
        host,
        authority,
    } = resolved
    else {
        return pass(inner, req).await;
    };
    // An HTTPRoute attached to the Service may send the request to another Service.
    // The per-request timeout covers the wait for the first sync too.
    let began = tokio::time::Instant::now();
    let timeout = settings.timeout;
    let (bound, give_up) = match timeout {
        Some(t) if t < settings.sync_timeout => (t, false),
        _ => (settings.sync_timeout, true),
    };
    // Read the clock only when there may be a wait to report.
    let started = (!routed.is_decided()).then(tokio::time::Instant::now);
    if !routed.decided(bound, give_up).await && !give_up {
        return Err(MeshError::Timeout {
            service: routed.service.to_string(),
            timeout: timeout.unwrap_or_default(),
        }
        .into());
    }
    // An HTTPRoute attached to the Service may send the request to another Service. Asked
    // only once the Service answered: an API that cannot be reached fails fast as before.
    let (routed, route_timeout, rule) = match routed.pool.snapshot().set().state() {
        ServiceState::Pending | ServiceState::Unreachable(_) | ServiceState::Forbidden(_) => {
            (routed, None, None)
        }
        _ => match shared.route_table(&routed, bound).await? {
            Some(table) => match shared.http_route(&table, &routed.service, &req)? {
                Some(choice) => {
                    if !choice.routed.decided(bound, give_up).await && !give_up {
                        return Err(MeshError::Timeout {
                            service: choice.routed.service.to_string(),
                            timeout: timeout.unwrap_or_default(),
                        }
                        .into());
                    }
                    (choice.routed, choice.timeout, Some(choice.rule))
                }
                None => (routed, None, None),
            },
            None => (routed, None, None),
        },
    };
    let svc = &routed.service;
    let service = || svc.to_string();
    routed.touch();
    // A matched rule's own request timeout replaces the Mesh's.
    let timeout = route_timeout.or(timeout);
    let deadline = timeout.map(|t| began + t);
    let snapshot = routed.pool.snapshot();
    let unsynced = |last_error: Option<String>| -> Result<(), BoxError> {
        Err(MeshError::NotSynced {
            service: service(),
            waited: started.map(|s| s.elapsed()).unwrap_or_default(),
            last_error: last_error.or_else(|| routed.last_error()),
        }
        .into())
    };
    match snapshot.set().state() {
        ServiceState::Pending | ServiceState::Unreachable(_) if settings.dns_fallback => {
            shared.telemetry.dns_fallback(svc);
            tracing::debug!(service = %service(), "discovery not synced; sending through cluster DNS");
            return pass(inner, req).await;
        }
        ServiceState::Pending => unsynced(None)?,
        ServiceState::Unreachable(e) => unsynced(Some(e.clone()))?,
        // Not allowed to look: as if Rudder were not there (a short name goes out as
        // written, a full one through cluster DNS when the fallback is on).
        ServiceState::Forbidden(_) if short || settings.dns_fallback => {
            return pass(inner, req).await;
        }
        ServiceState::Forbidden(message) => {
            return Err(MeshError::Forbidden {
                service: service(),
                message: message.clone(),
            }
            .into());
        }
        ServiceState::NotFound if short => return pass(inner, req).await,
        ServiceState::NotFound => {
            return Err(MeshError::ServiceNotFound { service: service() }.into());
        }
        ServiceState::ExternalName(name) => {
            // Kubernetes answers an ExternalName Service with a CNAME: same request, same
            // Host, sent to the external name's address.
            let port = authority::port_of(&authority, req.uri());
            let endpoint: Authority =
                format!("{name}:{port}")
                    .parse()
                    .map_err(|e| MeshError::NoEndpoints {
                        service: service(),
                        subset: String::new(),
                        reason: format!("invalid externalName {name:?}: {e}"),
                    })?;
            let target = Target {
                authority: authority.clone(),
                endpoint: endpoint.clone(),
            };
            let req = retarget(req, &authority, &host, endpoint)?;
            let req = req.map(|b| ReplayBody::first(b, 0).0);
            let res = inner.oneshot(req).await.map_err(Into::into)?;
            return Ok(res.map(|b| ResponseBody::new(b, None, Some(target))));
        }
        // Active, and anything newer.
        _ => {}
    }

    let choice = choose_subset(shared, &req)?;
    let selector = choice.selector();
    let picked =
        snapshot
            .subset(selector, &settings.fallback)
            .map_err(|e| MeshError::NoEndpoints {
                service: service(),
                subset: selector.to_string(),
                reason: match snapshot.set().empty_reason() {
                    Some(EmptyReason::NoSuchPort) => format!(
                        "the Service has no such port (its ports: {})",
                        snapshot.set().service_ports().join(", ")
                    ),
                    Some(r) => empty_reason(r).to_string(),
                    None => e.to_string(),
                },
            })?;
    let key = match settings.algorithm {
        rudder_balance::Algorithm::Maglev => req
            .extensions()
            .get::<AffinityKey>()
            .copied()
            .or_else(|| settings.affinity.as_ref().and_then(|a| a.key(&req)))
            .map(|k| k.hash()),
        _ => None,
    };

    let slot = shared.telemetry.slot(selector);
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!(service = %svc, subset = %selector, fell_back = picked.fell_back(), "routing");
    }
    drop(choice);
    let chosen = Chosen {
        picked,
        snapshot,
        slot,
        key,
    };
    // One dispatch future, awaited in place: moving it (it holds the inner service's
    // future) would copy kilobytes per request.
    let sent = dispatch(shared, &routed, inner, req, authority, host, chosen);
    let result = match deadline {
        None => sent.await,
        Some(deadline) => tokio::time::timeout_at(deadline, sent)
            .await
            .unwrap_or_else(|_| {
                Err(MeshError::Timeout {
                    service: service(),
                    timeout: timeout.unwrap_or_default(),
                }
                .into())
            }),
    };
    // The canary guard counts what the backend an HTTPRoute chose did with the request.
    if let Some((rule, index)) = rule {
        let failed = result
            .as_ref()
            .map_or(true, |res| res.status().is_server_error());
        rule.record(index, failed);
    }
    result
}

/// A copy of `req`'s head with `body`.
fn with_body<A, B>(req: &Request<A>, body: B) -> Request<B> {
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

/// Whether `method` is idempotent (RFC 9110, 9.2.2): sending it twice has the effect of
/// sending it once, so it may be retried when no response came.
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// The subset a request may go to, in the snapshot it was chosen from.
struct Chosen {
    picked: rudder_balance::Picked,
    snapshot: Arc<Snapshot<Arc<EndpointExtra>>>,
    /// The subset's metric label slot.
    slot: usize,
    /// The affinity key's hash, for Maglev.
    key: Option<u64>,
}

/// Picks, sends and records, retrying on another endpoint when the request never reached
/// an application.
async fn dispatch<S, B, RB>(
    shared: &Shared,
    routed: &Arc<Routed>,
    mut inner: S,
    req: Request<B>,
    authority: Authority,
    host: http::HeaderValue,
    chosen: Chosen,
) -> Result<Response<ResponseBody<RB>>, BoxError>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Send,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    let settings = &shared.settings;
    let Chosen {
        picked,
        snapshot,
        slot,
        key,
    } = chosen;
    let pool = &routed.pool;
    let telemetry = &shared.telemetry;
    // What rebuilding the request for another attempt needs: its head, and its body as
    // kept while the first attempt sends it (up to the cap).
    let retries = settings.max_retries > 0;
    let head = retries.then(|| with_body(&req, ()));
    let idempotent = is_idempotent(req.method());
    let https = req.uri().scheme() == Some(&Scheme::HTTPS);
    #[cfg(feature = "tls")]
    let tls = settings
        .tls
        .as_ref()
        .zip(routed.tls_name.as_ref())
        .filter(|_| https);
    let cap = if retries { settings.max_replay_body } else { 0 };
    let mut replay = None;
    let body_was_empty = req.body().is_end_stream();
    let mut req = Some(req.map(|b| {
        let (body, kept) = ReplayBody::first(b, cap);
        replay = kept;
        body
    }));
    if retries {
        shared.budget.deposit();
    }
    // Endpoints this request already failed on; retries go elsewhere.
    let mut failed: Vec<usize> = Vec::new();
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    let mut attempt_no = 0u32;
    loop {
        attempt_no += 1;
        let pos = pool
            .pick_avoiding(&snapshot, &picked, key, &failed)
            .ok_or_else(|| MeshError::NoEndpoints {
                service: routed.service.to_string(),
                subset: String::new(),
                reason: "every endpoint of the subset has weight 0".into(),
            })?;
        let extra = snapshot.extra(pos);
        #[cfg(feature = "tls")]
        if let Some((tls, name)) = tls {
            // The connector verifies this Pod as its Service's name.
            tls.names().ensure(&extra.authority, name);
        }
        let mut attempt = pool.start(&snapshot, pos);
        let endpoint = attempt.addr();
        #[cfg(feature = "port-forward")]
        if let (Some(pf), Some(pod)) = (&settings.port_forward, &extra.pod) {
            // The connector opens its tunnels to this Pod while the endpoint lives.
            extra
                .tunnel
                .get_or_init(|| pf.register(endpoint, routed.service.namespace(), pod));
        }
        tracing::trace!(service = %routed.service, %endpoint, attempt = attempt_no, "sending");
        let this = match req.take() {
            Some(r) => r,
            None => {
                // A retry: only chosen below when the head was kept and the body can
                // be sent again.
                let body = match &replay {
                    Some(r) => r.again().unwrap_or_else(ReplayBody::empty),
                    None => ReplayBody::empty(),
                };
                with_body(head.as_ref().expect("retries keep the head"), body)
            }
        };
        let this = retarget(this, &authority, &host, extra.authority.clone())?;
        let ready: Result<&mut S, BoxError> = inner.ready().await.map_err(Into::into);
        let result = match (ready, settings.response_timeout) {
            (Ok(svc), None) => svc.call(this).await.map_err(Into::into),
            (Ok(svc), Some(limit)) => match tokio::time::timeout(limit, svc.call(this)).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(MeshError::Timeout {
                    service: routed.service.to_string(),
                    timeout: limit,
                }
                .into()),
            },
            (Err(e), _) => Err(e),
        };
        match result {
            Ok(res) => {
                let failure = settings.failure_on_5xx && res.status().is_server_error();
                // Opening a connection is not the Pod's latency.
                let setup = res
                    .extensions()
                    .get::<crate::ConnectTime>()
                    .map_or(std::time::Duration::ZERO, |c| c.0);
                let latency = attempt.responded_excluding(failure, setup);
                let outcome = if failure {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                telemetry.request(
                    &routed.label,
                    &extra.telemetry,
                    endpoint,
                    slot,
                    outcome,
                    latency,
                );
                // The opt-in retry on status codes: idempotent requests only, within the
                // same limits and budget as every retry.
                let retry = !settings.retry_statuses.is_empty()
                    && idempotent
                    && settings.retry_statuses.contains(&res.status())
                    && head.is_some()
                    && replay.as_ref().map_or(body_was_empty, |r| r.can_replay())
                    && attempt_no <= settings.max_retries
                    && picked.len() > failed.len() + 1
                    && shared.budget.withdraw();
                if retry {
                    tracing::debug!(%endpoint, status = %res.status(), "retrying on another endpoint");
                    drop((res, attempt));
                    telemetry.retry(&routed.label);
                    tried.push(endpoint);
                    failed.push(pos);
                    continue;
                }
                let target = Target {
                    authority,
                    endpoint: extra.authority.clone(),
                };
                return Ok(res.map(|b| ResponseBody::new(b, Some(attempt), Some(target))));
            }
            Err(e) => {
                let elapsed = attempt.failed();
                telemetry.request(
                    &routed.label,
                    &extra.telemetry,
                    endpoint,
                    slot,
                    Outcome::Error,
                    elapsed,
                );
                tried.push(endpoint);
                // The body can go again if it was empty or everything read was kept.
                let body_again = match &replay {
                    None => body_was_empty,
                    Some(r) => r.can_replay(),
                };
                // Idempotent requests are retried when no response came; others only
                // when the connection was never made, so no application saw them.
                let unseen = if idempotent {
                    crate::error::never_reached_application(&*e)
                } else {
                    crate::error::never_connected(&*e)
                };
                let retry = head.is_some()
                    && body_again
                    && attempt_no <= settings.max_retries
                    && unseen
                    && picked.len() > failed.len() + 1
                    && shared.budget.withdraw();
                if !retry {
                    // The Mesh's own (a response timeout) stays as it is.
                    if e.is::<MeshError>() {
                        return Err(e);
                    }
                    return Err(MeshError::Failed {
                        service: routed.service.to_string(),
                        tried,
                        hint: crate::error::hint(&*e, https),
                        source: e,
                    }
                    .into());
                }
                telemetry.retry(&routed.label);
                tracing::debug!(%endpoint, error = %e, "retrying on another endpoint");
                failed.push(pos);
            }
        }
    }
}

/// The subset a request asked for, borrowed from the configuration where it came from
/// there, so choosing allocates nothing on the common paths.
enum SubsetChoice<'a> {
    Configured(&'a Selector),
    Split(Arc<rudder_balance::Split>, usize),
    Owned(Selector),
}

impl SubsetChoice<'_> {
    fn selector(&self) -> &Selector {
        match self {
            Self::Configured(s) => s,
            Self::Split(split, leg) => &split.legs()[*leg].0,
            Self::Owned(s) => s,
        }
    }
}

/// The subset for this request: extension, header, routes, split, configured subset,
/// everything.
fn choose_subset<'a, B>(
    shared: &'a Shared,
    req: &Request<B>,
) -> Result<SubsetChoice<'a>, MeshError> {
    let settings = &shared.settings;
    if let Some(s) = req.extensions().get::<Subset>() {
        return Ok(SubsetChoice::Owned(s.selector().clone()));
    }
    if let Some(name) = &settings.subset_header
        && let Some(value) = req.headers().get(name)
    {
        let text = value.to_str().map_err(|_| MeshError::SubsetNotAscii {
            header: name.to_string(),
        })?;
        return text
            .parse()
            .map(SubsetChoice::Owned)
            .map_err(|source| MeshError::InvalidSubset {
                header: name.to_string(),
                source,
            });
    }
    if let Some(selector) = settings
        .routes
        .iter()
        .find(|r| r.matches(req))
        .and_then(|r| r.choose())
    {
        return Ok(SubsetChoice::Configured(selector));
    }
    if let Some(split) = shared.split.load_full() {
        let leg = split.choose_leg();
        return Ok(SubsetChoice::Split(split, leg));
    }
    Ok(match &settings.subset {
        Some(s) => SubsetChoice::Configured(s),
        None => SubsetChoice::Owned(Selector::everything()),
    })
}

fn empty_reason(r: EmptyReason) -> &'static str {
    match r {
        EmptyReason::NoEndpoints => "the Service has no endpoints",
        EmptyReason::NoneReady => "no endpoint is ready",
        EmptyReason::NoSuchPort => "the Service has no such port",
        _ => "no routable endpoint",
    }
}

/// Points `req` at `endpoint`, keeping the caller's `authority` in `Host` (as `host`) and
/// [`Target`].
fn retarget<B>(
    mut req: Request<B>,
    authority: &Authority,
    host: &HeaderValue,
    endpoint: Authority,
) -> Result<Request<B>, BoxError> {
    // The parts are valid already; assembling them skips re-parsing.
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme.get_or_insert(Scheme::HTTP);
    parts
        .path_and_query
        .get_or_insert_with(|| PathAndQuery::from_static("/"));
    parts.authority = Some(endpoint.clone());
    *req.uri_mut() = Uri::from_parts(parts)?;
    if !req.headers().contains_key(http::header::HOST) {
        req.headers_mut().insert(http::header::HOST, host.clone());
    }
    req.extensions_mut().insert(Target {
        authority: authority.clone(),
        endpoint,
    });
    Ok(req)
}
