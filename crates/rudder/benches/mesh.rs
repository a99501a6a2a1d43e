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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
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
    group.finish();
}

criterion_group!(benches, mesh);
criterion_main!(benches);
