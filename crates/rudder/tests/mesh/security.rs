//! Credentials and permissions: the RBAC manifest in `deploy/` is enough, missing
//! permissions degrade as documented, TLS is verified, and tokens never leak into `Debug`.

use rudder::{MeshError, MeshLayer};
use rudder_testkit::{Access, Rule};
use tower::Layer;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rbac_manifest_is_enough_for_routing_and_subsets() {
    let cluster = biz1(1, 1).await;
    cluster
        .api()
        .add_token("rudder-client", Access::rules(manifest_rules()));
    let client = cluster
        .api()
        .client_with_token("rudder-client")
        .await
        .unwrap();
    let layer = MeshLayer::builder(client)
        .trust_subset_header()
        .build()
        .unwrap();
    let mut mesh = layer.layer(h1());
    let mut r = req("http://biz1:8080/");
    r.headers_mut()
        .insert("x-rudder-subset", "version=4.2".parse().unwrap());
    let reply = get(&mut mesh, r).await.expect("routed with label subsets");
    assert_eq!(reply.labels["version"], "4.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pod_access_routing_continues_without_label_subsets() {
    let cluster = biz1(1, 1).await;
    let no_pods = Access::rules([Rule::new(
        ["get", "list", "watch"],
        ["services", "endpointslices"],
    )]);
    cluster.api().add_token("no-pods", no_pods);
    let client = cluster.api().client_with_token("no-pods").await.unwrap();
    let layer = MeshLayer::builder(client)
        .trust_subset_header()
        .build()
        .unwrap();
    let mut mesh = layer.layer(h1());
    let counts = spread(&mut mesh, 50, || req("http://biz1:8080/")).await;
    assert_eq!(counts.len(), 2, "both Pods still get traffic: {counts:?}");
    let mut r = req("http://biz1:8080/");
    r.headers_mut()
        .insert("x-rudder-subset", "version=4.2".parse().unwrap());
    let err = get(&mut mesh, r).await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<MeshError>(),
            Some(MeshError::NoEndpoints { .. })
        ),
        "label subsets are empty without Pod labels: {err}"
    );
    // The refused Pod watch is off, not an outage: nothing is stale.
    let view = layer.view("biz1:8080").unwrap();
    assert_eq!(view.staleness, std::time::Duration::ZERO, "{view:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_on_endpointslices_is_not_taken_for_absence() {
    let cluster = hello(2).await;
    let no_slices = Access::rules([Rule::new(
        ["get", "list", "watch"],
        ["services", "endpoints", "pods"],
    )]);
    cluster.api().add_token("no-slices", no_slices);
    let client = cluster.api().client_with_token("no-slices").await.unwrap();
    // The default source does not switch to v1 Endpoints on a 403: the refusal is the
    // answer, named in the error of a full name.
    let layer = MeshLayer::builder(client.clone())
        .trust_subset_header()
        .build()
        .unwrap();
    let mut mesh = layer.layer(h1());
    let err = get(&mut mesh, req("http://hello-svc.default.svc:8080/"))
        .await
        .unwrap_err();
    match err.downcast_ref::<MeshError>() {
        Some(MeshError::Forbidden { message, .. }) => {
            assert!(message.contains("endpointslices"), "{message}")
        }
        _ => panic!("expected Forbidden, got {err}"),
    }
    // Chosen explicitly, v1 Endpoints serve.
    let layer = MeshLayer::builder(client)
        .trust_subset_header()
        .discovery(|d| d.source(rudder::DiscoverySource::Endpoints))
        .build()
        .unwrap();
    let counts = spread(&mut layer.layer(h1()), 50, || req("http://hello-svc:8080/")).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_a_clear_error_not_a_downgrade() {
    let cluster = hello(1).await;
    let other = rudder_testkit::ApiServer::start().await.unwrap();
    let mut config = cluster.api().kube_config().await.unwrap();
    config.root_cert = other.kube_config().await.unwrap().root_cert;
    let client = kube::Client::try_from(config).unwrap();
    let layer = MeshLayer::builder(client)
        .trust_subset_header()
        .sync_timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let err = get(&mut layer.layer(h1()), req("http://hello-svc:8080/"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err.downcast_ref::<MeshError>(),
            Some(MeshError::NotSynced {
                last_error: Some(_),
                ..
            })
        ),
        "{text}"
    );
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "the error names the TLS failure: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_show_in_debug_output() {
    let cluster = hello(1).await;
    cluster
        .api()
        .add_token("very-secret-token-1234", Access::admin());
    let client = cluster
        .api()
        .client_with_token("very-secret-token-1234")
        .await
        .unwrap();
    let builder = MeshLayer::builder(client).trust_subset_header();
    assert!(!format!("{builder:?}").contains("very-secret-token-1234"));
    let layer = builder.build().unwrap();
    let mesh = layer.layer(h1());
    get(&mut mesh.clone(), req("http://hello-svc:8080/"))
        .await
        .unwrap();
    for text in [
        format!("{layer:?}"),
        format!("{mesh:?}"),
        format!("{:?}", layer.views()),
    ] {
        assert!(!text.contains("very-secret-token-1234"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subset_header_is_ignored_unless_trusted() {
    let cluster = biz1(1, 1).await;
    let layer = MeshLayer::builder(cluster.api().client().await.unwrap())
        .build()
        .unwrap();
    let mut mesh = layer.layer(h1());
    // A caller asking for a subset that does not exist would get NoEndpoints if the header
    // were read; by default it is not, and both Pods serve.
    let counts = spread(&mut mesh, 50, || {
        let mut r = req("http://biz1:8080/");
        r.headers_mut()
            .insert("x-rudder-subset", "version=9.9".parse().unwrap());
        r
    })
    .await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    // The request extension, which only code can set, still chooses.
    let mut r = req("http://biz1:8080/");
    r.extensions_mut()
        .insert(rudder::Subset::new("version=4.2".parse().unwrap()));
    assert_eq!(get(&mut mesh, r).await.unwrap().labels["version"], "4.2");
}
