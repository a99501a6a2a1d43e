//! The Mesh's own failures. Errors of the inner service pass through unchanged (boxed).

use std::time::Duration;

use thiserror::Error;

/// Why the Mesh could not send a request to a Pod. Returned boxed as the service's error;
/// recover it with `err.downcast_ref::<MeshError>()`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The request names neither a URI authority nor a `Host` header.
    #[error("request has no authority (URI host or Host header) to route on")]
    MissingAuthority,
    /// The authority is not a Service name and pass-through is disabled.
    #[error("{authority} does not name a Kubernetes Service and pass-through is disabled")]
    NotAService {
        /// The request's authority.
        authority: String,
    },
    /// Discovery did not finish its first sync of the Service in time (API unreachable,
    /// forbidden, or slow), and the DNS fallback is not enabled.
    #[error("endpoints of {service} not synced after {waited:?}{}", last_error_suffix(.last_error))]
    NotSynced {
        /// The Service (`name.namespace:port`).
        service: String,
        /// How long the request waited.
        waited: Duration,
        /// The last failure talking to the API (a TLS, authorization or connection error),
        /// if there was one.
        last_error: Option<String>,
    },
    /// The API refuses to show the Service (or its endpoints) to this client: a `403`
    /// for a full `*.svc` name (short names fall through instead). The message names the
    /// user, verb and resource; grant them (see `deploy/rbac.yaml`) or restrict
    /// [`MeshBuilder::namespaces`](crate::MeshBuilder::namespaces).
    #[error("not allowed to discover {service}: {message}")]
    Forbidden {
        /// The Service.
        service: String,
        /// The API's message.
        message: String,
    },
    /// The Mesh already routes to its limit of distinct Services
    /// ([`MeshBuilder::max_services`](crate::MeshBuilder::max_services)): requests naming
    /// ever new Services (a caller making up host names) cannot grow its watches and
    /// memory without bound.
    #[error("already routing to {limit} distinct Services; refusing another")]
    TooManyServices {
        /// The limit.
        limit: usize,
    },
    /// An HTTPRoute rule matched the request, but every backend it names has weight 0:
    /// the Gateway API answers such requests with a 500, Rudder with this error.
    #[error(
        "HTTPRoute {route} matched a request for {service}, but all its backends have weight 0"
    )]
    NoRouteBackend {
        /// The Service the request named.
        service: String,
        /// The route, `namespace/name`.
        route: String,
    },
    /// The Service does not exist.
    #[error("Service {service} not found")]
    ServiceNotFound {
        /// The Service.
        service: String,
    },
    /// No endpoint can take the request.
    #[error("no endpoints for {service}{}: {reason}", subset_suffix(.subset))]
    NoEndpoints {
        /// The Service.
        service: String,
        /// The label selector of the subset asked for (empty: every endpoint).
        subset: String,
        /// Why: no endpoints at all, none ready, no such port, an empty subset without
        /// fallback, or every endpoint with weight 0.
        reason: String,
    },
    /// The subset header holds no valid label selector.
    #[error("invalid subset in header {header}: {source}")]
    InvalidSubset {
        /// The header's name.
        header: String,
        /// The selector error, naming the offending part.
        source: rudder_balance::SelectorError,
    },
    /// A subset header value that is not visible ASCII.
    #[error("subset header {header} is not visible ASCII")]
    SubsetNotAscii {
        /// The header's name.
        header: String,
    },
    /// Discovery refused the Service reference or could not run.
    #[error(transparent)]
    Discovery(#[from] rudder_k8s::DiscoveryError),
    /// The request was sent and failed without a response (connection refused or reset,
    /// protocol error), on every endpoint tried. The inner service's error is the source.
    #[error("request to {service} failed on {}: {source}{}", endpoints(.tried), hint_suffix(.hint))]
    Failed {
        /// The Service.
        service: String,
        /// The endpoints tried, in order (more than one when retried).
        tried: Vec<std::net::SocketAddr>,
        /// A likely cause, when one is recognised (say, plain HTTP to a TLS Pod).
        hint: Option<&'static str>,
        /// The last attempt's error, from the inner service.
        #[source]
        source: crate::BoxError,
    },
    /// The request took longer than the configured per-request timeout.
    #[error("request to {service} timed out after {timeout:?}")]
    Timeout {
        /// The Service.
        service: String,
        /// The timeout.
        timeout: Duration,
    },
}

fn last_error_suffix(e: &Option<String>) -> String {
    e.as_ref()
        .map(|e| format!(" (last API error: {e})"))
        .unwrap_or_default()
}

fn endpoints(tried: &[std::net::SocketAddr]) -> String {
    let list: Vec<String> = tried.iter().map(ToString::to_string).collect();
    list.join(", ")
}

fn subset_suffix(subset: &str) -> String {
    if subset.is_empty() {
        String::new()
    } else {
        format!(" (subset {subset})")
    }
}

fn hint_suffix(hint: &Option<&'static str>) -> String {
    hint.map(|h| format!(" ({h})")).unwrap_or_default()
}
