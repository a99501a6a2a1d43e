//! The testkit's own failures.

use thiserror::Error;

/// Why the test API server, a Pod server or a test cluster could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding or serving a socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Generating the CA or serving certificate failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// Building a `kube::Client` for the server failed.
    #[error("kube client setup failed: {0}")]
    Kube(String),
    /// A request made through the server's own client failed.
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    /// A helper was asked for something impossible (e.g. more Pods than loopback IPs).
    #[error("invalid test setup: {0}")]
    Invalid(String),
    /// Waiting for a condition took too long.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}
