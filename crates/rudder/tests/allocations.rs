//! Heap use of the request path, counted by an instrumented global allocator.
//!
//! The allocator counts every thread's allocations, so this binary runs without the test
//! harness (`harness = false`): libtest's main thread allocates while it waits for a test
//! (its timeout queue, its channel), and on this 2-core machine that sometimes fell inside
//! a count. Here `main` is the only thread and runs one check.

use std::alloc::System;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use rudder::{MeshLayer, Static};
use rudder_balance::{Endpoint, EndpointMeta};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn endpoints() -> Vec<Endpoint> {
    (1..=10)
        .map(|i| {
            Endpoint::new(SocketAddr::from(([10, 0, 0, i], 8080))).with_meta(EndpointMeta {
                labels: BTreeMap::from([("version".to_string(), format!("{}", i % 2))]).into(),
                ..EndpointMeta::default()
            })
        })
        .collect()
}

fn get(uri: &'static str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).expect("request")
}

/// A request as clients send them: with headers (here one), so the map has room for the
/// `Host` the Mesh adds.
fn with_header(uri: &'static str) -> Request<Empty<Bytes>> {
    Request::get(uri)
        .header(http::header::USER_AGENT, "rudder-test")
        .body(Empty::new())
        .expect("request")
}

type Inner = tower::util::ServiceFn<
    fn(
        Request<rudder::ReplayBody<Empty<Bytes>>>,
    ) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>,
>;

fn inner() -> Inner {
    tower::service_fn(|req| {
        reached(&req);
        std::future::ready(Ok(Response::new(Empty::new())))
    })
}

thread_local! {
    /// Which of the endpoints 10.0.0.1 to 10.0.0.10 requests reached, by last octet.
    static REACHED: Cell<u16> = const { Cell::new(0) };
}

/// Notes the endpoint `req` went to (one of [`endpoints`]; other addresses are not noted).
fn reached<B>(req: &Request<B>) {
    let octet = req
        .uri()
        .host()
        .and_then(|h| h.strip_prefix("10.0.0."))
        .and_then(|o| o.parse::<u8>().ok());
    if let Some(o @ 1..=10) = octet {
        REACHED.with(|r| r.set(r.get() | 1 << o));
    }
}

/// How many of [`endpoints`] requests reached since the last call, which starts afresh.
fn take_reached() -> u32 {
    REACHED.with(|r| r.replace(0)).count_ones()
}

/// Sends requests through `svc` until `reach` of [`endpoints`] have had one (at least
/// 100 requests): a thread's first request to an endpoint copies its address
/// (`mesh/local.rs`), once; after that the path is steady. Picks are random, so a fixed
/// number of requests may miss one (a canary leg gets 1 in 10 of them).
async fn warm_up<S>(svc: &S, make: fn(&'static str) -> Request<Empty<Bytes>>, reach: u32)
where
    S: tower::Service<Request<Empty<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    take_reached();
    let mut seen = 0;
    let mut sent = 0;
    while sent < 100 || seen < reach {
        assert!(
            sent < 100_000,
            "{sent} requests reached {seen} endpoints, not {reach}"
        );
        svc.clone()
            .oneshot(make("http://web:8080/x"))
            .await
            .expect("response");
        sent += 1;
        seen = REACHED.with(|r| r.get()).count_ones();
    }
    assert_eq!(
        take_reached(),
        reach,
        "requests reached more endpoints than expected"
    );
}

/// Allocations per request through `svc` beyond the bare inner service's, after a warm-up
/// (the Service resolved, its pool built, each of the `reach` endpoints its requests may
/// go to reached, each endpoint's metric series made).
async fn added<S>(svc: &S, make: fn(&'static str) -> Request<Empty<Bytes>>, reach: u32) -> f64
where
    S: tower::Service<Request<Empty<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    warm_up(svc, make, reach).await;
    let n = 1_000;
    let bare = Region::new(GLOBAL);
    for _ in 0..n {
        let _ = inner()
            .oneshot(make("http://web:8080/x").map(rudder::ReplayBody::new))
            .await;
    }
    let bare = bare.change().allocations as f64 / f64::from(n);
    let region = Region::new(GLOBAL);
    for _ in 0..n {
        svc.clone()
            .oneshot(make("http://web:8080/x"))
            .await
            .expect("response");
    }
    region.change().allocations as f64 / f64::from(n) - bare
}

/// An inner service whose response is not ready at first, so that requests sent together
/// are all in flight before any ends.
fn yielding() -> impl tower::Service<
    Request<rudder::ReplayBody<Empty<Bytes>>>,
    Response = Response<Empty<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|req: Request<_>| {
        reached(&req);
        async {
            tokio::task::yield_now().await;
            Ok(Response::new(Empty::new()))
        }
    })
}

/// Allocations per request through `svc` beyond the bare inner service's, sending `n`
/// requests at once (all in flight together), after warm-up rounds that reached `reach`
/// endpoints (see [`warm_up`]).
async fn added_concurrently<S>(svc: &S, n: usize, reach: u32) -> f64
where
    S: tower::Service<Request<Empty<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    use futures::future::join_all;
    let round = || join_all((0..n).map(|_| svc.clone().oneshot(with_header("http://web:8080/x"))));
    take_reached();
    for _ in 0..100 {
        for r in round().await {
            r.expect("response");
        }
        if REACHED.with(|r| r.get()).count_ones() >= reach {
            break;
        }
    }
    assert_eq!(
        take_reached(),
        reach,
        "endpoints reached by the warm-up rounds"
    );
    let rounds = 10;
    let bare = Region::new(GLOBAL);
    for _ in 0..rounds {
        join_all((0..n).map(|_| {
            yielding().oneshot(with_header("http://web:8080/x").map(rudder::ReplayBody::new))
        }))
        .await;
    }
    let bare = bare.change().allocations as f64;
    let region = Region::new(GLOBAL);
    for _ in 0..rounds {
        for r in round().await {
            r.expect("response");
        }
    }
    let total = (rounds * n) as f64;
    (region.change().allocations as f64 - bare) / total
}

fn builder() -> rudder::MeshBuilder {
    MeshLayer::builder_static()
        .trust_subset_header()
        .static_service("web", Static::new(endpoints()))
        .expect("static")
        .subset("version=1".parse().expect("selector"))
}

fn main() {
    request_path_heap_use_is_bounded();
    println!("request path heap use: ok");
}

fn request_path_heap_use_is_bounded() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // The steady path: resolving the authority, choosing the subset, picking, the
        // snapshot, the call, the response timeout, the outcome record and the response
        // body allocate nothing.
        let no_retries = builder().retries(0, 20.0, 10).build().expect("layer");
        let mesh = no_retries.layer(inner());
        let steady = added(&mesh, with_header, 5).await;
        println!("allocations the Mesh adds per request (retries off): {steady:.2}");
        assert_eq!(steady, 0.0, "the steady path allocated");

        // A request without any header: `http` allocates the header map for `Host` (its
        // index and entry arrays), which the Pod must see.
        let bare_request = added(&mesh, get, 5).await;
        println!("... for a request without headers: {bare_request:.2}");
        assert!(bare_request <= 2.0, "{bare_request} allocations");

        // Retries on (the default): the request's head is kept for another attempt, as
        // bytes in buffers reused from request to request (`mesh/head.rs`).
        let retrying = builder().build().expect("layer").layer(inner());
        let with_retries = added(&retrying, with_header, 5).await;
        println!("... with retries on: {with_retries:.2}");
        assert_eq!(with_retries, 0.0, "keeping the head for a retry allocated");

        // Retries on, but one Pod: no other endpoint to retry on, so nothing is kept.
        let single = MeshLayer::builder_static()
            .static_service(
                "web",
                Static::new(vec![Endpoint::new(SocketAddr::from(([10, 0, 0, 1], 8080)))]),
            )
            .expect("static")
            .build()
            .expect("layer")
            .layer(inner());
        let one_pod = added(&single, with_header, 1).await;
        println!("... with retries on and one Pod: {one_pod:.2}");
        assert_eq!(
            one_pod, 0.0,
            "a request that cannot be retried kept its head"
        );

        // With Prometheus metrics, once each endpoint's series exist: nothing more.
        #[cfg(feature = "metrics")]
        {
            // Retries off, then on (the defaults).
            for (retries, what) in [(0, "retries off"), (2, "retries on")] {
                let mut registry = prometheus_client::registry::Registry::default();
                let metered = builder()
                    .retries(retries, 20.0, 10)
                    .metrics(&mut registry)
                    .build()
                    .expect("layer")
                    .layer(inner());
                let with_metrics = added(&metered, with_header, 5).await;
                println!("... with metrics, {what}: {with_metrics:.2}");
                assert_eq!(with_metrics, 0.0, "recording metrics allocated ({what})");
            }
        }

        // Many requests in flight on one thread at once (as a busy client has), retries
        // on: each keeps its head until it ends, in buffers the thread reuses.
        let concurrent = builder().build().expect("layer").layer(yielding());
        let in_flight = added_concurrently(&concurrent, 200, 5).await;
        println!("... with 200 requests in flight at once, retries on: {in_flight:.2}");
        assert_eq!(in_flight, 0.0, "requests in flight at once allocated");

        // Every way of choosing where a request goes: a subset header (configured or
        // not: parsed once per distinct value), a split, a route rule, Maglev on an
        // affinity header, round robin, least requests, slow start, a whole-request
        // timeout. Each a Mesh of its own, retries on.
        fn with_subset(uri: &'static str) -> Request<Empty<Bytes>> {
            Request::get(uri)
                .header(http::header::USER_AGENT, "rudder-test")
                .header("x-rudder-subset", "version=1")
                .header("x-user", "42")
                .body(Empty::new())
                .expect("request")
        }
        fn with_other_subset(uri: &'static str) -> Request<Empty<Bytes>> {
            Request::get(uri)
                .header(http::header::USER_AGENT, "rudder-test")
                .header("x-rudder-subset", "version=0")
                .body(Empty::new())
                .expect("request")
        }
        let split = rudder::Split::new([
            ("version=1".parse().expect("selector"), 90),
            ("version=0".parse().expect("selector"), 10),
        ])
        .expect("split");
        let route = rudder::Route::new()
            .path_prefix("/x")
            .to_subset("version=0".parse().expect("selector"));
        // What, how the Mesh is built, the request, and how many endpoints its requests reach.
        type Variant = (&'static str, rudder::MeshBuilder, Make, u32);
        type Make = fn(&'static str) -> Request<Empty<Bytes>>;
        let variants: Vec<Variant> =
            vec![
                (
                    "a configured subset in the header",
                    builder(),
                    with_subset,
                    5,
                ),
                (
                    "another subset in the header",
                    builder(),
                    with_other_subset,
                    5,
                ),
                // Both legs: version=1 and version=0.
                ("a split", builder().split(split), with_header, 10),
                (
                    "a route rule",
                    builder().route(route).expect("route"),
                    with_header,
                    5,
                ),
                (
                    "Maglev on an affinity header",
                    builder().algorithm(rudder::Algorithm::Maglev).affinity(
                        rudder::Affinity::Header(http::HeaderName::from_static("x-user")),
                    ),
                    with_subset,
                    // One key: one Pod.
                    1,
                ),
                (
                    "round robin",
                    builder().algorithm(rudder::Algorithm::WeightedRoundRobin),
                    with_header,
                    5,
                ),
                (
                    "least requests",
                    builder().algorithm(rudder::Algorithm::LeastRequests),
                    with_header,
                    5,
                ),
                (
                    "a whole-request timeout",
                    builder().timeout(std::time::Duration::from_secs(30)),
                    with_header,
                    5,
                ),
                // Last: while its ramp runs, its updater rebuilds the pool in the background.
                (
                    "slow start",
                    builder().slow_start(std::time::Duration::from_secs(30)),
                    with_header,
                    5,
                ),
            ];
        for (what, builder, make, reach) in variants {
            let svc = builder.build().expect("layer").layer(inner());
            let n = added(&svc, make, reach).await;
            println!("... {what}: {n:.2}");
            assert_eq!(n, 0.0, "{what}: allocated");
        }

        // Hostile subset headers: 100,000 distinct selectors leave memory flat once the
        // per-snapshot cache is full.
        let hostile = |i: usize| {
            Request::get("http://web:8080/")
                .header("x-rudder-subset", format!("version in (1,{i})"))
                .body(Empty::<Bytes>::new())
                .expect("request")
        };
        for i in 0..10_000 {
            mesh.clone().oneshot(hostile(i)).await.expect("response");
        }
        let region = Region::new(GLOBAL);
        for i in 10_000..100_000 {
            mesh.clone().oneshot(hostile(i)).await.expect("response");
        }
        let stats = region.change();
        let growth = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64;
        println!("net heap growth over 90,000 more distinct selectors: {growth} bytes");
        assert!(growth < 64 * 1024, "memory grew by {growth} bytes");

        // A Service with more endpoints than a thread keeps copies of their addresses
        // for (`mesh/local.rs`): once the table is full, the rest share the Mesh's copy;
        // nothing is copied per request. Last: a Mesh built after it brings new endpoints,
        // and the full table then refills once, which would show in a later count.
        let big: Vec<Endpoint> = (0..5_000u32)
            .map(|i| {
                let [_, _, a, b] = i.to_be_bytes();
                Endpoint::new(SocketAddr::from(([10, 1, a, b], 8080)))
            })
            .collect();
        let large = MeshLayer::builder_static()
            .static_service("web", Static::new(big))
            .expect("static")
            .retries(0, 20.0, 10)
            .build()
            .expect("layer")
            .layer(inner());
        // Enough requests for the thread's table to fill (about 1,200 reach 1,024 of
        // 5,000 endpoints), not to reach every endpoint (that takes about 43,000): the
        // first request to an endpoint allocates nothing either.
        for _ in 0..10_000 {
            large
                .clone()
                .oneshot(with_header("http://web:8080/x"))
                .await
                .expect("response");
        }
        let large_service = added(&large, with_header, 0).await;
        println!("... to a Service of 5,000 endpoints: {large_service:.2}");
        assert_eq!(large_service, 0.0, "requests to a large Service allocated");
    });
}
