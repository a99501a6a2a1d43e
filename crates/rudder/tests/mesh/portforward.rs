//! From outside the cluster: the Mesh picks Pods as always and reaches them through the API
//! server's `pods/portforward` tunnels (feature `port-forward`).

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rudder::{MeshLayer, PortForward, PortForwardConnector};
use tower::Layer;

use super::support::*;

type Tunnelled = rudder::Mesh<Client<PortForwardConnector, rudder::ReplayBody<Empty<Bytes>>>>;

fn through_tunnels(kube: kube::Client, builder: rudder::MeshBuilder) -> (MeshLayer, Tunnelled) {
    let pf = PortForward::new(kube);
    let http = Client::builder(TokioExecutor::new()).build(pf.connector());
    let layer = builder
        .port_forward(pf)
        .algorithm(rudder::Algorithm::WeightedRoundRobin)
        .build()
        .unwrap();
    let mesh = layer.layer(http);
    (layer, mesh)
}

fn forwards(cluster: &rudder_testkit::TestCluster) -> u64 {
    cluster
        .api()
        .traffic()
        .get(&("pods".to_string(), "create".to_string()))
        .map_or(0, |t| t.requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_every_pod_through_port_forward_tunnels() {
    let cluster = hello(3).await;
    // The admin token: the deploy/rbac.yaml Role grants no pods/portforward (it is for
    // clients in the cluster).
    let kube = cluster.api().client().await.unwrap();
    let builder = MeshLayer::builder(kube.clone());
    let (layer, mut mesh) = through_tunnels(kube, builder);
    let before = forwards(&cluster);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..1_000 {
        let reply = get(&mut mesh, req("http://hello-svc:8080/"))
            .await
            .expect("request");
        assert_eq!(reply.authority.as_deref(), Some("hello-svc:8080"));
        *counts.entry(reply.pod).or_default() += 1;
    }
    let n = counts.values().map(|c| *c as f64).collect::<Vec<_>>();
    let jain =
        n.iter().sum::<f64>().powi(2) / (n.len() as f64 * n.iter().map(|x| x * x).sum::<f64>());
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(jain >= 0.9, "Jain {jain}: {counts:?}");
    let tunnels = forwards(&cluster) - before;
    assert!(
        (3..=30).contains(&tunnels),
        "pooled tunnels, not one per request: {tunnels}"
    );

    // A Pod deleted mid-run gets no new tunnel (and no request) once it left.
    let gone = cluster.pods()[0].name().to_string();
    cluster.delete_pod(&gone, 0).await.unwrap();
    tokio::time::timeout(BOUND, async {
        while layer.view("hello-svc:8080").is_none_or(|v| {
            v.endpoints
                .iter()
                .any(|e| e.pod.as_deref() == Some(gone.as_str()))
        }) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the Pod left");
    for _ in 0..200 {
        let reply = get(&mut mesh, req("http://hello-svc:8080/"))
            .await
            .expect("request");
        assert_ne!(reply.pod, gone);
    }
    // Its tunnels were closed when it left (the Pod server sees its connections go).
    let server = cluster.pod(&gone).expect("still running");
    tokio::time::timeout(BOUND, async {
        while server.open_connections() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the departed Pod's tunnels close");
    assert!(
        cluster.pods()[1].open_connections() > 0,
        "Pods in use keep theirs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subset_goes_only_to_its_pods_and_a_missing_permission_is_named() {
    let cluster = biz1(2, 2).await;
    let kube = cluster.api().client().await.unwrap();
    let (_layer, mut mesh) = through_tunnels(
        kube,
        MeshLayer::builder(cluster.api().client().await.unwrap()),
    );
    for _ in 0..100 {
        let mut r = req("http://biz1:8080/");
        r.extensions_mut()
            .insert("version=4.2".parse::<rudder::Subset>().unwrap());
        let reply = get(&mut mesh, r).await.expect("request");
        assert_eq!(reply.labels.get("version").map(String::as_str), Some("4.2"));
    }

    // The Role of deploy/rbac.yaml: discovery works, tunnels are refused, and the error
    // says what to grant.
    let (_layer, mut mesh) = through_tunnels(
        rbac_client(&cluster).await,
        MeshLayer::builder(rbac_client(&cluster).await),
    );
    let err = get(&mut mesh, req("http://biz1:8080/"))
        .await
        .expect_err("no pods/portforward");
    let mut chain = format!("{err}");
    let mut cur = err.source();
    while let Some(e) = cur {
        chain.push_str(&format!(": {e}"));
        cur = e.source();
    }
    assert!(chain.contains("create on pods/portforward"), "{chain}");
}

/// One set-up for both transports: `Transport::auto()` picks direct inside a cluster and
/// tunnels outside; either connector serves the same Mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_transport_serves_the_same_mesh() {
    use rudder::Transport;
    let expected = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        Transport::Direct
    } else {
        Transport::PortForward
    };
    assert_eq!(Transport::auto(), expected);
    let cluster = hello(2).await;
    for (transport, tunnels) in [(Transport::Direct, false), (Transport::PortForward, true)] {
        let kube = cluster.api().client().await.unwrap();
        let pf = PortForward::new(kube.clone());
        let http = Client::builder(TokioExecutor::new()).build(pf.connector_for(transport));
        let layer = MeshLayer::builder(kube).port_forward(pf).build().unwrap();
        let mut mesh = layer.layer(http);
        let before = forwards(&cluster);
        for _ in 0..20 {
            get(&mut mesh, req("http://hello-svc:8080/"))
                .await
                .expect("request");
        }
        assert_eq!(forwards(&cluster) > before, tunnels, "{transport:?}");
    }
}

/// The transport chosen in `MeshConfig`; `MeshLayer::connector()` matches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_can_come_from_the_config() {
    let cluster = hello(2).await;
    for (json, tunnels) in [
        (r#"{"transport": "direct"}"#, false),
        (r#"{"transport": "port_forward"}"#, true),
    ] {
        let config: rudder::MeshConfig = serde_json::from_str(json).unwrap();
        let layer = MeshLayer::builder(cluster.api().client().await.unwrap())
            .config(&config)
            .unwrap()
            .build()
            .unwrap();
        let http = Client::builder(TokioExecutor::new()).build(layer.connector());
        let mut mesh = layer.layer(http);
        let before = forwards(&cluster);
        for _ in 0..10 {
            get(&mut mesh, req("http://hello-svc:8080/"))
                .await
                .expect("request");
        }
        assert_eq!(forwards(&cluster) > before, tunnels, "{json}");
    }
    let config: rudder::MeshConfig =
        serde_json::from_str(r#"{"transport": "port_forward"}"#).unwrap();
    let err = MeshLayer::builder_static().config(&config).unwrap_err();
    assert!(matches!(err, rudder::ConfigError::Transport(..)), "{err}");
}
