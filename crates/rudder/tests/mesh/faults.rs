//! Failures under steady load, through the Mesh: the API server restarting, failing and
//! dropping watches, Pods rolled, and every Pod gone.

use std::time::{Duration, Instant};

use http::StatusCode;
use rudder::MeshError;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restarted_50_times_under_load_fails_no_request() {
    let mut cluster = hello(3).await;
    let (layer, mesh) = mesh(&cluster).await;
    let load = Load::start(&mesh, "http://hello-svc:8080/", 2);
    load.progress(100).await;
    for _ in 0..50 {
        cluster.api().stop().await;
        // Requests keep flowing on the last known endpoints while the API is away.
        load.progress(20).await;
        cluster.api().restart().await.unwrap();
        load.progress(20).await;
    }
    // After the last return, discovery catches up with changes made since.
    let started = Instant::now();
    cluster
        .add_pod("hello-world-4", labels(&[("app", "hello-world")]))
        .await
        .unwrap();
    tokio::time::timeout(BOUND, async {
        while layer
            .view("hello-svc:8080")
            .is_none_or(|v| v.endpoints.len() < 4)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("resynced after the API came back");
    let resync = started.elapsed();
    load.progress(200).await;
    let (ok, failed) = load.stop().await;
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(3)]
    );
    assert!(resync < BOUND, "resync took {resync:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_drops_and_410s_cause_no_removals_and_api_errors_no_busy_loop() {
    let cluster = hello(3).await;
    let (layer, mesh) = mesh(&cluster).await;
    let load = Load::start(&mesh, "http://hello-svc:8080/", 2);
    load.progress(50).await;
    let faults = cluster.api().faults();
    for _ in 0..5 {
        faults.expire_next_watch();
        faults.drop_watches();
        load.progress(50).await;
        let view = layer.view("hello-svc:8080").unwrap();
        assert_eq!(view.endpoints.len(), 3, "no spurious removal");
    }
    // The API answers 500 (then 429) to everything: each of the four watches (the
    // Service's three and its namespace's HTTPRoutes) retries with backoff (50 ms doubling
    // to 0.5-1 s): at least once a second, so discovery sees the server within a second
    // of its return, and at most a burst plus two a second.
    for status in [
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        faults.fail_next(100_000, status);
        faults.drop_watches();
        let before = cluster.api().request_count();
        let window = Instant::now();
        // A measuring window, not a synchronisation: requests keep flowing meanwhile.
        tokio::time::sleep(Duration::from_secs(4)).await;
        load.progress(200).await;
        let secs = window.elapsed().as_secs_f64();
        let requests = (cluster.api().request_count() - before) as f64;
        let (at_least, at_most) = (4.0 * (secs - 1.5).floor(), 4.0 * (6.0 + 2.0 * secs));
        assert!(
            (at_least..=at_most).contains(&requests),
            "{requests} API requests in {secs:.1} s under {status}: expected {at_least}..={at_most}"
        );
    }
    faults.clear();
    let (ok, failed) = load.stop().await;
    assert!(failed.is_empty(), "{} of {ok} failed", failed.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_of_every_pod_fails_no_request() {
    let mut cluster = hello(3).await;
    let (_layer, mesh) = mesh(&cluster).await;
    let load = Load::start(&mesh, "http://hello-svc:8080/", 4);
    load.progress(100).await;
    for i in 1..=3 {
        let new = format!("hello-world-v2-{i}");
        cluster
            .add_pod(&new, labels(&[("app", "hello-world")]))
            .await
            .unwrap();
        cluster.api().settled().await;
        let old = format!("hello-world-{i}");
        // Graceful: the old Pod terminates (not ready, still serving) and is then killed.
        cluster.delete_pod(&old, 30).await.unwrap();
        cluster.api().settled().await;
        load.progress(100).await;
        cluster.pod(&old).unwrap().kill().await;
        load.progress(100).await;
    }
    let (ok, failed) = load.stop().await;
    assert!(
        failed.is_empty(),
        "{} of {ok} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pod_gone_is_a_fast_typed_error_and_traffic_returns_with_them() {
    let mut cluster = hello(2).await;
    let (_layer, mut mesh) = mesh(&cluster).await;
    spread(&mut mesh, 20, || req("http://hello-svc:8080/")).await;
    for p in ["hello-world-1", "hello-world-2"] {
        cluster.delete_pod(p, 0).await.unwrap();
        cluster.pod(p).unwrap().kill().await;
    }
    cluster.api().settled().await;
    // Once discovery has the empty set, each request fails at once with a typed error.
    let deadline = Instant::now() + BOUND;
    let err = loop {
        match get(&mut mesh, req("http://hello-svc:8080/")).await {
            Err(e)
                if matches!(
                    e.downcast_ref::<MeshError>(),
                    Some(MeshError::NoEndpoints { .. })
                ) =>
            {
                break e;
            }
            _ => assert!(Instant::now() < deadline, "no NoEndpoints error"),
        }
    };
    assert!(err.to_string().contains("hello-svc.default:8080"), "{err}");
    let started = Instant::now();
    for _ in 0..100 {
        get(&mut mesh, req("http://hello-svc:8080/"))
            .await
            .unwrap_err();
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "100 failures took {:?}",
        started.elapsed()
    );
    cluster
        .add_pod("hello-world-3", labels(&[("app", "hello-world")]))
        .await
        .unwrap();
    cluster.api().settled().await;
    let deadline = Instant::now() + BOUND;
    while get(&mut mesh, req("http://hello-svc:8080/")).await.is_err() {
        assert!(Instant::now() < deadline, "traffic never returned");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_objects_from_the_api_are_skipped_and_good_endpoints_kept() {
    use serde_json::json;

    let cluster = hello(2).await;
    let (layer, mut mesh) = mesh(&cluster).await;
    spread(&mut mesh, 20, || req("http://hello-svc:8080/")).await;
    let faults = cluster.api().faults();
    let slice = |name: &str, body: serde_json::Value| {
        let mut obj = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                "labels": {"kubernetes.io/service-name": "hello-svc"}},
        });
        for (k, v) in body.as_object().unwrap() {
            obj[k] = v.clone();
        }
        obj
    };
    // Bad addresses, an unknown address type, a missing address list, an endpoint with no
    // conditions at all, and a 1,000-endpoint slice of addresses nobody listens on that
    // are marked not ready.
    faults
        .put_unchecked(
            "endpointslices",
            "default",
            slice(
                "bad-ips",
                json!({
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": ["not-an-ip"]}, {"addresses": ["127.0.0.999"]},
                                  {"addresses": ["::1"]}, {"conditions": {"ready": true}}],
                    "ports": [{"port": 8080, "protocol": "TCP"}],
                }),
            ),
        )
        .unwrap();
    faults
        .put_unchecked(
            "endpointslices",
            "default",
            slice(
                "fqdn",
                json!({
                    "addressType": "FQDN",
                    "endpoints": [{"addresses": ["example.com"]}],
                    "ports": [{"port": 8080}],
                }),
            ),
        )
        .unwrap();
    let many: Vec<_> = (0..1000)
        .map(|i| json!({"addresses": [format!("10.250.{}.{}", i / 250, i % 250 + 1)], "conditions": {"ready": false}}))
        .collect();
    faults
        .put_unchecked(
            "endpointslices",
            "default",
            slice(
                "huge",
                json!({
                    "addressType": "IPv4", "endpoints": many, "ports": [{"port": 8080}],
                }),
            ),
        )
        .unwrap();
    // A good endpoint after them: once discovery shows it, it has seen the bad ones too.
    let extra = rudder_testkit::PodServer::start_on_loopback("extra", 8080, labels(&[]))
        .await
        .unwrap();
    faults
        .put_unchecked("endpointslices", "default", slice("good", json!({
            "addressType": "IPv4",
            "endpoints": [{"addresses": [extra.addr().ip().to_string()], "conditions": {"ready": true}}],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        })))
        .unwrap();
    let routable = |layer: &rudder::MeshLayer| {
        layer
            .view("hello-svc:8080")
            .map(|v| {
                v.endpoints
                    .iter()
                    .filter(|e| e.readiness == rudder::Readiness::Ready)
                    .count()
            })
            .unwrap_or(0)
    };
    tokio::time::timeout(BOUND, async {
        while routable(&layer) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the good endpoint arrives");
    let counts = spread(&mut mesh, 300, || req("http://hello-svc:8080/")).await;
    assert!(counts.contains_key("extra"), "{counts:?}");
    assert!(
        counts
            .keys()
            .all(|p| ["hello-world-1", "hello-world-2", "extra"].contains(&p.as_str())),
        "{counts:?}"
    );

    // An object of the wrong shape makes typed lists fail: discovery keeps the last good
    // endpoints (requests keep succeeding) until the object is gone, then catches up.
    faults
        .put_unchecked(
            "endpointslices",
            "default",
            slice(
                "wrong-type",
                json!({
                    "addressType": "IPv4", "endpoints": "oops", "ports": 8080,
                }),
            ),
        )
        .unwrap();
    faults.drop_watches();
    spread(&mut mesh, 300, || req("http://hello-svc:8080/")).await;
    assert_eq!(
        routable(&layer),
        3,
        "last good endpoints kept: {:?}",
        layer.view("hello-svc:8080").map(|v| v
            .endpoints
            .iter()
            .map(|e| e.addr)
            .collect::<Vec<_>>())
    );
    faults.delete_unchecked("endpointslices", "default", "wrong-type");
    faults.delete_unchecked("endpointslices", "default", "good");
    tokio::time::timeout(BOUND, async {
        while routable(&layer) != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("discovery recovers once the bad object is gone");
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_on_a_crashed_pod_stop_at_ejection() {
    use rudder::MeshLayer;
    use tower::Layer;

    let cluster = hello(3).await;
    let mut registry = prometheus_client::registry::Registry::default();
    let layer = MeshLayer::builder(cluster.api().client().await.unwrap())
        .metrics(&mut registry)
        .build()
        .unwrap();
    let mesh = layer.layer(h1());
    let load = Load::start(&mesh, "http://hello-svc:8080/", 2);
    load.progress(200).await;
    // The Pod's process dies but the Pod stays listed: only the client can notice.
    let dead = cluster.pod("hello-world-2").unwrap();
    dead.kill().await;
    load.progress(3_000).await;
    let (ok, failed) = load.stop().await;
    assert!(
        failed.is_empty(),
        "{} of {ok} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let series = format!(
        "rudder_requests_total{{service=\"hello-svc.default:8080\",subset=\"\",endpoint=\"{}\",outcome=\"error\"}}",
        dead.addr()
    );
    let attempts: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0.0);
    eprintln!("attempts that reached the crashed Pod: {attempts}");
    // Five failures in a row eject. A response the Pod sent just before it died can still
    // be read after another worker's first failures and end their streak (at most 4, or
    // they would have ejected), and at ejection the other worker may have one more attempt
    // in flight: 4 + 5 + 1 at most, against about a third of 3,000 without ejection.
    assert!(
        (1.0..=10.0).contains(&attempts),
        "{attempts} attempts hit the crashed Pod before ejection"
    );
    assert!(
        layer
            .view("hello-svc:8080")
            .unwrap()
            .endpoints
            .iter()
            .any(|e| e.ejected)
    );
}
