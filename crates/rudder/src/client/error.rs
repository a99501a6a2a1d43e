//! Connecting to an endpoint failed.

use thiserror::Error;

/// A TCP connection to an endpoint could not be made; the request never left this
/// process, so it is safe to retry elsewhere.
#[derive(Debug, Error)]
#[error("connecting to {endpoint}: {source}")]
pub struct ConnectError {
    pub(crate) endpoint: String,
    #[source]
    pub(crate) source: std::io::Error,
}

impl ConnectError {
    /// The endpoint (`ip:port` or `name:port`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}
