//! What Rudder costs the API server: many simulated client processes, each with its own
//! `kube::Client` and its own discovery (what one `MeshLayer` runs), against the test API
//! server, which counts requests and bytes per resource and verb and runs on a thread of
//! its own so its CPU time can be read apart.
//!
//! ```text
//! cargo bench -p rudder --bench scale                   # 10, 100 and 1,000 clients
//! cargo bench -p rudder --bench scale -- --clients 10   # one size
//! ```
//!
//! For every client count and Pod-watch mode (whole Pods, metadata only) it reports:
//! watches open and requests made to sync one 100-Pod Service; bytes sent at steady state;
//! the bytes one Pod status change costs per client (a status change that leaves
//! readiness alone, then a readiness flip, which also rewrites the Service's EndpointSlice)
//! and how long until every client saw the flip; and, up to 100 clients, a rolling update
//! of all 100 Pods.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use rudder_k8s::{Discovery, PodWatch, Subscription};
use rudder_testkit::{ApiServer, TestCluster, Traffic};
use serde_json::json;

const PODS: usize = 100;
const SERVICE: &str = "svc-a.default.svc:8080";
const BOUND: Duration = Duration::from_secs(120);

/// The API server on a thread (and runtime) of its own; its CPU time is that thread's.
struct Server {
    cluster: Option<TestCluster>,
    tid: u32,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    async fn start() -> Self {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let tid = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
                .unwrap_or(0);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let api = ApiServer::builder().start().await.expect("API server");
                let _ = ready_tx.send((api, tid));
                let _ = stop_rx.await;
            });
        });
        let (api, tid) = ready_rx.await.expect("server thread");
        let cluster = TestCluster::builder()
            .service("svc-a")
            .pod_prefix("a")
            .label("app", "a")
            .replicas(0)
            .start_on(api)
            .await
            .expect("cluster");
        for i in 0..PODS {
            register(&cluster, &format!("a-{i}"), i).await;
        }
        cluster.api().settled().await;
        Self {
            cluster: Some(cluster),
            tid,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn cluster(&self) -> &TestCluster {
        self.cluster.as_ref().expect("running")
    }

    fn api(&self) -> &ApiServer {
        self.cluster().api()
    }

    /// CPU time of the server's thread so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{}/stat", self.tid))
            .unwrap_or_default();
        // Fields after the command name (which ends with ')'): utime is the 12th, stime
        // the 13th, in clock ticks (100 per second on Linux).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
            .sum();
        Duration::from_millis(ticks * 10)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.cluster.take());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn register(cluster: &TestCluster, name: &str, i: usize) {
    let ip = IpAddr::V4(Ipv4Addr::new(
        10,
        244,
        (i / 250) as u8 + 1,
        (i % 250) as u8 + 1,
    ));
    cluster
        .register_pod(name, [("app".to_string(), "a".to_string())].into(), ip)
        .await
        .expect("register Pod");
}

/// Per resource and verb, what happened between two snapshots.
fn delta(
    after: &BTreeMap<(String, String), Traffic>,
    before: &BTreeMap<(String, String), Traffic>,
) -> BTreeMap<(String, String), Traffic> {
    after
        .iter()
        .map(|(k, t)| (k.clone(), *t - before.get(k).copied().unwrap_or_default()))
        .filter(|(_, t)| t.requests > 0 || t.bytes > 0)
        .collect()
}

fn total(d: &BTreeMap<(String, String), Traffic>, resource: Option<&str>) -> Traffic {
    d.iter()
        .filter(|((r, _), _)| resource.is_none_or(|want| r == want))
        .fold(Traffic::default(), |mut acc, (_, t)| {
            acc.requests += t.requests;
            acc.bytes += t.bytes;
            acc
        })
}

fn kib(bytes: f64) -> String {
    if bytes >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
    } else if bytes >= 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{bytes:.0} B")
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sets a Pod's Ready condition, or (with `None`) bumps its restart count only.
async fn touch(api: &ApiServer, pod: &str, ready: Option<bool>) {
    let pods: Api<Pod> = Api::default_namespaced(api.client().await.expect("client"));
    let status = match ready {
        Some(r) => {
            let flag = if r { "True" } else { "False" };
            json!({"conditions": [
                {"type": "Ready", "status": flag, "lastProbeTime": null, "lastTransitionTime": jiff::Timestamp::now().to_string()},
                {"type": "ContainersReady", "status": flag, "lastProbeTime": null, "lastTransitionTime": jiff::Timestamp::now().to_string()}]})
        }
        None => {
            json!({"containerStatuses": [{"name": "app", "ready": true, "restartCount": 1, "image": "rudder/pod-server:1",
                "imageID": "", "started": true, "state": {"running": {"startedAt": jiff::Timestamp::now().to_string()}}, "lastState": {}}]})
        }
    };
    pods.patch_status(
        pod,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .expect("patch status");
}

/// Waits until every subscription satisfies `pred`; returns each one's wait.
async fn all_see(
    subs: &mut [Subscription],
    pred: impl Fn(&rudder_balance::EndpointSet) -> bool + Copy,
) -> Vec<Duration> {
    let start = Instant::now();
    let waits = subs.iter_mut().map(|sub| async move {
        loop {
            if pred(&sub.current()) {
                return start.elapsed();
            }
            sub.changed().await;
        }
    });
    let mut out = tokio::time::timeout(BOUND, futures::future::join_all(waits))
        .await
        .expect("every client sees the change");
    out.sort();
    out
}

struct Row {
    clients: usize,
    mode: &'static str,
    lines: Vec<(String, String)>,
}

async fn run(clients: usize, pods: PodWatch, mode: &'static str) -> Row {
    let server = Server::start().await;
    let api = server.api();
    let mut lines = Vec::new();

    // Sync: every client subscribes to the Service.
    let before = api.traffic();
    let cpu = server.cpu();
    let started = Instant::now();
    let mut discoveries = Vec::with_capacity(clients);
    let mut subs = Vec::with_capacity(clients);
    for _ in 0..clients {
        let d = Discovery::builder(api.client().await.expect("client"))
            .pods(pods)
            .build();
        subs.push(d.subscribe_str(SERVICE).expect("subscribe"));
        discoveries.push(d);
    }
    let waits = all_see(&mut subs, |s| s.len() == PODS).await;
    let synced = started.elapsed();
    // Synced is when the lists are in; the watches open right after.
    let want = clients * 3;
    let until = Instant::now() + Duration::from_secs(30);
    while api.open_watches() < want && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = delta(&api.traffic(), &before);
    let watches = api.open_watches();
    lines.push((
        "watches open (per client)".into(),
        format!("{watches} ({:.1})", watches as f64 / clients as f64),
    ));
    let by_verb = |verb: &str| {
        d.iter()
            .filter(|((_, v), _)| v == verb)
            .map(|(_, t)| t.requests)
            .sum::<u64>()
    };
    lines.push((
        "sync: list / watch requests per client".into(),
        format!(
            "{:.1} / {:.1}",
            by_verb("list") as f64 / clients as f64,
            by_verb("watch") as f64 / clients as f64
        ),
    ));
    let per_resource: Vec<String> = d
        .iter()
        .map(|((r, v), t)| format!("{r} {v} {:.1}", t.requests as f64 / clients as f64))
        .collect();
    lines.push((
        "sync: requests per client by resource and verb".into(),
        per_resource.join(", "),
    ));
    lines.push((
        "sync: bytes per client".into(),
        kib(total(&d, None).bytes as f64 / clients as f64),
    ));
    lines.push((
        "sync: all clients synced (p99 client)".into(),
        format!("{} ({})", ms(synced), ms(quantile(&waits, 0.99))),
    ));
    lines.push((
        "sync: API server CPU".into(),
        ms(server.cpu().saturating_sub(cpu)),
    ));

    // Steady state: nothing changes for 5 s.
    let before = api.traffic();
    let idle = Duration::from_secs(5);
    tokio::time::sleep(idle).await;
    let d = delta(&api.traffic(), &before);
    lines.push((
        "steady state: bytes/s (all clients)".into(),
        kib(total(&d, None).bytes as f64 / idle.as_secs_f64()),
    ));

    // A status change that leaves readiness alone (a restart count): the Pod watch only.
    let before = api.traffic();
    touch(api, "a-7", None).await;
    // Nothing for a client to wait on: give the events time to be sent, bounded.
    let quiet = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = api.traffic();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = api.traffic();
        if now == last || tokio::time::Instant::now() > quiet {
            break;
        }
        last = now;
    }
    let d = delta(&api.traffic(), &before);
    let pod_bytes = total(&d, Some("pods")).bytes as f64;
    lines.push((
        "status change (not readiness): Pod-watch bytes per client".into(),
        kib(pod_bytes / clients as f64),
    ));

    // A readiness flip: the Pod and the EndpointSlice change.
    let before = api.traffic();
    let cpu = server.cpu();
    touch(api, "a-3", Some(false)).await;
    let waits = all_see(&mut subs, |s| s.len() == PODS - 1).await;
    let d = delta(&api.traffic(), &before);
    lines.push((
        "readiness flip: bytes per client (Pods + EndpointSlices)".into(),
        format!(
            "{} ({} + {})",
            kib(total(&d, None).bytes as f64 / clients as f64),
            kib(total(&d, Some("pods")).bytes as f64 / clients as f64),
            kib(total(&d, Some("endpointslices")).bytes as f64 / clients as f64),
        ),
    ));
    lines.push((
        "readiness flip: seen by every client, p50 / p99 / max".into(),
        format!(
            "{} / {} / {}",
            ms(quantile(&waits, 0.5)),
            ms(quantile(&waits, 0.99)),
            ms(*waits.last().unwrap_or(&Duration::ZERO))
        ),
    ));
    lines.push((
        "readiness flip: API server CPU".into(),
        ms(server.cpu().saturating_sub(cpu)),
    ));
    touch(api, "a-3", Some(true)).await;
    all_see(&mut subs, |s| s.len() == PODS).await;

    // A rolling update of all 100 Pods: each replaced by a new one, one at a time.
    if clients <= 100 {
        let before = api.traffic();
        let cpu = server.cpu();
        let started = Instant::now();
        for i in 0..PODS {
            register(server.cluster(), &format!("b-{i}"), PODS + i).await;
            server
                .cluster()
                .delete_pod(&format!("a-{i}"), 0)
                .await
                .expect("delete");
        }
        all_see(&mut subs, |s| {
            s.len() == PODS
                && s.endpoints()
                    .iter()
                    .all(|e| e.meta().pod.as_deref().is_some_and(|p| p.starts_with("b-")))
        })
        .await;
        let took = started.elapsed();
        let d = delta(&api.traffic(), &before);
        let bytes = total(&d, None).bytes as f64;
        lines.push((
            "rolling update of 100 Pods: bytes per client".into(),
            kib(bytes / clients as f64),
        ));
        lines.push((
            "rolling update: bytes/s (all clients), duration".into(),
            format!("{}/s, {}", kib(bytes / took.as_secs_f64()), ms(took)),
        ));
        lines.push((
            "rolling update: API server CPU".into(),
            ms(server.cpu().saturating_sub(cpu)),
        ));
    }
    drop(subs);
    drop(discoveries);
    Row {
        clients,
        mode,
        lines,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--clients")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 1000]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    for &clients in &sizes {
        for (mode, watch) in [
            ("whole Pods", PodWatch::Full),
            ("Pod metadata", PodWatch::Metadata),
        ] {
            eprintln!("scale: {clients} clients, {mode}");
            rows.push(rt.block_on(run(clients, watch, mode)));
        }
    }
    println!(
        "# Scale: {PODS}-Pod Service, one Service per client\n\nMeasured {} on {} cores.\n",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let keys: Vec<String> = rows
        .iter()
        .flat_map(|r| r.lines.iter().map(|(k, _)| k.clone()))
        .fold(Vec::new(), |mut acc, k| {
            if !acc.contains(&k) {
                acc.push(k);
            }
            acc
        });
    print!("| |");
    for r in &rows {
        print!(" {} clients, {} |", r.clients, r.mode);
    }
    println!();
    print!("|---|");
    for _ in &rows {
        print!("---|");
    }
    println!();
    for k in keys {
        print!("| {k} |");
        for r in &rows {
            let v = r
                .lines
                .iter()
                .find(|(key, _)| *key == k)
                .map_or("–", |(_, v)| v.as_str());
            print!(" {v} |");
        }
        println!();
    }
}
