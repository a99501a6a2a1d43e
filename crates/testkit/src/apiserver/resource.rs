//! The resource types the test server knows, and how each one is named on the wire.

use serde_json::{Value, json};

/// One served resource type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Resource {
    Namespace,
    Node,
    Pod,
    Service,
    Endpoints,
    EndpointSlice,
    Event,
    /// Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`), as its CRD serves it.
    HttpRoute,
}

impl Resource {
    pub(crate) const ALL: [Resource; 8] = [
        Resource::Namespace,
        Resource::Node,
        Resource::Pod,
        Resource::Service,
        Resource::Endpoints,
        Resource::EndpointSlice,
        Resource::Event,
        Resource::HttpRoute,
    ];

    /// The API group ("" for core).
    pub(crate) fn group(self) -> &'static str {
        match self {
            Resource::EndpointSlice => "discovery.k8s.io",
            Resource::HttpRoute => "gateway.networking.k8s.io",
            _ => "",
        }
    }

    /// The resource of objects with this `apiVersion` and `kind`.
    pub(crate) fn of_object(api_version: &str, kind: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.api_version() == api_version && r.kind() == kind)
    }

    pub(crate) fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlice => "discovery.k8s.io/v1",
            Resource::HttpRoute => "gateway.networking.k8s.io/v1",
            _ => "v1",
        }
    }

    pub(crate) fn plural(self) -> &'static str {
        match self {
            Resource::Namespace => "namespaces",
            Resource::Node => "nodes",
            Resource::Pod => "pods",
            Resource::Service => "services",
            Resource::Endpoints => "endpoints",
            Resource::EndpointSlice => "endpointslices",
            Resource::Event => "events",
            Resource::HttpRoute => "httproutes",
        }
    }

    pub(crate) fn singular(self) -> &'static str {
        match self {
            Resource::Namespace => "namespace",
            Resource::Node => "node",
            Resource::Pod => "pod",
            Resource::Service => "service",
            Resource::Endpoints => "endpoints",
            Resource::EndpointSlice => "endpointslice",
            Resource::Event => "event",
            Resource::HttpRoute => "httproute",
        }
    }

    pub(crate) fn kind(self) -> &'static str {
        match self {
            Resource::Namespace => "Namespace",
            Resource::Node => "Node",
            Resource::Pod => "Pod",
            Resource::Service => "Service",
            Resource::Endpoints => "Endpoints",
            Resource::EndpointSlice => "EndpointSlice",
            Resource::Event => "Event",
            Resource::HttpRoute => "HTTPRoute",
        }
    }

    /// The kind as it appears in `Invalid` messages: `EndpointSlice.discovery.k8s.io`.
    pub(crate) fn qualified_kind(self) -> String {
        match self.group() {
            "" => self.kind().to_string(),
            g => format!("{}.{g}", self.kind()),
        }
    }

    /// The resource as it appears in `NotFound`/`Conflict` messages: `endpointslices.discovery.k8s.io`.
    pub(crate) fn qualified_plural(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            g => format!("{}.{g}", self.plural()),
        }
    }

    pub(crate) fn namespaced(self) -> bool {
        !matches!(self, Resource::Namespace | Resource::Node)
    }

    pub(crate) fn short_names(self) -> &'static [&'static str] {
        match self {
            Resource::Namespace => &["ns"],
            Resource::Node => &["no"],
            Resource::Pod => &["po"],
            Resource::Service => &["svc"],
            Resource::Endpoints => &["ep"],
            Resource::EndpointSlice | Resource::HttpRoute => &[],
            Resource::Event => &["ev"],
        }
    }

    /// The verbs discovery lists (Namespaces cannot be deleted as a collection).
    pub(crate) fn verbs(self) -> &'static [&'static str] {
        match self {
            Resource::Namespace => &[
                "create", "delete", "get", "list", "patch", "update", "watch",
            ],
            _ => &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
        }
    }

    /// The storage version hash a v1.34 server advertises (from the captured discovery).
    pub(crate) fn storage_version_hash(self) -> &'static str {
        match self {
            Resource::Namespace => "Q3oi5N2YM8M=",
            Resource::Node => "XwShjMxG9Fs=",
            Resource::Pod => "xPOwRZ+Yhw8=",
            Resource::Service => "0/CO1lhkEBI=",
            Resource::Endpoints => "fWeeMqaN/OA=",
            Resource::EndpointSlice => "qgS0xkrxYAI=",
            Resource::Event => "r2yiGXH7wu8=",
            // Custom resources carry no storage version hash in discovery.
            Resource::HttpRoute => "",
        }
    }

    /// Discovery categories (`kubectl get all`).
    pub(crate) fn categories(self) -> &'static [&'static str] {
        match self {
            Resource::Pod | Resource::Service => &["all"],
            Resource::HttpRoute => &["gateway-api"],
            _ => &[],
        }
    }

    pub(crate) fn has_status(self) -> bool {
        matches!(
            self,
            Resource::Namespace
                | Resource::Node
                | Resource::Pod
                | Resource::Service
                | Resource::HttpRoute
        )
    }

    /// Whether DELETE answers with the object (true) or a `Status` (false), as observed.
    pub(crate) fn delete_returns_object(self) -> bool {
        !matches!(
            self,
            Resource::Endpoints | Resource::EndpointSlice | Resource::Event
        )
    }

    /// The Go type named in 406 messages: `*core.Pod`, `*discovery.EndpointSliceList`.
    pub(crate) fn go_type(self, list: bool) -> String {
        let package = match self.group() {
            "" => "core",
            "gateway.networking.k8s.io" => "unstructured",
            _ => "discovery",
        };
        format!(
            "*{package}.{}{}",
            self.kind(),
            if list { "List" } else { "" }
        )
    }

    /// Responses about v1 Endpoints carry this deprecation warning since v1.33.
    pub(crate) fn warning(self) -> Option<&'static str> {
        match self {
            Resource::Endpoints => Some(
                "299 - \"v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice\"",
            ),
            _ => None,
        }
    }

    /// The top-level fields after `kind`, `apiVersion` and `metadata`, in Go struct order:
    /// what strict decoding accepts and the order responses use.
    pub(crate) fn body_fields(self) -> &'static [&'static str] {
        match self {
            Resource::EndpointSlice => &["addressType", "endpoints", "ports"],
            Resource::Endpoints => &["subsets"],
            Resource::Event => &[
                "involvedObject",
                "reason",
                "message",
                "source",
                "firstTimestamp",
                "lastTimestamp",
                "count",
                "type",
                "eventTime",
                "series",
                "action",
                "related",
                "reportingComponent",
                "reportingInstance",
            ],
            _ => &["spec", "status"],
        }
    }

    /// Looks up `(group, version, plural)` from a request path.
    pub(crate) fn from_path(group: &str, version: &str, plural: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.group() == group && version == "v1" && r.plural() == plural)
    }

    /// The object a BOOKMARK event carries: the kind's empty Go struct, with the fields that
    /// Go serialises even when empty.
    pub(crate) fn bookmark(self, rv: u64) -> Value {
        let mut v = json!({
            "kind": self.kind(),
            "apiVersion": self.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
        });
        let extra = match self {
            Resource::Pod => json!({"spec": {"containers": null}, "status": {}}),
            Resource::EndpointSlice => {
                json!({"addressType": "", "endpoints": null, "ports": null})
            }
            Resource::Node | Resource::Namespace | Resource::Service => {
                json!({"spec": {}, "status": {}})
            }
            Resource::Endpoints | Resource::Event => json!({}),
            Resource::HttpRoute => json!({}),
        };
        if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), extra) {
            obj.extend(extra);
        }
        v
    }
}
