//! A client that connects straight to Pods and keeps the Service's authority.
//!
//! [`PodClient`] is the inner service to use under a [`Mesh`](crate::Mesh) when Pods speak
//! HTTP/2, or when one process should hold exactly one connection per Pod. It is built on
//! hyper's `client::conn` (the same connection state machines hyper-util's pooled client
//! drives):
//!
//! - HTTP/2 (prior knowledge, `h2c`): one multiplexed connection per Pod, shared by every
//!   request; concurrent first requests wait for one connect instead of racing. Each request
//!   is sent with `:authority` set to the Service authority the Mesh keeps in `Host` (and
//!   no `Host` header), exactly what the Pod would see through the ClusterIP.
//! - HTTP/1.1: a stack of idle keep-alive connections per Pod; a connection returns to the
//!   stack once its response body has been read, and idle ones are dropped after the idle
//!   timeout. Requests go in origin form with `Host` set to the Service authority.
//!
//! The endpoint comes from the request's URI, where the Mesh puts it (an IP literal is
//! used as is; a name is resolved once per connection, which is how `ExternalName`
//! Services are reached).
//!
//! With [`PodClientBuilder::tls`] (feature `tls`), `https` requests connect with TLS and
//! verify the Pod as its Service's name (see [`tls`](crate::tls)); ALPN offers only the
//! protocol spoken. A connection to an endpoint no request went to for the idle timeout is
//! closed (that is how connections to Pods that left the Service go), and the response of
//! a request that opened a connection carries [`ConnectTime`], so the Mesh's latency
//! estimate is the Pod's, not the handshake's.
//!
//! The pool is this module's own rather than hyper-util's young `client::pool` services
//! (`Singleton`, `Cache`, `Map`): what it needs around them (TLS chosen per request, the
//! time a request spent connecting, idle eviction per endpoint, one connect for concurrent
//! first requests) would be most of the code anyway, and its API is still settling.

mod error;

pub use self::error::ConnectError;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
#[cfg(feature = "http2")]
use hyper::client::conn::http2;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::BoxError;

/// A response extension: how long the client spent opening a new connection (TCP, and
/// TLS when used) for this request. The Mesh leaves it out of the latency it records, so a
/// Pod is not avoided because its first request paid for the handshake.
/// [`PodClient`] sets it on the response of the request that opened a connection; other
/// inner services may set it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectTime(pub Duration);

/// The HTTP version [`PodClient`] speaks to Pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext TCP with prior knowledge (gRPC's usual in-cluster transport;
    /// feature `http2`, on by default).
    #[cfg(feature = "http2")]
    Http2,
}

/// Settings for a [`PodClient`].
#[derive(Clone, Debug)]
pub struct PodClientBuilder {
    protocol: Protocol,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_endpoint: usize,
    h2: Http2Settings,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsConfig>,
}

/// HTTP/2 connection settings of a [`PodClient`].
#[derive(Clone, Copy, Debug, Default)]
struct Http2Settings {
    /// Ping interval and how long to wait for the answer.
    keep_alive: Option<(Duration, Duration)>,
    adaptive_window: bool,
    stream_window: Option<u32>,
    connection_window: Option<u32>,
}

impl Default for PodClientBuilder {
    fn default() -> Self {
        Self {
            protocol: Protocol::Http1,
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_endpoint: 32,
            h2: Http2Settings::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl PodClientBuilder {
    /// The protocol (default HTTP/1.1).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// How long a TCP connect may take (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an idle connection is kept (default 90 s): an HTTP/1.1 connection with no
    /// request, and an HTTP/2 connection to a Pod no request was sent to in that time,
    /// which is how connections to Pods that left the Service (or a subset) get closed.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// HTTP/2 keep-alive: a PING every `interval`, and the connection closed when one is
    /// not answered within `timeout` (default off, as in hyper and tonic). Pings run on
    /// idle connections too, so a Pod that vanished without closing its connections (a
    /// node gone) is noticed before a request waits on it.
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.h2.keep_alive = Some((interval, timeout));
        self
    }

    /// HTTP/2 flow control that adapts its windows to the connection's bandwidth-delay
    /// product (default off; overrides the fixed windows below).
    pub fn http2_adaptive_window(mut self, enabled: bool) -> Self {
        self.h2.adaptive_window = enabled;
        self
    }

    /// HTTP/2 initial flow-control windows, per stream and per connection, in bytes
    /// (defaults: hyper's, 2 MiB and 5 MiB).
    pub fn http2_initial_windows(mut self, stream: u32, connection: u32) -> Self {
        self.h2.stream_window = Some(stream);
        self.h2.connection_window = Some(connection);
        self
    }

    /// The most idle HTTP/1.1 connections kept per endpoint (default 32).
    pub fn max_idle_per_endpoint(mut self, max: usize) -> Self {
        self.max_idle_per_endpoint = max;
        self
    }

    /// TLS for `https` requests (feature `tls`), with the Service's name the Mesh recorded
    /// for the Pod (use the same [`TlsConfig`](crate::tls::TlsConfig) in
    /// [`MeshBuilder::tls`](crate::MeshBuilder::tls)); ALPN offers only the protocol this
    /// client speaks.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The client.
    pub fn build<B>(self) -> PodClient<B> {
        #[cfg(feature = "tls")]
        let tls = self.tls.as_ref().map(|t| {
            let alpn: &[u8] = match self.protocol {
                Protocol::Http1 => b"http/1.1",
                #[cfg(feature = "http2")]
                Protocol::Http2 => b"h2",
            };
            Tls {
                connector: tokio_rustls::TlsConnector::from(t.with_alpn(alpn)),
                names: t.names().clone(),
            }
        });
        PodClient {
            pool: Arc::new(Pool {
                settings: self,
                epoch: Instant::now(),
                sweeper: std::sync::OnceLock::new(),
                #[cfg(feature = "tls")]
                tls,
                endpoints: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// An HTTP client with one connection pool per endpoint; see the [module docs](self).
pub struct PodClient<B> {
    pool: Arc<Pool<B>>,
}

impl<B> Clone for PodClient<B> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<B> fmt::Debug for PodClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodClient")
            .field("settings", &self.pool.settings)
            .finish_non_exhaustive()
    }
}

impl PodClient<()> {
    /// Settings for a client.
    pub fn builder() -> PodClientBuilder {
        PodClientBuilder::default()
    }
}

struct Pool<B> {
    settings: PodClientBuilder,
    /// The origin of `Conns::last_used`.
    epoch: Instant,
    /// Started with the first request: closes idle connections.
    sweeper: std::sync::OnceLock<()>,
    #[cfg(feature = "tls")]
    tls: Option<Tls>,
    endpoints: Mutex<HashMap<Authority, Arc<Conns<B>>>>,
}

/// What connecting over TLS needs.
#[cfg(feature = "tls")]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    names: Arc<crate::tls::Names>,
}

/// A connection to a Pod: plain TCP, or TLS over it.
enum PodIo {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for PodIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PodIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            PodIo::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for PodIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PodIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            PodIo::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PodIo::Plain(io) => Pin::new(io).poll_flush(cx),
            #[cfg(feature = "tls")]
            PodIo::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PodIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            PodIo::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

impl<B> Pool<B> {
    /// Connects to `endpoint`, with TLS for `https` (as the name the Mesh recorded).
    async fn open(&self, endpoint: &Authority, https: bool) -> Result<PodIo, BoxError> {
        let tcp = connect(endpoint, self.settings.connect_timeout).await?;
        if !https {
            return Ok(PodIo::Plain(tcp));
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let stream = crate::tls::handshake(&tls.connector, &tls.names, endpoint, tcp).await?;
            return Ok(PodIo::Tls(Box::new(stream)));
        }
        Err(format!(
            "https request to {endpoint}, but this PodClient has no TLS: build it with .tls(..) (feature `tls`)"
        )
        .into())
    }
}

/// The connections to one endpoint.
struct Conns<B> {
    /// The HTTP/2 connection, read on every request.
    #[cfg(feature = "http2")]
    h2: std::sync::RwLock<Option<http2::SendRequest<B>>>,
    /// Held while connecting, so concurrent first requests make one connection.
    connecting: tokio::sync::Mutex<()>,
    idle: Mutex<Vec<(Instant, http1::SendRequest<B>)>>,
    /// When a request last went to this endpoint, in milliseconds since the pool began.
    last_used: std::sync::atomic::AtomicU64,
}

impl<B> Pool<B> {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Closes the connections of endpoints no request went to for the idle timeout (an
    /// HTTP/2 connection closes once its in-flight requests finish) and forgets them.
    fn evict_idle(&self) {
        use std::sync::atomic::Ordering;
        let now = self.now_ms();
        let idle = self.settings.idle_timeout.as_millis() as u64;
        let mut endpoints = self.endpoints.lock().expect("pool lock");
        endpoints.retain(|_, c| {
            if now.saturating_sub(c.last_used.load(Ordering::Relaxed)) < idle {
                return true;
            }
            #[cfg(feature = "http2")]
            {
                *c.h2.write().expect("h2 lock") = None;
            }
            c.idle.lock().expect("idle lock").clear();
            // A request still holding it keeps it until it is done.
            Arc::strong_count(c) > 1
        });
    }

    fn conns(&self, endpoint: &Authority) -> Arc<Conns<B>> {
        let mut endpoints = self.endpoints.lock().expect("pool lock");
        if let Some(c) = endpoints.get(endpoint) {
            return c.clone();
        }
        // A new endpoint is the moment to forget ones whose connections are all gone.
        endpoints.retain(|_, c| Arc::strong_count(c) > 1 || !c.is_empty());
        let c = Arc::new(Conns {
            #[cfg(feature = "http2")]
            h2: std::sync::RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            idle: Mutex::new(Vec::new()),
            last_used: std::sync::atomic::AtomicU64::new(self.now_ms()),
        });
        endpoints.insert(endpoint.clone(), c.clone());
        c
    }
}

impl<B> Conns<B> {
    fn is_empty(&self) -> bool {
        #[cfg(feature = "http2")]
        let h2_open = self
            .h2
            .read()
            .expect("h2 lock")
            .as_ref()
            .is_some_and(|s| !s.is_closed());
        #[cfg(not(feature = "http2"))]
        let h2_open = false;
        let busy = self.connecting.try_lock().is_err() || h2_open;
        !busy && self.idle.lock().expect("idle lock").is_empty()
    }
}

/// Evicts idle connections every `every` until the client is dropped.
async fn sweep<B>(pool: std::sync::Weak<Pool<B>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.evict_idle();
    }
}

async fn connect(endpoint: &Authority, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let port = endpoint.port_u16().unwrap_or(80);
    let host = endpoint
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let err = |source| ConnectError {
        endpoint: endpoint.to_string(),
        source,
    };
    let attempt = async {
        let stream = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => TcpStream::connect((ip, port)).await?,
            Err(_) => TcpStream::connect((host, port)).await?,
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(err(std::io::ErrorKind::TimedOut.into())),
    }
}

impl<B> tower_service::Service<Request<B>> for PodClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move {
            let endpoint = req
                .uri()
                .authority()
                .cloned()
                .ok_or("request URI names no endpoint")?;
            // The Mesh keeps the caller's authority in `Host`.
            let authority = match req.headers().get(http::header::HOST) {
                Some(host) => Authority::try_from(host.as_bytes())?,
                None => endpoint.clone(),
            };
            let conns = pool.conns(&endpoint);
            conns
                .last_used
                .store(pool.now_ms(), std::sync::atomic::Ordering::Relaxed);
            pool.sweeper.get_or_init(|| {
                let every = (pool.settings.idle_timeout / 2).max(Duration::from_millis(20));
                tokio::spawn(sweep(Arc::downgrade(&pool), every));
            });
            match pool.settings.protocol {
                #[cfg(feature = "http2")]
                Protocol::Http2 => send_h2(&pool, &conns, &endpoint, &authority, req).await,
                Protocol::Http1 => send_h1(&pool, conns, &endpoint, &authority, req).await,
            }
        })
    }
}

#[cfg(feature = "http2")]
impl Http2Settings {
    fn builder(&self) -> http2::Builder<hyper_util::rt::TokioExecutor> {
        let mut b = http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        b.timer(hyper_util::rt::TokioTimer::new());
        if let Some((interval, timeout)) = self.keep_alive {
            b.keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
        if self.adaptive_window {
            b.adaptive_window(true);
        } else {
            if let Some(w) = self.stream_window {
                b.initial_stream_window_size(w);
            }
            if let Some(w) = self.connection_window {
                b.initial_connection_window_size(w);
            }
        }
        b
    }
}

#[cfg(feature = "http2")]
async fn send_h2<B>(
    pool: &Pool<B>,
    conns: &Conns<B>,
    endpoint: &Authority,
    authority: &Authority,
    mut req: Request<B>,
) -> Result<Response<Incoming>, BoxError>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    use http::Uri;
    use http::uri::Scheme;

    let open = |conns: &Conns<B>| {
        conns
            .h2
            .read()
            .expect("h2 lock")
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    };
    let mut setup = None;
    let mut sender = match open(conns) {
        Some(s) => s,
        None => {
            let _connecting = conns.connecting.lock().await;
            // Another request may have connected while this one waited.
            match open(conns) {
                Some(s) => s,
                None => {
                    let https = req.uri().scheme() == Some(&Scheme::HTTPS);
                    let opening = Instant::now();
                    let io = pool.open(endpoint, https).await?;
                    let (sender, conn) = pool
                        .settings
                        .h2
                        .builder()
                        .handshake(TokioIo::new(io))
                        .await?;
                    setup = Some(opening.elapsed());
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "HTTP/2 connection to a Pod ended");
                        }
                    });
                    *conns.h2.write().expect("h2 lock") = Some(sender.clone());
                    sender
                }
            }
        }
    };
    // `:authority` is the Service's, as through the ClusterIP; no Host beside it.
    let scheme = req.uri().scheme().cloned().unwrap_or(Scheme::HTTP);
    let path = req.uri().path_and_query().cloned();
    let mut uri = Uri::builder().scheme(scheme).authority(authority.clone());
    if let Some(p) = path {
        uri = uri.path_and_query(p);
    } else {
        uri = uri.path_and_query("/");
    }
    *req.uri_mut() = uri.build()?;
    *req.version_mut() = Version::HTTP_2;
    req.headers_mut().remove(http::header::HOST);
    sender.ready().await?;
    let mut res = sender.send_request(req).await?;
    if let Some(setup) = setup {
        res.extensions_mut().insert(ConnectTime(setup));
    }
    Ok(res)
}

async fn send_h1<B>(
    pool: &Arc<Pool<B>>,
    conns: Arc<Conns<B>>,
    endpoint: &Authority,
    authority: &Authority,
    mut req: Request<B>,
) -> Result<Response<Incoming>, BoxError>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let idle_timeout = pool.settings.idle_timeout;
    let reused = {
        let mut idle = conns.idle.lock().expect("idle lock");
        idle.retain(|(since, s)| !s.is_closed() && since.elapsed() < idle_timeout);
        idle.pop().map(|(_, s)| s)
    };
    let mut setup = None;
    let mut sender = match reused.filter(|s| s.is_ready()) {
        Some(s) => s,
        None => {
            let https = req.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
            let opening = Instant::now();
            let io = pool.open(endpoint, https).await?;
            let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
            setup = Some(opening.elapsed());
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTP/1.1 connection to a Pod ended");
                }
            });
            sender
        }
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.to_string());
    *req.uri_mut() = path.parse()?;
    *req.version_mut() = Version::HTTP_11;
    if !req.headers().contains_key(http::header::HOST) {
        req.headers_mut().insert(
            http::header::HOST,
            HeaderValue::from_str(authority.as_str())?,
        );
    }
    let mut res = sender.send_request(req).await?;
    if let Some(setup) = setup {
        res.extensions_mut().insert(ConnectTime(setup));
    }
    // The connection is free again once this response's body has been read.
    let max_idle = pool.settings.max_idle_per_endpoint;
    tokio::spawn(async move {
        if sender.ready().await.is_ok() {
            let mut idle = conns.idle.lock().expect("idle lock");
            if idle.len() < max_idle {
                idle.push((Instant::now(), sender));
            }
        }
    });
    Ok(res)
}
