//! Starting, stopping and connecting to the test API server.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::access::Access;
use super::faults::{FaultState, Faults};
use super::resource::Resource;
use super::store::{Event, Store, meta_str};
use super::trace::{Speed, Trace, TraceEvent, TraceEventKind};
use super::{controller, handler, tls};
use crate::error::Error;

/// Settings of one server; see [`ApiServer::builder`].
#[derive(Clone, Debug)]
pub struct ApiServerBuilder {
    port: u16,
    history: usize,
    allow_loopback_endpoints: bool,
    max_endpoints_per_slice: usize,
    bookmark_interval: Duration,
    controllers: bool,
    token: Option<String>,
    record: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) allow_loopback_endpoints: bool,
    pub(crate) max_endpoints_per_slice: usize,
    pub(crate) bookmark_interval: Duration,
}

/// State shared by every connection, the controllers and the handles.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) store: Mutex<Store>,
    /// The newest resourceVersion; watches and controllers wait on it.
    pub(crate) changed: watch::Sender<u64>,
    /// The resourceVersion the controllers have reconciled up to.
    pub(crate) reconciled: watch::Sender<u64>,
    pub(crate) faults: Mutex<FaultState>,
    pub(crate) drop_watches: watch::Sender<u64>,
    pub(crate) stalled: watch::Sender<bool>,
    pub(crate) tokens: Mutex<HashMap<String, Access>>,
    pub(crate) requests: AtomicU64,
    /// Writes every watch event served (`ApiServerBuilder::record`).
    pub(crate) recorder: Option<super::trace::Recorder>,
    /// Requests and response bytes per (resource, verb).
    pub(crate) traffic: Mutex<BTreeMap<(String, &'static str), Traffic>>,
    /// Watch event lines already encoded.
    pub(crate) encoded: Mutex<BTreeMap<EncodedKey, bytes::Bytes>>,
    /// Versions the history forgot and nothing else held, kept (at most [`SPARES`]) for
    /// [`copy_of`](Shared::copy_of) to copy a stored object into instead of allocating
    /// it anew.
    spares: Mutex<Vec<Value>>,
}

/// How many forgotten versions [`Shared`] keeps for copies.
const SPARES: usize = 4;

/// An encoded watch line: (version, resource, event type, metadata-only).
pub(crate) type EncodedKey = (u64, Resource, &'static str, bool);

/// Requests received and response body bytes sent for one resource and verb (see
/// [`ApiServer::traffic`]). For a watch, the bytes are those of every event sent on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
    /// Requests received.
    pub requests: u64,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Of the requests, lists that accept any resourceVersion (`resourceVersion=0`): a real
    /// server answers those from its watch cache instead of reading etcd.
    pub any_version: u64,
}

impl std::ops::Sub for Traffic {
    type Output = Traffic;
    fn sub(self, earlier: Traffic) -> Traffic {
        Traffic {
            requests: self.requests.saturating_sub(earlier.requests),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            any_version: self.any_version.saturating_sub(earlier.any_version),
        }
    }
}

impl Shared {
    /// Counts a request (`requests`) and `bytes` sent for `resource` and `verb`.
    pub(crate) fn count(&self, resource: &str, verb: &'static str, requests: u64, bytes: u64) {
        self.count_as(
            resource,
            verb,
            Traffic {
                requests,
                bytes,
                any_version: 0,
            },
        );
    }

    pub(crate) fn count_as(&self, resource: &str, verb: &'static str, add: Traffic) {
        let mut t = self.traffic.lock().expect("traffic lock");
        let e = t.entry((resource.to_string(), verb)).or_default();
        e.requests += add.requests;
        e.bytes += add.bytes;
        e.any_version += add.any_version;
    }
}

impl Shared {
    /// Runs `f` on the store and wakes watchers and controllers if it wrote anything.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let (out, rv, forgotten) = {
            let mut store = self.store.lock().expect("store lock");
            let out = f(&mut store);
            (out, store.rv(), store.take_forgotten())
        };
        self.changed.send_if_modified(|cur| {
            let modified = *cur != rv;
            *cur = rv;
            modified
        });
        // The versions the history let go are dealt with here, after the watches were
        // woken: kept as spares for the next copies, or freed.
        self.recycle(forgotten);
        out
    }

    /// Keeps the versions of `forgotten` events that nothing else holds as spares for
    /// [`copy_of`](Self::copy_of), up to [`SPARES`]; the rest is freed. An update of a
    /// 100-endpoint slice then copies into the memory of a version of the same shape
    /// (about 12 µs, measured once) instead of allocating and later freeing every field
    /// of it (about 107 µs); the discovery bench's `--updates-only` run shows the effect.
    fn recycle(&self, forgotten: Vec<Event>) {
        if forgotten.is_empty() {
            return;
        }
        let spares = || self.spares.lock().unwrap_or_else(|e| e.into_inner());
        let room = SPARES.saturating_sub(spares().len());
        let mut unique = Vec::new();
        for version in forgotten
            .into_iter()
            .flat_map(|e| [Some(e.object), e.old])
            .flatten()
        {
            if unique.len() == room {
                break;
            }
            if let Ok(v) = Arc::try_unwrap(version) {
                unique.push(v);
            }
        }
        // Another write may have filled the room meanwhile; what does not fit is freed
        // after the lock is let go, so no copy waits on it.
        let mut spares = spares();
        let fits = SPARES.saturating_sub(spares.len()).min(unique.len());
        spares.extend(unique.drain(..fits));
    }

    /// A deep copy of `value`, made in a spare version's memory when there is one.
    pub(crate) fn copy_of(&self, value: &Value) -> Value {
        let spare = self.spares.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match spare {
            Some(mut copy) => {
                super::store::copy_into(&mut copy, value);
                copy
            }
            None => value.clone(),
        }
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.store.lock().expect("store lock"))
    }
}

/// A running Kubernetes API server that speaks the real wire protocol on loopback.
///
/// [`ApiServer`] serves `v1` Namespaces, Nodes, Pods (with `status`), Services and Endpoints,
/// and `discovery.k8s.io/v1` EndpointSlices over HTTPS (HTTP/1.1 and HTTP/2) with bearer
/// tokens. It implements get, list (label and field selectors, `limit`/`continue`), watch
/// (`resourceVersion` replay, bookmarks, `410 Gone`), create, update, patch (merge, JSON and
/// the strategic-merge patches `kubectl label`/`annotate` send), delete (graceful for Pods)
/// and metadata-only (`PartialObjectMetadata`) responses, with errors as `Status` objects.
/// Controllers keep each selector Service's EndpointSlices and Endpoints up to date, the
/// way `kube-controller-manager` does, and mirror hand-made Endpoints of selector-less
/// Services into slices.
///
/// The wire format was checked against captures from kube-apiserver v1.34 (the fixtures in
/// the repository's `shared/fixtures`); the crate's tests compare the two field by field.
///
/// ```no_run
/// # async fn demo() -> Result<(), rudder_testkit::Error> {
/// use k8s_openapi::api::core::v1::Pod;
/// use kube::api::{Api, ListParams};
///
/// let server = rudder_testkit::ApiServer::start().await?;
/// let pods: Api<Pod> = Api::namespaced(server.client().await?, "default");
/// assert!(pods.list(&ListParams::default()).await?.items.is_empty());
/// # Ok(()) }
/// ```
///
/// Dropping it stops the server and removes its kubeconfig file.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: tls::Tls,
    token: String,
    kubeconfig: Kubeconfig,
    kubeconfig_path: PathBuf,
    serving: Mutex<Option<JoinHandle<()>>>,
    controller: JoinHandle<()>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never print it.
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .field("kubeconfig_path", &self.kubeconfig_path)
            .finish_non_exhaustive()
    }
}

impl Default for ApiServerBuilder {
    fn default() -> Self {
        Self {
            port: 0,
            history: 10_000,
            allow_loopback_endpoints: false,
            max_endpoints_per_slice: 100,
            bookmark_interval: Duration::from_secs(60),
            controllers: true,
            token: None,
            record: None,
        }
    }
}

impl ApiServerBuilder {
    /// Listens on this port of 127.0.0.1 (default: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// How many events the watch history keeps (default 10,000). Watches and continue
    /// tokens from versions older than the history get `410 Gone`, so a small value lets
    /// tests force relists.
    pub fn history(mut self, events: usize) -> Self {
        self.history = events;
        self
    }

    /// Whether Endpoints and EndpointSlices may hold loopback addresses.
    ///
    /// The real kube-apiserver rejects loopback, link-local and unspecified addresses with
    /// 422, and so does this server by default, so objects a test writes would be accepted
    /// by a real cluster too. The slice controller writes the endpoints of Pods on
    /// loopback regardless (that is what [`TestCluster`](crate::TestCluster) runs on); pass
    /// `true` only for a test that writes loopback endpoints itself, and say why.
    pub fn allow_loopback_endpoints(mut self, allow: bool) -> Self {
        self.allow_loopback_endpoints = allow;
        self
    }

    /// Endpoints per EndpointSlice written by the slice controller (default 100, like
    /// `--max-endpoints-per-slice`).
    pub fn max_endpoints_per_slice(mut self, max: usize) -> Self {
        self.max_endpoints_per_slice = max.max(1);
        self
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (default 60 s, as
    /// observed on a real server). Bookmarks are also sent 2 s before a watch's timeout.
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Runs the EndpointSlice, Endpoints and mirroring controllers (default on).
    pub fn controllers(mut self, on: bool) -> Self {
        self.controllers = on;
        self
    }

    /// Uses this admin bearer token instead of a random one.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Records every watch event the server serves, with its time and the watch that got
    /// it, into a new file at `path` (replaced if it exists); read it back with
    /// [`Trace::read_recording`](super::Trace::read_recording) and play it into another
    /// server with [`ApiServer::replay`].
    pub fn record(mut self, path: impl Into<PathBuf>) -> Self {
        self.record = Some(path.into());
        self
    }

    /// Starts the server: generates its CA and certificate, binds 127.0.0.1, creates the
    /// `default` Namespace and writes a kubeconfig file.
    pub async fn start(self) -> Result<ApiServer, Error> {
        let tls = tls::generate()?;
        let token = self.token.unwrap_or_else(random_token);
        let (changed, _) = watch::channel(0);
        let (reconciled, _) = watch::channel(0);
        let (drop_watches, _) = watch::channel(0);
        let (stalled, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config: Config {
                allow_loopback_endpoints: self.allow_loopback_endpoints,
                max_endpoints_per_slice: self.max_endpoints_per_slice,
                bookmark_interval: self.bookmark_interval,
            },
            store: Mutex::new(Store::new(self.history)),
            changed,
            reconciled,
            faults: Mutex::new(FaultState::default()),
            drop_watches,
            stalled,
            tokens: Mutex::new(HashMap::from([(token.clone(), Access::admin())])),
            requests: AtomicU64::new(0),
            recorder: match &self.record {
                Some(path) => Some(super::trace::Recorder::create(path)?),
                None => None,
            },
            traffic: Mutex::new(BTreeMap::new()),
            encoded: Mutex::new(BTreeMap::new()),
            spares: Mutex::new(Vec::new()),
        });
        handler::bootstrap(&shared);

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, self.port)).await?;
        let addr = listener.local_addr()?;
        let serving = tokio::spawn(serve(
            listener,
            shared.clone(),
            TlsAcceptor::from(tls.config.clone()),
        ));
        let controller = if self.controllers {
            tokio::spawn(controller::run(shared.clone()))
        } else {
            tokio::spawn(async {})
        };
        if !self.controllers {
            // Without controllers nothing reconciles; `settled` must not wait for them.
            shared.reconciled.send_replace(u64::MAX);
        }

        let kubeconfig = kubeconfig(addr, &tls.ca_pem, &token);
        let kubeconfig_path = std::env::temp_dir().join(format!(
            "rudder-testkit-{}-{}.kubeconfig",
            std::process::id(),
            addr.port()
        ));
        write_kubeconfig(&kubeconfig, &kubeconfig_path)?;

        Ok(ApiServer {
            shared,
            addr,
            tls,
            token,
            kubeconfig,
            kubeconfig_path,
            serving: Mutex::new(Some(serving)),
            controller,
        })
    }
}

impl ApiServer {
    /// Starts a server with default settings on a free port.
    pub async fn start() -> Result<ApiServer, Error> {
        Self::builder().start().await
    }

    /// Settings for a server.
    pub fn builder() -> ApiServerBuilder {
        ApiServerBuilder::default()
    }

    /// The listening address (always on 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA certificate (PEM) that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.tls.ca_pem
    }

    /// The admin bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A kubeconfig for this server (context `rudder-testkit`, namespace `default`).
    pub fn kubeconfig(&self) -> &Kubeconfig {
        &self.kubeconfig
    }

    /// Where the kubeconfig was written (removed when the server is dropped).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// Writes the kubeconfig to another path too (for `kubectl --kubeconfig`).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        write_kubeconfig(&self.kubeconfig, path)
    }

    /// A new `kube::Client` for this server, authenticated as admin, verifying TLS
    /// against [`ca_pem`](Self::ca_pem).
    pub async fn client(&self) -> Result<kube::Client, Error> {
        client_for(&self.kubeconfig).await
    }

    /// The `kube::Config` behind [`client`](Self::client), for clients with other settings
    /// (note that kube-rs retries 429, 503 and 504 answers by default: `default_retry`).
    pub async fn kube_config(&self) -> Result<kube::Config, Error> {
        kube::Config::from_custom_kubeconfig(self.kubeconfig.clone(), &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Kube(e.to_string()))
    }

    /// A new client authenticated with `token` (see [`add_token`](Self::add_token)).
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client, Error> {
        client_for(&kubeconfig(self.addr, &self.tls.ca_pem, token)).await
    }

    /// A new client that sends no credentials (the API answers as `system:anonymous`).
    pub async fn anonymous_client(&self) -> Result<kube::Client, Error> {
        let mut kc = self.kubeconfig.clone();
        for user in &mut kc.auth_infos {
            user.auth_info = Some(AuthInfo::default());
        }
        client_for(&kc).await
    }

    /// Accepts `token` with the given access from now on.
    pub fn add_token(&self, token: impl Into<String>, access: Access) {
        self.shared
            .tokens
            .lock()
            .expect("token lock")
            .insert(token.into(), access);
    }

    /// The fault-injection handle.
    pub fn faults(&self) -> Faults {
        Faults {
            shared: self.shared.clone(),
        }
    }

    /// Requests and response bytes so far, per resource (`pods`, `endpointslices`…, or
    /// `discovery` for `/api`, `/apis`, `/openapi`, `/version`) and verb (`get`, `list`,
    /// `watch`, `create`…). Subtract two snapshots for what happened in between.
    pub fn traffic(&self) -> BTreeMap<(String, String), Traffic> {
        self.shared
            .traffic
            .lock()
            .expect("traffic lock")
            .iter()
            .map(|((r, v), t)| ((r.clone(), (*v).to_string()), *t))
            .collect()
    }

    /// How many HTTP requests the server has received (for asserting backoff).
    pub fn request_count(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.read(|s| s.rv())
    }

    /// Waits until the controllers have reconciled every write made so far, so that
    /// EndpointSlices and Endpoints reflect the current Pods and Services.
    pub async fn settled(&self) {
        let target = self.resource_version();
        let mut rx = self.shared.reconciled.subscribe();
        // The controller only stops when the server is dropped, so this cannot hang on
        // a live server; a closed channel means there is nothing left to wait for.
        let _ = rx.wait_for(|done| *done >= target).await;
    }

    /// Stops serving: closes the listener and every connection (open watches end), keeping
    /// all data. [`restart`](Self::restart) serves again on the same port.
    pub async fn stop(&self) {
        let task = self.serving.lock().expect("serving lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Serves again on the same address after [`stop`](Self::stop), with the data kept.
    pub async fn restart(&self) -> Result<(), Error> {
        self.stop().await;
        let listener = bind_again(self.addr).await?;
        let task = tokio::spawn(serve(
            listener,
            self.shared.clone(),
            TlsAcceptor::from(self.tls.config.clone()),
        ));
        *self.serving.lock().expect("serving lock") = Some(task);
        Ok(())
    }

    /// Makes one traced event true on this server: the object as traced is stored (a new
    /// resourceVersion, everything else kept: name, uid, labels, status) or deleted, and
    /// every watch sees it. Nothing is validated and no admission runs: the trace says what
    /// a server held. Controllers, if running, react as to any write.
    pub fn apply(&self, event: &TraceEvent) -> Result<(), Error> {
        let o = &event.object;
        let res = Resource::of_object(
            o["apiVersion"].as_str().unwrap_or_default(),
            o["kind"].as_str().unwrap_or_default(),
        )
        .ok_or_else(|| {
            Error::Invalid(format!(
                "this server does not serve {} {}",
                o["apiVersion"], o["kind"]
            ))
        })?;
        let name = meta_str(o, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::Invalid("a traced object without a name".into()))?;
        let ns = if res.namespaced() {
            meta_str(o, "namespace").unwrap_or("default").to_string()
        } else {
            String::new()
        };
        let key = (res, ns, name.to_string());
        self.shared.write(|store| match event.kind {
            TraceEventKind::Added | TraceEventKind::Modified => {
                store.put(key, o.clone());
            }
            TraceEventKind::Deleted => {
                store.remove(&key);
            }
        });
        Ok(())
    }

    /// Plays `trace` into this server at `speed` (see [`apply`](Self::apply)); returns the
    /// number of events applied.
    pub async fn replay(&self, trace: &Trace, speed: Speed) -> Result<usize, Error> {
        let start = tokio::time::Instant::now();
        for event in trace.events() {
            let due = match speed {
                Speed::Real => Some(event.at),
                Speed::Faster(f) if f.is_finite() && f > 0.0 => Some(event.at.div_f64(f)),
                Speed::Faster(f) => {
                    return Err(Error::Invalid(format!("replay speed-up {f} is not > 0")));
                }
                Speed::Instant => None,
            };
            if let Some(due) = due {
                tokio::time::sleep_until(start + due).await;
            }
            self.apply(event)?;
        }
        Ok(trace.events().len())
    }

    /// Watch streams currently open (across every client and resource).
    pub fn open_watches(&self) -> usize {
        self.shared.drop_watches.receiver_count()
    }

    /// Whether the server is currently accepting connections.
    pub fn is_serving(&self) -> bool {
        self.serving.lock().expect("serving lock").is_some()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(task) = self.serving.lock().expect("serving lock").take() {
            task.abort();
        }
        self.controller.abort();
        let _ = std::fs::remove_file(&self.kubeconfig_path);
    }
}

async fn bind_again(addr: SocketAddr) -> Result<TcpListener, Error> {
    // The old socket is closed, but the port may take a moment to be free.
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last
        .map(Error::Io)
        .unwrap_or_else(|| Error::Invalid("bind failed".into())))
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, acceptor: TlsAcceptor) {
    // Connections live in this set, so aborting the serving task closes them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                conns.spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req| {
                        handler::handle(shared.clone(), req)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| {
            let i = rng.random_range(0..36u8);
            (if i < 10 { b'0' + i } else { b'a' + i - 10 }) as char
        })
        .collect()
}

fn kubeconfig(addr: SocketAddr, ca_pem: &str, token: &str) -> Kubeconfig {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: "rudder-testkit".into(),
            cluster: Some(Cluster {
                server: Some(format!("https://{addr}")),
                certificate_authority_data: Some(ca),
                ..Cluster::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "admin".into(),
            auth_info: Some(AuthInfo {
                token: Some(token.to_string().into()),
                ..AuthInfo::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: "rudder-testkit".into(),
            context: Some(Context {
                cluster: "rudder-testkit".into(),
                user: Some("admin".into()),
                namespace: Some("default".into()),
                ..Context::default()
            }),
            other: Default::default(),
        }],
        current_context: Some("rudder-testkit".into()),
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        ..Kubeconfig::default()
    }
}

fn write_kubeconfig(kc: &Kubeconfig, path: &Path) -> Result<(), Error> {
    // JSON is YAML, and kubectl reads it as a kubeconfig.
    let text = serde_json::to_string_pretty(kc).map_err(|e| Error::Kube(e.to_string()))?;
    std::fs::write(path, text)?;
    Ok(())
}

async fn client_for(kc: &Kubeconfig) -> Result<kube::Client, Error> {
    let config = kube::Config::from_custom_kubeconfig(kc.clone(), &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kube(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| Error::Kube(e.to_string()))
}
