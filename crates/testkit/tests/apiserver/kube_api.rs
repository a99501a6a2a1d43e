//! The server driven through `kube::Api` and `kube::runtime`, as discovery will use it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use rudder_testkit::{ApiServer, TestCluster};
use serde_json::json;

use super::support::open_watch;

/// Bounds every wait on an event, so a broken server fails the test instead of hanging it.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))
    .expect("pod")
}

#[tokio::test]
async fn typed_api_crud_and_selectors() {
    let server = ApiServer::start().await.expect("server");
    let pods: Api<Pod> = Api::default_namespaced(server.client().await.expect("client"));
    for (name, version) in [("a", "4.1"), ("b", "4.2"), ("c", "4.2")] {
        pods.create(
            &PostParams::default(),
            &pod(name, &[("app", "biz1"), ("version", version)]),
        )
        .await
        .expect("create");
    }
    let names = |l: kube::api::ObjectList<Pod>| {
        l.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("version=4.2"))
                .await
                .unwrap()
        ),
        ["b", "c"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("version notin (4.2)"))
                .await
                .unwrap()
        ),
        ["a"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("metadata.name=c"))
                .await
                .unwrap()
        ),
        ["c"]
    );

    // Pagination with kube's own continue handling.
    let page = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().expect("continue token");
    let rest = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(rest), ["c"]);

    // Optimistic concurrency: a replace from a stale copy is a 409 Conflict.
    let stale = pods.get("a").await.unwrap();
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    let err = pods
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    // An invalid label is a 422 naming the field.
    let err = pods
        .create(
            &PostParams::default(),
            &pod("bad", &[("app", "bad value!")]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422 && s.message.contains("metadata.labels")),
        "{err:?}"
    );

    // Pod specs are immutable but for images (and a few more).
    let err = pods
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": "node-a"}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422 && s.message.contains("pod updates may not change")),
        "{err:?}"
    );
    let image = json!({"spec": {"containers": [{"name": "app", "image": "app:2"}]}});
    let b = pods
        .patch("b", &PatchParams::default(), &Patch::Strategic(image))
        .await
        .unwrap();
    assert_eq!(
        b.metadata.generation,
        Some(2),
        "a spec change bumps the generation"
    );
    let err = pods.get("missing").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
    pods.delete("c", &DeleteParams::default()).await.unwrap();
    assert!(
        pods.get_opt("c").await.unwrap().is_none(),
        "unscheduled Pods go at once"
    );
}

#[tokio::test]
async fn graceful_pod_deletion_keeps_the_pod_terminating() {
    let cluster = TestCluster::builder()
        .service("web")
        .replicas(2)
        .start()
        .await
        .expect("cluster");
    let pods: Api<Pod> = Api::default_namespaced(cluster.api().client().await.unwrap());
    cluster.delete_pod("web-1", 30).await.unwrap();
    let p = pods.get("web-1").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
    cluster.api().settled().await;
    // Terminating but still Ready: serving, not ready, in the slice.
    let slices: Api<EndpointSlice> = Api::default_namespaced(cluster.api().client().await.unwrap());
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    let eps: Vec<_> = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.clone())
        .collect();
    let web1 = eps
        .iter()
        .find(|e| e.target_ref.as_ref().and_then(|t| t.name.as_deref()) == Some("web-1"))
        .expect("web-1 endpoint");
    let c = web1.conditions.as_ref().unwrap();
    assert_eq!(
        (c.ready, c.serving, c.terminating),
        (Some(false), Some(true), Some(true))
    );
    cluster.delete_pod("web-1", 0).await.unwrap();
    assert!(pods.get_opt("web-1").await.unwrap().is_none());
}

/// `kube::runtime::watcher` over EndpointSlices: the initial list, then changes as Pods
/// come and go, then a full relist after the watch is answered with 410 Gone.
#[tokio::test]
async fn runtime_watcher_follows_endpoints_and_recovers_from_410() {
    let mut cluster = TestCluster::builder()
        .service("hello-svc")
        .label("app", "hello-world")
        .replicas(3)
        .start()
        .await
        .expect("cluster");
    let slices: Api<EndpointSlice> = Api::default_namespaced(cluster.api().client().await.unwrap());
    let config = watcher::Config::default().labels("kubernetes.io/service-name=hello-svc");
    let mut stream = watcher::watcher(slices, config).boxed();
    let count = |s: &EndpointSlice| {
        s.endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count()
    };

    let mut init = 0;
    loop {
        match within("initial list", stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Init => {}
            Event::InitApply(s) => init += count(&s),
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(init, 3);

    let labels = BTreeMap::from([("app".to_string(), "hello-world".to_string())]);
    cluster.add_pod("hello-world-4", labels).await.unwrap();
    loop {
        if let Event::Apply(s) = within("the new endpoint", stream.try_next())
            .await
            .unwrap()
            .unwrap()
            && count(&s) == 4
        {
            break;
        }
    }

    // Answer the next watch with 410 and end the current one: the watcher relists.
    cluster.api().faults().expire_next_watch();
    cluster.api().faults().drop_watches();
    let mut relisted = 0;
    loop {
        match within("the relist", stream.next()).await.expect("stream") {
            Ok(Event::Init) => relisted = 0,
            Ok(Event::InitApply(s)) => relisted += count(&s),
            Ok(Event::InitDone) => break,
            Ok(_) | Err(_) => {}
        }
    }
    assert_eq!(relisted, 4);
}

#[tokio::test]
async fn metadata_watcher_sees_pod_labels() {
    let cluster = TestCluster::builder()
        .service("biz1")
        .label("app", "biz1")
        .replicas(2)
        .start()
        .await
        .expect("cluster");
    // `Api<PartialObjectMeta<_>>` makes metadata-only requests (kube's metadata watcher).
    let pods: Api<PartialObjectMeta<Pod>> =
        Api::default_namespaced(cluster.api().client().await.unwrap());
    let mut stream = watcher::watcher(pods, watcher::Config::default().labels("app=biz1")).boxed();
    let mut seen = Vec::new();
    loop {
        match within("metadata list", stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Event::InitApply(m) => seen.push(m.metadata.name.unwrap_or_default()),
            Event::InitDone => break,
            _ => {}
        }
    }
    seen.sort();
    assert_eq!(seen, ["biz1-1", "biz1-2"]);
    cluster
        .label_pod(
            "biz1-1",
            BTreeMap::from([("version".to_string(), Some("4.2".to_string()))]),
        )
        .await
        .unwrap();
    loop {
        if let Event::Apply(m) = within("relabel", stream.try_next()).await.unwrap().unwrap()
            && m.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("version"))
                .map(String::as_str)
                == Some("4.2")
        {
            break;
        }
    }
}

#[tokio::test]
async fn streaming_lists_work_with_the_runtime_watcher() {
    let cluster = TestCluster::builder()
        .service("s")
        .replicas(2)
        .start()
        .await
        .expect("cluster");
    let pods: Api<Pod> = Api::default_namespaced(cluster.api().client().await.unwrap());
    let mut stream = watcher::watcher(pods, watcher::Config::default().streaming_lists()).boxed();
    let mut n = 0;
    loop {
        match within("streamed list", stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Event::InitApply(_) => n += 1,
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(n, 2);
}

#[tokio::test]
async fn bookmarks_arrive_at_the_configured_interval() {
    let server = ApiServer::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await
        .expect("server");
    let client = server.client().await.unwrap();
    let rv = server.resource_version();
    let handle = open_watch(&client, &format!("/api/v1/namespaces/default/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion={rv}"), None).await;
    let events = within("watch timeout", handle).await.unwrap();
    assert!(
        !events.is_empty(),
        "a 1 s watch with 50 ms bookmarks gets bookmarks"
    );
    for e in &events {
        assert_eq!(e["type"], "BOOKMARK");
        assert_eq!(e["object"]["kind"], "Pod");
        assert_eq!(e["object"]["spec"]["containers"], serde_json::Value::Null);
    }
}

#[tokio::test]
async fn loopback_endpoints_are_refused_by_default_like_a_real_cluster() {
    let api = ApiServer::start().await.unwrap();
    let slices: Api<EndpointSlice> = Api::default_namespaced(api.client().await.unwrap());
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "loopback-1", "labels": {"kubernetes.io/service-name": "loopback"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"]}],
        "ports": [{"port": 8080}],
    }))
    .unwrap();
    let err = slices
        .create(&PostParams::default(), &slice)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message
                    .contains("may not be in the loopback range (127.0.0.0/8, ::1/128)"),
                "{}",
                s.message
            );
        }
        other => panic!("expected a 422 Status, got {other}"),
    }
    // Opted in, the same object is accepted.
    let api = ApiServer::builder()
        .allow_loopback_endpoints(true)
        .start()
        .await
        .unwrap();
    let slices: Api<EndpointSlice> = Api::default_namespaced(api.client().await.unwrap());
    slices.create(&PostParams::default(), &slice).await.unwrap();
}

#[tokio::test]
async fn fields_of_the_wrong_type_are_refused_on_create_and_patch() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().await.expect("client");
    let path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
    let slice = |ready: serde_json::Value| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": ready}}],
        })
        .to_string()
    };
    // A string where the API has a boolean: refused, naming the kind, nothing stored.
    let refused = super::support::send(
        &client,
        "POST",
        path,
        None,
        Some("application/json"),
        Some(&slice(json!("yes"))),
    )
    .await;
    assert_eq!(refused.status, http::StatusCode::BAD_REQUEST);
    let message = refused.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message
            .starts_with("EndpointSlice in version \"v1\" cannot be handled as a EndpointSlice:"),
        "{message}"
    );
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    assert!(slices.get_opt("web-1").await.expect("get").is_none());

    // The right type is stored; a patch that makes it wrong is refused and changes nothing.
    let created = super::support::send(
        &client,
        "POST",
        path,
        None,
        Some("application/json"),
        Some(&slice(json!(true))),
    )
    .await;
    assert_eq!(created.status, http::StatusCode::CREATED);
    let patch = json!({"endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": 1}}]});
    let err = slices
        .patch("web-1", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect_err("a number is not a boolean");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.reason == "Invalid"),
        "{err:?}"
    );
    let stored = slices.get("web-1").await.expect("get");
    assert_eq!(
        stored.endpoints[0]
            .conditions
            .as_ref()
            .and_then(|c| c.ready),
        Some(true)
    );
}

/// A JSON patch copies the stored object into the memory of a version the history forgot
/// (when nothing else holds it). With two events of history, nearly every patch here does,
/// into a version of the other slice, which has another shape (3 endpoints against 5,
/// other labels): each answer and each read must still be exactly the patched object.
#[tokio::test]
async fn json_patches_give_the_patched_object_when_copies_reuse_forgotten_versions() {
    let server = ApiServer::builder()
        .history(2)
        .controllers(false)
        .start()
        .await
        .expect("server");
    let client = server.client().await.expect("client");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let shapes = [("shape-a", 3usize), ("shape-b", 5usize)];
    for (name, n) in shapes {
        let endpoints: Vec<_> = (0..n)
            .map(|j| {
                json!({"addresses": [format!("10.9.{n}.{j}")], "conditions": {"ready": true},
                            "nodeName": format!("node-{j}")})
            })
            .collect();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 80}], "endpoints": endpoints,
        }))
        .expect("slice");
        slices
            .create(&PostParams::default(), &slice)
            .await
            .expect("create");
    }
    for round in 0..24usize {
        let (name, n) = shapes[round % 2];
        let before = slices.get(name).await.expect("get");
        let (k, ready) = (round % n, round % 3 == 0);
        let body = serde_json::to_vec(&json!([
            {"op": "replace", "path": format!("/endpoints/{k}/conditions/ready"), "value": ready},
            {"op": "add", "path": "/metadata/labels/round", "value": round.to_string()},
        ]))
        .expect("patch");
        let request = http::Request::patch(format!(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{name}"
        ))
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(body)
        .expect("request");
        let answered: EndpointSlice = client.request(request).await.expect("json patch");
        let mut expected = before.clone();
        let conditions = expected.endpoints[k]
            .conditions
            .get_or_insert_with(Default::default);
        // A change outside the metadata takes the generation one further.
        if conditions.ready != Some(ready) {
            expected.metadata.generation = before.metadata.generation.map(|g| g + 1);
        }
        conditions.ready = Some(ready);
        expected
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("round".into(), round.to_string());
        expected.metadata.resource_version = answered.metadata.resource_version.clone();
        assert_eq!(answered, expected, "round {round}: the answer to the patch");
        assert_eq!(
            slices.get(name).await.expect("get"),
            expected,
            "round {round}: the stored slice"
        );
    }
}
