//! Routing and the REST verbs.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::access::Access;
use super::admission;
use super::query::{self, Query, Repr};
use super::resource::Resource;
use super::server::{Shared, Traffic};
use super::status::{ApiError, ApiResult};
use super::store::{Key, Store, meta_str};
use super::{discovery, table, watch};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

const MAX_BODY: usize = 8 << 20;

/// What a request addresses under `/api/v1` or `/apis/discovery.k8s.io/v1`.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) res: Resource,
    pub(crate) ns: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) status: bool,
    /// `pods/{name}/portforward`.
    pub(crate) portforward: bool,
}

/// Per-request settings that shape the response.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Out {
    pub(crate) pretty: bool,
    pub(crate) warning: Option<&'static str>,
}

/// The headers every API answer carries.
pub(crate) fn api_headers(h: &mut http::HeaderMap, content_type: &'static str) {
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A JSON response with the headers kube-apiserver sends.
pub(crate) fn json_response(code: StatusCode, value: &Value, out: Out) -> Response<Body> {
    // Compact JSON ends with a newline; indented JSON (`?pretty=true`, 406 bodies) does not.
    let text = if out.pretty {
        serde_json::to_vec_pretty(value).unwrap_or_default()
    } else {
        // Written straight into bytes: `to_string` goes through `fmt::Write`, a call per
        // token (a third of a PATCH of a 100-endpoint slice went to it).
        let mut t = serde_json::to_vec(value).unwrap_or_default();
        t.push(b'\n');
        t
    };
    let mut resp = Response::new(full(text));
    *resp.status_mut() = code;
    let h = resp.headers_mut();
    api_headers(h, "application/json");
    h.insert(
        "audit-id",
        HeaderValue::from_str(&admission::uid()).expect("uid is ASCII"),
    );
    if let Some(w) = out.warning {
        h.insert(header::WARNING, HeaderValue::from_static(w));
    }
    resp
}

pub(crate) fn error_response(e: &ApiError, out: Out) -> Response<Body> {
    if e.plain {
        let mut resp = Response::new(full(format!("{}\n", e.message)));
        *resp.status_mut() = e.code;
        let h = resp.headers_mut();
        api_headers(h, "text/plain; charset=utf-8");
        h.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        return resp;
    }
    let pretty = out.pretty || e.code == StatusCode::NOT_ACCEPTABLE;
    // The deprecation warning comes from the resource's handler, which a request refused by
    // authentication or authorization never reaches.
    let warning = out
        .warning
        .filter(|_| !matches!(e.code, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN));
    let mut resp = json_response(e.code, &e.to_status(), Out { pretty, warning });
    if e.code == StatusCode::FORBIDDEN {
        resp.headers_mut().insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
    }
    if let Some(s) = e.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

/// Creates what every cluster has before anyone writes: the `default` Namespace.
pub(crate) fn bootstrap(shared: &Shared) {
    for ns in ["default", "kube-node-lease", "kube-public", "kube-system"] {
        let mut obj = json!({"metadata": {"name": ns}});
        if admission::on_create(Resource::Namespace, None, &mut obj).is_ok() {
            shared.write(|s| s.put((Resource::Namespace, String::new(), ns.into()), obj));
        }
    }
}

/// The server's request entry point.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let (latency, injected) = {
        let mut f = shared.faults.lock().expect("fault lock");
        let injected = match &mut f.fail_next {
            Some((n, code)) if *n > 0 => {
                *n -= 1;
                Some(*code)
            }
            _ => None,
        };
        (f.latency, injected)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let pretty = Query::parse(req.uri().query()).flag("pretty")
        || req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| ua.starts_with("curl/") || ua.starts_with("Wget/"));
    let out = Out {
        pretty,
        warning: None,
    };
    if let Some(code) = injected {
        return Ok(error_response(&ApiError::injected(code), out));
    }
    let target_warning = parse_target(req.uri().path())
        .ok()
        .flatten()
        .and_then(|t| t.res.warning());
    let out = Out {
        pretty,
        warning: target_warning,
    };
    // What to count this request as: its resource and verb (discovery documents apart).
    let (counted, any_version): ((String, &'static str), bool) = {
        let query = Query::parse(req.uri().query());
        match parse_target(req.uri().path()) {
            Ok(Some(t)) => {
                let verb = verb_for(req.method(), &t, &query).unwrap_or("other");
                (
                    (t.res.plural().to_string(), verb),
                    verb == "list" && query.get("resourceVersion") == Some("0"),
                )
            }
            _ => (("discovery".to_string(), "get"), false),
        }
    };
    let mut resp = match route(&shared, req, out).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e, out),
    };
    // A watch counts its bytes as it sends them; other bodies are whole already.
    let bytes = if counted.1 == "watch" && resp.status() == StatusCode::OK {
        0
    } else {
        http_body::Body::size_hint(resp.body()).exact().unwrap_or(0)
    };
    shared.count_as(
        &counted.0,
        counted.1,
        Traffic {
            requests: 1,
            bytes,
            any_version: u64::from(any_version),
        },
    );
    // Every answer carries an audit ID, the plain-text 404s and discovery documents too.
    if !resp.headers().contains_key("audit-id") {
        resp.headers_mut().insert(
            "audit-id",
            HeaderValue::from_str(&admission::uid()).expect("uid is ASCII"),
        );
    }
    Ok(resp)
}

/// `pods/{name}/portforward?ports=N`: the Pod's IP and the port, then the WebSocket relay.
fn port_forward(
    shared: &Shared,
    target: &Target,
    query: &Query,
    req: Request<Incoming>,
) -> ApiResult<Response<Body>> {
    let name = target.name.clone().unwrap_or_default();
    let port: u16 = query
        .get("ports")
        .and_then(|p| p.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::bad_request("query parameter \"ports\" is required"))?;
    let ip = shared.read(|store| {
        store
            .get(&key(target, &name))
            .and_then(|pod| pod["status"]["podIP"].as_str().map(str::to_string))
    });
    let ip = match ip {
        Some(ip) => ip,
        None if shared.read(|store| store.contains(&key(target, &name))) => {
            return Err(ApiError::bad_request(format!(
                "pod {name} has no IP address yet"
            )));
        }
        None => return Err(ApiError::not_found(Resource::Pod, &name)),
    };
    let addr: std::net::SocketAddr = format!("{ip}:{port}")
        .parse()
        .map_err(|_| ApiError::bad_request(format!("pod {name} has no usable IP ({ip})")))?;
    super::portforward::start(req, addr)
}

fn verb_for(method: &Method, target: &Target, query: &Query) -> Option<&'static str> {
    if target.portforward {
        // A WebSocket upgrade is a GET; the API server authorizes it as `create`.
        return matches!(method.as_str(), "GET" | "POST").then_some("create");
    }
    Some(match (method.as_str(), &target.name, target.status) {
        ("GET", None, false) if query.flag("watch") => "watch",
        ("GET", None, false) => "list",
        ("GET", Some(_), _) => "get",
        ("POST", None, false) => "create",
        ("PUT", Some(_), _) => "update",
        ("PATCH", Some(_), _) => "patch",
        ("DELETE", Some(_), false) => "delete",
        ("DELETE", None, false) if target.res != Resource::Namespace => "deletecollection",
        _ => return None,
    })
}

async fn route(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    out: Out,
) -> ApiResult<Response<Body>> {
    let path = req.uri().path().to_string();
    if path == "/version" || path == "/version/" {
        return Ok(discovery::version());
    }
    let user = authenticate(shared, &req)?;
    let target = parse_target(&path)?;
    let query = Query::parse(req.uri().query());
    let Some(target) = target else {
        if user.is_none() {
            return Err(ApiError::forbidden_path("system:anonymous", &path));
        }
        let gzip = req
            .headers()
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
        let aggregated = discovery::wants_aggregated(
            req.headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok()),
        );
        return discovery::serve(&path, out, gzip, aggregated);
    };
    let verb = verb_for(req.method(), &target, &query).ok_or_else(ApiError::method_not_allowed)?;
    authorize(user.as_ref(), verb, &target)?;
    if target.portforward {
        return port_forward(shared, &target, &query, req);
    }
    if target.res.namespaced() && target.ns.is_none() && !matches!(verb, "list" | "watch") {
        return Err(ApiError::method_not_allowed());
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
    let repr = query::negotiate(accept.as_deref())?;
    match verb {
        "get" => get(shared, &target, &query, repr, out),
        "list" => list(shared, &target, &query, repr, out).await,
        "watch" => {
            let uri = req.uri().to_string();
            watch::start(shared.clone(), target, &query, repr, uri)
        }
        "create" => {
            let body = read_body(req).await?;
            create(shared, &target, &query, content_type.as_deref(), &body, out)
        }
        "update" => {
            let body = read_body(req).await?;
            update(shared, &target, &query, content_type.as_deref(), &body, out)
        }
        "patch" => {
            let body = read_body(req).await?;
            patch(shared, &target, &query, content_type.as_deref(), &body, out)
        }
        "delete" => {
            let body = read_body(req).await?;
            delete(shared, &target, &query, &body, out)
        }
        "deletecollection" => {
            let body = read_body(req).await?;
            delete_collection(shared, &target, &query, &body, out)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn authenticate(shared: &Shared, req: &Request<Incoming>) -> ApiResult<Option<Access>> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    let tokens = shared.tokens.lock().expect("token lock");
    tokens
        .get(token)
        .cloned()
        .map(Some)
        .ok_or_else(ApiError::unauthorized)
}

fn authorize(user: Option<&Access>, verb: &str, target: &Target) -> ApiResult<()> {
    let resource = if target.status {
        format!("{}/status", target.res.plural())
    } else if target.portforward {
        format!("{}/portforward", target.res.plural())
    } else {
        target.res.plural().to_string()
    };
    let allowed = user.is_some_and(|u| u.allows(verb, &resource, target.ns.as_deref()));
    if allowed {
        return Ok(());
    }
    let name = user.map_or("system:anonymous", |u| u.user_name());
    Err(ApiError::forbidden(
        name,
        verb,
        target.res,
        target.ns.as_deref(),
        target.name.as_deref(),
    ))
}

/// `None` for paths that are not resource paths (discovery and unknown paths).
pub(crate) fn parse_target(path: &str) -> ApiResult<Option<Target>> {
    let (group, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("", rest)
    } else if let Some((group, rest)) = path.strip_prefix("/apis/").and_then(|p| {
        let (group, rest) = p.split_once("/v1/")?;
        let group = Resource::ALL
            .into_iter()
            .map(Resource::group)
            .find(|g| !g.is_empty() && *g == group)?;
        Some((group, rest))
    }) {
        (group, rest)
    } else {
        return Ok(None);
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let lookup =
        |plural: &str| Resource::from_path(group, "v1", plural).ok_or_else(ApiError::no_resource);
    let (res, ns, tail) = match segs.as_slice() {
        [] => return Ok(None),
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            let res = lookup(plural)?;
            if !res.namespaced() {
                return Err(ApiError::no_resource());
            }
            (res, Some(ns.to_string()), tail)
        }
        [plural, tail @ ..] => (lookup(plural)?, None, tail),
    };
    let (name, status) = match tail {
        [] => (None, false),
        [name] => (Some(name.to_string()), false),
        [name, "status"] if res.has_status() => (Some(name.to_string()), true),
        [name, "portforward"] if res == Resource::Pod => {
            return Ok(Some(Target {
                res,
                ns,
                name: Some(name.to_string()),
                status: false,
                portforward: true,
            }));
        }
        _ => return Err(ApiError::no_resource()),
    };
    if res.namespaced() && ns.is_none() && name.is_some() {
        return Err(ApiError::no_resource());
    }
    Ok(Some(Target {
        res,
        ns,
        name,
        status,
        portforward: false,
    }))
}

async fn read_body(req: Request<Incoming>) -> ApiResult<Bytes> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            let mut err = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("request body: {e}"),
            );
            err.details = Some(Box::new(json!({})));
            err
        })
}

fn key(target: &Target, name: &str) -> Key {
    (
        target.res,
        target.ns.clone().unwrap_or_default(),
        name.to_string(),
    )
}

// === representations ===

/// An object as a list item: canonical key order, no `kind`/`apiVersion` (as observed).
fn list_item(res: Resource, obj: Value) -> Value {
    let mut o = admission::canonical(res, obj);
    if let Some(m) = o.as_object_mut() {
        m.shift_remove("kind");
        m.shift_remove("apiVersion");
    }
    o
}

/// The `PartialObjectMetadata` form of an object.
pub(crate) fn as_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": match obj.get("metadata") {
            Some(Value::Object(m)) => Value::Object(admission::canonical_metadata(m.clone())),
            _ => json!({}),
        },
    })
}

fn render_one(
    res: Resource,
    obj: &Value,
    repr: Repr,
    rv: u64,
    include: table::Include,
) -> ApiResult<Value> {
    match repr {
        Repr::Json => Ok(admission::canonical(res, obj.clone())),
        Repr::Metadata => Ok(as_metadata(obj)),
        Repr::Table => Ok(table::render(
            res,
            std::slice::from_ref(obj),
            rv,
            None,
            include,
        )),
        Repr::MetadataList => Err(ApiError::not_acceptable(format!(
            "you requested PartialObjectMetadataList, but the requested object is not a list ({})",
            res.go_type(false)
        ))),
    }
}

// === get / list ===

fn get(
    shared: &Shared,
    target: &Target,
    query: &Query,
    repr: Repr,
    out: Out,
) -> ApiResult<Response<Body>> {
    let name = target.name.as_deref().unwrap_or_default();
    let (obj, rv) = shared.read(|s| (s.get(&key(target, name)).cloned(), s.rv()));
    let obj = obj.ok_or_else(|| ApiError::not_found(target.res, name))?;
    let include = table::Include::parse(query.get("includeObject"));
    Ok(json_response(
        StatusCode::OK,
        &render_one(target.res, &obj, repr, rv, include)?,
        out,
    ))
}

async fn list(
    shared: &Shared,
    target: &Target,
    query: &Query,
    repr: Repr,
    out: Out,
) -> ApiResult<Response<Body>> {
    let labels = query.label_selector()?;
    let fields = query.field_selector(target.res)?;
    let limit = query.int("limit")?.filter(|l| *l > 0);
    let rv = query.resource_version(false)?;
    let rv_match = query.get("resourceVersionMatch").filter(|m| !m.is_empty());
    if rv_match.is_some() && rv.is_none() {
        return Err(query::list_options_invalid(
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    let continue_from = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => Some(query::decode_continue(token)?),
        None => None,
    };
    if let Some(want) = rv.filter(|v| *v > 0) {
        wait_for_rv(shared, want).await?;
    }
    let res = target.res;
    let (items, rv_now, next) = shared.read(|store| -> ApiResult<_> {
        if rv_match == Some("Exact") && rv.is_some_and(|v| v < store.compacted()) {
            return Err(ApiError::expired("The resourceVersion for the provided list is too old."));
        }
        if let Some((token_rv, start)) = &continue_from
            && (*token_rv as u64) < store.compacted()
        {
            let mut e = ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.");
            e.metadata = Some(Box::new(json!({"continue": query::encode_continue(-1, start)})));
            return Err(e);
        }
        // A list at resourceVersion=0 is served from the cache and ignores `limit`.
        let limit = if rv == Some(0) { None } else { limit };
        let mut items = Vec::new();
        let mut next = None;
        for ((_, ns, name), obj) in store.iter(res, target.ns.as_deref()) {
            let sort_key = if res.namespaced() && target.ns.is_none() { format!("{ns}/{name}") } else { name.clone() };
            if let Some((_, start)) = &continue_from
                && sort_key.as_str() <= start.as_str()
            {
                continue;
            }
            let labels_map = labels_of(obj);
            if !labels.matches(&labels_map) || !fields.matches(obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() as i64 >= l) {
                next = Some(sort_key_of_last(&items, res, target));
                break;
            }
            items.push(obj.clone());
        }
        let rv_now = match &continue_from {
            Some((token_rv, _)) => *token_rv as u64,
            None => store.rv(),
        };
        Ok((items, rv_now, next.flatten()))
    })?;
    let mut metadata = json!({"resourceVersion": rv_now.to_string()});
    if let Some(start) = next {
        metadata["continue"] = query::encode_continue(rv_now as i64, &start).into();
    }
    let body = match repr {
        Repr::Json => {
            let items: Vec<Value> = items
                .iter()
                .map(|o| list_item(res, (**o).clone()))
                .collect();
            json!({"kind": format!("{}List", res.kind()), "apiVersion": res.api_version(), "metadata": metadata, "items": items})
        }
        Repr::MetadataList => {
            let items: Vec<Value> = items.iter().map(|o| as_metadata(o)).collect();
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "items": items})
        }
        Repr::Table => {
            let objs: Vec<Value> = items.iter().map(|o| (**o).clone()).collect();
            let include = table::Include::parse(query.get("includeObject"));
            table::render(
                res,
                &objs,
                rv_now,
                metadata.get("continue").and_then(Value::as_str),
                include,
            )
        }
        Repr::Metadata => {
            return Err(ApiError::not_acceptable(format!(
                "you requested PartialObjectMetadata, but the requested object is a list ({})",
                res.go_type(true)
            )));
        }
    };
    Ok(json_response(StatusCode::OK, &body, out))
}

fn sort_key_of_last(items: &[Arc<Value>], res: Resource, target: &Target) -> Option<String> {
    let last = items.last()?;
    let name = meta_str(last, "name").unwrap_or_default();
    Some(if res.namespaced() && target.ns.is_none() {
        format!("{}/{name}", meta_str(last, "namespace").unwrap_or_default())
    } else {
        name.to_string()
    })
}

/// A list at a version the server has not reached waits up to 3 s, then fails with 504.
async fn wait_for_rv(shared: &Shared, want: u64) -> ApiResult<()> {
    let mut rx = shared.changed.subscribe();
    let reached = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|rv| *rv >= want)).await;
    if matches!(reached, Ok(Ok(_))) {
        return Ok(());
    }
    let current = shared.read(|s| s.rv());
    let mut e = ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "Timeout",
        format!("Timeout: Too large resource version: {want}, current: {current}"),
    );
    e.details = Some(Box::new(json!({
        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
        "retryAfterSeconds": 1,
    })));
    e.retry_after = Some(1);
    Err(e)
}

pub(crate) fn labels_of(obj: &Value) -> std::collections::BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

// === writes ===

fn require_json(content_type: Option<&str>) -> ApiResult<()> {
    match content_type {
        Some("application/json") | None => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf",
        )),
    }
}

fn create(
    shared: &Shared,
    target: &Target,
    query: &Query,
    content_type: Option<&str>,
    body: &[u8],
    out: Out,
) -> ApiResult<Response<Body>> {
    require_json(content_type)?;
    let res = target.res;
    let mut obj = admission::decode(res, body)?;
    if query.get("fieldValidation") == Some("Strict") {
        admission::check_strict(res, &obj)?;
    }
    let name = admission::on_create(res, target.ns.as_deref(), &mut obj)?;
    if res == Resource::Node {
        admission::on_create_node(&mut obj);
    }
    let causes = admission::validate(res, &obj, &shared.config);
    if !causes.is_empty() {
        return Err(ApiError::invalid(res, &name, causes));
    }
    let dry_run = query.get("dryRun") == Some("All");
    let stored = shared.write(|store| -> ApiResult<Value> {
        if let Some(ns) = &target.ns
            && !store.contains(&(Resource::Namespace, String::new(), ns.clone()))
        {
            return Err(ApiError::namespace_not_found(ns));
        }
        let k = key(target, &name);
        if store.contains(&k) {
            return Err(ApiError::already_exists(res, &name));
        }
        if dry_run {
            return Ok(obj);
        }
        Ok((*store.put(k, obj)).clone())
    })?;
    Ok(json_response(
        StatusCode::CREATED,
        &admission::canonical(res, stored),
        out,
    ))
}

/// Whether the fields whose change bumps `metadata.generation` differ (an EndpointSlice
/// has them at the top level).
fn spec_changed(res: Resource, a: &Value, b: &Value) -> bool {
    match res {
        Resource::EndpointSlice => ["addressType", "endpoints", "ports"]
            .iter()
            .any(|f| a[f] != b[f]),
        _ => a["spec"] != b["spec"],
    }
}

/// Stores `new` in place of `current` unless nothing changed; the shared end of update
/// and patch.
fn commit(
    store: &mut Store,
    shared: &Shared,
    k: Key,
    current: &Value,
    mut new: Value,
    status_only: bool,
) -> ApiResult<Arc<Value>> {
    let res = k.0;
    let name = k.2.clone();
    // The server owns these; a client cannot change them.
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
        "name",
        "generateName",
    ] {
        match current["metadata"].get(field) {
            Some(v) => new["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    new["kind"] = res.kind().into();
    new["apiVersion"] = res.api_version().into();
    if status_only {
        let status = new.get("status").cloned();
        new = current.clone();
        if let Some(s) = status {
            new["status"] = s;
        }
    } else if res.has_status() {
        match current.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    admission::defaults(res, &mut new);
    if res == Resource::Pod
        && !status_only
        && !pod_spec_change_allowed(&current["spec"], &new["spec"])
    {
        return Err(ApiError::invalid(res, &name, vec![super::status::Cause {
            reason: "FieldValueForbidden",
            field: "spec".into(),
            message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
        }]));
    }
    let mut causes = admission::validate(res, &new, &shared.config);
    if res == Resource::Pod {
        // Observed on kube-apiserver v1.34: an invalid label in a Pod update is reported
        // four times in `causes` (several validation passes check object metadata), while
        // the message names it once (`errors/422-patch-invalid-label-value.json`).
        causes = causes
            .into_iter()
            .flat_map(|c| {
                let copies = if c.field.starts_with("metadata.labels") {
                    4
                } else {
                    1
                };
                std::iter::repeat_n(c, copies)
            })
            .collect();
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(res, &name, causes));
    }
    if spec_changed(res, &new, current)
        && let Some(g) = current["metadata"]["generation"].as_i64()
    {
        new["metadata"]["generation"] = (g + 1).into();
    }
    new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    if &new == current {
        // A no-op write changes neither the resourceVersion nor anything else.
        return Ok(Arc::new(current.clone()));
    }
    Ok(store.put(k, new))
}

/// Pods are mostly immutable: only images, the active deadline and tolerations may change.
fn pod_spec_change_allowed(old: &Value, new: &Value) -> bool {
    let masked = |spec: &Value| {
        let mut s = spec.clone();
        for key in ["containers", "initContainers"] {
            for c in s
                .get_mut(key)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                c["image"] = Value::Null;
            }
        }
        if let Some(m) = s.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
        }
        s
    };
    masked(old) == masked(new)
}

fn update(
    shared: &Shared,
    target: &Target,
    query: &Query,
    content_type: Option<&str>,
    body: &[u8],
    out: Out,
) -> ApiResult<Response<Body>> {
    require_json(content_type)?;
    let res = target.res;
    let name = target.name.clone().unwrap_or_default();
    let new = admission::decode(res, body)?;
    if query.get("fieldValidation") == Some("Strict") {
        admission::check_strict(res, &new)?;
    }
    if let Some(given) = meta_str(&new, "name")
        && given != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        )));
    }
    let stored = shared.write(|store| -> ApiResult<Arc<Value>> {
        let k = key(target, &name);
        let current = store
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, &name))?;
        if let Some(rv) = meta_str(&new, "resourceVersion").filter(|rv| !rv.is_empty())
            && Some(rv) != meta_str(&current, "resourceVersion")
        {
            return Err(ApiError::stale(res, &name));
        }
        commit(store, shared, k, &current, new, target.status)
    })?;
    // Stored objects are canonical (`Store::put`).
    Ok(json_response(StatusCode::OK, &stored, out))
}

fn patch(
    shared: &Shared,
    target: &Target,
    query: &Query,
    content_type: Option<&str>,
    body: &[u8],
    out: Out,
) -> ApiResult<Response<Body>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Merge,
        Json,
    }
    let kind = match content_type {
        // Strategic merge is served as a JSON merge patch: identical for the metadata maps
        // that `kubectl label`/`annotate` change; list merge keys are not implemented.
        Some("application/merge-patch+json" | "application/strategic-merge-patch+json") => {
            Kind::Merge
        }
        Some("application/json-patch+json") => Kind::Json,
        Some("application/apply-patch+yaml" | "application/apply-patch+cbor") => {
            if query.get("fieldManager").is_none_or(str::is_empty) {
                let mut e = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                );
                e.details = Some(Box::new(
                    json!({"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [
                    {"reason": "FieldValueRequired", "message": "Required value: is required for apply patch", "field": "fieldManager"}]}),
                ));
                return Err(e);
            }
            // Server-side apply is approximated by a merge patch of the applied config.
            Kind::Merge
        }
        _ => return Err(ApiError::unsupported_media_type()),
    };
    let patch: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "error decoding patch: {}",
            query::go_json_error(body, &e)
        ))
    })?;
    let res = target.res;
    let name = target.name.clone().unwrap_or_default();
    let stored = shared.write(|store| -> ApiResult<Arc<Value>> {
        let k = key(target, &name);
        let current = store.get(&k).cloned().ok_or_else(|| ApiError::not_found(res, &name))?;
        let copy = match kind {
            Kind::Merge => copy_for_merge(&current, &patch),
            Kind::Json => shared.copy_of(&current),
        };
        let mut doc = admission::canonical(res, copy);
        match kind {
            Kind::Merge => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("error decoding patch: json: cannot unmarshal into Go value of type map[string]interface {}"));
                }
                merge_patch(&mut doc, patch);
            }
            Kind::Json => {
                let ops: json_patch::Patch = serde_json::from_value(patch)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                json_patch::patch(&mut doc, &ops).map_err(|_| {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "the server rejected our request due to an error in our request")
                        .with_details(json!({}))
                })?;
            }
        }
        if query.get("fieldValidation") == Some("Strict") {
            admission::check_strict(res, &doc)?;
        }
        if admission::admit(res, &doc).is_err() {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "the server rejected our request due to an error in our request").with_details(json!({})));
        }
        if meta_str(&doc, "resourceVersion") != meta_str(&current, "resourceVersion") {
            return Err(ApiError::stale(res, &name));
        }
        commit(store, shared, k, &current, doc, target.status)
    })?;
    // Stored objects are canonical (`Store::put`).
    Ok(json_response(StatusCode::OK, &stored, out))
}

/// A copy of `current` for `patch` to be merged into, without the top-level fields the
/// patch replaces whole (a list, a string): they are left `null`, in their place, for the
/// merge to overwrite, rather than copied only to be dropped (a slice's endpoint list).
/// `metadata`, `spec` and `status` are always copied: `admission::canonical` only keeps
/// them as objects.
fn copy_for_merge(current: &Value, patch: &Value) -> Value {
    let (Value::Object(current), Value::Object(patch)) = (current, patch) else {
        return current.clone();
    };
    let copied = current.iter().map(|(k, v)| {
        let replaced = !matches!(k.as_str(), "metadata" | "spec" | "status")
            && patch.get(k).is_some_and(|p| !p.is_null() && !p.is_object());
        let v = if replaced { Value::Null } else { v.clone() };
        (k.clone(), v)
    });
    Value::Object(copied.collect())
}

/// A JSON merge patch (RFC 7386), as `json_patch::merge` applies it, with the patch taken
/// by value so that its values move into the document rather than being copied (a
/// 100-endpoint slice's list is half the cost of a PATCH otherwise).
fn merge_patch(doc: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *doc = patch;
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(serde_json::Map::new());
    }
    let Value::Object(map) = doc else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key.as_str());
        } else {
            merge_patch(map.entry(key).or_insert(Value::Null), value);
        }
    }
}

// === delete ===

#[derive(Debug, Default)]
struct DeleteOptions {
    grace: Option<i64>,
    uid: Option<String>,
    rv: Option<String>,
    dry_run: bool,
}

fn delete_options(query: &Query, body: &[u8]) -> ApiResult<DeleteOptions> {
    let mut opts = DeleteOptions {
        grace: query.int("gracePeriodSeconds")?,
        dry_run: query.get("dryRun") == Some("All"),
        ..Default::default()
    };
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
        if let Some(g) = v["gracePeriodSeconds"].as_i64() {
            opts.grace = Some(g);
        }
        opts.uid = v["preconditions"]["uid"].as_str().map(str::to_string);
        opts.rv = v["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        if v["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "All"))
        {
            opts.dry_run = true;
        }
    }
    Ok(opts)
}

/// Deletes one object; returns what the response shows (the object or its last state).
fn delete_one(
    shared: &Arc<Shared>,
    store: &mut Store,
    k: Key,
    opts: &DeleteOptions,
) -> ApiResult<Value> {
    let res = k.0;
    let name = k.2.clone();
    let current = store
        .get(&k)
        .cloned()
        .ok_or_else(|| ApiError::not_found(res, &name))?;
    if let Some(uid) = &opts.uid
        && Some(uid.as_str()) != meta_str(&current, "uid")
    {
        return Err(ApiError::new(StatusCode::CONFLICT, "Conflict", format!(
            "Operation cannot be fulfilled on {} \"{name}\": the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
            res.kind(), meta_str(&current, "uid").unwrap_or_default()
        )).with_details(json!({"name": name, "kind": res.kind()})));
    }
    if let Some(rv) = &opts.rv
        && Some(rv.as_str()) != meta_str(&current, "resourceVersion")
    {
        return Err(ApiError::new(StatusCode::CONFLICT, "Conflict", format!(
            "Operation cannot be fulfilled on {} \"{name}\": the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
            res.kind(), meta_str(&current, "resourceVersion").unwrap_or_default()
        )).with_details(json!({"name": name, "kind": res.kind()})));
    }
    if opts.dry_run {
        return Ok((*current).clone());
    }
    if res == Resource::Pod
        && current["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    {
        let grace = opts
            .grace
            .or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30)
            .max(0);
        let terminating = current["metadata"].get("deletionTimestamp").is_some();
        let remaining = current["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if grace > 0 && (!terminating || remaining.is_some_and(|r| grace < r)) {
            // Graceful: the Pod stays, Terminating, until its grace period ends (a kubelet
            // would confirm earlier; there is none here).
            let mut pod = (*current).clone();
            let deadline = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
            pod["metadata"]["deletionTimestamp"] = admission::format_time(deadline).into();
            pod["metadata"]["deletionGracePeriodSeconds"] = grace.into();
            let g = pod["metadata"]["generation"].as_i64().unwrap_or(1);
            pod["metadata"]["generation"] = (g + 1).into();
            let stored = store.put(k.clone(), pod);
            schedule_removal(
                Arc::downgrade(shared),
                k,
                meta_str(&stored, "uid").unwrap_or_default().to_string(),
                grace,
            );
            return Ok((*stored).clone());
        }
        if grace == 0 {
            // Forced or immediate: the deletion time moves to now (a MODIFIED event), then
            // the object goes; the answer shows that last state.
            let mut pod = (*current).clone();
            pod["metadata"]["deletionTimestamp"] = admission::now().into();
            pod["metadata"]["deletionGracePeriodSeconds"] = 0.into();
            if !terminating {
                let g = pod["metadata"]["generation"].as_i64().unwrap_or(1);
                pod["metadata"]["generation"] = (g + 1).into();
            }
            store.put(k.clone(), pod);
        } else if terminating {
            return Ok((*current).clone());
        }
    }
    if res == Resource::Namespace {
        let ns = name.clone();
        let doomed: Vec<Key> = Resource::ALL
            .into_iter()
            .filter(|r| r.namespaced())
            .flat_map(|r| {
                store
                    .iter(r, Some(&ns))
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        for d in doomed {
            store.remove(&d);
        }
    }
    let last = store
        .remove(&k)
        .ok_or_else(|| ApiError::not_found(res, &name))?;
    Ok((*last).clone())
}

fn schedule_removal(shared: Weak<Shared>, k: Key, uid: String, grace: i64) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(grace as u64)).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.write(|store| {
            let still_same = store.get(&k).is_some_and(|o| {
                meta_str(o, "uid") == Some(uid.as_str())
                    && o["metadata"].get("deletionTimestamp").is_some()
            });
            if still_same {
                store.remove(&k);
            }
        });
    });
}

fn delete(
    shared: &Arc<Shared>,
    target: &Target,
    query: &Query,
    body: &[u8],
    out: Out,
) -> ApiResult<Response<Body>> {
    let opts = delete_options(query, body)?;
    let res = target.res;
    let name = target.name.clone().unwrap_or_default();
    let last = shared.write(|store| delete_one(shared, store, key(target, &name), &opts))?;
    if res.delete_returns_object() {
        return Ok(json_response(
            StatusCode::OK,
            &admission::canonical(res, last),
            out,
        ));
    }
    let mut details = serde_json::Map::new();
    details.insert("name".into(), name.into());
    if !res.group().is_empty() {
        details.insert("group".into(), res.group().into());
    }
    details.insert("kind".into(), res.plural().into());
    details.insert("uid".into(), last["metadata"]["uid"].clone());
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details});
    Ok(json_response(StatusCode::OK, &status, out))
}

fn delete_collection(
    shared: &Arc<Shared>,
    target: &Target,
    query: &Query,
    body: &[u8],
    out: Out,
) -> ApiResult<Response<Body>> {
    let opts = delete_options(query, body)?;
    let labels = query.label_selector()?;
    let fields = query.field_selector(target.res)?;
    let res = target.res;
    let (items, rv) = shared.write(|store| {
        let keys: Vec<Key> = store
            .iter(res, target.ns.as_deref())
            .filter(|(_, o)| labels.matches(&labels_of(o)) && fields.matches(o))
            .map(|(k, _)| k.clone())
            .collect();
        let items: Vec<Value> = keys
            .into_iter()
            .filter_map(|k| delete_one(shared, store, k, &opts).ok())
            .map(|o| list_item(res, o))
            .collect();
        (items, store.rv())
    });
    let list = json!({"kind": format!("{}List", res.kind()), "apiVersion": res.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items});
    Ok(json_response(StatusCode::OK, &list, out))
}

#[cfg(test)]
mod merge_tests {
    use serde_json::json;

    /// The examples of RFC 7386 (appendix A) and a nested list: the owned merge gives
    /// what `json_patch::merge` gives, field order included.
    #[test]
    fn merge_patch_agrees_with_json_patch() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"})),
            (json!({"a": "b"}), json!({"a": null})),
            (json!({"a": "b", "b": "c"}), json!({"a": null})),
            (json!({"a": ["b"]}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
            ),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]})),
            (json!(["a", "b"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"])),
            (json!({"a": "foo"}), json!(null)),
            (json!({"a": "foo"}), json!("bar")),
            (json!({"e": null}), json!({"a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}})),
            (
                json!({"z": 1, "metadata": {"labels": {"x": "1", "y": "2"}}, "endpoints": [{"a": 1}]}),
                json!({"metadata": {"labels": {"x": null, "w": "3"}}, "endpoints": [{"a": 2}, {"b": 3}]}),
            ),
        ];
        for (doc, patch) in cases {
            let mut expected = doc.clone();
            json_patch::merge(&mut expected, &patch);
            let mut got = doc.clone();
            super::merge_patch(&mut got, patch.clone());
            assert_eq!(
                serde_json::to_string(&got).unwrap(),
                serde_json::to_string(&expected).unwrap(),
                "{doc} patched with {patch}"
            );
            // The same from a copy that leaves out what the patch replaces.
            let mut got = super::copy_for_merge(&doc, &patch);
            super::merge_patch(&mut got, patch.clone());
            assert_eq!(
                serde_json::to_string(&got).unwrap(),
                serde_json::to_string(&expected).unwrap(),
                "{doc} patched with {patch}"
            );
        }
    }
}
