//! The control-plane controllers the test server runs: EndpointSlice, Endpoints and
//! EndpointSlice mirroring, following kube-controller-manager's observable behaviour (see
//! the fixtures' README): slices are updated in place, new endpoints are appended, at most
//! `max_endpoints_per_slice` per slice, one slice per distinct port set; Endpoints list
//! addresses sorted by IP with not-ready Pods apart and terminating Pods left out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::admission;
use super::resource::Resource;
use super::server::Shared;
use super::store::{Key, Store, meta_str};

const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
const MIRROR_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
const ENDPOINTS_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
const ENDPOINTS_CONTROLLER: &str = "endpoint-controller";
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
const MAX_ENDPOINTS_ADDRESSES: usize = 1000;

/// Reconciles after every write until the server is dropped.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut changed = shared.changed.subscribe();
    loop {
        // Mark what we have seen before reading, so no later write can be missed.
        changed.borrow_and_update();
        let before = shared.read(Store::rv);
        let max = shared.config.max_endpoints_per_slice;
        shared.write(|store| reconcile(store, max));
        let after = shared.read(Store::rv);
        if before != after {
            continue;
        }
        shared.reconciled.send_replace(after);
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// One endpoint the Service should have.
#[derive(Clone, Debug)]
struct Ep {
    ip: String,
    ready: bool,
    serving: bool,
    terminating: bool,
    pod: Value,
    node: Option<String>,
    zone: Option<String>,
}

impl Ep {
    fn uid(&self) -> &str {
        self.pod["uid"].as_str().unwrap_or_default()
    }

    fn slice_entry(&self) -> Value {
        let mut e = Map::new();
        e.insert("addresses".into(), json!([self.ip]));
        e.insert(
            "conditions".into(),
            json!({"ready": self.ready, "serving": self.serving, "terminating": self.terminating}),
        );
        e.insert("targetRef".into(), self.pod.clone());
        if let Some(n) = &self.node {
            e.insert("nodeName".into(), n.clone().into());
        }
        if let Some(z) = &self.zone {
            e.insert("zone".into(), z.clone().into());
        }
        Value::Object(e)
    }

    fn endpoints_address(&self) -> Value {
        let mut a = Map::new();
        a.insert("ip".into(), self.ip.clone().into());
        if let Some(n) = &self.node {
            a.insert("nodeName".into(), n.clone().into());
        }
        a.insert("targetRef".into(), self.pod.clone());
        Value::Object(a)
    }
}

fn reconcile(store: &mut Store, max: usize) {
    let zones: HashMap<String, String> = store
        .iter(Resource::Node, None)
        .filter_map(|((_, _, name), node)| {
            let z = node["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str()?;
            Some((name.clone(), z.to_string()))
        })
        .collect();
    let services: Vec<Arc<Value>> = store
        .iter(Resource::Service, None)
        .map(|(_, s)| s.clone())
        .collect();
    let mut live: Vec<(String, String)> = Vec::new();
    for svc in &services {
        let ns = meta_str(svc, "namespace").unwrap_or_default().to_string();
        let name = meta_str(svc, "name").unwrap_or_default().to_string();
        live.push((ns.clone(), name.clone()));
        if svc["spec"]["type"] == "ExternalName" {
            continue;
        }
        match svc["spec"]["selector"]
            .as_object()
            .filter(|s| !s.is_empty())
        {
            Some(selector) => {
                let groups = desired(store, svc, &ns, selector, &zones);
                sync_slices(store, svc, &ns, &name, &groups, max);
                sync_endpoints(store, svc, &ns, &name, &groups);
            }
            None => mirror(store, &ns, &name),
        }
    }
    collect_garbage(store, &live);
}

/// Endpoints grouped by their resolved port set, in first-seen order.
type Groups = Vec<(Value, Vec<Ep>)>;

fn desired(
    store: &Store,
    svc: &Value,
    ns: &str,
    selector: &Map<String, Value>,
    zones: &HashMap<String, String>,
) -> Groups {
    let mut groups: Groups = Vec::new();
    let service_ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    for (_, pod) in store.iter(Resource::Pod, Some(ns)) {
        // Every selector label must be present with the same value; extra labels are fine.
        let labels = &pod["metadata"]["labels"];
        if !selector.iter().all(|(k, v)| &labels[k] == v) {
            continue;
        }
        let Some(ip) = pod["status"]["podIP"].as_str().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        ) {
            continue;
        }
        let pod_ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let terminating = pod["metadata"].get("deletionTimestamp").is_some();
        let mut ports = Vec::new();
        for sp in &service_ports {
            let Some(port) = resolve_target_port(sp, pod) else {
                continue;
            };
            let mut p = Map::new();
            p.insert(
                "name".into(),
                sp["name"].as_str().unwrap_or_default().into(),
            );
            p.insert(
                "protocol".into(),
                sp["protocol"].as_str().unwrap_or("TCP").into(),
            );
            p.insert("port".into(), port.into());
            if let Some(ap) = sp["appProtocol"].as_str() {
                p.insert("appProtocol".into(), ap.into());
            }
            ports.push(Value::Object(p));
        }
        if ports.is_empty() && !service_ports.is_empty() {
            continue;
        }
        let node = pod["spec"]["nodeName"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let ep = Ep {
            ip: ip.to_string(),
            ready: pod_ready && !terminating,
            serving: pod_ready,
            terminating,
            pod: json!({"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}),
            zone: node.as_ref().and_then(|n| zones.get(n).cloned()),
            node,
        };
        let key = Value::Array(ports);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, eps)) => eps.push(ep),
            None => groups.push((key, vec![ep])),
        }
    }
    groups
}

/// A Service port's `targetPort` for one Pod: a number, or a container port name.
fn resolve_target_port(sp: &Value, pod: &Value) -> Option<i64> {
    match &sp["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => {
            if let Ok(n) = name.parse::<i64>() {
                return Some(n);
            }
            let protocol = sp["protocol"].as_str().unwrap_or("TCP");
            pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|c| {
                    c["ports"].as_array().into_iter().flatten().find_map(|p| {
                        (p["name"].as_str() == Some(name.as_str())
                            && p["protocol"].as_str().unwrap_or("TCP") == protocol)
                            .then(|| p["containerPort"].as_i64())
                            .flatten()
                    })
                })
        }
        _ => sp["port"].as_i64(),
    }
}

fn owner(kind: &str, obj: &Value) -> Value {
    json!([{"apiVersion": "v1", "kind": kind, "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": true, "blockOwnerDeletion": true}])
}

fn managed_slices(store: &Store, ns: &str, service: &str, manager: &str) -> Vec<(Key, Arc<Value>)> {
    store
        .iter(Resource::EndpointSlice, Some(ns))
        .filter(|(_, s)| {
            let l = &s["metadata"]["labels"];
            l[SERVICE_NAME] == service && l[MANAGED_BY] == manager
        })
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect()
}

fn address_type(ip: &str) -> &'static str {
    if ip.contains(':') { "IPv6" } else { "IPv4" }
}

/// Writes `new` if it differs from `current`, bumping `generation` as the server would.
fn write_if_changed(store: &mut Store, key: Key, current: Option<&Value>, mut new: Value) {
    let res = key.0;
    new = admission::canonical(res, new);
    if let Some(cur) = current {
        let mut a = cur.clone();
        let mut b = new.clone();
        for v in [&mut a, &mut b] {
            if let Some(m) = v["metadata"].as_object_mut() {
                m.remove("resourceVersion");
                m.remove("generation");
                if let Some(ann) = m.get_mut("annotations").and_then(Value::as_object_mut) {
                    ann.remove(TRIGGER_TIME);
                }
            }
        }
        if a == b {
            return;
        }
        if let Some(g) = cur["metadata"]["generation"].as_i64() {
            new["metadata"]["generation"] = (g + 1).into();
        }
    }
    store.put(key, new);
}

fn new_slice(
    svc_or_eps: &Value,
    owner_kind: &str,
    ns: &str,
    service: &str,
    manager: &str,
    extra_labels: &Value,
    address_type: &str,
) -> (Key, Value) {
    let name = format!("{service}-{}", admission::random_suffix());
    let mut labels = extra_labels.as_object().cloned().unwrap_or_default();
    labels.insert(MANAGED_BY.into(), manager.into());
    labels.insert(SERVICE_NAME.into(), service.into());
    let mut meta = json!({
        "name": name, "generateName": format!("{service}-"), "namespace": ns, "uid": admission::uid(),
        "generation": 1, "creationTimestamp": admission::now(), "labels": labels,
        "ownerReferences": owner(owner_kind, svc_or_eps),
    });
    if manager == SLICE_CONTROLLER {
        meta["annotations"] = json!({TRIGGER_TIME: admission::now()});
    }
    let slice = json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": meta,
                       "addressType": address_type, "endpoints": [], "ports": []});
    ((Resource::EndpointSlice, ns.to_string(), name), slice)
}

/// A slice being planned: its key, the stored version (if any), the object to write and
/// its endpoints.
type Planned = (Key, Option<Arc<Value>>, Value, Vec<Value>);

fn sync_slices(
    store: &mut Store,
    svc: &Value,
    ns: &str,
    service: &str,
    groups: &Groups,
    max: usize,
) {
    let existing = managed_slices(store, ns, service, SLICE_CONTROLLER);
    let mut labels = svc["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.remove(SERVICE_NAME);
    labels.remove(MANAGED_BY);
    let labels = Value::Object(labels);
    let mut used: Vec<Key> = Vec::new();

    // Split each port set by address family: a slice holds one family.
    let mut wanted: Vec<(Value, &'static str, Vec<&Ep>)> = Vec::new();
    for (ports, eps) in groups {
        for family in ["IPv4", "IPv6"] {
            let members: Vec<&Ep> = eps
                .iter()
                .filter(|e| address_type(&e.ip) == family)
                .collect();
            if !members.is_empty() {
                wanted.push((ports.clone(), family, members));
            }
        }
    }

    for (ports, family, eps) in &wanted {
        let by_uid: HashMap<&str, &Ep> = eps.iter().map(|e| (e.uid(), *e)).collect();
        let mut placed: HashMap<&str, bool> = HashMap::new();
        // Existing slices for this port set keep their surviving endpoints in place.
        let mut slices: Vec<Planned> = Vec::new();
        let matching: Vec<(Key, Arc<Value>)> = existing
            .iter()
            .filter(|(k, s)| {
                s["ports"] == *ports && s["addressType"] == *family && !used.contains(k)
            })
            .cloned()
            .collect();
        for (k, s) in matching {
            let mut kept = Vec::new();
            for e in s["endpoints"].as_array().into_iter().flatten() {
                let uid = e["targetRef"]["uid"].as_str().unwrap_or_default();
                if let Some(ep) = by_uid.get(uid)
                    && !placed.contains_key(uid)
                    && kept.len() < max
                {
                    kept.push(ep.slice_entry());
                    placed.insert(ep.uid(), true);
                }
            }
            used.push(k.clone());
            slices.push((k, Some(s.clone()), (*s).clone(), kept));
        }
        // New endpoints are appended where there is room, then into new slices.
        for ep in eps.iter().filter(|e| !placed.contains_key(e.uid())) {
            match slices.iter_mut().find(|(_, _, _, eps)| eps.len() < max) {
                Some((_, _, _, list)) => list.push(ep.slice_entry()),
                None => {
                    let (k, fresh) = new_slice(
                        svc,
                        "Service",
                        ns,
                        service,
                        SLICE_CONTROLLER,
                        &labels,
                        family,
                    );
                    used.push(k.clone());
                    slices.push((k, None, fresh, vec![ep.slice_entry()]));
                }
            }
        }
        for (k, current, mut s, list) in slices {
            if list.is_empty() {
                store.remove(&k);
                continue;
            }
            let mut all_labels = labels.as_object().cloned().unwrap_or_default();
            all_labels.insert(MANAGED_BY.into(), SLICE_CONTROLLER.into());
            all_labels.insert(SERVICE_NAME.into(), service.into());
            s["metadata"]["labels"] = Value::Object(all_labels);
            s["endpoints"] = Value::Array(list);
            s["ports"] = ports.clone();
            write_if_changed(store, k, current.as_deref(), s);
        }
    }

    // Slices of port sets that no longer exist go away; a Service without endpoints keeps
    // one empty placeholder slice, as the real controller does.
    let stale: Vec<Key> = existing
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| !used.contains(k))
        .collect();
    if wanted.is_empty() {
        let placeholder = existing.iter().find(|(k, _)| stale.contains(k));
        let (k, current, mut s) = match placeholder {
            Some((k, s)) => (k.clone(), Some(s.clone()), (**s).clone()),
            None => {
                let (k, fresh) = new_slice(
                    svc,
                    "Service",
                    ns,
                    service,
                    SLICE_CONTROLLER,
                    &labels,
                    "IPv4",
                );
                (k, None, fresh)
            }
        };
        s["endpoints"] = json!([]);
        s["ports"] = Value::Null;
        write_if_changed(store, k.clone(), current.as_deref(), s);
        for other in stale.iter().filter(|x| **x != k) {
            store.remove(other);
        }
    } else {
        for k in stale {
            store.remove(&k);
        }
    }
}

fn endpoints_port(p: &Value) -> Value {
    let mut m = Map::new();
    if let Some(n) = p["name"].as_str().filter(|n| !n.is_empty()) {
        m.insert("name".into(), n.into());
    }
    m.insert("port".into(), p["port"].clone());
    m.insert("protocol".into(), p["protocol"].clone());
    if let Some(ap) = p.get("appProtocol") {
        m.insert("appProtocol".into(), ap.clone());
    }
    Value::Object(m)
}

fn sync_endpoints(store: &mut Store, svc: &Value, ns: &str, service: &str, groups: &Groups) {
    let key = (Resource::Endpoints, ns.to_string(), service.to_string());
    let current = store.get(&key).cloned();
    if let Some(c) = &current
        && c["metadata"]["labels"][ENDPOINTS_MANAGED_BY] != ENDPOINTS_CONTROLLER
        && c["metadata"]["labels"].get(ENDPOINTS_MANAGED_BY).is_some()
    {
        return;
    }
    let mut subsets = Vec::new();
    let mut total = 0;
    for (ports, eps) in groups {
        // Terminating Pods leave Endpoints entirely.
        let sort = |mut v: Vec<&Ep>| {
            v.sort_by(|a, b| a.ip.cmp(&b.ip));
            v.into_iter().map(Ep::endpoints_address).collect::<Vec<_>>()
        };
        let mut ready = sort(eps.iter().filter(|e| e.ready).collect());
        let mut not_ready = sort(eps.iter().filter(|e| !e.ready && !e.terminating).collect());
        ready.truncate(MAX_ENDPOINTS_ADDRESSES.saturating_sub(total));
        total += ready.len();
        not_ready.truncate(MAX_ENDPOINTS_ADDRESSES.saturating_sub(total));
        total += not_ready.len();
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        let mut subset = Map::new();
        if !ready.is_empty() {
            subset.insert("addresses".into(), Value::Array(ready));
        }
        if !not_ready.is_empty() {
            subset.insert("notReadyAddresses".into(), Value::Array(not_ready));
        }
        subset.insert(
            "ports".into(),
            ports
                .as_array()
                .into_iter()
                .flatten()
                .map(endpoints_port)
                .collect(),
        );
        subsets.push(Value::Object(subset));
    }
    let all: usize = groups.iter().map(|(_, e)| e.len()).sum();
    let mut labels = svc["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert(ENDPOINTS_MANAGED_BY.into(), ENDPOINTS_CONTROLLER.into());
    let mut obj = match &current {
        Some(c) => (**c).clone(),
        None => json!({"kind": "Endpoints", "apiVersion": "v1", "metadata": {
            "name": service, "namespace": ns, "uid": admission::uid(), "creationTimestamp": admission::now(),
            "annotations": {TRIGGER_TIME: admission::now()}}}),
    };
    obj["metadata"]["labels"] = Value::Object(labels);
    if all > MAX_ENDPOINTS_ADDRESSES {
        obj["metadata"]["annotations"]["endpoints.kubernetes.io/over-capacity"] =
            "truncated".into();
    } else if let Some(a) = obj["metadata"]["annotations"].as_object_mut() {
        a.remove("endpoints.kubernetes.io/over-capacity");
    }
    match obj.as_object_mut() {
        Some(m) if subsets.is_empty() => {
            m.remove("subsets");
        }
        Some(m) => {
            m.insert("subsets".into(), Value::Array(subsets));
        }
        None => return,
    }
    write_if_changed(store, key, current.as_deref(), obj);
}

/// Mirrors a selector-less Service's hand-made Endpoints into EndpointSlices.
fn mirror(store: &mut Store, ns: &str, service: &str) {
    let existing = managed_slices(store, ns, service, MIRROR_CONTROLLER);
    let eps_key = (Resource::Endpoints, ns.to_string(), service.to_string());
    let Some(eps) = store.get(&eps_key).cloned() else {
        for (k, _) in existing {
            store.remove(&k);
        }
        return;
    };
    let labels = eps["metadata"]["labels"].clone();
    let mut used = Vec::new();
    for subset in eps["subsets"].as_array().into_iter().flatten() {
        let mut endpoints = Vec::new();
        for (list, ready) in [("addresses", true), ("notReadyAddresses", false)] {
            for a in subset[list].as_array().into_iter().flatten() {
                let mut e = Map::new();
                e.insert("addresses".into(), json!([a["ip"]]));
                e.insert("conditions".into(), json!({"ready": ready}));
                if let Some(t) = a.get("targetRef") {
                    e.insert("targetRef".into(), t.clone());
                }
                if let Some(n) = a.get("nodeName") {
                    e.insert("nodeName".into(), n.clone());
                }
                endpoints.push(Value::Object(e));
            }
        }
        let family = endpoints
            .first()
            .and_then(|e| e["addresses"][0].as_str())
            .map_or("IPv4", address_type);
        let ports: Vec<Value> = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let mut m = Map::new();
                m.insert("name".into(), p["name"].as_str().unwrap_or_default().into());
                m.insert(
                    "protocol".into(),
                    p["protocol"].as_str().unwrap_or("TCP").into(),
                );
                m.insert("port".into(), p["port"].clone());
                if let Some(ap) = p.get("appProtocol") {
                    m.insert("appProtocol".into(), ap.clone());
                }
                Value::Object(m)
            })
            .collect();
        let ports = Value::Array(ports);
        let found = existing
            .iter()
            .find(|(k, s)| s["ports"] == ports && !used.contains(k));
        let (k, current, mut s) = match found {
            Some((k, s)) => (k.clone(), Some(s.clone()), (**s).clone()),
            None => {
                let (k, fresh) = new_slice(
                    &eps,
                    "Endpoints",
                    ns,
                    service,
                    MIRROR_CONTROLLER,
                    &labels,
                    family,
                );
                (k, None, fresh)
            }
        };
        let mut all_labels = labels.as_object().cloned().unwrap_or_default();
        all_labels.insert(MANAGED_BY.into(), MIRROR_CONTROLLER.into());
        all_labels.insert(SERVICE_NAME.into(), service.into());
        s["metadata"]["labels"] = Value::Object(all_labels);
        s["endpoints"] = Value::Array(endpoints);
        s["ports"] = ports;
        used.push(k.clone());
        write_if_changed(store, k, current.as_deref(), s);
    }
    for (k, _) in existing {
        if !used.contains(&k) {
            store.remove(&k);
        }
    }
}

/// Removes controller-made objects whose Service is gone.
fn collect_garbage(store: &mut Store, live: &[(String, String)]) {
    let services: BTreeMap<(&str, &str), ()> = live
        .iter()
        .map(|(n, s)| ((n.as_str(), s.as_str()), ()))
        .collect();
    let mut doomed = Vec::new();
    for (k, s) in store.iter(Resource::EndpointSlice, None) {
        let l = &s["metadata"]["labels"];
        let ours = l[MANAGED_BY] == SLICE_CONTROLLER || l[MANAGED_BY] == MIRROR_CONTROLLER;
        let svc = l[SERVICE_NAME].as_str().unwrap_or_default();
        if ours && !services.contains_key(&(k.1.as_str(), svc)) {
            doomed.push(k.clone());
        }
    }
    for (k, e) in store.iter(Resource::Endpoints, None) {
        let ours = e["metadata"]["labels"][ENDPOINTS_MANAGED_BY] == ENDPOINTS_CONTROLLER;
        if ours && !services.contains_key(&(k.1.as_str(), k.2.as_str())) {
            doomed.push(k.clone());
        }
    }
    for k in doomed {
        store.remove(&k);
    }
}
