//! Reaching Pods from outside the cluster: through the API server's `pods/portforward`
//! (feature `port-forward`).
//!
//! From a laptop with a kubeconfig, discovery works but Pod IPs do not answer. With
//! [`PortForward`], the Mesh still picks a Pod per request (subsets, splits, balancing
//! unchanged), and the connector reaches the picked Pod through a port-forward tunnel
//! (kube-rs's WebSocket port-forward) instead of a TCP connection to its IP. hyper-util
//! pools connections per Pod as usual, so each pooled connection is one tunnel; tunnels to
//! Pods that left close with the pool's idle timeout.
//!
//! ```no_run
//! # async fn demo(kube: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower::Layer;
//! type Body = rudder::ReplayBody<http_body_util::Empty<bytes::Bytes>>;
//! let pf = rudder::PortForward::new(kube.clone());
//! let http: Client<_, Body> = Client::builder(TokioExecutor::new()).build(pf.connector());
//! let layer = rudder::MeshLayer::builder(kube).port_forward(pf).build()?;
//! let mesh = layer.layer(http); // http://hello-svc:8080/ → a Pod, through the API server
//! # Ok(()) }
//! ```
//!
//! Limits: every byte goes through the API server (fine for development, not for load);
//! the client needs `create` on `pods/portforward` (not in `deploy/rbac.yaml`, which is
//! for clients in the cluster); `https` to Pods is not supported over tunnels.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// Why a tunnel to a Pod could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortForwardError {
    /// The connector was asked for an address no Mesh has routed to: requests through a
    /// port-forward connector must go through a Mesh built with
    /// [`MeshBuilder::port_forward`](crate::MeshBuilder::port_forward).
    #[error("no Pod known at {0}: send requests through a Mesh built with .port_forward(..)")]
    UnknownPod(String),
    /// The API refused the tunnel (typically a missing permission).
    #[error("port-forward to Pod {namespace}/{pod} refused: {message}{hint}")]
    Refused {
        /// The Pod's namespace.
        namespace: String,
        /// The Pod.
        pod: String,
        /// The API's message.
        message: String,
        /// What to grant, when the API said 403.
        hint: &'static str,
    },
    /// The tunnel failed otherwise.
    #[error("port-forward to Pod {namespace}/{pod} failed: {source}")]
    Failed {
        /// The Pod's namespace.
        namespace: String,
        /// The Pod.
        pod: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Port-forward transport to Pods: the registry a Mesh fills (Pod address → Pod) and the
/// connector that opens tunnels. Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct PortForward {
    client: kube::Client,
    pods: Arc<ArcSwap<Registry>>,
}

/// Pod address → the Pod and its open tunnels.
type Registry = HashMap<SocketAddr, Arc<PodEntry>>;

#[derive(Debug)]
struct PodEntry {
    namespace: Arc<str>,
    pod: Arc<str>,
    tunnels: std::sync::Mutex<Vec<std::sync::Weak<kube::api::Portforwarder>>>,
}

/// Held while the Mesh routes to a Pod; dropped when the Pod left (and the last request
/// that picked it finished): the Pod is forgotten and its tunnels are closed.
pub(crate) struct Release {
    pf: PortForward,
    addr: SocketAddr,
    entry: Arc<PodEntry>,
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Release").field("addr", &self.addr).finish()
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let addr = self.addr;
        let entry = &self.entry;
        self.pf.pods.rcu(|map| {
            let mut next = HashMap::clone(map);
            if next.get(&addr).is_some_and(|e| Arc::ptr_eq(e, entry)) {
                next.remove(&addr);
            }
            next
        });
        let tunnels = std::mem::take(&mut *entry.tunnels.lock().expect("tunnels lock"));
        for t in tunnels.iter().filter_map(std::sync::Weak::upgrade) {
            t.abort();
        }
        if !tunnels.is_empty() {
            tracing::debug!(pod = %entry.pod, %addr, "Pod left: its port-forward tunnels are closed");
        }
    }
}

impl std::fmt::Debug for PortForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForward")
            .field("pods", &self.pods.load().len())
            .finish_non_exhaustive()
    }
}

/// How many Pod addresses the registry keeps (made-up addresses cannot reach it: only
/// the Mesh writes it, with discovered endpoints).
const MAX_PODS: usize = 16_384;

impl PortForward {
    /// A transport opening tunnels with `client` (its credentials need `create` on
    /// `pods/portforward`).
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            pods: Arc::default(),
        }
    }

    /// The connector for hyper-util's client.
    pub fn connector(&self) -> PortForwardConnector {
        PortForwardConnector(self.clone())
    }

    /// Remembers that `addr` is Pod `namespace/pod` until the returned guard drops (the
    /// Mesh keeps it with the endpoint).
    pub(crate) fn register(&self, addr: SocketAddr, namespace: &str, pod: &Arc<str>) -> Release {
        let entry = Arc::new(PodEntry {
            namespace: Arc::from(namespace),
            pod: pod.clone(),
            tunnels: std::sync::Mutex::new(Vec::new()),
        });
        self.pods.rcu(|map| {
            let mut next = HashMap::clone(map);
            if next.len() >= MAX_PODS {
                next.clear();
            }
            next.insert(addr, entry.clone());
            next
        });
        Release {
            pf: self.clone(),
            addr,
            entry,
        }
    }
}

/// hyper-util's connector over port-forward tunnels (see [`PortForward`]).
#[derive(Clone, Debug)]
pub struct PortForwardConnector(PortForward);

impl tower_service::Service<http::Uri> for PortForwardConnector {
    type Response = TokioIo<Tunnel>;
    type Error = PortForwardError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let pf = self.0.clone();
        Box::pin(async move {
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let addr: SocketAddr = authority
                .parse()
                .map_err(|_| PortForwardError::UnknownPod(authority.to_string()))?;
            let entry = pf
                .pods
                .load()
                .get(&addr)
                .cloned()
                .ok_or_else(|| PortForwardError::UnknownPod(addr.to_string()))?;
            let (namespace, pod) = (entry.namespace.clone(), entry.pod.clone());
            let pods: Api<Pod> = Api::namespaced(pf.client.clone(), &namespace);
            let mut forwarder = match pods.portforward(&pod, &[addr.port()]).await {
                Ok(f) => f,
                Err(kube::Error::Api(status)) => {
                    return Err(PortForwardError::Refused {
                        namespace: namespace.to_string(),
                        pod: pod.to_string(),
                        hint: if status.code == 403 {
                            " (grant create on pods/portforward)"
                        } else {
                            ""
                        },
                        message: status.message,
                    });
                }
                Err(e) => {
                    return Err(PortForwardError::Failed {
                        namespace: namespace.to_string(),
                        pod: pod.to_string(),
                        source: Box::new(e),
                    });
                }
            };
            let stream =
                forwarder
                    .take_stream(addr.port())
                    .ok_or_else(|| PortForwardError::Failed {
                        namespace: namespace.to_string(),
                        pod: pod.to_string(),
                        source: "the tunnel has no stream for the port".into(),
                    })?;
            let forwarder = Arc::new(forwarder);
            {
                let mut tunnels = entry.tunnels.lock().expect("tunnels lock");
                tunnels.retain(|t| t.strong_count() > 0);
                tunnels.push(Arc::downgrade(&forwarder));
            }
            Ok(TokioIo::new(Tunnel {
                stream,
                _forwarder: forwarder,
            }))
        })
    }
}

/// One port-forward tunnel to a Pod, as a connection.
pub struct Tunnel {
    stream: DuplexStream,
    _forwarder: Arc<kube::api::Portforwarder>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

impl Connection for Tunnel {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How a client reaches Pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// Straight to the Pod's IP (inside the cluster).
    Direct,
    /// Through the API server's port-forward (outside the cluster).
    PortForward,
}

impl Transport {
    /// Direct inside a Pod (the in-cluster environment, `KUBERNETES_SERVICE_HOST`), port
    /// forwarding elsewhere (a kubeconfig on a laptop). The choice is logged at INFO.
    pub fn auto() -> Self {
        let t = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            Transport::Direct
        } else {
            Transport::PortForward
        };
        tracing::info!(transport = ?t, "rudder: reaching Pods {}", match t {
            Transport::Direct => "directly (running in a cluster)",
            Transport::PortForward => "through port-forward (running outside a cluster)",
        });
        t
    }
}

impl PortForward {
    /// A connector for `transport`: direct TCP to Pod IPs, or tunnels. The Mesh registers
    /// Pods either way, so one set-up serves both (pair it with [`Transport::auto`]).
    pub fn connector_for(&self, transport: Transport) -> EitherConnector {
        match transport {
            Transport::Direct => {
                let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
                http.set_nodelay(true);
                EitherConnector::Direct(http)
            }
            Transport::PortForward => EitherConnector::Tunnel(self.connector()),
        }
    }
}

/// A connector chosen at start: direct TCP or port-forward tunnels.
#[derive(Clone, Debug)]
pub enum EitherConnector {
    /// Direct TCP to Pod IPs.
    Direct(hyper_util::client::legacy::connect::HttpConnector),
    /// Port-forward tunnels.
    Tunnel(PortForwardConnector),
}

/// A connection made by [`EitherConnector`].
#[derive(Debug)]
pub enum EitherConnection {
    /// A TCP connection.
    Direct(TokioIo<tokio::net::TcpStream>),
    /// A tunnel.
    Tunnel(TokioIo<Tunnel>),
}

impl tower_service::Service<http::Uri> for EitherConnector {
    type Response = EitherConnection;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            EitherConnector::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            EitherConnector::Tunnel(c) => c.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        match self {
            EitherConnector::Direct(c) => {
                let f = c.call(uri);
                Box::pin(async move { Ok(EitherConnection::Direct(f.await?)) })
            }
            EitherConnector::Tunnel(c) => {
                let f = c.call(uri);
                Box::pin(async move { Ok(EitherConnection::Tunnel(f.await?)) })
            }
        }
    }
}

impl Connection for EitherConnection {
    fn connected(&self) -> Connected {
        match self {
            EitherConnection::Direct(c) => c.connected(),
            EitherConnection::Tunnel(c) => c.connected(),
        }
    }
}

impl hyper::rt::Read for EitherConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EitherConnection::Direct(c) => Pin::new(c).poll_read(cx, buf),
            EitherConnection::Tunnel(c) => Pin::new(c).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for EitherConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            EitherConnection::Direct(c) => Pin::new(c).poll_write(cx, buf),
            EitherConnection::Tunnel(c) => Pin::new(c).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EitherConnection::Direct(c) => Pin::new(c).poll_flush(cx),
            EitherConnection::Tunnel(c) => Pin::new(c).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EitherConnection::Direct(c) => Pin::new(c).poll_shutdown(cx),
            EitherConnection::Tunnel(c) => Pin::new(c).poll_shutdown(cx),
        }
    }
}
