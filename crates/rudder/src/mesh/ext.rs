//! Request extensions: what callers set ([`Subset`]) and what the Mesh sets for the inner
//! service ([`Target`]).

use std::str::FromStr;

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
pub struct Subset(Selector);

impl Subset {
    /// The subset of Pods matching `selector`.
    pub fn new(selector: Selector) -> Self {
        Self(selector)
    }

    /// The selector.
    pub fn selector(&self) -> &Selector {
        &self.0
    }
}

impl FromStr for Subset {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// Where the Mesh sent a request: an extension of the request the inner service gets and
/// of the response the caller gets back.
///
/// The request's URI names the endpoint (`http://10.244.0.7:8080/path`), so a connection
/// pool keyed by URI authority (hyper-util's) keeps one pool per Pod and never resolves a
/// name; `authority` is what the caller addressed (`hello-svc.default:8080`), which
/// [`PodClient`](crate::PodClient) restores as `:authority` for HTTP/2.
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
