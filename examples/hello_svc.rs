//! The Kubernetes Services chapter's `hello-svc`, through Rudder.
//!
//! Starts the embedded API server with 10 `app=hello-world` Pods (real HTTP servers on
//! loopback IPs) behind `hello-svc`, wraps hyper-util's client in a `MeshLayer`, sends
//! 10,000 requests to `http://hello-svc:8080/` and prints each Pod's share. Every request
//! goes straight to a Pod's IP (no DNS, no ClusterIP), and each Pod still sees
//! `Host: hello-svc:8080`.
//!
//! ```text
//! cargo run --example hello_svc                          # embedded cluster
//! cargo run --example hello_svc -- --kubeconfig ~/.kube/config   # a real cluster's hello-svc
//! ```

#[path = "common/mod.rs"]
mod common;

use rudder::MeshLayer;
use rudder_testkit::TestCluster;
use tower::Layer;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::Args::parse(
        "hello_svc",
        "The Services chapter's hello-svc through Rudder: per-Pod shares",
        common::Flags {
            real_cluster: true,
            once: false,
        },
    );
    let requests = args.requests.unwrap_or(10_000);
    let (client, embedded) = common::client_or_embedded(&args, || async {
        let cluster = TestCluster::builder()
            .service("hello-svc")
            .pod_prefix("hello-world")
            .label("app", "hello-world")
            .replicas(10)
            .start()
            .await?;
        Ok(cluster)
    })
    .await?;

    let layer = MeshLayer::builder(client).build()?;
    let mesh = layer.layer(common::h1());
    let tally = common::load(&mesh, "http://hello-svc:8080/", requests, 8).await;
    let names = common::pod_names(&layer, "hello-svc:8080");
    println!(
        "\n{requests} requests to http://hello-svc:8080/ (weighted P2C over peak-EWMA latency):\n"
    );
    println!(
        "{:<16} {:<20} {:>8} {:>7}",
        "pod", "endpoint", "requests", "share"
    );
    for (endpoint, n) in &tally.per_endpoint {
        let pod = names.get(endpoint).map_or("?", String::as_str);
        let share = 100.0 * *n as f64 / requests as f64;
        println!("{pod:<16} {endpoint:<20} {n:>8} {share:>6.1}%");
    }
    println!(
        "\nfailed: {}   p50 {:?}   p99 {:?}",
        tally.failures,
        tally.percentile(0.50),
        tally.percentile(0.99)
    );
    if let Some(e) = &tally.first_failure {
        println!("first failure: {e}");
    }
    drop(embedded);
    anyhow::ensure!(tally.failures == 0, "{} requests failed", tally.failures);
    Ok(())
}
