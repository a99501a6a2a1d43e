//! Network namespaces, veth pairs and the bridge, through `ip` (iproute2).
//!
//! Layout: the *client* namespace holds a bridge `br0` (10.244.0.1/16, plus a route for the
//! Service range 10.96.0.0/12) and runs the API server, the kube-proxy equivalent and the
//! load. Each Pod is a namespace with `eth0` (10.244.x.y/16) whose veth peer is enslaved to
//! `br0`. Every name starts with this run's prefix `rdr-<pid>-`; deleting the namespaces
//! removes the links and the iptables rules inside them, so nothing outside is touched.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The prefix of everything one run creates.
pub(crate) fn prefix(run: u32) -> String {
    format!("rdr-{run}-")
}

/// Runs `ip` with `args`; an error names the command and its stderr.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Checks what the harness needs, with a message saying what is missing.
pub(crate) fn preflight() -> anyhow::Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        bail!("the ClusterIP harness needs root (network namespaces and iptables); run it as root");
    }
    for tool in ["ip", "iptables", "iptables-restore", "nft"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success() || tool == "ip");
        if !found {
            bail!(
                "`{tool}` not found: install iproute2, iptables and nftables (Debian: apt-get install iproute2 iptables nftables)"
            );
        }
    }
    Ok(())
}

/// Creates the client namespace with its bridge.
pub(crate) fn client(prefix: &str) -> anyhow::Result<String> {
    let ns = format!("{prefix}client");
    ip(&["netns", "add", &ns])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &ns, "addr", "add", "10.244.0.1/16", "dev", "br0"])?;
    ip(&["-n", &ns, "link", "set", "br0", "up"])?;
    // ClusterIPs must be routable before the DNAT rewrites them (as on a node).
    ip(&["-n", &ns, "route", "add", "10.96.0.0/12", "dev", "br0"])?;
    // The no-keep-alive scenario opens thousands of connections per second to one
    // address: reuse TIME_WAIT ports and use the whole range, as a busy node would, so it
    // measures connection set-up and not port exhaustion. These sysctls are per namespace.
    for setting in [
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65000",
    ] {
        run("ip", &["netns", "exec", &ns, "sysctl", "-q", "-w", setting])?;
    }
    Ok(ns)
}

/// Creates Pod namespace number `n` (address 10.244.x.y) wired to the client's bridge;
/// returns its name and address. Called from inside the client namespace.
pub(crate) fn pod(prefix: &str, n: u16) -> anyhow::Result<(String, std::net::Ipv4Addr)> {
    let ns = format!("{prefix}pod{n}");
    let addr = std::net::Ipv4Addr::new(10, 244, (n / 250) as u8, (n % 250 + 2) as u8);
    let host_end = format!("veth{n}");
    ip(&["netns", "add", &ns])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip(&["link", "set", &host_end, "master", "br0", "up"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{addr}/16"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    Ok((ns, addr))
}

/// Deletes every namespace whose name starts with `prefix` (all of them for `rdr-`), killing
/// what runs inside first. Never fails: cleanup must always get as far as it can.
pub(crate) fn cleanup(prefix: &str) -> usize {
    let list = Command::new("ip").args(["netns", "list"]).output();
    let Ok(list) = list else { return 0 };
    let mut removed = 0;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                if pid != std::process::id().to_string() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        if ip(&["netns", "del", name]).is_ok() {
            removed += 1;
        }
    }
    removed
}
