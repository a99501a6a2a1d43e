//! TLS and mutual TLS to Pods, end to end on loopback: Pods serve certificates for the
//! Service's name, and the client verifies that name, never the Pod IP.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rudder::tls::{TlsConfig, TlsError};
use rudder::{MeshError, MeshLayer, PodClient, Protocol, ReplayBody};
use rudder_testkit::{PodReply, PodTls, TestCluster};
use tower::{Layer, Service, ServiceExt};

use super::support::*;

const NAME: &str = "hello-svc.default.svc";

async fn tls_cluster(pods: usize, tls: PodTls) -> TestCluster {
    TestCluster::builder()
        .service("hello-svc")
        .pod_prefix("hello-world")
        .label("app", "hello-world")
        .replicas(pods)
        .tls(tls)
        .start()
        .await
        .expect("cluster")
}

fn client_tls(pods: &PodTls) -> TlsConfig {
    TlsConfig::builder()
        .root_pem(pods.ca_pem().as_bytes())
        .unwrap()
        .build()
        .unwrap()
}

type Https = Client<rudder::tls::TlsConnector, ReplayBody<Empty<Bytes>>>;

async fn mesh_over_https(
    cluster: &TestCluster,
    tls: TlsConfig,
) -> (MeshLayer, rudder::Mesh<Https>) {
    let http: Https = Client::builder(TokioExecutor::new()).build(tls.connector());
    let layer = MeshLayer::builder(rbac_client(cluster).await)
        .tls(tls)
        .build()
        .unwrap();
    let mesh = layer.layer(http);
    (layer, mesh)
}

/// The Pod's reply, or the error (with its causes) as text.
async fn call<S, B>(svc: &mut S, uri: &str) -> Result<PodReply, rudder::BoxError>
where
    S: Service<http::Request<Empty<Bytes>>, Response = http::Response<B>, Error = rudder::BoxError>,
    B: http_body::Body,
    B::Error: Into<rudder::BoxError>,
{
    get(svc, req(uri)).await
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(" / ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_see_the_service_name_as_sni_and_traffic_spreads() {
    let pods = PodTls::for_names([NAME]).unwrap();
    let cluster = tls_cluster(3, pods.clone()).await;
    let (_layer, mut mesh) = mesh_over_https(&cluster, client_tls(&pods)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let reply = call(&mut mesh, "https://hello-svc:8080/").await.unwrap();
        assert_eq!(
            reply.sni.as_deref(),
            Some(NAME),
            "SNI is the Service's name"
        );
        assert_eq!(reply.authority.as_deref(), Some("hello-svc:8080"));
        *counts.entry(reply.pod).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    // One handshake per pooled connection, not per request (that would be 300). Not
    // exactly one per Pod: hyper-util gives a connection back to its pool from the
    // connection's own task once a response has ended, and on a busy machine the next
    // request's checkout can come first and open another (7 were seen once, with the
    // whole test suite running on two cores).
    let handshakes: u64 = cluster.pods().iter().map(|p| p.handshakes()).sum();
    assert!(handshakes <= 30, "{handshakes} handshakes for 300 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_a_certificate_for_another_name_is_refused_naming_the_pod() {
    // A CA the client does not trust.
    let pods = PodTls::for_names([NAME]).unwrap();
    let cluster = tls_cluster(1, pods).await;
    let stranger = PodTls::for_names([NAME]).unwrap();
    let (_layer, mut mesh) = mesh_over_https(&cluster, client_tls(&stranger)).await;
    let err = call(&mut mesh, "https://hello-svc:8080/")
        .await
        .unwrap_err();
    let text = chain(&*err);
    let pod = cluster.pods()[0].addr().to_string();
    assert!(
        matches!(err.downcast_ref::<MeshError>(), Some(MeshError::Failed { service, .. }) if service == "hello-svc.default:8080"),
        "{text}"
    );
    assert!(
        text.contains(&pod) && text.contains(NAME),
        "names the Pod and the name: {text}"
    );
    assert!(text.contains("invalid peer certificate"), "{text}");

    // The right CA, but a certificate for another name.
    let other = PodTls::for_names(["other.default.svc"]).unwrap();
    let cluster = tls_cluster(1, other.clone()).await;
    let (_layer, mut mesh) = mesh_over_https(&cluster, client_tls(&other)).await;
    let err = call(&mut mesh, "https://hello-svc:8080/")
        .await
        .unwrap_err();
    let text = chain(&*err);
    assert!(text.contains("not valid for name"), "{text}");
    // The handshake error is typed.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
    let mut typed = false;
    while let Some(e) = cur {
        typed |= matches!(
            e.downcast_ref::<TlsError>(),
            Some(TlsError::Handshake { .. })
        );
        cur = e.source();
    }
    assert!(typed, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_pod_fails_clearly() {
    let pods = PodTls::for_names([NAME]).unwrap();
    let cluster = tls_cluster(1, pods.clone()).await;
    let (_layer, mut mesh) = mesh_over_https(&cluster, client_tls(&pods)).await;
    let err = call(&mut mesh, "http://hello-svc:8080/").await.unwrap_err();
    let text = chain(&*err);
    assert!(
        matches!(
            err.downcast_ref::<MeshError>(),
            Some(MeshError::Failed { .. })
        ),
        "{text}"
    );
    assert!(
        text.contains("if it serves TLS, use an https:// URL"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let pods = PodTls::for_names([NAME])
        .unwrap()
        .require_client_cert()
        .unwrap();
    let cluster = tls_cluster(2, pods.clone()).await;
    // Without a client certificate: refused.
    let (_layer, mut mesh) = mesh_over_https(&cluster, client_tls(&pods)).await;
    let err = call(&mut mesh, "https://hello-svc:8080/")
        .await
        .unwrap_err();
    let text = chain(&*err);
    assert!(
        text.to_lowercase().contains("certificate"),
        "says a certificate was required: {text}"
    );
    // With it: served.
    let with_cert = TlsConfig::builder()
        .root_pem(pods.ca_pem().as_bytes())
        .unwrap()
        .client_auth_pem(
            pods.client_cert_pem().as_bytes(),
            pods.client_key_pem().as_bytes(),
        )
        .unwrap()
        .build()
        .unwrap();
    let (_layer, mut mesh) = mesh_over_https(&cluster, with_cert).await;
    let reply = call(&mut mesh, "https://hello-svc:8080/").await.unwrap();
    assert_eq!(reply.sni.as_deref(), Some(NAME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_spreads_requests_and_pays_one_handshake_per_pod() {
    let pods = PodTls::for_names([NAME]).unwrap();
    let cluster = tls_cluster(10, pods.clone()).await;
    let tls = client_tls(&pods);
    // Round robin: the claim is about the transport (per request, not per connection);
    // P2C's latency judgement is tested elsewhere.
    let layer = MeshLayer::builder(cluster.api().client().await.unwrap())
        .tls(tls.clone())
        .algorithm(rudder::Algorithm::WeightedRoundRobin)
        .build()
        .unwrap();
    let mut mesh = layer.layer(
        PodClient::builder()
            .protocol(Protocol::Http2)
            .tls(tls)
            .build::<ReplayBody<Empty<Bytes>>>(),
    );
    let mut counts: HashMap<String, usize> = HashMap::new();
    let n = 10_000;
    for _ in 0..n {
        let res = mesh
            .ready()
            .await
            .unwrap()
            .call(req("https://hello-svc:8080/"))
            .await
            .unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let reply: PodReply = serde_json::from_slice(&body).unwrap();
        assert_eq!(reply.version, "HTTP/2.0");
        *counts.entry(reply.pod).or_default() += 1;
    }
    let sum: f64 = counts.values().map(|c| *c as f64).sum();
    let squares: f64 = counts.values().map(|c| (*c as f64).powi(2)).sum();
    let jain = sum * sum / (10.0 * squares);
    assert_eq!(counts.len(), 10, "{counts:?}");
    assert!(jain >= 0.9, "Jain {jain:.3}: {counts:?}");
    let handshakes: Vec<u64> = cluster.pods().iter().map(|p| p.handshakes()).collect();
    eprintln!(
        "{n} requests over HTTP/2 + TLS to 10 Pods: handshakes per Pod {handshakes:?}, Jain {jain:.3}"
    );
    assert!(
        handshakes.iter().all(|h| *h == 1),
        "one handshake per Pod connection: {handshakes:?}"
    );
}
