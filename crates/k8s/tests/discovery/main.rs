//! Discovery end to end: `rudder_k8s::Discovery` over `kube::Client` against the
//! `rudder-testkit` API server, with Pods coming, going, failing readiness, terminating and
//! changing labels, and the API failing in every way it can.

mod replay;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use rudder_balance::{EndpointSet, Readiness, ServiceState};
use rudder_k8s::{Discovery, Source, Subscription};
use rudder_testkit::TestCluster;
use serde_json::json;

pub(crate) const BOUND: Duration = Duration::from_secs(20);

/// Waits (bounded) for a snapshot satisfying `pred`, returning every snapshot seen.
async fn until(
    sub: &mut Subscription,
    what: &str,
    pred: impl Fn(&EndpointSet) -> bool,
) -> Vec<Arc<EndpointSet>> {
    let mut seen = vec![sub.current()];
    let fut = async {
        loop {
            if pred(seen.last().expect("one")) {
                return;
            }
            seen.push(sub.changed().await);
        }
    };
    tokio::time::timeout(BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}; last: {:?}", seen.last()));
    seen
}

fn ready(set: &EndpointSet) -> usize {
    set.endpoints()
        .iter()
        .filter(|e| e.readiness() == Readiness::Ready)
        .count()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn hello(replicas: usize) -> (TestCluster, Discovery, Subscription) {
    let cluster = TestCluster::builder()
        .service("hello-svc")
        .pod_prefix("hello-world")
        .label("app", "hello-world")
        .replicas(replicas)
        .start()
        .await
        .expect("cluster");
    let discovery = Discovery::new(cluster.api().client().await.expect("client"));
    let mut sub = discovery
        .subscribe_str("hello-svc.default.svc.cluster.local:8080")
        .expect("subscribe");
    let set = sub.synced(BOUND).await.expect("synced");
    assert_eq!(set.state(), &ServiceState::Active);
    (cluster, discovery, sub)
}

#[tokio::test]
async fn scale_10_to_3_to_12() {
    let (mut cluster, _d, mut sub) = hello(10).await;
    until(&mut sub, "10 ready", |s| ready(s) == 10).await;
    let addrs: Vec<_> = cluster.pods().iter().map(|p| p.addr()).collect();
    let mut got: Vec<_> = sub.current().endpoints().iter().map(|e| e.addr()).collect();
    got.sort();
    let mut want = addrs.clone();
    want.sort();
    assert_eq!(got, want, "endpoints are the Pods' own ip:port");
    for i in 4..=10 {
        cluster
            .delete_pod(&format!("hello-world-{i}"), 0)
            .await
            .unwrap();
    }
    until(&mut sub, "3 endpoints", |s| s.len() == 3).await;
    for i in 11..=19 {
        cluster
            .add_pod(
                &format!("hello-world-{i}"),
                labels(&[("app", "hello-world")]),
            )
            .await
            .unwrap();
    }
    let seen = until(&mut sub, "12 ready", |s| ready(s) == 12).await;
    assert!(
        seen.iter().all(|s| !s.is_empty()),
        "never empty while scaling"
    );
}

#[tokio::test]
async fn readiness_failure_and_recovery() {
    let (cluster, _d, mut sub) = hello(3).await;
    until(&mut sub, "3 ready", |s| ready(s) == 3).await;
    cluster.set_ready("hello-world-2", false).await.unwrap();
    let set = until(&mut sub, "2 ready", |s| ready(s) == 2)
        .await
        .pop()
        .unwrap();
    assert!(
        set.endpoints()
            .iter()
            .all(|e| e.meta().pod.as_deref() != Some("hello-world-2"))
    );
    cluster.set_ready("hello-world-2", true).await.unwrap();
    until(&mut sub, "3 ready again", |s| ready(s) == 3).await;
}

#[tokio::test]
async fn rolling_update_never_empties_the_service() {
    let (mut cluster, _d, mut sub) = hello(3).await;
    until(&mut sub, "3 ready", |s| ready(s) == 3).await;
    // Every old Pod terminates gracefully: serving while terminating.
    for i in 1..=3 {
        cluster
            .delete_pod(&format!("hello-world-{i}"), 30)
            .await
            .unwrap();
    }
    let seen = until(&mut sub, "only terminating endpoints", |s| {
        ready(s) == 0 && s.len() == 3
    })
    .await;
    assert!(
        seen.iter().all(|s| s.routable().count() > 0),
        "the serving fallback keeps it routable"
    );
    let last = seen.last().unwrap();
    assert!(
        last.routable()
            .all(|e| e.readiness() == Readiness::ServingTerminating)
    );
    assert!(
        last.endpoints()
            .iter()
            .all(|e| e.meta().deletion_deadline.is_some())
    );
    // New Pods become ready: traffic moves to them.
    for i in 4..=6 {
        cluster
            .add_pod(
                &format!("hello-world-{i}"),
                labels(&[("app", "hello-world")]),
            )
            .await
            .unwrap();
    }
    let seen = until(&mut sub, "3 new ready", |s| {
        ready(s) == 3
            && s.routable()
                .all(|e| e.meta().pod.as_deref() >= Some("hello-world-4"))
    })
    .await;
    assert!(seen.iter().all(|s| s.routable().count() > 0));
    for i in 1..=3 {
        cluster
            .delete_pod(&format!("hello-world-{i}"), 0)
            .await
            .unwrap();
    }
    until(&mut sub, "old Pods gone", |s| s.len() == 3).await;
}

#[tokio::test]
async fn pod_labels_reach_the_endpoints() {
    let (cluster, _d, mut sub) = hello(2).await;
    until(&mut sub, "labels joined", |s| {
        s.len() == 2
            && s.endpoints()
                .iter()
                .all(|e| e.labels().get("app").map(String::as_str) == Some("hello-world"))
    })
    .await;
    // Replicas with equal labels share one label set: discovery keeps each set once.
    let set = sub.current();
    let [a, b] = set.endpoints() else {
        panic!("two endpoints: {set:?}")
    };
    assert_eq!(a.labels(), b.labels());
    assert!(
        a.meta().labels.shares(&b.meta().labels),
        "equal label sets were kept twice"
    );
    cluster
        .label_pod(
            "hello-world-1",
            BTreeMap::from([("version".to_string(), Some("4.2".to_string()))]),
        )
        .await
        .unwrap();
    until(&mut sub, "version label", |s| {
        s.endpoints()
            .iter()
            .any(|e| e.labels().get("version").map(String::as_str) == Some("4.2"))
    })
    .await;
    // Relabelled out of the selector: leaves the Service.
    cluster
        .label_pod(
            "hello-world-2",
            BTreeMap::from([("app".to_string(), Some("retired".to_string()))]),
        )
        .await
        .unwrap();
    until(&mut sub, "1 endpoint", |s| s.len() == 1).await;
}

#[tokio::test]
async fn service_selector_switch_blue_green() {
    let mut cluster = TestCluster::builder()
        .service("biz1")
        .label("app", "biz1")
        .label("zone", "prod")
        .replicas(0)
        .start()
        .await
        .expect("cluster");
    for (name, version) in [
        ("biz1-v41-a", "4.1"),
        ("biz1-v41-b", "4.1"),
        ("biz1-v42-a", "4.2"),
    ] {
        cluster
            .add_pod(
                name,
                labels(&[("app", "biz1"), ("zone", "prod"), ("version", version)]),
            )
            .await
            .unwrap();
    }
    cluster
        .add_pod("biz1-nozone", labels(&[("app", "biz1")]))
        .await
        .unwrap();
    let discovery = Discovery::new(cluster.api().client().await.unwrap());
    let mut sub = discovery.subscribe_str("biz1").unwrap();
    until(&mut sub, "3 prod Pods", |s| ready(s) == 3).await;
    let services: Api<Service> = Api::default_namespaced(cluster.api().client().await.unwrap());
    let add = json!({"spec": {"selector": {"version": "4.2"}}});
    services
        .patch("biz1", &PatchParams::default(), &Patch::Merge(add))
        .await
        .unwrap();
    let set = until(&mut sub, "only 4.2", |s| s.len() == 1)
        .await
        .pop()
        .unwrap();
    assert_eq!(set.endpoints()[0].meta().pod.as_deref(), Some("biz1-v42-a"));
    until(&mut sub, "4.2 labels joined under the new selector", |s| {
        s.endpoints()
            .iter()
            .all(|e| e.labels().get("version").map(String::as_str) == Some("4.2"))
    })
    .await;
    let back = json!({"spec": {"selector": {"version": null}}});
    services
        .patch("biz1", &PatchParams::default(), &Patch::Merge(back))
        .await
        .unwrap();
    until(&mut sub, "3 again", |s| s.len() == 3).await;
}

#[tokio::test]
async fn api_failures_keep_the_last_endpoints_and_relists_cause_no_churn() {
    let (mut cluster, _d, mut sub) = hello(3).await;
    until(&mut sub, "3 ready", |s| ready(s) == 3).await;

    // Dropped watches and a 410: the watcher relists; nothing observable changes, and the
    // next real change is the first thing published.
    cluster.api().faults().expire_next_watch();
    cluster.api().faults().drop_watches();
    cluster
        .add_pod("hello-world-4", labels(&[("app", "hello-world")]))
        .await
        .unwrap();
    let seen = until(&mut sub, "4 ready", |s| ready(s) == 4).await;
    assert!(
        seen.iter().all(|s| s.len() >= 3),
        "no transient removal: {:?}",
        seen.iter().map(|s| s.len()).collect::<Vec<_>>()
    );

    // The API server goes away: the endpoints stay, and staleness grows.
    cluster.api().stop().await;
    cluster.api().faults().drop_watches();
    let stale = async {
        // Staleness is read from the shared clock, which failures update without
        // publishing a new snapshot; so this polls, bounded.
        loop {
            if sub.current().staleness() > Duration::ZERO {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(BOUND, stale)
        .await
        .expect("staleness reported");
    assert_eq!(
        ready(&sub.current()),
        4,
        "last known endpoints kept while the API is down"
    );
    cluster.api().restart().await.unwrap();
    cluster.set_ready("hello-world-1", false).await.unwrap();
    until(&mut sub, "resynced after the API returns", |s| {
        ready(s) == 3
    })
    .await;
    // Every watch heals (each on its own schedule): staleness returns to zero.
    tokio::time::timeout(BOUND, async {
        while sub.current().staleness() > Duration::ZERO {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("staleness back to zero");
}

#[tokio::test]
async fn service_deleted_and_recreated() {
    let (cluster, _d, mut sub) = hello(2).await;
    let services: Api<Service> = Api::default_namespaced(cluster.api().client().await.unwrap());
    let svc = services.get("hello-svc").await.unwrap();
    services
        .delete("hello-svc", &DeleteParams::default())
        .await
        .unwrap();
    until(&mut sub, "not found", |s| {
        s.state() == &ServiceState::NotFound
    })
    .await;
    let mut again = svc.clone();
    again.metadata = kube::api::ObjectMeta {
        name: Some("hello-svc".into()),
        ..Default::default()
    };
    if let Some(spec) = again.spec.as_mut() {
        spec.cluster_ip = None;
        spec.cluster_ips = None;
    }
    again.status = None;
    services
        .create(&PostParams::default(), &again)
        .await
        .unwrap();
    until(&mut sub, "back with 2 endpoints", |s| {
        s.state() == &ServiceState::Active && ready(s) == 2
    })
    .await;
}

#[tokio::test]
async fn external_name_and_missing_services_are_distinct_states() {
    let cluster = TestCluster::builder()
        .service("hello-svc")
        .replicas(1)
        .start()
        .await
        .expect("cluster");
    let client = cluster.api().client().await.unwrap();
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let ext = serde_json::from_value(json!({"metadata": {"name": "db"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}})).unwrap();
    services.create(&PostParams::default(), &ext).await.unwrap();
    let discovery = Discovery::new(client);
    let mut db = discovery.subscribe_str("db").unwrap();
    assert_eq!(
        db.synced(BOUND).await.unwrap().state(),
        &ServiceState::ExternalName("db.example.com".into())
    );
    let mut missing = discovery.subscribe_str("nope").unwrap();
    assert_eq!(
        missing.synced(BOUND).await.unwrap().state(),
        &ServiceState::NotFound
    );
}

#[tokio::test]
async fn one_watch_per_service_shared_and_stopped_with_the_last_subscription() {
    let (cluster, discovery, sub) = hello(2).await;
    let mut same_port = discovery.subscribe_str("hello-svc:8080").unwrap();
    let other_form = discovery.subscribe_str("hello-svc.default").unwrap();
    assert_eq!(discovery.watched_services(), 1);
    assert_eq!(same_port.synced(BOUND).await.unwrap().len(), 2);
    assert_eq!(
        other_form.current().len(),
        2,
        "the Service's only port when none is named"
    );
    let before = cluster.api().request_count();
    let extra = discovery.subscribe_str("hello-svc").unwrap();
    assert_eq!(
        cluster.api().request_count(),
        before,
        "a new subscription to a watched Service makes no request"
    );
    drop((sub, same_port, other_form, extra));
    assert_eq!(discovery.watched_services(), 0);
}

#[tokio::test]
async fn v1_endpoints_source() {
    let cluster = TestCluster::builder()
        .service("hello-svc")
        .replicas(3)
        .start()
        .await
        .expect("cluster");
    let discovery = Discovery::builder(cluster.api().client().await.unwrap())
        .source(Source::Endpoints)
        .build();
    let mut sub = discovery.subscribe_str("hello-svc").unwrap();
    until(&mut sub, "3 from Endpoints", |s| ready(s) == 3).await;
    cluster.set_ready("hello-svc-1", false).await.unwrap();
    until(&mut sub, "2 from Endpoints", |s| ready(s) == 2).await;
}

#[tokio::test]
async fn not_synced_is_a_typed_error_when_the_api_is_unreachable() {
    let cluster = TestCluster::builder()
        .service("hello-svc")
        .replicas(1)
        .start()
        .await
        .expect("cluster");
    let client = cluster.api().client().await.unwrap();
    cluster.api().stop().await;
    let discovery = Discovery::new(client);
    let mut sub = discovery.subscribe_str("hello-svc").unwrap();
    // The first attempt fails at once: no need to wait for the timeout.
    let err = sub.synced(BOUND).await.unwrap_err();
    assert!(
        matches!(err, rudder_k8s::DiscoveryError::Unreachable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("hello-svc.default"), "{err}");
    assert!(matches!(
        discovery.subscribe_str("Bad Name"),
        Err(rudder_k8s::DiscoveryError::InvalidService(_))
    ));
}

#[tokio::test]
async fn pod_watch_modes() {
    let mut cluster = TestCluster::builder()
        .service("hello-svc")
        .replicas(2)
        .start()
        .await
        .expect("cluster");
    let client = cluster.api().client().await.unwrap();
    let full = Discovery::builder(client.clone())
        .pods(rudder_k8s::PodWatch::Full)
        .build();
    let mut sub = full.subscribe_str("hello-svc").unwrap();
    let set = until(&mut sub, "labels and Ready time", |s| {
        s.len() == 2
            && s.endpoints()
                .iter()
                .all(|e| !e.labels().is_empty() && e.meta().ready_since.is_some())
    })
    .await;
    assert!(!set.is_empty());

    // The default: Pod metadata. No Ready time from the Pod: the Pods Ready at the first
    // snapshot count as long Ready (no slow start), a Pod that arrives later ramps from
    // when discovery saw it Ready.
    let meta = Discovery::new(client.clone());
    let mut sub = meta.subscribe_str("hello-svc").unwrap();
    let set = until(&mut sub, "labels from metadata", |s| {
        s.len() == 2 && s.endpoints().iter().all(|e| !e.labels().is_empty())
    })
    .await
    .pop()
    .unwrap();
    assert!(
        set.endpoints()
            .iter()
            .all(|e| e.meta().ready_since.is_none()),
        "Pods Ready at the start do not ramp"
    );
    let before = std::time::SystemTime::now();
    cluster
        .add_pod("late", labels(&[("app", "hello-svc")]))
        .await
        .expect("add");
    let set = until(&mut sub, "the late Pod", |s| s.len() == 3)
        .await
        .pop()
        .unwrap();
    let late = set
        .endpoints()
        .iter()
        .find(|e| e.meta().pod.as_deref() == Some("late"))
        .expect("late Pod");
    assert!(
        late.meta().ready_since.is_some_and(|t| t >= before),
        "a Pod that arrives later ramps from its arrival: {:?}",
        late.meta().ready_since
    );
    assert_eq!(
        set.endpoints()
            .iter()
            .filter(|e| e.meta().ready_since.is_none())
            .count(),
        2
    );

    let none = Discovery::builder(client)
        .pods(rudder_k8s::PodWatch::None)
        .build();
    let mut sub = none.subscribe_str("hello-svc").unwrap();
    let set = sub.synced(BOUND).await.unwrap();
    assert_eq!(set.len(), 3);
    assert!(set.endpoints().iter().all(|e| e.labels().is_empty()));
}

#[tokio::test]
async fn stalled_watches_are_restarted_within_the_quiet_bound() {
    let mut cluster = TestCluster::builder()
        .service("hello-svc")
        .pod_prefix("hello-world")
        .label("app", "hello-world")
        .replicas(2)
        .start()
        .await
        .unwrap();
    let discovery = Discovery::builder(cluster.api().client().await.unwrap())
        .stall_timeout(Duration::from_millis(500))
        .build();
    let mut sub = discovery.subscribe_str("hello-svc:8080").unwrap();
    until(&mut sub, "2 ready", |s| ready(s) == 2).await;
    // Streams stay open but deliver nothing, not even bookmarks; lists still answer.
    cluster.api().faults().stall_watches(true);
    cluster
        .add_pod("hello-world-3", labels(&[("app", "hello-world")]))
        .await
        .unwrap();
    let seen = until(
        &mut sub,
        "the new Pod, seen through a restarted watch",
        |s| ready(s) == 3,
    )
    .await;
    assert!(
        seen.iter().all(|s| ready(s) >= 2),
        "restarts cause no transient removal"
    );
    cluster.api().faults().stall_watches(false);
}

#[tokio::test]
async fn a_refused_watch_is_an_answer_and_rests_instead_of_retrying() {
    use rudder_testkit::{Access, Rule};
    let cluster = TestCluster::builder()
        .service("hello-svc")
        .replicas(1)
        .start()
        .await
        .expect("cluster");
    cluster.api().add_token(
        "default-only",
        Access::rules([Rule::new(
            ["get", "list", "watch"],
            ["services", "endpointslices", "pods"],
        )
        .in_namespace("default")]),
    );
    let client = cluster
        .api()
        .client_with_token("default-only")
        .await
        .unwrap();
    let discovery = Discovery::new(client);
    let before = cluster.api().request_count();
    let started = std::time::Instant::now();
    let mut sub = discovery.subscribe_str("example.com").unwrap();
    // Answered at once, as forbidden (not absent, not a timeout).
    let err = sub.synced(BOUND).await.unwrap_err();
    match &err {
        rudder_k8s::DiscoveryError::Forbidden { message, .. } => {
            assert!(message.contains("forbidden"), "{message}")
        }
        other => panic!("expected Forbidden, got {other}"),
    }
    assert!(matches!(sub.current().state(), ServiceState::Forbidden(_)));
    // The refused watches rest (30 s by default): in three seconds the API sees the
    // source probe and one list per watch, and no retry.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    let requests = cluster.api().request_count() - before;
    assert!(requests <= 3, "{requests} API requests in 3 s");
}

/// What discovery asks of the API (counted by the server): per Service one list and one
/// watch each of the Service, its slices and its Pods, every list with
/// `resourceVersion=0` (answered from a real server's watch cache), and the question
/// whether the API serves EndpointSlices once per Discovery.
#[tokio::test]
async fn lists_come_from_the_watch_cache_and_the_slices_question_is_asked_once() {
    let cluster = TestCluster::builder()
        .service("hello-svc")
        .replicas(2)
        .start()
        .await
        .expect("cluster");
    let client = cluster.api().client().await.unwrap();
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let mut other: Service = serde_json::from_value(json!({
        "metadata": {"name": "other"},
        "spec": {"selector": {"app": "hello-svc"}, "ports": [{"port": 8080}]},
    }))
    .unwrap();
    other.metadata.namespace = None;
    services
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    cluster.api().settled().await;

    let before = cluster.api().traffic();
    let discovery = Discovery::new(client);
    for name in ["hello-svc", "other"] {
        let mut sub = discovery.subscribe_str(name).unwrap();
        let set = until(&mut sub, "both Pods", |s| s.len() == 2).await;
        assert!(!set.is_empty());
    }
    let after = cluster.api().traffic();
    let lists = |resource: &str| {
        let key = (resource.to_string(), "list".to_string());
        let t = after.get(&key).copied().unwrap_or_default()
            - before.get(&key).copied().unwrap_or_default();
        (t.requests, t.any_version)
    };
    assert_eq!(
        lists("services"),
        (2, 2),
        "one list per Service, from the cache"
    );
    assert_eq!(lists("pods"), (2, 2));
    // Two lists of slices from the cache, and one question (not cached, limit 1).
    assert_eq!(lists("endpointslices"), (3, 2));
}
