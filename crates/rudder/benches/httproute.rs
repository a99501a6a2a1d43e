//! How fast an HTTPRoute change reaches requests: the time from the API write (a merge
//! patch flipping a route's weights between two backend Services) until a request through
//! the Mesh lands on the new backend, over 100 changes, on loopback against the test API
//! server and real Pod servers.
//!
//! ```text
//! cargo bench -p rudder --bench httproute
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use rudder::MeshLayer;
use rudder_testkit::{PodReply, TestCluster};
use serde_json::json;
use tower::{Layer, ServiceExt};

const CHANGES: usize = 100;

fn split(a: u32, b: u32) -> serde_json::Value {
    json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 8080}],
        "rules": [{"backendRefs": [
            {"name": "web-a", "port": 8080, "weight": a},
            {"name": "web-b", "port": 8080, "weight": b},
        ]}],
    })
}

async fn run() -> Vec<Duration> {
    let mut cluster = TestCluster::builder()
        .service("web")
        .replicas(0)
        .start()
        .await
        .expect("cluster");
    for (name, side) in [("a-0", "a"), ("a-1", "a"), ("b-0", "b"), ("b-1", "b")] {
        let labels = [("app", "web"), ("side", side)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cluster.add_pod(name, labels).await.expect("pod");
    }
    let client = cluster.api().client().await.expect("client");
    let services: Api<Service> = Api::default_namespaced(client.clone());
    for side in ["a", "b"] {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("web-{side}")},
            "spec": {"selector": {"app": "web", "side": side}, "ports": [{"port": 8080}]},
        }))
        .expect("service");
        services
            .create(&PostParams::default(), &svc)
            .await
            .expect("create");
    }
    let ar = ApiResource::erase::<rudder::HttpRoute>(&());
    let routes: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &ar);
    let route: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web"}, "spec": split(100, 0),
    }))
    .expect("route");
    routes
        .create(&PostParams::default(), &route)
        .await
        .expect("create route");
    cluster.api().settled().await;

    let layer = MeshLayer::builder(client).build().expect("layer");
    let mesh: Mesh = layer.layer(Client::builder(TokioExecutor::new()).build_http());
    // Warm: the route and both backends known.
    for _ in 0..20 {
        side(&mesh).await;
    }
    let mut waits = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let (weights, want) = if i % 2 == 0 {
            (split(0, 100), "b")
        } else {
            (split(100, 0), "a")
        };
        let written = Instant::now();
        routes
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": weights})),
            )
            .await
            .expect("patch");
        let deadline = written + Duration::from_secs(10);
        while side(&mesh).await != want {
            assert!(
                Instant::now() < deadline,
                "change {i} never reached requests"
            );
        }
        waits.push(written.elapsed());
    }
    waits.sort();
    waits
}

type Mesh = rudder::Mesh<Client<HttpConnector, rudder::ReplayBody<Empty<Bytes>>>>;

/// The `side` label of the Pod that answered one request through the Mesh.
async fn side(mesh: &Mesh) -> String {
    let req = http::Request::get("http://web:8080/")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let res = mesh
        .clone()
        .oneshot(req)
        .await
        .expect("request through the Mesh");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    let reply: PodReply = serde_json::from_slice(&body).expect("Pod reply");
    reply.labels.get("side").cloned().unwrap_or_default()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let waits = rt.block_on(run());
    let q = |p: f64| waits[((waits.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "HTTPRoute write → requests on the new backend, {CHANGES} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        q(0.5).as_secs_f64() * 1000.0,
        q(0.99).as_secs_f64() * 1000.0,
        waits.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
}
