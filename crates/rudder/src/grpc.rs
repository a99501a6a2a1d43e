//! gRPC status codes for the Mesh's errors (feature `tonic`).
//!
//! tonic turns a transport error into a `Status` by looking for one in the error's source
//! chain, and gives `Unknown` when there is none, so retry policies and callers cannot tell
//! "no Pod to send to" from a failed call. Map the Mesh's errors with [`status`] and tonic
//! sees the codes its own channel would give:
//!
//! | [`MeshError`] | code |
//! |---|---|
//! | `NotSynced`, `ServiceNotFound`, `NoEndpoints`, `Forbidden`, `Discovery` (API side) | `Unavailable` |
//! | `Timeout` | `DeadlineExceeded` |
//! | `TooManyServices` | `ResourceExhausted` |
//! | `Failed` (no response from the Pods tried): connection never made | `Unavailable` |
//! | `Failed`, otherwise | left to tonic, which reads the HTTP/2 error in its source chain |
//! | `MissingAuthority`, `NotAService`, `InvalidSubset`, `SubsetNotAscii`, an invalid Service name | `InvalidArgument` |
//!
//! `Unavailable` is what tonic's channel reports when it cannot connect or resolve, and
//! what gRPC retry policies retry; a Service the client may not discover is a deployment
//! problem of the client, not a refusal by the server, so it is `Unavailable` too. The
//! `MeshError` stays reachable as the status's source.
//!
//! ```no_run
//! # async fn demo(layer: rudder::MeshLayer) -> Result<(), rudder::BoxError> {
//! use tower::{Layer, ServiceExt};
//!
//! let pods = rudder::PodClient::builder()
//!     .protocol(rudder::Protocol::Http2)
//!     .build::<rudder::ReplayBody<tonic::body::Body>>();
//! let transport = layer.layer(pods).map_err(rudder::grpc::status);
//! let grpc = tonic::client::Grpc::with_origin(transport, "http://greeter:8080".parse()?);
//! # let _ = grpc; Ok(()) }
//! ```

use std::sync::Arc;

use tonic::{Code, Status};

use crate::{BoxError, MeshError};

/// The gRPC code of a Mesh error (see the [module docs](self)).
pub fn code(e: &MeshError) -> Code {
    match e {
        MeshError::Timeout { .. } => Code::DeadlineExceeded,
        MeshError::TooManyServices { .. } => Code::ResourceExhausted,
        MeshError::MissingAuthority
        | MeshError::NotAService { .. }
        | MeshError::InvalidSubset { .. }
        | MeshError::SubsetNotAscii { .. }
        | MeshError::Discovery(rudder_k8s::DiscoveryError::InvalidService(_)) => {
            Code::InvalidArgument
        }
        _ => Code::Unavailable,
    }
}

impl From<MeshError> for Status {
    fn from(e: MeshError) -> Self {
        let mut status = Status::new(code(&e), e.to_string());
        status.set_source(Arc::new(e));
        status
    }
}

/// Turns a [`MeshError`] into a `tonic::Status` with its code (the error stays its
/// source); any other error passes unchanged. For `ServiceExt::map_err` over a Mesh.
pub fn status(e: BoxError) -> BoxError {
    match e.downcast::<MeshError>() {
        Ok(mesh) => match *mesh {
            MeshError::Failed { ref source, .. }
                if !crate::error::never_connected(source.as_ref()) =>
            {
                mesh
            }
            mesh => Box::new(Status::from(mesh)),
        },
        Err(other) => other,
    }
}
