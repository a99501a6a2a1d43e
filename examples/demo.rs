//! Rudder's walk-through, with no cluster: an embedded Kubernetes API server, real Pods on
//! loopback, and a Mesh-wrapped hyper client routing per request while the cluster changes.
//!
//! ```text
//! cargo run --example demo            # live table; stays up for kubectl until Ctrl-C
//! cargo run --example demo -- --once  # the walk-through, then a summary table; exit 0
//! ```
//!
//! `biz1` (selector `app=biz1,zone=prod`) starts with four Pods at `version=4.1`. The steps:
//! scale up, scale down (Pods deleted and killed mid-load), a Pod answering 500s (ejected),
//! a slow Pod (+20 ms, avoided), blue/green to `version=4.2` and back, a 90/10 canary and its
//! promotion — the last three without touching the Service.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rudder::{Mesh, MeshLayer, Selector, Split};
use tower::{Layer, ServiceExt};

const URI: &str = "http://biz1:8080/";
const CONCURRENCY: usize = 8;

/// Per-endpoint results of the current step, shared with the live screen.
#[derive(Default)]
struct Stats {
    per_endpoint: BTreeMap<String, Vec<Duration>>,
    failures: usize,
    first_failure: Option<String>,
}

struct Step {
    name: &'static str,
    requests: usize,
    failures: usize,
    p50: Duration,
    p99: Duration,
    /// Share per Pod (name, version, percent).
    shares: Vec<(String, String, f64)>,
}

fn split(v41: u32, v42: u32) -> Split {
    Split::new([
        ("version=4.1".parse::<Selector>().expect("selector"), v41),
        ("version=4.2".parse().expect("selector"), v42),
    ])
    .expect("split")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `n` requests over `CONCURRENCY` workers, recording into `stats`.
async fn load(mesh: &Mesh<common::H1>, n: usize, stats: &Arc<Mutex<Stats>>) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (mesh, next, stats) = (mesh.clone(), next.clone(), stats.clone());
        workers.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let req = http::Request::get(URI)
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let started = Instant::now();
                let result = async {
                    let res = mesh.clone().oneshot(req).await?;
                    let endpoint = res.body().target().map(|t| t.endpoint().to_string());
                    let status = res.status();
                    res.into_body().collect().await?;
                    match endpoint {
                        Some(e) if status.is_success() => Ok(e),
                        e => Err(format!("status {status} from {}", e.unwrap_or_default()).into()),
                    }
                }
                .await;
                let mut s = stats.lock().expect("stats");
                match result {
                    Ok(e) => s.per_endpoint.entry(e).or_default().push(started.elapsed()),
                    Err(e) => {
                        s.failures += 1;
                        let e: rudder::BoxError = e;
                        s.first_failure.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// The live table: per Pod requests/s, share, p50/p99 and state, from this step's stats and
/// the Mesh's view.
fn render(step: &str, layer: &MeshLayer, stats: &Stats, elapsed: Duration, kubeconfig: &str) {
    let view = layer.view("biz1:8080");
    let total: usize = stats.per_endpoint.values().map(Vec::len).sum();
    let mut out = String::from("\x1b[2J\x1b[H");
    out += &format!(
        "Rudder demo · step: {step}\nkubectl --kubeconfig {kubeconfig} get pods -L version\n\n"
    );
    out += &format!(
        "{:<12} {:<8} {:<18} {:>8} {:>7} {:>9} {:>9} {:>9}  state\n",
        "pod", "version", "endpoint", "req/s", "share", "p50", "p99", "ewma"
    );
    for e in view.map(|v| v.endpoints).unwrap_or_default() {
        let addr = e.addr.to_string();
        let mut lat = stats.per_endpoint.get(&addr).cloned().unwrap_or_default();
        lat.sort_unstable();
        let rate = lat.len() as f64 / elapsed.as_secs_f64().max(0.001);
        let share = 100.0 * lat.len() as f64 / total.max(1) as f64;
        let state = if e.ejected {
            "ejected"
        } else if e.readiness == rudder::Readiness::Ready {
            "ready"
        } else {
            "terminating"
        };
        out += &format!(
            "{:<12} {:<8} {:<18} {:>8.0} {:>6.1}% {:>9.1?} {:>9.1?} {:>9.1?}  {state}\n",
            e.pod.unwrap_or_default(),
            e.labels.get("version").cloned().unwrap_or_default(),
            addr,
            rate,
            share,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            e.ewma,
        );
    }
    out += &format!("\nrequests {total}   failed {}\n", stats.failures);
    print!("{out}");
}

fn print_summary(steps: &[Step]) {
    println!(
        "\n{:<36} {:>8} {:>7} {:>9} {:>9}  shares",
        "step", "requests", "failed", "p50", "p99"
    );
    for s in steps {
        let mut by_version: BTreeMap<&str, f64> = BTreeMap::new();
        for (_, v, share) in &s.shares {
            *by_version.entry(v).or_default() += share;
        }
        let versions: Vec<String> = by_version
            .iter()
            .map(|(v, p)| format!("{v}: {p:.1}%"))
            .collect();
        let pods: Vec<String> = s
            .shares
            .iter()
            .map(|(p, _, share)| format!("{p} {share:.0}%"))
            .collect();
        println!(
            "{:<36} {:>8} {:>7} {:>9.1?} {:>9.1?}  {} | {}",
            s.name,
            s.requests,
            s.failures,
            s.p50,
            s.p99,
            versions.join(", "),
            pods.join(" ")
        );
    }
}

/// Adds the Mesh's current endpoints to `known` (address → Pod name and version).
fn remember(layer: &MeshLayer, known: &mut BTreeMap<String, (String, String)>) {
    for e in layer
        .view("biz1:8080")
        .map(|v| v.endpoints)
        .unwrap_or_default()
    {
        let version = e.labels.get("version").cloned().unwrap_or_default();
        known.insert(e.addr.to_string(), (e.pod.unwrap_or_default(), version));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = common::Args::parse(
        "demo",
        "Rudder's walk-through on an embedded cluster: scaling, failures, a slow Pod, blue/green and canary",
        common::Flags {
            real_cluster: false,
            once: true,
        },
    );
    let live = !args.once;
    let per_step = args.requests.unwrap_or(3_000);

    let mut cluster = common::biz1(&[
        ("biz1-1", "4.1"),
        ("biz1-2", "4.1"),
        ("biz1-3", "4.1"),
        ("biz1-4", "4.1"),
    ])
    .await?;
    let kubeconfig = cluster.api().kubeconfig_path().display().to_string();
    let labels =
        |version: &str| common::labels(&[("app", "biz1"), ("zone", "prod"), ("version", version)]);
    println!(
        "embedded API server {} · kubeconfig {kubeconfig}",
        cluster.api().url()
    );

    let layer = MeshLayer::builder(cluster.api().client().await?).build()?;
    let mesh = layer.layer(common::h1());
    let mut steps: Vec<Step> = Vec::new();
    let mut known: BTreeMap<String, (String, String)> = BTreeMap::new();

    for step in 0..9 {
        let name = match step {
            0 => "steady: 4 Pods at 4.1",
            1 => {
                for i in 5..=6 {
                    cluster.add_pod(&format!("biz1-{i}"), labels("4.1")).await?;
                }
                cluster.api().settled().await;
                "scale up to 6 Pods"
            }
            2 => "scale down to 4 Pods, mid-load",
            3 => {
                cluster.pod("biz1-1").expect("pod").set_error_rate(1.0);
                "biz1-1 answers 500s (ejected)"
            }
            4 => {
                cluster.pod("biz1-1").expect("pod").set_error_rate(0.0);
                cluster
                    .pod("biz1-2")
                    .expect("pod")
                    .set_latency(Duration::from_millis(20));
                "biz1-2 is slow (+20 ms)"
            }
            5 => {
                cluster
                    .pod("biz1-2")
                    .expect("pod")
                    .set_latency(Duration::ZERO);
                for i in 7..=8 {
                    cluster.add_pod(&format!("biz1-{i}"), labels("4.2")).await?;
                }
                cluster.api().settled().await;
                layer.set_split(Some(split(0, 100)));
                "blue/green: all traffic to 4.2"
            }
            6 => {
                layer.set_split(Some(split(100, 0)));
                "roll back to 4.1"
            }
            7 => {
                layer.set_split(Some(split(90, 10)));
                "canary: 90/10 between 4.1 and 4.2"
            }
            _ => {
                layer.set_split(Some(split(0, 100)));
                "promote 4.2"
            }
        };
        // Pods that leave during the step keep the names they had.
        remember(&layer, &mut known);
        let stats = Arc::new(Mutex::new(Stats::default()));
        let started = Instant::now();
        let run = load(&mesh, per_step, &stats);
        tokio::pin!(run);
        if step == 2 {
            // Pods leave while requests are in flight: deleted from the API, then killed.
            let churn = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                for name in ["biz1-5", "biz1-6"] {
                    cluster.delete_pod(name, 0).await?;
                }
                cluster.api().settled().await;
                for name in ["biz1-5", "biz1-6"] {
                    cluster.pod(name).expect("pod").kill().await;
                }
                anyhow::Ok(())
            };
            let (_, churned) = tokio::join!(&mut run, churn);
            churned?;
        } else if live {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = &mut run => break,
                    _ = tick.tick() => render(name, &layer, &stats.lock().expect("stats"), started.elapsed(), &kubeconfig),
                }
            }
        } else {
            run.await;
        }
        let stats = std::mem::take(&mut *stats.lock().expect("stats"));
        if live {
            render(name, &layer, &stats, started.elapsed(), &kubeconfig);
        }
        remember(&layer, &mut known);
        let mut all: Vec<Duration> = stats.per_endpoint.values().flatten().copied().collect();
        all.sort_unstable();
        let ok = all.len();
        let shares = stats
            .per_endpoint
            .iter()
            .map(|(addr, l)| {
                let (pod, version) = known
                    .get(addr)
                    .cloned()
                    .unwrap_or_else(|| (addr.clone(), "gone".into()));
                (pod, version, 100.0 * l.len() as f64 / ok.max(1) as f64)
            })
            .collect();
        if let Some(e) = &stats.first_failure {
            eprintln!("[{name}] first failure: {e}");
        }
        steps.push(Step {
            name,
            requests: ok + stats.failures,
            failures: stats.failures,
            p50: percentile(&all, 0.5),
            p99: percentile(&all, 0.99),
            shares,
        });
    }

    print_summary(&steps);

    // Failures are expected only while biz1-1 answers 500s, before ejection takes it out.
    let unexpected: usize = steps
        .iter()
        .filter(|s| !s.name.contains("500s"))
        .map(|s| s.failures)
        .sum();
    anyhow::ensure!(
        unexpected == 0,
        "{unexpected} requests failed outside the failing-Pod step"
    );

    if live {
        println!(
            "\nThe demo cluster stays up: try\n  kubectl --kubeconfig {kubeconfig} label pod biz1-3 version=4.2 --overwrite\n  kubectl --kubeconfig {kubeconfig} delete pod biz1-4\nwhile 50 requests/s keep flowing (Ctrl-C to stop; ends by itself after 30 minutes)."
        );
        let stats = Arc::new(Mutex::new(Stats::default()));
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let deadline = started + Duration::from_secs(30 * 60);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {
                    if Instant::now() > deadline { break; }
                    load(&mesh, 25, &stats).await;
                    render("live (kubectl away)", &layer, &stats.lock().expect("stats"), started.elapsed(), &kubeconfig);
                }
            }
        }
        print_summary(&steps);
    }
    Ok(())
}
