//! TLS to Pods, verified as the Service's name, on the embedded cluster.
//!
//! `greeter`'s Pods serve TLS with a certificate for `greeter.default.svc` (from a CA made
//! for the run). Three clients go through Rudder: hyper-util's pooled client (HTTP/1.1 over
//! TLS), tonic over `PodClient` (HTTP/2 over TLS, gRPC), and, for comparison, the same
//! hyper-util client in plain HTTP to a plain twin of the Service. Each Pod reports the
//! server name (SNI) it was asked for; the client verified its certificate against that
//! name, never the Pod IP.
//!
//! ```text
//! cargo run --example tls [-- --once] [-- --requests N]
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rudder::tls::TlsConfig;
use rudder::{MeshLayer, PodClient, Protocol, ReplayBody};
use rudder_testkit::{PodReply, PodTls, TestCluster};
use tower::{Layer, Service, ServiceExt};

const NAME: &str = "greeter.default.svc";
const WORKERS: usize = 8;

/// What one client saw.
#[derive(Default)]
struct Run {
    per_pod: BTreeMap<String, usize>,
    sni: BTreeMap<String, usize>,
    failed: usize,
    first_failure: Option<String>,
    elapsed: Duration,
}

impl Run {
    fn merge(&mut self, other: Run) {
        for (k, v) in other.per_pod {
            *self.per_pod.entry(k).or_default() += v;
        }
        for (k, v) in other.sni {
            *self.sni.entry(k).or_default() += v;
        }
        self.failed += other.failed;
        self.first_failure = self.first_failure.take().or(other.first_failure);
    }
}

/// Sends `n` GETs to `uri` through `svc` from `WORKERS` tasks.
async fn http_load<S, B>(svc: S, uri: &'static str, n: usize) -> Run
where
    S: Service<http::Request<Empty<Bytes>>, Response = http::Response<B>, Error = rudder::BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<rudder::BoxError>,
{
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (svc, next) = (svc.clone(), next.clone());
        workers.spawn(async move {
            let mut run = Run::default();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let req = http::Request::get(uri).body(Empty::new()).expect("request");
                let call = svc.clone().oneshot(req);
                let reply = async move {
                    let res = call.await?;
                    let body = res.into_body().collect().await.map_err(Into::into)?;
                    Ok::<_, rudder::BoxError>(serde_json::from_slice::<PodReply>(&body.to_bytes())?)
                };
                match reply.await {
                    Ok(r) => {
                        *run.per_pod.entry(r.pod).or_default() += 1;
                        *run.sni
                            .entry(r.sni.unwrap_or_else(|| "-".into()))
                            .or_default() += 1;
                    }
                    Err(e) => {
                        run.failed += 1;
                        run.first_failure.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            run
        });
    }
    let mut total = Run::default();
    while let Some(run) = workers.join_next().await {
        total.merge(run.expect("worker"));
    }
    total.elapsed = started.elapsed();
    total
}

/// `n` unary gRPC calls through tonic over `transport`.
async fn grpc_load<T>(transport: T, n: usize) -> Run
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<rudder::BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<rudder::BoxError>,
    T::Future: Send,
{
    let started = Instant::now();
    let grpc = tonic::client::Grpc::with_origin(
        transport,
        "https://greeter:8080".parse().expect("origin"),
    );
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let mut grpc = grpc.clone();
        workers.spawn(async move {
            let mut run = Run::default();
            for _ in (w..n).step_by(WORKERS) {
                match rudder_testkit::grpc::whoami(&mut grpc).await {
                    Ok(r) => *run.per_pod.entry(r.pod).or_default() += 1,
                    Err(e) => {
                        run.failed += 1;
                        run.first_failure.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            run
        });
    }
    let mut total = Run::default();
    while let Some(run) = workers.join_next().await {
        total.merge(run.expect("worker"));
    }
    total.elapsed = started.elapsed();
    total
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::Args::parse(
        "tls",
        "TLS to Pods verified as the Service's name: hyper-util and tonic clients on an embedded cluster",
        common::Flags {
            real_cluster: false,
            once: true,
        },
    );
    let n = args.requests.unwrap_or(5_000);
    let pods = PodTls::for_names([NAME])?;
    let cluster = TestCluster::builder()
        .service("greeter")
        .label("app", "greeter")
        .replicas(3)
        .tls(pods.clone())
        .start()
        .await?;
    let plain = TestCluster::builder()
        .service("greeter")
        .label("app", "greeter")
        .replicas(3)
        .start()
        .await?;
    let tls = TlsConfig::builder()
        .root_pem(pods.ca_pem().as_bytes())?
        .build()?;
    let kube = cluster.api().client().await?;

    // hyper-util's pooled client over TLS (HTTP/1.1).
    let https =
        Client::builder(TokioExecutor::new()).build::<_, ReplayBody<Empty<Bytes>>>(tls.connector());
    let layer = MeshLayer::builder(kube.clone()).tls(tls.clone()).build()?;
    let h1_tls = http_load(layer.layer(https), "https://greeter:8080/", n).await;

    // The same client in plain HTTP, to the plain twin.
    let http = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Empty<Bytes>>>();
    let plain_layer = MeshLayer::builder(plain.api().client().await?).build()?;
    let h1_plain = http_load(plain_layer.layer(http), "http://greeter:8080/", n).await;

    // tonic over PodClient: HTTP/2 over TLS, one connection per Pod, calls balanced.
    let pod_client = PodClient::builder()
        .protocol(Protocol::Http2)
        .tls(tls.clone())
        .build::<ReplayBody<tonic::body::Body>>();
    let grpc_layer = MeshLayer::builder(kube).tls(tls).build()?;
    let grpc = grpc_load(grpc_layer.layer(pod_client), n).await;

    let handshakes: Vec<u64> = cluster.pods().iter().map(|p| p.handshakes()).collect();
    println!("{n} requests per client to greeter:8080 through Rudder ({WORKERS} workers):");
    println!(
        "  {:<34} {:>8} {:>7} {:>10}  per Pod",
        "client", "ok", "failed", "req/s"
    );
    for (name, run) in [
        ("hyper-util, HTTP/1.1 + TLS", &h1_tls),
        ("hyper-util, HTTP/1.1 plain", &h1_plain),
        ("tonic over PodClient, HTTP/2 + TLS", &grpc),
    ] {
        let ok: usize = run.per_pod.values().sum();
        println!(
            "  {name:<34} {ok:>8} {:>7} {:>10.0}  {:?}",
            run.failed,
            ok as f64 / run.elapsed.as_secs_f64(),
            run.per_pod.values().collect::<Vec<_>>()
        );
        if let Some(f) = &run.first_failure {
            println!("    first failure: {f}");
        }
    }
    println!("SNI the TLS Pods saw (hyper-util): {:?}", h1_tls.sni);
    println!("certificate name verified by the client: {NAME}");
    println!("TLS handshakes per Pod (both TLS clients): {handshakes:?}");
    let failed = h1_tls.failed + h1_plain.failed + grpc.failed;
    anyhow::ensure!(failed == 0, "{failed} requests failed");
    anyhow::ensure!(
        h1_tls.sni.keys().all(|s| s == NAME),
        "Pods saw SNI {:?}",
        h1_tls.sni
    );
    anyhow::ensure!(
        h1_tls.per_pod.len() == 3 && grpc.per_pod.len() == 3,
        "every Pod answers"
    );
    if !args.once {
        println!("\n(--once prints the same and exits; this example has no live mode)");
    }
    Ok(())
}
