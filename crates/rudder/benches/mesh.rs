//! The Mesh's own cost per request, without any I/O: an inner service that answers at
//! once, called bare and through the Mesh (static endpoints, so no API server), on one
//! thread and on two threads sharing one Mesh (or each with its own).
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
    // Ten endpoints; the default retries (2, within a 20 % budget) or none.
    let layer = |retries: u32| {
        let endpoints = (1..=10)
            .map(|i| Endpoint::new(format!("10.0.0.{i}:8080").parse().expect("addr")))
            .collect();
        MeshLayer::builder_static()
            .static_service("web", Static::new(endpoints))
            .expect("static")
            .retries(retries, 20.0, 10)
            .build()
            .expect("layer")
    };
    let mesh = rt.block_on(async { layer(2).layer(inner) });
    let no_retries = rt.block_on(async { layer(0).layer(inner) });
    let req = || {
        Request::get("http://web:8080/x")
            .body(Empty::new())
            .expect("request")
    };

    // Each arm also with one request header (a `user-agent`), as most clients send: the
    // map is then allocated already, and the `Host` the Mesh adds for the Pod costs an
    // insert, not the map's first allocation (for the bare inner service too, whose
    // request carries the same header).
    let with_header = || {
        Request::get("http://web:8080/x")
            .header(http::header::USER_AGENT, "bench")
            .body(Empty::new())
            .expect("request")
    };
    let mut group = c.benchmark_group("request");
    type Make = fn() -> Request<Empty<Bytes>>;
    let requests: [(&str, Make); 2] = [("", req), ("_one_header", with_header)];
    for (suffix, make) in requests {
        group.bench_function(format!("inner_alone{suffix}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let req = make().map(rudder::ReplayBody::new);
                    black_box(inner.oneshot(req).await)
                })
            })
        });
        group.bench_function(format!("through_mesh{suffix}"), |b| {
            b.iter(|| rt.block_on(async { black_box(mesh.clone().oneshot(make()).await) }))
        });
        group.bench_function(format!("through_mesh_without_retries{suffix}"), |b| {
            b.iter(|| rt.block_on(async { black_box(no_retries.clone().oneshot(make()).await) }))
        });
    }
    // An inner service whose response is not ready at once, as with real I/O: the first
    // poll waits, so the Mesh arms its response timeout (default 15 s) on every request.
    // Without a timeout there is nothing to arm: the difference is the timer's cost.
    let waiting = tower::service_fn(|_: Request<rudder::ReplayBody<Empty<Bytes>>>| async {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    });
    let waiting_layer = |timeout: Option<std::time::Duration>| {
        let endpoints = (1..=10)
            .map(|i| Endpoint::new(format!("10.0.0.{i}:8080").parse().expect("addr")))
            .collect();
        MeshLayer::builder_static()
            .static_service("web", Static::new(endpoints))
            .expect("static")
            .retries(0, 20.0, 10)
            .response_timeout(timeout)
            .build()
            .expect("layer")
    };
    let timed = rt
        .block_on(async { waiting_layer(Some(std::time::Duration::from_secs(15))).layer(waiting) });
    let untimed = rt.block_on(async { waiting_layer(None).layer(waiting) });
    group.bench_function("inner_alone_waiting", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = req().map(rudder::ReplayBody::new);
                black_box(waiting.oneshot(req).await)
            })
        })
    });
    group.bench_function("through_mesh_waiting", |b| {
        b.iter(|| rt.block_on(async { black_box(timed.clone().oneshot(req()).await) }))
    });
    group.bench_function("through_mesh_waiting_without_timeout", |b| {
        b.iter(|| rt.block_on(async { black_box(untimed.clone().oneshot(req()).await) }))
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
    group.bench_function("no_retries_two_threads", |b| {
        both(b, &|rt| {
            rt.block_on(async { black_box(no_retries.clone().oneshot(req()).await) })
                .expect("mesh");
        })
    });
    group.bench_function("through_mesh_two_threads", |b| {
        both(b, &|rt| {
            rt.block_on(async { black_box(mesh.clone().oneshot(req()).await) })
                .expect("mesh");
        })
    });
    // The same with one Mesh per thread: nothing shared, so the difference to the arm
    // above is what sharing one Mesh between threads costs.
    let meshes = [
        rt.block_on(async { layer(2).layer(inner) }),
        rt.block_on(async { layer(2).layer(inner) }),
    ];
    group.bench_function("one_mesh_per_thread_two_threads", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for (rt, m) in runtimes.iter().zip(&meshes) {
                    s.spawn(move || {
                        (0..iters).for_each(|_| {
                            rt.block_on(async { black_box(m.clone().oneshot(req()).await) })
                                .expect("mesh");
                        })
                    });
                }
            });
            start.elapsed() / 2
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
