//! Pod servers: real hyper servers on their own loopback IPs, standing in for Pods. They
//! answer plain HTTP with a JSON [`PodReply`] and gRPC with [`grpc::WhoamiReply`](crate::grpc::WhoamiReply).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::Error;

/// What a [`PodServer`] answers, as JSON, to every request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReply {
    /// The Pod's name.
    pub pod: String,
    /// The Pod's labels.
    pub labels: BTreeMap<String, String>,
    /// The `Host` header (HTTP/1.1) or `:authority` (HTTP/2) the request carried.
    pub authority: Option<String>,
    /// The request path.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// The request body, when it was UTF-8 (empty otherwise).
    #[serde(default)]
    pub body: String,
    /// The server name (SNI) the client sent, when the Pod serves TLS.
    #[serde(default)]
    pub sni: Option<String>,
}

#[derive(Debug, Default)]
struct Knobs {
    latency: Mutex<Duration>,
    /// Probability of a 500, in millionths.
    error_ppm: AtomicU32,
    requests: AtomicU64,
    /// TLS handshakes completed.
    handshakes: AtomicU64,
    /// Connections open now.
    open: AtomicU64,
}

/// A stand-in Pod: an HTTP/1.1 + HTTP/2 (cleartext) server on `ip:port`.
///
/// Every request gets a JSON [`PodReply`] after the configured latency, or a 500 with the
/// configured probability. [`kill`](Self::kill) closes the listener and resets every
/// connection, like a crashed Pod; [`restart`](Self::restart) serves again.
#[derive(Debug)]
pub struct PodServer {
    name: String,
    addr: SocketAddr,
    labels: BTreeMap<String, String>,
    knobs: Arc<Knobs>,
    tls: Option<Arc<rustls::ServerConfig>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

static NEXT_IP: AtomicU32 = AtomicU32::new(0);

/// A fresh loopback address `127.X.Y.Z` for a Pod, distinct within this process; the
/// second octet comes from the process id so parallel test processes rarely meet.
pub fn next_loopback_ip() -> Ipv4Addr {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    let base = 1 + (std::process::id() % 250);
    let host = n % (256 * 254);
    Ipv4Addr::new(127, base as u8, (host / 254) as u8, (host % 254 + 1) as u8)
}

impl PodServer {
    /// Starts a Pod server for `name` on `ip:port` (`port` 0 picks a free port).
    pub async fn start(
        name: impl Into<String>,
        ip: IpAddr,
        port: u16,
        labels: BTreeMap<String, String>,
    ) -> Result<Self, Error> {
        Self::start_with(name, ip, port, labels, None).await
    }

    /// Like [`start`](Self::start), serving TLS with `tls` (see [`PodTls`](crate::PodTls))
    /// when given: the reply then names the SNI the client sent, and
    /// [`handshakes`](Self::handshakes) counts TLS handshakes.
    pub async fn start_with(
        name: impl Into<String>,
        ip: IpAddr,
        port: u16,
        labels: BTreeMap<String, String>,
        tls: Option<&crate::PodTls>,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind((ip, port)).await?;
        let addr = listener.local_addr()?;
        let knobs = Arc::new(Knobs::default());
        let name = name.into();
        let tls = tls.map(crate::PodTls::server_config);
        let task = tokio::spawn(serve(
            listener,
            name.clone(),
            labels.clone(),
            knobs.clone(),
            tls.clone(),
        ));
        Ok(Self {
            name,
            addr,
            labels,
            knobs,
            tls,
            task: Mutex::new(Some(task)),
        })
    }

    /// TLS handshakes completed (0 for a plain HTTP Pod).
    pub fn handshakes(&self) -> u64 {
        self.knobs.handshakes.load(Ordering::Relaxed)
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> u64 {
        self.knobs.open.load(Ordering::Relaxed)
    }

    /// Starts a Pod server on the next free loopback IP of this process.
    pub async fn start_on_loopback(
        name: impl Into<String>,
        port: u16,
        labels: BTreeMap<String, String>,
    ) -> Result<Self, Error> {
        Self::start_on_loopback_with(name, port, labels, None).await
    }

    /// Like [`start_on_loopback`](Self::start_on_loopback), serving TLS when `tls` is given.
    pub async fn start_on_loopback_with(
        name: impl Into<String>,
        port: u16,
        labels: BTreeMap<String, String>,
        tls: Option<&crate::PodTls>,
    ) -> Result<Self, Error> {
        let name = name.into();
        let mut last = None;
        for _ in 0..16 {
            match Self::start_with(
                name.clone(),
                next_loopback_ip().into(),
                port,
                labels.clone(),
                tls,
            )
            .await
            {
                Ok(s) => return Ok(s),
                Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last
            .map(Error::Io)
            .unwrap_or_else(|| Error::Invalid("no free loopback address".into())))
    }

    /// The Pod's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The labels it reports.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// Adds `latency` before every response.
    pub fn set_latency(&self, latency: Duration) {
        *self.knobs.latency.lock().expect("latency lock") = latency;
    }

    /// Answers this share of requests (0.0–1.0) with a 500.
    pub fn set_error_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1_000_000.0) as u32;
        self.knobs.error_ppm.store(ppm, Ordering::Relaxed);
    }

    /// How many requests it has received.
    pub fn request_count(&self) -> u64 {
        self.knobs.requests.load(Ordering::Relaxed)
    }

    /// Closes the listener and resets every open connection, like a crashed Pod.
    pub async fn kill(&self) {
        let task = self.task.lock().expect("task lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Whether it is serving (not killed).
    pub fn is_running(&self) -> bool {
        self.task.lock().expect("task lock").is_some()
    }

    /// Serves again on the same address after [`kill`](Self::kill).
    pub async fn restart(&self) -> Result<(), Error> {
        self.kill().await;
        let listener = TcpListener::bind(self.addr).await?;
        let task = tokio::spawn(serve(
            listener,
            self.name.clone(),
            self.labels.clone(),
            self.knobs.clone(),
            self.tls.clone(),
        ));
        *self.task.lock().expect("task lock") = Some(task);
        Ok(())
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().expect("task lock").take() {
            task.abort();
        }
    }
}

async fn serve(
    listener: TcpListener,
    name: String,
    labels: BTreeMap<String, String>,
    knobs: Arc<Knobs>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let reply = Arc::new((name, labels));
    // Connections live in this set: aborting the task resets them all at once.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                // Linger 0: dropping the socket sends RST, as a crashed process's would.
                let _ = reset_on_close(&tcp);
                let reply = reply.clone();
                let knobs = knobs.clone();
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    knobs.open.fetch_add(1, Ordering::Relaxed);
                    let _open = Open(knobs.clone());
                    let Some(acceptor) = acceptor else {
                        let svc = hyper::service::service_fn(move |req| respond(req, reply.clone(), knobs.clone(), None));
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                        return;
                    };
                    // A failed handshake (wrong CA, no client certificate, plain HTTP)
                    // just closes the connection, as a real TLS server does.
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    knobs.handshakes.fetch_add(1, Ordering::Relaxed);
                    let sni: Option<Arc<str>> = stream.get_ref().1.server_name().map(Into::into);
                    let svc = hyper::service::service_fn(move |req| respond(req, reply.clone(), knobs.clone(), sni.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Counts a connection as open until dropped (also when its task is aborted).
struct Open(Arc<Knobs>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[allow(deprecated)]
fn reset_on_close(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    tcp.set_linger(Some(Duration::ZERO))
}

async fn respond(
    req: Request<Incoming>,
    reply: Arc<(String, BTreeMap<String, String>)>,
    knobs: Arc<Knobs>,
    sni: Option<Arc<str>>,
) -> Result<Response<Either<Full<Bytes>, tonic::body::Body>>, Infallible> {
    knobs.requests.fetch_add(1, Ordering::Relaxed);
    let latency = *knobs.latency.lock().expect("latency lock");
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let ppm = knobs.error_ppm.load(Ordering::Relaxed);
    let fail = ppm > 0 && rand::rng().random_range(0..1_000_000) < ppm;
    let authority = req.uri().authority().map(|a| a.to_string()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    });
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let who = crate::grpc::WhoamiReply {
            pod: reply.0.clone(),
            authority: authority.unwrap_or_default(),
            labels: reply.1.clone().into_iter().collect(),
        };
        let res = crate::grpc::respond(req, who).await;
        return Ok(res.map(Either::Right));
    }
    let path = req.uri().path().to_string();
    let version = format!("{:?}", req.version());
    let received = match http_body_util::BodyExt::collect(req.into_body()).await {
        Ok(b) => String::from_utf8(b.to_bytes().to_vec()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let body = PodReply {
        pod: reply.0.clone(),
        labels: reply.1.clone(),
        authority,
        path,
        version,
        body: received,
        sni: sni.map(|s| s.to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&body).unwrap_or_default(),
    )));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        "x-pod",
        http::HeaderValue::from_str(&reply.0).unwrap_or(http::HeaderValue::from_static("?")),
    );
    if fail {
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    Ok(resp.map(Either::Left))
}
