//! Discovery documents: `/version`, `/api`, `/apis` and the resource lists that kube-rs and
//! kubectl read before they talk about resources.

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::handler::{Body, Out, full, json_response};
use super::resource::Resource;
use super::status::{ApiError, ApiResult};

/// `/version`: public, always indented, no trailing newline (as observed).
pub(crate) fn version() -> Response<Body> {
    let v = json!({
        "major": "1",
        "minor": "34",
        "emulationMajor": "1",
        "emulationMinor": "34",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "33",
        "gitVersion": "v1.34.2",
        "gitCommit": "rudder-testkit",
        "gitTreeState": "clean",
        "buildDate": "2026-11-25T00:00:00Z",
        "goVersion": "go1.24.4",
        "compiler": "gc",
        "platform": "linux/amd64",
    });
    let mut resp = Response::new(full(serde_json::to_string_pretty(&v).unwrap_or_default()));
    *resp.status_mut() = StatusCode::OK;
    super::handler::api_headers(resp.headers_mut(), "application/json");
    resp
}

fn resource_list(group_version: &str, group: &str) -> Value {
    let mut resources = Vec::new();
    for r in Resource::ALL.into_iter().filter(|r| r.group() == group) {
        let mut entry = json!({
            "name": r.plural(),
            "singularName": r.singular(),
            "namespaced": r.namespaced(),
            "kind": r.kind(),
            "verbs": r.verbs(),
        });
        if !r.short_names().is_empty() {
            entry["shortNames"] = json!(r.short_names());
        }
        if !r.categories().is_empty() {
            entry["categories"] = json!(r.categories());
        }
        if !r.storage_version_hash().is_empty() {
            entry["storageVersionHash"] = r.storage_version_hash().into();
        }
        resources.push(entry);
        if r.has_status() {
            resources.push(json!({
                "name": format!("{}/status", r.plural()),
                "singularName": "",
                "namespaced": r.namespaced(),
                "kind": r.kind(),
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    resources.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    if group.is_empty() {
        // The core group's list has no apiVersion (as observed).
        json!({"kind": "APIResourceList", "groupVersion": group_version, "resources": resources})
    } else {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
    }
}

/// The API groups this server serves besides the core group, in discovery order.
fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for g in Resource::ALL.into_iter().map(Resource::group) {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    groups
}

/// The media type of aggregated discovery (`/api` and `/apis` in one document per tree),
/// which kubectl asks for first.
const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether `accept` asks for aggregated discovery v2.
pub(crate) fn wants_aggregated(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|t| {
            let params: Vec<&str> = t.split(';').map(str::trim).collect();
            params.contains(&"g=apidiscovery.k8s.io")
                && params.contains(&"v=v2")
                && params.contains(&"as=APIGroupDiscoveryList")
        })
    })
}

/// The aggregated discovery document of one tree: `/api` (the core group) or `/apis`.
fn aggregated(core: bool) -> Value {
    let mut groups: Vec<&str> = Resource::ALL
        .into_iter()
        .map(Resource::group)
        .filter(|g| g.is_empty() == core)
        .collect();
    groups.dedup();
    let items: Vec<Value> = groups
        .into_iter()
        .map(|group| {
            let resources: Vec<Value> = Resource::ALL
                .into_iter()
                .filter(|r| r.group() == group)
                .map(|r| {
                    let kind = json!({"group": "", "version": "", "kind": r.kind()});
                    let mut e = json!({
                        "resource": r.plural(),
                        "responseKind": kind,
                        "scope": if r.namespaced() { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular(),
                        "verbs": r.verbs(),
                    });
                    if !r.short_names().is_empty() {
                        e["shortNames"] = json!(r.short_names());
                    }
                    if !r.categories().is_empty() {
                        e["categories"] = json!(r.categories());
                    }
                    if r.has_status() {
                        e["subresources"] = json!([{"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}]);
                    }
                    e
                })
                .collect();
            let mut resources = resources;
            resources.sort_by(|a, b| a["resource"].as_str().cmp(&b["resource"].as_str()));
            let metadata = if group.is_empty() {
                json!({})
            } else {
                json!({"name": group})
            };
            json!({"metadata": metadata, "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// Aggregated discovery as the real server sends it: its own media type, cacheable, with
/// an entity tag of the content.
fn aggregated_response(core: bool) -> Response<Body> {
    use std::hash::{Hash, Hasher};
    let mut text = aggregated(core).to_string();
    text.push('\n');
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    let etag = format!("\"{:016X}\"", hasher.finish());
    let mut resp = Response::new(full(text));
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(AGGREGATED));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    resp
}

/// The OpenAPI v3 documents a real kube-apiserver (v1.34) served for the groups this server
/// has, captured gzip-compressed (`../shared/fixtures/discovery/`): with their schemas,
/// `kubectl explain` and client-side checks work.
const OPENAPI_API_V1_GZ: &[u8] = include_bytes!("openapi/api-v1.json.gz");
const OPENAPI_DISCOVERY_V1_GZ: &[u8] = include_bytes!("openapi/apis-discovery.k8s.io-v1.json.gz");

/// A captured OpenAPI document, sent as it was stored (gzip).
fn captured_openapi(gz: &'static [u8]) -> Response<Body> {
    let mut resp = Response::new(full(gz));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    resp
}

/// Serves discovery paths; anything else is the mux's plain-text 404. `gzip`: the client
/// accepts gzip, so the captured OpenAPI documents can be served as stored (clients that do
/// not get a generated document with the operations only, no schemas). `aggregated`: the
/// client asked for aggregated discovery (`/api`, `/apis`).
pub(crate) fn serve(
    path: &str,
    out: Out,
    gzip: bool,
    aggregated: bool,
) -> ApiResult<Response<Body>> {
    let group_doc = |g: &str| {
        let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
        json!({"name": g, "versions": [gv], "preferredVersion": gv})
    };
    let path = path.trim_end_matches('/');
    if let Some(g) = path.strip_prefix("/apis/").filter(|g| groups().contains(g)) {
        let mut doc = group_doc(g);
        let object = doc.as_object_mut().expect("object");
        object.insert("kind".into(), "APIGroup".into());
        object.insert("apiVersion".into(), "v1".into());
        let doc = super::admission::reorder_keys(doc, &["kind", "apiVersion", "name"]);
        return Ok(json_response(StatusCode::OK, &doc, out));
    }
    if let Some(g) = path
        .strip_prefix("/apis/")
        .and_then(|p| p.strip_suffix("/v1"))
        .filter(|g| groups().contains(g))
    {
        return Ok(json_response(
            StatusCode::OK,
            &resource_list(&format!("{g}/v1"), g),
            out,
        ));
    }
    let doc = match path {
        "/api" if aggregated => return Ok(aggregated_response(true)),
        "/apis" if aggregated => return Ok(aggregated_response(false)),
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
        "/apis" => {
            let groups: Vec<Value> = groups().into_iter().map(group_doc).collect();
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        "/api/v1" => resource_list("v1", ""),
        "/openapi/v3" => {
            // kubectl fetches this index to learn whether `fieldValidation` is supported.
            let mut paths = serde_json::Map::new();
            paths.insert(
                "api/v1".into(),
                json!({"serverRelativeURL": "/openapi/v3/api/v1?hash=RUDDER"}),
            );
            for g in groups() {
                paths.insert(
                    format!("apis/{g}/v1"),
                    json!({"serverRelativeURL": format!("/openapi/v3/apis/{g}/v1?hash=RUDDER")}),
                );
            }
            let index = json!({ "paths": paths });
            // Compact, with no trailing newline, labelled as text (as observed).
            let mut resp = Response::new(full(index.to_string()));
            super::handler::api_headers(resp.headers_mut(), "text/plain; charset=utf-8");
            return Ok(resp);
        }
        "/openapi/v3/api/v1" if gzip => return Ok(captured_openapi(OPENAPI_API_V1_GZ)),
        "/openapi/v3/apis/discovery.k8s.io/v1" if gzip => {
            return Ok(captured_openapi(OPENAPI_DISCOVERY_V1_GZ));
        }
        "/openapi/v3/api/v1" => openapi(""),
        p if p.starts_with("/openapi/v3/apis/") => {
            match p
                .strip_prefix("/openapi/v3/apis/")
                .and_then(|g| g.strip_suffix("/v1"))
                .filter(|g| groups().contains(g))
            {
                Some(g) => openapi(g),
                None => return Err(ApiError::page_not_found()),
            }
        }
        "/healthz" | "/readyz" | "/livez" => {
            let mut resp = Response::new(full("ok"));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return Ok(resp);
        }
        _ => return Err(ApiError::page_not_found()),
    };
    Ok(json_response(StatusCode::OK, &doc, out))
}

/// A minimal OpenAPI v3 document for one group version: the write operations of each
/// resource, tagged with their group/version/kind and declaring `fieldValidation`. That is
/// what kubectl's query-parameter verifier reads before `create -f` and `apply`. Schemas
/// are not served, so kubectl does no client-side schema validation.
fn openapi(group: &str) -> Value {
    let field_validation = json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let mut paths = serde_json::Map::new();
    for r in Resource::ALL.into_iter().filter(|r| r.group() == group) {
        let prefix = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/v1")
        };
        let collection = if r.namespaced() {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural())
        } else {
            format!("{prefix}/{}", r.plural())
        };
        let gvk = json!({"group": group, "version": "v1", "kind": r.kind()});
        let op = |action: &str| {
            json!({
                "parameters": [field_validation],
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        paths.insert(collection.clone(), json!({"post": op("post")}));
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"put": op("put"), "patch": op("patch")}),
        );
    }
    json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.34.2"}, "paths": paths})
}
