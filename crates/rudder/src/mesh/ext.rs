//! Request extensions callers set ([`Subset`], [`AffinityKey`]), and where the Mesh sent
//! a request ([`Target`]).

use std::str::FromStr;
use std::sync::Arc;

use http::HeaderName;
use http::uri::Authority;
use rudder_balance::{Selector, SelectorError};

/// Sends one request to the Pods matching a label selector, overriding the subset header and
/// the client's configured subset or split.
///
/// ```
/// let mut req = http::Request::get("http://biz1.demo:8080/").body(()).unwrap();
/// req.extensions_mut().insert("version=4.2".parse::<rudder::Subset>().unwrap());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subset(Arc<Selector>);

impl Subset {
    /// The subset of Pods matching `selector`.
    pub fn new(selector: Selector) -> Self {
        Self(Arc::new(selector))
    }

    /// The selector.
    pub fn selector(&self) -> &Selector {
        &self.0
    }

    /// The selector, shared: what a request routed by it holds (a clone is a reference
    /// count, not a copy of the selector).
    pub(crate) fn shared(&self) -> &Arc<Selector> {
        &self.0
    }
}

impl FromStr for Subset {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self::new)
    }
}

/// Where the Mesh sent a request, on the way back: [`ResponseBody::target`](crate::ResponseBody::target).
///
/// The inner service finds the same in the request itself, which costs no allocation:
/// its URI names the endpoint (`http://10.244.0.7:8080/path`), so a connection pool keyed
/// by URI authority (hyper-util's) keeps one pool per Pod and never resolves a name, and
/// its `Host` header is what the caller addressed (`hello-svc.default:8080`, unless the
/// caller set a `Host` of its own), which [`PodClient`](crate::PodClient) restores as
/// `:authority` for HTTP/2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub(crate) authority: Authority,
    pub(crate) endpoint: Authority,
}

impl Target {
    /// The authority the caller addressed.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The endpoint chosen: a Pod's `ip:port`, or an `ExternalName` Service's
    /// `name:port`.
    pub fn endpoint(&self) -> &Authority {
        &self.endpoint
    }
}

/// Where a response came from, as the Mesh holds it until asked: the Service the request
/// already held (moved, not cloned) and the endpoint's address, so that answering writes
/// no shared reference count and a long response body keeps no pool snapshot alive.
pub(crate) enum Whence {
    /// An endpoint of a routed Service.
    Endpoint {
        addressed: std::sync::Arc<super::Addressed>,
        endpoint: std::net::SocketAddr,
    },
    /// Anything else (an `ExternalName` Service's name).
    Named(Target),
}

impl Whence {
    pub(crate) fn target(&self) -> Target {
        match self {
            Self::Endpoint {
                addressed,
                endpoint,
            } => Target {
                authority: addressed.authority.clone(),
                endpoint: endpoint
                    .to_string()
                    .parse()
                    .expect("a socket address is a URI authority"),
            },
            Self::Named(t) => t.clone(),
        }
    }
}

impl std::fmt::Debug for Whence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.target().fmt(f)
    }
}

/// A request's affinity key for consistent hashing ([`Algorithm::Maglev`](crate::Algorithm)):
/// requests with the same key go to the same Pod, from every client replica, while the
/// Pod stays. Set as a request extension, it overrides the configured [`Affinity`].
///
/// ```
/// let mut req = http::Request::get("http://cart.shop:8080/").body(()).unwrap();
/// req.extensions_mut().insert(rudder::AffinityKey::new("customer-42"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey(u64);

impl AffinityKey {
    /// The key for `bytes` (hashed with a hash that is stable across processes, so
    /// replicas agree).
    pub fn new(bytes: impl AsRef<[u8]>) -> Self {
        Self(rudder_balance::hash_key(bytes.as_ref()))
    }

    /// The key's hash.
    pub fn hash(&self) -> u64 {
        self.0
    }
}

/// Where the affinity key of requests without an [`AffinityKey`] extension comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Affinity {
    /// The value of this header (e.g. `x-user-id`).
    Header(HeaderName),
    /// The value of this cookie (e.g. `session`).
    Cookie(String),
}

impl Affinity {
    /// The key of `req`, if it carries one.
    pub(crate) fn key<B>(&self, req: &http::Request<B>) -> Option<AffinityKey> {
        match self {
            Self::Header(name) => req
                .headers()
                .get(name)
                .map(|v| AffinityKey::new(v.as_bytes())),
            Self::Cookie(name) => req
                .headers()
                .get_all(http::header::COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
                .find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
                    (k == name.as_bytes()).then(|| AffinityKey::new(&v[1..]))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_headers_and_cookies() {
        let req = http::Request::get("http://a/")
            .header("x-user", "42")
            .header("cookie", "theme=dark; session=abc")
            .header("cookie", "other=1")
            .body(())
            .unwrap();
        let header = Affinity::Header(HeaderName::from_static("x-user"));
        assert_eq!(header.key(&req), Some(AffinityKey::new("42")));
        let cookie = Affinity::Cookie("session".into());
        assert_eq!(cookie.key(&req), Some(AffinityKey::new("abc")));
        assert_eq!(
            Affinity::Cookie("other".into()).key(&req),
            Some(AffinityKey::new("1"))
        );
        assert_eq!(Affinity::Cookie("missing".into()).key(&req), None);
        assert_eq!(
            Affinity::Cookie("sess".into()).key(&req),
            None,
            "whole names only"
        );
    }
}
