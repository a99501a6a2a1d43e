//! Memory under 10,000 concurrent requests, in a test binary of its own: resident memory
//! is per process, so other tests running beside it would blur the measure.

#[allow(
    dead_code,
    unreachable_pub,
    reason = "shared with the mesh tests; this uses part"
)]
#[path = "mesh/support.rs"]
mod support;

use std::time::Duration;

use support::*;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_requests_succeed_in_bounded_memory() {
    use rudder::{MeshLayer, PodClient, Protocol};
    use tower::Layer;

    let cluster = hello(4).await;
    for p in cluster.pods() {
        // Slow enough that the requests really overlap.
        p.set_latency(Duration::from_millis(50));
    }
    let layer = MeshLayer::builder(cluster.api().client().await.unwrap())
        .build()
        .unwrap();
    let mesh = layer.layer(PodClient::builder().protocol(Protocol::Http2).build());
    // Warm up: connections made, snapshot indexed.
    get(&mut mesh.clone(), req("http://hello-svc:8080/"))
        .await
        .unwrap();
    let before = rss_kib();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10_000 {
        let mut mesh = mesh.clone();
        tasks.spawn(async move {
            get(&mut mesh, req("http://hello-svc:8080/"))
                .await
                .map(|_| ())
        });
    }
    let peak_in_flight = tokio::time::timeout(BOUND, async {
        let mut peak = 0;
        while !tasks.is_empty() {
            let in_flight: u32 = layer
                .view("hello-svc:8080")
                .map(|v| v.endpoints.iter().map(|e| e.in_flight).sum())
                .unwrap_or(0);
            peak = peak.max(in_flight);
            match tasks.try_join_next() {
                Some(r) => r.unwrap().expect("no request fails"),
                None => tokio::task::yield_now().await,
            }
        }
        peak
    })
    .await
    .expect("10,000 requests finish");
    let grown = rss_kib().saturating_sub(before);
    assert!(
        peak_in_flight >= 1_000,
        "requests overlapped: peak {peak_in_flight} in flight"
    );
    let after: u32 = layer
        .view("hello-svc:8080")
        .unwrap()
        .endpoints
        .iter()
        .map(|e| e.in_flight)
        .sum();
    assert_eq!(after, 0, "every in-flight count released");
    assert!(
        grown < 256 * 1024,
        "RSS grew {grown} KiB for 10,000 requests"
    );
}
