//! Fault injection behaves as documented, through a real client.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use rudder_testkit::{Access, ApiServer, Rule};

use super::support::{open_watch, send};

async fn no_retry_client(server: &ApiServer) -> kube::Client {
    let mut config = server.kube_config().await.expect("config");
    config.default_retry = false;
    kube::Client::try_from(config).expect("client")
}

#[tokio::test]
async fn fail_next_answers_with_the_chosen_status_then_recovers() {
    let server = ApiServer::start().await.expect("server");
    let pods: Api<Pod> = Api::default_namespaced(no_retry_client(&server).await);
    server
        .faults()
        .fail_next(2, http::StatusCode::INTERNAL_SERVER_ERROR);
    for _ in 0..2 {
        let err = pods.list(&ListParams::default()).await.unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 500),
            "{err:?}"
        );
    }
    pods.list(&ListParams::default())
        .await
        .expect("third request succeeds");

    server
        .faults()
        .fail_next(1, http::StatusCode::TOO_MANY_REQUESTS);
    let raw = send(
        &no_retry_client(&server).await,
        "GET",
        "/api/v1/namespaces/default/pods",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(raw.status, 429);
    assert_eq!(
        raw.headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert_eq!(raw.json()["reason"], "TooManyRequests");
}

#[tokio::test]
async fn request_count_and_latency() {
    let server = ApiServer::start().await.expect("server");
    let client = no_retry_client(&server).await;
    let before = server.request_count();
    server.faults().set_latency(Duration::from_millis(200));
    let t = tokio::time::Instant::now();
    send(&client, "GET", "/api/v1/namespaces", None, None, None).await;
    assert!(t.elapsed() >= Duration::from_millis(200), "latency applied");
    assert_eq!(server.request_count() - before, 1);
    server.faults().clear();
}

#[tokio::test]
async fn stalled_watches_send_nothing_until_resumed() {
    let server = ApiServer::builder()
        .bookmark_interval(Duration::from_millis(20))
        .start()
        .await
        .expect("server");
    let client = server.client().await.unwrap();
    server.faults().stall_watches(true);
    let rv = server.resource_version();
    let watch = open_watch(
        &client,
        &format!("/api/v1/namespaces?watch=true&allowWatchBookmarks=true&resourceVersion={rv}"),
        None,
    )
    .await;
    // Writes and bookmark ticks while stalled produce nothing …
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let obj = serde_json::from_value(serde_json::json!({"metadata": {"name": "stalled"}})).unwrap();
    ns.create(&Default::default(), &obj).await.unwrap();
    // … and on resume the event arrives; then the stream is dropped to read it.
    server.faults().stall_watches(false);
    server.faults().drop_watches();
    let events = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap()
        .unwrap();
    let added: Vec<_> = events.iter().filter(|e| e["type"] == "ADDED").collect();
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["object"]["metadata"]["name"], "stalled");
}

#[tokio::test]
async fn stop_and_restart_keep_the_data_and_the_port() {
    let server = ApiServer::start().await.expect("server");
    let addr = server.addr();
    let client = no_retry_client(&server).await;
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let obj = serde_json::from_value(serde_json::json!({"metadata": {"name": "kept"}})).unwrap();
    ns.create(&Default::default(), &obj).await.unwrap();
    server.stop().await;
    assert!(!server.is_serving());
    assert!(
        ns.get("kept").await.is_err(),
        "a stopped server refuses connections"
    );
    server.restart().await.expect("restart");
    assert_eq!(server.addr(), addr);
    assert!(ns.get("kept").await.is_ok(), "data survives a restart");
}

#[tokio::test]
async fn restricted_tokens_get_403_outside_their_rules() {
    let server = ApiServer::start().await.expect("server");
    server.add_token(
        "reader",
        Access::rules([Rule::new(["list"], ["pods"]).in_namespace("default")]).user("reader"),
    );
    let client = server.client_with_token("reader").await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.list(&ListParams::default()).await.expect("allowed");
    let err = pods.get("x").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403 && s.message.contains("User \"reader\" cannot get resource \"pods\"")),
        "{err:?}"
    );
    let err = Api::<Pod>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_wrong_ca_is_refused() {
    let server = ApiServer::start().await.expect("server");
    let other = ApiServer::start().await.expect("server");
    let mut config = server.kube_config().await.unwrap();
    config.root_cert = other.kube_config().await.unwrap().root_cert;
    let client = kube::Client::try_from(config).unwrap();
    let err = Api::<Pod>::default_namespaced(client)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    let text = format!("{err:?}");
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "{text}"
    );
}

#[tokio::test]
async fn debug_output_hides_the_token() {
    let server = ApiServer::builder()
        .token("very-secret-token")
        .start()
        .await
        .expect("server");
    assert!(!format!("{server:?}").contains("very-secret-token"));
    assert_eq!(server.token(), "very-secret-token");
}
