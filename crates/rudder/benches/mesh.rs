//! The Mesh's own cost per request, without any I/O: an inner service that answers at
//! once, called bare and through the Mesh (static endpoints, so no API server).
//!
//! `cargo bench -p rudder --bench mesh`

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use rudder::{MeshLayer, Static};
use rudder_balance::Endpoint;
use tower::{Layer, ServiceExt};

fn mesh(c: &mut Criterion) {
    let rt = runtime();
    let inner = tower::service_fn(|_: Request<rudder::ReplayBody<Empty<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    });
    let endpoints = (1..=10)
        .map(|i| Endpoint::new(format!("10.0.0.{i}:8080").parse().expect("addr")))
        .collect();
    let layer = MeshLayer::builder_static()
        .static_service("web", Static::new(endpoints))
        .expect("static")
        .build()
        .expect("layer");
    let mesh = rt.block_on(async { layer.layer(inner) });
    let no_retries = MeshLayer::builder_static()
        .static_service(
            "web",
            Static::new(vec![Endpoint::new("10.0.0.1:8080".parse().expect("addr"))]),
        )
        .expect("static")
        .retries(0, 20.0, 10)
        .build()
        .expect("layer")
        .layer(inner);
    let req = || {
        Request::get("http://web:8080/x")
            .body(Empty::new())
            .expect("request")
    };

    let mut group = c.benchmark_group("request");
    group.bench_function("inner_alone", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = req().map(rudder::ReplayBody::new);
                black_box(inner.oneshot(req).await)
            })
        })
    });
    group.bench_function("through_mesh", |b| {
        b.iter(|| rt.block_on(async { black_box(mesh.clone().oneshot(req()).await) }))
    });
    group.bench_function("through_mesh_without_retries", |b| {
        b.iter(|| rt.block_on(async { black_box(no_retries.clone().oneshot(req()).await) }))
    });
    // Both cores sending at once (one runtime per thread, as a multi-threaded client's
    // workers do): whatever the requests share (reference counts, the pool's snapshot)
    // now moves between the cores' caches. Time per request over both threads.
    let runtimes = [runtime(), runtime()];
    let both = |b: &mut criterion::Bencher<'_>, one: &(dyn Fn(&tokio::runtime::Runtime) + Sync)| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for rt in &runtimes {
                    s.spawn(move || (0..iters).for_each(|_| one(rt)));
                }
            });
            start.elapsed() / 2
        })
    };
    group.bench_function("inner_alone_two_threads", |b| {
        both(b, &|rt| {
            rt.block_on(async {
                let req = req().map(rudder::ReplayBody::new);
                black_box(inner.oneshot(req).await)
            })
            .expect("inner");
        })
    });
    group.bench_function("through_mesh_two_threads", |b| {
        both(b, &|rt| {
            rt.block_on(async { black_box(mesh.clone().oneshot(req()).await) })
                .expect("mesh");
        })
    });
    group.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

criterion_group!(benches, mesh);
criterion_main!(benches);
