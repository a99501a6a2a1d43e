//! What the API server does to an object before storing it: decoding checks, defaults,
//! system metadata and validation, with the messages kube-apiserver uses.

use std::net::IpAddr;

use rand::Rng;
use rudder_balance::selector::{
    is_dns1123_label, is_dns1123_subdomain, validate_label_key, validate_label_value,
};
use serde_json::{Map, Value, json};

use super::resource::Resource;
use super::server::Config;
use super::status::{ApiError, ApiResult, Cause};

/// `2026-11-25T18:56:28Z`: RFC 3339 in whole seconds, as Kubernetes writes times.
pub(crate) fn now() -> String {
    format_time(jiff::Timestamp::now())
}

pub(crate) fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Five characters from the alphabet Kubernetes uses for generated names.
pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn cannot_handle(res: Resource, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "{} in version \"v1\" cannot be handled as a {}: {why}",
        res.kind(),
        res.kind()
    ))
}

/// Parses a request body as an object of `res`, with the API server's decoding errors.
pub(crate) fn decode(res: Resource, body: &[u8]) -> ApiResult<Value> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        let head: String = String::from_utf8_lossy(body).chars().take(30).collect();
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: {} ({head} ...)",
            res.kind(),
            super::query::go_json_error(body, &e)
        ))
    })?;
    admit(res, &value)?;
    Ok(value)
}

/// The checks [`decode`] makes once the body has parsed: an object, of this kind, whose
/// fields have the types the API gives them.
pub(crate) fn admit(res: Resource, value: &Value) -> ApiResult<()> {
    if !value.is_object() {
        return Err(cannot_handle(
            res,
            "json: cannot unmarshal non-object into Go value",
        ));
    }
    if let Some(kind) = value.get("kind").and_then(Value::as_str)
        && kind != res.kind()
    {
        let version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("v1");
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {}: converting (v1.{kind}) to (core.{}): unknown conversion",
            res.kind(),
            res.kind()
        )));
    }
    check_types(res, value)
}

/// A built-in kind's k8s-openapi type, as the checks below use it.
struct Typed {
    /// Decodes a value into the type, straight from the borrowed value.
    decodes: fn(&Value) -> Result<(), serde_json::Error>,
    /// Decodes and encodes it again: what the API knows of it.
    round_trip: fn(&Value) -> Result<Value, serde_json::Error>,
}

/// The typed struct of `res`; `None` for a custom resource (`validate` checks the fields
/// it has).
fn typed(res: Resource) -> Option<Typed> {
    use k8s_openapi::api::{core::v1 as core, discovery::v1 as disco};
    use serde::de::DeserializeOwned;
    fn of<T: DeserializeOwned + serde::Serialize>() -> Typed {
        Typed {
            decodes: |v| T::deserialize(v).map(drop),
            round_trip: |v| serde_json::to_value(T::deserialize(v)?),
        }
    }
    Some(match res {
        Resource::Namespace => of::<core::Namespace>(),
        Resource::Node => of::<core::Node>(),
        Resource::Pod => of::<core::Pod>(),
        Resource::Service => of::<core::Service>(),
        Resource::Endpoints => of::<core::Endpoints>(),
        Resource::EndpointSlice => of::<disco::EndpointSlice>(),
        Resource::Event => of::<core::Event>(),
        Resource::HttpRoute => return None,
    })
}

/// Rejects fields of the wrong JSON type by decoding into the typed k8s-openapi struct
/// (nothing is copied or encoded again).
fn check_types(res: Resource, value: &Value) -> ApiResult<()> {
    match typed(res) {
        Some(t) => (t.decodes)(value).map_err(|e| cannot_handle(res, e)),
        None => Ok(()),
    }
}

/// `value` decoded into the typed k8s-openapi struct and encoded again: what the API knows
/// of it. Unknown fields do not survive the trip.
fn typed_round_trip(res: Resource, value: &Value) -> ApiResult<Value> {
    match typed(res) {
        Some(t) => (t.round_trip)(value).map_err(|e| cannot_handle(res, e)),
        None => Ok(value.clone()),
    }
}

/// `fieldValidation=Strict`: fields the API does not know, at any depth, are an error
/// naming each of them (`unknown field "spec.bogus"`), as kubectl's default validation
/// expects from the server.
pub(crate) fn check_strict(res: Resource, value: &Value) -> ApiResult<()> {
    let known = typed_round_trip(res, value)?;
    let mut unknown = Vec::new();
    unknown_fields("", value, &known, &mut unknown);
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    Err(cannot_handle(
        res,
        format!("strict decoding error: {}", list.join(", ")),
    ))
}

/// Paths in `given` that `known` (its typed round trip) lost. Nulls and empty values are
/// not fields anyone set, so they are not reported.
fn unknown_fields(path: &str, given: &Value, known: &Value, out: &mut Vec<String>) {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, v) in g {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(kv) => unknown_fields(&here, v, kv, out),
                    None if is_empty(v) => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                unknown_fields(&format!("{path}[{i}]"), gv, kv, out);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

/// Fills in what the server owns on create: name from `generateName`, namespace, uid,
/// creation time and generation, then the kind's defaults.
pub(crate) fn on_create(res: Resource, ns: Option<&str>, obj: &mut Value) -> ApiResult<String> {
    obj["kind"] = res.kind().into();
    obj["apiVersion"] = res.api_version().into();
    let meta = meta_mut(obj);
    if res.namespaced() {
        match (meta.get("namespace").and_then(Value::as_str), ns) {
            (Some(given), Some(path)) if !given.is_empty() && given != path => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {}
        }
        meta.insert("namespace".into(), ns.unwrap_or("default").into());
    } else {
        meta.remove("namespace");
    }
    let name = match meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        Some(n) => n.to_string(),
        None => match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
            _ => {
                return Err(ApiError::invalid(
                    res,
                    "",
                    vec![Cause::required("metadata.name")],
                ));
            }
        },
    };
    meta.insert("name".into(), name.clone().into());
    meta.insert("uid".into(), uid().into());
    meta.insert("creationTimestamp".into(), now().into());
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ] {
        meta.remove(k);
    }
    if matches!(res, Resource::Pod | Resource::EndpointSlice) {
        meta.insert("generation".into(), 1.into());
    } else {
        meta.remove("generation");
    }
    defaults(res, obj);
    Ok(name)
}

fn set_default(obj: &mut Value, key: &str, value: Value) {
    if let Some(m) = obj.as_object_mut()
        && m.get(key).is_none_or(Value::is_null)
    {
        m.insert(key.to_string(), value);
    }
}

/// The defaults kube-apiserver applies, as seen in the v1.34 captures.
pub(crate) fn defaults(res: Resource, obj: &mut Value) {
    match res {
        Resource::Namespace => {
            let name = obj["metadata"]["name"].clone();
            let meta = meta_mut(obj);
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            labels["kubernetes.io/metadata.name"] = name;
            set_default(obj, "spec", json!({}));
            set_default(&mut obj["spec"], "finalizers", json!(["kubernetes"]));
            set_default(obj, "status", json!({}));
            set_default(&mut obj["status"], "phase", "Active".into());
        }
        Resource::Node => {
            set_default(obj, "spec", json!({}));
            set_default(obj, "status", json!({}));
            let status = &mut obj["status"];
            set_default(
                status,
                "daemonEndpoints",
                json!({"kubeletEndpoint": {"Port": 0}}),
            );
            set_default(
                status,
                "nodeInfo",
                json!({"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                       "osImage": "", "containerRuntimeVersion": "", "kubeletVersion": "",
                       "kubeProxyVersion": "", "operatingSystem": "", "architecture": ""}),
            );
        }
        Resource::Pod => pod_defaults(obj),
        Resource::Service => service_defaults(obj),
        Resource::Endpoints => {
            if let Some(subsets) = obj.get_mut("subsets").and_then(Value::as_array_mut) {
                for s in subsets {
                    if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
                        for p in ports {
                            set_default(p, "protocol", "TCP".into());
                        }
                    }
                }
            }
        }
        Resource::Event => {}
        Resource::HttpRoute => httproute_defaults(obj),
        Resource::EndpointSlice => {
            if let Some(ports) = obj.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    set_default(p, "protocol", "TCP".into());
                }
            }
            set_default(obj, "endpoints", json!([]));
        }
    }
}

fn pod_defaults(obj: &mut Value) {
    set_default(obj, "spec", json!({}));
    let spec = &mut obj["spec"];
    for key in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        set_default(p, "protocol", "TCP".into());
                    }
                }
                set_default(c, "resources", json!({}));
                set_default(c, "terminationMessagePath", "/dev/termination-log".into());
                set_default(c, "terminationMessagePolicy", "File".into());
                let tag_latest = c["image"]
                    .as_str()
                    .is_some_and(|i| i.ends_with(":latest") || !i.contains(':'));
                set_default(
                    c,
                    "imagePullPolicy",
                    if tag_latest { "Always" } else { "IfNotPresent" }.into(),
                );
            }
        }
    }
    set_default(spec, "restartPolicy", "Always".into());
    set_default(spec, "terminationGracePeriodSeconds", 30.into());
    set_default(spec, "dnsPolicy", "ClusterFirst".into());
    set_default(spec, "serviceAccountName", "default".into());
    let sa = spec["serviceAccountName"].clone();
    set_default(spec, "serviceAccount", sa);
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", "default-scheduler".into());
    set_default(
        spec,
        "tolerations",
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ]),
    );
    set_default(spec, "priority", 0.into());
    set_default(spec, "enableServiceLinks", true.into());
    set_default(spec, "preemptionPolicy", "PreemptLowerPriority".into());
    set_default(obj, "status", json!({}));
    set_default(&mut obj["status"], "phase", "Pending".into());
    set_default(&mut obj["status"], "qosClass", "BestEffort".into());
    // Go serialises the zero `lastState` struct; clients see `{}`.
    for key in ["containerStatuses", "initContainerStatuses"] {
        if let Some(statuses) = obj["status"].get_mut(key).and_then(Value::as_array_mut) {
            for st in statuses {
                set_default(st, "lastState", json!({}));
            }
        }
    }
}

fn service_defaults(obj: &mut Value) {
    set_default(obj, "spec", json!({}));
    let spec = &mut obj["spec"];
    set_default(spec, "type", "ClusterIP".into());
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p, "protocol", "TCP".into());
            let port = p["port"].clone();
            set_default(p, "targetPort", port);
            if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
                let node_port = rand::rng().random_range(30000..32768);
                set_default(p, "nodePort", node_port.into());
            }
        }
    }
    if ty != "ExternalName" {
        let ip = spec["clusterIP"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                let mut rng = rand::rng();
                format!(
                    "10.96.{}.{}",
                    rng.random_range(0..=255),
                    rng.random_range(1..=254)
                )
            });
        spec["clusterIP"] = ip.clone().into();
        set_default(spec, "clusterIPs", json!([ip]));
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", "SingleStack".into());
        set_default(spec, "internalTrafficPolicy", "Cluster".into());
    }
    set_default(spec, "sessionAffinity", "None".into());
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        set_default(spec, "externalTrafficPolicy", "Cluster".into());
    }
    set_default(obj, "status", json!({"loadBalancer": {}}));
}

/// Adds the taint a new Node gets from admission.
pub(crate) fn on_create_node(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if spec.get("taints").is_none_or(Value::is_null) {
        spec["taints"] = json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]);
    }
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Validates `obj` as kube-apiserver would; an empty result means valid.
pub(crate) fn validate(res: Resource, obj: &Value, config: &Config) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    match res {
        Resource::Namespace => {
            if !is_dns1123_label(name) {
                causes.push(Cause::invalid("metadata.name", name, LABEL_MSG));
            }
        }
        Resource::Service => {
            let ok = is_dns1123_label(name) && name.as_bytes()[0].is_ascii_lowercase();
            if !ok {
                causes.push(Cause::invalid("metadata.name", name, DNS1035_MSG));
            }
        }
        _ => {
            if !is_dns1123_subdomain(name) {
                causes.push(Cause::invalid("metadata.name", name, SUBDOMAIN_MSG));
            }
        }
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if let Err(why) = validate_label_key(k) {
                causes.push(Cause::invalid("metadata.labels", k, &why));
            }
            match v.as_str() {
                Some(v) => {
                    if let Err(why) = validate_label_value(v) {
                        causes.push(Cause::invalid("metadata.labels", v, &why));
                    }
                }
                None => causes.push(Cause::invalid(
                    "metadata.labels",
                    &v.to_string(),
                    "must be a string",
                )),
            }
        }
    }
    match res {
        Resource::Endpoints => validate_endpoints(obj, config, &mut causes),
        Resource::EndpointSlice => validate_slice(obj, config, &mut causes),
        Resource::Service => validate_service(obj, &mut causes),
        Resource::HttpRoute => validate_httproute(obj, &mut causes),
        _ => {}
    }
    causes
}

/// The defaults of the Gateway API CRD's schema (v1): a route without rules matches every
/// path, a match without a path is a `/` prefix, parents are Gateways unless they say
/// otherwise, backends are Services of weight 1.
fn httproute_defaults(obj: &mut Value) {
    set_default(obj, "spec", json!({}));
    let spec = &mut obj["spec"];
    for p in spec
        .get_mut("parentRefs")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        set_default(p, "group", "gateway.networking.k8s.io".into());
        set_default(p, "kind", "Gateway".into());
    }
    let prefix = json!({"type": "PathPrefix", "value": "/"});
    set_default(spec, "rules", json!([{"matches": [{"path": prefix}]}]));
    for rule in spec["rules"].as_array_mut().into_iter().flatten() {
        set_default(rule, "matches", json!([{"path": prefix}]));
        for m in rule["matches"].as_array_mut().into_iter().flatten() {
            set_default(m, "path", prefix.clone());
            for list in ["headers", "queryParams"] {
                for h in m
                    .get_mut(list)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    set_default(h, "type", "Exact".into());
                }
            }
        }
        for b in rule
            .get_mut("backendRefs")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            set_default(b, "group", "".into());
            set_default(b, "kind", "Service".into());
            set_default(b, "weight", 1.into());
        }
    }
}

/// What the Gateway API CRD's schema checks of the fields Rudder reads.
fn validate_httproute(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let bound = |field: String, v: &Value, max: usize, causes: &mut Vec<Cause>| {
        if v.as_array().is_some_and(|a| a.len() > max) {
            causes.push(Cause {
                reason: "FieldValueTooMany",
                message: format!(
                    "Too many: {}: must have at most {max} items",
                    v.as_array().map_or(0, Vec::len)
                ),
                field,
            });
        }
    };
    bound("spec.parentRefs".into(), &spec["parentRefs"], 32, causes);
    bound("spec.rules".into(), &spec["rules"], 16, causes);
    for (i, rule) in spec["rules"].as_array().into_iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        bound(format!("{at}.matches"), &rule["matches"], 64, causes);
        for (j, m) in rule["matches"].as_array().into_iter().flatten().enumerate() {
            let path = &m["path"];
            let kind = path["type"].as_str().unwrap_or("PathPrefix");
            if !matches!(kind, "Exact" | "PathPrefix" | "RegularExpression") {
                causes.push(Cause::unsupported(
                    format!("{at}.matches[{j}].path.type"),
                    kind,
                    &["Exact", "PathPrefix", "RegularExpression"],
                ));
            }
            let value = path["value"].as_str().unwrap_or("/");
            if kind != "RegularExpression" && !value.starts_with('/') {
                causes.push(Cause::invalid(
                    format!("{at}.matches[{j}].path"),
                    value,
                    "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']",
                ));
            }
            if let Some(method) = m["method"].as_str()
                && !matches!(
                    method,
                    "GET"
                        | "HEAD"
                        | "POST"
                        | "PUT"
                        | "DELETE"
                        | "CONNECT"
                        | "OPTIONS"
                        | "TRACE"
                        | "PATCH"
                )
            {
                causes.push(Cause::unsupported(
                    format!("{at}.matches[{j}].method"),
                    method,
                    &[
                        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                        "PATCH",
                    ],
                ));
            }
        }
        for (j, b) in rule["backendRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("{at}.backendRefs[{j}]");
            if b["name"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required(format!("{at}.name")));
            }
            let weight = b["weight"].as_i64().unwrap_or(1);
            if !(0..=1_000_000).contains(&weight) {
                causes.push(Cause::invalid(
                    format!("{at}.weight"),
                    &weight.to_string(),
                    "must be between 0 and 1000000",
                ));
            }
            if b["kind"].as_str().unwrap_or("Service") == "Service"
                && b["group"].as_str().unwrap_or("").is_empty()
                && b["port"].is_null()
            {
                causes.push(Cause::invalid(
                    at.clone(),
                    "object",
                    "Must have port for Service reference",
                ));
            }
        }
    }
}

fn validate_service(obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(selector) = obj["spec"]["selector"].as_object() {
        for (k, v) in selector {
            if let Err(why) = validate_label_key(k) {
                causes.push(Cause::invalid("spec.selector", k, &why));
            }
            if let Err(why) = validate_label_value(v.as_str().unwrap_or("")) {
                causes.push(Cause::invalid(
                    "spec.selector",
                    v.as_str().unwrap_or(""),
                    &why,
                ));
            }
        }
    }
    if let Some(ports) = obj["spec"]["ports"].as_array() {
        for (i, p) in ports.iter().enumerate() {
            let port = p["port"].as_i64().unwrap_or(0);
            if !(1..=65535).contains(&port) {
                causes.push(Cause::invalid(
                    format!("spec.ports[{i}].port"),
                    &port.to_string(),
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
}

/// Why an endpoint IP is refused, as `ValidateEndpointIP` words it.
fn endpoint_ip_problem(ip: &str, config: &Config) -> Option<&'static str> {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return Some("must be a valid IP address");
    };
    if addr.is_unspecified() {
        return Some("may not be unspecified");
    }
    if addr.is_loopback() && !config.allow_loopback_endpoints {
        return Some("may not be in the loopback range (127.0.0.0/8, ::1/128)");
    }
    let link_local = match addr {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)");
    }
    if addr.is_multicast() {
        return Some("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)");
    }
    None
}

fn validate_endpoints(obj: &Value, config: &Config, causes: &mut Vec<Cause>) {
    let Some(subsets) = obj["subsets"].as_array() else {
        return;
    };
    for (i, s) in subsets.iter().enumerate() {
        for list in ["addresses", "notReadyAddresses"] {
            for (j, a) in s[list].as_array().into_iter().flatten().enumerate() {
                let ip = a["ip"].as_str().unwrap_or("");
                if let Some(why) = endpoint_ip_problem(ip, config) {
                    causes.push(Cause::invalid(
                        format!("subsets[{i}].{list}[{j}].ip"),
                        ip,
                        why,
                    ));
                }
            }
        }
        for (j, p) in s["ports"].as_array().into_iter().flatten().enumerate() {
            let port = p["port"].as_i64().unwrap_or(0);
            if !(1..=65535).contains(&port) {
                causes.push(Cause::invalid(
                    format!("subsets[{i}].ports[{j}].port"),
                    &port.to_string(),
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
}

fn validate_slice(obj: &Value, config: &Config, causes: &mut Vec<Cause>) {
    let at = obj["addressType"].as_str().unwrap_or("");
    if !matches!(at, "IPv4" | "IPv6" | "FQDN") {
        if at.is_empty() {
            causes.push(Cause::required("addressType"));
        } else {
            causes.push(Cause::unsupported(
                "addressType",
                at,
                &["FQDN", "IPv4", "IPv6"],
            ));
        }
        return;
    }
    for (i, e) in obj["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let addrs = e["addresses"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if addrs.is_empty() {
            causes.push(Cause::required(format!("endpoints[{i}].addresses")));
        }
        for (j, a) in addrs.iter().enumerate() {
            let s = a.as_str().unwrap_or("");
            let problem = match at {
                "FQDN" => (!is_dns1123_subdomain(s)).then_some(SUBDOMAIN_MSG),
                family => match s.parse::<IpAddr>() {
                    Ok(IpAddr::V4(_)) if family == "IPv6" => Some("must be an IPv6 address"),
                    Ok(IpAddr::V6(_)) if family == "IPv4" => Some("must be an IPv4 address"),
                    _ => endpoint_ip_problem(s, config),
                },
            };
            if let Some(why) = problem {
                causes.push(Cause::invalid(
                    format!("endpoints[{i}].addresses[{j}]"),
                    s,
                    why,
                ));
            }
        }
    }
}

/// Orders keys the way Go's structs serialise them, so responses read like the real ones.
pub(crate) fn canonical(res: Resource, obj: Value) -> Value {
    const TOP: &[&str] = &["kind", "apiVersion", "metadata"];
    let rest = res.body_fields();
    let Value::Object(mut map) = obj else {
        return obj;
    };
    if let Some(Value::Object(meta)) = map.shift_remove("metadata") {
        map.insert("metadata".into(), Value::Object(canonical_metadata(meta)));
    }
    // The nested structs this server fills in itself (defaults, status), in Go order.
    let nested: &[(&str, &[&str])] = match res {
        Resource::Service => &[("spec", SERVICE_SPEC), ("status", &[])],
        Resource::Pod => &[("spec", POD_SPEC), ("status", POD_STATUS)],
        Resource::Node => &[("spec", &[]), ("status", NODE_STATUS)],
        _ => &[],
    };
    // Lists of structs inside them: (field, list, item order).
    let items: &[(&str, &str, &[&str])] = match res {
        Resource::Service => &[("spec", "ports", SERVICE_PORT)],
        Resource::Pod => &[
            ("spec", "containers", CONTAINER),
            ("spec", "initContainers", CONTAINER),
            ("status", "containerStatuses", CONTAINER_STATUS),
            ("status", "initContainerStatuses", CONTAINER_STATUS),
        ],
        _ => &[],
    };
    for (field, order) in nested {
        if let Some(Value::Object(inner)) = map.shift_remove(*field) {
            let mut inner = reorder(inner, order);
            for m in ["selector", "nodeSelector"] {
                sort_map(inner.get_mut(m));
            }
            for (_, list, item_order) in items.iter().filter(|(f, ..)| f == field) {
                for item in inner
                    .get_mut(*list)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Value::Object(m) = item {
                        *m = reorder(std::mem::take(m), item_order);
                        if let Some(Value::Array(ports)) = m.get_mut("ports") {
                            for p in ports.iter_mut() {
                                if let Value::Object(pm) = p {
                                    *pm = reorder(std::mem::take(pm), CONTAINER_PORT);
                                }
                            }
                        }
                    }
                }
            }
            map.insert((*field).to_string(), Value::Object(inner));
        }
    }
    let order: Vec<&str> = TOP.iter().chain(rest).copied().collect();
    Value::Object(reorder(map, &order))
}

/// `ObjectMeta` in Go struct order, its maps sorted.
pub(crate) fn canonical_metadata(mut meta: Map<String, Value>) -> Map<String, Value> {
    const META: &[&str] = &[
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    ];
    // Go maps serialise with sorted keys.
    for m in ["labels", "annotations"] {
        sort_map(meta.get_mut(m));
    }
    reorder(meta, META)
}

/// `ServiceSpec`'s fields in Go struct order.
const SERVICE_SPEC: &[&str] = &[
    "ports",
    "selector",
    "clusterIP",
    "clusterIPs",
    "type",
    "externalIPs",
    "sessionAffinity",
    "loadBalancerIP",
    "loadBalancerSourceRanges",
    "externalName",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "publishNotReadyAddresses",
    "sessionAffinityConfig",
    "ipFamilies",
    "ipFamilyPolicy",
    "allocateLoadBalancerNodePorts",
    "loadBalancerClass",
    "internalTrafficPolicy",
    "trafficDistribution",
];

/// `PodSpec`'s fields in Go struct order.
const POD_SPEC: &[&str] = &[
    "volumes",
    "initContainers",
    "containers",
    "ephemeralContainers",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "dnsPolicy",
    "nodeSelector",
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    "nodeName",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "shareProcessNamespace",
    "securityContext",
    "imagePullSecrets",
    "hostname",
    "subdomain",
    "affinity",
    "schedulerName",
    "tolerations",
    "hostAliases",
    "priorityClassName",
    "priority",
    "dnsConfig",
    "readinessGates",
    "runtimeClassName",
    "enableServiceLinks",
    "preemptionPolicy",
    "overhead",
    "topologySpreadConstraints",
    "setHostnameAsFQDN",
    "os",
    "hostUsers",
    "schedulingGates",
    "resourceClaims",
    "resources",
];

/// `PodStatus`'s fields in Go struct order.
const POD_STATUS: &[&str] = &[
    "observedGeneration",
    "phase",
    "conditions",
    "message",
    "reason",
    "nominatedNodeName",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
    "initContainerStatuses",
    "containerStatuses",
    "qosClass",
    "ephemeralContainerStatuses",
    "resize",
    "resourceClaimStatuses",
    "extendedResourceClaimStatus",
];

/// `NodeStatus`'s fields in Go struct order.
const NODE_STATUS: &[&str] = &[
    "capacity",
    "allocatable",
    "phase",
    "conditions",
    "addresses",
    "daemonEndpoints",
    "nodeInfo",
    "images",
    "volumesInUse",
    "volumesAttached",
    "config",
    "runtimeHandlers",
    "features",
];

/// `ServicePort`'s fields in Go struct order.
const SERVICE_PORT: &[&str] = &[
    "name",
    "protocol",
    "appProtocol",
    "port",
    "targetPort",
    "nodePort",
];

/// `Container`'s fields in Go struct order.
const CONTAINER: &[&str] = &[
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    "ports",
    "envFrom",
    "env",
    "resources",
    "resizePolicy",
    "restartPolicy",
    "restartPolicyRules",
    "volumeMounts",
    "volumeDevices",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "securityContext",
    "stdin",
    "stdinOnce",
    "tty",
];

/// `ContainerPort`'s fields in Go struct order (only inside containers).
const CONTAINER_PORT: &[&str] = &["name", "hostPort", "containerPort", "protocol", "hostIP"];

/// `ContainerStatus`'s fields in Go struct order.
const CONTAINER_STATUS: &[&str] = &[
    "name",
    "state",
    "lastState",
    "ready",
    "restartCount",
    "image",
    "imageID",
    "containerID",
    "started",
    "allocatedResources",
    "resources",
    "volumeMounts",
    "user",
    "allocatedResourcesStatus",
    "stopSignal",
];

/// Sorts a JSON object's keys, as Go's encoder does for maps.
fn sort_map(v: Option<&mut Value>) {
    if let Some(Value::Object(m)) = v {
        m.sort_keys();
    }
}

/// `value`'s keys reordered: `order` first, then the rest as they were.
pub(crate) fn reorder_keys(value: Value, order: &[&str]) -> Value {
    match value {
        Value::Object(m) => Value::Object(reorder(m, order)),
        other => other,
    }
}

/// `order`'s keys first, in that order, then the rest as they were.
fn reorder(mut map: Map<String, Value>, order: &[&str]) -> Map<String, Value> {
    let mut out = Map::with_capacity(map.len());
    for k in order {
        if let Some(v) = map.shift_remove(*k) {
            out.insert((*k).to_string(), v);
        }
    }
    out.extend(map);
    out
}
