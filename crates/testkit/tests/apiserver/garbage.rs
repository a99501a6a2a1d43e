//! Garbage at every route: the server answers with a `Status` (or the mux's 404), never
//! panics, never hangs, and keeps serving.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::support::send;

const PATHS: &[&str] = &[
    "/api",
    "/apis",
    "/api/v1",
    "/version",
    "/openapi/v3",
    "/api/v1/namespaces",
    "/api/v1/namespaces/default",
    "/api/v1/namespaces/default/status",
    "/api/v1/nodes",
    "/api/v1/nodes/n",
    "/api/v1/nodes/n/status",
    "/api/v1/pods",
    "/api/v1/namespaces/default/pods",
    "/api/v1/namespaces/default/pods/p",
    "/api/v1/namespaces/default/pods/p/status",
    "/api/v1/namespaces/default/pods/p/log",
    "/api/v1/namespaces/default/services/s",
    "/api/v1/namespaces/default/endpoints/e",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/x",
    "/api/v1/namespaces/default/events",
    "/api/v1/namespaces//pods",
    "/api/v1/namespaces/%ff/pods",
    "/nope/../api",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"];
const QUERIES: &[&str] = &[
    "",
    "?watch=true&timeoutSeconds=1",
    "?labelSelector=%28%28",
    "?labelSelector=a%20in%20(",
    "?fieldSelector=x",
    "?limit=-1",
    "?limit=99999999999999999999",
    "?continue=%00%01",
    "?resourceVersion=-5",
    // (A future version waits 3 s for a 504; the golden tests cover it.)
    "?watch=1&resourceVersion=0&timeoutSeconds=1&sendInitialEvents=true",
    "?gracePeriodSeconds=abc",
    "?dryRun=All",
    "?fieldValidation=Strict",
];
const TYPES: &[&str] = &[
    "application/json",
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
    "text/plain",
];

fn garbage_body(rng: &mut impl Rng) -> String {
    let shapes = [
        String::new(),
        "{".into(),
        "null".into(),
        "[]".into(),
        "42".into(),
        r#"{"metadata":{"name":12}}"#.into(),
        r#"{"metadata":{"name":"x","labels":{"a":5}},"spec":[]}"#.into(),
        r#"{"kind":"Pod","metadata":{"name":"x"},"spec":{"containers":"no"}}"#.into(),
        r#"[{"op":"remove","path":"/metadata"}]"#.into(),
        r#"[{"op":"bogus"}]"#.into(),
        r#"{"metadata":{"name":"ok-name"},"addressType":"IPv4","endpoints":[{"addresses":["999.1.1.1"]}]}"#.into(),
        r#"{"metadata":{"name":"ok-name"},"subsets":[{"addresses":[{"ip":"::1"}],"ports":[{"port":70000}]}]}"#.into(),
        "\u{0}\u{1}\u{2}".into(),
        "x".repeat(2000),
    ];
    let mut body = shapes[rng.random_range(0..shapes.len())].clone();
    if rng.random_bool(0.2) {
        let cut = rng.random_range(0..=body.len());
        let cut = (0..=cut)
            .rev()
            .find(|i| body.is_char_boundary(*i))
            .unwrap_or(0);
        body.truncate(cut);
    }
    body
}

#[tokio::test]
async fn garbage_never_breaks_the_server() {
    let server = rudder_testkit::ApiServer::start().await.expect("server");
    let mut config = server.kube_config().await.unwrap();
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..1500 {
        let path = format!(
            "{}{}",
            PATHS[rng.random_range(0..PATHS.len())],
            QUERIES[rng.random_range(0..QUERIES.len())]
        );
        let method = METHODS[rng.random_range(0..METHODS.len())];
        let ct = TYPES[rng.random_range(0..TYPES.len())];
        let body = garbage_body(&mut rng);
        let raw = tokio::time::timeout(
            Duration::from_secs(10),
            send(&client, method, &path, None, Some(ct), Some(&body)),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} {path} hung"));
        *statuses.entry(raw.status.as_u16()).or_insert(0u32) += 1;
        assert!(
            raw.status.as_u16() < 500 || raw.status == 500 && path.contains("watch"),
            "{method} {path} {:?}: {}",
            &body[..body.len().min(80)],
            raw.status
        );
        if raw.status.is_client_error()
            && !raw.body.starts_with(b"404 page not found")
            && method != "HEAD"
        {
            let status: serde_json::Value = serde_json::from_slice(&raw.body)
                .unwrap_or_else(|e| panic!("{method} {path}: not a Status ({e})"));
            assert_eq!(status["kind"], "Status", "{method} {path}");
            assert_eq!(status["code"], raw.status.as_u16(), "{method} {path}");
        }
    }
    // Still serving, and the errors were varied.
    let ok = send(&client, "GET", "/api/v1/namespaces", None, None, None).await;
    assert_eq!(ok.status, 200);
    assert!(statuses.len() >= 6, "{statuses:?}");
}
