//! Label subsets of a Service's endpoints, computed once per snapshot.
//!
//! Blue/green and canary releases the Kubernetes way edit a Service's selector (from
//! `app=biz1,zone=prod` to `app=biz1,zone=prod,version=4.2`). A [`SubsetIndex`] does the same
//! per client and per request without touching the Service: for each [`Selector`] it holds
//! the positions of the matching routable endpoints of one [`EndpointSet`] snapshot. The
//! configured selectors are indexed when the snapshot arrives; selectors first seen on a
//! request (a header, say) are indexed once and cached with the snapshot, so no request
//! scans the endpoints twice for the same selector.
//!
//! When a subset is empty, a [`Fallback`] says what happens: an error, any endpoint, or
//! another selector.

mod error;
#[cfg(test)]
mod tests;

pub use self::error::SubsetError;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use crate::endpoint::{Endpoint, EndpointSet, Readiness};
use crate::maglev::Maglev;
use crate::selector::Selector;
use crate::weighted::WeightedIndex;

/// What to do when a subset has no routable endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// Fail with [`SubsetError::Empty`].
    #[default]
    NoFallback,
    /// Use every routable endpoint of the Service.
    AnyEndpoint,
    /// Use this subset instead (which must not be empty itself).
    Default(Selector),
}

/// One subset of one snapshot: positions of its endpoints and their cumulative weights.
#[derive(Debug)]
struct Members {
    positions: Vec<u32>,
    weights: WeightedIndex,
    /// A step coprime with the total weight, for weighted round robin.
    stride: u64,
    /// The consistent-hashing table, built on first use.
    maglev: OnceLock<Option<Maglev>>,
}

impl Members {
    fn new(set: &EndpointSet, positions: Vec<u32>) -> Self {
        let weights = WeightedIndex::new(
            positions
                .iter()
                .map(|p| set.endpoints()[*p as usize].weight()),
        );
        let stride = crate::weighted::coprime_stride(weights.total());
        Self {
            positions,
            weights,
            stride,
            maglev: OnceLock::new(),
        }
    }
}

/// The endpoints a request may go to: positions into a snapshot's endpoints.
#[derive(Clone, Debug)]
pub struct Picked {
    set: Arc<EndpointSet>,
    members: Arc<Members>,
    fell_back: bool,
}

impl Picked {
    /// The endpoints, in address order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Endpoint> + '_ {
        self.members
            .positions
            .iter()
            .map(|i| &self.set.endpoints()[*i as usize])
    }

    /// The `n`th member.
    pub fn get(&self, n: usize) -> Option<&Endpoint> {
        self.members
            .positions
            .get(n)
            .map(|i| &self.set.endpoints()[*i as usize])
    }

    /// How many endpoints.
    pub fn len(&self) -> usize {
        self.members.positions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.positions.is_empty()
    }

    /// Whether the fallback was used because the requested subset was empty.
    pub fn fell_back(&self) -> bool {
        self.fell_back
    }

    /// Positions into [`EndpointSet::endpoints`], in member order.
    pub fn positions(&self) -> &[u32] {
        &self.members.positions
    }

    /// The members' cumulative weights, in member order.
    pub fn weights(&self) -> &WeightedIndex {
        &self.members.weights
    }

    pub(crate) fn stride(&self) -> u64 {
        self.members.stride
    }

    /// The Maglev table of this subset (built once per subset and snapshot, on first use;
    /// `None` when every member has weight 0).
    pub fn maglev(&self) -> Option<&Maglev> {
        self.members
            .maglev
            .get_or_init(|| {
                let ids: Vec<String> = self.iter().map(|e| e.addr().to_string()).collect();
                let weights: Vec<u32> = self.iter().map(Endpoint::weight).collect();
                Maglev::new(&ids, &weights)
            })
            .as_ref()
    }

    /// The snapshot the positions point into.
    pub fn set(&self) -> &Arc<EndpointSet> {
        &self.set
    }
}

/// The subsets of one snapshot.
#[derive(Debug)]
pub struct SubsetIndex {
    set: Arc<EndpointSet>,
    all: Arc<Members>,
    known: RwLock<HashMap<Selector, Arc<Members>>>,
    /// Per selector, per zone; nested so a lookup borrows its keys (it runs per request).
    zoned: RwLock<HashMap<Selector, HashMap<String, Arc<Members>>>>,
}

impl SubsetIndex {
    /// Indexes `set` for `selectors` (the ones configured up front).
    pub fn new<'a>(
        set: Arc<EndpointSet>,
        selectors: impl IntoIterator<Item = &'a Selector>,
    ) -> Self {
        let all = Arc::new(Members::new(
            &set,
            routable_positions(&set, &Selector::everything()),
        ));
        let known = selectors
            .into_iter()
            .map(|s| {
                (
                    s.clone(),
                    Arc::new(Members::new(&set, routable_positions(&set, s))),
                )
            })
            .collect();
        Self {
            set,
            all,
            known: RwLock::new(known),
            zoned: RwLock::new(HashMap::new()),
        }
    }

    /// The snapshot indexed.
    pub fn set(&self) -> &Arc<EndpointSet> {
        &self.set
    }

    /// Every routable endpoint.
    pub fn all(&self) -> Picked {
        Picked {
            set: self.set.clone(),
            members: self.all.clone(),
            fell_back: false,
        }
    }

    fn members(&self, selector: &Selector) -> Arc<Members> {
        if selector.is_everything() {
            return self.all.clone();
        }
        if let Some(m) = self.known.read().expect("subset cache").get(selector) {
            return m.clone();
        }
        let m = Arc::new(Members::new(
            &self.set,
            routable_positions(&self.set, selector),
        ));
        self.known
            .write()
            .expect("subset cache")
            .entry(selector.clone())
            .or_insert(m)
            .clone()
    }

    /// The members of `picked` that run in `zone` or are hinted for it (topology-aware
    /// routing), cached per snapshot; `None` when there are none.
    pub fn in_zone(&self, selector: &Selector, picked: &Picked, zone: &str) -> Option<Picked> {
        let cached = self
            .zoned
            .read()
            .expect("zone cache")
            .get(selector)
            .and_then(|zones| zones.get(zone))
            .cloned();
        let members = cached.unwrap_or_else(|| {
            let positions = picked
                .positions()
                .iter()
                .copied()
                .filter(|p| {
                    let meta = self.set.endpoints()[*p as usize].meta();
                    meta.zone.as_deref() == Some(zone) || meta.zone_hints.iter().any(|h| h == zone)
                })
                .collect();
            let m = Arc::new(Members::new(&self.set, positions));
            self.zoned
                .write()
                .expect("zone cache")
                .entry(selector.clone())
                .or_default()
                .entry(zone.to_string())
                .or_insert(m)
                .clone()
        });
        (!members.positions.is_empty()).then(|| Picked {
            set: self.set.clone(),
            members,
            fell_back: picked.fell_back,
        })
    }

    /// The routable endpoints matching `selector`, or the fallback's when there are none.
    pub fn subset(&self, selector: &Selector, fallback: &Fallback) -> Result<Picked, SubsetError> {
        let members = self.members(selector);
        if !members.positions.is_empty() {
            return Ok(Picked {
                set: self.set.clone(),
                members,
                fell_back: false,
            });
        }
        let members = match fallback {
            Fallback::NoFallback => None,
            Fallback::AnyEndpoint => Some(self.all.clone()),
            Fallback::Default(other) => Some(self.members(other)),
        };
        match members {
            Some(m) if !m.positions.is_empty() => Ok(Picked {
                set: self.set.clone(),
                members: m,
                fell_back: true,
            }),
            _ => Err(SubsetError::Empty {
                selector: selector.to_string(),
                fallback: fallback.clone(),
                endpoints: self.set.len(),
            }),
        }
    }
}

/// Positions of the routable endpoints matching `selector`: its ready ones, or, when none of
/// them is ready, its serving-terminating ones (kube-proxy's rule, applied per subset so a
/// subset being rolled keeps serving).
fn routable_positions(set: &EndpointSet, selector: &Selector) -> Vec<u32> {
    let matching = || {
        set.endpoints()
            .iter()
            .enumerate()
            .filter(|(_, e)| selector.matches(e.labels()))
    };
    let any_ready = matching().any(|(_, e)| e.readiness() == Readiness::Ready);
    let wanted = if any_ready {
        Readiness::Ready
    } else {
        Readiness::ServingTerminating
    };
    matching()
        .filter(|(_, e)| e.readiness() == wanted)
        .map(|(i, _)| i as u32)
        .collect()
}
