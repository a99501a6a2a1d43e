//! Requests through port-forward tunnels against direct connections, over the same Mesh
//! and Pods (loopback, the test API server relaying), sequential and with 8 workers.
//!
//! ```text
//! cargo bench -p rudder --features port-forward --bench portforward
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rudder::{MeshLayer, PortForward, Transport};
use rudder_testkit::TestCluster;
use tower::{Layer, ServiceExt};

const REQUESTS: usize = 4_000;

async fn run(cluster: &TestCluster, transport: Transport, workers: usize) -> (f64, Duration) {
    let kube = cluster.api().client().await.expect("client");
    let pf = PortForward::new(kube.clone());
    let http = Client::builder(TokioExecutor::new()).build(pf.connector_for(transport));
    let layer = MeshLayer::builder(kube)
        .port_forward(pf)
        .build()
        .expect("layer");
    let mesh = layer.layer(http);
    let one = |mesh: rudder::Mesh<_>| async move {
        let req = http::Request::get("http://hello-svc:8080/")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let started = Instant::now();
        let res = mesh.oneshot(req).await.expect("request");
        res.into_body().collect().await.expect("body");
        started.elapsed()
    };
    // Warm: connections (tunnels) open.
    for _ in 0..50 {
        one(mesh.clone()).await;
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let mesh = mesh.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            for _ in 0..REQUESTS / workers {
                lat.push(one(mesh.clone()).await);
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(l) = tasks.join_next().await {
        lat.extend(l.expect("worker"));
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    (lat.len() as f64 / secs, lat[lat.len() / 2])
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cluster = TestCluster::builder()
            .service("hello-svc")
            .replicas(3)
            .start()
            .await
            .expect("cluster");
        println!("| transport | workers | req/s | p50 |\n|---|---|---|---|");
        for workers in [1, 8] {
            for transport in [Transport::Direct, Transport::PortForward] {
                let (rps, p50) = run(&cluster, transport, workers).await;
                println!(
                    "| {transport:?} | {workers} | {rps:.0} | {:.0} µs |",
                    p50.as_secs_f64() * 1e6
                );
            }
        }
    });
}
