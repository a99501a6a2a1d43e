//! gRPC on the Pod servers: every [`PodServer`](crate::PodServer) also answers the unary
//! method `rudder.testkit.Pod/Whoami` over HTTP/2, so gRPC clients (tonic) can be balanced
//! across the same Pods as plain HTTP ones. The messages are hand-written prost types, so no
//! `protoc` is needed:
//!
//! ```text
//! service Pod { rpc Whoami(WhoamiRequest) returns (WhoamiReply); }
//! message WhoamiRequest {}
//! message WhoamiReply { string pod = 1; string authority = 2; map<string, string> labels = 3; }
//! ```

use std::collections::HashMap;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http_body::Body;
use tonic::client::{Grpc, GrpcService};

/// tonic's boxed error.
type StdError = Box<dyn std::error::Error + Send + Sync>;

/// The method's path.
pub const WHOAMI_PATH: &str = "/rudder.testkit.Pod/Whoami";

/// The request of `Whoami` (empty).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WhoamiRequest {}

/// The reply of `Whoami`: who answered and what `:authority` it saw.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WhoamiReply {
    /// The Pod's name.
    #[prost(string, tag = "1")]
    pub pod: String,
    /// The `:authority` the request carried.
    #[prost(string, tag = "2")]
    pub authority: String,
    /// The Pod's labels.
    #[prost(map = "string, string", tag = "3")]
    pub labels: HashMap<String, String>,
}

/// Calls `Whoami` through any tonic client transport (a `Channel`, or a Mesh over
/// `rudder::PodClient`).
pub async fn whoami<T>(grpc: &mut Grpc<T>) -> Result<WhoamiReply, tonic::Status>
where
    T: GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError>,
{
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("transport not ready: {}", e.into())))?;
    let codec = tonic_prost::ProstCodec::<WhoamiRequest, WhoamiReply>::default();
    let path = PathAndQuery::from_static(WHOAMI_PATH);
    let res = grpc
        .unary(tonic::Request::new(WhoamiRequest {}), path, codec)
        .await?;
    Ok(res.into_inner())
}

/// The server side of `Whoami` for one Pod.
#[derive(Clone, Debug)]
pub(crate) struct Whoami {
    pub(crate) reply: WhoamiReply,
}

impl tonic::server::UnaryService<WhoamiRequest> for Whoami {
    type Response = WhoamiReply;
    type Future = std::future::Ready<Result<tonic::Response<WhoamiReply>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<WhoamiRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(self.reply.clone())))
    }
}

/// Answers one gRPC request to a Pod server.
pub(crate) async fn respond<B>(
    req: http::Request<B>,
    reply: WhoamiReply,
) -> http::Response<tonic::body::Body>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send,
{
    if req.uri().path() != WHOAMI_PATH {
        return tonic::Status::unimplemented(format!("no method {}", req.uri().path())).into_http();
    }
    let codec = tonic_prost::ProstCodec::<WhoamiReply, WhoamiRequest>::default();
    tonic::server::Grpc::new(codec)
        .unary(Whoami { reply }, req)
        .await
}
