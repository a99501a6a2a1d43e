//! Failures as the API server reports them: `Status` objects with real codes and reasons.

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::resource::Resource;

/// A failed request, rendered as a `meta/v1` `Status` (or a plain-text 404 for unknown paths).
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub(crate) code: StatusCode,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    // Boxed: errors travel through every `?` on the request path; keep them small.
    pub(crate) details: Option<Box<Value>>,
    pub(crate) metadata: Option<Box<Value>>,
    /// Plain-text body instead of a `Status` (the mux's `404 page not found`).
    pub(crate) plain: bool,
    pub(crate) retry_after: Option<u32>,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            metadata: None,
            plain: false,
            retry_after: None,
        }
    }

    pub(crate) fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    pub(crate) fn forbidden(
        user: &str,
        verb: &str,
        res: Resource,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Self {
        let scope = match ns {
            Some(ns) => format!(" in the namespace \"{ns}\""),
            None => " at the cluster scope".to_string(),
        };
        let object = match name {
            Some(n) => format!("{} \"{n}\"", res.qualified_plural()),
            None => res.qualified_plural(),
        };
        Self::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{object} is forbidden: User \"{user}\" cannot {verb} resource \"{}\" in API group \"{}\"{scope}",
                res.plural(),
                res.group()
            ),
        )
        .with_details(details(name, res, false))
    }

    pub(crate) fn forbidden_path(user: &str, path: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("forbidden: User \"{user}\" cannot get path \"{path}\""),
        )
        .with_details(json!({}))
    }

    pub(crate) fn not_found(res: Resource, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified_plural()),
        )
        .with_details(details(Some(name), res, false))
    }

    pub(crate) fn namespace_not_found(name: &str) -> Self {
        Self::not_found(Resource::Namespace, name)
    }

    pub(crate) fn no_resource() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub(crate) fn page_not_found() -> Self {
        Self {
            plain: true,
            ..Self::new(StatusCode::NOT_FOUND, "NotFound", "404 page not found")
        }
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    pub(crate) fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, "NotAcceptable", message)
    }

    pub(crate) fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "415: Unsupported Media Type",
        )
        .with_details(json!({}))
    }

    pub(crate) fn already_exists(res: Resource, name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified_plural()),
        )
        .with_details(details(Some(name), res, false))
    }

    pub(crate) fn conflict(res: Resource, name: &str, why: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                res.qualified_plural()
            ),
        )
        .with_details(details(Some(name), res, false))
    }

    pub(crate) fn stale(res: Resource, name: &str) -> Self {
        Self::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub(crate) fn invalid(res: Resource, name: &str, causes: Vec<Cause>) -> Self {
        // The message names each distinct error once; `causes` keeps every copy.
        let mut list: Vec<String> = Vec::with_capacity(causes.len());
        for text in causes.iter().map(Cause::text) {
            if !list.contains(&text) {
                list.push(text);
            }
        }
        let summary = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let mut d = details(Some(name), res, true);
        d["causes"] = causes.iter().map(Cause::to_json).collect();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{} \"{name}\" is invalid: {summary}", res.qualified_kind()),
        )
        .with_details(d)
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// A status chosen by fault injection.
    pub(crate) fn injected(code: StatusCode) -> Self {
        let reason = match code.as_u16() {
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            400 => "BadRequest",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            _ => "Unknown",
        };
        let mut e = Self::new(code, reason, format!("injected failure ({code})"));
        if code == StatusCode::TOO_MANY_REQUESTS {
            e.retry_after = Some(1);
            e.details = Some(Box::new(json!({"retryAfterSeconds": 1})));
        }
        e
    }

    /// The `Status` object.
    pub(crate) fn to_status(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), "Status".into());
        m.insert("apiVersion".into(), "v1".into());
        m.insert(
            "metadata".into(),
            self.metadata
                .as_deref()
                .cloned()
                .unwrap_or_else(|| json!({})),
        );
        m.insert("status".into(), "Failure".into());
        m.insert("message".into(), self.message.clone().into());
        if !self.reason.is_empty() {
            m.insert("reason".into(), self.reason.into());
        }
        if let Some(d) = &self.details {
            m.insert("details".into(), (**d).clone());
        }
        m.insert("code".into(), self.code.as_u16().into());
        Value::Object(m)
    }
}

fn details(name: Option<&str>, res: Resource, kind_not_plural: bool) -> Value {
    let mut d = Map::new();
    if let Some(n) = name {
        d.insert("name".into(), n.into());
    }
    if !res.group().is_empty() {
        d.insert("group".into(), res.group().into());
    }
    let kind = if kind_not_plural {
        res.kind()
    } else {
        res.plural()
    };
    d.insert("kind".into(), kind.into());
    Value::Object(d)
}

/// One `details.causes[]` entry of an `Invalid` status.
#[derive(Clone, Debug)]
pub(crate) struct Cause {
    pub(crate) reason: &'static str,
    pub(crate) field: String,
    pub(crate) message: String,
}

impl Cause {
    pub(crate) fn invalid(field: impl Into<String>, value: &str, why: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: \"{value}\": {why}"),
        }
    }

    pub(crate) fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }

    pub(crate) fn unsupported(field: impl Into<String>, value: &str, allowed: &[&str]) -> Self {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: \"{value}\": supported values: {}",
                allowed.join(", ")
            ),
        }
    }

    fn text(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }

    fn to_json(&self) -> Value {
        json!({"reason": self.reason, "message": self.message, "field": self.field})
    }
}
