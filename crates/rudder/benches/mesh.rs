//! The Mesh's own cost per request, without any I/O: an inner service that answers at
//! once, called bare and through the Mesh (static endpoints, so no API server), on one
//! thread and on two threads sharing one Mesh (or each with its own). The `hyper_` arms
//! put hyper on both sides with no kernel in between: hyper-util's client, its pool and
//! its futures, over in-memory pipes to a hyper server in the same runtime, bare and
//! through the Mesh, so what the Mesh adds around a real client (larger futures moved,
//! the response timeout's timer, a clone for retries) is counted too.
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
    let layer = |retries: u32| ten_endpoints(retries, DEFAULT_TIMEOUT);
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
    // The same, answered with a body that has a size (`Full<Bytes>`, 32 bytes; hyper's
    // `Incoming` is larger still). A bare response with an `Empty` body is 112 bytes,
    // under the 128 the compiler copies inline, so each of its moves on the way out of
    // the runtime is a few stores; the Mesh's response is larger (its body carries the
    // attempt and the target) and goes by `memcpy` at each of them. With a body of 17
    // bytes or more, the bare response goes by `memcpy` too (twelve more calls per
    // request than with `Empty`, counted once from callgrind's call counts), as with any
    // real client: these arms show what the Mesh itself adds.
    let full = tower::service_fn(|_: Request<rudder::ReplayBody<Empty<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
            Bytes::from_static(b"ok"),
        )))
    });
    let full_mesh = rt.block_on(async { layer(0).layer(full) });
    group.bench_function("inner_alone_full_body", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = req().map(rudder::ReplayBody::new);
                black_box(full.oneshot(req).await)
            })
        })
    });
    group.bench_function("through_mesh_without_retries_full_body", |b| {
        b.iter(|| rt.block_on(async { black_box(full_mesh.clone().oneshot(req()).await) }))
    });
    // An inner service whose response is not ready at once, as with real I/O: the first
    // poll waits, so the Mesh arms its response timeout (default 15 s) on every request.
    // Without a timeout there is nothing to arm: the difference is the timer's cost.
    let waiting = tower::service_fn(|_: Request<rudder::ReplayBody<Empty<Bytes>>>| async {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    });
    let timed = rt.block_on(async { ten_endpoints(0, DEFAULT_TIMEOUT).layer(waiting) });
    let untimed = rt.block_on(async { ten_endpoints(0, None).layer(waiting) });
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

/// The Mesh's default response timeout.
const DEFAULT_TIMEOUT: Option<std::time::Duration> = Some(std::time::Duration::from_secs(15));

/// A Mesh layer over ten static endpoints (`web` → 10.0.0.1–10:8080), with `retries` (in a
/// 20 % budget) and `timeout` as the response timeout.
fn ten_endpoints(retries: u32, timeout: Option<std::time::Duration>) -> MeshLayer {
    let endpoints = (1..=10)
        .map(|i| Endpoint::new(format!("10.0.0.{i}:8080").parse().expect("addr")))
        .collect();
    MeshLayer::builder_static()
        .static_service("web", Static::new(endpoints))
        .expect("static")
        .retries(retries, 20.0, 10)
        .response_timeout(timeout)
        .build()
        .expect("layer")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A hyper-util connector whose connections are in-memory pipes to a hyper server
/// spawned per connection on the current runtime (whatever the address).
#[derive(Clone)]
struct Pipes;

/// One end of a pipe, as hyper-util wants a connection to be.
struct Pipe(hyper_util::rt::TokioIo<tokio::io::DuplexStream>);

impl hyper_util::client::legacy::connect::Connection for Pipe {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl hyper::rt::Read for Pipe {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Pipe {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower::Service<http::Uri> for Pipes {
    type Response = Pipe;
    type Error = std::io::Error;
    type Future = std::future::Ready<std::io::Result<Pipe>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
            hyper_util::rt::TokioIo::new(server),
            hyper::service::service_fn(|_| async {
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }),
        ));
        std::future::ready(Ok(Pipe(hyper_util::rt::TokioIo::new(client))))
    }
}

fn over_hyper(c: &mut Criterion) {
    use http_body_util::BodyExt;
    type Body = rudder::ReplayBody<Empty<Bytes>>;
    let rt = runtime();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Body>(Pipes);
    let layer = |retries: u32| ten_endpoints(retries, DEFAULT_TIMEOUT);
    let mesh = rt.block_on(async { layer(2).layer(client.clone()) });
    let no_retries = rt.block_on(async { layer(0).layer(client.clone()) });
    let mut group = c.benchmark_group("request");
    // Requests are made alike in every arm: from a URI made beforehand.
    let pods: Vec<http::Uri> = (1..=10)
        .map(|i| format!("http://10.0.0.{i}:8080/x").parse().expect("uri"))
        .collect();
    let service: http::Uri = "http://web:8080/x".parse().expect("uri");
    group.bench_function("hyper_client_alone", |b| {
        let mut i = 0;
        b.iter(|| {
            // Over the same ten addresses as the Mesh, in turn.
            i = (i + 1) % pods.len();
            let req = Request::get(pods[i].clone())
                .body(rudder::ReplayBody::new(Empty::new()))
                .expect("request");
            rt.block_on(async {
                let res = client.request(req).await.expect("response");
                black_box(res.into_body().collect().await.expect("body"))
            })
        })
    });
    for (name, mesh) in [
        ("hyper_through_mesh", &mesh),
        ("hyper_through_mesh_without_retries", &no_retries),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let req = Request::get(service.clone())
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                rt.block_on(async {
                    let res = mesh.clone().oneshot(req).await.expect("response");
                    black_box(res.into_body().collect().await.expect("body"))
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, mesh, over_hyper);
criterion_main!(benches);
