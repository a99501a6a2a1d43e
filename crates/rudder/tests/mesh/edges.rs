//! The edges a new adopter meets first (issue 12): names that are not Services, RBAC
//! that says no, an API that is down or slow, watches that must be let go, and selector
//! changes.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use rudder::{MeshError, MeshLayer};
use serde_json::json;
use tower::Layer;

use super::support::*;

/// Polls `cond` every 10 ms until it holds (bounded).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(BOUND, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_namespace_falls_through_at_once_and_is_not_asked_again() {
    let cluster = hello(1).await;
    // The Role of deploy/rbac.yaml, bound in `default` only, as users deploy it.
    let client = rbac_client(&cluster).await;
    // A sync timeout far beyond every bound here: a request that waited for it would fail
    // the test.
    let layer = MeshLayer::builder(client)
        .sync_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let mut mesh = layer.layer(recorder());
    // `example.com` reads as Service `example` in namespace `com`, which the Role does not
    // cover: the request goes out unchanged, as it would without Rudder.
    for _ in 0..3 {
        let uri = tokio::time::timeout(BOUND, recorded(&mut mesh, "http://example.com/"))
            .await
            .expect("no wait for a sync that cannot happen")
            .unwrap();
        assert_eq!(uri, "http://example.com/");
    }
    // A full name in that namespace is a typed error naming the refusal.
    let err = recorded(&mut mesh, "http://example.com.svc:8080/")
        .await
        .unwrap_err();
    match err.downcast_ref::<MeshError>() {
        Some(MeshError::Forbidden { service, message }) => {
            assert!(service.starts_with("example.com"), "{service}");
            assert!(message.contains("forbidden"), "{message}");
        }
        _ => panic!("expected Forbidden, got {err}"),
    }
    // A refusal is an answer: a readiness probe stays green.
    assert!(layer.is_synced());
    // The refusal is cached: its watches go, and 200 more requests ask the API nothing.
    eventually("forbidden watches released", || {
        layer.watched_services() == 0
    })
    .await;
    let before = cluster.api().request_count();
    for _ in 0..200 {
        assert_eq!(
            recorded(&mut mesh, "http://example.com/").await.unwrap(),
            "http://example.com/"
        );
    }
    assert_eq!(cluster.api().request_count(), before, "no API request");
    // Services the Role covers route as before, through the same Mesh.
    let mut routed = layer.layer(h1());
    get(&mut routed, req("http://hello-svc:8080/"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_allow_list_keeps_other_names_away_from_the_api() {
    let cluster = hello(1).await;
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .namespaces(["default"])
        .build()
        .unwrap();
    let mut mesh = layer.layer(recorder());
    let before = cluster.api().request_count();
    for uri in [
        "http://example.com/",
        "http://api.github/",
        "http://x.kube-system.svc/",
    ] {
        assert_eq!(recorded(&mut mesh, uri).await.unwrap(), uri);
    }
    assert_eq!(cluster.api().request_count(), before, "no API request");
    assert_eq!(layer.watched_services(), 0);
    // Names in `default` are routed (the recorder sees the Pod's address).
    let uri = recorded(&mut mesh, "http://hello-svc:8080/").await.unwrap();
    assert!(uri.starts_with("http://127."), "{uri}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_fails_fast_or_falls_back_at_once() {
    let cluster = hello(1).await;
    let client = rbac_client(&cluster).await;
    cluster.api().stop().await;
    for dns_fallback in [false, true] {
        let layer = MeshLayer::builder(client.clone())
            .sync_timeout(Duration::from_secs(600))
            .dns_fallback(dns_fallback)
            .build()
            .unwrap();
        let mut mesh = layer.layer(recorder());
        for _ in 0..5 {
            let result = tokio::time::timeout(BOUND, recorded(&mut mesh, "http://hello-svc:8080/"))
                .await
                .expect("no wait for the sync timeout");
            if dns_fallback {
                assert_eq!(
                    result.unwrap(),
                    "http://hello-svc:8080/",
                    "through cluster DNS"
                );
            } else {
                assert!(!layer.is_synced(), "a probe reports the failed sync");
                let err = result.unwrap_err();
                assert!(
                    matches!(
                        err.downcast_ref::<MeshError>(),
                        Some(MeshError::NotSynced {
                            last_error: Some(_),
                            ..
                        })
                    ),
                    "{err}"
                );
            }
        }
    }
    // The API returns: the same Mesh routes again.
    let layer = MeshLayer::builder(client).build().unwrap();
    let mut mesh = layer.layer(recorder());
    let _ = recorded(&mut mesh, "http://hello-svc:8080/").await;
    cluster.api().restart().await.unwrap();
    eventually("synced after the API came back", || {
        layer
            .view("hello-svc:8080")
            .is_some_and(|v| v.endpoints.len() == 1)
    })
    .await;
    let uri = recorded(&mut mesh, "http://hello-svc:8080/").await.unwrap();
    assert!(uri.starts_with("http://127."), "{uri}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_covers_the_wait_for_the_first_sync() {
    let cluster = hello(1).await;
    // Every API answer takes a minute.
    cluster.api().faults().set_latency(Duration::from_secs(60));
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .timeout(Duration::from_millis(300))
        .sync_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let mut mesh = layer.layer(recorder());
    let err = tokio::time::timeout(BOUND, recorded(&mut mesh, "http://hello-svc:8080/"))
        .await
        .expect("bounded by the request timeout")
        .unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<MeshError>(),
            Some(MeshError::Timeout { .. })
        ),
        "{err}"
    );
    cluster.api().faults().clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_deleted_and_portless_services_release_their_watches() {
    let cluster = hello(2).await;
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut mesh = layer.layer(h1());
    let baseline = cluster.api().open_watches();
    get(&mut mesh, req("http://hello-svc:8080/")).await.unwrap();
    assert_eq!(layer.watched_services(), 1);
    // Unused, the Service's three watches go.
    eventually("idle watches released", || layer.watched_services() == 0).await;
    eventually("the API's watches closed", || {
        cluster.api().open_watches() <= baseline
    })
    .await;
    // A port the Service does not have: a typed error, and its watches go at once.
    let err = get(&mut mesh, req("http://hello-svc:9999/"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<MeshError>(),
            Some(MeshError::NoEndpoints { .. })
        ),
        "{err}"
    );
    // It says which ports there are, and names no subset when none was asked for.
    assert!(
        err.to_string()
            .ends_with("no endpoints for hello-svc.default:9999: the Service has no such port (its ports: 8080)"),
        "{err}"
    );
    eventually("watches of a missing port released", || {
        layer.watched_services() == 0
    })
    .await;
    // The answer is kept: 100 more requests ask the API nothing.
    let before = cluster.api().request_count();
    for _ in 0..100 {
        get(&mut mesh, req("http://hello-svc:9999/"))
            .await
            .unwrap_err();
    }
    assert_eq!(cluster.api().request_count(), before, "no API request");
    // Asked for a port it has, it subscribes again.
    get(&mut mesh, req("http://hello-svc:8080/")).await.unwrap();
    assert_eq!(layer.watched_services(), 1);

    // A deleted Service: its watches go too.
    let services: Api<Service> = Api::default_namespaced(cluster.api().client().await.unwrap());
    services
        .delete("hello-svc", &Default::default())
        .await
        .unwrap();
    eventually("deleted Service released", || layer.watched_services() == 0).await;
    let err = get(&mut mesh, req("http://hello-svc.default.svc:8080/"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<MeshError>(),
            Some(MeshError::ServiceNotFound { .. })
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_change_keeps_pod_labels_until_the_new_list_is_in() {
    let cluster = biz1(2, 2).await;
    let client = rbac_client(&cluster).await;
    // Every Pod also carries `track=stable`, so the new selector matches the same Pods.
    for pod in cluster.pods() {
        cluster
            .label_pod(
                pod.name(),
                [("track".to_string(), Some("stable".to_string()))].into(),
            )
            .await
            .unwrap();
    }
    let discovery = rudder::Discovery::new(client.clone());
    let mut sub = discovery.subscribe_str("biz1:8080").unwrap();
    sub.synced(BOUND).await.unwrap();
    let layer = MeshLayer::builder(client.clone())
        .trust_subset_header()
        .build()
        .unwrap();
    let mut mesh = layer.layer(h1());
    let subset = || {
        let mut r = req("http://biz1:8080/");
        r.headers_mut()
            .insert("x-rudder-subset", "version=4.2".parse().unwrap());
        r
    };
    get(&mut mesh, subset()).await.unwrap();
    // Record every snapshot discovery publishes from here on.
    let mut rx = sub.receiver();
    rx.borrow_and_update();
    let recording = tokio::spawn(async move {
        let mut seen = Vec::new();
        while rx.changed().await.is_ok() {
            let set = rx.borrow_and_update().clone();
            let done = set
                .endpoints()
                .iter()
                .any(|e| e.labels().get("marker").is_some());
            seen.push(set);
            if done {
                break;
            }
        }
        seen
    });
    let load = {
        let mesh = mesh.clone();
        tokio::spawn(async move {
            let mut mesh = mesh;
            let mut failed = Vec::new();
            for _ in 0..2_000 {
                if let Err(e) = get(&mut mesh, subset()).await {
                    failed.push(e.to_string());
                }
            }
            failed
        })
    };
    // The operator's edit, with an admin token.
    let services: Api<Service> = Api::default_namespaced(cluster.api().client().await.unwrap());
    services
        .patch(
            "biz1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"selector": {"app": "biz1", "zone": null, "track": "stable"}}}),
            ),
        )
        .await
        .unwrap();
    // A label change after the selector change: seeing it proves the new Pod list is in.
    let first = cluster.pods()[0].name().to_string();
    cluster
        .label_pod(
            &first,
            [("marker".to_string(), Some("1".to_string()))].into(),
        )
        .await
        .unwrap();
    let seen = tokio::time::timeout(BOUND, recording)
        .await
        .expect("the marker arrived")
        .unwrap();
    for set in &seen {
        assert!(
            set.endpoints().iter().all(|e| !e.labels().is_empty()),
            "a snapshot lost Pod labels: {set:?}"
        );
    }
    let failed = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} subset requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_pod_that_never_answers_times_out_and_is_ejected() {
    let cluster = hello(2).await;
    // A Pod that accepts connections and never says a word.
    let ip = rudder_testkit::next_loopback_ip();
    let listener = tokio::net::TcpListener::bind((ip, 8080)).await.unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    cluster
        .register_pod(
            "hello-world-hung",
            labels(&[("app", "hello-world")]),
            ip.into(),
        )
        .await
        .unwrap();
    cluster.api().settled().await;
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .response_timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let mut mesh = layer.layer(h1());
    layer.warm(["hello-svc:8080"]).await.unwrap();
    assert!(layer.is_synced());
    let view = layer.view("hello-svc:8080").unwrap();
    assert_eq!(view.endpoints.len(), 3, "{view:?}");
    // Every request ends (bounded), the hung Pod's with a typed timeout, until ejection
    // takes it out of rotation.
    let (mut ok, mut timeouts) = (0, 0);
    for _ in 0..200 {
        match tokio::time::timeout(BOUND, get(&mut mesh, req("http://hello-svc:8080/")))
            .await
            .expect("no request hangs")
        {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(
                    matches!(
                        e.downcast_ref::<MeshError>(),
                        Some(MeshError::Timeout { .. })
                    ),
                    "{e}"
                );
                timeouts += 1;
            }
        }
    }
    let view = layer.view("hello-svc:8080").unwrap();
    let hung = view
        .endpoints
        .iter()
        .find(|e| e.addr.ip() == std::net::IpAddr::from(ip))
        .unwrap();
    assert!(hung.ejections >= 1, "the hung Pod was ejected: {view:?}");
    assert!(timeouts >= 1 && ok >= 150, "{ok} ok, {timeouts} timed out");
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_with_bodies_are_replayed_on_another_pod_when_one_refuses() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower::ServiceExt;

    let cluster = hello(3).await;
    // Dead but still Ready in the API: every connection to it is refused.
    let dead = cluster.pods()[0].addr();
    cluster.pods()[0].kill().await;
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .build()
        .unwrap();
    let http = Client::builder(TokioExecutor::new()).build_http();
    let mesh = layer.layer(http);
    let post = |body: String| {
        http::Request::post("http://hello-svc:8080/orders")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    for i in 0..100 {
        let sent = format!("order {i}: {}", "x".repeat(i * 10));
        let res = mesh
            .clone()
            .oneshot(post(sent.clone()))
            .await
            .unwrap_or_else(|e| panic!("POST {i} failed: {e}"));
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let reply: rudder_testkit::PodReply = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(reply.body, sent, "the Pod got the whole body");
        // A retry is rebuilt from the kept head: the same path, the Service's authority.
        assert_eq!(reply.path, "/orders");
        assert_eq!(reply.authority.as_deref(), Some("hello-svc:8080"));
    }
    // A body above the replay cap streams through unkept: a refusal is final, and the
    // error names the Pod tried.
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .max_replay_body(16)
        .algorithm(rudder::Algorithm::WeightedRoundRobin)
        .build()
        .unwrap();
    let mesh = layer.layer(Client::builder(TokioExecutor::new()).build_http());
    let mut refused = Vec::new();
    for _ in 0..6 {
        if let Err(e) = mesh.clone().oneshot(post("y".repeat(100))).await {
            refused.push(e);
        }
    }
    assert!(!refused.is_empty(), "round robin reached the dead Pod");
    for e in &refused {
        match e.downcast_ref::<MeshError>() {
            Some(MeshError::Failed { tried, .. }) => assert_eq!(tried, &[dead]),
            _ => panic!("{e}"),
        }
        assert!(e.to_string().contains(&dead.to_string()), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_say_why_a_pod_gets_no_traffic_and_serialize() {
    let cluster = hello(3).await;
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .build()
        .unwrap();
    // Known before any request.
    layer.warm(["hello-svc:8080"]).await.unwrap();
    assert!(layer.is_synced());
    cluster.set_ready("hello-world-2", false).await.unwrap();
    eventually("the not-ready Pod listed as unroutable", || {
        layer.view("hello-svc:8080").is_some_and(|v| {
            v.unroutable
                .iter()
                .any(|u| u.pod.as_deref() == Some("hello-world-2") && u.reason == "not ready")
        })
    })
    .await;
    let view = layer.view("hello-svc:8080").unwrap();
    assert_eq!(view.endpoints.len(), 2, "{view:?}");
    let json = serde_json::to_value(layer.views()).unwrap();
    assert_eq!(json[0]["state"]["name"], "active", "{json}");
    assert_eq!(json[0]["unroutable"][0]["pod"], "hello-world-2", "{json}");
    assert_eq!(json[0]["staleness"], 0.0, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_is_zero_while_healthy_and_counts_from_the_first_failure() {
    let cluster = hello(2).await;
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .build()
        .unwrap();
    layer.warm(["hello-svc:8080"]).await.unwrap();
    let view = layer.view("hello-svc:8080").unwrap();
    assert_eq!(view.staleness, Duration::ZERO, "healthy: {view:?}");
    assert!(
        view.watches.iter().all(|w| w.staleness.is_zero()),
        "{view:?}"
    );
    // A quiet spell: the last watch event grows old, which must not count as staleness.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let faults = cluster.api().faults();
    faults.fail_next(100_000, http::StatusCode::INTERNAL_SERVER_ERROR);
    let outage = std::time::Instant::now();
    faults.drop_watches();
    eventually("every watch stale", || {
        layer
            .view("hello-svc:8080")
            .is_some_and(|v| v.watches.iter().all(|w| !w.staleness.is_zero()))
    })
    .await;
    let view = layer.view("hello-svc:8080").unwrap();
    assert!(
        view.staleness <= outage.elapsed(),
        "counted from the outage ({:?} ago), not from the last event: {view:?}",
        outage.elapsed()
    );
    assert_eq!(view.endpoints.len(), 2, "the last known endpoints stay");
    faults.clear();
    eventually("every watch healed", || {
        layer
            .view("hello-svc:8080")
            .is_some_and(|v| v.staleness.is_zero())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_api_outage_changes_arrive_within_the_retry_period() {
    let mut cluster = hello(2).await;
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .build()
        .unwrap();
    layer.warm(["hello-svc:8080"]).await.unwrap();
    cluster.api().stop().await;
    // An outage long enough for kube-rs's default backoff to reach several seconds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.api().restart().await.unwrap();
    let back = std::time::Instant::now();
    cluster
        .add_pod("hello-world-3", labels(&[("app", "hello-world")]))
        .await
        .unwrap();
    eventually("the new Pod seen", || {
        layer
            .view("hello-svc:8080")
            .is_some_and(|v| v.endpoints.len() == 3)
    })
    .await;
    // Measured, not asserted (timing): the retry schedule bounds it (a unit test of the
    // backoff and the request-count test in `faults` check that schedule).
    eprintln!("change seen {:?} after the API came back", back.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_host_names_cannot_grow_the_services_watched() {
    let cluster = hello(1).await;
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .max_services(2)
        .build()
        .unwrap();
    let mut mesh = layer.layer(recorder());
    let routed = recorded(&mut mesh, "http://hello-svc:8080/").await.unwrap();
    assert!(routed.starts_with("http://127."), "{routed}");
    // A made-up short name: no such Service, falls through, and its negative answer is
    // kept (released) for a while.
    assert_eq!(
        recorded(&mut mesh, "http://made-up-1/").await.unwrap(),
        "http://made-up-1/"
    );
    eventually("the negative answer released its watches", || {
        layer
            .views()
            .iter()
            .any(|v| v.service.starts_with("made-up-1") && v.released)
    })
    .await;
    // At the limit, a released answer makes room for the next Service.
    let services: Api<Service> = Api::default_namespaced(cluster.api().client().await.unwrap());
    let other: Service = serde_json::from_value(json!({
        "metadata": {"name": "other-svc"},
        "spec": {"selector": {"app": "hello-world"}, "ports": [{"port": 8080}]},
    }))
    .unwrap();
    services.create(&Default::default(), &other).await.unwrap();
    cluster.api().settled().await;
    let routed = recorded(&mut mesh, "http://other-svc:8080/").await.unwrap();
    assert!(routed.starts_with("http://127."), "{routed}");
    // Two Services in use: a third distinct name is refused, whatever it is.
    let err = recorded(&mut mesh, "http://made-up-3/").await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<MeshError>(),
            Some(MeshError::TooManyServices { limit: 2 })
        ),
        "{err}"
    );
    assert!(layer.views().len() <= 2);
}

/// Layers built over one `Discovery` share its watches: one set per Service however many
/// layers a process builds; a layer with a discovery of its own adds another set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_over_one_discovery_share_its_watches() {
    let cluster = hello(2).await;
    let baseline = cluster.api().open_watches();
    let first = MeshLayer::builder(rbac_client(&cluster).await)
        .build()
        .unwrap();
    let second = MeshLayer::builder_with_discovery(first.discovery().unwrap().clone())
        .build()
        .unwrap();
    let (mut a, mut b) = (first.layer(h1()), second.layer(h1()));
    get(&mut a, req("http://hello-svc:8080/")).await.unwrap();
    get(&mut b, req("http://hello-svc:8080/")).await.unwrap();
    // The Service's three, and its namespace's HTTPRoutes.
    eventually("one set of watches", || {
        cluster.api().open_watches() == baseline + 4
    })
    .await;
    assert_eq!(first.watched_services(), 1);
    assert_eq!(second.watched_services(), 1);

    let own = MeshLayer::builder(rbac_client(&cluster).await)
        .build()
        .unwrap();
    get(&mut own.layer(h1()), req("http://hello-svc:8080/"))
        .await
        .unwrap();
    eventually("a second set for the other discovery", || {
        cluster.api().open_watches() == baseline + 8
    })
    .await;

    // Discovery settings belong to the shared Discovery.
    let err = MeshLayer::builder_with_discovery(first.discovery().unwrap().clone())
        .watch_stall_timeout(Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, rudder::ConfigError::SharedDiscovery(_)),
        "{err}"
    );
}

/// A Pod relabelled in place moves between label subsets at once, with the Role of
/// `deploy/rbac.yaml`: discovery converts again only the slice naming that Pod, and the
/// Mesh's pool carries the rest. A label change on another Pod later moves nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relabelled_pod_moves_between_subsets() {
    let cluster = biz1(2, 1).await;
    // Round robin reaches every member of a subset, whatever latencies do (P2C would send
    // everything to the faster of two), so the replies tell the members.
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .trust_subset_header()
        .algorithm(rudder::Algorithm::WeightedRoundRobin)
        .build()
        .unwrap();
    let mut mesh = layer.layer(h1());
    let subset = |version: &str| {
        let mut r = req("http://biz1:8080/");
        r.headers_mut().insert(
            "x-rudder-subset",
            format!("version={version}").parse().unwrap(),
        );
        r
    };
    let pods_of = |counts: std::collections::HashMap<String, usize>| {
        let mut pods: Vec<String> = counts.into_keys().collect();
        pods.sort();
        pods
    };
    let v42 = spread(&mut mesh, 30, || subset("4.2")).await;
    assert_eq!(pods_of(v42), ["biz1-42-0"]);

    let version_of = |layer: &MeshLayer, pod: &str| {
        layer.view("biz1:8080").and_then(|v| {
            v.endpoints
                .iter()
                .find(|e| e.pod.as_deref() == Some(pod))
                .and_then(|e| e.labels.get("version").cloned())
        })
    };
    cluster
        .label_pod(
            "biz1-41-0",
            [("version".to_string(), Some("4.2".to_string()))].into(),
        )
        .await
        .unwrap();
    eventually("the new label reaches the Mesh", || {
        version_of(&layer, "biz1-41-0").as_deref() == Some("4.2")
    })
    .await;
    let v42 = spread(&mut mesh, 20, || subset("4.2")).await;
    assert_eq!(pods_of(v42), ["biz1-41-0", "biz1-42-0"]);
    let v41 = spread(&mut mesh, 30, || subset("4.1")).await;
    assert_eq!(pods_of(v41), ["biz1-41-1"]);

    // Another label on another Pod: the subsets stay as they are.
    cluster
        .label_pod(
            "biz1-41-1",
            [("team".to_string(), Some("a".to_string()))].into(),
        )
        .await
        .unwrap();
    eventually("the other label reaches the Mesh", || {
        layer.view("biz1:8080").is_some_and(|v| {
            v.endpoints
                .iter()
                .any(|e| e.labels.get("team").map(String::as_str) == Some("a"))
        })
    })
    .await;
    let v42 = spread(&mut mesh, 20, || subset("4.2")).await;
    assert_eq!(pods_of(v42), ["biz1-41-0", "biz1-42-0"]);
    let v41 = spread(&mut mesh, 30, || subset("4.1")).await;
    assert_eq!(pods_of(v41), ["biz1-41-1"]);
}

/// Per-endpoint series follow the endpoints: after every Pod was replaced, twice, a scrape
/// has series for the Pods running now and none for the six that left.
#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_series_leave_with_their_pods() {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;

    let mut cluster = hello(3).await;
    let mut registry = prometheus_client::registry::Registry::default();
    let layer = MeshLayer::builder(rbac_client(&cluster).await)
        .metrics(&mut registry)
        // Round robin reaches every Pod within a few requests, whatever latencies do.
        .algorithm(rudder::Algorithm::WeightedRoundRobin)
        .build()
        .unwrap();
    let mut mesh = layer.layer(h1());
    // The endpoints of `rudder_requests_total` and `rudder_request_duration_seconds`
    // series, and how many series each family has.
    let scrape = |registry: &prometheus_client::registry::Registry| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        let endpoints = |prefix: &str| -> (BTreeSet<String>, usize) {
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
            let set = lines
                .iter()
                .filter_map(|l| {
                    Some(
                        l.split("endpoint=\"")
                            .nth(1)?
                            .split('"')
                            .next()?
                            .to_string(),
                    )
                })
                .collect();
            (set, lines.len())
        };
        (
            endpoints("rudder_requests_total{"),
            endpoints("rudder_request_duration_seconds_count{"),
        )
    };
    let addrs = |cluster: &rudder_testkit::TestCluster, names: &[String]| -> BTreeSet<String> {
        names
            .iter()
            .map(|n| cluster.pod(n).unwrap().addr().to_string())
            .collect()
    };
    let mut running: Vec<String> = (1..=3).map(|i| format!("hello-world-{i}")).collect();
    spread(&mut mesh, 30, || req("http://hello-svc:8080/")).await;
    let ((requests, request_series), (latency, latency_series)) = scrape(&registry);
    assert_eq!(requests, addrs(&cluster, &running));
    assert_eq!(latency, requests);
    // Three outcomes per endpoint, one histogram.
    assert_eq!((request_series, latency_series), (9, 3));
    for generation in 2..=3 {
        let next: Vec<String> = (1..=3)
            .map(|i| format!("hello-world-g{generation}-{i}"))
            .collect();
        for name in &next {
            cluster
                .add_pod(name, labels(&[("app", "hello-world")]))
                .await
                .unwrap();
        }
        for name in &running {
            cluster.delete_pod(name, 0).await.unwrap();
            cluster.pod(name).unwrap().kill().await;
        }
        cluster.api().settled().await;
        let want: BTreeSet<SocketAddr> = next
            .iter()
            .map(|n| cluster.pod(n).unwrap().addr())
            .collect();
        eventually("the Mesh routes to the new Pods only", || {
            layer.view("hello-svc:8080").is_some_and(|v| {
                v.endpoints.iter().map(|e| e.addr).collect::<BTreeSet<_>>() == want
            })
        })
        .await;
        spread(&mut mesh, 30, || req("http://hello-svc:8080/")).await;
        let ((requests, request_series), (latency, latency_series)) = scrape(&registry);
        assert_eq!(requests, addrs(&cluster, &next), "generation {generation}");
        assert_eq!(latency, requests, "generation {generation}");
        assert_eq!((request_series, latency_series), (9, 3));
        running = next;
    }
}
