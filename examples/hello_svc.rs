//! The Kubernetes Services chapter's `hello-svc`, without a cluster.
//!
//! Starts the embedded API server with 10 `app=hello-world` Pods (real HTTP servers on
//! loopback IPs) behind `hello-svc`, reads the Service's EndpointSlices through
//! `kube::Client` as discovery does, calls every ready Pod straight at its IP (no DNS, no
//! ClusterIP), then takes one Pod out of the selector and shows the endpoints follow.
//!
//! ```text
//! cargo run --example hello_svc
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use rudder_testkit::{PodReply, TestCluster};

async fn ready_endpoints(
    slices: &Api<EndpointSlice>,
) -> anyhow::Result<Vec<(String, String, i32)>> {
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=hello-svc"))
        .await?;
    let mut out = Vec::new();
    for slice in list.items {
        let port = slice
            .ports
            .iter()
            .flatten()
            .find_map(|p| p.port)
            .unwrap_or(8080);
        for ep in slice.endpoints {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                let pod = ep.target_ref.and_then(|t| t.name).unwrap_or_default();
                out.push((pod, ep.addresses[0].clone(), port));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = TestCluster::builder()
        .service("hello-svc")
        .pod_prefix("hello-world")
        .label("app", "hello-world")
        .replicas(10)
        .start()
        .await?;
    println!(
        "API server: {} (kubeconfig {})",
        cluster.api().url(),
        cluster.api().kubeconfig_path().display()
    );

    let slices: Api<EndpointSlice> = Api::default_namespaced(cluster.api().client().await?);
    let http: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let endpoints = ready_endpoints(&slices).await?;
    println!("hello-svc has {} ready endpoints:", endpoints.len());
    for (pod, ip, port) in &endpoints {
        // The Pod still sees the Service's authority, as it would through the ClusterIP.
        let req = http::Request::get(format!("http://{ip}:{port}/"))
            .header(http::header::HOST, "hello-svc.default:8080")
            .body(Empty::new())?;
        let body = http
            .request(req)
            .await?
            .into_body()
            .collect()
            .await?
            .to_bytes();
        let reply: PodReply = serde_json::from_slice(&body)?;
        println!(
            "  {pod:<14} {ip}:{port} -> answered by {} (Host {})",
            reply.pod,
            reply.authority.unwrap_or_default()
        );
    }

    // Relabel one Pod out of the selector: the controller removes it from the slices.
    cluster
        .label_pod(
            "hello-world-5",
            BTreeMap::from([("app".to_string(), Some("retired".to_string()))]),
        )
        .await?;
    cluster.api().settled().await;
    let after = ready_endpoints(&slices).await?;
    println!(
        "after relabelling hello-world-5: {} ready endpoints",
        after.len()
    );
    Ok(())
}
