//! Blue/green and a canary of `biz1` driven by a Gateway API `HTTPRoute` (GAMMA), as
//! `kubectl apply` would write it, on the embedded cluster; then the canary starts failing
//! and the client's canary guard takes its traffic away.
//!
//! ```text
//! cargo run --example httproute
//! cargo run --example httproute -- --once   # fewer requests, a summary, exit 0 on success
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use rudder::{CanaryGuard, MeshLayer};
use serde_json::json;
use tower::Layer;

fn route_spec(v41: u32, v42: u32) -> serde_json::Value {
    json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "biz1", "port": 8080}],
        "rules": [{"backendRefs": [
            {"name": "biz1-v41", "port": 8080, "weight": v41},
            {"name": "biz1-v42", "port": 8080, "weight": v42},
        ]}],
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::Args::parse(
        "httproute",
        "Blue/green and a guarded canary of biz1 by HTTPRoute, on the embedded cluster",
        common::Flags {
            real_cluster: false,
            once: true,
        },
    );
    let requests = args
        .requests
        .unwrap_or(if args.once { 1_000 } else { 10_000 });
    let cluster = common::biz1(&[
        ("biz1-a", "4.1"),
        ("biz1-b", "4.1"),
        ("biz1-c", "4.2"),
        ("biz1-d", "4.2"),
    ])
    .await?;
    println!(
        "embedded API server {} (kubeconfig {})",
        cluster.api().url(),
        cluster.api().kubeconfig_path().display()
    );
    let client = cluster.api().client().await?;
    // One Service per version: the backends a route splits between.
    let services: Api<Service> = Api::default_namespaced(client.clone());
    for version in ["4.1", "4.2"] {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("biz1-v{}", version.replace('.', ""))},
            "spec": {"selector": {"app": "biz1", "zone": "prod", "version": version},
                     "ports": [{"port": 8080}]},
        }))?;
        services.create(&PostParams::default(), &svc).await?;
    }
    let ar = ApiResource::erase::<rudder::HttpRoute>(&());
    let routes: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &ar);
    let route: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "biz1"}, "spec": route_spec(100, 0),
    }))?;
    routes.create(&PostParams::default(), &route).await?;
    cluster.api().settled().await;

    let guard = CanaryGuard::new(0.1, 20, Duration::from_secs(60), 0.05);
    let layer = MeshLayer::builder(client).canary_guard(guard).build()?;
    let mesh = layer.layer(common::h1());
    let versions: BTreeMap<String, String> = cluster
        .pods()
        .iter()
        .map(|p| {
            let v = if p.name().ends_with('a') || p.name().ends_with('b') {
                "4.1"
            } else {
                "4.2"
            };
            (p.addr().to_string(), v.to_string())
        })
        .collect();
    let mut unexpected = 0;
    for (step, weights, failing) in [
        ("blue (4.1) only", (100, 0), false),
        ("canary 90/10", (90, 10), false),
        ("green (4.2) only", (0, 100), false),
        ("canary 90/10 again", (90, 10), false),
        ("canary failing", (90, 10), true),
    ] {
        routes
            .patch(
                "biz1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": route_spec(weights.0, weights.1)})),
            )
            .await?;
        for pod in ["biz1-c", "biz1-d"] {
            if let Some(p) = cluster.pod(pod) {
                p.set_error_rate(if failing { 1.0 } else { 0.0 });
            }
        }
        // The route change reaches the Mesh through its watch: wait until a request
        // follows it before counting.
        let want = if weights.0 == 0 { "4.2" } else { "4.1" };
        for _ in 0..200 {
            let probe = common::load(&mesh, "http://biz1:8080/", 1, 1).await;
            if probe
                .per_endpoint
                .keys()
                .any(|e| versions.get(e).map(String::as_str) == Some(want))
            {
                break;
            }
        }
        let tally = common::load(&mesh, "http://biz1:8080/", requests, 4).await;
        let mut shares: BTreeMap<&str, usize> = BTreeMap::new();
        for (endpoint, n) in &tally.per_endpoint {
            *shares
                .entry(versions.get(endpoint).map_or("?", String::as_str))
                .or_default() += n;
        }
        let shares: Vec<String> = shares
            .iter()
            .map(|(v, n)| format!("{v}: {:.1}%", 100.0 * *n as f64 / requests as f64))
            .collect();
        let guarded: Vec<String> = layer
            .canaries()
            .into_iter()
            .filter(|c| c.guarded)
            .map(|c| c.backend)
            .collect();
        println!(
            "{step:<20} {} requests, {} failed: {}{}",
            requests,
            tally.failures,
            shares.join(", "),
            if guarded.is_empty() {
                String::new()
            } else {
                format!(" (guarded: {})", guarded.join(", "))
            }
        );
        // Only the failing canary's judged requests may fail, and only in its step.
        if !failing {
            unexpected += tally.failures;
        } else {
            anyhow::ensure!(
                !guarded.is_empty(),
                "the canary guard did not catch the failing canary"
            );
            anyhow::ensure!(
                tally.failures <= guard.min_requests as usize + 4,
                "{} requests failed, more than the guard's judged ones",
                tally.failures
            );
        }
    }
    anyhow::ensure!(unexpected == 0, "{unexpected} requests failed");
    Ok(())
}
