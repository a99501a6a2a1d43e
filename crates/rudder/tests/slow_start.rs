//! Slow start through the Mesh, in a test binary of its own.
//!
//! P2C compares measured latencies, and these Pods answer in microseconds: a test thread
//! descheduled in the middle of a request records a latency of milliseconds, which P2C
//! rightly reads as a slow Pod and avoids for a while. Among the `mesh` binary's tests,
//! running two at a time on two cores, that happened often enough to move the ramping
//! Pod's share outside the binomial bounds (0.0265 against 0.0526 once, with a busy loop
//! beside the run). Here it runs alone, on one thread: no other test of the run competes
//! for the cores (other processes still can: two busy loops beside it failed it 1 time in 50).

#[allow(
    dead_code,
    unreachable_pub,
    reason = "shared with the mesh tests; this uses part"
)]
#[path = "mesh/support.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use rudder::{Algorithm, MeshLayer, Static};
use rudder_balance::{Endpoint, EndpointMeta};
use tower::{Layer, ServiceExt};

use support::*;

/// Endpoint 10.9.0.`i`:8080 of Pod `pod-i`, Ready since `ready_since`.
fn endpoint(i: u8, ready_since: SystemTime) -> Endpoint {
    Endpoint::new(SocketAddr::from(([10, 9, 0, i], 8080))).with_meta(EndpointMeta {
        pod: Some(format!("pod-{i}").into()),
        ready_since: Some(ready_since),
        ..EndpointMeta::default()
    })
}

/// The share of requests the ramping endpoint (Ready `age_percent` of a 1,000 s window
/// ago, among nine old ones) gets through the Mesh, sequentially or with 400 in flight.
async fn ramp_share(algorithm: Algorithm, age_percent: u32, concurrent: bool) -> f64 {
    let window = Duration::from_secs(1_000);
    let now = SystemTime::now();
    let mut eps = vec![endpoint(1, now - window * age_percent / 100)];
    eps.extend((2..=10).map(|i| endpoint(i, now - window * 10)));
    let layer = MeshLayer::builder_static()
        .trust_subset_header()
        .static_service("web", Static::new(eps))
        .unwrap()
        .algorithm(algorithm)
        .slow_start(window)
        .build()
        .unwrap();
    let mesh = layer.layer(recorder());
    let total = 4_000;
    // Concurrent callers keep 400 responses open (each counts in flight until its body
    // is dropped), 40 per endpoint at full weight, releasing the oldest as they go.
    let window = if concurrent { 400 } else { 0 };
    let mut open = std::collections::VecDeque::new();
    let mut hits = 0;
    for _ in 0..total {
        let res = mesh
            .clone()
            .oneshot(req("http://web:8080/"))
            .await
            .expect("response");
        hits += usize::from(res.headers()["x-addr"] == "10.9.0.1:8080");
        open.push_back(res);
        if open.len() > window {
            open.pop_front();
        }
    }
    hits as f64 / total as f64
}

/// Slow start ramps a new Pod's share with its weight, `max(10 %, age / window)`, with
/// sequential and concurrent callers, through the Mesh.
///
/// Every algorithm's shares must follow the ramp within sampling noise.
#[tokio::test]
async fn slow_start_follows_the_ramp_through_the_mesh() {
    for algorithm in [
        Algorithm::P2cPeakEwma,
        Algorithm::LeastRequests,
        Algorithm::WeightedRoundRobin,
    ] {
        for concurrent in [false, true] {
            for (age, factor) in [(10, 0.1), (50, 0.5), (90, 0.9)] {
                let expected: f64 = factor / (factor + 9.0);
                let share = ramp_share(algorithm, age, concurrent).await;
                // Binomial noise over 4,000 requests: 4.5 standard deviations.
                let sd = (expected * (1.0 - expected) / 4_000.0).sqrt();
                assert!(
                    (share - expected).abs() <= 4.5 * sd + 0.002,
                    "{algorithm:?} concurrent={concurrent} at {age} %: share {share:.4}, ramp says {expected:.4}"
                );
            }
        }
    }
}
