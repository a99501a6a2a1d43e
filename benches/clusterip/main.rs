//! Rudder against ClusterIP routing, side by side on one machine.
//!
//! Pods are network namespaces (veth pairs on a bridge, 10.244.x.y) running
//! `rudder-testkit` Pod servers; a kube-proxy equivalent programs iptables NAT for the
//! Service's ClusterIP from the same test API server Rudder watches. The arms share the
//! hyper-util client and its settings: (a) the client to the ClusterIP, (b) the client
//! wrapped in Rudder, (c) the client straight to one Pod (the limit). Arms are interleaved
//! and each cell repeated; medians and spreads are reported.
//!
//! ```text
//! cargo bench --bench clusterip                 # full run: prints tables, writes benches/RESULTS.md + SVGs
//! cargo bench --bench clusterip -- --smoke      # seconds; checks the harness works (CI)
//! cargo bench --bench clusterip -- --only 7     # some tables only (comma-separated), results in a temp dir
//! cargo bench --bench clusterip -- --cleanup    # removes leftovers of interrupted runs
//! cargo bench --bench clusterip -- --profile Rudder   # one arm of table 1 for 20 s, to profile
//! ```
//!
//! With `--profile ARM` (an arm of table 1 by name: `Rudder`, `naive round robin`, ...),
//! the client process prints its PID and starts the arm's closed loop three seconds later;
//! attach a profiler to that process alone, e.g. `perf record -g -p PID -- sleep 20`.
//!
//! Needs root, iproute2 and iptables; without them it stops with a message saying what is
//! missing. Everything it creates is named `rdr-<pid>-*` and removed on exit, on Ctrl-C and
//! on failure.

mod load;
mod netns;
mod pods;
mod proxy;
mod report;
mod scenarios;

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) smoke: bool,
    /// The tables to run (0–7); all when empty.
    pub(crate) only: Vec<u8>,
    pub(crate) out_dir: std::path::PathBuf,
    /// Instead of the tables: one table-1 arm's closed loop, long enough to profile.
    pub(crate) profile: Option<String>,
}

impl Options {
    /// Whether table `n` runs.
    pub(crate) fn runs(&self, n: u8) -> bool {
        self.only.is_empty() || self.only.contains(&n)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; it means nothing here.
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--bench")
        .collect();
    match args.as_slice() {
        ["--pod", name, addr, labels] => runtime(1)?.block_on(pods::serve(name, addr, labels)),
        ["--cleanup"] => {
            let n = netns::cleanup("rdr-");
            println!("removed {n} leftover namespaces");
            Ok(())
        }
        ["--inner", prefix, rest @ ..] => {
            let options = options(rest)?;
            // A watchdog: whatever hangs, the run ends (and the outer process cleans up).
            let bound = Duration::from_secs(if options.smoke { 300 } else { 3_600 });
            runtime(2)?.block_on(async {
                tokio::time::timeout(bound, scenarios::run(prefix, options))
                    .await
                    .unwrap_or_else(|_| {
                        anyhow::bail!("the benchmark did not finish within {bound:?}")
                    })
            })
        }
        rest => outer(options(rest)?),
    }
}

fn options(args: &[&str]) -> anyhow::Result<Options> {
    let mut smoke = false;
    let mut only = Vec::new();
    let mut out_dir = None;
    let mut profile = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--smoke" => smoke = true,
            "--only" => {
                let list = it.next().context("--only needs table numbers, e.g. 1,7")?;
                for n in list.split(',') {
                    let n: u8 = n
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| *n <= 7)
                        .with_context(|| format!("--only: {n:?} is not a table (0-7)"))?;
                    only.push(n);
                }
            }
            "--out-dir" => out_dir = Some(it.next().context("--out-dir needs a path")?.into()),
            "--profile" => {
                profile = Some(
                    it.next()
                        .context("--profile needs an arm of table 1, e.g. Rudder")?
                        .to_string(),
                )
            }
            other => anyhow::bail!(
                "unknown argument {other:?} (expected --smoke, --only N[,M...], --out-dir DIR, --profile ARM, --cleanup)"
            ),
        }
    }
    // A smoke run's numbers mean nothing, and a partial run's tables are not the whole
    // report: neither overwrites the committed results.
    let out_dir = out_dir.unwrap_or_else(|| {
        if smoke || !only.is_empty() {
            std::env::temp_dir().join("rudder-clusterip-smoke")
        } else {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches")
        }
    });
    Ok(Options {
        smoke,
        only,
        out_dir,
        profile,
    })
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?)
}

/// Sets up the client namespace, runs the benchmark inside it, and always cleans up (on
/// success, failure and Ctrl-C, which this process catches so it outlives its child).
fn outer(options: Options) -> anyhow::Result<()> {
    netns::preflight()?;
    let prefix = netns::prefix(std::process::id());
    let result = runtime(1)?.block_on(async {
        let ns = netns::client(&prefix)?;
        let exe = std::env::current_exe()?;
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(exe)
            .args(["--inner", &prefix])
            .arg("--out-dir")
            .arg(&options.out_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if options.smoke {
            cmd.arg("--smoke");
        }
        if !options.only.is_empty() {
            let list: Vec<String> = options.only.iter().map(u8::to_string).collect();
            cmd.args(["--only", &list.join(",")]);
        }
        if let Some(arm) = &options.profile {
            cmd.args(["--profile", arm]);
        }
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut child = cmd
            .spawn()
            .context("starting the benchmark in its namespace")?;
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                anyhow::ensure!(status.success(), "benchmark failed: {status}");
                Ok(())
            }
            _ = tokio::signal::ctrl_c() => {
                let _ = child.kill().await;
                anyhow::bail!("interrupted")
            }
            _ = terminate.recv() => {
                let _ = child.kill().await;
                anyhow::bail!("terminated")
            }
        }
    });
    let removed = netns::cleanup(&prefix);
    eprintln!("cleanup: removed {removed} namespaces named {prefix}*");
    result
}
