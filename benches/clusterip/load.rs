//! Load generation: closed loop (fixed concurrency, as fast as possible) and open loop
//! (fixed rate, latency measured from each request's intended send time, so a stall is
//! not hidden by the generator waiting: no coordinated omission). Every loop is bounded
//! in requests and in time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rudder::{Mesh, PodClient};
use rudder_testkit::PodReply;
use tower::ServiceExt;

/// The longest a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The hyper-util client every arm uses; its body type is the one the Mesh hands on, so
/// the same client serves direct and routed arms.
pub(crate) type Plain = Client<HttpConnector, rudder::ReplayBody<Empty<Bytes>>>;

/// One way of sending requests.
#[derive(Clone)]
pub(crate) enum Sender {
    /// The client alone (to the ClusterIP, or straight to one Pod).
    Plain(Plain),
    /// The same client wrapped in Rudder.
    Mesh(Mesh<Plain>),
    /// Rudder over `PodClient` (HTTP/2 with one connection per Pod).
    MeshPod(Mesh<PodClient<rudder::ReplayBody<Empty<Bytes>>>>),
    /// The fair baseline for the layer's cost: the same client sending each request to the
    /// next Pod of a fixed list, with the Service's authority in `Host` as Rudder sends it;
    /// no discovery, no subsets, no load feedback.
    RoundRobin(Arc<RoundRobin>),
}

/// A naive per-request round robin over fixed Pod addresses.
pub(crate) struct RoundRobin {
    client: Plain,
    pods: Vec<http::uri::Authority>,
    host: http::HeaderValue,
    next: std::sync::atomic::AtomicUsize,
}

impl RoundRobin {
    pub(crate) fn new(client: Plain, pods: &[String], host: &str) -> Arc<Self> {
        Arc::new(Self {
            client,
            pods: pods
                .iter()
                .map(|p| p.parse().expect("pod authority"))
                .collect(),
            host: host.parse().expect("host"),
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn request(&self, uri: &http::Uri) -> http::Request<Empty<Bytes>> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.pods.len();
        let mut parts = uri.clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.pods[i].clone());
        let mut req = http::Request::new(Empty::new());
        *req.uri_mut() = http::Uri::from_parts(parts).expect("pod uri");
        req.headers_mut()
            .insert(http::header::HOST, self.host.clone());
        req
    }
}

impl Sender {
    /// Sends a GET to `uri`; the Pod that answered, or the error.
    pub(crate) async fn get(&self, uri: &http::Uri) -> Result<String, String> {
        let req = http::Request::get(uri.clone())
            .body(Empty::new())
            .expect("request");
        let body = async {
            match self {
                Sender::Plain(c) => body_of(c.clone(), req.map(rudder::ReplayBody::new)).await,
                Sender::Mesh(m) => body_of(m.clone(), req).await,
                Sender::MeshPod(m) => body_of(m.clone(), req).await,
                Sender::RoundRobin(rr) => {
                    let req = rr.request(uri).map(rudder::ReplayBody::new);
                    body_of(rr.client.clone(), req).await
                }
            }
        };
        // A request on a connection whose peer vanished with its namespace may never hear
        // back: every request is bounded, so every loop is.
        let body = tokio::time::timeout(REQUEST_TIMEOUT, body)
            .await
            .map_err(|_| format!("no response within {REQUEST_TIMEOUT:?}"))??;
        serde_json::from_slice::<PodReply>(&body)
            .map(|r| r.pod)
            .map_err(|e| e.to_string())
    }
}

/// The body of a successful response from any of the arms' services.
async fn body_of<S, RQ, B>(svc: S, req: http::Request<RQ>) -> Result<Bytes, String>
where
    S: tower::Service<http::Request<RQ>, Response = http::Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let res = svc.oneshot(req).await.map_err(|e| chain(&*e.into()))?;
    ok(res.status())?;
    Ok(res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes())
}

/// An error with its sources, so a failure says what failed underneath.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn ok(status: http::StatusCode) -> Result<(), String> {
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// What one run saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct Run {
    /// Sorted.
    pub(crate) latencies: Vec<Duration>,
    pub(crate) per_pod: BTreeMap<String, u64>,
    /// (time since start, pod) of every success, for "when did traffic move" questions.
    pub(crate) timeline: Vec<(Duration, String)>,
    pub(crate) failures: u64,
    /// When each failure happened (since start).
    pub(crate) failure_times: Vec<Duration>,
    pub(crate) first_failure: Option<String>,
    pub(crate) elapsed: Duration,
    /// CPU time of this process (client, Rudder, API server, proxy) during the run.
    pub(crate) cpu: Duration,
    /// The whole machine's during the run (Pod servers and kernel included): busy CPU
    /// time and context switches.
    pub(crate) machine: MachineUse,
}

/// The whole machine's CPU use, from `/proc/stat`, and this network namespace's
/// connection-tracking trouble, from `/proc/net/stat/nf_conntrack`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MachineUse {
    pub(crate) busy: Duration,
    pub(crate) switches: u64,
    /// New connections conntrack could not insert (a tuple clash it could not resolve).
    pub(crate) insert_failed: u64,
    /// Packets conntrack dropped.
    pub(crate) drop: u64,
    /// Tuple clashes conntrack resolved.
    pub(crate) clash_resolved: u64,
    /// Segments the Pods' TCP stacks rejected by PAWS (a timestamp older than the one a
    /// TIME_WAIT or open socket of the same address pair last saw), summed over Pods.
    pub(crate) pods_paws_rejected: u64,
    /// Connection requests the Pods' listeners dropped (a full queue), summed over Pods.
    pub(crate) pods_listen_drops: u64,
    /// Packets conntrack found invalid (in this namespace).
    pub(crate) invalid: u64,
    /// TCP connections opened from this namespace (the client's: `ActiveOpens`).
    pub(crate) opened: u64,
}

/// The processes of the running Pods, whose network namespaces' TCP counters
/// [`MachineUse`] sums.
pub(crate) static POD_PIDS: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The addresses of the running Pods (see [`stale_nat_entries`]).
pub(crate) static POD_ADDRS: std::sync::Mutex<std::collections::BTreeSet<std::net::Ipv4Addr>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Connection-tracking entries in this namespace that bind a ClusterIP (10.96.0.0/12) to a
/// Pod address (10.244.0.0/16) that no running Pod has: what a deleted Pod leaves behind.
///
/// kube-proxy removes such entries for UDP only. A TCP entry in any state but TIME_WAIT
/// keeps its NAT binding when a new SYN with the same tuple arrives (conntrack takes it for
/// a retransmission, or ignores it), so a client that reuses that source port for the same
/// ClusterIP is sent to the deleted Pod's address, gets no answer, and times out; the
/// failed attempt leaves the entry in SYN_SENT for another two minutes. Read from
/// `/proc/net/nf_conntrack`.
pub(crate) fn stale_nat_entries() -> u64 {
    let live = POD_ADDRS.lock().map(|a| a.clone()).unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/nf_conntrack").unwrap_or_default();
    let addr = |field: Option<&str>, key: &str| {
        field
            .and_then(|f| f.strip_prefix(key))
            .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
    };
    table
        .lines()
        .filter(|line| line.contains(" tcp ") && !line.contains(" TIME_WAIT "))
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let srcs: Vec<&str> = fields
                .iter()
                .copied()
                .filter(|f| f.starts_with("src="))
                .collect();
            let original_dst = addr(
                fields.iter().copied().find(|f| f.starts_with("dst=")),
                "dst=",
            );
            let reply_src = addr(srcs.get(1).copied(), "src=");
            match (original_dst, reply_src) {
                (Some(vip), Some(pod)) => {
                    let [a, b, ..] = vip.octets();
                    let [c, d, ..] = pod.octets();
                    a == 10 && (96..112).contains(&b) && (c, d) == (10, 244) && !live.contains(&pod)
                }
                _ => false,
            }
        })
        .count() as u64
}

/// A `TcpExt` counter of `/proc/<pid>/net/netstat` (two lines: names, then values).
fn tcp_ext(netstat: &str, name: &str) -> u64 {
    counter(netstat, "TcpExt:", name)
}

/// The counter `name` of the `prefix` lines (a line of names, then one of values) of a
/// `/proc/net/snmp`-style file.
fn counter(text: &str, prefix: &str, name: &str) -> u64 {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .position(|n| n == name)
        .and_then(|i| values.split_whitespace().nth(i))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sums a column of `/proc/net/stat/nf_conntrack` (one hexadecimal row per CPU).
fn conntrack_counter(stat: &str, column: &str) -> u64 {
    let mut lines = stat.lines();
    let Some(index) = lines
        .next()
        .and_then(|header| header.split_whitespace().position(|c| c == column))
    else {
        return 0;
    };
    lines
        .filter_map(|row| row.split_whitespace().nth(index))
        .filter_map(|v| u64::from_str_radix(v, 16).ok())
        .sum()
}

impl MachineUse {
    /// Since boot: busy time (user, nice, system, irq, softirq) and context switches.
    pub(crate) fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let mut use_ = Self::default();
        for line in stat.lines() {
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("cpu") => {
                    let ticks: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
                    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|i| ticks.get(*i)).sum();
                    use_.busy = Duration::from_millis(busy * 1000 / 100);
                }
                Some("ctxt") => {
                    use_.switches = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
                }
                _ => {}
            }
        }
        let ct = std::fs::read_to_string("/proc/net/stat/nf_conntrack").unwrap_or_default();
        use_.insert_failed = conntrack_counter(&ct, "insert_failed");
        use_.drop = conntrack_counter(&ct, "drop");
        use_.clash_resolved = conntrack_counter(&ct, "clashres");
        let pids: Vec<u32> = POD_PIDS
            .lock()
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default();
        use_.invalid = conntrack_counter(&ct, "invalid");
        let snmp = std::fs::read_to_string("/proc/self/net/snmp").unwrap_or_default();
        use_.opened = counter(&snmp, "Tcp:", "ActiveOpens");
        for pid in pids {
            let netstat =
                std::fs::read_to_string(format!("/proc/{pid}/net/netstat")).unwrap_or_default();
            use_.pods_paws_rejected += tcp_ext(&netstat, "PAWSEstab");
            use_.pods_listen_drops += tcp_ext(&netstat, "ListenDrops");
        }
        use_
    }

    fn since(self, before: Self) -> Self {
        Self {
            busy: self.busy.saturating_sub(before.busy),
            switches: self.switches.saturating_sub(before.switches),
            insert_failed: self.insert_failed.saturating_sub(before.insert_failed),
            drop: self.drop.saturating_sub(before.drop),
            clash_resolved: self.clash_resolved.saturating_sub(before.clash_resolved),
            pods_paws_rejected: self
                .pods_paws_rejected
                .saturating_sub(before.pods_paws_rejected),
            pods_listen_drops: self
                .pods_listen_drops
                .saturating_sub(before.pods_listen_drops),
            invalid: self.invalid.saturating_sub(before.invalid),
            opened: self.opened.saturating_sub(before.opened),
        }
    }
}

impl Run {
    pub(crate) fn ok(&self) -> u64 {
        self.latencies.len() as u64
    }

    pub(crate) fn throughput(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies[((self.latencies.len() - 1) as f64 * p).round() as usize]
    }

    /// CPU per successful request.
    pub(crate) fn cpu_per_request(&self) -> Duration {
        self.cpu / (self.ok().max(1) as u32)
    }

    /// The whole machine's busy CPU per successful request.
    pub(crate) fn machine_cpu_per_request(&self) -> Duration {
        self.machine.busy / (self.ok().max(1) as u32)
    }

    /// The whole machine's context switches per successful request.
    pub(crate) fn switches_per_request(&self) -> f64 {
        self.machine.switches as f64 / self.ok().max(1) as f64
    }

    /// Share of the busiest Pod over the mean, and Jain's fairness index, over `pods`.
    pub(crate) fn fairness(&self, pods: &[String]) -> (f64, f64) {
        let counts: Vec<f64> = pods
            .iter()
            .map(|p| self.per_pod.get(p).copied().unwrap_or(0) as f64)
            .collect();
        let n = counts.len().max(1) as f64;
        let sum: f64 = counts.iter().sum();
        let mean = sum / n;
        let max = counts.iter().copied().fold(0.0, f64::max);
        let squares: f64 = counts.iter().map(|c| c * c).sum();
        let jain = if squares == 0.0 {
            0.0
        } else {
            sum * sum / (n * squares)
        };
        (if mean == 0.0 { 0.0 } else { max / mean }, jain)
    }

    fn record(&mut self, started: Instant, sent: Instant, result: Result<String, String>) {
        match result {
            Ok(pod) => {
                let now = Instant::now();
                self.latencies.push(now - sent);
                self.timeline.push((now - started, pod.clone()));
                *self.per_pod.entry(pod).or_default() += 1;
            }
            Err(e) => {
                self.failures += 1;
                self.failure_times.push(started.elapsed());
                self.first_failure.get_or_insert(e);
            }
        }
    }

    fn finish(&mut self, started: Instant, (cpu_before, machine_before): (Duration, MachineUse)) {
        self.elapsed = started.elapsed();
        self.cpu = cpu_time().saturating_sub(cpu_before);
        self.machine = MachineUse::now().since(machine_before);
        self.latencies.sort_unstable();
        self.timeline.sort();
    }
}

/// This process's user + system CPU time.
pub(crate) fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the ')'.
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / 100)
}

/// `concurrency` workers sending back to back for `duration` (at most `max` requests).
pub(crate) async fn closed(
    sender: &Sender,
    uri: &http::Uri,
    concurrency: usize,
    duration: Duration,
    max: u64,
) -> Run {
    closed_until(sender, uri, concurrency, duration, max, None).await
}

/// [`closed`], also stopping as soon as `stop` is set.
pub(crate) async fn closed_until(
    sender: &Sender,
    uri: &http::Uri,
    concurrency: usize,
    duration: Duration,
    max: u64,
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> Run {
    let started = Instant::now();
    let cpu_before = (cpu_time(), MachineUse::now());
    let deadline = started + duration;
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let run = Arc::new(Mutex::new(Run::default()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (sender, uri, sent, run) = (sender.clone(), uri.clone(), sent.clone(), run.clone());
        let stop = stop.clone();
        workers.spawn(async move {
            let stopped = || {
                stop.as_ref()
                    .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
            };
            while Instant::now() < deadline
                && !stopped()
                && sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < max
            {
                let t = Instant::now();
                let result = sender.get(&uri).await;
                run.lock().expect("run").record(started, t, result);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let mut run = std::mem::take(&mut *run.lock().expect("run"));
    run.finish(started, cpu_before);
    run
}

/// `rate` requests per second for `duration`, each timed from its intended send time; at
/// most `max_in_flight` outstanding (beyond that a request counts as failed: overload).
pub(crate) async fn open(
    sender: &Sender,
    uri: &http::Uri,
    rate: u32,
    duration: Duration,
    max_in_flight: usize,
) -> Run {
    let started = Instant::now();
    let cpu_before = (cpu_time(), MachineUse::now());
    let total = (f64::from(rate) * duration.as_secs_f64()) as u64;
    let run = Arc::new(Mutex::new(Run::default()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let intended = started + Duration::from_secs_f64(i as f64 / f64::from(rate));
        tokio::time::sleep_until(intended.into()).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let mut r = run.lock().expect("run");
            r.failures += 1;
            r.first_failure
                .get_or_insert_with(|| "overload: too many in flight".into());
            continue;
        };
        let (sender, uri, run) = (sender.clone(), uri.clone(), run.clone());
        tasks.spawn(async move {
            let result = sender.get(&uri).await;
            run.lock().expect("run").record(started, intended, result);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut run = std::mem::take(&mut *run.lock().expect("run"));
    run.finish(started, cpu_before);
    run
}
