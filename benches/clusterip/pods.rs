//! Pods as processes: each runs this harness with `--pod` inside its own network namespace
//! (a `rudder-testkit` PodServer on 10.244.x.y:8080) and takes commands on stdin
//! (`latency <ms>`); closing stdin or killing it ends it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use rudder_testkit::{PodServer, TestCluster};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::netns;

/// The Pod side: serve until stdin closes.
pub(crate) async fn serve(name: &str, addr: &str, labels: &str) -> anyhow::Result<()> {
    let ip: IpAddr = addr.parse().context("pod address")?;
    let labels: BTreeMap<String, String> = labels
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let server = PodServer::start(name, ip, 8080, labels).await?;
    println!("ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(ms) = line.strip_prefix("latency ") {
            server.set_latency(Duration::from_millis(ms.trim().parse()?));
            println!("ok");
        }
    }
    Ok(())
}

/// One running Pod.
pub(crate) struct Pod {
    pub(crate) name: String,
    pub(crate) ip: Ipv4Addr,
    child: Child,
    /// The Pod's answers to commands.
    answers: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Pod {
    /// Sets the Pod's added latency.
    pub(crate) async fn set_latency(&mut self, ms: u64) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("pod stdin")?;
        stdin
            .write_all(format!("latency {ms}\n").as_bytes())
            .await?;
        stdin.flush().await?;
        // The Pod answers `ok` once the knob is set.
        let answer = tokio::time::timeout(Duration::from_secs(10), self.answers.next_line()).await;
        match answer {
            Ok(Ok(Some(l))) if l == "ok" => Ok(()),
            other => bail!("pod {} did not take the latency: {other:?}", self.name),
        }
    }
}

/// The Pods of the benchmark Service.
pub(crate) struct Pods {
    prefix: String,
    next: u16,
    pub(crate) running: Vec<Pod>,
}

impl Pods {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            next: 1,
            running: Vec::new(),
        }
    }

    /// Starts a Pod with `labels` and registers it with the API server.
    pub(crate) async fn add(
        &mut self,
        cluster: &TestCluster,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<&Pod> {
        let n = self.next;
        self.next += 1;
        let (ns, ip) = netns::pod(&self.prefix, n)?;
        let name = format!("bench-{n}");
        let label_arg = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let exe = std::env::current_exe()?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(exe)
            .args(["--pod", &name, &ip.to_string(), &label_arg])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a pod process")?;
        let stdout = child.stdout.take().context("pod stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        match ready {
            Ok(Ok(Some(l))) if l == "ready" => {}
            other => bail!("pod {name} did not start: {other:?}"),
        }
        let map: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cluster.register_pod(&name, map, IpAddr::V4(ip)).await?;
        if let (Some(pid), Ok(mut pids)) = (child.id(), crate::load::POD_PIDS.lock()) {
            pids.insert(pid);
        }
        if let Ok(mut addrs) = crate::load::POD_ADDRS.lock() {
            addrs.insert(ip);
        }
        self.running.push(Pod {
            name,
            ip,
            child,
            answers: lines,
        });
        Ok(self.running.last().expect("just pushed"))
    }

    /// Kills a Pod abruptly (its connections die with the process) and deletes it from the
    /// API at once, as when a node loses a Pod.
    pub(crate) async fn kill(&mut self, cluster: &TestCluster, name: &str) -> anyhow::Result<()> {
        let i = self
            .running
            .iter()
            .position(|p| p.name == name)
            .context("no such pod")?;
        let mut pod = self.running.remove(i);
        if let (Some(pid), Ok(mut pids)) = (pod.child.id(), crate::load::POD_PIDS.lock()) {
            pids.remove(&pid);
        }
        if let Ok(mut addrs) = crate::load::POD_ADDRS.lock() {
            addrs.remove(&pod.ip);
        }
        pod.child.kill().await?;
        // A Pod already deleted (a graceful deletion the API server completed) is gone,
        // which is what this wants.
        if let Err(e) = cluster.delete_pod(name, 0).await
            && !e.to_string().contains("NotFound")
        {
            return Err(e.into());
        }
        let _ = netns::ip(&["netns", "del", &format!("{}pod{}", self.prefix, &name[6..])]);
        Ok(())
    }

    /// Retires a Pod the way a rolling update does: deleted with a grace period (its
    /// endpoint turns terminating and leaves the ready set while the process still
    /// serves), `drain` later the process exits and the Pod is gone.
    pub(crate) async fn retire(
        &mut self,
        cluster: &TestCluster,
        name: &str,
        drain: std::time::Duration,
    ) -> anyhow::Result<()> {
        cluster.delete_pod(name, 30).await?;
        tokio::time::sleep(drain).await;
        self.kill(cluster, name).await
    }

    /// Kills every Pod after the first `keep`.
    pub(crate) async fn truncate(
        &mut self,
        cluster: &TestCluster,
        keep: usize,
    ) -> anyhow::Result<()> {
        while self.running.len() > keep {
            let name = self.running.last().expect("non-empty").name.clone();
            self.kill(cluster, &name).await?;
        }
        Ok(())
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.running.iter().map(|p| p.name.clone()).collect()
    }
}
