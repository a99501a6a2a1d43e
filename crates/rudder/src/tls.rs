//! TLS and mutual TLS to Pods (feature `tls`), verified against the **Service's** name.
//!
//! A request to `https://hello-svc:8443/` is sent to a Pod's address, but the Pod's
//! certificate names the Service (`hello-svc.default.svc`), never the Pod IP, so the
//! handshake must send that name as SNI and verify it. The URI the inner client sees names
//! the Pod (that is how connections are pooled per Pod), so the name travels beside it: the
//! Mesh, configured with [`MeshBuilder::tls`](crate::MeshBuilder::tls), records for each Pod
//! address it sends an `https` request to the server name of the Service, and the
//! connectors here ([`TlsConnector`] for hyper-util's pooled client, and
//! [`PodClientBuilder::tls`](crate::PodClientBuilder::tls)) read it when they connect. A Pod
//! that serves two Services keeps the name of the first over its pooled connection; its
//! certificate should name both.
//!
//! ```no_run
//! # fn demo(kube: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::Layer;
//!
//! let tls = rudder::tls::TlsConfig::builder()
//!     .root_pem_file("/etc/ssl/cluster-ca.pem")?
//!     .client_auth_pem_files("/etc/tls/tls.crt", "/etc/tls/tls.key")? // mutual TLS
//!     .build()?;
//! let http = Client::builder(TokioExecutor::new())
//!     .build::<_, rudder::ReplayBody<http_body_util::Empty<bytes::Bytes>>>(tls.connector());
//! let mesh = rudder::MeshLayer::builder(kube).tls(tls).build()?.layer(http);
//! // https://hello-svc:8443/ → a Pod's IP, SNI and verification as hello-svc.default.svc
//! # let _ = mesh; Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::Uri;
use http::uri::Authority;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::BoxError;
use rudder_k8s::ServiceRef;

/// Why TLS could not be set up or a handshake failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No certificate or key could be parsed from PEM (`what` says which).
    #[error("invalid PEM ({what}): {message}")]
    Pem {
        /// A root certificate, a client certificate or a client key.
        what: &'static str,
        /// What the parser said.
        message: String,
    },
    /// rustls refused the configuration (say, a key that does not match its certificate).
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// No root certificate was given: nothing could be verified.
    #[error("no root certificates: give the CA that signs the Pods' certificates")]
    NoRoots,
    /// A server name is not a valid DNS name.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// The Mesh did not record a server name for this Pod: `https` requests must go
    /// through a Mesh configured with the same [`TlsConfig`].
    #[error(
        "no Service name known for {endpoint}: send https requests through a Mesh built with .tls(..)"
    )]
    NoServerName {
        /// The Pod's address.
        endpoint: String,
    },
    /// The handshake failed (unknown CA, a certificate for another name, a refused client
    /// certificate, a peer that does not speak TLS).
    #[error("TLS handshake with {endpoint} as {server_name} failed: {source}")]
    Handshake {
        /// The Pod's address.
        endpoint: String,
        /// The name sent as SNI and verified.
        server_name: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// How many Pod addresses the name registry holds before it starts over (Pods come and go;
/// the Mesh records a name again on the next request).
const MAX_NAMES: usize = 16_384;

/// Pod address → the server name to verify, written by the Mesh, read by connectors.
#[derive(Default)]
pub(crate) struct Names {
    map: ArcSwap<HashMap<Authority, ServerName<'static>>>,
    writing: Mutex<()>,
}

impl Names {
    pub(crate) fn get(&self, endpoint: &Authority) -> Option<ServerName<'static>> {
        self.map.load().get(endpoint).cloned()
    }

    /// Records `name` for `endpoint` (a read when it is already there).
    pub(crate) fn ensure(&self, endpoint: &Authority, name: &ServerName<'static>) {
        if self.map.load().get(endpoint) == Some(name) {
            return;
        }
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load();
        let mut next = if current.len() >= MAX_NAMES {
            HashMap::new()
        } else {
            HashMap::clone(&current)
        };
        next.insert(endpoint.clone(), name.clone());
        self.map.store(Arc::new(next));
    }
}

/// TLS settings for connections to Pods: the roots that verify them, the client
/// certificate for mutual TLS, ALPN, and the server name of each Service. Cheap to clone;
/// clones share the record of which Pod serves which name.
#[derive(Clone)]
pub struct TlsConfig {
    client: Arc<ClientConfig>,
    names: Arc<Names>,
    overrides: Arc<HashMap<(String, String), ServerName<'static>>>,
    cluster_domain: Option<String>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("alpn", &self.client.alpn_protocols.len())
            .field("cluster_domain", &self.cluster_domain)
            .finish_non_exhaustive()
    }
}

/// Settings for a [`TlsConfig`].
#[derive(Default)]
pub struct TlsConfigBuilder {
    roots: Vec<CertificateDer<'static>>,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: Option<Vec<Vec<u8>>>,
    overrides: HashMap<(String, String), ServerName<'static>>,
    cluster_domain: Option<String>,
}

impl fmt::Debug for TlsConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfigBuilder")
            .field("roots", &self.roots.len())
            .field("client_auth", &self.client_auth.is_some())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

impl TlsConfigBuilder {
    /// Trusts the CA certificates in `pem` (one or more `CERTIFICATE` blocks).
    pub fn root_pem(mut self, pem: &[u8]) -> Result<Self, TlsError> {
        self.roots.extend(certs(pem, "root certificate")?);
        Ok(self)
    }

    /// Trusts the CA certificates in the PEM file at `path` (a bundle, or the cluster's
    /// `ca.crt`).
    pub fn root_pem_file(self, path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let pem = read(path.as_ref())?;
        self.root_pem(&pem)
    }

    /// Presents this client certificate chain and key (PEM) to Pods that ask for one
    /// (mutual TLS).
    pub fn client_auth_pem(mut self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = certs(cert_pem, "client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            what: "client key",
            message: e.to_string(),
        })?;
        self.client_auth = Some((chain, key));
        Ok(self)
    }

    /// Like [`client_auth_pem`](Self::client_auth_pem), from files.
    pub fn client_auth_pem_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let cert = read(cert.as_ref())?;
        let key = read(key.as_ref())?;
        self.client_auth_pem(&cert, &key)
    }

    /// The ALPN protocols [`TlsConfig::connector`] offers (default `http/1.1` only: over
    /// HTTP/2 hyper-util's client sends the Pod's address as `:authority`, so use
    /// [`PodClient`](crate::PodClient), which offers only the protocol it speaks and
    /// restores the Service's authority, for HTTP/2 and gRPC).
    pub fn alpn<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<Vec<u8>>,
    {
        self.alpn = Some(protocols.into_iter().map(Into::into).collect());
        self
    }

    /// Verifies Pods of Service `service` (`name` or `name.namespace`; the default
    /// namespace is `default`) as `server_name` instead of the default
    /// `name.namespace.svc`.
    pub fn server_name(mut self, service: &str, server_name: &str) -> Result<Self, TlsError> {
        let (name, ns) = service.split_once('.').unwrap_or((service, "default"));
        let parsed = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsError::ServerName(server_name.into()))?;
        self.overrides
            .insert((ns.to_string(), name.to_string()), parsed);
        Ok(self)
    }

    /// Uses the cluster-domain form `name.namespace.svc.<domain>` (say `cluster.local`) as
    /// the default server name instead of `name.namespace.svc`.
    pub fn cluster_domain(mut self, domain: &str) -> Self {
        self.cluster_domain = Some(domain.trim_matches('.').to_string());
        self
    }

    /// The configuration (rustls with ring; TLS 1.2 and 1.3).
    pub fn build(self) -> Result<TlsConfig, TlsError> {
        if self.roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let mut roots = rustls::RootCertStore::empty();
        for root in self.roots {
            roots.add(root)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut client = match self.client_auth {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        client.alpn_protocols = self.alpn.unwrap_or_else(|| vec![b"http/1.1".to_vec()]);
        Ok(TlsConfig {
            client: Arc::new(client),
            names: Arc::new(Names::default()),
            overrides: Arc::new(self.overrides),
            cluster_domain: self.cluster_domain,
        })
    }
}

impl TlsConfig {
    /// Settings for a configuration.
    pub fn builder() -> TlsConfigBuilder {
        TlsConfigBuilder::default()
    }

    /// A connector for hyper-util's pooled client: plain TCP for `http` URIs, TLS with the
    /// Service's name for `https` ones (ALPN `http/1.1` unless chosen otherwise).
    pub fn connector(&self) -> TlsConnector {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        TlsConnector {
            http,
            tls: tokio_rustls::TlsConnector::from(self.client.clone()),
            names: self.names.clone(),
        }
    }

    /// The server name Pods of `svc` are verified as.
    pub(crate) fn server_name_of(&self, svc: &ServiceRef) -> Option<ServerName<'static>> {
        let key = (svc.namespace().to_string(), svc.name().to_string());
        if let Some(name) = self.overrides.get(&key) {
            return Some(name.clone());
        }
        let name = match &self.cluster_domain {
            Some(domain) => format!("{}.{}.svc.{domain}", svc.name(), svc.namespace()),
            None => format!("{}.{}.svc", svc.name(), svc.namespace()),
        };
        ServerName::try_from(name).ok()
    }

    pub(crate) fn names(&self) -> &Arc<Names> {
        &self.names
    }

    /// The client configuration offering only `alpn`.
    pub(crate) fn with_alpn(&self, alpn: &[u8]) -> Arc<ClientConfig> {
        let mut client = ClientConfig::clone(&self.client);
        client.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(client)
    }
}

/// Connects TLS to `endpoint` over `tcp`, as the name the Mesh recorded for it.
pub(crate) async fn handshake<IO>(
    tls: &tokio_rustls::TlsConnector,
    names: &Names,
    endpoint: &Authority,
    tcp: IO,
) -> Result<TlsStream<IO>, TlsError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = names.get(endpoint).ok_or_else(|| TlsError::NoServerName {
        endpoint: endpoint.to_string(),
    })?;
    let server_name = name.to_str().into_owned();
    tls.connect(name, tcp)
        .await
        .map_err(|source| TlsError::Handshake {
            endpoint: endpoint.to_string(),
            server_name,
            source,
        })
}

/// hyper-util's HTTP connector with TLS for `https` URIs, verifying each Pod as its
/// Service's name (see the [module docs](self)). Made by [`TlsConfig::connector`].
#[derive(Clone)]
pub struct TlsConnector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
    names: Arc<Names>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector").finish_non_exhaustive()
    }
}

/// A connection made by [`TlsConnector`]: plain, or TLS.
#[derive(Debug)]
pub enum MaybeTls {
    /// Plain TCP (`http`).
    Plain(TokioIo<TcpStream>),
    /// TLS (`https`).
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = MaybeTls;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<MaybeTls, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let endpoint = uri.authority().cloned();
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        let names = self.names.clone();
        Box::pin(async move {
            let tcp = connecting.await?;
            if !https {
                return Ok(MaybeTls::Plain(tcp));
            }
            let endpoint = endpoint.ok_or("https URI without an authority")?;
            let stream = handshake(&tls, &names, &endpoint, tcp.into_inner()).await?;
            Ok(MaybeTls::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

impl Connection for MaybeTls {
    fn connected(&self) -> Connected {
        match self {
            MaybeTls::Plain(tcp) => tcp.connected(),
            MaybeTls::Tls(tls) => {
                let (tcp, session) = tls.inner().get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl hyper::rt::Read for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_read(cx, buf),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_write(cx, buf),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_flush(cx),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_shutdown(cx),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
