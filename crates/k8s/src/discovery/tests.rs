//! Pure tests: conversion and the relist-safe cache over synthetic watcher events and the
//! objects captured from a real kube-apiserver.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use rudder_balance::{EmptyReason, Readiness, ServiceState, SyncClock};
use serde_json::{Value, json};

use super::{Cache, Entry, Model, Source, name_of};
use crate::convert::{self, LeanSlice, PodInfo};
use crate::service_ref::PortSpec;

macro_rules! fixture {
    ($path:literal) => {
        serde_json::from_str::<Value>(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testkit/tests/fixtures/",
            $path
        )))
        .expect("fixture JSON")
    };
}

fn clock() -> Arc<SyncClock> {
    Arc::new(SyncClock::new())
}

fn service(v: Value) -> Service {
    serde_json::from_value(v).expect("service")
}

/// The slice `v` as discovery decodes it, checked against `k8s_openapi`'s decoding of the
/// same JSON: every test slice is also a test of [`LeanSlice`]'s decoder.
fn slice(v: Value) -> LeanSlice {
    let full: EndpointSlice = serde_json::from_value(v.clone()).expect("slice");
    let lean: LeanSlice = serde_json::from_value(v).expect("lean slice");
    assert_eq!(
        lean,
        LeanSlice::from(&full),
        "decoded apart from k8s_openapi"
    );
    lean
}

fn simple_service(port_name: &str) -> Service {
    service(json!({"metadata": {"name": "s", "namespace": "d"},
        "spec": {"selector": {"app": "s"}, "ports": [{"name": port_name, "port": 80, "targetPort": 8080}]}}))
}

fn ep(ip: &str, ready: Option<bool>, serving: Option<bool>, terminating: Option<bool>) -> Value {
    let mut c = serde_json::Map::new();
    if let Some(r) = ready {
        c.insert("ready".into(), r.into());
    }
    if let Some(s) = serving {
        c.insert("serving".into(), s.into());
    }
    if let Some(t) = terminating {
        c.insert("terminating".into(), t.into());
    }
    json!({"addresses": [ip], "conditions": c})
}

/// A model reading EndpointSlices whose Service (`simple_service("http")`) is synced.
fn service_synced() -> Model {
    let mut model = Model {
        source: Some(Source::EndpointSlices),
        ..Model::default()
    };
    model
        .service
        .apply(Event::InitApply(simple_service("http")), name_of, |s| s);
    model.service.apply(Event::InitDone, name_of, |s| s);
    model
}

fn slice_of(name: &str, family: &str, port: i32, eps: Vec<Value>) -> LeanSlice {
    slice(
        json!({"metadata": {"name": name, "namespace": "d"}, "addressType": family,
        "ports": [{"name": "http", "port": port}], "endpoints": eps}),
    )
}

#[test]
fn captured_web_named_resolves_the_named_port_per_slice() {
    let svc = service(fixture!("objects/service-web-named.json"));
    let slices = [
        slice(fixture!("objects/endpointslice-web-named-1-port8080.json")),
        slice(fixture!("objects/endpointslice-web-named-2-port9090.json")),
    ];
    let set = convert::from_slices(
        Some(&svc),
        Some(&PortSpec::Name("http".into())),
        &slices,
        &BTreeMap::new(),
        &clock(),
    );
    let addrs: Vec<String> = set
        .endpoints()
        .iter()
        .map(|e| e.addr().to_string())
        .collect();
    assert_eq!(
        addrs,
        [
            "10.244.0.41:8080",
            "10.244.0.42:8080",
            "10.244.0.43:8080",
            "10.244.0.44:9090",
            "10.244.0.45:9090"
        ]
    );
    assert!(
        set.endpoints()
            .iter()
            .all(|e| e.meta().app_protocol.as_deref() == Some("http"))
    );
    assert_eq!(
        set.endpoints()[0].meta().pod.as_deref(),
        Some("web-named-1")
    );
    // The same Service port by number.
    let by_number = convert::from_slices(
        Some(&svc),
        Some(&PortSpec::Number(80)),
        &slices,
        &BTreeMap::new(),
        &clock(),
    );
    assert_eq!(by_number, set);
}

#[test]
fn captured_big_service_merges_two_slices() {
    let svc = service(fixture!("objects/service-big.json"));
    let slices = [
        slice(fixture!("objects/endpointslice-big-1-100eps.json")),
        slice(fixture!("objects/endpointslice-big-2-30eps.json")),
    ];
    let set = convert::from_slices(Some(&svc), None, &slices, &BTreeMap::new(), &clock());
    assert_eq!(set.len(), 130);
    assert_eq!(set.routable().count(), 130);
    assert!(
        set.endpoints()
            .iter()
            .all(|e| e.meta().zone.is_some() && e.meta().node.is_some())
    );
    // Each zone and node name is allocated once, across both slices.
    let distinct = |field: fn(&rudder_balance::EndpointMeta) -> &Option<Arc<str>>| {
        let metas = set.endpoints().iter().map(|e| e.meta());
        let texts: BTreeSet<&str> = metas.clone().filter_map(|m| field(m).as_deref()).collect();
        let copies: BTreeSet<*const u8> = metas
            .filter_map(|m| field(m).as_ref().map(|n| n.as_ptr()))
            .collect();
        (texts.len(), copies.len())
    };
    let (zones, zone_copies) = distinct(|m| &m.zone);
    let (nodes, node_copies) = distinct(|m| &m.node);
    assert!(zones >= 1 && nodes >= 1);
    assert_eq!((zone_copies, node_copies), (zones, nodes));
}

/// Names from the API (nodes come and go) cannot grow the shared names without bound,
/// and every name reads back as itself.
#[test]
fn shared_names_stay_bounded() {
    for i in 0..20_000 {
        let name = format!("node-{i}");
        assert_eq!(&*convert::shared_name(&name), name);
        assert!(convert::shared_names() <= 4096);
    }
    let a = convert::shared_name("zone-a");
    assert!(
        Arc::ptr_eq(&a, &convert::shared_name("zone-a")),
        "one copy per name"
    );
}

#[test]
fn captured_hello_svc_from_endpoints_and_from_slices_agree() {
    let svc = service(fixture!("objects/service-hello-svc.json"));
    let slices = [slice(fixture!("objects/endpointslice-hello-svc-1.json"))];
    let eps: Endpoints =
        serde_json::from_value(fixture!("objects/endpoints-hello-svc.json")).unwrap();
    let a = convert::from_slices(
        Some(&svc),
        Some(&PortSpec::Number(8080)),
        &slices,
        &BTreeMap::new(),
        &clock(),
    );
    let b = convert::from_endpoints(
        Some(&svc),
        Some(&PortSpec::Number(8080)),
        Some(&eps),
        &BTreeMap::new(),
        &clock(),
    );
    let addrs = |s: &rudder_balance::EndpointSet| {
        s.endpoints().iter().map(|e| e.addr()).collect::<Vec<_>>()
    };
    assert_eq!(a.len(), 10);
    assert_eq!(addrs(&a), addrs(&b));
}

#[test]
fn captured_ext_mirrored_slice_has_only_ready_conditions() {
    let svc = service(fixture!("objects/service-ext.json"));
    let slices = [slice(fixture!("objects/endpointslice-ext-1.json"))];
    let set = convert::from_slices(Some(&svc), None, &slices, &BTreeMap::new(), &clock());
    // .51 ready; .52 ready=false and (absent) serving=ready=false: not routable.
    let addrs: Vec<String> = set.routable().map(|e| e.addr().to_string()).collect();
    assert_eq!(addrs, ["10.244.0.51:9090"]);
}

#[test]
fn conditions_default_as_the_api_documents() {
    let svc = simple_service("http");
    let s = slice_of(
        "s-1",
        "IPv4",
        8080,
        vec![
            ep("10.0.0.1", None, None, None),        // unknown: ready
            ep("10.0.0.2", Some(false), None, None), // not ready, serving defaults to ready
            ep("10.0.0.3", Some(false), Some(true), Some(true)), // serving while terminating
            ep("10.0.0.4", Some(false), Some(true), None), // serving, not terminating: not routable
        ],
    );
    let set = convert::from_slices(Some(&svc), None, [&s], &BTreeMap::new(), &clock());
    let got: Vec<(String, Readiness)> = set
        .endpoints()
        .iter()
        .map(|e| (e.addr().ip().to_string(), e.readiness()))
        .collect();
    assert_eq!(
        got,
        [
            ("10.0.0.1".into(), Readiness::Ready),
            ("10.0.0.3".into(), Readiness::ServingTerminating)
        ]
    );
    assert_eq!(
        set.routable().count(),
        1,
        "terminating ones only when none is ready"
    );
}

#[test]
fn terminating_fallback_keeps_a_rolling_update_routable() {
    let svc = simple_service("http");
    let s = slice_of(
        "s-1",
        "IPv4",
        8080,
        vec![
            ep("10.0.0.1", Some(false), Some(true), Some(true)),
            ep("10.0.0.2", Some(false), Some(false), Some(true)),
        ],
    );
    let set = convert::from_slices(Some(&svc), None, [&s], &BTreeMap::new(), &clock());
    let r: Vec<String> = set.routable().map(|e| e.addr().to_string()).collect();
    assert_eq!(r, ["10.0.0.1:8080"]);
}

#[test]
fn duplicates_across_slices_count_once_preferring_ready() {
    let svc = simple_service("http");
    let a = slice_of(
        "s-a",
        "IPv4",
        8080,
        vec![ep("10.0.0.1", Some(false), Some(true), Some(true))],
    );
    let b = slice_of(
        "s-b",
        "IPv4",
        8080,
        vec![
            ep("10.0.0.1", Some(true), Some(true), Some(false)),
            ep("10.0.0.2", None, None, None),
        ],
    );
    let set = convert::from_slices(Some(&svc), None, [&a, &b], &BTreeMap::new(), &clock());
    assert_eq!(set.len(), 2);
    assert_eq!(set.endpoints()[0].readiness(), Readiness::Ready);
}

#[test]
fn ipv6_is_routable_fqdn_and_garbage_are_skipped_without_losing_good_ones() {
    let svc = simple_service("http");
    let v6 = slice_of(
        "s-6",
        "IPv6",
        8080,
        vec![ep("fd00::1", Some(true), None, None)],
    );
    let fqdn = slice_of(
        "s-f",
        "FQDN",
        8080,
        vec![ep("pod.example.com", Some(true), None, None)],
    );
    let bad = slice_of(
        "s-b",
        "IPv4",
        8080,
        vec![
            ep("999.0.0.1", Some(true), None, None),
            ep("10.0.0.9", Some(true), None, None),
        ],
    );
    let bad_port = slice_of(
        "s-p",
        "IPv4",
        0,
        vec![ep("10.0.0.10", Some(true), None, None)],
    );
    let set = convert::from_slices(
        Some(&svc),
        None,
        [&v6, &fqdn, &bad, &bad_port],
        &BTreeMap::new(),
        &clock(),
    );
    let addrs: Vec<String> = set
        .endpoints()
        .iter()
        .map(|e| e.addr().to_string())
        .collect();
    assert_eq!(addrs, ["10.0.0.9:8080", "[fd00::1]:8080"]);
}

#[test]
fn service_states_are_distinct() {
    let c = clock();
    assert_eq!(
        convert::from_slices(None, None, [], &BTreeMap::new(), &c).state(),
        &ServiceState::NotFound
    );
    let ext = service(
        json!({"metadata": {"name": "e"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}}),
    );
    assert_eq!(
        convert::from_slices(Some(&ext), None, [], &BTreeMap::new(), &c).state(),
        &ServiceState::ExternalName("db.example.com".into())
    );
    let svc = simple_service("http");
    let empty = convert::from_slices(Some(&svc), None, [], &BTreeMap::new(), &c);
    assert_eq!(
        (empty.state(), empty.empty_reason()),
        (&ServiceState::Active, Some(EmptyReason::NoEndpoints))
    );
    let none_ready = slice_of(
        "s",
        "IPv4",
        8080,
        vec![ep("10.0.0.1", Some(false), Some(false), Some(false))],
    );
    let set = convert::from_slices(Some(&svc), None, [&none_ready], &BTreeMap::new(), &c);
    assert_eq!(set.empty_reason(), Some(EmptyReason::NoneReady));
    let wrong_port = convert::from_slices(
        Some(&svc),
        Some(&PortSpec::Number(81)),
        [&none_ready],
        &BTreeMap::new(),
        &c,
    );
    assert_eq!(wrong_port.empty_reason(), Some(EmptyReason::NoSuchPort));
}

#[test]
fn pod_labels_weight_and_timing_are_joined_through_target_ref() {
    let svc = simple_service("http");
    let mut e = ep("10.0.0.1", Some(true), None, None);
    e["targetRef"] = json!({"kind": "Pod", "name": "p1", "namespace": "d"});
    let s = slice_of("s", "IPv4", 8080, vec![e, ep("10.0.0.2", None, None, None)]);
    let pod = serde_json::from_value(json!({
        "metadata": {"name": "p1", "labels": {"app": "s", "version": "4.2"}, "annotations": {convert::WEIGHT_ANNOTATION: "5"}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-25T18:56:28Z"}]},
    }))
    .unwrap();
    let pods = BTreeMap::from([("p1".to_string(), PodInfo::from_pod(&pod))]);
    let set = convert::from_slices(Some(&svc), None, [&s], &pods, &clock());
    let p1 = &set.endpoints()[0];
    assert_eq!(p1.labels().get("version").map(String::as_str), Some("4.2"));
    assert_eq!(p1.weight(), 5);
    assert!(p1.meta().ready_since.is_some());
    // Pod not known yet: routable, no labels, weight 1.
    assert!(set.endpoints()[1].labels().is_empty());
    assert_eq!(set.endpoints()[1].weight(), 1);

    let bad: k8s_openapi::api::core::v1::Pod = serde_json::from_value(
        json!({"metadata": {"name": "p", "annotations": {convert::WEIGHT_ANNOTATION: "heavy"}}}),
    )
    .unwrap();
    assert_eq!(
        PodInfo::from_pod(&bad).weight,
        1,
        "an invalid weight is a warning and weight 1"
    );
}

#[test]
fn a_relist_of_an_unchanged_cluster_changes_nothing() {
    let mut model = Model {
        source: Some(Source::EndpointSlices),
        ..Model::default()
    };
    let c = clock();
    let svc = simple_service("http");
    let s1 = slice_of(
        "s-1",
        "IPv4",
        8080,
        vec![
            ep("10.0.0.1", None, None, None),
            ep("10.0.0.2", None, None, None),
        ],
    );
    let apply_all = |model: &mut Model| {
        model.service.apply(Event::Init, name_of, |s| s);
        model
            .service
            .apply(Event::InitApply(svc.clone()), name_of, |s| s);
        model.service.apply(Event::InitDone, name_of, |s| s);
        model.slices.apply(Event::Init, name_of, |s| s);
        model
            .slices
            .apply(Event::InitApply(s1.clone()), name_of, |s| s);
    };
    apply_all(&mut model);
    assert_eq!(
        model.build(None, &c).state(),
        &ServiceState::Pending,
        "not synced before InitDone"
    );
    model.slices.apply(Event::InitDone, name_of, |s| s);
    let before = model.build(None, &c);
    assert_eq!(before.len(), 2);
    // A relist: while it is collected, the old items stay in force.
    model.slices.apply(Event::Init, name_of, |s| s);
    assert_eq!(model.build(None, &c), before);
    model
        .slices
        .apply(Event::InitApply(s1.clone()), name_of, |s| s);
    assert_eq!(model.build(None, &c), before);
    model.slices.apply(Event::InitDone, name_of, |s| s);
    assert_eq!(model.build(None, &c), before);
    // A real removal.
    model.slices.apply(Event::Delete(s1), name_of, |s| s);
    assert!(model.build(None, &c).is_empty());
}

#[test]
fn cache_replaces_on_relist() {
    let mut cache: Cache<i32> = Cache::default();
    cache.apply(Event::Init, |v: &i32| v.to_string(), |v| v);
    cache.apply(Event::InitApply(1), |v: &i32| v.to_string(), |v| v);
    cache.apply(Event::InitDone, |v: &i32| v.to_string(), |v| v);
    cache.apply(Event::Init, |v: &i32| v.to_string(), |v| v);
    cache.apply(Event::InitApply(2), |v: &i32| v.to_string(), |v| v);
    assert_eq!(cache.items.keys().collect::<Vec<_>>(), ["1"]);
    cache.apply(Event::InitDone, |v: &i32| v.to_string(), |v| v);
    assert_eq!(cache.items.keys().collect::<Vec<_>>(), ["2"]);
}

#[test]
fn slice_cache_follows_versions_ports_and_pods() {
    let mut model = service_synced();
    let c = clock();
    let mut a = slice_of("s-a", "IPv4", 8080, vec![ep("10.0.0.1", None, None, None)]);
    a.metadata.resource_version = Some("1".into());
    let mut b = slice_of("s-b", "IPv4", 8080, vec![ep("10.0.0.2", None, None, None)]);
    b.metadata.resource_version = Some("1".into());
    model
        .slices
        .apply(Event::InitApply(a.clone()), name_of, |s| s);
    model
        .slices
        .apply(Event::InitApply(b.clone()), name_of, |s| s);
    model.slices.apply(Event::InitDone, name_of, |s| s);
    assert_eq!(model.build(None, &c).len(), 2);
    // A new version of one slice is converted again.
    b.endpoints
        .push(serde_json::from_value(ep("10.0.0.3", None, None, None)).unwrap());
    b.metadata.resource_version = Some("2".into());
    model.slices.apply(Event::Apply(b.clone()), name_of, |s| s);
    assert_eq!(model.build(None, &c).len(), 3);
    // A Pod change invalidates converted slices (they carry Pod labels).
    let mut e = ep("10.0.0.1", None, None, None);
    e["targetRef"] = json!({"kind": "Pod", "name": "p1"});
    a.endpoints = vec![serde_json::from_value(e).unwrap()];
    a.metadata.resource_version = Some("2".into());
    model.slices.apply(Event::Apply(a), name_of, |s| s);
    assert!(model.build(None, &c).endpoints()[0].labels().is_empty());
    let pod =
        serde_json::from_value(json!({"metadata": {"name": "p1", "labels": {"v": "2"}}})).unwrap();
    model
        .pods
        .apply(Event::Apply(pod), name_of, |p| PodInfo::from_pod(&p));
    model.pods_epoch += 1;
    assert_eq!(
        model.build(None, &c).endpoints()[0]
            .labels()
            .get("v")
            .map(String::as_str),
        Some("2")
    );
    // The endpoint carries the Pod's labels themselves, not a copy.
    let built = model.build(None, &c);
    assert!(
        built.endpoints()[0]
            .meta()
            .labels
            .shares(&model.pods.items["p1"].labels)
    );
    // And the Pod's name as the cached slice holds it.
    let cached = model.slices.items["s-a"].endpoints[0].pod.as_ref();
    let named = built.endpoints()[0].meta().pod.as_ref();
    assert!(cached.zip(named).is_some_and(|(a, b)| Arc::ptr_eq(a, b)));
    // A deleted slice leaves the cache too.
    model.slices.apply(Event::Delete(b), name_of, |s| s);
    assert_eq!(model.build(None, &c).len(), 1);
}

/// Found by the malformed-objects test: an IPv6 address in an IPv4 slice was routed to.
#[test]
fn addresses_of_the_other_family_are_skipped() {
    let slice = slice(serde_json::json!({
        "metadata": {"name": "mixed", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["::1"]}, {"addresses": ["10.0.0.1"]}],
        "ports": [{"port": 80}],
    }));
    let eps =
        crate::convert::slice_endpoints(&slice, "", &crate::discovery::PodMap::default(), |_| None)
            .endpoints;
    let addrs: Vec<String> = eps.iter().map(|e| e.addr().to_string()).collect();
    assert_eq!(addrs, ["10.0.0.1:80"]);
}

#[test]
fn watch_retries_stay_within_the_max_backoff_and_reach_its_half() {
    let max = Duration::from_secs(1);
    let delays: Vec<Duration> = super::backoff(max).take(50).collect();
    assert_eq!(delays.len(), 50, "never gives up");
    assert!(delays.iter().all(|d| *d <= max), "{delays:?}");
    // 50 ms doubling: from the fifth attempt on, at least half the maximum apart, so a
    // server that is down sees at most about two requests a second per watch.
    assert!(delays[5..].iter().all(|d| *d >= max / 2), "{delays:?}");
}

/// A selector change that narrows the Service: the new Pod list no longer has the Pods that
/// left, but the slices still name them for a moment; until they leave the slices they
/// keep their labels (they are still those Pods), and the relist ends the publishing hold.
#[test]
fn pods_a_selector_change_leaves_out_keep_their_labels_while_slices_name_them() {
    let mut model = service_synced();
    let c = clock();
    let pod = |name: &str, version: &str| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"app": "a", "version": version}}}),
        )
        .unwrap()
    };
    let endpoint = |ip: &str, pod: &str| {
        let mut e = ep(ip, None, None, None);
        e["targetRef"] = json!({"kind": "Pod", "name": pod});
        serde_json::from_value(e).unwrap()
    };
    let mut s = slice_of("s-1", "IPv4", 8080, vec![]);
    s.endpoints = vec![endpoint("10.0.0.1", "old"), endpoint("10.0.0.2", "new")];
    s.metadata.resource_version = Some("1".into());
    model
        .slices
        .apply(Event::InitApply(s.clone()), name_of, |s| s);
    model.slices.apply(Event::InitDone, name_of, |s| s);
    model.apply_pod(Event::Init, |p| PodInfo::from_pod(&p));
    model.apply_pod(Event::InitApply(pod("old", "1")), |p| PodInfo::from_pod(&p));
    model.apply_pod(Event::InitApply(pod("new", "2")), |p| PodInfo::from_pod(&p));
    model.apply_pod(Event::InitDone, |p| PodInfo::from_pod(&p));
    let version = |set: &rudder_balance::EndpointSet, i: usize| {
        set.endpoints()[i].labels().get("version").cloned()
    };

    // The selector gains `version=2` (the run loop sets the hold): the new list has `new` only.
    model.pods_relisting = true;
    model.apply_pod(Event::Init, |p| PodInfo::from_pod(&p));
    model.apply_pod(Event::InitApply(pod("new", "2")), |p| PodInfo::from_pod(&p));
    assert!(model.pods_relisting, "held until the list is complete");
    model.apply_pod(Event::InitDone, |p| PodInfo::from_pod(&p));
    assert!(!model.pods_relisting);
    let set = model.build(None, &c);
    assert_eq!(
        version(&set, 0).as_deref(),
        Some("1"),
        "the departing Pod keeps its labels"
    );
    assert_eq!(version(&set, 1).as_deref(), Some("2"));

    // The slice drops it: it is forgotten.
    s.endpoints = vec![endpoint("10.0.0.2", "new")];
    s.metadata.resource_version = Some("2".into());
    model.slices.apply(Event::Apply(s), name_of, |s| s);
    assert_eq!(model.build(None, &c).len(), 1);
    assert!(model.pods_departed.is_empty());
}

/// Discovery patches its merged endpoint list with each slice change instead of merging
/// every slice again; whatever the changes (readiness flips, addresses coming and going,
/// one address listed by two slices, slices deleted and made again), the snapshot must be
/// the one a fresh build from the same slices gives, down to which slice's copy of a
/// duplicated address wins.
#[test]
fn patched_snapshots_equal_full_builds() {
    fn fresh(slices: &BTreeMap<String, LeanSlice>) -> Model {
        let mut model = service_synced();
        for s in slices.values() {
            model
                .slices
                .apply(Event::InitApply(s.clone()), name_of, |s| s);
        }
        model.slices.apply(Event::InitDone, name_of, |s| s);
        model
    }
    // What a snapshot routes to: address, readiness and which slice's copy (the Pod name
    // says), leaving out the ramp times only a long-running model has.
    fn routed(
        set: &rudder_balance::EndpointSet,
    ) -> Vec<(std::net::SocketAddr, Readiness, Option<std::sync::Arc<str>>)> {
        set.endpoints()
            .iter()
            .map(|e| (e.addr(), e.readiness(), e.meta().pod.clone()))
            .collect()
    }
    let c = clock();
    let mut slices: BTreeMap<String, LeanSlice> = BTreeMap::new();
    let mut model = fresh(&slices);
    // A fixed xorshift sequence: the same run every time, and one that fails can be
    // replayed.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut duplicated = 0;
    let mut previous = None;
    let mut followed = 0;
    // The list of the set spent before this round's build, and the set with its list as
    // it was when a subscriber still holds it.
    let mut spent_at = None;
    let mut held: Option<(
        Arc<rudder_balance::EndpointSet>,
        Vec<rudder_balance::Endpoint>,
    )> = None;
    let mut reused = 0;
    // Rounds whose build knew which ends of its list were the same as the set before's
    // (debug builds check each claim: a wrong one panics in the set's making).
    let mut knowing = 0;
    for round in 0..600 {
        let name = format!("s-{}", next(4));
        if next(10) == 0 {
            if let Some(gone) = slices.remove(&name) {
                model.slices.apply(Event::Delete(gone), name_of, |s| s);
            }
        } else if let Some(s) = slices.get(&name).filter(|_| next(2) == 0) {
            // The same addresses, each with new conditions (the common update: a Pod
            // turning ready or going away).
            let mut s = s.clone();
            for e in &mut s.endpoints {
                let ready = next(2) == 0;
                let c = &mut e.conditions;
                c.ready = Some(ready);
                c.serving = Some(ready || next(2) == 0);
                c.terminating = Some(!ready);
            }
            s.metadata.resource_version = Some(round.to_string());
            slices.insert(name, s.clone());
            model.slices.apply(Event::Apply(s), name_of, |s| s);
        } else {
            // Mostly up to six of twelve addresses, shared between slices; now and then
            // dozens of a hundred (more changes than discovery patches in place); each
            // ready, serving while terminating, or not ready.
            let (count, range) = if next(8) == 0 {
                (40 + next(60), 100)
            } else {
                (next(7), 12)
            };
            let mut eps = Vec::new();
            for _ in 0..count {
                let ip = format!("10.0.0.{}", next(range) + 1);
                let mut e = match next(3) {
                    0 => ep(&ip, Some(true), Some(true), Some(false)),
                    1 => ep(&ip, Some(false), Some(true), Some(true)),
                    _ => ep(&ip, Some(false), Some(false), Some(false)),
                };
                e["targetRef"] = json!({"kind": "Pod", "name": format!("{name}-{ip}")});
                eps.push(e);
            }
            let mut s = slice_of(&name, "IPv4", 8080, eps);
            s.metadata.resource_version = Some(round.to_string());
            slices.insert(name, s.clone());
            model.slices.apply(Event::Apply(s), name_of, |s| s);
        }
        // Made after the set before, as `publish` makes it: comparing and pairing the two
        // give what they give for the same list made on its own.
        let knows = |m: &Model| m.converted.get(&None).and_then(|c| c.merged_as);
        let knew = previous
            .as_ref()
            .is_some_and(|p: &rudder_balance::EndpointSet| knows(&model) == Some(p.list_id()));
        let patched = model.build_after(None, &c, previous.as_ref());
        knowing += usize::from(knew && patched.follows(previous.as_ref().expect("known")));
        // The spent set's list was patched into this one only when nothing held it; one
        // a subscriber holds is left as it was.
        let in_spent = spent_at.take() == Some(patched.endpoints().as_ptr());
        reused += usize::from(in_spent);
        if let Some((set, list)) = held.take() {
            assert!(!in_spent, "round {round}: a held list was reused");
            assert_eq!(set.endpoints(), &list[..], "round {round}");
        }
        if let Some(previous) = &previous {
            let plain = rudder_balance::EndpointSet::new(
                patched.state().clone(),
                patched.endpoints().to_vec(),
            )
            .with_unroutable(patched.unroutable().to_vec());
            assert_eq!(patched == *previous, plain == *previous, "round {round}");
            assert_eq!(
                rudder_balance::Pairing::new(previous, &patched),
                rudder_balance::Pairing::new(previous, &plain),
                "round {round}"
            );
            followed += usize::from(patched.follows(previous));
        }
        let full = fresh(&slices).build(None, &clock());
        assert_eq!(routed(&patched), routed(&full), "round {round}");
        let listed: usize = slices.values().map(|s| s.endpoints.len()).sum();
        duplicated += usize::from(listed > full.len() + full.unroutable().len());
        // As `publish` does: the set replaced is spent, for the next build to reuse; in
        // one round of three a subscriber still holds it.
        if let Some(replaced) = previous.replace(patched).map(Arc::new) {
            if !replaced.is_empty() {
                spent_at = Some(replaced.endpoints().as_ptr());
            }
            if round % 3 == 0 {
                held = Some((replaced.clone(), replaced.endpoints().to_vec()));
            }
            model.spend(None, Some(replaced));
        }
    }
    // Not every round can reuse: a held list, a list with an address twice (made as
    // `new` makes it), and a list that must grow past the spent one's room or needs less
    // than half of it do not; slices here change size a lot.
    assert!(reused > 25, "{reused} spent lists were reused");
    // A list with an address twice is sorted and deduplicated as `new` does, and knows
    // nothing of the set before: that is most rounds here, where slices share addresses.
    assert!(
        followed > 100,
        "{followed} sets were made after the one before"
    );
    assert!(
        duplicated > 50,
        "the sequence lists addresses twice ({duplicated} rounds)"
    );
    assert!(knowing > 50, "{knowing} builds knew their list's same ends");
}

#[test]
fn a_new_port_subscribing_during_a_publish_does_not_deadlock() {
    // `receiver` (a first request for a port) and `publish` (discovery's task) both take
    // the model and the ports locks; taken in opposite orders they deadlocked (seen in CI
    // as a request hanging forever). Each side runs in a tight loop on its own thread; a
    // deadlock leaves the loops unfinished past the bound.
    let entry = Arc::new(Entry::new());
    let (done_tx, done) = std::sync::mpsc::channel();
    let publisher = {
        let (entry, done_tx) = (entry.clone(), done_tx.clone());
        std::thread::spawn(move || {
            for _ in 0..5_000 {
                entry.publish();
            }
            let _ = done_tx.send("publish");
        })
    };
    let subscriber = {
        let entry = entry.clone();
        std::thread::spawn(move || {
            for n in 0..5_000u16 {
                drop(entry.receiver(Some(&PortSpec::Number(n))));
            }
            let _ = done_tx.send("subscribe");
        })
    };
    for _ in 0..2 {
        let finished = done.recv_timeout(Duration::from_secs(60));
        assert!(finished.is_ok(), "publish and subscribe deadlocked");
    }
    publisher.join().unwrap();
    subscriber.join().unwrap();
    assert_eq!(entry.ports.lock().unwrap().len(), 5_000);
}

/// A Pod change converts again only the slices naming that Pod, and a Pod update that
/// changes nothing discovery keeps (a status change) converts none. The endpoints an
/// update leaves alone keep their metadata shared with the set before, so the routing
/// pool carries what it derived from them instead of looking at them again; and each set
/// is what a full build gives.
#[test]
fn pod_changes_convert_only_the_slices_naming_them() {
    use k8s_openapi::api::core::v1::Pod;
    let mut model = service_synced();
    let c = clock();
    let pod = |name: &str, version: &str, phase: &str| -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"version": version}},
            "status": {"phase": phase}}),
        )
        .unwrap()
    };
    let info = |p: Pod| PodInfo::from_pod(&p);
    model.apply_pod(Event::Init, info);
    for i in 0..6 {
        model.apply_pod(
            Event::InitApply(pod(&format!("p{i}"), "1", "Running")),
            info,
        );
    }
    model.apply_pod(Event::InitDone, info);
    // Three slices of two endpoints, 10.0.0.(i+1) naming Pod p(i).
    for k in 0..3 {
        let eps = (2 * k..2 * k + 2)
            .map(|i| {
                let mut e = ep(&format!("10.0.0.{}", i + 1), None, None, None);
                e["targetRef"] = json!({"kind": "Pod", "name": format!("p{i}")});
                e
            })
            .collect();
        let mut s = slice_of(&format!("s-{k}"), "IPv4", 8080, eps);
        s.metadata.resource_version = Some("1".into());
        model.slices.apply(Event::InitApply(s), name_of, |s| s);
    }
    model.slices.apply(Event::InitDone, name_of, |s| s);
    let first = model.build(None, &c);
    assert_eq!(first.len(), 6);
    assert_eq!(model.conversions, 3);
    let version = |set: &rudder_balance::EndpointSet, i: usize| {
        set.endpoints()[i].labels().get("version").cloned()
    };
    let shared = |a: &rudder_balance::EndpointSet, b: &rudder_balance::EndpointSet| {
        (0..a.len())
            .filter(|i| a.endpoints()[*i].shares_meta(&b.endpoints()[*i]))
            .collect::<Vec<_>>()
    };

    // p1 is relabelled: only s-0 is converted again, and only 10.0.0.2 changes.
    model.apply_pod(Event::Apply(pod("p1", "2", "Running")), info);
    let relabelled = model.build(None, &c);
    assert_eq!(model.conversions, 4, "one slice converted");
    assert_eq!(version(&relabelled, 1).as_deref(), Some("2"));
    assert_eq!(shared(&first, &relabelled), [0, 2, 3, 4, 5]);

    // A status update of p3 changes nothing discovery keeps: nothing is converted.
    model.apply_pod(Event::Apply(pod("p3", "1", "Succeeded")), info);
    let same = model.build(None, &c);
    assert_eq!(model.conversions, 4, "no slice converted");
    assert_eq!(same, relabelled);
    assert_eq!(shared(&relabelled, &same), [0, 1, 2, 3, 4, 5]);

    // p4 goes away: its endpoint keeps routing, without labels; s-2 alone is converted.
    model.apply_pod(Event::Delete(pod("p4", "1", "Running")), info);
    let deleted = model.build(None, &c);
    assert_eq!(model.conversions, 5, "one slice converted");
    assert_eq!(version(&deleted, 4), None);
    assert_eq!(shared(&same, &deleted), [0, 1, 2, 3, 5]);

    // What a full build of the same state gives.
    model.pods_epoch += 1;
    assert_eq!(model.build(None, &c), deleted);
    assert_eq!(model.conversions, 8, "every slice converted");

    // Many Pods changing between two builds (a rollout): every slice is converted once
    // rather than searched for each Pod.
    for round in 0..20 {
        let version = if round % 2 == 0 { "3" } else { "4" };
        model.apply_pod(
            Event::Apply(pod(&format!("p{}", round % 6), version, "Running")),
            info,
        );
    }
    let rolled = model.build(None, &c);
    assert_eq!(model.conversions, 11, "every slice converted once");
    // p0 changed last in an even round, p1 in an odd one.
    assert_eq!(version(&rolled, 0).as_deref(), Some("3"));
    assert_eq!(version(&rolled, 1).as_deref(), Some("4"));
}

/// Topology hints and the port's `appProtocol` are read into copies shared by every
/// endpoint that has the same ones, not copied per endpoint.
#[test]
fn hints_and_app_protocol_are_shared_between_endpoints() {
    let hinted = |ip: &str, zone: &str| {
        let mut e = ep(ip, Some(true), None, None);
        e["zone"] = json!(zone);
        e["hints"] = json!({"forZones": [{"name": zone}]});
        e
    };
    let two = |name: &str, first: &str, second: &str| {
        slice(
            json!({"metadata": {"name": name, "namespace": "d"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "appProtocol": "kubernetes.io/h2c"}],
            "endpoints": [hinted(first, "zone-a"), hinted(second, "zone-b")]}),
        )
    };
    // Two slices, decoded apart, as discovery decodes them.
    let slices = [
        two("a", "10.0.1.1", "10.0.1.2"),
        two("b", "10.0.2.1", "10.0.2.2"),
    ];
    let set = convert::from_slices(
        Some(&simple_service("http")),
        None,
        &slices,
        &BTreeMap::new(),
        &clock(),
    );
    let meta = |i: usize| set.endpoints()[i].meta();
    assert_eq!(set.len(), 4, "{set:?}");
    let zones = |i: usize| meta(i).zone.as_deref().unwrap_or_default().to_string();
    for i in 0..4 {
        assert_eq!(meta(i).zone_hints.len(), 1);
        assert_eq!(&*meta(i).zone_hints[0], zones(i));
        for j in 0..4 {
            assert_eq!(
                meta(i).zone_hints.shares(&meta(j).zone_hints),
                zones(i) == zones(j),
                "endpoints {i} and {j}"
            );
            let (a, b) = (meta(i).app_protocol.as_ref(), meta(j).app_protocol.as_ref());
            assert!(a.zip(b).is_some_and(|(a, b)| Arc::ptr_eq(a, b)));
        }
    }
    assert_eq!(meta(0).app_protocol.as_deref(), Some("kubernetes.io/h2c"));
}

/// Each publish copies the list of endpoints that are not routable (every slice's): the
/// copy shares the names with what discovery keeps of the slices rather than allocating
/// them again, publish after publish.
#[test]
fn the_not_routable_list_is_shared_from_publish_to_publish() {
    let mut model = service_synced();
    let c = clock();
    let mut not_ready = ep("10.0.0.9", Some(false), None, None);
    not_ready["targetRef"] = json!({"kind": "Pod", "name": "p9"});
    let mut a = slice_of("s-a", "IPv4", 8080, vec![not_ready]);
    a.metadata.resource_version = Some("1".into());
    let mut b = slice_of("s-b", "IPv4", 8080, vec![ep("10.0.0.2", None, None, None)]);
    b.metadata.resource_version = Some("1".into());
    for s in [a, b.clone()] {
        model.slices.apply(Event::InitApply(s), name_of, |s| s);
    }
    model.slices.apply(Event::InitDone, name_of, |s| s);
    let first = model.build(None, &c);
    // Another slice changes: the not-ready endpoint's entry is copied into the new set.
    b.endpoints
        .push(serde_json::from_value(ep("10.0.0.3", None, None, None)).unwrap());
    b.metadata.resource_version = Some("2".into());
    model.slices.apply(Event::Apply(b), name_of, |s| s);
    let second = model.build_after(None, &c, Some(&first));
    assert_eq!(second.len(), 2);
    let (x, y) = (&first.unroutable()[0], &second.unroutable()[0]);
    assert_eq!(x, y);
    assert_eq!(&*x.address, "10.0.0.9");
    assert!(Arc::ptr_eq(&x.address, &y.address));
    assert!(
        x.pod
            .as_ref()
            .zip(y.pod.as_ref())
            .is_some_and(|(p, q)| Arc::ptr_eq(p, q))
    );
    // And the Pod's name with the slice discovery keeps.
    let kept = model.slices.items["s-a"].endpoints[0].pod.as_ref().unwrap();
    assert!(Arc::ptr_eq(kept, y.pod.as_ref().unwrap()));
}

/// Ready times discovery keeps itself (no Pod gives one) survive slice updates whether a
/// conversion takes them from the slice's conversion before it (the same endpoints, in
/// order or not) or from its map of them (an endpoint that moved to another slice); an
/// endpoint that left and comes back ramps again.
#[test]
fn ready_times_carry_through_updates_reorders_and_moves() {
    let c = clock();
    let mut model = service_synced();
    let mut version = 0;
    let mut put = |model: &mut Model, name: &str, ready: &[(&str, bool)], init: bool| {
        version += 1;
        let eps = ready
            .iter()
            .map(|(ip, r)| ep(&format!("10.0.0.{ip}"), Some(*r), Some(*r), Some(false)))
            .collect();
        let mut s = slice_of(name, "IPv4", 8080, eps);
        s.metadata.resource_version = Some(version.to_string());
        let event = if init {
            Event::InitApply(s)
        } else {
            Event::Apply(s)
        };
        model.slices.apply(event, name_of, |s| s);
    };
    let since = |set: &rudder_balance::EndpointSet, last: u8| {
        let ip = std::net::IpAddr::from([10, 0, 0, last]);
        set.endpoints()
            .iter()
            .find(|e| e.addr().ip() == ip)
            .map(|e| e.meta().ready_since)
    };
    put(
        &mut model,
        "a",
        &[("1", true), ("2", true), ("3", true)],
        true,
    );
    model.slices.apply(Event::InitDone, name_of, |s| s);
    let set = model.build(None, &c);
    // Ready at the first snapshot: long Ready.
    assert!((1..=3).all(|i| since(&set, i) == Some(None)));

    let before = SystemTime::now();
    put(
        &mut model,
        "a",
        &[("1", true), ("2", true), ("3", true), ("4", true)],
        false,
    );
    let set = model.build(None, &c);
    let four = since(&set, 4).flatten().expect("a new endpoint ramps");
    assert!(four >= before);
    assert!((1..=3).all(|i| since(&set, i) == Some(None)));

    // Another endpoint goes NotReady: the others keep their times.
    put(
        &mut model,
        "a",
        &[("1", true), ("2", true), ("3", false), ("4", true)],
        false,
    );
    let set = model.build(None, &c);
    assert_eq!(since(&set, 3), None);
    assert_eq!(since(&set, 4), Some(Some(four)));
    assert!((1..=2).all(|i| since(&set, i) == Some(None)));

    // Back again: it ramps from now; listed in reverse, every time is still its own.
    let back = SystemTime::now();
    put(
        &mut model,
        "a",
        &[("4", true), ("3", true), ("2", true), ("1", true)],
        false,
    );
    let set = model.build(None, &c);
    let three = since(&set, 3).flatten().expect("back again ramps");
    assert!(three >= back);
    assert_eq!(since(&set, 4), Some(Some(four)));
    assert!((1..=2).all(|i| since(&set, i) == Some(None)));

    // An endpoint moves to a new slice: its time moves with it.
    put(
        &mut model,
        "a",
        &[("1", true), ("2", true), ("3", true)],
        false,
    );
    put(&mut model, "b", &[("4", true)], false);
    let set = model.build(None, &c);
    assert_eq!(since(&set, 4), Some(Some(four)));
    assert_eq!(since(&set, 3), Some(Some(three)));
    assert!((1..=2).all(|i| since(&set, i) == Some(None)));
}
