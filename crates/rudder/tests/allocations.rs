//! Heap use of the request path, counted by an instrumented global allocator: this test
//! binary holds one test so that nothing else allocates while it counts.

use std::alloc::System;
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
                labels: BTreeMap::from([("version".into(), format!("{}", i % 2))]),
                ..EndpointMeta::default()
            })
        })
        .collect()
}

fn get(uri: &'static str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).expect("request")
}

#[test]
fn request_path_heap_use_is_bounded() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let inner = tower::service_fn(|_: Request<rudder::ReplayBody<Empty<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    });
    let layer = MeshLayer::builder_static()
        .trust_subset_header()
        .static_service("web", Static::new(endpoints()))
        .expect("static")
        .subset("version=1".parse().expect("selector"))
        .build()
        .expect("layer");
    let mesh = rt.block_on(async { layer.layer(inner) });

    rt.block_on(async {
        // Warm up: the Service is resolved, its pool built, the snapshot published.
        for _ in 0..100 {
            mesh.clone()
                .oneshot(get("http://web:8080/x"))
                .await
                .expect("response");
        }

        // Steady path: allocations per request, the request itself included.
        let n = 1_000;
        let bare = Region::new(GLOBAL);
        for _ in 0..n {
            let _ = inner
                .oneshot(get("http://web:8080/x").map(rudder::ReplayBody::new))
                .await;
        }
        let bare = bare.change().allocations as f64 / f64::from(n);
        let region = Region::new(GLOBAL);
        for _ in 0..n {
            mesh.clone()
                .oneshot(get("http://web:8080/x"))
                .await
                .expect("response");
        }
        let meshed = region.change().allocations as f64 / f64::from(n);
        println!("allocations per request: bare {bare:.2}, through the Mesh {meshed:.2}");
        assert!(
            meshed - bare <= MESH_ALLOCATIONS,
            "the Mesh added {:.2} allocations per request (bound {MESH_ALLOCATIONS})",
            meshed - bare
        );

        // With Prometheus metrics, after each endpoint's series exist: nothing more.
        #[cfg(feature = "metrics")]
        {
            let mut registry = prometheus_client::registry::Registry::default();
            let metered = MeshLayer::builder_static()
                .trust_subset_header()
                .static_service("web", Static::new(endpoints()))
                .expect("static")
                .subset("version=1".parse().expect("selector"))
                .metrics(&mut registry)
                .build()
                .expect("layer")
                .layer(inner);
            for _ in 0..100 {
                metered
                    .clone()
                    .oneshot(get("http://web:8080/x"))
                    .await
                    .expect("response");
            }
            let region = Region::new(GLOBAL);
            for _ in 0..n {
                metered
                    .clone()
                    .oneshot(get("http://web:8080/x"))
                    .await
                    .expect("response");
            }
            let with_metrics = region.change().allocations as f64 / f64::from(n);
            println!("with metrics: {with_metrics:.2}");
            assert!(
                with_metrics - bare <= MESH_ALLOCATIONS,
                "with metrics the Mesh added {:.2} allocations per request",
                with_metrics - bare
            );
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
    });
}

/// Allocations the Mesh adds to a request on the steady path, measured with dhat: the
/// boxed response future (1), the `Host` header (2: a new `HeaderMap`'s index and entry
/// arrays) and [`rudder::Target`] in the request's extensions (3: http allocates the map,
/// its table and the boxed value on first insert). Resolving the authority, choosing the
/// subset, picking, the snapshot, the outcome record and metrics allocate nothing.
const MESH_ALLOCATIONS: f64 = 6.0;
