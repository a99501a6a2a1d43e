//! A tonic gRPC client balanced per call across Pods over HTTP/2.
//!
//! kube-proxy balances per connection, so one HTTP/2 channel to a ClusterIP sends every
//! call to one Pod. Here the tonic client's transport is a Mesh over `rudder::PodClient`:
//! one HTTP/2 connection per Pod, each call picked on its own, `:authority` kept as the
//! Service's. The Pods are the test kit's Pod servers, which answer the unary method
//! `rudder.testkit.Pod/Whoami`.
//!
//! ```text
//! cargo run --example grpc [-- --requests N]
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;

use rudder::{MeshLayer, PodClient, Protocol};
use rudder_testkit::TestCluster;
use tower::Layer;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::Args::parse(
        "grpc",
        "A tonic client balanced per call across Pods over HTTP/2 (embedded cluster)",
        common::Flags {
            real_cluster: false,
            once: false,
        },
    );
    let cluster = TestCluster::builder()
        .service("greeter")
        .label("app", "greeter")
        .replicas(5)
        .start()
        .await?;
    let layer = MeshLayer::builder(cluster.api().client().await?).build()?;
    let transport = layer.layer(
        PodClient::builder()
            .protocol(Protocol::Http2)
            .build::<rudder::ReplayBody<tonic::body::Body>>(),
    );
    let grpc = tonic::client::Grpc::with_origin(transport, "http://greeter:8080".parse()?);

    let calls = args.requests.unwrap_or(5_000);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let mut grpc = grpc.clone();
        workers.spawn(async move {
            let mut pods: BTreeMap<String, usize> = BTreeMap::new();
            for _ in (w..calls).step_by(8) {
                let reply = rudder_testkit::grpc::whoami(&mut grpc).await?;
                anyhow::ensure!(
                    reply.authority == "greeter:8080",
                    "Pod saw :authority {}",
                    reply.authority
                );
                *pods.entry(reply.pod).or_default() += 1;
            }
            anyhow::Ok(pods)
        });
    }
    let mut pods: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(done) = workers.join_next().await {
        for (pod, n) in done?? {
            *pods.entry(pod).or_default() += n;
        }
    }
    println!("{calls} unary calls to greeter:8080 over HTTP/2, balanced per call:");
    for (pod, n) in &pods {
        println!(
            "  {pod:<12} {n:>6}  {:>5.1}%",
            100.0 * *n as f64 / calls as f64
        );
    }
    anyhow::ensure!(pods.len() == 5, "every Pod should answer");
    Ok(())
}
