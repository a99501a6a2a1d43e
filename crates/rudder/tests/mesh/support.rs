//! Shared set-up: test clusters, clients and request helpers.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rudder::{BoxError, Mesh, MeshLayer};
use rudder_testkit::{PodReply, TestCluster};
use tower::{Layer, Service, ServiceExt};

pub(crate) type H1 = Client<HttpConnector, rudder::ReplayBody<Empty<Bytes>>>;

/// Bound on every wait in these tests.
pub(crate) const BOUND: Duration = Duration::from_secs(20);

pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) fn h1() -> H1 {
    Client::builder(TokioExecutor::new()).build_http()
}

/// [`hello`] on an API server that accepts EndpointSlices listing loopback addresses, as
/// the test Pods have: a real one refuses them, so tests that write slices by hand opt in.
pub(crate) async fn hello_allowing_loopback_slices(n: usize) -> TestCluster {
    let api = rudder_testkit::ApiServer::builder()
        .allow_loopback_endpoints(true)
        .start()
        .await
        .expect("API server");
    TestCluster::builder()
        .service("hello-svc")
        .pod_prefix("hello-world")
        .label("app", "hello-world")
        .replicas(n)
        .start_on(api)
        .await
        .expect("cluster")
}

/// A Service `name` without a selector (port 8080) and one EndpointSlice for it, written
/// by hand, listing `endpoints` (as the API takes them).
pub(crate) async fn selectorless_service(
    client: &kube::Client,
    name: &str,
    endpoints: Vec<serde_json::Value>,
) {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, PostParams};

    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"port": 8080}]},
    }))
    .expect("Service");
    Api::<Service>::default_namespaced(client.clone())
        .create(&PostParams::default(), &svc)
        .await
        .expect("create the Service");
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"port": 8080, "protocol": "TCP"}],
    }))
    .expect("EndpointSlice");
    Api::<EndpointSlice>::default_namespaced(client.clone())
        .create(&PostParams::default(), &slice)
        .await
        .expect("create the EndpointSlice");
}

/// `hello-svc` over `n` `app=hello-world` Pods.
pub(crate) async fn hello(n: usize) -> TestCluster {
    TestCluster::builder()
        .service("hello-svc")
        .pod_prefix("hello-world")
        .label("app", "hello-world")
        .replicas(n)
        .start()
        .await
        .expect("cluster")
}

/// `biz1` (selector `app=biz1,zone=prod`) over `v41` Pods at `version=4.1` and `v42` at
/// `version=4.2`.
pub(crate) async fn biz1(v41: usize, v42: usize) -> TestCluster {
    let mut cluster = TestCluster::builder()
        .service("biz1")
        .label("app", "biz1")
        .label("zone", "prod")
        .replicas(0)
        .start()
        .await
        .expect("cluster");
    for (version, n) in [("4.1", v41), ("4.2", v42)] {
        for i in 0..n {
            let name = format!("biz1-{}-{i}", version.replace('.', ""));
            let l = labels(&[("app", "biz1"), ("zone", "prod"), ("version", version)]);
            cluster.add_pod(&name, l).await.expect("pod");
        }
    }
    cluster.api().settled().await;
    cluster
}

pub(crate) async fn mesh(cluster: &TestCluster) -> (MeshLayer, Mesh<H1>) {
    // The least privilege users deploy (deploy/rbac.yaml), not an admin token.
    let layer = MeshLayer::builder(rbac_client(cluster).await)
        .trust_subset_header()
        .build()
        .expect("layer");
    let mesh = layer.layer(h1());
    (layer, mesh)
}

/// Sends a GET and decodes the Pod's reply.
pub(crate) async fn get<S, B>(svc: &mut S, req: Request<Empty<Bytes>>) -> Result<PodReply, BoxError>
where
    S: Service<Request<Empty<Bytes>>, Response = http::Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let res = svc.ready().await?.call(req).await?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(Into::into)?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)).into());
    }
    Ok(serde_json::from_slice(&body)?)
}

pub(crate) fn req(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).expect("request")
}

/// Sends `n` requests built by `make`, counting replies per Pod; fails on any error.
pub(crate) async fn spread<S, B>(
    svc: &mut S,
    n: usize,
    make: impl Fn() -> Request<Empty<Bytes>>,
) -> HashMap<String, usize>
where
    S: Service<Request<Empty<Bytes>>, Response = http::Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let mut counts = HashMap::new();
    for i in 0..n {
        let reply = get(svc, make())
            .await
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        *counts.entry(reply.pod).or_default() += 1;
    }
    counts
}

/// Background load: `workers` loops sending GETs to `uri` until stopped (at most 200,000
/// requests each), counting successes and keeping failures.
pub(crate) struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tasks: tokio::task::JoinSet<Vec<String>>,
}

impl Load {
    pub(crate) fn start(mesh: &Mesh<H1>, uri: &str, workers: usize) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let (mut mesh, stop, ok, uri) =
                (mesh.clone(), stop.clone(), ok.clone(), uri.to_string());
            tasks.spawn(async move {
                let mut failed = Vec::new();
                for _ in 0..200_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match get(&mut mesh, req(&uri)).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                failed
            });
        }
        Self { stop, ok, tasks }
    }

    /// Successful requests so far.
    pub(crate) fn ok(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (bounded) until `n` more requests have succeeded.
    pub(crate) async fn progress(&self, n: usize) {
        let target = self.ok() + n;
        tokio::time::timeout(BOUND, async {
            while self.ok() < target {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("load kept making progress");
    }

    /// Stops the load; successes and failures.
    pub(crate) async fn stop(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut failed = Vec::new();
        while let Some(f) = self.tasks.join_next().await {
            failed.extend(f.expect("load task"));
        }
        (self.ok(), failed)
    }
}

/// An inner service that answers every request itself, at once, with `200`, the URI it
/// was given in `x-uri` and that URI's authority (the Pod's address) in `x-addr`: what a
/// request that falls through to the application's own client would reach (the network
/// beyond loopback is not there to reach), or which Pod the Mesh chose.
pub(crate) fn recorder() -> impl Service<
    Request<rudder::ReplayBody<Empty<Bytes>>>,
    Response = http::Response<Empty<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(
        |req: Request<rudder::ReplayBody<Empty<Bytes>>>| async move {
            let mut res = http::Response::new(Empty::new());
            let uri = req.uri();
            let addr = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let headers = res.headers_mut();
            headers.insert(
                "x-uri",
                uri.to_string().parse().expect("a URI is a header value"),
            );
            headers.insert(
                "x-addr",
                addr.parse().expect("an authority is a header value"),
            );
            Ok(res)
        },
    )
}

/// The URI a [`recorder`] saw, or the error.
pub(crate) async fn recorded<S, B>(svc: &mut S, uri: &str) -> Result<String, BoxError>
where
    S: Service<Request<Empty<Bytes>>, Response = http::Response<B>, Error = BoxError>,
{
    let res = svc.ready().await?.call(req(uri)).await?;
    Ok(res.headers()["x-uri"].to_str()?.to_string())
}

/// The verbs and resources of the Role in `deploy/rbac.yaml` (its `rules:` use one
/// flow-style list per key, which is all this reads).
pub(crate) fn manifest_rules() -> Vec<rudder_testkit::Rule> {
    let text = include_str!("../../../../deploy/rbac.yaml");
    let list = |line: &str| -> Vec<String> {
        let inner = line
            .split_once('[')
            .and_then(|(_, r)| r.split_once(']'))
            .map(|(l, _)| l);
        inner
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let mut rules = Vec::new();
    let mut resources = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("resources:") {
            resources = list(rest);
        } else if let Some(rest) = line.strip_prefix("verbs:") {
            rules.push(rudder_testkit::Rule::new(list(rest), resources.clone()));
        }
    }
    assert_eq!(rules.len(), 3, "three rules in deploy/rbac.yaml");
    rules
}

/// A kube client with the Role of `deploy/rbac.yaml` bound in the cluster's namespace (what
/// a user deploys), not an admin token.
pub(crate) async fn rbac_client(cluster: &TestCluster) -> kube::Client {
    let rules = manifest_rules()
        .into_iter()
        .map(|r| r.in_namespace(cluster.namespace()));
    cluster
        .api()
        .add_token("rbac-yaml", rudder_testkit::Access::rules(rules));
    cluster
        .api()
        .client_with_token("rbac-yaml")
        .await
        .expect("client")
}
