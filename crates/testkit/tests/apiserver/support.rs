//! Shared helpers: raw requests through `kube::Client`, fixtures, JSON comparison.

use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::Value;

/// The golden fixtures copied from a real kube-apiserver (see `tests/fixtures/README.md`).
pub(crate) fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub(crate) fn fixture_text(rel: &str) -> String {
    let path = fixtures_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

pub(crate) fn fixture(rel: &str) -> Value {
    serde_json::from_str(&fixture_text(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// One captured request and response from `index.jsonl`.
#[derive(Clone, Debug)]
pub(crate) struct Capture {
    /// 1-based line in `index.jsonl`.
    pub(crate) line: usize,
    pub(crate) file: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) accept: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) auth: String,
    pub(crate) body: Option<String>,
    pub(crate) status: u16,
    /// Every response header, in the order the real server sent them.
    pub(crate) headers: Vec<(String, String)>,
}

pub(crate) fn captures() -> Vec<Capture> {
    fixture_text("index.jsonl")
        .lines()
        .enumerate()
        .filter_map(|(i, l)| Some((i + 1, serde_json::from_str::<Value>(l).ok()?)))
        .filter(|(_, v)| v.get("request").is_some())
        .map(|(line, v)| {
            let r = &v["request"];
            let s = |x: &Value| x.as_str().map(str::to_string);
            Capture {
                line,
                file: v["file"].as_str().unwrap_or_default().to_string(),
                method: s(&r["method"]).unwrap_or_default(),
                path: s(&r["path"]).unwrap_or_default(),
                accept: s(&r["accept"]),
                content_type: s(&r["contentType"]),
                auth: s(&r["auth"]).unwrap_or_default(),
                body: s(&r["body"]),
                status: v["response"]["status"].as_u64().unwrap_or(0) as u16,
                headers: v["response"]["headers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|h| Some((s(&h[0])?, s(&h[1])?)))
                    .collect(),
            }
        })
        .collect()
}

pub(crate) fn capture(file: &str) -> Capture {
    captures()
        .into_iter()
        .find(|c| c.file == file)
        .unwrap_or_else(|| panic!("no capture for {file}"))
}

/// A raw response.
pub(crate) struct Raw {
    pub(crate) status: StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl Raw {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends a request as-is through a `kube::Client` (which adds the token and TLS).
pub(crate) async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    accept: Option<&str>,
    content_type: Option<&str>,
    body: Option<&str>,
) -> Raw {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(a) = accept {
        req = req.header(http::header::ACCEPT, a);
    }
    if let Some(ct) = content_type {
        req = req.header(http::header::CONTENT_TYPE, ct);
    }
    let req = req
        .body(kube::client::Body::from(
            body.unwrap_or_default().as_bytes().to_vec(),
        ))
        .expect("valid request");
    let resp = client
        .send(req)
        .await
        .expect("transport to the test server");
    let (parts, body) = resp.into_parts();
    let body = body.collect_bytes().await.expect("response body");
    Raw {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Where two JSON documents differ, as `path: expected … got …` lines.
pub(crate) fn diff(expected: &Value, actual: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_at("", expected, actual, &mut out);
    out
}

fn diff_at(path: &str, e: &Value, a: &Value, out: &mut Vec<String>) {
    match (e, a) {
        (Value::Object(em), Value::Object(am)) => {
            for (k, ev) in em {
                match am.get(k) {
                    Some(av) => diff_at(&format!("{path}.{k}"), ev, av, out),
                    None => out.push(format!("{path}.{k}: missing (expected {ev})")),
                }
            }
            for k in am.keys().filter(|k| !em.contains_key(*k)) {
                out.push(format!("{path}.{k}: unexpected {}", am[k]));
            }
        }
        (Value::Array(ea), Value::Array(aa)) if ea.len() == aa.len() => {
            for (i, (ev, av)) in ea.iter().zip(aa).enumerate() {
                diff_at(&format!("{path}[{i}]"), ev, av, out);
            }
        }
        _ if e == a => {}
        _ => {
            let short = |v: &Value| {
                let s = v.to_string();
                if s.len() > 300 {
                    format!("{}…", &s[..300])
                } else {
                    s
                }
            };
            out.push(format!("{path}: expected {} got {}", short(e), short(a)));
        }
    }
}

/// Opens a watch and collects its events until the server ends the stream.
pub(crate) async fn open_watch(
    client: &kube::Client,
    path: &str,
    accept: Option<&str>,
) -> tokio::task::JoinHandle<Vec<Value>> {
    use http_body_util::BodyExt;
    let mut req = Request::builder().method("GET").uri(path);
    if let Some(a) = accept {
        req = req.header(http::header::ACCEPT, a);
    }
    let req = req
        .body(kube::client::Body::empty())
        .expect("valid request");
    let resp = client.send(req).await.expect("watch request");
    assert_eq!(resp.status(), StatusCode::OK, "watch {path}");
    let mut body = resp.into_body();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
        }
        buf.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("watch line is JSON"))
            .collect()
    })
}

/// Reads a captured watch stream.
pub(crate) fn fixture_events(rel: &str) -> Vec<Value> {
    fixture_text(rel)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("event JSON"))
        .collect()
}

/// Replaces (or adds) one query parameter.
pub(crate) fn with_param(path: &str, key: &str, value: &str) -> String {
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let mut parts: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with(&format!("{key}=")))
        .map(str::to_string)
        .collect();
    parts.push(format!("{key}={value}"));
    format!("{base}?{}", parts.join("&"))
}

/// Removes one query parameter.
pub(crate) fn without_param(path: &str, key: &str) -> String {
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let parts: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with(&format!("{key}=")))
        .collect();
    if parts.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", parts.join("&"))
    }
}
