//! Which request authorities name a Kubernetes Service.
//!
//! The rule follows cluster DNS: `svc`, `svc.ns`, `svc.ns.svc` and
//! `svc.ns.svc.<cluster domain>` (each with an optional port) name Service `svc` in namespace
//! `ns` (or the default namespace). The short forms (one or two labels) are what a Pod's DNS
//! search path turns into Service names, and, like the search path, they fall through: a
//! short name whose Service does not exist is passed on unchanged (so `localhost` or
//! `example.com` keep working), while a full `*.svc` name whose Service does not exist is an
//! error. IP literals, names of three or more labels that do not end in `.svc` or
//! `.svc.<cluster domain>`, and names that are not valid Service and namespace names pass
//! through.

use http::Uri;
use std::borrow::Cow;

use http::uri::Authority;
use rudder_k8s::{PortSpec, ServiceRef};

/// What a request's authority resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Named {
    /// A Service port; `short` when written without `.svc` (falls through if missing).
    Service { svc: ServiceRef, short: bool },
    /// Not a Service name.
    Other,
}

/// The authority a request is addressed to: the URI's (borrowed), else its `Host`
/// header's.
pub(crate) fn of_request<B>(req: &http::Request<B>) -> Option<Cow<'_, Authority>> {
    if let Some(a) = req.uri().authority() {
        return Some(Cow::Borrowed(a));
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse().ok())
        .map(Cow::Owned)
}

/// The port a request goes to: the authority's, else the scheme's default.
pub(crate) fn port_of(authority: &Authority, uri: &Uri) -> u16 {
    authority.port_u16().unwrap_or_else(|| default_port(uri))
}

/// The port of `uri`'s scheme: 443 for `https`, else 80.
pub(crate) fn default_port(uri: &Uri) -> u16 {
    if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    }
}

/// Classifies `host` (without port) for a request to `port`.
pub(crate) fn classify(host: &str, port: u16, default_ns: &str, cluster_domain: &str) -> Named {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return Named::Other;
    }
    let labels: Vec<&str> = host.split('.').collect();
    let (name, ns, short) = match labels.as_slice() {
        [name] => (*name, default_ns, true),
        [name, ns] => (*name, *ns, true),
        [name, ns, "svc"] => (*name, *ns, false),
        [name, ns, "svc", domain @ ..] if domain.join(".") == cluster_domain => (*name, *ns, false),
        _ => return Named::Other,
    };
    match ServiceRef::new(ns, name, Some(PortSpec::Number(port))) {
        Ok(svc) => Named::Service { svc, short },
        Err(_) => Named::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(host: &str) -> Option<(String, String, bool)> {
        match classify(host, 8080, "default", "cluster.local") {
            Named::Service { svc, short } => {
                Some((svc.namespace().to_string(), svc.name().to_string(), short))
            }
            Named::Other => None,
        }
    }

    #[test]
    fn service_names_follow_cluster_dns() {
        let s = |ns: &str, n: &str, short| Some((ns.to_string(), n.to_string(), short));
        assert_eq!(svc("hello-svc"), s("default", "hello-svc", true));
        assert_eq!(svc("hello-svc.demo"), s("demo", "hello-svc", true));
        assert_eq!(svc("hello-svc.demo.svc"), s("demo", "hello-svc", false));
        assert_eq!(
            svc("Hello-Svc.demo.svc.cluster.local."),
            s("demo", "hello-svc", false)
        );
        assert_eq!(svc("hello-svc.demo.svc.other.domain"), None);
        assert_eq!(svc("www.example.com"), None);
        assert_eq!(svc("127.0.0.1"), None);
        assert_eq!(svc("[::1]"), None);
        assert_eq!(svc("under_score"), None);
        assert_eq!(svc("1abc"), None, "Service names start with a letter");
    }

    #[test]
    fn authority_from_uri_or_host_header() {
        let req = http::Request::get("http://a.b:81/x").body(()).unwrap();
        assert_eq!(of_request(&req).unwrap().as_str(), "a.b:81");
        let req = http::Request::get("/x")
            .header("host", "hello-svc")
            .body(())
            .unwrap();
        let a = of_request(&req).unwrap();
        assert_eq!((a.host(), port_of(&a, req.uri())), ("hello-svc", 80));
        let req = http::Request::get("https://s/x").body(()).unwrap();
        assert_eq!(port_of(&of_request(&req).unwrap(), req.uri()), 443);
    }
}
