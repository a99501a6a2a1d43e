//! The Mesh service: resolve, pick, dispatch, record.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use pin_project_lite::pin_project;
use rudder_balance::{EmptyReason, Picked, Selector, ServiceState, Snapshot};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;
use tower_service::Service;

use super::Resolved;
use super::body::ResponseBody;
use super::builder::Settings;
use super::error::MeshError;
use super::ext::{AffinityKey, Subset, Target, Whence};
use super::gamma;
use super::head::KeptHead;
use super::replay::{Replay, ReplayBody};
use super::routed::{Attempt, EndpointExtra, Routed};
use super::{Policy, Shared};
use crate::BoxError;
use crate::authority;
use crate::telemetry::Outcome;

/// Routes requests addressed to Kubernetes Services to their Pods through the inner
/// service `S`; built by [`MeshLayer`](crate::MeshLayer). See the [module docs](crate::mesh).
pub struct Mesh<S> {
    inner: S,
    shared: Arc<Shared>,
    /// What retries are sent through: a clone of `inner`, shared by this Mesh's clones
    /// and made on first need. A request that may be retried holds a reference to it
    /// rather than a clone of `inner` of its own: its future stays small (a hyper-util
    /// client is 304 bytes, moved with the future at every layer), and sending it clones
    /// one reference, not each of the client's. A retry clones the service from here.
    /// The `Mutex` is what lets a request's future share it while `S` need only be
    /// `Send` (tower services such as `BoxCloneService` are not `Sync`); only a retry
    /// locks it.
    retry: Arc<OnceLock<Mutex<S>>>,
}

impl<S: Clone> Clone for Mesh<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            retry: self.retry.clone(),
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
        Self {
            inner,
            shared,
            retry: Arc::default(),
        }
    }

    /// The service retries go through, made from `inner` on first need.
    fn retry(&self) -> &Arc<OnceLock<Mutex<S>>>
    where
        S: Clone,
    {
        self.retry.get_or_init(|| Mutex::new(self.inner.clone()));
        &self.retry
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably. Retries go through a clone of it as it is at the next
    /// request.
    pub fn get_mut(&mut self) -> &mut S {
        self.retry = Arc::default();
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

pin_project! {
    /// The response future of [`Mesh`].
    ///
    /// On the steady path (the Service synced, its HTTPRoutes known) the authority is
    /// resolved, the subset chosen, the endpoint picked and the inner service called
    /// before `call` returns, and this future only drives the inner service's future,
    /// with the response timeout, and records the outcome: nothing is boxed. A request
    /// that has to wait (for a Service's first sync or its namespace's routes), that goes
    /// to an `ExternalName`, or that is retried continues in a boxed `async` state
    /// machine instead.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        /// Sent unchanged.
        Pass {
            #[pin]
            fut: S::Future,
        },
        /// The first attempt, sent from `call`.
        Sent {
            #[pin]
            fut: S::Future,
            // Armed when the inner future first waits: the earlier of the response
            // timeout and the request's deadline.
            #[pin]
            timer: Option<Sleep>,
            sent: Option<Sent<S, B>>,
        },
        /// Waits, retries and the rare paths.
        Boxed {
            fut: Boxed<S::Response>,
        },
        /// Failed before anything was sent.
        Failed {
            error: Option<BoxError>,
        },
    }
}

/// The rest of a request that had to wait or retry.
type Boxed<R> = Pin<Box<dyn Future<Output = Result<Answer<R>, BoxError>> + Send>>;

/// What the first attempt's future keeps to record its outcome or retry.
struct Sent<S, B> {
    dispatch: Dispatch<B>,
    attempt: Attempt,
    /// The service retries are sent through (see `Mesh::retry`), when the request may
    /// be retried.
    retry_with: Option<Arc<OnceLock<Mutex<S>>>>,
    /// What the timer, once armed, stands for.
    armed: Option<Armed>,
}

/// A timer on a request in flight.
#[derive(Clone, Copy)]
struct Armed {
    at: Instant,
    timeout: Duration,
    /// The whole request's deadline rather than the attempt's response timeout.
    whole_request: bool,
}

/// A response and what its body holds for the Mesh.
pub(crate) struct Answer<R> {
    res: R,
    attempt: Option<Attempt>,
    target: Option<Whence>,
    /// The endpoint that answered: the request's end makes it the target (see
    /// [`Dispatch::finish`]).
    endpoint: Option<SocketAddr>,
}

impl<RB> Answer<Response<RB>> {
    /// The response `attempt` got; its body keeps the attempt until it ends.
    fn sent(res: Response<RB>, attempt: Attempt) -> Self {
        let endpoint = attempt.addr();
        Self {
            res,
            attempt: Some(attempt),
            target: None,
            endpoint: Some(endpoint),
        }
    }

    fn passed(res: Response<RB>) -> Self {
        Self {
            res,
            attempt: None,
            target: None,
            endpoint: None,
        }
    }

    #[inline(always)]
    fn into_response(self) -> Response<ResponseBody<RB>> {
        let Self {
            res,
            attempt,
            target,
            ..
        } = self;
        res.map(|b| ResponseBody::new(b, attempt, target))
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, RB> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Send + 'static,
{
    type Output = Result<Response<ResponseBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let retry = match state.as_mut().project() {
                StateProj::Pass { fut } => {
                    let res = std::task::ready!(fut.poll(cx)).map_err(Into::into)?;
                    return Poll::Ready(Ok(Answer::passed(res).into_response()));
                }
                StateProj::Boxed { fut } => {
                    let answer = std::task::ready!(fut.as_mut().poll(cx))?;
                    return Poll::Ready(Ok(answer.into_response()));
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
                StateProj::Sent {
                    fut,
                    mut timer,
                    sent,
                } => {
                    let result = match fut.poll(cx) {
                        Poll::Ready(result) => result.map_err(Into::into),
                        Poll::Pending => {
                            let s = sent.as_mut().expect("polled after completion");
                            if timer.is_none() {
                                let Some(armed) = s.dispatch.timer() else {
                                    return Poll::Pending;
                                };
                                s.armed = Some(armed);
                                timer.set(Some(tokio::time::sleep_until(armed.at)));
                            }
                            let sleep = timer.as_pin_mut().expect("armed above");
                            std::task::ready!(sleep.poll(cx));
                            let armed = s.armed.expect("armed above");
                            let timeout = MeshError::Timeout {
                                service: s.dispatch.routed().service.to_string(),
                                timeout: armed.timeout,
                            };
                            if armed.whole_request {
                                // The request's deadline ends it; the attempt is not
                                // the endpoint's failure.
                                let s = sent.take().expect("polled after completion");
                                let result = s.dispatch.end(Err(timeout.into()));
                                return Poll::Ready(result.map(Answer::into_response));
                            }
                            Err(timeout.into())
                        }
                    };
                    let Sent {
                        mut dispatch,
                        mut attempt,
                        retry_with,
                        ..
                    } = sent.take().expect("polled after completion");
                    // A response is decided on where it lies and moved once: into the
                    // Mesh's response when it is the answer, else into the retry's.
                    let own = match result {
                        Ok(res) => {
                            if !dispatch.responded(&res, &mut attempt) {
                                return Poll::Ready(Ok(dispatch.respond(res, attempt)));
                            }
                            Ok(Answer::sent(res, attempt))
                        }
                        Err(e) => match dispatch.errored(e, attempt) {
                            Step::Done(result) => {
                                let result = dispatch.end(result);
                                return Poll::Ready(result.map(Answer::into_response));
                            }
                            Step::Retry(own) => own,
                        },
                    };
                    let template = retry_with
                        .as_deref()
                        .and_then(OnceLock::get)
                        .expect("a retry keeps the service it is sent through");
                    let inner = S::clone(&template.lock().unwrap_or_else(|e| e.into_inner()));
                    retried(dispatch, inner, own)
                }
            };
            state.set(State::Boxed { fut: retry });
        }
    }
}

/// The rest of a request whose first attempt asked for a retry; `own` is that attempt's
/// result, the answer if no other endpoint is left to try.
fn retried<S, B, RB>(
    mut dispatch: Dispatch<B>,
    mut inner: S,
    own: Result<Answer<Response<RB>>, BoxError>,
) -> Boxed<Response<RB>>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Send + 'static,
{
    Box::pin(async move {
        let result = dispatch.attempts(&mut inner, None, Some(own)).await;
        dispatch.end(result)
    })
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
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Built in place: the state is the response future's only field.
        ResponseFuture {
            state: self.steady(req),
        }
    }
}

impl<S> Mesh<S> {
    /// The request path without waiting: the inner service is called here, or, when
    /// something must be awaited, the request goes on in a boxed future with what was
    /// decided so far.
    fn steady<B, RB>(&mut self, req: Request<B>) -> State<S, B>
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
        B: http_body::Body + Send + 'static,
        B::Error: Into<BoxError>,
        RB: Send + 'static,
    {
        let shared = &self.shared;
        let failed = |e: BoxError| {
            count(shared, &e);
            State::Failed { error: Some(e) }
        };
        let addressed = match resolve(shared, &req) {
            Ok(Resolution::Service(a)) => a,
            Ok(Resolution::Pass) => return self.pass(req),
            Err(e) => return failed(e.into()),
        };
        if !addressed.routed.is_decided() {
            return self.waits(req, Some(addressed), None);
        }
        // One snapshot load serves the route check and the pick, unless a route sends the
        // request to another Service. No reference count is taken: the request holds no
        // snapshot once the attempt started (a retry picks from the newest one).
        let snapshot = addressed.routed.pool.load();
        let routing = match routing_now(shared, &addressed.routed, &snapshot, &req) {
            Some(Ok(routing)) => routing,
            Some(Err(e)) => return failed(e.into()),
            None => return self.waits(req, Some(addressed), None),
        };
        let routed = routing.routed(&addressed);
        if !routed.is_decided() {
            return self.waits(req, Some(addressed), Some(routing));
        }
        let backend;
        let snapshot = if Arc::ptr_eq(routed, &addressed.routed) {
            &snapshot
        } else {
            backend = routed.pool.load();
            &backend
        };
        let (chosen, picked) = match plan(shared, &addressed, routed, snapshot, &req, None) {
            Ok(Plan::Send(chosen, picked)) => (chosen, picked),
            Ok(Plan::Pass) => return self.pass(req),
            // Rare: the general path sends it.
            Ok(Plan::ExternalName) => return self.waits(req, Some(addressed), Some(routing)),
            Err(e) => return failed(e),
        };
        let mut dispatch = Dispatch::new(shared, addressed, routing, chosen, &req);
        // Only a request that may be retried keeps a service to retry on.
        let retry_with = dispatch.kept.is_some().then(|| self.retry().clone());
        let mut req = dispatch.first(req);
        let attempt = match dispatch
            .start(snapshot, &picked, &[])
            .and_then(|attempt| dispatch.aim(&mut req, &attempt).map(|()| attempt))
        {
            Ok(attempt) => attempt,
            Err(e) => return failed(e),
        };
        State::Sent {
            fut: self.inner.call(req),
            timer: None,
            sent: Some(Sent {
                dispatch,
                attempt,
                retry_with,
                armed: None,
            }),
        }
    }

    /// The rest of a request that must wait (for a Service's first sync or its routes)
    /// or goes to an `ExternalName`: a boxed future with what was decided so far.
    #[cold]
    #[inline(never)]
    fn waits<B, RB>(
        &mut self,
        req: Request<B>,
        addressed: Option<Addressed>,
        routing: Option<Routing>,
    ) -> State<S, B>
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
        B: http_body::Body + Send + 'static,
        B::Error: Into<BoxError>,
        RB: Send + 'static,
    {
        // The ready service goes with this request; the clone serves the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        State::Boxed {
            fut: Box::pin(async move {
                let result = route(&shared, inner, req, addressed, routing).await;
                if let Err(e) = &result {
                    count(&shared, e);
                }
                result
            }),
        }
    }

    fn pass<B>(&mut self, req: Request<B>) -> State<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
        B: http_body::Body,
    {
        State::Pass {
            fut: self.inner.call(req.map(ReplayBody::new)),
        }
    }
}

/// Counts a request the Mesh itself failed.
fn count(policy: &Policy, e: &BoxError) {
    if let Some(e) = e.downcast_ref::<MeshError>() {
        policy.telemetry.mesh_error(e);
    }
}

/// A request's Service, as its authority resolved (shared with the resolve cache).
type Addressed = Arc<super::Addressed>;

enum Resolution {
    /// Not a Service: sent unchanged.
    Pass,
    Service(Addressed),
}

fn resolve<B>(shared: &Shared, req: &Request<B>) -> Result<Resolution, MeshError> {
    let Some(authority) = authority::of_request(req) else {
        return Err(MeshError::MissingAuthority);
    };
    match shared.resolve(&authority, req.uri())? {
        Resolved::Other if shared.settings.pass_through => Ok(Resolution::Pass),
        Resolved::Other => Err(MeshError::NotAService {
            authority: authority.to_string(),
        }),
        Resolved::Service(addressed) => Ok(Resolution::Service(addressed)),
    }
}

/// Where a request goes once the HTTPRoutes attached to its Service had their say.
struct Routing {
    /// A route's backend, when the request goes to another Service than its own (its own
    /// is not cloned: see [`routed`](Self::routed)).
    backend: Option<Arc<Routed>>,
    /// The matched rule's request timeout.
    timeout: Option<Duration>,
    /// The matched rule and backend, whose outcome the canary guard counts.
    rule: Option<(Arc<gamma::Target>, usize)>,
}

impl Routing {
    /// To the Service the request named.
    fn direct() -> Self {
        Self {
            backend: None,
            timeout: None,
            rule: None,
        }
    }

    /// The Service the request goes to: a route's backend, or `addressed`'s own.
    fn routed<'a>(&'a self, addressed: &'a Addressed) -> &'a Arc<Routed> {
        self.backend.as_ref().unwrap_or(&addressed.routed)
    }
}

/// Whether the HTTPRoutes are asked: only once the Service answered, so an API that
/// cannot be reached fails fast as before.
fn asks_routes(snapshot: &Snapshot<EndpointExtra>) -> bool {
    !matches!(
        snapshot.set().state(),
        ServiceState::Pending | ServiceState::Unreachable(_) | ServiceState::Forbidden(_)
    )
}

/// Where the HTTPRoutes attached to `routed`'s Service send `req`, when nothing needs awaiting; `None` when the namespace's routes are not
/// known yet.
fn routing_now<B>(
    shared: &Shared,
    routed: &Arc<Routed>,
    snapshot: &Snapshot<EndpointExtra>,
    req: &Request<B>,
) -> Option<Result<Routing, MeshError>> {
    if !asks_routes(snapshot) {
        return Some(Ok(Routing::direct()));
    }
    let table = shared.route_table_now(routed)?;
    Some(choose_route(
        shared,
        routed,
        table.as_deref().map(Arc::as_ref),
        req,
    ))
}

fn choose_route<B>(
    shared: &Shared,
    routed: &Arc<Routed>,
    table: Option<&gamma::Compiled>,
    req: &Request<B>,
) -> Result<Routing, MeshError> {
    let choice = match table {
        Some(table) => shared.http_route(table, &routed.service, req)?,
        None => None,
    };
    Ok(match choice {
        Some(c) => Routing {
            backend: (!Arc::ptr_eq(&c.routed, routed)).then_some(c.routed),
            timeout: c.timeout,
            rule: Some(c.rule),
        },
        None => Routing::direct(),
    })
}

/// The general request path: everything [`Mesh::steady`] does, waiting where it must.
/// `addressed` and `routing` are what the steady path decided before it had to wait.
async fn route<S, B, RB>(
    shared: &Arc<Shared>,
    inner: S,
    req: Request<B>,
    addressed: Option<Addressed>,
    routing: Option<Routing>,
) -> Result<Answer<Response<RB>>, BoxError>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Send,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    let settings = &shared.settings;
    let addressed = match addressed {
        Some(a) => a,
        None => match resolve(shared, &req)? {
            Resolution::Service(a) => a,
            Resolution::Pass => return send_unchanged(inner, req).await,
        },
    };
    // The per-request timeout covers the wait for the first sync too.
    let began = Instant::now();
    let timeout = settings.timeout;
    let (bound, give_up) = match timeout {
        Some(t) if t < settings.sync_timeout => (t, false),
        _ => (settings.sync_timeout, true),
    };
    let started = (!addressed.routed.is_decided()).then(Instant::now);
    let decided = |routed: &Arc<Routed>| {
        let routed = routed.clone();
        async move {
            if !routed.decided(bound, give_up).await && !give_up {
                return Err(MeshError::Timeout {
                    service: routed.service.to_string(),
                    timeout: timeout.unwrap_or_default(),
                });
            }
            Ok(())
        }
    };
    decided(&addressed.routed).await?;
    let routing = match routing {
        Some(r) => r,
        None if !asks_routes(&addressed.routed.pool.snapshot()) => Routing::direct(),
        None => {
            // No borrow of the request across the wait: `B` need not be `Sync`.
            let table = shared.route_table(&addressed.routed, bound).await?;
            choose_route(shared, &addressed.routed, table.as_deref(), &req)?
        }
    };
    let routed = routing.routed(&addressed);
    decided(routed).await?;
    // The first attempt picks from the newest snapshot, as a retry does: none is held
    // across an await.
    let planned = plan(
        shared,
        &addressed,
        routed,
        &routed.pool.load(),
        &req,
        started,
    )?
    .without_members();
    let chosen = match planned {
        Plan::Send(chosen, ()) => chosen,
        Plan::Pass => return send_unchanged(inner, req).await,
        Plan::ExternalName => return external_name(inner, req, &addressed, routed).await,
    };
    let mut inner = inner;
    let mut dispatch = Dispatch::new(shared, addressed, routing, chosen, &req);
    let first = dispatch.first(req);
    if let Some(t) = dispatch.deadline.as_mut() {
        // The wait for the first sync counts.
        t.0 = began + t.1;
    }
    let result = dispatch.attempts(&mut inner, Some(first), None).await;
    dispatch.finish(result)
}

/// Sends `req` to the inner service unchanged.
async fn send_unchanged<S, B, RB>(
    inner: S,
    req: Request<B>,
) -> Result<Answer<Response<RB>>, BoxError>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    let res = inner
        .oneshot(req.map(ReplayBody::new))
        .await
        .map_err(Into::into)?;
    Ok(Answer::passed(res))
}

/// Kubernetes answers an `ExternalName` Service with a CNAME: same request, same `Host`,
/// sent to the external name's address.
async fn external_name<S, B, RB>(
    inner: S,
    req: Request<B>,
    addressed: &Addressed,
    routed: &Routed,
) -> Result<Answer<Response<RB>>, BoxError>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    let snapshot = routed.pool.snapshot();
    let ServiceState::ExternalName(name) = snapshot.set().state() else {
        // The Service changed since the plan: start over.
        return Err(MeshError::NoEndpoints {
            service: routed.service.to_string(),
            subset: String::new(),
            reason: "the Service stopped being an ExternalName".into(),
        }
        .into());
    };
    let authority = &addressed.authority;
    let port = authority::port_of(authority, req.uri());
    let endpoint: Authority =
        format!("{name}:{port}")
            .parse()
            .map_err(|e| MeshError::NoEndpoints {
                service: routed.service.to_string(),
                subset: String::new(),
                reason: format!("invalid externalName {name:?}: {e}"),
            })?;
    let target = Target {
        authority: authority.clone(),
        endpoint: endpoint.clone(),
    };
    let mut req = req;
    retarget(&mut req, &addressed.host, endpoint)?;
    let res = inner
        .oneshot(req.map(ReplayBody::new))
        .await
        .map_err(Into::into)?;
    Ok(Answer {
        res,
        attempt: None,
        target: Some(Whence::Named(target)),
        endpoint: None,
    })
}

/// What to do with a request for a decided Service.
enum Plan<P> {
    /// Send it to an endpoint of this subset; `P` is its members, as the snapshot planned
    /// with has them.
    Send(Chosen, P),
    /// Send it unchanged (the Service is not there, or not ours to look at).
    Pass,
    /// Send it to the `ExternalName` Service's name.
    ExternalName,
}

impl<P> Plan<P> {
    /// The plan without the members, which borrow the snapshot.
    fn without_members(self) -> Plan<()> {
        match self {
            Plan::Send(chosen, _) => Plan::Send(chosen, ()),
            Plan::Pass => Plan::Pass,
            Plan::ExternalName => Plan::ExternalName,
        }
    }
}

/// Decides from the Service's state what happens to `req`, and for an active Service
/// which subset it may go to. `waiting` is when the request began waiting for the
/// Service's first sync, if it had to.
fn plan<'s, B>(
    shared: &Shared,
    addressed: &Addressed,
    routed: &Routed,
    snapshot: &'s Snapshot<EndpointExtra>,
    req: &Request<B>,
    waiting: Option<Instant>,
) -> Result<Plan<Picked<'s>>, BoxError> {
    let settings = &shared.settings;
    let svc = &routed.service;
    let service = || svc.to_string();
    routed.touch();
    let unsynced = |last_error: Option<String>| -> BoxError {
        MeshError::NotSynced {
            service: service(),
            waited: waiting.map(|s| s.elapsed()).unwrap_or_default(),
            last_error: last_error.or_else(|| routed.last_error()),
        }
        .into()
    };
    match snapshot.set().state() {
        ServiceState::Pending | ServiceState::Unreachable(_) if settings.dns_fallback => {
            shared.telemetry.dns_fallback(svc);
            tracing::debug!(service = %service(), "discovery not synced; sending through cluster DNS");
            return Ok(Plan::Pass);
        }
        ServiceState::Pending => return Err(unsynced(None)),
        ServiceState::Unreachable(e) => return Err(unsynced(Some(e.clone()))),
        // Not allowed to look: as if Rudder were not there (a short name goes out as
        // written, a full one through cluster DNS when the fallback is on).
        ServiceState::Forbidden(_) if addressed.short || settings.dns_fallback => {
            return Ok(Plan::Pass);
        }
        ServiceState::Forbidden(message) => {
            return Err(MeshError::Forbidden {
                service: service(),
                message: message.clone(),
            }
            .into());
        }
        ServiceState::NotFound if addressed.short => return Ok(Plan::Pass),
        ServiceState::NotFound => {
            return Err(MeshError::ServiceNotFound { service: service() }.into());
        }
        ServiceState::ExternalName(_) => return Ok(Plan::ExternalName),
        // Active, and anything newer.
        _ => {}
    }

    let choice = choose_subset(shared, req)?;
    let selector = choice.selector(settings);
    let picked = members(routed, snapshot, selector, &settings.fallback)?;
    let key = match settings.algorithm {
        rudder_balance::Algorithm::Maglev => req
            .extensions()
            .get::<AffinityKey>()
            .copied()
            .or_else(|| settings.affinity.as_ref().and_then(|a| a.key(req)))
            .map(|k| k.hash()),
        _ => None,
    };
    let slot = shared.telemetry.slot(selector);
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!(service = %svc, subset = %selector, fell_back = picked.fell_back(), "routing");
    }
    let chosen = Chosen {
        untried: picked.len(),
        subset: choice,
        slot,
        key,
    };
    Ok(Plan::Send(chosen, picked))
}

/// The members of `snapshot` (of `routed`'s Service) that `selector` (or the fallback)
/// gives.
fn members<'s>(
    routed: &Routed,
    snapshot: &'s Snapshot<EndpointExtra>,
    selector: &Selector,
    fallback: &rudder_balance::Fallback,
) -> Result<Picked<'s>, MeshError> {
    snapshot
        .subset(selector, fallback)
        .map_err(|e| MeshError::NoEndpoints {
            service: routed.service.to_string(),
            subset: selector.to_string(),
            reason: match snapshot.set().empty_reason() {
                Some(EmptyReason::NoSuchPort) => format!(
                    "the Service has no such port (its ports: {})",
                    snapshot.set().service_ports().join(", ")
                ),
                Some(r) => empty_reason(r).to_string(),
                None => e.to_string(),
            },
        })
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

/// The subset a request may go to. It holds nothing of the snapshot it was chosen in: a
/// retry looks the subset up again in the newest one.
struct Chosen {
    subset: SubsetChoice,
    /// How many of the subset's endpoints, at the last pick, no attempt has gone to (the
    /// one picked then included): another attempt needs another.
    untried: usize,
    /// The subset's metric label slot.
    slot: usize,
    /// The affinity key's hash, for Maglev.
    key: Option<u64>,
}

/// Why a retry was not sent: the retry budget allows none now. Never the answer to a
/// request (its last attempt's result is).
#[derive(Debug, thiserror::Error)]
#[error("the retry budget is spent")]
struct BudgetExhausted;

/// What one attempt ended in.
enum Step<R> {
    Done(Result<Answer<R>, BoxError>),
    /// Send again, to another endpoint; the attempt's own result is the answer when the
    /// newest snapshot has no other endpoint to send to or the retry budget allows no
    /// retry.
    Retry(Result<Answer<R>, BoxError>),
}

/// One request's attempts: picks, sends and records, retrying on another endpoint when the
/// request never reached an application (or, opted in, on a listed status).
struct Dispatch<B> {
    /// A route's backend, when not the Service the request named (see `routed`).
    backend: Option<Arc<Routed>>,
    addressed: Addressed,
    chosen: Chosen,
    /// The matched HTTPRoute rule and backend, for the canary guard.
    rule: Option<(Arc<gamma::Target>, usize)>,
    /// When the whole request times out, and the timeout it came from.
    deadline: Option<(Instant, Duration)>,
    /// What rebuilding the request for another attempt needs, when it may have one (two
    /// pointers: the head's copy lives in reused buffers, see `head.rs`).
    kept: Option<Kept<B>>,
    body_was_empty: bool,
    idempotent: bool,
    https: bool,
    attempt_no: u32,
    /// Endpoints this request already failed on; retries go elsewhere.
    tried: Vec<SocketAddr>,
}

/// What another attempt is rebuilt from: the request's head, and its body as kept while
/// the first attempt sends it (up to the cap).
struct Kept<B> {
    head: KeptHead,
    replay: Option<Replay<B>>,
}

impl<B> Dispatch<B>
where
    B: http_body::Body,
{
    /// The Mesh's settings, telemetry and retry budget, as the Service holds them.
    fn policy(&self) -> &Policy {
        &self.addressed.routed.policy
    }

    /// The Service the attempts go to.
    fn routed(&self) -> &Arc<Routed> {
        self.backend.as_ref().unwrap_or(&self.addressed.routed)
    }

    /// Prepares `req`'s attempts; [`first`](Self::first) then gives the request the first
    /// attempt sends.
    fn new(
        shared: &Shared,
        addressed: Addressed,
        routing: Routing,
        chosen: Chosen,
        req: &Request<B>,
    ) -> Self {
        let settings = &shared.settings;
        let retries = settings.max_retries > 0;
        // Another attempt needs another endpoint: with one, nothing is kept for it.
        let keep = retries && chosen.untried > 1;
        // A matched rule's own request timeout replaces the Mesh's.
        let deadline = routing
            .timeout
            .or(settings.timeout)
            .map(|t| (Instant::now() + t, t));
        if retries {
            shared.budget.deposit();
        }
        Self {
            backend: routing.backend,
            addressed,
            chosen,
            rule: routing.rule,
            deadline,
            kept: keep.then(|| Kept {
                head: KeptHead::copy(req),
                replay: None,
            }),
            body_was_empty: req.body().is_end_stream(),
            idempotent: is_idempotent(req.method()),
            https: req.uri().scheme() == Some(&Scheme::HTTPS),
            attempt_no: 0,
            tried: Vec::new(),
        }
    }

    /// The request the first attempt sends: its body is kept as it is read (up to the
    /// cap) when another attempt may need it.
    fn first(&mut self, req: Request<B>) -> Request<ReplayBody<B>> {
        let cap = self.policy().settings.max_replay_body;
        let Some(kept) = self.kept.as_mut() else {
            return req.map(|b| ReplayBody::first(b, 0).0);
        };
        req.map(|b| {
            let (body, replay) = ReplayBody::first(b, cap);
            kept.replay = replay;
            body
        })
    }

    /// Picks the next attempt's endpoint and starts it: the request to send (`first`, or
    /// a copy for a retry) and its attempt.
    fn next(
        &mut self,
        first: Option<Request<ReplayBody<B>>>,
    ) -> Result<(Request<ReplayBody<B>>, Attempt), BoxError> {
        let attempt = self.restart()?;
        let mut req = match first {
            Some(r) => r,
            None => self.again()?,
        };
        self.aim(&mut req, &attempt)?;
        Ok((req, attempt))
    }

    /// Starts an attempt on an endpoint of the Service's newest snapshot, in the subset
    /// looked up again there, avoiding the endpoints already tried: endpoints that left
    /// since the last attempt are not picked, those that joined may be.
    fn restart(&mut self) -> Result<Attempt, BoxError> {
        let snapshot = self.routed().pool.load();
        let settings = &self.policy().settings;
        let selector = self.chosen.subset.selector(settings);
        let picked = members(self.routed(), &snapshot, selector, &settings.fallback)?;
        let set = snapshot.set();
        let avoid: Vec<usize> = self.tried.iter().filter_map(|a| set.position(*a)).collect();
        self.start(&snapshot, &picked, &avoid)
    }

    /// Picks the next attempt's endpoint in `picked`, a subset of `snapshot`, avoiding the
    /// positions in `avoid`, and starts the attempt on it.
    fn start(
        &mut self,
        snapshot: &Snapshot<EndpointExtra>,
        picked: &Picked<'_>,
        avoid: &[usize],
    ) -> Result<Attempt, BoxError> {
        self.attempt_no += 1;
        // Positions are in member order, which is address order.
        let tried = avoid
            .iter()
            .filter(|p| picked.positions().binary_search(&(**p as u32)).is_ok())
            .count();
        self.chosen.untried = picked.len() - tried;
        if self.chosen.untried == 0 {
            // A retry goes to another endpoint, or nowhere.
            return Err(MeshError::NoEndpoints {
                service: self.routed().service.to_string(),
                subset: String::new(),
                reason: "every endpoint of the subset was tried".into(),
            }
            .into());
        }
        let pool = &self.routed().pool;
        let pos = pool
            .pick_avoiding(snapshot, picked, self.chosen.key, avoid)
            .ok_or_else(|| MeshError::NoEndpoints {
                service: self.routed().service.to_string(),
                subset: String::new(),
                reason: "every endpoint of the subset has weight 0".into(),
            })?;
        // A retry takes from the budget once it has somewhere to go: one that finds no
        // endpoint (above) costs the budget nothing.
        if self.attempt_no > 1 && !self.policy().budget.withdraw() {
            return Err(BudgetExhausted.into());
        }
        #[cfg(any(feature = "tls", feature = "port-forward"))]
        let extra = snapshot.extra(pos);
        #[cfg(feature = "tls")]
        if self.https
            && let (Some(tls), Some(name)) = (&self.policy().settings.tls, &self.routed().tls_name)
        {
            // The connector verifies this Pod as its Service's name.
            tls.names().ensure(&extra.authority, name);
        }
        let attempt = pool.start(snapshot, pos);
        #[cfg(feature = "port-forward")]
        if let (Some(pf), Some(pod)) = (&self.policy().settings.port_forward, &extra.pod) {
            // The connector opens its tunnels to this Pod while the endpoint lives.
            let endpoint = attempt.addr();
            extra
                .tunnel
                .get_or_init(|| pf.register(endpoint, self.routed().service.namespace(), pod));
        }
        tracing::trace!(service = %self.routed().service, endpoint = %attempt.addr(), attempt = self.attempt_no, "sending");
        Ok(attempt)
    }

    /// The request again, for a retry: only chosen when the head was kept and the body
    /// can be sent again.
    fn again(&self) -> Result<Request<ReplayBody<B>>, BoxError> {
        let kept = self.kept.as_ref().expect("retries keep the head");
        let body = match &kept.replay {
            Some(r) => r.again().unwrap_or_else(ReplayBody::empty),
            None => ReplayBody::empty(),
        };
        Ok(kept.head.request(body)?)
    }

    /// Whether another attempt can be sent: the head was kept, and the body was empty or
    /// everything read of it was kept.
    fn body_again(&self) -> bool {
        self.kept.as_ref().is_some_and(|k| match &k.replay {
            None => self.body_was_empty,
            Some(r) => r.can_replay(),
        })
    }

    /// Points `req` at the endpoint of `attempt`, in place.
    fn aim(&self, req: &mut Request<ReplayBody<B>>, attempt: &Attempt) -> Result<(), BoxError> {
        let extra = attempt.extra();
        retarget(
            req,
            &self.addressed.host,
            super::local::authority(&extra.authority),
        )
    }

    /// When the attempt in flight times out: the earlier of the response timeout (from
    /// now) and the request's deadline.
    fn timer(&self) -> Option<Armed> {
        let attempt = self.policy().settings.response_timeout.map(|l| Armed {
            at: Instant::now() + l,
            timeout: l,
            whole_request: false,
        });
        let whole = self.deadline.map(|(at, timeout)| Armed {
            at,
            timeout,
            whole_request: true,
        });
        match (attempt, whole) {
            (Some(a), Some(w)) => Some(if a.at <= w.at { a } else { w }),
            (a, w) => a.or(w),
        }
    }

    /// Records a response; whether to retry it on another endpoint (else it is the
    /// answer, see [`Answer::sent`]).
    fn responded<RB>(&mut self, res: &Response<RB>, attempt: &mut Attempt) -> bool {
        let settings = &self.policy().settings;
        let failure = settings.failure_on_5xx && res.status().is_server_error();
        // Opening a connection is not the Pod's latency.
        let setup = res
            .extensions()
            .get::<crate::ConnectTime>()
            .map_or(Duration::ZERO, |c| c.0);
        let latency = attempt.responded_excluding(failure, setup);
        let outcome = if failure {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        self.policy().telemetry.request(
            &attempt.extra().telemetry,
            self.chosen.slot,
            outcome,
            latency,
        );
        let endpoint = attempt.addr();
        // The opt-in retry on status codes: idempotent requests only, within the same
        // limits and budget as every retry.
        let retry = !settings.retry_statuses.is_empty()
            && self.idempotent
            && settings.retry_statuses.contains(&res.status())
            && self.body_again()
            && self.attempt_no <= settings.max_retries
            && self.chosen.untried > 1;
        if retry {
            tracing::debug!(%endpoint, status = %res.status(), "retrying on another endpoint");
            self.tried.push(endpoint);
        }
        retry
    }

    /// Records a failed attempt and decides whether to try another endpoint.
    fn errored<R>(&mut self, e: BoxError, attempt: Attempt) -> Step<R> {
        let settings = &self.addressed.routed.policy.settings;
        let endpoint = attempt.addr();
        // The entry outlives the attempt for the metrics (a failure is the rare path).
        let entry = attempt.entry().clone();
        let elapsed = attempt.failed();
        self.policy().telemetry.request(
            &entry.extra().telemetry,
            self.chosen.slot,
            Outcome::Error,
            elapsed,
        );
        self.tried.push(endpoint);
        // Idempotent requests are retried when no response came; others only when the
        // connection was never made, so no application saw them.
        let unseen = if self.idempotent {
            crate::error::never_reached_application(&*e)
        } else {
            crate::error::never_connected(&*e)
        };
        let retry = self.body_again()
            && self.attempt_no <= settings.max_retries
            && unseen
            && self.chosen.untried > 1;
        if retry {
            tracing::debug!(%endpoint, error = %e, "retrying on another endpoint");
        }
        // The Mesh's own (a timeout) stays as it is.
        let failed = if e.is::<MeshError>() {
            e
        } else {
            MeshError::Failed {
                service: self.routed().service.to_string(),
                tried: if retry {
                    self.tried.clone()
                } else {
                    std::mem::take(&mut self.tried)
                },
                hint: crate::error::hint(&*e, self.https),
                source: e,
            }
            .into()
        };
        if retry {
            Step::Retry(Err(failed))
        } else {
            Step::Done(Err(failed))
        }
    }

    /// Sends attempts until one is the answer, within the request's deadline; `first` is
    /// the first attempt's request, or `None` when retrying, and `previous` the result of
    /// the attempt that asked for the retry.
    async fn attempts<S, RB>(
        &mut self,
        inner: &mut S,
        first: Option<Request<ReplayBody<B>>>,
        previous: Option<Result<Answer<Response<RB>>, BoxError>>,
    ) -> Result<Answer<Response<RB>>, BoxError>
    where
        S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
        S::Error: Into<BoxError>,
    {
        let deadline = self.deadline;
        let run = async {
            let mut first = first;
            let mut previous = previous;
            loop {
                let (req, attempt) = match (self.next(first.take()), previous.take()) {
                    (Ok(next), previous) => {
                        if previous.is_some() {
                            self.policy().telemetry.retry(&self.routed().label);
                        }
                        next
                    }
                    // No retry after all (the endpoints left since, or the budget is
                    // spent): the last attempt's result is the answer, not why there is
                    // nothing more to send.
                    (Err(e), Some(previous)) => {
                        tracing::debug!(error = %e, "not retried");
                        return previous;
                    }
                    (Err(e), None) => return Err(e),
                };
                let ready: Result<&mut S, BoxError> = inner.ready().await.map_err(Into::into);
                let limit = self.policy().settings.response_timeout;
                let result = match (ready, limit) {
                    (Ok(svc), None) => svc.call(req).await.map_err(Into::into),
                    (Ok(svc), Some(limit)) => {
                        match tokio::time::timeout(limit, svc.call(req)).await {
                            Ok(result) => result.map_err(Into::into),
                            Err(_) => Err(MeshError::Timeout {
                                service: self.routed().service.to_string(),
                                timeout: limit,
                            }
                            .into()),
                        }
                    }
                    (Err(e), _) => Err(e),
                };
                let step = match result {
                    Ok(res) => {
                        let mut attempt = attempt;
                        let retry = self.responded(&res, &mut attempt);
                        let answer = Ok(Answer::sent(res, attempt));
                        if retry {
                            Step::Retry(answer)
                        } else {
                            Step::Done(answer)
                        }
                    }
                    Err(e) => self.errored(e, attempt),
                };
                match step {
                    Step::Done(result) => return result,
                    Step::Retry(own) => previous = Some(own),
                }
            }
        };
        let Some((at, timeout)) = deadline else {
            return run.await;
        };
        match tokio::time::timeout_at(at, run).await {
            Ok(result) => result,
            Err(_) => Err(MeshError::Timeout {
                service: self.routed().service.to_string(),
                timeout,
            }
            .into()),
        }
    }

    /// [`finish`](Self::finish), counting the Mesh's own failure: the end of a request
    /// whose future is this dispatch's (the general path counts its own, waits included).
    #[inline(always)]
    fn end<RB>(
        self,
        result: Result<Answer<Response<RB>>, BoxError>,
    ) -> Result<Answer<Response<RB>>, BoxError> {
        if let Err(e) = &result {
            count(self.policy(), e);
        }
        self.finish(result)
    }

    /// The end of a request whose first attempt's response is the answer (the common
    /// case): [`finish`](Self::finish) with the response built once, in place, rather than
    /// moved through an [`Answer`] and a `Result` (a response is over a hundred bytes, and
    /// every move of it is a copy).
    #[inline(always)]
    fn respond<RB>(self, res: Response<RB>, attempt: Attempt) -> Response<ResponseBody<RB>> {
        self.guard(|| res.status().is_server_error());
        let target = self.target(attempt.addr());
        res.map(|b| ResponseBody::new(b, Some(attempt), Some(target)))
    }

    /// The request's end: the canary guard counts what the backend an HTTPRoute chose did
    /// with it, and the answer takes the Service it came through along for its target.
    #[inline(always)]
    fn finish<RB>(
        self,
        result: Result<Answer<Response<RB>>, BoxError>,
    ) -> Result<Answer<Response<RB>>, BoxError> {
        self.guard(|| {
            result
                .as_ref()
                .map_or(true, |a| a.res.status().is_server_error())
        });
        let mut answer = result?;
        if let Some(endpoint) = answer.endpoint.take() {
            answer.target = Some(self.target(endpoint));
        }
        Ok(answer)
    }

    /// Counts the request, as `failed` says, for the canary guard of the HTTPRoute rule
    /// that chose its backend, if one did.
    #[inline(always)]
    fn guard(&self, failed: impl FnOnce() -> bool) {
        if let Some((rule, index)) = &self.rule {
            rule.record(*index, failed());
        }
    }

    /// Where the request went: `endpoint`, of the Service it came through.
    #[inline(always)]
    fn target(self, endpoint: SocketAddr) -> Whence {
        Whence::Endpoint {
            addressed: self.addressed,
            endpoint,
        }
    }
}

/// The subset a request asked for: where it is in the configuration when it came from
/// there, so choosing allocates nothing on the common paths, and a retry finds the same
/// subset again.
enum SubsetChoice {
    /// The Mesh's subset, or every endpoint without one.
    Configured,
    /// A code route's subset, or one leg of its split.
    Route { rule: usize, leg: usize },
    /// A leg of the traffic split.
    Split(Arc<rudder_balance::Split>, usize),
    /// From the request (extension or header).
    Owned(Arc<Selector>),
}

impl SubsetChoice {
    fn selector<'a>(&'a self, settings: &'a Settings) -> &'a Selector {
        static EVERYTHING: Selector = Selector::everything();
        match self {
            Self::Configured => settings.subset.as_ref().unwrap_or(&EVERYTHING),
            Self::Route { rule, leg } => settings.routes[*rule].selector(*leg),
            Self::Split(split, leg) => &split.legs()[*leg].0,
            Self::Owned(s) => s,
        }
    }
}

/// The subset for this request: extension, header, routes, split, configured subset,
/// everything.
fn choose_subset<B>(shared: &Shared, req: &Request<B>) -> Result<SubsetChoice, MeshError> {
    let settings = &shared.settings;
    if let Some(s) = req.extensions().get::<Subset>() {
        return Ok(SubsetChoice::Owned(s.shared().clone()));
    }
    if let Some(name) = &settings.subset_header
        && let Some(value) = req.headers().get(name)
    {
        let text = value.to_str().map_err(|_| MeshError::SubsetNotAscii {
            header: name.to_string(),
        })?;
        return shared
            .header_selector(text)
            .map(SubsetChoice::Owned)
            .map_err(|source| MeshError::InvalidSubset {
                header: name.to_string(),
                source,
            });
    }
    if let Some((rule, leg)) = settings
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| r.matches(req))
        .and_then(|(rule, r)| Some((rule, r.choose()?)))
    {
        return Ok(SubsetChoice::Route { rule, leg });
    }
    if let Some(split) = shared.split.load() {
        let leg = split.choose_leg();
        return Ok(SubsetChoice::Split(split, leg));
    }
    Ok(SubsetChoice::Configured)
}

fn empty_reason(r: EmptyReason) -> &'static str {
    match r {
        EmptyReason::NoEndpoints => "the Service has no endpoints",
        EmptyReason::NoneReady => "no endpoint is ready",
        EmptyReason::NoSuchPort => "the Service has no such port",
        _ => "no routable endpoint",
    }
}

/// Points `req` at `endpoint`, keeping the caller's authority in `Host` (as `host`) unless
/// the request has its own.
fn retarget<B>(
    req: &mut Request<B>,
    host: &HeaderValue,
    endpoint: Authority,
) -> Result<(), BoxError> {
    // The parts are valid already; assembling them skips re-parsing.
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme.get_or_insert(Scheme::HTTP);
    parts
        .path_and_query
        .get_or_insert_with(|| PathAndQuery::from_static("/"));
    parts.authority = Some(endpoint);
    *req.uri_mut() = Uri::from_parts(parts)?;
    if !req.headers().contains_key(http::header::HOST) {
        req.headers_mut()
            .insert(http::header::HOST, super::local::host(host));
    }
    Ok(())
}
