//! Soak: steady load through the Mesh while Pods churn every second, reporting memory,
//! tasks and open watches over time, so a leak shows as a slope.
//!
//! ```text
//! cargo bench --bench soak                      # 10 minutes
//! cargo bench --bench soak -- --minutes 1
//! ```
//!
//! Every second one change: a Pod deleted and its server killed, a deleted Pod brought back
//! (same server and IP, new Pod object), or a Pod's readiness flipped off and on (the
//! Service keeps 4 to 6 Pods; nothing in the harness grows). Four workers send requests back to
//! back. Every 30 s (and at the end) a row: elapsed, RSS, live tokio tasks, open watches
//! on the API server, requests and failures so far.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rudder::MeshLayer;
use rudder_testkit::TestCluster;
use tower::{Layer, ServiceExt};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn labels() -> BTreeMap<String, String> {
    [("app".to_string(), "soak".to_string())].into()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut minutes = 10u64;
    let (mut churn, mut workers_n) = (true, 4);
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--minutes" => {
                minutes = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--minutes needs a number"))?
                    .parse()?
            }
            // To tell apart what grows with requests from what grows with changes.
            "--no-churn" => churn = false,
            "--no-load" => workers_n = 0,
            other => anyhow::bail!(
                "unknown argument {other:?} (expected --minutes N, --no-churn, --no-load)"
            ),
        }
    }
    let duration = Duration::from_secs(minutes * 60);
    let cluster = TestCluster::builder()
        .service("soak")
        .label("app", "soak")
        .replicas(6)
        // The test API server keeps a watch history (10,000 events by default) that would
        // show up here as growth; a short one keeps the curve about Rudder.
        .start_on(
            rudder_testkit::ApiServer::builder()
                .history(500)
                .start()
                .await?,
        )
        .await?;
    let layer = MeshLayer::builder(cluster.api().client().await?).build()?;
    let mesh = layer.layer(
        Client::builder(TokioExecutor::new()).build_http::<rudder::ReplayBody<Empty<Bytes>>>(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..workers_n {
        let (mesh, stop, ok, failed) = (mesh.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get("http://soak:8080/")
                    .body(Empty::new())
                    .expect("request");
                let result = async {
                    let res = mesh.clone().oneshot(req).await?;
                    let status = res.status();
                    res.into_body().collect().await?;
                    if !status.is_success() {
                        return Err(format!("status {status}").into());
                    }
                    Ok::<(), rudder::BoxError>(())
                }
                .await;
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }

    let started = Instant::now();
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let table = std::sync::Mutex::new(String::from(
        "| elapsed | RSS (MiB) | tokio tasks | open watches | Pods | requests | failed |\n|---|---|---|---|---|---|---|\n",
    ));
    print!("{}", table.lock().expect("table"));
    let row = |cluster: &TestCluster| {
        let line = format!(
            "| {:>4} s | {:.1} | {} | {} | {} | {} | {} |",
            started.elapsed().as_secs(),
            rss_kib() as f64 / 1024.0,
            tasks(),
            cluster.api().open_watches(),
            cluster.pods().iter().filter(|p| p.is_running()).count(),
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        );
        println!("{line}");
        table.lock().expect("table").push_str(&(line + "\n"));
    };
    row(&cluster);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut live: Vec<String> = cluster
        .pods()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    let mut dead: Vec<String> = Vec::new();
    let mut step = 0u64;
    while started.elapsed() < duration {
        tick.tick().await;
        step += 1;
        if !churn {
            if step.is_multiple_of(30) {
                row(&cluster);
            }
            continue;
        }
        match step % 3 {
            // A deleted Pod comes back (same server, same IP, new Pod object).
            0 if !dead.is_empty() => {
                let name = dead.remove(0);
                let pod = cluster.pod(&name).expect("known pod");
                pod.restart().await?;
                cluster
                    .register_pod(&name, labels(), pod.addr().ip())
                    .await?;
                live.push(name);
            }
            // The oldest Pod is deleted and its server killed (down to 4 Pods).
            1 if live.len() > 4 => {
                let name = live.remove(0);
                cluster.delete_pod(&name, 0).await?;
                cluster.pod(&name).expect("known pod").kill().await;
                dead.push(name);
            }
            // A Pod's readiness flips off and on.
            _ => {
                let name = live[step as usize % live.len()].clone();
                cluster.set_ready(&name, false).await?;
                cluster.set_ready(&name, true).await?;
            }
        }
        if step.is_multiple_of(30) {
            row(&cluster);
        }
    }
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
    row(&cluster);
    anyhow::ensure!(
        workers_n == 0 || ok.load(Ordering::Relaxed) > 0,
        "no request succeeded"
    );
    if churn && workers_n > 0 && minutes >= 10 {
        write_results(minutes, &table.lock().expect("table"))?;
    }
    Ok(())
}

/// Replaces the "## Soak" section of `benches/RESULTS.md` (the ClusterIP harness keeps it).
fn write_results(minutes: u64, table: &str) -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let kept = old.find("\n## Soak").map_or(old.as_str(), |at| &old[..at]);
    let date = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC");
    let section = format!(
        "\n## Soak\n\n`cargo bench --bench soak` ({minutes} minutes, release build, {date}): four \
         workers send requests back to back through the Mesh while every second a Pod is deleted \
         and killed, brought back, or flips readiness. The process also hosts the test API server \
         (watch history 500 events) and the Pod servers.\n\n{table}"
    );
    std::fs::write(&path, format!("{}\n{section}", kept.trim_end()))?;
    println!("wrote {}", path.display());
    Ok(())
}
