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

pub(crate) type H1 = Client<HttpConnector, Empty<Bytes>>;

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
    let layer = MeshLayer::builder(cluster.api().client().await.expect("client"))
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
