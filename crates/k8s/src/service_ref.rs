//! Naming a Service the way clients write it.

use std::fmt;
use std::str::FromStr;

use rudder_balance::selector::is_dns1123_label;
use thiserror::Error;

/// A Service port: its number or its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortSpec {
    /// `spec.ports[].port`.
    Number(u16),
    /// `spec.ports[].name`.
    Name(String),
}

/// A Service in a namespace, and optionally one of its ports.
///
/// Parsed from what users write in URLs and configs: `hello-svc`, `hello-svc.default`,
/// `hello-svc.default.svc`, `hello-svc.default.svc.cluster.local` (any cluster domain after
/// `.svc.`), each optionally followed by `:8080` or `:http`. Without a namespace the default
/// namespace given to [`parse_in`](Self::parse_in) is used.
///
/// ```
/// use rudder_k8s::{PortSpec, ServiceRef};
/// let s = ServiceRef::parse_in("hello-svc.default.svc.cluster.local:8080", "other").unwrap();
/// assert_eq!((s.namespace(), s.name(), s.port()), ("default", "hello-svc", Some(&PortSpec::Number(8080))));
/// let s = ServiceRef::parse_in("biz1:http", "demo").unwrap();
/// assert_eq!((s.namespace(), s.port()), ("demo", Some(&PortSpec::Name("http".into()))));
/// assert!(ServiceRef::parse_in("Bad_Name", "default").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    namespace: String,
    name: String,
    port: Option<PortSpec>,
}

/// Why a Service reference could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ServiceRefError {
    /// Nothing was given.
    #[error("empty Service reference")]
    Empty,
    /// The Service name is not a DNS-1035 label.
    #[error(
        "invalid Service name {0:?}: must be a lowercase DNS-1035 label (a-z, 0-9, '-', starting with a letter, at most 63 characters)"
    )]
    InvalidName(String),
    /// The namespace is not a DNS-1123 label.
    #[error("invalid namespace {0:?}: must be a lowercase DNS-1123 label")]
    InvalidNamespace(String),
    /// The part after the namespace is not `svc[.<cluster domain>]`.
    #[error("invalid Service host {0:?}: expected name[.namespace[.svc[.cluster-domain]]]")]
    InvalidHost(String),
    /// The port is neither a number in 1–65535 nor a valid port name.
    #[error("invalid port {0:?}: expected a number in 1-65535 or a port name (IANA_SVC_NAME)")]
    InvalidPort(String),
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// `IANA_SVC_NAME`: 1–15 lowercase alphanumerics or '-', with a letter, no '--' and no
/// leading or trailing '-'.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

impl ServiceRef {
    /// A reference from parts (validated).
    pub fn new(
        namespace: &str,
        name: &str,
        port: Option<PortSpec>,
    ) -> Result<Self, ServiceRefError> {
        if !is_dns1035_label(name) {
            return Err(ServiceRefError::InvalidName(name.to_string()));
        }
        if !is_dns1123_label(namespace) {
            return Err(ServiceRefError::InvalidNamespace(namespace.to_string()));
        }
        if let Some(PortSpec::Name(n)) = &port
            && !is_port_name(n)
        {
            return Err(ServiceRefError::InvalidPort(n.clone()));
        }
        if port == Some(PortSpec::Number(0)) {
            return Err(ServiceRefError::InvalidPort("0".into()));
        }
        Ok(Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port,
        })
    }

    /// Parses `host[:port]`, using `default_namespace` when the host names none.
    pub fn parse_in(s: &str, default_namespace: &str) -> Result<Self, ServiceRefError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ServiceRefError::Empty);
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(parse_port(p)?)),
            None => (s, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let labels: Vec<&str> = host.split('.').collect();
        let (name, namespace) = match labels.as_slice() {
            [name] => (*name, default_namespace),
            [name, ns] => (*name, *ns),
            [name, ns, "svc", domain @ ..] if domain.iter().all(|l| is_dns1123_label(l)) => {
                (*name, *ns)
            }
            _ => return Err(ServiceRefError::InvalidHost(host.to_string())),
        };
        Self::new(namespace, name, port)
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port, if one was given.
    pub fn port(&self) -> Option<&PortSpec> {
        self.port.as_ref()
    }

    /// The same Service with another port.
    pub fn with_port(mut self, port: Option<PortSpec>) -> Self {
        self.port = port;
        self
    }
}

fn parse_port(p: &str) -> Result<PortSpec, ServiceRefError> {
    if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() {
        return match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(PortSpec::Number(n)),
            _ => Err(ServiceRefError::InvalidPort(p.to_string())),
        };
    }
    if is_port_name(p) {
        Ok(PortSpec::Name(p.to_string()))
    } else {
        Err(ServiceRefError::InvalidPort(p.to_string()))
    }
}

impl FromStr for ServiceRef {
    type Err = ServiceRefError;

    /// Parses with namespace `default` when none is given.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_in(s, "default")
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Number(n) => write!(f, "{n}"),
            PortSpec::Name(n) => f.write_str(n),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)?;
        if let Some(p) = &self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_users_write() {
        for (input, ns, port) in [
            ("hello-svc", "dflt", None),
            ("hello-svc.default", "default", None),
            ("hello-svc.default.svc", "default", None),
            ("hello-svc.default.svc.cluster.local", "default", None),
            ("hello-svc.default.svc.cluster.local.", "default", None),
            (
                "hello-svc.default.svc.example.org:8080",
                "default",
                Some(PortSpec::Number(8080)),
            ),
            (
                "hello-svc:http",
                "dflt",
                Some(PortSpec::Name("http".into())),
            ),
        ] {
            let s = ServiceRef::parse_in(input, "dflt").unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (s.name(), s.namespace(), s.port()),
                ("hello-svc", ns, port.as_ref()),
                "{input}"
            );
        }
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        assert_eq!(ServiceRef::parse_in("", "d"), Err(ServiceRefError::Empty));
        assert!(matches!(
            ServiceRef::parse_in("Hello", "d"),
            Err(ServiceRefError::InvalidName(_))
        ));
        assert!(matches!(
            ServiceRef::parse_in("1svc", "d"),
            Err(ServiceRefError::InvalidName(_))
        ));
        assert!(matches!(
            ServiceRef::parse_in("svc.Bad_NS", "d"),
            Err(ServiceRefError::InvalidNamespace(_))
        ));
        assert!(matches!(
            ServiceRef::parse_in("svc.ns.pod", "d"),
            Err(ServiceRefError::InvalidHost(_))
        ));
        assert!(matches!(
            ServiceRef::parse_in("svc:0", "d"),
            Err(ServiceRefError::InvalidPort(_))
        ));
        assert!(matches!(
            ServiceRef::parse_in("svc:70000", "d"),
            Err(ServiceRefError::InvalidPort(_))
        ));
        assert!(matches!(
            ServiceRef::parse_in("svc:no--pe", "d"),
            Err(ServiceRefError::InvalidPort(_))
        ));
        let msg = ServiceRef::parse_in("svc:Bad", "d")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"Bad\""), "{msg}");
    }

    #[test]
    fn display_round_trips() {
        let s = ServiceRef::parse_in("a.b:http", "x").unwrap();
        assert_eq!(s.to_string(), "a.b:http");
        assert_eq!(ServiceRef::parse_in(&s.to_string(), "x").unwrap(), s);
    }
}
