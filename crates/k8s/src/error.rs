//! Discovery's failures.

use std::time::Duration;

use thiserror::Error;

use crate::service_ref::ServiceRefError;

/// Why discovery could not hand out endpoints.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The Service reference is malformed.
    #[error(transparent)]
    InvalidService(#[from] ServiceRefError),
    /// Discovery was used outside a Tokio runtime.
    #[error("discovery needs a Tokio runtime to run its watches")]
    NoRuntime,
    /// The first sync did not complete in time (API unreachable, forbidden, or slow).
    #[error("endpoints of {service} not synced after {waited:?}")]
    NotSynced {
        /// The Service.
        service: String,
        /// How long was waited.
        waited: Duration,
    },
    /// The API refused to show the Service or its endpoints to this client (`403`).
    #[error("the API refuses to show {service} to this client: {message}")]
    Forbidden {
        /// The Service.
        service: String,
        /// The API's message (which names the user, verb and resource).
        message: String,
    },
    /// The first sync failed: the API could not be reached or answered with an error.
    #[error("cannot sync {service}: {error}")]
    Unreachable {
        /// The Service.
        service: String,
        /// The failure, with its causes.
        error: String,
    },
}
