//! Field-by-field comparison with a real kube-apiserver v1.34.
//!
//! The scenario of the captures (Kubernetes Services chapter: `hello-svc`, `biz1`,
//! `web-named`, `big`, `ext`) is rebuilt on the test server from the captured objects, then
//! the captured requests are replayed and the answers compared with the captured bodies,
//! ignoring only what varies between runs (uids, versions, times, generated names, IPs the
//! server allocates, managedFields, and the order of endpoints inside a slice).
//!
//! Compared strictly: every field including descriptions, list and Table row order, the
//! order of keys in every object (Go struct order, sorted maps), duplicated `causes`,
//! body framing (compact with a trailing newline, or indented without one) and the headers
//! that do not vary (`Content-Type`, `Cache-Control`, `Warning`, `X-Content-Type-Options`,
//! `Retry-After`, `Vary`, and that an `Audit-Id` is present).

use std::collections::BTreeMap;

use rudder_testkit::{Access, ApiServer, Rule};
use serde_json::{Value, json};

use super::support::{
    Capture, Raw, capture, captures, diff, fixture, fixture_events, fixture_text, open_watch, send,
    with_param, without_param,
};

pub(crate) struct Harness {
    pub(crate) server: ApiServer,
    pub(crate) admin: kube::Client,
    reader: kube::Client,
    wrong: kube::Client,
    anon: kube::Client,
    /// Captured EndpointSlice name → this server's name for the same slice.
    slice_names: BTreeMap<String, String>,
}

fn strip_server_fields(obj: &Value) -> Value {
    let mut o = obj.clone();
    let meta = o["metadata"].as_object_mut().expect("metadata");
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "generation",
    ] {
        meta.remove(k);
    }
    if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    o
}

fn drop_token_volume(spec: &mut Value) {
    // The capture's one automounted Pod has an OpenShift-flavoured token volume; the test
    // server does not inject service-account volumes.
    if let Some(v) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        v.retain(|x| {
            !x["name"]
                .as_str()
                .unwrap_or("")
                .starts_with("kube-api-access")
        });
    }
    for c in spec["containers"].as_array_mut().into_iter().flatten() {
        if let Some(m) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
            m.retain(|x| {
                !x["name"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("kube-api-access")
            });
        }
    }
}

async fn post(client: &kube::Client, path: &str, body: &Value) {
    let r = send(
        client,
        "POST",
        path,
        Some("application/json"),
        Some("application/json"),
        Some(&body.to_string()),
    )
    .await;
    assert!(
        r.status.is_success(),
        "POST {path}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
}

async fn patch_status(client: &kube::Client, path: &str, status: &Value) {
    let body = json!({"status": status}).to_string();
    let r = send(
        client,
        "PATCH",
        &format!("{path}/status"),
        Some("application/json"),
        Some("application/merge-patch+json"),
        Some(&body),
    )
    .await;
    assert!(
        r.status.is_success(),
        "PATCH {path}/status: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
}

/// All Pods of the scenario, as captured after the controllers settled.
fn scenario_pods() -> Vec<Value> {
    let mut pods: Vec<Value> = Vec::new();
    for list in [
        "lists/pods-default.json",
        "lists/pods-demo-app-biz1-zone-prod.json",
        "lists/pods-big-limit50-rv0.json",
    ] {
        pods.extend(
            fixture(list)["items"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    pods.push(fixture("objects/pod-biz1-nozone.json"));
    // web-named-1..5 differ only in name, IP, node and container port; the capture has
    // web-named-4 in full and the others' addresses in their Endpoints.
    let template = fixture("objects/pod-web-named-4.json");
    let eps = fixture("objects/endpoints-web-named.json");
    for subset in eps["subsets"].as_array().expect("subsets") {
        let port = subset["ports"][0]["port"].clone();
        for a in subset["addresses"].as_array().expect("addresses") {
            let mut p = template.clone();
            p["metadata"]["name"] = a["targetRef"]["name"].clone();
            p["spec"]["nodeName"] = a["nodeName"].clone();
            p["spec"]["containers"][0]["ports"][0]["containerPort"] = port.clone();
            p["status"]["podIP"] = a["ip"].clone();
            p["status"]["podIPs"] = json!([{"ip": a["ip"]}]);
            let host = if a["nodeName"] == "node-a" {
                "10.0.0.11"
            } else {
                "10.0.0.12"
            };
            p["status"]["hostIP"] = host.into();
            p["status"]["hostIPs"] = json!([{"ip": host}]);
            pods.push(p);
        }
    }
    pods
}

pub(crate) async fn scenario() -> Harness {
    // Validate like a real cluster: no loopback endpoints.
    let server = ApiServer::builder()
        .allow_loopback_endpoints(false)
        .start()
        .await
        .expect("server");
    server.add_token(
        "reader-token",
        Access::rules([Rule::new(
            ["get", "list", "watch"],
            ["endpointslices", "endpoints", "services"],
        )
        .in_namespace("demo")])
        .user("endpoint-reader"),
    );
    // Raw replays must see every answer as sent, so kube-rs's retry of 504s is off.
    let mut config = server.kube_config().await.expect("config");
    config.default_retry = false;
    let admin = kube::Client::try_from(config).expect("client");
    post(
        &admin,
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}),
    )
    .await;
    for node in fixture("lists/nodes.json")["items"]
        .as_array()
        .expect("nodes")
    {
        let name = node["metadata"]["name"].as_str().expect("name");
        post(
            &admin,
            "/api/v1/nodes",
            &json!({"metadata": {"name": name, "labels": node["metadata"]["labels"]}}),
        )
        .await;
        patch_status(&admin, &format!("/api/v1/nodes/{name}"), &node["status"]).await;
    }
    for pod in scenario_pods() {
        let ns = pod["metadata"]["namespace"]
            .as_str()
            .expect("ns")
            .to_string();
        let name = pod["metadata"]["name"].as_str().expect("name").to_string();
        let mut spec = pod["spec"].clone();
        drop_token_volume(&mut spec);
        let body =
            json!({"metadata": {"name": name, "labels": pod["metadata"]["labels"]}, "spec": spec});
        post(&admin, &format!("/api/v1/namespaces/{ns}/pods"), &body).await;
        patch_status(
            &admin,
            &format!("/api/v1/namespaces/{ns}/pods/{name}"),
            &pod["status"],
        )
        .await;
    }
    for svc in ["hello-svc", "biz1", "web-named", "big", "ext", "kubernetes"] {
        let obj = strip_server_fields(&fixture(&format!("objects/service-{svc}.json")));
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .expect("ns")
            .to_string();
        post(&admin, &format!("/api/v1/namespaces/{ns}/services"), &obj).await;
    }
    let ext = capture("objects/endpoints-ext.create.json");
    let body: Value = serde_json::from_str(ext.body.as_deref().expect("body")).expect("json");
    post(&admin, &ext.path, &body).await;
    server.settled().await;

    // Map the captured slice names to ours by (namespace, service, ports).
    let key = |s: &Value| {
        format!(
            "{}/{}/{}",
            s["metadata"]["namespace"],
            s["metadata"]["labels"]["kubernetes.io/service-name"],
            s["ports"]
        )
    };
    let ours = send(
        &admin,
        "GET",
        "/apis/discovery.k8s.io/v1/endpointslices",
        None,
        None,
        None,
    )
    .await
    .json();
    let ours: BTreeMap<String, String> = ours["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                key(s),
                s["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let mut slice_names = BTreeMap::new();
    for s in fixture("lists/endpointslices-all-namespaces.json")["items"]
        .as_array()
        .expect("items")
    {
        if let Some(mine) = ours.get(&key(s)) {
            slice_names.insert(
                s["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                mine.clone(),
            );
        }
    }
    Harness {
        reader: server
            .client_with_token("reader-token")
            .await
            .expect("client"),
        wrong: server
            .client_with_token("not-a-token")
            .await
            .expect("client"),
        anon: server.anonymous_client().await.expect("client"),
        admin,
        server,
        slice_names,
    }
}

impl Harness {
    pub(crate) async fn replay(&self, c: &Capture) -> Raw {
        let client = match c.auth.as_str() {
            "reader" => &self.reader,
            "wrong" => &self.wrong,
            "none" => &self.anon,
            _ => &self.admin,
        };
        let mut path = c.path.clone();
        for (theirs, ours) in &self.slice_names {
            path = path.replace(
                &format!("/endpointslices/{theirs}"),
                &format!("/endpointslices/{ours}"),
            );
        }
        let body = c.body.as_deref().map(|b| {
            // A stale resourceVersion must stay stale on this server too.
            // A fresh one is dropped: the write is unconditional here as it was there.
            match serde_json::from_str::<Value>(b) {
                Ok(mut v) if v["metadata"]["resourceVersion"].is_string() => {
                    if c.status == 409 {
                        v["metadata"]["resourceVersion"] = "1".into();
                    } else if let Some(m) = v["metadata"].as_object_mut() {
                        m.remove("resourceVersion");
                    }
                    v.to_string()
                }
                _ => b.to_string(),
            }
        });
        send(
            client,
            &c.method,
            &path,
            c.accept.as_deref(),
            c.content_type.as_deref(),
            body.as_deref(),
        )
        .await
    }

    /// Replays `c` and returns the differences from the capture (empty when equal).
    pub(crate) async fn check(&self, c: &Capture) -> Vec<String> {
        let raw = self.replay(c).await;
        let mut out = Vec::new();
        if raw.status.as_u16() != c.status {
            out.push(format!(
                "{}: status {} (expected {}): {}",
                c.file,
                raw.status,
                c.status,
                String::from_utf8_lossy(&raw.body)
            ));
            return out;
        }
        out.extend(headers_diff(c, &raw.headers));
        let text = fixture_text(&c.file);
        out.extend(framing_diff(&c.file, text.as_bytes(), &raw.body));
        let Ok(mut expected) = serde_json::from_str::<Value>(&text) else {
            if String::from_utf8_lossy(&raw.body).trim() != text.trim() {
                out.push(format!(
                    "{}: body {:?} (expected {:?})",
                    c.file,
                    String::from_utf8_lossy(&raw.body),
                    text
                ));
            }
            return out;
        };
        let mut actual = raw.json();
        let mut order = Vec::new();
        key_order_diff("", &expected, &actual, &mut order);
        out.extend(order.into_iter().map(|d| format!("{}: {d}", c.file)));
        if c.file.starts_with("lists/endpointslices") {
            merge_slices(&mut expected);
            merge_slices(&mut actual);
        }
        normalize(&mut expected);
        normalize(&mut actual);
        out.extend(
            diff(&expected, &actual)
                .into_iter()
                .map(|d| format!("{}: {d}", c.file)),
        );
        out
    }
}

/// Response headers that do not vary between runs must be the captured ones: the same
/// values, and present exactly when the real server sent them. `Audit-Id` is a fresh UUID
/// per request, so only its presence is compared; `Date`, the priority-and-fairness UIDs,
/// `Etag`, `Last-Modified` and the length framing vary (fixtures README).
fn headers_diff(c: &Capture, ours: &http::HeaderMap) -> Vec<String> {
    const EXACT: &[&str] = &[
        "content-type",
        "cache-control",
        "warning",
        "x-content-type-options",
        "retry-after",
        "vary",
    ];
    let mut out = Vec::new();
    for name in EXACT {
        let theirs: Vec<&str> = c
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        let mine: Vec<&str> = ours
            .get_all(*name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<not text>"))
            .collect();
        if theirs != mine {
            out.push(format!(
                "{}: header {name}: {mine:?} (expected {theirs:?})",
                c.file
            ));
        }
    }
    let audited = c
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("audit-id"));
    if audited != ours.contains_key("audit-id") {
        out.push(format!(
            "{}: Audit-Id present: {} (expected {audited})",
            c.file,
            ours.contains_key("audit-id")
        ));
    }
    out
}

/// Body framing: compact or indented JSON, and the trailing newline.
fn framing_diff(file: &str, theirs: &[u8], ours: &[u8]) -> Vec<String> {
    let shape = |b: &[u8]| {
        (
            b.ends_with(b"\n"),
            b.windows(3).any(|w| w == b"\n  " || w == b"\n\t"),
        )
    };
    let (t, o) = (shape(theirs), shape(ours));
    let mut out = Vec::new();
    if t.0 != o.0 {
        out.push(format!(
            "{file}: trailing newline {} (expected {})",
            o.0, t.0
        ));
    }
    if t.1 != o.1 {
        out.push(format!("{file}: indented {} (expected {})", o.1, t.1));
    }
    out
}

/// Keys are written in Go struct order: for every object, the keys both documents have
/// must come in the same order (which keys exist is `diff`'s business).
fn key_order_diff(path: &str, e: &Value, a: &Value, out: &mut Vec<String>) {
    match (e, a) {
        (Value::Object(em), Value::Object(am)) => {
            let theirs: Vec<&String> = em.keys().filter(|k| am.contains_key(*k)).collect();
            let ours: Vec<&String> = am.keys().filter(|k| em.contains_key(*k)).collect();
            if theirs != ours {
                out.push(format!("{path}: key order {ours:?} (expected {theirs:?})"));
            }
            for k in theirs {
                key_order_diff(&format!("{path}.{k}"), &em[k], &am[k], out);
            }
        }
        (Value::Array(ea), Value::Array(aa)) => {
            for (i, (ev, av)) in ea.iter().zip(aa).enumerate() {
                key_order_diff(&format!("{path}[{i}]"), ev, av, out);
            }
        }
        _ => {}
    }
}

/// Which Pods land in which of a Service's slices follows the controller's informer order,
/// so slices of one (namespace, service, ports) are compared as one: their endpoints
/// together, and the sorted slice sizes.
fn merge_slices(list: &mut Value) {
    let Some(items) = list.get_mut("items").and_then(Value::as_array_mut) else {
        return;
    };
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    for item in items.drain(..) {
        let key = format!(
            "{}/{}/{}",
            item["metadata"]["namespace"],
            item["metadata"]["labels"]["kubernetes.io/service-name"],
            canonical(&item["ports"])
        );
        let size = item["endpoints"].as_array().map_or(0, Vec::len);
        match merged.get_mut(&key) {
            None => {
                let mut first = item.clone();
                first["sliceSizes"] = json!([size]);
                merged.insert(key, first);
            }
            Some(m) => {
                let extra = item["endpoints"].as_array().cloned().unwrap_or_default();
                if let Some(eps) = m["endpoints"].as_array_mut() {
                    eps.extend(extra);
                }
                if let Some(sizes) = m["sliceSizes"].as_array_mut() {
                    sizes.push(size.into());
                    sizes.sort_by_key(|s| s.as_u64());
                }
            }
        }
    }
    items.extend(merged.into_values());
}

/// Removes what legitimately differs between two servers or two runs.
pub(crate) fn normalize(v: &mut Value) {
    const DROP: &[&str] = &[
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
        "managedFields",
        "lastTransitionTime",
        "lastHeartbeatTime",
        "startTime",
        "startedAt",
        "containerID",
        "clusterIP",
        "clusterIPs",
        "continue",
        "endpoints.kubernetes.io/last-change-trigger-time",
        "kubectl.kubernetes.io/last-applied-configuration",
    ];
    match v {
        Value::Object(m) => {
            for k in DROP {
                m.remove(*k);
            }
            if let Some(prefix) = m
                .get("generateName")
                .and_then(Value::as_str)
                .map(str::to_string)
                && m.contains_key("name")
            {
                m.insert("name".into(), format!("{prefix}*").into());
            }
            if m.get("kind").and_then(Value::as_str) == Some("Table") {
                normalize_table(m);
            }
            for (k, child) in m.iter_mut() {
                normalize(child);
                // The one order that varies: endpoints inside a slice follow the controller's
                // informer (fixtures README, "Ordering").
                if let (true, Value::Array(a)) = (k == "endpoints", &mut *child) {
                    a.sort_by_key(canonical);
                }
            }
            if m.get("annotations")
                .and_then(Value::as_object)
                .is_some_and(|a| a.is_empty())
            {
                m.remove("annotations");
            }
            for k in ["volumes", "volumeMounts"] {
                if let Some(Value::Array(a)) = m.get_mut(k) {
                    a.retain(|x| {
                        !x["name"]
                            .as_str()
                            .unwrap_or("")
                            .starts_with("kube-api-access")
                    });
                    if a.is_empty() {
                        m.remove(k);
                    }
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        Value::String(text) if text.len() >= 36 => *text = mask_uids(text),
        _ => {}
    }
}

/// Replaces UUIDs inside text (as quoted in conflict messages) with `<uid>`.
fn mask_uids(text: &str) -> String {
    let b = text.as_bytes();
    let is_uuid = |s: &[u8]| {
        s.len() == 36
            && s.iter().enumerate().all(|(i, c)| {
                if [8, 13, 18, 23].contains(&i) {
                    *c == b'-'
                } else {
                    c.is_ascii_hexdigit()
                }
            })
    };
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if i + 36 <= b.len()
            && is_uuid(&b[i..i + 36])
            && !b[i..i + 36].iter().all(|c| *c == b'0' || *c == b'-')
        {
            out.push_str("<uid>");
            i += 36;
        } else {
            let ch = text[i..].chars().next().expect("char boundary");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// A key-order-independent rendering, for sorting.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, String> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            format!("{sorted:?}")
        }
        Value::Array(a) => format!("{:?}", a.iter().map(canonical).collect::<Vec<_>>()),
        other => other.to_string(),
    }
}

/// Table cells that vary: Age, and cluster IPs and endpoint lists that are ordered by slice.
fn normalize_table(m: &mut serde_json::Map<String, Value>) {
    let names: Vec<String> = m["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect();
    // A slice's endpoint order follows the informer, so its Endpoints cell varies.
    let slice_table = names.iter().any(|n| n == "AddressType");
    for row in m
        .get_mut("rows")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(cells) = row["cells"].as_array_mut() {
            for (i, cell) in cells.iter_mut().enumerate() {
                if matches!(names.get(i).map(String::as_str), Some("Age" | "Cluster-IP")) {
                    *cell = Value::Null;
                }
                if slice_table && names.get(i).map(String::as_str) == Some("Endpoints") {
                    *cell = Value::Null;
                }
                // Generated slice names: keep the `<service>-` prefix only.
                if slice_table
                    && i == 0
                    && let Some(name) = cell
                        .as_str()
                        .and_then(|n| n.rsplit_once('-'))
                        .map(|(p, _)| format!("{p}-*"))
                {
                    *cell = name.into();
                }
            }
        }
    }
    // Rows come in name order; between two slices of one Service that order follows their
    // generated suffixes, so only runs of rows with the same masked name are sorted.
    if slice_table && let Some(Value::Array(rows)) = m.get_mut("rows") {
        rows.chunk_by_mut(|a, b| a["cells"][0] == b["cells"][0])
            .for_each(|run| run.sort_by_key(canonical));
    }
}

fn files(range: std::ops::RangeInclusive<usize>, skip: &[&str]) -> Vec<Capture> {
    captures()
        .into_iter()
        .filter(|c| range.contains(&c.line) && !skip.contains(&c.file.as_str()))
        .collect()
}

async fn check_all(h: &Harness, list: &[Capture]) {
    let mut diffs = Vec::new();
    for c in list {
        diffs.extend(h.check(c).await);
    }
    assert!(
        diffs.is_empty(),
        "{} differences from the real server:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[tokio::test]
async fn reads_match_the_real_server() {
    let h = scenario().await;
    // Index lines 24–83: objects, lists (selectors, field selectors, pagination, rv=0),
    // metadata-only answers and Tables, read after the controllers settled; 180: a list in
    // a namespace that does not exist.
    let mut list = files(
        24..=83,
        &[
            // These continue from the captured token; `pagination_matches_the_real_server` follows our own.
            "lists/pods-big-page2-continue.json",
            "lists/pods-big-page3-continue.json",
            // Which 100 of the 130 `big` Pods share a slice is informer order; these two are
            // checked together by `big_service_is_split_100_and_30`.
            "objects/endpointslice-big-1-100eps.json",
            "objects/endpointslice-big-2-30eps.json",
        ],
    );
    list.extend(files(180..=180, &[]));
    assert_eq!(list.len(), 57, "selected captures");
    check_all(&h, &list).await;
}

#[tokio::test]
async fn pagination_matches_the_real_server() {
    let h = scenario().await;
    let mut path = "/api/v1/namespaces/demo/pods?labelSelector=app%3Dbig&limit=50".to_string();
    for page in [
        "lists/pods-big-page1-limit50.json",
        "lists/pods-big-page2-continue.json",
        "lists/pods-big-page3-continue.json",
    ] {
        let raw = send(&h.admin, "GET", &path, Some("application/json"), None, None).await;
        let mut actual = raw.json();
        let token = actual["metadata"]["continue"].as_str().map(str::to_string);
        let mut expected = fixture(page);
        assert_eq!(
            token.is_some(),
            expected["metadata"]["continue"].is_string(),
            "{page}: continue presence"
        );
        normalize(&mut expected);
        normalize(&mut actual);
        let d = diff(&expected, &actual);
        assert!(d.is_empty(), "{page}:\n{}", d.join("\n"));
        if let Some(t) = token {
            path = format!(
                "/api/v1/namespaces/demo/pods?labelSelector=app%3Dbig&limit=50&continue={t}"
            );
        }
    }
}

#[tokio::test]
async fn big_service_is_split_100_and_30() {
    let h = scenario().await;
    let ours = send(&h.admin, "GET", "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dbig", None, None, None).await.json();
    let ours = ours["items"].as_array().expect("items").clone();
    let size = |s: &Value| s["endpoints"].as_array().map_or(0, Vec::len);
    let mut sizes: Vec<usize> = ours.iter().map(size).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![30, 100]);
    let mut all_ours = Vec::new();
    let mut all_theirs = Vec::new();
    for file in [
        "objects/endpointslice-big-1-100eps.json",
        "objects/endpointslice-big-2-30eps.json",
    ] {
        let mut expected = fixture(file);
        let mut actual = ours
            .iter()
            .find(|s| size(s) == size(&expected))
            .expect("slice of that size")
            .clone();
        all_theirs.extend(
            expected["endpoints"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        all_ours.extend(actual["endpoints"].as_array().cloned().unwrap_or_default());
        for v in [&mut expected, &mut actual] {
            v["endpoints"] = Value::Null;
            // The list form carries no kind; compare the object's own fields.
            if let Some(m) = v.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            normalize(v);
        }
        let d = diff(&expected, &actual);
        assert!(d.is_empty(), "{file}:\n{}", d.join("\n"));
    }
    let (mut theirs, mut ours) = (
        json!({"endpoints": all_theirs}),
        json!({"endpoints": all_ours}),
    );
    normalize(&mut theirs);
    normalize(&mut ours);
    let d = diff(&theirs, &ours);
    assert!(d.is_empty(), "endpoints of big:\n{}", d.join("\n"));
}

#[tokio::test]
async fn errors_match_the_real_server() {
    let h = scenario().await;
    // Index lines 172–235: 400, 401, 403, 404, 405, 406, 409, 415, 422 and 500 answers,
    // plus the reader token's allowed list and the anonymous /version.
    let list = files(
        172..=235,
        &[
            // A watch stream: compared by `initial_events_follow_the_real_server`.
            "watch/initial-events/pods.sendInitialEvents-without-allowWatchBookmarks.watch.jsonl",
            // Captured after `kubectl label svc biz1 stage=prod` and two selector edits.
            "lists/endpointslices-demo.as-reader.json",
            // Not compared: our /version names our own build, not the captured server's.
            "discovery/version.anonymous.json",
            // YAML output is not implemented (406 instead).
            "objects/pod-hello-world-1.accept-yaml.yaml",
        ],
    );
    assert_eq!(list.len(), 61, "selected captures");
    // `409-create-existing-endpointslice` needs the hand-made slice of Service `manual`.
    let slice = strip_server_fields(&fixture("objects/endpointslice-manual-1.json"));
    post(
        &h.admin,
        "/api/v1/namespaces/demo/services",
        &json!({"metadata": {"name": "manual"},
        "spec": {"ports": [{"name": "http", "port": 8080}]}}),
    )
    .await;
    post(
        &h.admin,
        "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices",
        &slice,
    )
    .await;
    check_all(&h, &list).await;
}

/// Replays captured watch requests from our own list version, then the captured steps, and
/// compares every event (bookmarks aside) with the captured streams.
async fn watch_scenario(
    h: &Harness,
    list_lines: std::ops::RangeInclusive<usize>,
    watch_lines: std::ops::RangeInclusive<usize>,
    steps: std::ops::RangeInclusive<usize>,
) {
    let mut rv = 0u64;
    for c in files(list_lines, &[]) {
        let r = h.replay(&c).await;
        assert_eq!(r.status, 200, "{}", c.file);
        rv = rv.max(
            r.json()["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("list version"),
        );
    }
    let mut watches = Vec::new();
    for c in files(watch_lines, &[]) {
        let path = with_param(
            &with_param(&c.path, "resourceVersion", &rv.to_string()),
            "timeoutSeconds",
            "600",
        );
        let client = &h.admin;
        watches.push((
            c.file.clone(),
            open_watch(client, &path, c.accept.as_deref()).await,
        ));
    }
    for c in files(steps, &[]) {
        let r = h.replay(&c).await;
        assert_eq!(
            r.status.as_u16(),
            c.status,
            "{}: {}",
            c.file,
            String::from_utf8_lossy(&r.body)
        );
        h.server.settled().await;
    }
    h.server.faults().drop_watches();
    let mut diffs = Vec::new();
    for (file, handle) in watches {
        let ours: Vec<Value> = handle
            .await
            .expect("watch task")
            .into_iter()
            .filter(|e| e["type"] != "BOOKMARK")
            .collect();
        let theirs: Vec<Value> = fixture_events(&file)
            .into_iter()
            .filter(|e| e["type"] != "BOOKMARK")
            .collect();
        let summary = |evs: &[Value]| {
            evs.iter()
                .map(|e| {
                    let mut e = e.clone();
                    normalize(&mut e);
                    format!(
                        "{} {}",
                        e["type"].as_str().unwrap_or(""),
                        e["object"]["metadata"]["name"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
        };
        if summary(&ours) != summary(&theirs) {
            diffs.push(format!(
                "{file}: events {:?}, expected {:?}",
                summary(&ours),
                summary(&theirs)
            ));
            continue;
        }
        for (i, (mut a, mut e)) in ours.into_iter().zip(theirs).enumerate() {
            normalize(&mut a);
            normalize(&mut e);
            diffs.extend(
                diff(&e, &a)
                    .into_iter()
                    .map(|d| format!("{file} event {i}: {d}")),
            );
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[tokio::test]
async fn hello_svc_watch_streams_match_the_real_server() {
    let h = scenario().await;
    // Pods, metadata-only Pods, EndpointSlices and Endpoints watched while hello-world-3
    // goes NotReady and back, hello-world-4 is deleted gracefully then forcibly,
    // hello-world-11 is created and becomes Ready, and hello-world-5 is relabelled away.
    watch_scenario(&h, 110..=113, 121..=124, 114..=120).await;
}

#[tokio::test]
async fn biz1_selector_switch_watch_streams_match_the_real_server() {
    let h = scenario().await;
    // The Service selector gains `version=4.2` (blue/green switch), then loses it.
    watch_scenario(&h, 125..=126, 129..=130, 127..=128).await;
}

/// Initial events (`resourceVersion` 0 or unset, `sendInitialEvents`): one ADDED per
/// object in name order, then, only with bookmarks allowed, a BOOKMARK marked
/// `k8s.io/initial-events-end`. The captured streams come from a later cluster state, so
/// the shape is compared, and the objects are checked against a list of our own.
#[tokio::test]
async fn initial_events_follow_the_real_server() {
    let h = scenario().await;
    let mut list: Vec<Capture> = files(131..=137, &[]);
    list.extend(files(197..=197, &[]));
    assert_eq!(list.len(), 8);
    let mut handles = Vec::new();
    for c in &list {
        let path = with_param(&c.path, "timeoutSeconds", "600");
        handles.push((
            c.clone(),
            open_watch(&h.admin, &path, c.accept.as_deref()).await,
        ));
    }
    h.server.faults().drop_watches();
    let shape = |evs: &[Value]| {
        let mut out: Vec<String> = Vec::new();
        for e in evs {
            let t = e["type"].as_str().unwrap_or_default();
            let end = e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true";
            let s = match (t, end) {
                ("BOOKMARK", true) => "END".to_string(),
                ("BOOKMARK", false) => continue,
                (t, _) => t.to_string(),
            };
            if out.last() != Some(&s) {
                out.push(s);
            }
        }
        out
    };
    for (c, handle) in handles {
        let ours = handle.await.expect("watch");
        let theirs = fixture_events(&c.file);
        assert_eq!(shape(&ours), shape(&theirs), "{}", c.file);
        // Without `allowWatchBookmarks` the real server sends no bookmark at all.
        if !c.path.contains("allowWatchBookmarks=true") {
            assert!(theirs.iter().all(|e| e["type"] != "BOOKMARK"), "{}", c.file);
            assert!(
                ours.iter().all(|e| e["type"] != "BOOKMARK"),
                "{}: a bookmark nobody asked for",
                c.file
            );
        }
        let names: Vec<&str> = ours
            .iter()
            .filter(|e| e["type"] == "ADDED")
            .filter_map(|e| e["object"]["metadata"]["name"].as_str())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "{}: initial events in name order", c.file);
        // The same selection as a list.
        let list_path = [
            "sendInitialEvents",
            "resourceVersionMatch",
            "resourceVersion",
            "allowWatchBookmarks",
            "timeoutSeconds",
        ]
        .iter()
        .fold(with_param(&c.path, "watch", "false"), |p, k| {
            without_param(&p, k)
        });
        let listed = send(
            &h.admin,
            "GET",
            &list_path,
            Some("application/json"),
            None,
            None,
        )
        .await
        .json();
        assert_eq!(
            names.len(),
            listed["items"].as_array().map_or(0, Vec::len),
            "{}: one ADDED per object",
            c.file
        );
        assert!(!names.is_empty(), "{}", c.file);
        if c.accept
            .as_deref()
            .is_some_and(|a| a.contains("PartialObjectMetadata"))
        {
            assert!(
                ours.iter()
                    .all(|e| e["object"]["kind"] == "PartialObjectMetadata"),
                "{}",
                c.file
            );
        }
    }
}

/// Versions older than the history: watches get an `ERROR` event with a 410 `Status`,
/// exact lists a 410, not-older-than lists and gets the newest data; a list from the future
/// times out with 504, a watch from the future stays silent.
#[tokio::test]
async fn expired_and_future_versions_match_the_real_server() {
    let h = scenario().await;
    h.server.faults().compact();
    let old = "101";
    let rewrite = |c: &Capture| {
        let mut c = c.clone();
        // The captured versions mean "compacted"; ours are numbered differently.
        for captured in ["556", "660", "1"] {
            if c.path.contains(&format!("resourceVersion={captured}&"))
                || c.path.ends_with(&format!("resourceVersion={captured}"))
            {
                c.path = with_param(&c.path, "resourceVersion", old);
            }
        }
        if c.path.contains("continue=") {
            let token = r#"{"v":"meta.k8s.io/v1","rv":101,"start":"big-050\u0000"}"#;
            c.path = with_param(
                &c.path,
                "continue",
                &base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token),
            );
        }
        c
    };
    // Lists and gets (238–243) and the future list (248).
    let mut diffs = Vec::new();
    for c in files(238..=243, &[])
        .into_iter()
        .chain(files(248..=248, &[]))
        .chain(files(250..=250, &[]))
    {
        let c = rewrite(&c);
        let raw = h.replay(&c).await;
        if raw.status.as_u16() != c.status {
            diffs.push(format!(
                "{}: status {} (expected {})",
                c.file, raw.status, c.status
            ));
            continue;
        }
        let mut expected = fixture(&c.file);
        let mut actual = raw.json();
        for v in [&mut expected, &mut actual] {
            // Versions quoted in messages differ between servers.
            if let Some(m) = v["message"].as_str() {
                v["message"] = m
                    .chars()
                    .filter(|ch| !ch.is_ascii_digit())
                    .collect::<String>()
                    .into();
            }
            if c.file.starts_with("lists/endpointslices") {
                merge_slices(v);
            }
            normalize(v);
        }
        if c.file.starts_with("lists/") || c.file.starts_with("objects/") {
            // Captured after later edits; the status and kind are what matter here.
            assert_eq!(actual["kind"], expected["kind"], "{}", c.file);
            continue;
        }
        diffs.extend(
            diff(&expected, &actual)
                .into_iter()
                .map(|d| format!("{}: {d}", c.file)),
        );
    }
    // Watches from a compacted version (244–247) and from the future (249).
    let mut handles = Vec::new();
    for c in files(244..=247, &[])
        .into_iter()
        .chain(files(249..=249, &[]))
    {
        let c = rewrite(&c);
        let path = with_param(&c.path, "timeoutSeconds", "600");
        handles.push((
            c.clone(),
            open_watch(&h.admin, &path, c.accept.as_deref()).await,
        ));
    }
    h.server.faults().drop_watches();
    for (c, handle) in handles {
        let ours = handle.await.expect("watch");
        let theirs = fixture_events(&c.file);
        assert_eq!(ours.len(), theirs.len(), "{}: {ours:?}", c.file);
        for (a, e) in ours.iter().zip(&theirs) {
            assert_eq!(a["type"], e["type"], "{}", c.file);
            assert_eq!(a["object"]["code"], e["object"]["code"], "{}", c.file);
            assert_eq!(a["object"]["reason"], e["object"]["reason"], "{}", c.file);
            let msg = |v: &Value| {
                v["object"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .filter(|ch| !ch.is_ascii_digit())
                    .collect::<String>()
            };
            assert_eq!(msg(a), msg(e), "{}", c.file);
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// Writes: the patches `kubectl label`/`annotate` send, strategic merge, JSON patch,
/// apply, a no-op patch and a PUT (index 162–169, after the hello-svc steps), then
/// generateName, dry run, deletes with their different answers, a precondition conflict,
/// delete-collection and the mirrored slice's removal (252–261).
#[tokio::test]
async fn writes_match_the_real_server() {
    let h = scenario().await;
    for c in files(114..=120, &[]) {
        assert_eq!(h.replay(&c).await.status.as_u16(), c.status, "{}", c.file);
    }
    let slice = strip_server_fields(&fixture("objects/endpointslice-manual-1.json"));
    post(
        &h.admin,
        "/api/v1/namespaces/demo/services",
        &json!({"metadata": {"name": "manual"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    )
    .await;
    post(
        &h.admin,
        "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices",
        &slice,
    )
    .await;
    let mut list = files(162..=169, &[]);
    list.extend(files(
        252..=261,
        &[
            // The captured deletecollection removed Pods made by earlier generateName creates
            // of the capture script; ours removes the one made here (checked below).
            "patches/deletecollection-pods.response.json",
        ],
    ));
    assert_eq!(list.len(), 17);
    let mut diffs = Vec::new();
    for c in &list {
        diffs.extend(h.check(c).await);
        h.server.settled().await;
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    let dc = capture("patches/deletecollection-pods.response.json");
    let raw = h.replay(&dc).await;
    assert_eq!(raw.status, 200);
    let deleted = raw.json();
    assert_eq!(deleted["kind"], "PodList");
    assert!(
        deleted["items"]
            .as_array()
            .is_some_and(|i| i.iter().all(|p| p["metadata"]["labels"]["app"] == "gen"))
    );
}

/// Keeps the entries of `theirs` named like ours (by `key`) and returns the names of the
/// captured entries this server does not serve.
fn served_subset(theirs: &mut Value, ours: &Value, key: &dyn Fn(&Value) -> String) -> Vec<String> {
    let names: Vec<String> = ours.as_array().into_iter().flatten().map(key).collect();
    let mut missing = Vec::new();
    if let Some(items) = theirs.as_array_mut() {
        items.retain(|e| {
            let served = names.contains(&key(e));
            if !served {
                missing.push(key(e));
            }
            served
        });
    }
    missing
}

/// Discovery (index lines 15–23, 218): `/version`, the legacy documents, aggregated
/// discovery and the OpenAPI v3 index, with their headers and framing. A real server serves
/// more resources and groups than this one: each entry this server lists must be the
/// captured entry, and what it does not serve is listed here, so serving more (or less)
/// shows up as a difference.
#[tokio::test]
async fn discovery_documents_match_the_real_server() {
    let h = scenario().await;
    let mut diffs = Vec::new();
    let mut not_served: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // What this server serves that the captured cluster did not have (no Gateway API CRDs
    // were installed there).
    let mut extra: Vec<String> = Vec::new();
    let mut list = files(15..=23, &[]);
    list.extend(files(218..=218, &[]));
    assert_eq!(list.len(), 10, "selected captures");
    for c in &list {
        let raw = h.replay(c).await;
        assert_eq!(raw.status.as_u16(), c.status, "{}", c.file);
        diffs.extend(headers_diff(c, &raw.headers));
        let text = fixture_text(&c.file);
        diffs.extend(framing_diff(&c.file, text.as_bytes(), &raw.body));
        let mut theirs: Value = serde_json::from_str(&text).expect("captured JSON");
        let mut ours = raw.json();
        let mut order = Vec::new();
        key_order_diff("", &theirs, &ours, &mut order);
        diffs.extend(order.into_iter().map(|d| format!("{}: {d}", c.file)));
        let name = |k: &'static str| move |e: &Value| e[k].as_str().unwrap_or_default().to_string();
        let missing = match c.file.as_str() {
            "discovery/version.json" | "discovery/version.anonymous.json" => {
                // Which build this is: the captured server was built outside git.
                for v in [&mut theirs, &mut ours] {
                    v["gitCommit"] = Value::Null;
                    v["buildDate"] = Value::Null;
                }
                Vec::new()
            }
            "discovery/api.json" => {
                // The server's own address.
                for v in [&mut theirs, &mut ours] {
                    v["serverAddressByClientCIDRs"][0]["serverAddress"] = Value::Null;
                }
                Vec::new()
            }
            "discovery/api-v1.json" | "discovery/apis-discovery.k8s.io-v1.json" => {
                served_subset(&mut theirs["resources"], &ours["resources"], &name("name"))
            }
            "discovery/apis.json" => {
                let mut ours_groups = ours["groups"].clone();
                extra.extend(served_subset(
                    &mut ours_groups,
                    &theirs["groups"],
                    &name("name"),
                ));
                ours["groups"] = ours_groups;
                served_subset(&mut theirs["groups"], &ours["groups"], &name("name"))
            }
            "discovery/api.aggregated.json" | "discovery/apis.aggregated.json" => {
                let group =
                    |e: &Value| e["metadata"]["name"].as_str().unwrap_or("core").to_string();
                let mut ours_items = ours["items"].clone();
                extra.extend(served_subset(&mut ours_items, &theirs["items"], &group));
                ours["items"] = ours_items;
                let mut missing = served_subset(&mut theirs["items"], &ours["items"], &group);
                for (t, o) in theirs["items"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                    .zip(ours["items"].as_array().into_iter().flatten())
                {
                    let (tr, or) = (
                        &mut t["versions"][0]["resources"],
                        &o["versions"][0]["resources"],
                    );
                    missing.extend(served_subset(tr, or, &name("resource")));
                    // Subresources: this server has `status` only (no exec, log, proxy…).
                    for (tres, ores) in tr
                        .as_array_mut()
                        .into_iter()
                        .flatten()
                        .zip(or.as_array().into_iter().flatten())
                    {
                        if !ores["subresources"].is_null() {
                            missing.extend(
                                served_subset(
                                    &mut tres["subresources"],
                                    &ores["subresources"],
                                    &name("subresource"),
                                )
                                .into_iter()
                                .map(|s| {
                                    format!("{}/{s}", ores["resource"].as_str().unwrap_or(""))
                                }),
                            );
                        }
                    }
                }
                missing
            }
            "discovery/openapi-v3.json" => {
                // The index: which documents exist; their hashes vary.
                let paths = |v: &Value| -> Vec<String> {
                    v["paths"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k.clone())
                        .collect()
                };
                let theirs_paths = paths(&theirs);
                extra.extend(
                    paths(&ours)
                        .into_iter()
                        .filter(|p| !theirs_paths.contains(p)),
                );
                let ours_paths: Vec<String> = paths(&ours)
                    .into_iter()
                    .filter(|p| theirs_paths.contains(p))
                    .collect();
                let missing = paths(&theirs)
                    .into_iter()
                    .filter(|p| !ours_paths.contains(p))
                    .collect();
                theirs = json!(
                    ours_paths
                        .iter()
                        .filter(|p| paths(&theirs).contains(p))
                        .collect::<Vec<_>>()
                );
                ours = json!(ours_paths);
                missing
            }
            _ => Vec::new(),
        };
        if !missing.is_empty() {
            not_served.insert(c.file.clone(), missing);
        }
        diffs.extend(
            diff(&theirs, &ours)
                .into_iter()
                .map(|d| format!("{}: {d}", c.file)),
        );
    }
    assert!(
        diffs.is_empty(),
        "{} differences from the real server:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    assert_eq!(
        extra,
        [
            "gateway.networking.k8s.io",
            "gateway.networking.k8s.io",
            "apis/gateway.networking.k8s.io/v1"
        ],
        "served beyond the capture"
    );
    let counts: BTreeMap<&str, usize> = not_served
        .iter()
        .map(|(f, m)| (f.as_str(), m.len()))
        .collect();
    // What a full control plane has and this server does not serve.
    assert_eq!(
        counts,
        BTreeMap::from([
            // 11 core resources (ConfigMaps, Secrets…) and 18 subresources.
            ("discovery/api-v1.json", 29),
            ("discovery/api.aggregated.json", 23),
            // 19 groups (apps, batch, networking.k8s.io…).
            ("discovery/apis.aggregated.json", 19),
            ("discovery/apis.json", 19),
            ("discovery/openapi-v3.json", 45),
        ]),
        "{not_served:#?}"
    );
}
