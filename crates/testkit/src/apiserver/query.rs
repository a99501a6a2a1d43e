//! Request parameters: the query string, field selectors and `Accept` negotiation.

use std::collections::HashMap;

use base64::Engine;
use rudder_balance::Selector;
use serde_json::{Value, json};

use super::resource::Resource;
use super::status::{ApiError, ApiResult, Cause};

/// Decoded query parameters; a repeated key keeps its first value, as Go's `url.Values.Get`.
#[derive(Debug, Default)]
pub(crate) struct Query(HashMap<String, String>);

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let mut map = HashMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.entry(percent_decode(k))
                .or_insert_with(|| percent_decode(v));
        }
        Self(map)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    /// An integer parameter, with Go's `strconv.ParseInt` error text.
    pub(crate) fn int(&self, key: &str) -> ApiResult<Option<i64>> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("strconv.ParseInt: parsing \"{v}\": invalid syntax"))
            }),
        }
    }

    pub(crate) fn label_selector(&self) -> ApiResult<Selector> {
        Selector::parse(self.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }

    pub(crate) fn field_selector(&self, res: Resource) -> ApiResult<FieldSelector> {
        FieldSelector::parse(self.get("fieldSelector").unwrap_or(""), res)
    }

    /// `resourceVersion`: `None` when unset or empty.
    pub(crate) fn resource_version(&self, watch: bool) -> ApiResult<Option<u64>> {
        match self.get("resourceVersion") {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                let message = format!(
                    "resourceVersion: Invalid value: \"{v}\": strconv.ParseUint: parsing \"{v}\": invalid syntax"
                );
                if watch {
                    // Observed: watches report this as a 500 without a reason.
                    let mut e = ApiError::internal(message);
                    e.reason = "";
                    e
                } else {
                    ApiError::bad_request(format!("invalid resource version: {message}"))
                }
            }),
        }
    }
}

pub(crate) fn list_options_invalid(message: &str) -> ApiError {
    let cause = Cause {
        reason: "FieldValueForbidden",
        field: "resourceVersionMatch".into(),
        message: format!("Forbidden: {message}"),
    };
    let mut e = ApiError::new(
        http::StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!(
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: {message}"
        ),
    );
    e.details = Some(Box::new(json!({
        "group": "meta.k8s.io",
        "kind": "ListOptions",
        "causes": [{"reason": cause.reason, "message": cause.message, "field": cause.field}],
    })));
    e
}

/// A field selector over `metadata.name` and `metadata.namespace`.
#[derive(Debug, Default)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(s: &str, res: Resource) -> ApiResult<Self> {
        let mut out = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let supported = match field {
                "metadata.name" => true,
                "metadata.namespace" => res.namespaced(),
                "involvedObject.kind"
                | "involvedObject.namespace"
                | "involvedObject.name"
                | "involvedObject.uid"
                | "involvedObject.apiVersion"
                | "involvedObject.resourceVersion"
                | "involvedObject.fieldPath"
                | "reason"
                | "reportingComponent"
                | "source"
                | "type" => res == Resource::Event,
                "spec.nodeName" | "status.phase" | "status.podIP" => res == Resource::Pod,
                _ => false,
            };
            if !supported {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            out.push((field.to_string(), eq, value.to_string()));
        }
        Ok(Self(out))
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            let mut v = obj;
            for part in field.split('.') {
                v = &v[part];
            }
            let have = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

/// The representation a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Repr {
    Json,
    Table,
    Metadata,
    MetadataList,
}

/// Picks the first representation in `Accept` that the server can produce.
pub(crate) fn negotiate(accept: Option<&str>) -> ApiResult<Repr> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Repr::Json);
    };
    let mut json_with_unknown_as = false;
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let params: HashMap<&str, &str> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        if !matches!(media, "application/json" | "application/*" | "*/*") {
            continue;
        }
        match params.get("as").copied() {
            None => return Ok(Repr::Json),
            Some(kind) => {
                let meta_group = params.get("g").copied() == Some("meta.k8s.io");
                let version = params.get("v").copied();
                match (kind, meta_group, version) {
                    ("Table", true, Some("v1" | "v1beta1")) => return Ok(Repr::Table),
                    ("PartialObjectMetadata", true, Some("v1" | "v1beta1")) => {
                        return Ok(Repr::Metadata);
                    }
                    ("PartialObjectMetadataList", true, Some("v1" | "v1beta1")) => {
                        return Ok(Repr::MetadataList);
                    }
                    _ => {
                        json_with_unknown_as = true;
                        continue;
                    }
                }
            }
        }
    }
    if json_with_unknown_as {
        return Err(ApiError::not_acceptable(
            "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
        ));
    }
    Err(ApiError::not_acceptable(
        "406: Not Acceptable\n\nAvailable representations: application/json, application/yaml, application/vnd.kubernetes.protobuf",
    )
    .with_details(json!({})))
}

/// A list continuation token: `{"v":"meta.k8s.io/v1","rv":N,"start":"key\u0000"}`, base64.
pub(crate) fn encode_continue(rv: i64, start: &str) -> String {
    let json = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{start}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
}

/// Go's `base64.RawURLEncoding`: no padding required, trailing bits ignored.
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

pub(crate) fn decode_continue(token: &str) -> ApiResult<(i64, String)> {
    let bad = |why: &str| ApiError::bad_request(format!("invalid continue token: {why}"));
    let bytes = LENIENT
        .decode(token)
        .map_err(|e| bad(&format!("illegal base64 data: {e}")))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        bad(&format!(
            "continue key is not valid: {}",
            go_json_error(&bytes, &e)
        ))
    })?;
    let rv = v["rv"]
        .as_i64()
        .ok_or_else(|| bad("continue key is not valid: no rv"))?;
    let start = v["start"]
        .as_str()
        .ok_or_else(|| bad("continue key is not valid: no start"))?;
    Ok((rv, start.trim_end_matches('\u{0}').to_string()))
}

/// Go's `encoding/json` wording for a syntax error, which clients may have matched on.
pub(crate) fn go_json_error(input: &[u8], e: &serde_json::Error) -> String {
    if e.is_eof() {
        return "unexpected end of JSON input".into();
    }
    // serde_json reports 1-based line and column of the offending character.
    let line_start: usize = input
        .split(|b| *b == b'\n')
        .take(e.line().saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    let at = (line_start + e.column().saturating_sub(1)).min(input.len().saturating_sub(1));
    // Like Go, name an invalid UTF-8 byte by its value.
    let c = match String::from_utf8_lossy(&input[at..]).chars().next() {
        Some('\u{fffd}') | None => char::from(input.get(at).copied().unwrap_or(b'?')),
        Some(c) => c,
    };
    let shown = if c.is_ascii_graphic() || c == ' ' {
        c.to_string()
    } else {
        format!("\\u{:04x}", c as u32)
    };
    let context = if e.to_string().contains("key must be a string") {
        "looking for beginning of object key string"
    } else {
        "looking for beginning of value"
    };
    format!("invalid character '{shown}' {context}")
}
