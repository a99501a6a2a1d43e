//! The scenarios, run inside the client namespace: set-up, the arms, and the cells.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Service;
use rudder::{MeshLayer, PodClient, Protocol, Selector, Split};
use rudder_testkit::{ApiServer, PodServer, TestCluster};
use tower::Layer;

use crate::Options;
use crate::load::{self, Plain, RoundRobin, Run, Sender};
use crate::pods::Pods;
use crate::proxy::{self, Backend, ProxyStats};

/// One repetition of the rolling update: failed per 10k, requests, req/s, p99 (µs), share
/// on the new Pods at the end (%), req/s of the same load just before the rollout, and the
/// first failure's error, if any.
type RollingCell = (f64, u64, f64, f64, f64, f64, Option<String>);

/// How long a retired Pod keeps serving after its deletion (a preStop hook's drain).
const ROLLING_DRAIN: Duration = Duration::from_millis(500);

/// Where the nftables proxy serves `bench-svc` (the iptables proxy has its ClusterIP).
const NFT_VIP: &str = "10.96.255.250";
use crate::report::{Chart, Report, Table, ms};

/// One repetition of the scale-up scenario: busiest/mean, Jain's index, new Pods reached,
/// time until every new Pod was reached.
type ScaleCell = (f64, f64, usize, Option<Duration>);

/// Sizes of one run.
struct Plan {
    reps: usize,
    pods: usize,
    steady: Duration,
    concurrency: usize,
    rate: u32,
    scale: Duration,
    churn: Duration,
    dummies: Vec<u32>,
    max: u64,
}

impl Plan {
    fn new(smoke: bool) -> Self {
        if smoke {
            Plan {
                reps: 1,
                pods: 3,
                steady: Duration::from_millis(300),
                concurrency: 4,
                rate: 200,
                scale: Duration::from_millis(1500),
                churn: Duration::from_millis(1500),
                dummies: vec![0, 50],
                max: 5_000,
            }
        } else {
            Plan {
                reps: 3,
                pods: 10,
                steady: Duration::from_secs(3),
                concurrency: 32,
                rate: 2_000,
                scale: Duration::from_secs(6),
                churn: Duration::from_secs(5),
                dummies: vec![0, 1_000, 10_000],
                max: 2_000_000,
            }
        }
    }
}

/// The connector every arm uses: no DNS involved (IP literals, or Rudder's Pod addresses),
/// a bounded connect so a vanished Pod costs at most this long.
fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(CONNECT_TIMEOUT));
    c.set_nodelay(true);
    c
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

fn h1() -> Plain {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(connector())
}

fn h2() -> Plain {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector())
}

fn no_keep_alive() -> Plain {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector())
}

fn pod_client_h2() -> PodClient<rudder::ReplayBody<http_body_util::Empty<bytes::Bytes>>> {
    PodClient::builder()
        .protocol(Protocol::Http2)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
}

fn uri(s: &str) -> http::Uri {
    s.parse().expect("uri")
}

/// Runs every arm `reps` times, interleaved (a b c a b c ...), so drift hits all alike.
async fn cell<'a, F, Fut>(
    reps: usize,
    arms: &'a [(&'a str, Sender, http::Uri)],
    mut f: F,
) -> BTreeMap<&'a str, Vec<Run>>
where
    F: FnMut(&'a Sender, &'a http::Uri) -> Fut,
    Fut: std::future::Future<Output = Run>,
{
    let mut runs: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for _ in 0..reps {
        for (name, sender, uri) in arms {
            let run = f(sender, uri).await;
            runs.entry(*name).or_default().push(run);
        }
    }
    runs
}

/// Median and spread (min–max) of `f` over runs.
fn stat(runs: &[Run], f: impl Fn(&Run) -> f64) -> (f64, f64, f64) {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn spread(s: (f64, f64, f64), fmt: impl Fn(f64) -> String) -> String {
    if (s.2 - s.1).abs() < f64::EPSILON {
        fmt(s.0)
    } else {
        format!("{} ({}–{})", fmt(s.0), fmt(s.1), fmt(s.2))
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The standard latency/throughput row of an arm.
fn row(name: &str, runs: &[Run]) -> Vec<String> {
    let thr = stat(runs, Run::throughput);
    vec![
        name.to_string(),
        spread(thr, |v| format!("{v:.0}")),
        spread(stat(runs, |r| us(r.percentile(0.5))), ms),
        spread(stat(runs, |r| us(r.percentile(0.99))), ms),
        spread(stat(runs, |r| us(r.percentile(0.999))), ms),
        format!("{:.0}", stat(runs, |r| us(r.cpu_per_request())).0),
        format!("{:.0}", stat(runs, |r| us(r.machine_cpu_per_request())).0),
        format!("{:.1}", stat(runs, Run::switches_per_request).0),
        format!("{}", runs.iter().map(|r| r.failures).sum::<u64>()),
    ]
}

const LATENCY_HEADERS: [&str; 9] = [
    "arm",
    "req/s",
    "p50",
    "p99",
    "p99.9",
    "CPU µs/req",
    "machine CPU µs/req",
    "switches/req",
    "failed",
];

pub(crate) async fn run(prefix: &str, options: Options) -> anyhow::Result<()> {
    let plan = Plan::new(options.smoke);
    let mut report = Report::new(options.smoke);
    proxy::install()?;
    let cluster = TestCluster::builder()
        .service("bench-svc")
        .label("app", "bench")
        .replicas(0)
        .port(80)
        .target_port(8080)
        .start_on(ApiServer::builder().start().await?)
        .await?;
    let kube = cluster.api().client().await?;
    let svc: Service = kube::Api::default_namespaced(kube.clone())
        .get("bench-svc")
        .await?;
    let vip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service has no ClusterIP")?;
    let stats = Arc::new(ProxyStats::default());
    let mut proxy_task = spawn_proxy(&kube, 0, Backend::Iptables, &stats);
    let nft_stats = Arc::new(ProxyStats::default());
    let nft = || Backend::Nftables {
        vip: NFT_VIP.into(),
    };
    let mut nft_task = spawn_proxy(&kube, 0, nft(), &nft_stats);
    let mut pods = Pods::new(prefix);
    for _ in 0..plan.pods {
        pods.add(&cluster, &[("app", "bench"), ("version", "4.1")])
            .await?;
    }
    cluster.api().settled().await;

    let vip_uri = uri(&format!("http://{vip}:80/"));
    let svc_uri = uri("http://bench-svc:80/");
    let nft_uri = uri(&format!("http://{NFT_VIP}:80/"));
    let direct_uri = uri(&format!("http://{}:8080/", pods.running[0].ip));
    let pod_addrs: Vec<String> = pods
        .running
        .iter()
        .map(|p| format!("{}:8080", p.ip))
        .collect();
    wait_for(&Sender::Plain(h1()), &vip_uri, "the ClusterIP rules").await?;
    wait_for(&Sender::Plain(h1()), &nft_uri, "the nftables rules").await?;

    let layer = MeshLayer::builder(kube.clone()).build()?;
    // The first two are the arms every scenario compares; the others join where they say
    // something (the static round robin cannot follow Pods that come and go).
    let h1_arms = [
        ("ClusterIP", Sender::Plain(h1()), vip_uri.clone()),
        ("Rudder", Sender::Mesh(layer.layer(h1())), svc_uri.clone()),
        ("direct to one Pod", Sender::Plain(h1()), direct_uri.clone()),
        (
            "naive round robin",
            Sender::RoundRobin(RoundRobin::new(h1(), &pod_addrs, "bench-svc:80")),
            svc_uri.clone(),
        ),
        ("ClusterIP (nftables)", Sender::Plain(h1()), nft_uri.clone()),
    ];
    wait_for(&h1_arms[1].1, &svc_uri, "Rudder's discovery").await?;
    let names = pods.names();

    // Profiling: one arm alone, after a pause to attach a profiler to this process
    // (e.g. `perf record -g -p PID -- sleep 20`).
    if let Some(arm) = &options.profile {
        let (name, sender, uri) = h1_arms
            .iter()
            .find(|(name, _, _)| name.eq_ignore_ascii_case(arm))
            .with_context(|| {
                let names: Vec<&str> = h1_arms.iter().map(|a| a.0).collect();
                format!(
                    "--profile: no arm {arm:?} in table 1 ({})",
                    names.join(", ")
                )
            })?;
        eprintln!(
            "[clusterip] profiling {name}: pid {}, load in 3 s for 20 s",
            std::process::id()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let run = load::closed(
            sender,
            uri,
            plan.concurrency,
            Duration::from_secs(20),
            u64::MAX,
        )
        .await;
        eprintln!(
            "[clusterip] profiled {name}: {} requests, {:.0} req/s, client CPU {:.1} µs per request, {} failed",
            run.ok(),
            run.throughput(),
            us(run.cpu_per_request()),
            run.failures
        );
        return Ok(());
    }

    // 0. The layer's own cost, on loopback: the same Pod server, raw client vs Mesh.
    if options.runs(0) {
        eprintln!("[clusterip] 0/7 layer overhead on loopback");
        let pod = PodServer::start(
            "loopback",
            std::net::Ipv4Addr::LOCALHOST.into(),
            0,
            Default::default(),
        )
        .await?;
        let endpoints = rudder::Static::new(vec![rudder_balance::Endpoint::new(pod.addr())]);
        let static_layer = MeshLayer::builder_static()
            .static_service("loop", endpoints)?
            .build()?;
        let arms = [
            (
                "hyper-util client",
                Sender::Plain(h1()),
                uri(&format!("http://{}/", pod.addr())),
            ),
            (
                "Rudder + hyper-util client",
                Sender::Mesh(static_layer.layer(h1())),
                uri(&format!("http://loop:{}/", pod.addr().port())),
            ),
        ];
        let runs = cell(plan.reps, &arms, |s, u| {
            load::closed(s, u, plan.concurrency, plan.steady, plan.max)
        })
        .await;
        let raw = &runs["hyper-util client"];
        let mesh = &runs["Rudder + hyper-util client"];
        let ratio = stat(mesh, Run::throughput).0 / stat(raw, Run::throughput).0;
        let added =
            stat(mesh, |r| us(r.percentile(0.5))).0 - stat(raw, |r| us(r.percentile(0.5))).0;
        let mut t = Table::new(
            "Layer overhead on loopback (HTTP/1.1 keep-alive, closed loop)",
            &LATENCY_HEADERS,
        );
        for (name, _, _) in &arms {
            t.row(row(name, &runs[name]));
        }
        t.note(format!(
            "Rudder's throughput is {:.1} % of the raw client's; it adds {:.1} µs at p50.",
            ratio * 100.0,
            added
        ));
        report.table(t);
    }

    // 1. Steady state.
    if options.runs(1) {
        eprintln!("[clusterip] 1/7 steady state");
        let runs = cell(plan.reps, &h1_arms, |s, u| {
            load::closed(s, u, plan.concurrency, plan.steady, plan.max)
        })
        .await;
        let mut t = Table::new(
            &format!(
                "1a. Steady state, HTTP/1.1 keep-alive, closed loop ({} workers, {} Pods)",
                plan.concurrency, plan.pods
            ),
            &LATENCY_HEADERS,
        );
        let mut chart = Chart::new(
            "Steady state: requests per second (HTTP/1.1, closed loop)",
            "req/s",
        );
        for (name, _, _) in &h1_arms {
            t.row(row(name, &runs[name]));
            chart.bar(name, stat(&runs[name], Run::throughput).0);
        }
        let tput = |arm: &str| stat(&runs[arm], Run::throughput).0;
        let jain = |arm: &str| stat(&runs[arm], |r| r.fairness(&names).1).0;
        t.note(format!(
            "Rudder's closed-loop throughput is {:.2}× the naive round robin's (the same client, the fair baseline for the layer's cost), {:.2}× ClusterIP's (iptables) and {:.2}× ClusterIP's (nftables). Jain's index over the {} Pods: Rudder {:.3}, naive round robin {:.3}, ClusterIP {:.3}, nftables {:.3}.",
            tput("Rudder") / tput("naive round robin"),
            tput("Rudder") / tput("ClusterIP"),
            tput("Rudder") / tput("ClusterIP (nftables)"),
            names.len(),
            jain("Rudder"),
            jain("naive round robin"),
            jain("ClusterIP"),
            jain("ClusterIP (nftables)"),
        ));
        // Where a layer's cost could hide beside its own code: connections it makes the
        // client open (each a connect, an accept and a Pod-side task).
        let opened = h1_arms
            .iter()
            .map(|(name, _, _)| {
                format!(
                    "{name} {:.0}",
                    stat(&runs[*name], |r| r.machine.opened as f64).0
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        t.note(format!(
            "TCP connections the client opened per run (its namespace's `ActiveOpens`, which also counts the API clients' few): {opened}."
        ));
        report.table(t);
        report.chart("clusterip-throughput.svg", chart);

        // Where the time goes: the same client spreading over 1, 3 and 10 of the Pods,
        // every Pod server sharing the machine's cores with the client.
        let few = pod_addrs.len().min(3);
        let over_few = format!("naive round robin over {few} Pods");
        let over_all = format!("naive round robin over {} Pods", pod_addrs.len());
        let mut spread_arms = vec![
            ("direct to one Pod", Sender::Plain(h1()), direct_uri.clone()),
            (
                over_all.as_str(),
                Sender::RoundRobin(RoundRobin::new(h1(), &pod_addrs, "bench-svc:80")),
                svc_uri.clone(),
            ),
        ];
        if few < pod_addrs.len() {
            spread_arms.insert(
                1,
                (
                    over_few.as_str(),
                    Sender::RoundRobin(RoundRobin::new(h1(), &pod_addrs[..few], "bench-svc:80")),
                    svc_uri.clone(),
                ),
            );
        }
        let spread_runs = cell(plan.reps, &spread_arms, |s, u| {
            load::closed(s, u, plan.concurrency, plan.steady, plan.max)
        })
        .await;
        let mut t = Table::new(
            "1a'. The same client spread over more Pods (HTTP/1.1, closed loop)",
            &LATENCY_HEADERS,
        );
        for (name, _, _) in &spread_arms {
            t.row(row(name, &spread_runs[name]));
        }
        let per_request = |name: &str| {
            let runs = &spread_runs[name];
            format!(
                "{:.0} req/s, {:.0} µs of machine CPU and {:.1} context switches per request",
                stat(runs, Run::throughput).0,
                stat(runs, |r| us(r.machine_cpu_per_request())).0,
                stat(runs, Run::switches_per_request).0
            )
        };
        let mut spread_note = format!(
            "Every Pod server shares the machine's {} cores with the client. Over one Pod: {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            per_request("direct to one Pod"),
        );
        if few < pod_addrs.len() {
            spread_note.push_str(&format!("; over {few}: {}", per_request(&over_few)));
        }
        spread_note.push_str(&format!(
            "; over {}: {}.",
            pod_addrs.len(),
            per_request(&over_all)
        ));
        t.note(spread_note);
        report.table(t);

        let runs = cell(plan.reps, &h1_arms, |s, u| {
            load::open(s, u, plan.rate, plan.steady, 10_000)
        })
        .await;
        let mut t = Table::new(
            &format!(
                "1b. Steady state, HTTP/1.1, open loop at {} req/s (latency from intended send time)",
                plan.rate
            ),
            &LATENCY_HEADERS,
        );
        let mut chart = Chart::new(
            &format!("Open loop at {} req/s: p99 latency", plan.rate),
            "ms",
        );
        for (name, _, _) in &h1_arms {
            t.row(row(name, &runs[name]));
            chart.bar(
                name,
                stat(&runs[name], |r| us(r.percentile(0.99))).0 / 1000.0,
            );
        }
        report.table(t);
        report.chart("clusterip-open-loop-p99.svg", chart);

        let h2_arms = [
            (
                "ClusterIP (one HTTP/2 connection)",
                Sender::Plain(h2()),
                vip_uri.clone(),
            ),
            (
                "Rudder + PodClient (HTTP/2 per Pod)",
                Sender::MeshPod(layer.layer(pod_client_h2())),
                svc_uri.clone(),
            ),
            ("direct to one Pod", Sender::Plain(h2()), direct_uri.clone()),
            (
                "naive round robin (HTTP/2 per Pod)",
                Sender::RoundRobin(RoundRobin::new(h2(), &pod_addrs, "bench-svc:80")),
                svc_uri.clone(),
            ),
        ];
        let runs = cell(plan.reps, &h2_arms, |s, u| {
            load::closed(s, u, plan.concurrency, plan.steady, plan.max)
        })
        .await;
        let mut t = Table::new("1c. Steady state, HTTP/2, closed loop", &LATENCY_HEADERS);
        for (name, _, _) in &h2_arms {
            t.row(row(name, &runs[name]));
        }
        let tput = |arm: &str| stat(&runs[arm], Run::throughput).0;
        t.note(format!(
            "Rudder + PodClient reaches {:.2}× the naive round robin's throughput over per-Pod HTTP/2 connections and {:.2}× ClusterIP's.",
            tput("Rudder + PodClient (HTTP/2 per Pod)") / tput("naive round robin (HTTP/2 per Pod)"),
            tput("Rudder + PodClient (HTTP/2 per Pod)") / tput("ClusterIP (one HTTP/2 connection)"),
        ));
        let pinned = stat(&runs["ClusterIP (one HTTP/2 connection)"], |r| {
            r.fairness(&names).0
        })
        .0;
        t.note(format!(
            "Over the ClusterIP, hyper's HTTP/2 client multiplexes one connection, so one Pod takes everything (busiest Pod / mean = {pinned:.1})."
        ));
        report.table(t);
    }

    // 2. HTTP/2, scale from N to 2N Pods mid-run.
    if options.runs(2) {
        eprintln!("[clusterip] 2/7 HTTP/2 scale-up");
        let h2_arms = [
            (
                "ClusterIP (one HTTP/2 connection)",
                Sender::Plain(h2()),
                vip_uri.clone(),
            ),
            (
                "Rudder + PodClient (HTTP/2 per Pod)",
                Sender::MeshPod(layer.layer(pod_client_h2())),
                svc_uri.clone(),
            ),
        ];
        let mut t = Table::new(
            &format!("2. HTTP/2, {} → {} Pods mid-run", plan.pods, 2 * plan.pods),
            &[
                "arm",
                "busiest Pod / mean (after scale-up)",
                "Jain's index",
                "new Pods reached",
                "time to reach every new Pod",
            ],
        );
        for (name, sender, target) in &h2_arms {
            let mut rows = Vec::new();
            for _ in 0..plan.reps {
                let loop_ = {
                    let (sender, target) = (sender.clone(), target.clone());
                    let (c, d, m) = (plan.concurrency.min(8), plan.scale, plan.max);
                    tokio::spawn(async move { load::closed(&sender, &target, c, d, m).await })
                };
                let started = Instant::now();
                tokio::time::sleep(plan.scale / 3).await;
                let mut added = Vec::new();
                for _ in 0..plan.pods {
                    let p = pods
                        .add(&cluster, &[("app", "bench"), ("version", "4.1")])
                        .await?;
                    added.push((p.name.clone(), started.elapsed()));
                }
                let scaled_at = started.elapsed();
                let run = loop_.await?;
                let all = pods.names();
                let after = Run {
                    per_pod: run.timeline.iter().filter(|(t, _)| *t > scaled_at).fold(
                        BTreeMap::new(),
                        |mut m, (_, p)| {
                            *m.entry(p.clone()).or_default() += 1;
                            m
                        },
                    ),
                    ..Run::default()
                };
                let (max_mean, jain) = after.fairness(&all);
                let reached: Vec<Duration> = added
                    .iter()
                    .filter_map(|(p, at)| {
                        run.timeline
                            .iter()
                            .find(|(_, q)| q == p)
                            .map(|(t, _)| t.saturating_sub(*at))
                    })
                    .collect();
                let every = (reached.len() == added.len())
                    .then(|| reached.iter().max().copied().unwrap_or_default());
                rows.push((max_mean, jain, reached.len(), every));
                pods.truncate(&cluster, plan.pods).await?;
                cluster.api().settled().await;
            }
            let med = |f: &dyn Fn(&ScaleCell) -> f64| {
                let mut v: Vec<f64> = rows.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let every: Vec<String> = rows
                .iter()
                .map(|r| {
                    r.3.map_or("never".into(), |d| {
                        format!("{:.0} ms", d.as_secs_f64() * 1e3)
                    })
                })
                .collect();
            t.row(vec![
                name.to_string(),
                format!("{:.2}", med(&|r| r.0)),
                format!("{:.2}", med(&|r| r.1)),
                format!("{:.0} of {}", med(&|r| r.2 as f64), plan.pods),
                every.join(", "),
            ]);
        }
        t.note(
            "Jain's index is 1.0 when every Pod gets the same share and 1/n when one Pod gets all."
                .into(),
        );
        report.table(t);
    }

    // 3. One slow Pod.
    if options.runs(3) {
        eprintln!("[clusterip] 3/7 one slow Pod");
        let slow = pods.running[0].name.clone();
        pods.running[0].set_latency(20).await?;
        let arms: Vec<_> = h1_arms
            .iter()
            .filter(|(name, _, _)| *name != "direct to one Pod")
            .cloned()
            .collect();
        let arms = &arms[..];
        let runs = cell(plan.reps, arms, |s, u| {
            load::closed(s, u, plan.concurrency, plan.steady, plan.max)
        })
        .await;
        let open_runs = cell(plan.reps, arms, |s, u| {
            load::open(s, u, plan.rate, plan.steady, 10_000)
        })
        .await;
        pods.running[0].set_latency(0).await?;
        let mut headers = LATENCY_HEADERS.to_vec();
        headers.push("slow Pod's share");
        let mut t = Table::new(
            &format!("3. One slow Pod (+20 ms) of {}", plan.pods),
            &headers,
        );
        let mut chart = Chart::new("Share of requests sent to the slow Pod (+20 ms)", "%");
        for (name, _, _) in arms {
            let share = stat(&runs[name], |r| {
                100.0 * r.per_pod.get(&slow).copied().unwrap_or(0) as f64 / r.ok().max(1) as f64
            });
            let mut r = row(name, &runs[name]);
            r.push(spread(share, |v| format!("{v:.1} %")));
            t.row(r);
            chart.bar(name, share.0);
        }
        report.table(t);
        report.chart("clusterip-slow-pod.svg", chart);
        let mut t = Table::new(
            &format!(
                "3b. One slow Pod (+20 ms) of {}, open loop at {} req/s (latency from intended send time)",
                plan.pods, plan.rate
            ),
            &headers,
        );
        for (name, _, _) in arms {
            let share = stat(&open_runs[name], |r| {
                100.0 * r.per_pod.get(&slow).copied().unwrap_or(0) as f64 / r.ok().max(1) as f64
            });
            let mut r = row(name, &open_runs[name]);
            r.push(spread(share, |v| format!("{v:.1} %")));
            t.row(r);
        }
        t.note("At a fixed rate a naive round robin sends 1/n of requests to the slow Pod, so its p99 is the slow Pod's latency. The ClusterIP balances connections, not requests: the slow Pod gets the requests of whichever keep-alive connections landed on it, none in some runs and more than 1/n in others (the last column), and its p99 is the slow Pod's latency whenever more than 1 % do. Rudder's peak-EWMA P2C moves requests away from it.".into());
        report.table(t);
    }

    // 4. Churn: two Pods killed abruptly mid-run, two new ones added.
    if options.runs(4) {
        eprintln!("[clusterip] 4/7 churn");
        let arms = &h1_arms[..2];
        let mut t = Table::new(
            "4. Churn: 2 Pods killed abruptly (and deleted) mid-run, 2 added",
            &[
                "arm",
                "failed per 10k",
                "last failure after the kill",
                "requests",
                "proxy syncs after the kill",
            ],
        );
        for (name, sender, target) in arms {
            let mut cells = Vec::new();
            for _ in 0..plan.reps {
                let loop_ = {
                    let (sender, target) = (sender.clone(), target.clone());
                    let (c, d, m) = (plan.concurrency.min(16), plan.churn, plan.max);
                    tokio::spawn(async move { load::closed(&sender, &target, c, d, m).await })
                };
                let started = Instant::now();
                tokio::time::sleep(plan.churn / 5).await;
                let syncs = stats.syncs.load(std::sync::atomic::Ordering::Relaxed);
                let killed_at = started.elapsed();
                let victims: Vec<String> = pods.names().into_iter().rev().take(2).collect();
                for v in &victims {
                    pods.kill(&cluster, v).await?;
                }
                tokio::time::sleep(plan.churn / 4).await;
                for _ in 0..2 {
                    pods.add(&cluster, &[("app", "bench"), ("version", "4.1")])
                        .await?;
                }
                let run = loop_.await?;
                let last = run
                    .failure_times
                    .iter()
                    .max()
                    .map(|t| t.saturating_sub(killed_at));
                let total = run.ok() + run.failures;
                cells.push((
                    run.failures as f64 * 10_000.0 / total.max(1) as f64,
                    last,
                    total,
                    stats.syncs.load(std::sync::atomic::Ordering::Relaxed) - syncs,
                ));
                cluster.api().settled().await;
            }
            let per10k: Vec<String> = cells.iter().map(|c| format!("{:.1}", c.0)).collect();
            let last: Vec<String> = cells
                .iter()
                .map(|c| {
                    c.1.map_or("none".into(), |d| {
                        format!("{:.0} ms", d.as_secs_f64() * 1e3)
                    })
                })
                .collect();
            t.row(vec![
                name.to_string(),
                per10k.join(", "),
                last.join(", "),
                cells
                    .iter()
                    .map(|c| c.2.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                cells
                    .iter()
                    .map(|c| c.3.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
        t.note("One value per repetition. The proxy writes rules at most once per second (kube-proxy's minimum sync period); until then, and on kept-alive connections, requests still reach the dead Pods.".into());
        report.table(t);
    }

    // 5. Canary 90/10 by labels.
    if options.runs(5) {
        eprintln!("[clusterip] 5/7 canary");
        let mut canaries = Vec::new();
        for _ in 0..2 {
            canaries.push(
                pods.add(&cluster, &[("app", "bench"), ("version", "4.2")])
                    .await?
                    .name
                    .clone(),
            );
        }
        cluster.api().settled().await;
        // A new connection per request, so each one is balanced by the NAT rules.
        wait_for_pods(&Sender::Plain(no_keep_alive()), &vip_uri, &canaries).await?;
        let split = Split::new([
            ("version=4.1".parse::<Selector>()?, 90),
            ("version=4.2".parse()?, 10),
        ])?;
        let canary_layer = MeshLayer::builder(kube.clone()).split(split).build()?;
        let arms = [
            ("ClusterIP", Sender::Plain(h1()), vip_uri.clone()),
            (
                "Rudder, split 90/10",
                Sender::Mesh(canary_layer.layer(h1())),
                svc_uri.clone(),
            ),
        ];
        wait_for(&arms[1].1, &svc_uri, "the canary Mesh").await?;
        let runs = cell(plan.reps, &arms, |s, u| {
            load::closed(s, u, plan.concurrency, plan.steady, plan.max)
        })
        .await;
        let mut t = Table::new(
            &format!(
                "5. Canary: {} Pods at 4.1, 2 at 4.2, asked for 90/10",
                plan.pods
            ),
            &["arm", "share to 4.2", "failed"],
        );
        for (name, _, _) in &arms {
            let share = stat(&runs[name], |r| {
                let c: u64 = canaries
                    .iter()
                    .map(|p| r.per_pod.get(p).copied().unwrap_or(0))
                    .sum();
                100.0 * c as f64 / r.ok().max(1) as f64
            });
            t.row(vec![
                name.to_string(),
                spread(share, |v| format!("{v:.1} %")),
                runs[name]
                    .iter()
                    .map(|r| r.failures)
                    .sum::<u64>()
                    .to_string(),
            ]);
        }
        t.note("A ClusterIP splits by Pod count (here 2 of the Pods); a 90/10 split needs a second Service and client-side logic.".into());
        report.table(t);
        for c in canaries {
            pods.kill(&cluster, &c).await?;
        }
    }

    // 6. Connection-heavy: a new connection per request, with extra Services' rules.
    if options.runs(6) {
        eprintln!("[clusterip] 6/7 new connections and rule count");
        let mut t = Table::new(
            "6. No keep-alive (a new connection per request), with extra Services' rules in the NAT table",
            &[
                "extra Services",
                "stale NAT entries to deleted Pods",
                "arm",
                "req/s",
                "p50",
                "p99",
                "failed",
                "conntrack insert failed / drop / invalid / clash resolved",
                "Pods' PAWS rejects / listen drops",
                "first failure",
            ],
        );
        let mut chart = Chart::new(
            "New-connection request latency (p50) by extra Services in iptables",
            "ms",
        );
        for &dummies in &plan.dummies {
            proxy_task.abort();
            nft_task.abort();
            let before = stats.syncs.load(std::sync::atomic::Ordering::Relaxed);
            let nft_before = nft_stats.syncs.load(std::sync::atomic::Ordering::Relaxed);
            proxy_task = spawn_proxy(&kube, dummies, Backend::Iptables, &stats);
            nft_task = spawn_proxy(&kube, dummies, nft(), &nft_stats);
            stats.wait_past(before, Duration::from_secs(120)).await?;
            nft_stats
                .wait_past(nft_before, Duration::from_secs(120))
                .await?;
            wait_for(&Sender::Plain(h1()), &vip_uri, "the restarted proxy").await?;
            wait_for(
                &Sender::Plain(h1()),
                &nft_uri,
                "the restarted nftables proxy",
            )
            .await?;
            let arms = [
                ("ClusterIP", Sender::Plain(no_keep_alive()), vip_uri.clone()),
                (
                    "ClusterIP (nftables)",
                    Sender::Plain(no_keep_alive()),
                    nft_uri.clone(),
                ),
                (
                    "Rudder",
                    Sender::Mesh(layer.layer(no_keep_alive())),
                    svc_uri.clone(),
                ),
                (
                    "direct to one Pod",
                    Sender::Plain(no_keep_alive()),
                    direct_uri.clone(),
                ),
            ];
            // Left by the Pods earlier scenarios deleted (see `load::stale_nat_entries`).
            let stale = load::stale_nat_entries();
            let runs = cell(plan.reps, &arms, |s, u| {
                load::closed(s, u, plan.concurrency.min(8), plan.steady, plan.max)
            })
            .await;
            for (name, _, _) in &arms {
                let r = &runs[name];
                t.row(vec![
                    dummies.to_string(),
                    stale.to_string(),
                    name.to_string(),
                    spread(stat(r, Run::throughput), |v| format!("{v:.0}")),
                    spread(stat(r, |x| us(x.percentile(0.5))), ms),
                    spread(stat(r, |x| us(x.percentile(0.99))), ms),
                    r.iter().map(|x| x.failures).sum::<u64>().to_string(),
                    format!(
                        "{} / {} / {} / {}",
                        r.iter().map(|x| x.machine.insert_failed).sum::<u64>(),
                        r.iter().map(|x| x.machine.drop).sum::<u64>(),
                        r.iter().map(|x| x.machine.invalid).sum::<u64>(),
                        r.iter().map(|x| x.machine.clash_resolved).sum::<u64>()
                    ),
                    format!(
                        "{} / {}",
                        r.iter().map(|x| x.machine.pods_paws_rejected).sum::<u64>(),
                        r.iter().map(|x| x.machine.pods_listen_drops).sum::<u64>()
                    ),
                    r.iter()
                        .find_map(|x| x.first_failure.as_deref())
                        .map_or_else(
                            || "–".to_string(),
                            |e| e.replace('|', "/").chars().take(120).collect(),
                        ),
                ]);
                chart.bar(
                    &format!("{name}, {dummies}"),
                    stat(r, |x| us(x.percentile(0.5))).0 / 1000.0,
                );
            }
        }
        t.note("A failure here costs its worker the 1 s connect timeout. The conntrack columns are the client namespace's counters over each arm's runs (where kube-proxy's DNAT happens); the Pods' columns sum their TCP stacks' PAWS rejections and listen-queue drops. Zeros there mean the lost connection attempts were not dropped by conntrack as clashes or invalid, nor refused by a full accept queue or a timestamp check at a Pod. The failures on the ClusterIP arms come from the Pods the churn and canary scenarios deleted: their connections left conntrack entries that bind the ClusterIP and a client port to the deleted Pod's address (counted at each cell's start in the second column; kube-proxy cleans these up for UDP only). A new connection that reuses such a port keeps the old binding, so its SYN goes to an address nobody answers (traced: an ARP request for the deleted Pod at the moment of the SYN, no packet of that port on the bridge, no drop in the kernel), and it times out. Rudder connects to the addresses discovery lists, so a deleted Pod gets no new connection.".into());
        report.table(t);
        report.chart("clusterip-rules.svg", chart);
        // Back to no extra Services, so the rollout below measures the Service alone and
        // not 10,000 others' rules being rewritten on every endpoint change.
        proxy_task.abort();
        nft_task.abort();
        let before = stats.syncs.load(std::sync::atomic::Ordering::Relaxed);
        let nft_before = nft_stats.syncs.load(std::sync::atomic::Ordering::Relaxed);
        proxy_task = spawn_proxy(&kube, 0, Backend::Iptables, &stats);
        nft_task = spawn_proxy(&kube, 0, nft(), &nft_stats);
        stats.wait_past(before, Duration::from_secs(300)).await?;
        nft_stats
            .wait_past(nft_before, Duration::from_secs(300))
            .await?;
    }

    // 7. A rolling update of every Pod (maxSurge 1, maxUnavailable 0) under load: each old
    // Pod is replaced by a new one, then deleted with a grace period and drained. Last,
    // because it replaces the Pods the other scenarios address directly.
    if options.runs(7) {
        eprintln!("[clusterip] 7/7 rolling update");
        // The naive round robin over the Pods as they are before any rollout (earlier
        // scenarios replaced some of the first ones), at the rollouts' concurrency: what
        // spreading every worker's requests over all Pods costs here, without Rudder (it
        // cannot follow a rollout, so it has no row).
        let running: Vec<String> = pods
            .running
            .iter()
            .map(|p| format!("{}:8080", p.ip))
            .collect();
        let naive = Sender::RoundRobin(RoundRobin::new(h1(), &running, "bench-svc:80"));
        let naive_steady = load::closed(
            &naive,
            &svc_uri,
            plan.concurrency.min(16),
            plan.steady,
            plan.max,
        )
        .await;
        let arms = [
            ("ClusterIP", Sender::Plain(h1()), vip_uri.clone()),
            ("ClusterIP (nftables)", Sender::Plain(h1()), nft_uri.clone()),
            ("Rudder", Sender::Mesh(layer.layer(h1())), svc_uri.clone()),
        ];
        let mut t = Table::new(
            &format!(
                "7. Rolling update of all {} Pods under load (one at a time: add, then delete with a grace period, drain {} ms, exit)",
                plan.pods,
                ROLLING_DRAIN.as_millis()
            ),
            &[
                "arm",
                "failed per 10k",
                "requests",
                "req/s",
                "steady req/s just before (rollout ÷ steady)",
                "p99",
                "new Pods' share at the end",
                "first failure",
            ],
        );
        for (name, sender, target) in &arms {
            let mut cells = Vec::new();
            // One rollout per arm: replacing every Pod is slow on two cores under load.
            for _ in 0..1 {
                // The same load on the same Pods without a rollout, so the rollout's cost
                // is read per arm rather than against another arm's steady state.
                let concurrency = plan.concurrency.min(16);
                let before = load::closed(sender, target, concurrency, plan.steady, plan.max).await;
                let old = pods.names();
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let load_started = Instant::now();
                let loop_ = {
                    let (sender, target, stop) = (sender.clone(), target.clone(), stop.clone());
                    let (c, m) = (concurrency, plan.max.max(10_000_000));
                    // Bounded in time whatever happens; stopped when the rollout is done.
                    let bound = Duration::from_secs(600);
                    tokio::spawn(async move {
                        load::closed_until(&sender, &target, c, bound, m, Some(stop)).await
                    })
                };
                tokio::time::sleep(Duration::from_millis(300)).await;
                for o in &old {
                    pods.add(&cluster, &[("app", "bench"), ("version", "4.1")])
                        .await?;
                    cluster.api().settled().await;
                    pods.retire(&cluster, o, ROLLING_DRAIN).await?;
                }
                // Half a second more on the new Pods only, then stop.
                let done = load_started.elapsed();
                tokio::time::sleep(Duration::from_millis(500)).await;
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let run = loop_.await?;
                let fresh = pods.names();
                let tail: u64 = run.timeline.iter().filter(|(t, _)| *t > done).count() as u64;
                let on_new: u64 = run
                    .timeline
                    .iter()
                    .filter(|(t, p)| *t > done && fresh.contains(p))
                    .count() as u64;
                let total = run.ok() + run.failures;
                cells.push((
                    run.failures as f64 * 10_000.0 / total.max(1) as f64,
                    total,
                    run.throughput(),
                    us(run.percentile(0.99)),
                    100.0 * on_new as f64 / tail.max(1) as f64,
                    before.throughput(),
                    run.first_failure.clone(),
                ));
                cluster.api().settled().await;
            }
            let join = |f: &dyn Fn(&RollingCell) -> String| {
                cells.iter().map(f).collect::<Vec<_>>().join(", ")
            };
            t.row(vec![
                name.to_string(),
                join(&|c| format!("{:.1}", c.0)),
                join(&|c| c.1.to_string()),
                join(&|c| format!("{:.0}", c.2)),
                join(&|c| format!("{:.0} ({:.2}×)", c.5, c.2 / c.5.max(1.0))),
                join(&|c| ms(c.3)),
                join(&|c| format!("{:.0} %", c.4)),
                join(&|c| {
                    c.6.as_deref().map_or_else(
                        || "–".to_string(),
                        |e| e.replace('|', "/").chars().take(120).collect(),
                    )
                }),
            ]);
        }
        t.note("One rollout per arm; the load runs from before the first new Pod until half a second after the last old one exited, and the last column is the share of that last half second on the new Pods. Keep-alive connections to a retired Pod end when its process exits; until then the ClusterIP keeps sending over them, while Rudder stops choosing a Pod as soon as its endpoint turns terminating.".into());
        t.note(format!(
            "With the same {} workers and no rollout, the naive round robin over the {} Pods (the same client spreading every worker's requests over all Pods, as Rudder does) reached {:.0} req/s ({} failed) just before the first rollout: compare it with the steady column, since the ClusterIP's {} keep-alive connections may leave some Pods with none.",
            plan.concurrency.min(16),
            running.len(),
            naive_steady.throughput(),
            naive_steady.failures,
            plan.concurrency.min(16),
        ));
        report.table(t);
    }

    proxy_task.abort();
    nft_task.abort();
    report.write(&options.out_dir)?;
    Ok(())
}

/// Waits (at most 20 s) until `uri` answers through `sender`.
async fn wait_for(sender: &Sender, uri: &http::Uri, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match sender.get(uri).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                anyhow::bail!("{what} never answered at {uri}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Sends requests (for at most 20 s) until each of `pods` has answered one.
async fn wait_for_pods(sender: &Sender, uri: &http::Uri, pods: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut missing: Vec<&String> = pods.iter().collect();
    let (mut answered, mut failed) = (BTreeMap::<String, u64>::new(), 0u64);
    let mut last_error = None;
    while !missing.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "Pods {missing:?} never answered at {uri} (answers: {answered:?}; {failed} failures, the last: {last_error:?})"
        );
        match sender.get(uri).await {
            Ok(pod) => {
                missing.retain(|p| **p != pod);
                *answered.entry(pod).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                last_error = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    Ok(())
}

/// Runs the kube-proxy equivalent in the background; its failure is reported, not lost.
fn spawn_proxy(
    kube: &kube::Client,
    dummies: u32,
    backend: Backend,
    stats: &Arc<ProxyStats>,
) -> tokio::task::JoinHandle<()> {
    let run = proxy::run(
        kube.clone(),
        "default".into(),
        Duration::from_secs(1),
        dummies,
        backend,
        stats.clone(),
    );
    tokio::spawn(async move {
        if let Err(e) = run.await {
            eprintln!("[clusterip] the proxy stopped: {e:#}");
        }
    })
}
