//! Shared by the examples: command-line flags, where the cluster comes from, and a bounded
//! load loop that tallies which Pod answered.

#![allow(dead_code, reason = "each example uses part of it")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rudder::{Mesh, MeshLayer};
use rudder_testkit::TestCluster;
use tower::ServiceExt;

/// The inner client every example wraps: hyper-util's pooled HTTP/1.1 client.
pub(crate) type H1 = Client<HttpConnector, rudder::ReplayBody<Empty<Bytes>>>;

pub(crate) fn h1() -> H1 {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Which flags an example takes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Flags {
    /// `--kubeconfig PATH` and `--in-cluster`: run against a real cluster.
    pub(crate) real_cluster: bool,
    /// `--once`: no live screen, a summary, exit.
    pub(crate) once: bool,
}

/// The parsed command line: `--kubeconfig PATH`, `--in-cluster`, `--once`, `--requests N`
/// (each only where the example takes it; anything else is refused, and `--help` lists
/// what is taken).
#[derive(Debug, Default)]
pub(crate) struct Args {
    pub(crate) kubeconfig: Option<PathBuf>,
    pub(crate) in_cluster: bool,
    pub(crate) once: bool,
    pub(crate) requests: Option<usize>,
}

impl Args {
    /// Parses the command line of example `name`; on `--help` prints usage and exits 0, on
    /// a bad flag prints what is wrong (naming the flag) and exits 2.
    pub(crate) fn parse(name: &'static str, about: &'static str, flags: Flags) -> Self {
        use clap::{Arg, ArgAction, Command, value_parser};
        let mut cmd = Command::new(name).about(about).arg(
            Arg::new("requests")
                .long("requests")
                .value_name("N")
                .help("How many requests to send")
                .value_parser(value_parser!(usize)),
        );
        if flags.real_cluster {
            cmd = cmd
                .arg(
                    Arg::new("kubeconfig")
                        .long("kubeconfig")
                        .value_name("PATH")
                        .help("Run against the cluster of this kubeconfig instead of the embedded one")
                        .value_parser(value_parser!(PathBuf))
                        .conflicts_with("in-cluster"),
                )
                .arg(
                    Arg::new("in-cluster")
                        .long("in-cluster")
                        .help("Run against the cluster this Pod runs in")
                        .action(ArgAction::SetTrue),
                );
        }
        if flags.once {
            cmd = cmd.arg(
                Arg::new("once")
                    .long("once")
                    .help("No live screen: run the steps, print a summary, exit")
                    .action(ArgAction::SetTrue),
            );
        }
        let m = cmd.get_matches();
        Args {
            kubeconfig: flags
                .real_cluster
                .then(|| m.get_one::<PathBuf>("kubeconfig").cloned())
                .flatten(),
            in_cluster: flags.real_cluster && m.get_flag("in-cluster"),
            once: flags.once && m.get_flag("once"),
            requests: m.get_one::<usize>("requests").copied(),
        }
    }

    /// A client for a real cluster, when one was asked for.
    pub(crate) async fn real_cluster(&self) -> anyhow::Result<Option<kube::Client>> {
        if self.in_cluster {
            return Ok(Some(kube::Client::try_from(kube::Config::incluster()?)?));
        }
        let Some(path) = &self.kubeconfig else {
            return Ok(None);
        };
        let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(Some(kube::Client::try_from(config)?))
    }
}

/// What a load run saw.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Requests per endpoint address.
    pub(crate) per_endpoint: BTreeMap<String, usize>,
    pub(crate) failures: usize,
    pub(crate) first_failure: Option<String>,
    pub(crate) latencies: Vec<Duration>,
}

impl Tally {
    pub(crate) fn ok(&self) -> usize {
        self.per_endpoint.values().sum()
    }

    /// A latency percentile (`load` hands tallies back sorted).
    pub(crate) fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[i]
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.per_endpoint {
            *self.per_endpoint.entry(k).or_default() += v;
        }
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.latencies.extend(other.latencies);
    }
}

/// Sends `n` GETs to `uri` over `concurrency` workers, reading every body.
pub(crate) async fn load(mesh: &Mesh<H1>, uri: &str, n: usize, concurrency: usize) -> Tally {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (mesh, next, uri) = (mesh.clone(), next.clone(), uri.to_string());
        workers.spawn(async move {
            let mut tally = Tally::default();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let req = http::Request::get(&uri)
                    .body(Empty::new())
                    .expect("request");
                let started = Instant::now();
                let result = async {
                    let res = mesh.clone().oneshot(req).await?;
                    let endpoint = res
                        .body()
                        .target()
                        .map(|t| t.endpoint().to_string())
                        .unwrap_or_default();
                    let status = res.status();
                    res.into_body().collect().await?;
                    if !status.is_success() {
                        return Err(format!("status {status} from {endpoint}").into());
                    }
                    Ok::<_, rudder::BoxError>(endpoint)
                }
                .await;
                match result {
                    Ok(endpoint) => {
                        tally.latencies.push(started.elapsed());
                        *tally.per_endpoint.entry(endpoint).or_default() += 1;
                    }
                    Err(e) => {
                        tally.failures += 1;
                        tally.first_failure.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(t) = workers.join_next().await {
        total.merge(t.expect("load worker"));
    }
    total.latencies.sort_unstable();
    total
}

/// Endpoint address → Pod name, from the Mesh's view of `service`.
pub(crate) fn pod_names(layer: &MeshLayer, service: &str) -> BTreeMap<String, String> {
    layer
        .view(service)
        .map(|v| {
            v.endpoints
                .into_iter()
                .filter_map(|e| Some((e.addr.to_string(), e.pod?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Labels from pairs.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The embedded `biz1` Service (selector `app=biz1,zone=prod`) with one Pod per
/// `(name, version)`.
pub(crate) async fn biz1(pods: &[(&str, &str)]) -> anyhow::Result<TestCluster> {
    let mut cluster = TestCluster::builder()
        .service("biz1")
        .label("app", "biz1")
        .label("zone", "prod")
        .replicas(0)
        .start()
        .await?;
    for (name, version) in pods {
        let l = labels(&[("app", "biz1"), ("zone", "prod"), ("version", version)]);
        cluster.add_pod(name, l).await?;
    }
    cluster.api().settled().await;
    Ok(cluster)
}

/// A client for the real cluster the flags name, else for the embedded one `start` makes
/// (returned too, so it lives as long as the caller needs it).
pub(crate) async fn client_or_embedded<F>(
    args: &Args,
    start: impl FnOnce() -> F,
) -> anyhow::Result<(kube::Client, Option<TestCluster>)>
where
    F: std::future::Future<Output = anyhow::Result<TestCluster>>,
{
    if let Some(client) = args.real_cluster().await? {
        return Ok((client, None));
    }
    let cluster = start().await?;
    println!(
        "embedded API server {} (kubeconfig {})",
        cluster.api().url(),
        cluster.api().kubeconfig_path().display()
    );
    Ok((cluster.api().client().await?, Some(cluster)))
}
