use thiserror::Error;

use super::Fallback;

/// Why a request has no endpoint to go to.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SubsetError {
    /// The subset, and its fallback if any, matched no routable endpoint.
    #[error(
        "no routable endpoint matches `{selector}` (fallback: {fallback:?}; the Service has {endpoints} endpoints)"
    )]
    Empty {
        /// The selector asked for.
        selector: String,
        /// The fallback that was tried.
        fallback: Fallback,
        /// How many endpoints (routable or not) the snapshot had.
        endpoints: usize,
    },
}
