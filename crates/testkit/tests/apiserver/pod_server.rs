//! Pod servers: HTTP/1.1 and HTTP/2, the authority they see, and their knobs.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rudder_testkit::{PodReply, PodServer};

fn client(http2: bool) -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http()
}

async fn get(
    c: &Client<HttpConnector, Empty<Bytes>>,
    pod: &PodServer,
    host: &str,
) -> Result<(u16, PodReply), hyper_util::client::legacy::Error> {
    let req = http::Request::get(format!("http://{}/hello", pod.addr()))
        .header(http::header::HOST, host)
        .body(Empty::new())
        .expect("request");
    let resp = c.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Ok((status, serde_json::from_slice(&body).expect("PodReply")))
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".into(), "web".into()),
        ("version".into(), "4.2".into()),
    ])
}

#[tokio::test]
async fn answers_over_http1_and_http2_with_name_labels_and_authority() {
    let pod = PodServer::start_on_loopback("web-1", 0, labels())
        .await
        .expect("pod");
    assert!(pod.addr().ip().is_loopback());
    let (status, reply) = get(&client(false), &pod, "web.default:8080").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(reply.pod, "web-1");
    assert_eq!(reply.labels, labels());
    assert_eq!(reply.authority.as_deref(), Some("web.default:8080"));
    assert_eq!(reply.version, "HTTP/1.1");
    assert_eq!(reply.path, "/hello");
    let (_, reply) = get(&client(true), &pod, "web.default:8080").await.unwrap();
    assert_eq!(reply.version, "HTTP/2.0");
    assert_eq!(pod.request_count(), 2);
}

#[tokio::test]
async fn error_rate_and_latency_knobs() {
    let pod = PodServer::start_on_loopback("web-2", 0, labels())
        .await
        .expect("pod");
    pod.set_error_rate(1.0);
    assert_eq!(get(&client(false), &pod, "x").await.unwrap().0, 500);
    pod.set_error_rate(0.0);
    assert_eq!(get(&client(false), &pod, "x").await.unwrap().0, 200);
    pod.set_latency(Duration::from_millis(100));
    let t = tokio::time::Instant::now();
    get(&client(false), &pod, "x").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn kill_refuses_and_resets_then_restart_serves_again() {
    let pod = PodServer::start_on_loopback("web-3", 0, labels())
        .await
        .expect("pod");
    let c = client(true);
    get(&c, &pod, "x").await.unwrap();
    pod.kill().await;
    assert!(!pod.is_running());
    assert!(
        get(&c, &pod, "x").await.is_err(),
        "killed: the pooled connection is reset and new ones refused"
    );
    assert!(get(&client(false), &pod, "x").await.is_err());
    pod.restart().await.expect("restart");
    assert_eq!(get(&client(false), &pod, "x").await.unwrap().0, 200);
}

#[tokio::test]
async fn loopback_addresses_are_distinct() {
    let a = PodServer::start_on_loopback("a", 8080, labels())
        .await
        .expect("pod");
    let b = PodServer::start_on_loopback("b", 8080, labels())
        .await
        .expect("pod");
    assert_ne!(a.addr().ip(), b.addr().ip());
    assert_eq!((a.addr().port(), b.addr().port()), (8080, 8080));
}

/// `pods/{name}/portforward` over WebSocket, as kube-rs's `Portforwarder` speaks it:
/// bytes reach the Pod's server and its answer comes back; without `create` on
/// `pods/portforward` the API refuses.
#[tokio::test]
async fn port_forward_reaches_the_pod() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::Api;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let cluster = rudder_testkit::TestCluster::builder()
        .service("hello-svc")
        .pod_prefix("hello-world")
        .replicas(1)
        .start()
        .await
        .expect("cluster");
    let pods: Api<Pod> = Api::default_namespaced(cluster.api().client().await.unwrap());
    let mut pf = pods
        .portforward("hello-world-1", &[8080])
        .await
        .expect("port-forward");
    let mut stream = pf.take_stream(8080).expect("stream");
    stream
        .write_all(b"GET /through HTTP/1.1\r\nHost: hello-svc\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("hello-world-1") && answer.contains("/through"),
        "{answer}"
    );
    drop(stream);
    let _ = pf.join().await;

    // A reader of Pods may not forward to them.
    cluster.api().add_token(
        "pod-reader",
        rudder_testkit::Access::rules([rudder_testkit::Rule::new(
            ["get", "list", "watch"],
            ["pods"],
        )]),
    );
    let reader: Api<Pod> =
        Api::default_namespaced(cluster.api().client_with_token("pod-reader").await.unwrap());
    let Err(err) = reader.portforward("hello-world-1", &[8080]).await else {
        panic!("a reader of Pods forwarded to one");
    };
    assert!(
        err.to_string().contains("pods/portforward") || err.to_string().contains("403"),
        "{err}"
    );
}
