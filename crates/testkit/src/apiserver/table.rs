//! Server-side `Table`s, which `kubectl get` asks for and prints as they are.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{Value, json};

use super::handler::as_metadata;
use super::resource::Resource;

fn age(obj: &Value) -> String {
    let Some(created) = obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - created.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `a,b,c + N more...`, as kubectl's printers shorten long lists.
fn first_three(items: &[String]) -> String {
    if items.is_empty() {
        return "<none>".into();
    }
    let head = items.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    if items.len() > 3 {
        format!("{head} + {} more...", items.len() - 3)
    } else {
        head
    }
}

fn str_or<'a>(v: &'a Value, default: &'a str) -> &'a str {
    v.as_str().filter(|s| !s.is_empty()).unwrap_or(default)
}

fn columns(res: Resource) -> Vec<(&'static str, i32)> {
    match res {
        Resource::Pod => vec![
            ("Name", 0),
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
            ("Nominated Node", 1),
            ("Readiness Gates", 1),
        ],
        Resource::Service => vec![
            ("Name", 0),
            ("Type", 0),
            ("Cluster-IP", 0),
            ("External-IP", 0),
            ("Port(s)", 0),
            ("Age", 0),
            ("Selector", 1),
        ],
        Resource::Endpoints => vec![("Name", 0), ("Endpoints", 0), ("Age", 0)],
        Resource::EndpointSlice => vec![
            ("Name", 0),
            ("AddressType", 0),
            ("Ports", 0),
            ("Endpoints", 0),
            ("Age", 0),
        ],
        Resource::Node => vec![
            ("Name", 0),
            ("Status", 0),
            ("Roles", 0),
            ("Age", 0),
            ("Version", 0),
            ("Internal-IP", 1),
            ("External-IP", 1),
            ("OS-Image", 1),
            ("Kernel-Version", 1),
            ("Container-Runtime", 1),
        ],
        Resource::Namespace => vec![("Name", 0), ("Status", 0), ("Age", 0)],
        // The CRD's printer columns.
        Resource::HttpRoute => vec![("Name", 0), ("Hostnames", 0), ("Age", 0)],
        Resource::Event => vec![
            ("Last Seen", 0),
            ("Type", 0),
            ("Reason", 0),
            ("Object", 0),
            ("Message", 0),
        ],
    }
}

/// Column descriptions as a real kube-apiserver (v1.34) sends them, taken from its captured
/// Tables. Name and Age read the same for every resource; columns of resources that were
/// not captured (Namespace status, Events) have none.
fn description(res: Resource, column: &str) -> &'static str {
    static CAPTURED: LazyLock<BTreeMap<String, BTreeMap<String, String>>> = LazyLock::new(|| {
        serde_json::from_str(include_str!("table-columns.json")).unwrap_or_default()
    });
    let of = |plural: &str| {
        CAPTURED
            .get(plural)
            .and_then(|m| m.get(column))
            .map(String::as_str)
    };
    of(res.plural())
        .or_else(|| {
            matches!(column, "Name" | "Age")
                .then(|| of("pods"))
                .flatten()
        })
        .unwrap_or("")
}

fn cells(res: Resource, o: &Value) -> Vec<Value> {
    let name = o["metadata"]["name"].clone();
    match res {
        Resource::Pod => {
            let containers = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = statuses.iter().filter(|s| s["ready"] == true).count();
            let restarts: i64 = statuses
                .iter()
                .filter_map(|s| s["restartCount"].as_i64())
                .sum();
            let status = if o["metadata"].get("deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else {
                str_or(&o["status"]["phase"], "Unknown").to_string()
            };
            vec![
                name,
                format!("{ready}/{containers}").into(),
                status.into(),
                restarts.to_string().into(),
                age(o).into(),
                str_or(&o["status"]["podIP"], "<none>").into(),
                str_or(&o["spec"]["nodeName"], "<none>").into(),
                "<none>".into(),
                "<none>".into(),
            ]
        }
        Resource::Service => {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let proto = str_or(&p["protocol"], "TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) => format!("{}:{np}/{proto}", p["port"]),
                        None => format!("{}/{proto}", p["port"]),
                    }
                })
                .collect();
            let selector: Vec<String> = o["spec"]["selector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            let external = match o["spec"]["type"].as_str() {
                Some("ExternalName") => str_or(&o["spec"]["externalName"], "<none>").to_string(),
                _ => "<none>".to_string(),
            };
            vec![
                name,
                str_or(&o["spec"]["type"], "ClusterIP").into(),
                str_or(&o["spec"]["clusterIP"], "<none>").into(),
                external.into(),
                if ports.is_empty() {
                    "<none>".to_string()
                } else {
                    ports.join(",")
                }
                .into(),
                age(o).into(),
                if selector.is_empty() {
                    "<none>".to_string()
                } else {
                    selector.join(",")
                }
                .into(),
            ]
        }
        Resource::Endpoints => {
            let mut eps = Vec::new();
            for s in o["subsets"].as_array().into_iter().flatten() {
                for a in s["addresses"].as_array().into_iter().flatten() {
                    for p in s["ports"].as_array().into_iter().flatten() {
                        eps.push(format!("{}:{}", str_or(&a["ip"], ""), p["port"]));
                    }
                }
            }
            vec![name, first_three(&eps).into(), age(o).into()]
        }
        Resource::EndpointSlice => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| p["port"].to_string())
                .collect();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            vec![
                name,
                str_or(&o["addressType"], "").into(),
                if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                }
                .into(),
                first_three(&addrs).into(),
                age(o).into(),
            ]
        }
        Resource::Node => {
            let ready = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let internal = o["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["type"] == "InternalIP")
                .map(|a| str_or(&a["address"], "<none>").to_string());
            vec![
                name,
                if ready { "Ready" } else { "NotReady" }.into(),
                "<none>".into(),
                age(o).into(),
                str_or(&o["status"]["nodeInfo"]["kubeletVersion"], "").into(),
                internal.unwrap_or_else(|| "<none>".into()).into(),
                "<none>".into(),
                "<unknown>".into(),
                "<unknown>".into(),
                "<unknown>".into(),
            ]
        }
        Resource::Namespace => vec![
            name,
            str_or(&o["status"]["phase"], "Active").into(),
            age(o).into(),
        ],
        Resource::HttpRoute => {
            let hosts: Vec<&str> = o["spec"]["hostnames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            vec![
                name,
                if hosts.is_empty() {
                    Value::Null
                } else {
                    json!(hosts)
                },
                age(o).into(),
            ]
        }
        Resource::Event => vec![
            age(o).into(),
            str_or(&o["type"], "").into(),
            str_or(&o["reason"], "").into(),
            format!(
                "{}/{}",
                str_or(&o["involvedObject"]["kind"], "").to_lowercase(),
                str_or(&o["involvedObject"]["name"], "")
            )
            .into(),
            str_or(&o["message"], "").into(),
        ],
    }
}

/// What each Table row carries (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub(crate) fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// A `meta.k8s.io/v1` Table of `objects`.
pub(crate) fn render(
    res: Resource,
    objects: &[Value],
    rv: u64,
    next: Option<&str>,
    include: Include,
) -> Value {
    let columns: Vec<Value> = columns(res)
        .into_iter()
        .map(|(name, priority)| {
            json!({"name": name, "type": "string", "format": if name == "Name" { "name" } else { "" }, "description": description(res, name), "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = match include {
                Include::None => Value::Null,
                Include::Metadata => as_metadata(o),
                Include::Object => o.clone(),
            };
            json!({"cells": cells(res, o), "object": object})
        })
        .collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = next {
        metadata["continue"] = c.into();
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": columns, "rows": rows})
}
