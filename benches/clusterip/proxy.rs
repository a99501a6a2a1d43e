//! A kube-proxy equivalent for the client namespace: it watches Services and
//! EndpointSlices through the same API server and programs NAT the way kube-proxy does, in
//! either of its Linux modes, at most once per minimum sync period (kube-proxy's default:
//! 1 s):
//!
//! - iptables: `KUBE-SERVICES` → `KUBE-SVC-*` with `statistic --mode random --probability`
//!   rules → `KUBE-SEP-*` DNAT, written whole with `iptables-restore`: every new
//!   connection walks the Service list rule by rule;
//! - nftables (the mode kube-proxy now recommends): one table with a verdict map from
//!   `address . protocol . port` to a Service chain, which picks an endpoint chain with
//!   `numgen random mod N`, written whole with `nft -f`: one map lookup per connection,
//!   whatever the number of Services.
//!
//! Both run side by side: the nftables proxy serves the Services at [`Backend::Nftables`]'s
//! address instead of their ClusterIP, so the two never handle the same packets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

/// A Service's VIP and its ready endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) vip: String,
    pub(crate) port: u16,
    pub(crate) endpoints: Vec<String>,
}

/// What the proxy has done.
#[derive(Debug, Default)]
pub(crate) struct ProxyStats {
    /// `iptables-restore` runs.
    pub(crate) syncs: AtomicU64,
    /// Milliseconds after the proxy started of the last sync.
    pub(crate) last_sync_ms: AtomicU64,
    /// Woken after every sync.
    pub(crate) synced: Notify,
}

impl ProxyStats {
    /// Waits (at most `bound`) until the proxy has synced more than `before` times.
    pub(crate) async fn wait_past(&self, before: u64, bound: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(bound, async {
            loop {
                let woken = self.synced.notified();
                if self.syncs.load(Ordering::Relaxed) > before {
                    return;
                }
                woken.await;
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("the proxy did not sync within {bound:?}"))
    }
}

/// A short stable chain suffix, as kube-proxy's hashed names.
fn chain_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// The `iptables-restore` input for `rules` (plus `dummies` extra Services with one
/// endpoint each, listed first so the real Services sit at the end of `KUBE-SERVICES`).
pub(crate) fn render(
    rules: &BTreeMap<String, Rule>,
    dummies: u32,
    stale: &std::collections::BTreeSet<String>,
) -> (String, std::collections::BTreeSet<String>) {
    let mut names = std::collections::BTreeSet::new();
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut body = String::new();
    let mut add_service = |name: &str, rule: &Rule| {
        let svc = format!("KUBE-SVC-{}", chain_hash(name));
        let _ = writeln!(chains, ":{svc} - [0:0]");
        names.insert(svc.clone());
        let _ = writeln!(
            body,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport {} -j {svc}",
            rule.vip, rule.port
        );
        let n = rule.endpoints.len();
        for (i, ep) in rule.endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}", chain_hash(&format!("{name}/{ep}")));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            names.insert(sep.clone());
            if i + 1 < n {
                let p = 1.0 / (n - i) as f64;
                let _ = writeln!(
                    body,
                    "-A {svc} -m statistic --mode random --probability {p:.10} -j {sep}"
                );
            } else {
                let _ = writeln!(body, "-A {svc} -j {sep}");
            }
            let _ = writeln!(body, "-A {sep} -p tcp -m tcp -j DNAT --to-destination {ep}");
        }
    };
    for d in 0..dummies {
        let rule = Rule {
            vip: format!("10.97.{}.{}", d / 250, d % 250 + 1),
            port: 80,
            endpoints: vec![format!("10.245.{}.{}:8080", d / 250, d % 250 + 1)],
        };
        add_service(&format!("dummy/{d}"), &rule);
    }
    for (name, rule) in rules {
        add_service(name, rule);
    }
    // Chains of endpoints and Services that are gone: flushed, then deleted.
    for gone in stale.difference(&names) {
        let _ = writeln!(chains, ":{gone} - [0:0]");
        let _ = writeln!(body, "-X {gone}");
    }
    (chains + &body + "COMMIT\n", names)
}

/// Which of kube-proxy's modes to program.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    /// iptables NAT chains at each Service's ClusterIP.
    Iptables,
    /// An nftables table; Services are served at `vip` (one Service port) instead of their
    /// ClusterIP.
    Nftables { vip: String },
}

/// The nftables table this proxy owns (replaced whole on every sync).
const NFT_TABLE: &str = "rudder-kube-proxy";

/// The `nft -f` input for `rules` at `vip`, plus `dummies` extra Services in the map.
pub(crate) fn render_nft(rules: &BTreeMap<String, Rule>, dummies: u32, vip: &str) -> String {
    let mut elements = Vec::new();
    let mut chains = String::new();
    let mut add_service = |id: usize, rule: &Rule, vip: &str| {
        elements.push(format!("{vip} . tcp . {} : goto svc-{id}", rule.port));
        let n = rule.endpoints.len();
        if n == 0 {
            // No endpoint: reject, as kube-proxy does.
            let _ = writeln!(chains, "  chain svc-{id} {{ reject; }}");
            return;
        }
        let picks: Vec<String> = (0..n).map(|i| format!("{i} : goto ep-{id}-{i}")).collect();
        let _ = writeln!(
            chains,
            "  chain svc-{id} {{ numgen random mod {n} vmap {{ {} }}; }}",
            picks.join(", ")
        );
        for (i, ep) in rule.endpoints.iter().enumerate() {
            let _ = writeln!(
                chains,
                "  chain ep-{id}-{i} {{ meta l4proto tcp dnat to {ep}; }}"
            );
        }
    };
    let mut id = 0;
    for d in 0..dummies {
        let rule = Rule {
            vip: format!("10.97.{}.{}", d / 250, d % 250 + 1),
            port: 80,
            endpoints: vec![format!("10.245.{}.{}:8080", d / 250, d % 250 + 1)],
        };
        add_service(id, &rule, &rule.vip);
        id += 1;
    }
    for rule in rules.values() {
        add_service(id, rule, vip);
        id += 1;
    }
    format!(
        "table ip {NFT_TABLE}
delete table ip {NFT_TABLE}
table ip {NFT_TABLE} {{
  map service-ips {{
    type ipv4_addr . inet_proto . inet_service : verdict
{}  }}
  chain nat-output {{
    type nat hook output priority -100; policy accept;
    ip daddr . meta l4proto . th dport vmap @service-ips
  }}
{chains}}}
",
        if elements.is_empty() {
            String::new()
        } else {
            format!(
                "    elements = {{ {} }}
",
                elements.join(", ")
            )
        }
    )
}

/// Runs `program args` with `input` on its standard input; its stderr on failure.
fn pipe(program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Applies `input` with `nft -f -` (one transaction).
fn nft(input: &str) -> anyhow::Result<()> {
    pipe("nft", &["-f", "-"], input)
}

/// Writes `input` with `iptables-restore --noflush` (only the chains named are replaced).
fn restore(input: &str) -> anyhow::Result<()> {
    pipe("iptables-restore", &["--noflush"], input)
}

/// Hooks `KUBE-SERVICES` into `OUTPUT` (traffic from this namespace's own sockets).
pub(crate) fn install() -> anyhow::Result<()> {
    restore("*nat\n:KUBE-SERVICES - [0:0]\n-A OUTPUT -j KUBE-SERVICES\nCOMMIT\n")
}

/// Runs the proxy until the task is dropped: watches, and syncs at most once per
/// `min_sync`.
pub(crate) async fn run(
    client: kube::Client,
    namespace: String,
    min_sync: Duration,
    dummies: u32,
    backend: Backend,
    stats: Arc<ProxyStats>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let slices: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let dirty = Arc::new(Notify::new());
    let state: Arc<State> = Arc::new(std::sync::Mutex::new(Cache::default()));
    let watch_services = {
        let (dirty, state) = (dirty.clone(), state.clone());
        // With backoff, as kube-proxy: a failing watch waits between attempts (and so
        // yields, which lets an aborted proxy stop) instead of retrying in a tight loop.
        watcher::watcher(services, watcher::Config::default())
            .default_backoff()
            .for_each(move |ev| {
                apply(
                    &state,
                    ev,
                    |st| &mut st.services,
                    |st| st.services_synced = true,
                );
                dirty.notify_one();
                std::future::ready(())
            })
    };
    let watch_slices = {
        let (dirty, state) = (dirty.clone(), state.clone());
        watcher::watcher(slices, watcher::Config::default())
            .default_backoff()
            .for_each(move |ev| {
                apply(
                    &state,
                    ev,
                    |st| &mut st.slices,
                    |st| st.slices_synced = true,
                );
                dirty.notify_one();
                std::future::ready(())
            })
    };
    let sync = async {
        let mut last: Option<BTreeMap<String, Rule>> = None;
        let mut chains = std::collections::BTreeSet::new();
        loop {
            dirty.notified().await;
            let rules = {
                let st = state.lock().expect("proxy state");
                // Like kube-proxy, write nothing before both initial lists are in.
                if !(st.services_synced && st.slices_synced) {
                    continue;
                }
                rules_of(&st.services, &st.slices)
            };
            if last.as_ref() != Some(&rules) {
                match &backend {
                    Backend::Iptables => {
                        let (input, names) = render(&rules, dummies, &chains);
                        restore(&input)?;
                        chains = names;
                    }
                    Backend::Nftables { vip } => nft(&render_nft(&rules, dummies, vip))?,
                }
                stats.syncs.fetch_add(1, Ordering::Relaxed);
                stats
                    .last_sync_ms
                    .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                stats.synced.notify_waiters();
                last = Some(rules);
            }
            tokio::time::sleep(min_sync).await;
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    };
    tokio::select! {
        _ = watch_services => bail!("service watch ended"),
        _ = watch_slices => bail!("slice watch ended"),
        r = sync => r,
    }
}

/// What the proxy has seen.
#[derive(Default)]
struct Cache {
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
    services_synced: bool,
    slices_synced: bool,
}

type State = std::sync::Mutex<Cache>;

fn apply<K: kube::Resource>(
    state: &State,
    ev: Result<watcher::Event<K>, watcher::Error>,
    map: impl Fn(&mut Cache) -> &mut BTreeMap<String, K>,
    synced: impl Fn(&mut Cache),
) {
    let Ok(ev) = ev else { return };
    let mut st = state.lock().expect("proxy state");
    let name = |o: &K| o.meta().name.clone().unwrap_or_default();
    match ev {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
            map(&mut st).insert(name(&o), o);
        }
        watcher::Event::Delete(o) => {
            map(&mut st).remove(&name(&o));
        }
        watcher::Event::Init => {}
        watcher::Event::InitDone => synced(&mut st),
    }
}

/// Ready endpoints per Service port with a ClusterIP, as kube-proxy selects them.
fn rules_of(
    services: &BTreeMap<String, Service>,
    slices: &BTreeMap<String, EndpointSlice>,
) -> BTreeMap<String, Rule> {
    let mut rules = BTreeMap::new();
    for (name, svc) in services {
        let Some(spec) = &svc.spec else { continue };
        let Some(vip) = spec
            .cluster_ip
            .clone()
            .filter(|ip| ip != "None" && !ip.is_empty())
        else {
            continue;
        };
        for port in spec.ports.iter().flatten() {
            let mut endpoints = Vec::new();
            for slice in slices.values() {
                let owner = slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"));
                if owner != Some(name) {
                    continue;
                }
                let target = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
                    .and_then(|p| p.port);
                let Some(target) = target else { continue };
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if ready && let Some(addr) = ep.addresses.first() {
                        endpoints.push(format!("{addr}:{target}"));
                    }
                }
            }
            endpoints.sort();
            rules.insert(
                format!("{name}:{}", port.port),
                Rule {
                    vip: vip.clone(),
                    port: port.port as u16,
                    endpoints,
                },
            );
        }
    }
    rules
}
