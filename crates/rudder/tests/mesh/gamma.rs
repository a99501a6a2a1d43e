//! Traffic policy from the cluster: Gateway API HTTPRoutes attached to a Service (GAMMA),
//! followed by every Mesh from the API, with the Role of `deploy/rbac.yaml`.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use rudder::{MeshError, MeshLayer};
use serde_json::{Value, json};
use tower::Layer;

use super::support::*;

/// `biz1` (all Pods: `app=biz1,zone=prod`), and one Service per version, `biz1-v41` and
/// `biz1-v42`, each over its own Pods: the backends a route splits between.
async fn versions() -> rudder_testkit::TestCluster {
    let cluster = biz1(2, 2).await;
    let services: Api<Service> =
        Api::namespaced(cluster.api().client().await.unwrap(), cluster.namespace());
    for version in ["4.1", "4.2"] {
        let name = format!("biz1-v{}", version.replace('.', ""));
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": "biz1", "zone": "prod", "version": version},
                     "ports": [{"port": 8080}]},
        }))
        .unwrap();
        services.create(&PostParams::default(), &svc).await.unwrap();
    }
    cluster.api().settled().await;
    cluster
}

fn routes(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<rudder::HttpRoute>(&());
    Api::namespaced_with(client, ns, &ar)
}

fn route(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn biz1_parent() -> Value {
    json!([{"group": "", "kind": "Service", "name": "biz1", "port": 8080}])
}

fn split(v41: u32, v42: u32) -> Value {
    json!({
        "parentRefs": biz1_parent(),
        "rules": [{"backendRefs": [
            {"name": "biz1-v41", "port": 8080, "weight": v41},
            {"name": "biz1-v42", "port": 8080, "weight": v42},
        ]}],
    })
}

/// Versions of `n` requests to `biz1` with `header`.
async fn versions_of(
    mesh: &mut rudder::Mesh<H1>,
    n: usize,
    header: Option<(&str, &str)>,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let mut r = req("http://biz1:8080/");
        if let Some((k, v)) = header {
            r.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let reply = get(mesh, r).await.expect("request");
        *counts
            .entry(reply.labels.get("version").cloned().unwrap_or_default())
            .or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_route_splits_exactly_and_every_replica_follows_its_changes() {
    let cluster = versions().await;
    let admin = cluster.api().client().await.unwrap();
    let api = routes(admin, cluster.namespace());
    api.create(&PostParams::default(), &route("biz1-canary", split(90, 10)))
        .await
        .unwrap();
    // Two replicas of a client: two Meshes, each with its own discovery.
    let one = MeshLayer::builder(rbac_client(&cluster).await)
        .build()
        .unwrap();
    let two = MeshLayer::builder(rbac_client(&cluster).await)
        .build()
        .unwrap();
    let (mut a, mut b) = (one.layer(h1()), two.layer(h1()));

    let counts = versions_of(&mut a, 1_000, None).await;
    assert_eq!(counts.get("4.1"), Some(&900), "{counts:?}");
    assert_eq!(counts.get("4.2"), Some(&100), "{counts:?}");

    // Promote: 0/100. Both replicas follow, and no request fails on the way.
    versions_of(&mut b, 10, None).await;
    api.patch(
        "biz1-canary",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": split(0, 100)})),
    )
    .await
    .unwrap();
    for mesh in [&mut a, &mut b] {
        tokio::time::timeout(BOUND, async {
            while versions_of(mesh, 1, None).await.contains_key("4.1") {}
        })
        .await
        .expect("the replica follows the route");
        let counts = versions_of(mesh, 200, None).await;
        assert_eq!(counts.get("4.2"), Some(&200), "{counts:?}");
    }

    // All weights 0: the rule has no backend, a typed error (the Gateway API's 500).
    api.patch(
        "biz1-canary",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": split(0, 0)})),
    )
    .await
    .unwrap();
    let err = tokio::time::timeout(BOUND, async {
        loop {
            if let Err(e) = get(&mut a, req("http://biz1:8080/")).await {
                return e;
            }
        }
    })
    .await
    .expect("the zero-weight rule applies");
    assert!(
        matches!(
            err.downcast_ref::<MeshError>(),
            Some(MeshError::NoRouteBackend { route, .. }) if route.ends_with("/biz1-canary")
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_pick_the_rule_and_what_is_not_for_the_service_is_ignored() {
    let cluster = versions().await;
    let admin = cluster.api().client().await.unwrap();
    let api = routes(admin, cluster.namespace());
    // Only requests with `x-canary: true` go to 4.2; the rest match no rule and go to
    // the Service itself.
    api.create(
        &PostParams::default(),
        &route(
            "biz1-header",
            json!({
                "parentRefs": biz1_parent(),
                "rules": [{
                    "matches": [{"headers": [{"name": "x-canary", "value": "true"}]}],
                    "backendRefs": [{"name": "biz1-v42", "port": 8080}],
                }],
            }),
        ),
    )
    .await
    .unwrap();
    // Not for biz1: a Gateway parent (the default kind), another Service; and a route
    // with a filter, which Rudder cannot honour and skips whole.
    for (name, spec) in [
        (
            "gateway-route",
            json!({"parentRefs": [{"name": "biz1"}],
                   "rules": [{"backendRefs": [{"name": "biz1-v41", "port": 8080}]}]}),
        ),
        (
            "other-service",
            json!({"parentRefs": [{"group": "", "kind": "Service", "name": "hello-svc"}],
                   "rules": [{"backendRefs": [{"name": "biz1-v41", "port": 8080}]}]}),
        ),
        (
            "with-filter",
            json!({"parentRefs": biz1_parent(),
                   "rules": [{"filters": [{"type": "RequestHeaderModifier",
                                "requestHeaderModifier": {"set": [{"name": "x", "value": "y"}]}}],
                              "backendRefs": [{"name": "biz1-v41", "port": 8080}]}]}),
        ),
    ] {
        api.create(&PostParams::default(), &route(name, spec))
            .await
            .unwrap();
    }
    // Round robin, so the Service's own share per version is exact.
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .algorithm(rudder::Algorithm::WeightedRoundRobin)
        .build()
        .unwrap();
    let mut mesh = layer.layer(h1());
    let canary = versions_of(&mut mesh, 100, Some(("x-canary", "true"))).await;
    assert_eq!(canary.get("4.2"), Some(&100), "{canary:?}");
    let plain = versions_of(&mut mesh, 200, None).await;
    assert_eq!(
        (plain.get("4.1"), plain.get("4.2")),
        (Some(&100), Some(&100)),
        "requests matching no rule use the whole Service: {plain:?}"
    );

    // The route picks the Service, the request's subset then picks Pods within it: a route
    // sending `biz1-v42`'s requests to the whole of `biz1`, and a 4.1 subset.
    api.create(
        &PostParams::default(),
        &route(
            "v42-to-all",
            json!({
                "parentRefs": [{"group": "", "kind": "Service", "name": "biz1-v42"}],
                "rules": [{"backendRefs": [{"name": "biz1", "port": 8080}]}],
            }),
        ),
    )
    .await
    .unwrap();
    tokio::time::timeout(BOUND, async {
        loop {
            let mut r = req("http://biz1-v42:8080/");
            r.extensions_mut()
                .insert("version=4.1".parse::<rudder::Subset>().unwrap());
            // Until the route arrives, biz1-v42 alone has no 4.1 Pod: NoEndpoints.
            if get(&mut mesh, r)
                .await
                .is_ok_and(|reply| reply.labels.get("version").map(String::as_str) == Some("4.1"))
            {
                return;
            }
        }
    })
    .await
    .expect("the route, then the subset");
    for _ in 0..50 {
        let mut r = req("http://biz1-v42:8080/");
        r.extensions_mut()
            .insert("version=4.1".parse::<rudder::Subset>().unwrap());
        let reply = get(&mut mesh, r).await.expect("request");
        assert_eq!(reply.labels.get("version").map(String::as_str), Some("4.1"));
    }

    // The route deleted: plain Service routing for every request.
    api.delete("biz1-header", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::timeout(BOUND, async {
        loop {
            let c = versions_of(&mut mesh, 20, Some(("x-canary", "true"))).await;
            if c.contains_key("4.1") {
                return;
            }
        }
    })
    .await
    .expect("the deletion reaches the Mesh");
}

/// Outcomes of `n` requests to `biz1`: per version answered, and how many failed.
async fn outcomes(mesh: &mut rudder::Mesh<H1>, n: usize) -> (HashMap<String, usize>, usize) {
    let mut counts = HashMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match get(mesh, req("http://biz1:8080/")).await {
            Ok(reply) => {
                *counts
                    .entry(reply.labels.get("version").cloned().unwrap_or_default())
                    .or_default() += 1;
            }
            Err(_) => failed += 1,
        }
    }
    (counts, failed)
}

/// The canary guard: a healthy canary keeps its 10 %; one answering 500s loses its traffic
/// after the configured number of requests, the stable backend takes it with no further
/// failure, and with probes it gets its weight back once it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_guard_stops_a_failing_canary_and_restores_it() {
    let cluster = versions().await;
    let admin = cluster.api().client().await.unwrap();
    routes(admin, cluster.namespace())
        .create(&PostParams::default(), &route("biz1-canary", split(90, 10)))
        .await
        .unwrap();
    let window = std::time::Duration::from_secs(600);
    #[cfg(feature = "metrics")]
    let mut registry = prometheus_client::registry::Registry::default();
    let strict = MeshLayer::builder(rbac_client(&cluster).await)
        .canary_guard(rudder::CanaryGuard::new(0.1, 10, window, 0.0));
    #[cfg(feature = "metrics")]
    let strict = strict.metrics(&mut registry);
    let strict = strict.build().unwrap();
    let mut mesh = strict.layer(h1());
    let (healthy, failed) = outcomes(&mut mesh, 500).await;
    assert_eq!(failed, 0);
    assert_eq!(
        healthy.get("4.2"),
        Some(&50),
        "a healthy canary keeps 10 %: {healthy:?}"
    );
    assert!(strict.canaries().iter().all(|c| !c.guarded));

    for pod in ["biz1-42-0", "biz1-42-1"] {
        cluster.pod(pod).unwrap().set_error_rate(1.0);
    }
    let (counts, failed) = outcomes(&mut mesh, 1_000).await;
    assert!(
        failed <= 10,
        "at most the 10 judged requests fail: {failed}"
    );
    assert_eq!(
        counts.get("4.1").copied().unwrap_or(0) + failed,
        1_000,
        "{counts:?}"
    );
    let views = strict.canaries();
    assert_eq!(views.len(), 1, "{views:?}");
    assert!(
        views[0].guarded && views[0].backend.starts_with("biz1-v42"),
        "{views:?}"
    );
    #[cfg(feature = "metrics")]
    {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("rudder_canary_guarded{"))
            .unwrap_or_else(|| panic!("no canary gauge in:\n{text}"));
        assert!(line.contains("biz1-v42") && line.ends_with(" 1"), "{line}");
    }

    // With probes (every other canary turn), recovery shows and the weight comes back.
    let probing = MeshLayer::builder(rbac_client(&cluster).await)
        .canary_guard(rudder::CanaryGuard::new(0.1, 10, window, 0.5))
        .build()
        .unwrap();
    let mut mesh = probing.layer(h1());
    outcomes(&mut mesh, 400).await;
    assert!(
        probing.canaries().iter().all(|c| c.guarded),
        "{:?}",
        probing.canaries()
    );
    for pod in ["biz1-42-0", "biz1-42-1"] {
        cluster.pod(pod).unwrap().set_error_rate(0.0);
    }
    tokio::time::timeout(BOUND, async {
        while probing.canaries().iter().any(|c| c.guarded) {
            outcomes(&mut mesh, 20).await;
        }
    })
    .await
    .expect("the recovered canary gets its weight back");
    let (counts, failed) = outcomes(&mut mesh, 1_000).await;
    assert_eq!(failed, 0);
    assert_eq!(counts.get("4.2"), Some(&100), "{counts:?}");

    // Invalid settings are a typed error.
    let err = MeshLayer::builder(rbac_client(&cluster).await)
        .canary_guard(rudder::CanaryGuard::new(1.5, 10, window, 0.0))
        .build()
        .unwrap_err();
    assert!(matches!(err, rudder::ConfigError::CanaryGuard(_)), "{err}");
}

/// A rule's `timeouts.request` bounds the requests it routes, in place of the Mesh's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_request_timeout_bounds_its_requests() {
    let cluster = versions().await;
    for pod in ["biz1-42-0", "biz1-42-1"] {
        cluster
            .pod(pod)
            .unwrap()
            .set_latency(std::time::Duration::from_secs(2));
    }
    let admin = cluster.api().client().await.unwrap();
    routes(admin, cluster.namespace())
        .create(
            &PostParams::default(),
            &route(
                "biz1-slow",
                json!({
                    "parentRefs": biz1_parent(),
                    "rules": [{
                        "backendRefs": [{"name": "biz1-v42", "port": 8080}],
                        "timeouts": {"request": "200ms"},
                    }],
                }),
            ),
        )
        .await
        .unwrap();
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .build()
        .unwrap();
    let mut mesh = layer.layer(h1());
    let err = get(&mut mesh, req("http://biz1:8080/"))
        .await
        .expect_err("the route's timeout");
    assert!(
        matches!(
            err.downcast_ref::<MeshError>(),
            Some(MeshError::Timeout { timeout, .. }) if *timeout == std::time::Duration::from_millis(200)
        ),
        "{err}"
    );
}
