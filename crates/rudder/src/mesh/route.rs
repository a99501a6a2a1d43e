//! Route rules: requests matching a path prefix and header values go to a subset or a
//! weighted split (Envoy's and Gateway API's route matching, reduced to what subset routing
//! needs).

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request};
use rudder_balance::{Selector, Split};

/// Where a matching request goes.
#[derive(Clone, Debug)]
enum Destination {
    Subset(Selector),
    Split(Arc<Split>),
}

/// One rule: every condition must hold (no condition matches every request).
///
/// ```
/// use rudder::{Route, Selector};
/// let beta: Selector = "track=beta".parse().unwrap();
/// let route = Route::new().path_prefix("/v2/").header("x-user-group", "testers").to_subset(beta);
/// let req = http::Request::get("http://biz1/v2/orders").header("x-user-group", "testers").body(()).unwrap();
/// assert!(route.matches(&req));
/// ```
#[derive(Clone, Debug)]
pub struct Route {
    path_prefix: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    destination: Option<Destination>,
}

impl Default for Route {
    fn default() -> Self {
        Self::new()
    }
}

impl Route {
    /// A rule matching every request (add conditions, then a destination).
    pub fn new() -> Self {
        Self {
            path_prefix: None,
            headers: Vec::new(),
            destination: None,
        }
    }

    /// Matches paths starting with `prefix`.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Matches requests whose header `name` equals `value`.
    ///
    /// # Panics
    /// When `name` or `value` is not a valid header name or value; use
    /// [`header_typed`](Self::header_typed) for values from outside the program.
    pub fn header(self, name: &'static str, value: &'static str) -> Self {
        self.header_typed(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    }

    /// Matches requests whose header `name` equals `value`.
    pub fn header_typed(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Sends matching requests to the Pods matching `selector`.
    pub fn to_subset(mut self, selector: Selector) -> Self {
        self.destination = Some(Destination::Subset(selector));
        self
    }

    /// Splits matching requests between subsets.
    pub fn to_split(mut self, split: Split) -> Self {
        self.destination = Some(Destination::Split(Arc::new(split)));
        self
    }

    /// Whether `req` meets every condition.
    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        self.path_prefix
            .as_deref()
            .is_none_or(|p| req.uri().path().starts_with(p))
            && self
                .headers
                .iter()
                .all(|(n, v)| req.headers().get_all(n).iter().any(|h| h == v))
    }

    /// The subset for a matching request, as the leg of the destination it is (`None`:
    /// the rule has no destination); [`selector`](Self::selector) gives it.
    pub(crate) fn choose(&self) -> Option<usize> {
        match self.destination.as_ref()? {
            Destination::Subset(_) => Some(0),
            Destination::Split(split) => Some(split.choose_leg()),
        }
    }

    /// The subset of leg `leg` of the destination (see [`choose`](Self::choose)).
    ///
    /// # Panics
    /// When the rule has no destination or no such leg.
    pub(crate) fn selector(&self, leg: usize) -> &Selector {
        match self
            .destination
            .as_ref()
            .expect("a chosen rule has a destination")
        {
            Destination::Subset(s) => s,
            Destination::Split(split) => &split.legs()[leg].0,
        }
    }

    /// Every selector the rule may choose, for indexing up front.
    pub(crate) fn selectors(&self) -> Vec<Selector> {
        match &self.destination {
            Some(Destination::Subset(s)) => vec![s.clone()],
            Some(Destination::Split(split)) => {
                split.legs().iter().map(|(s, _)| s.clone()).collect()
            }
            None => Vec::new(),
        }
    }

    pub(crate) fn has_destination(&self) -> bool {
        self.destination.is_some()
    }
}
