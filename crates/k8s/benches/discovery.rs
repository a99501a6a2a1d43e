//! Discovery at scale, on loopback against the `rudder-testkit` API server:
//!
//! 1. initial sync of a Service with 10,000 endpoints in 100 EndpointSlices (subscribe →
//!    first snapshot), fresh `Discovery` each round;
//! 2. API write → routing pool swapped (p50/p99) when one endpoint of one slice changes
//!    readiness in that 10,000-endpoint Service (the write is a JSON patch of that
//!    endpoint's conditions; it runs on its own task, so its response is not on the timed
//!    path), with the write's own round trip beside it, the time from the event reaching
//!    a second watching client to the snapshot (discovery's own part), and the time to
//!    swap a routing pool (two configured subsets) to the snapshot;
//! 3. the pure cost of rebuilding the 10,000-endpoint set (what one slice update costs
//!    discovery besides I/O), and of rebuilding a 100-endpoint set for comparison;
//!    and of rebuilding it when every Pod is known with four labels; decoding one
//!    100-endpoint slice as discovery does (`LeanSlice`) and as `k8s_openapi` does;
//! 4. memory per endpoint of a published snapshot (RSS growth over many snapshots),
//!    without and with Pod labels, and of the slices discovery keeps between updates;
//! 5. API write → routing pool swapped when one Pod of a 10,000-endpoint Service whose
//!    Pods are watched (for label subsets) changes a label.
//!
//! `cargo bench -p rudder-k8s --bench discovery` (add `-- --quick` for fewer rounds, or
//! `-- --updates-only` to run part 2 alone, 1,000 updates, e.g. under `perf record`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rudder_k8s::{Discovery, convert};
use rudder_testkit::ApiServer;
use serde_json::json;

const SLICES: usize = 100;
const PER_SLICE: usize = 100;

fn slice_json(i: usize, ready_first: bool) -> serde_json::Value {
    service_slice_json("big", i, ready_first)
}

/// Slice `i` of Service `svc`: endpoint `j` is Pod `{svc}-{i}-{j}` at [`pod_ip`].
fn service_slice_json(svc: &str, i: usize, ready_first: bool) -> serde_json::Value {
    let endpoints: Vec<_> = (0..PER_SLICE)
        .map(|j| {
            let ready = j != 0 || ready_first;
            json!({"addresses": [pod_ip(i, j)],
                   "conditions": {"ready": ready, "serving": ready, "terminating": false},
                   "targetRef": {"kind": "Pod", "name": format!("{svc}-{i}-{j}"), "namespace": "default"},
                   "nodeName": "node-a", "zone": "zone-a"})
        })
        .collect();
    json!({"metadata": {"name": format!("{svc}-{i:03}"), "labels": {
            "kubernetes.io/service-name": svc, "endpointslice.kubernetes.io/managed-by": "bench"}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints})
}

fn pod_ip(i: usize, j: usize) -> String {
    format!("10.{}.{}.{}", 100 + i / 250, i % 250, j + 1)
}

/// What the second watch decodes of each slice: its metadata only. It is an instrument
/// (it stamps when an event reaches a client), so it skips the endpoints rather than
/// decode them into `k8s_openapi`'s types: that took about 0.2 ms of CPU per event on
/// the same two cores as the discovery being measured.
#[derive(Clone, Debug, serde::Deserialize)]
struct SliceStamp {
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
}

impl k8s_openapi::Resource for SliceStamp {
    const API_VERSION: &'static str = <EndpointSlice as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <EndpointSlice as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <EndpointSlice as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <EndpointSlice as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <EndpointSlice as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for SliceStamp {
    type Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn metadata(&self) -> &Self::Ty {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut Self::Ty {
        &mut self.metadata
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The mean time of one of `rounds` calls of `f`.
fn per_round<T>(rounds: u32, mut f: impl FnMut() -> T) -> Duration {
    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(f());
    }
    t.elapsed() / rounds
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let updates_only = std::env::args().any(|a| a == "--updates-only");
    let (sync_rounds, update_rounds) = match (quick, updates_only) {
        (_, true) => (0, 1000),
        (true, _) => (2, 40),
        _ => (5, 200),
    };
    // The server keeps the last 200 events, not its default 10,000: in a long-running API
    // server the history wraps and a new version reuses the memory of one it forgot. With
    // every one of this run's ~1,100 versions kept, each write's copy of its slice landed
    // on freshly faulted pages (the server's part of write → event p50 ~0.7 ms against
    // ~0.55 ms). Every watch here follows live, far closer than 200 events behind.
    let server = ApiServer::builder()
        .controllers(false)
        .history(200)
        .start()
        .await?;
    let client = server.client().await?;
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "big"}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    )?;
    services.create(&PostParams::default(), &svc).await?;
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    for i in 0..SLICES {
        slices
            .create(
                &PostParams::default(),
                &serde_json::from_value(slice_json(i, true))?,
            )
            .await?;
    }
    println!("| measurement | value |\n|---|---|");

    // 1. Initial sync.
    let mut syncs = Vec::new();
    for _ in 0..sync_rounds {
        let discovery = Discovery::new(server.client().await?);
        let t = Instant::now();
        let mut sub = discovery.subscribe_str("big")?;
        let set = sub.synced(Duration::from_secs(60)).await?;
        syncs.push(t.elapsed());
        assert_eq!(set.len(), SLICES * PER_SLICE);
    }
    syncs.sort();
    if !updates_only {
        println!(
            "| initial sync, 10,000 endpoints in 100 slices (median of {sync_rounds}) | {:.1} ms |",
            percentile(&syncs, 0.5).as_secs_f64() * 1e3
        );
    }

    // 2. Write → snapshot latency.
    let discovery = Discovery::new(client.clone());
    let mut sub = discovery.subscribe_str("big")?;
    sub.synced(Duration::from_secs(60)).await?;
    let mut lat = Vec::new();
    let mut writes = Vec::new();
    let mut swaps = Vec::new();
    let mut teardowns = Vec::new();
    // The routing pool a Mesh keeps for the Service (two configured subsets), updated with
    // each new snapshot as the Mesh's updater does.
    let subsets: Vec<rudder_balance::Selector> =
        vec!["version=4.1".parse()?, "version=4.2".parse()?];
    let pool = rudder_balance::Pool::new(
        rudder_balance::PoolConfig {
            selectors: subsets,
            ..Default::default()
        },
        sub.current(),
        |e| e.addr(),
    );
    let mut retired = rudder_balance::Retired::new();
    // A second client watching the same slices stamps when each event reaches a client:
    // the server sends it to both watches at once, so the time from there to the new
    // snapshot is discovery's own.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    let raw = tokio::spawn({
        let slices: Api<SliceStamp> = Api::default_namespaced(client.clone());
        async move {
            use futures::StreamExt;
            use kube::runtime::watcher::Event;
            let config =
                kube::runtime::watcher::Config::default().labels("kubernetes.io/service-name=big");
            let mut events = std::pin::pin!(kube::runtime::watcher(slices, config));
            let mut listed_tx = Some(listed_tx);
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::Apply(s)) => {
                        let _ = arrived_tx.send((s.metadata.resource_version, Instant::now()));
                    }
                    Ok(Event::InitDone) => {
                        if let Some(tx) = listed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
            }
        }
    });
    // The second watch's initial list (10,000 endpoints) keeps the server busy for tens of
    // milliseconds: the first write would wait behind it.
    listed.await?;
    let mut discovered = Vec::new();
    let mut to_event = Vec::new();
    let mut not_ready = 0;
    for round in 0..update_rounds {
        let i = round % SLICES;
        // Each slice's first endpoint goes NotReady in turn, then Ready again in turn.
        let ready = round % (2 * SLICES) >= SLICES;
        not_ready = if ready { not_ready - 1 } else { not_ready + 1 };
        let expected = SLICES * PER_SLICE - not_ready;
        // A JSON patch of the one endpoint's conditions, as `kubectl patch --type=json`
        // sends it: encoding and decoding a whole 100-endpoint slice is the writer's cost,
        // not the one measured here (the event carries the whole slice all the same).
        let patch = serde_json::to_vec(&json!([{
            "op": "replace",
            "path": "/endpoints/0/conditions",
            "value": {"ready": ready, "serving": ready, "terminating": false},
        }]))?;
        let request = http::Request::patch(format!(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/big-{i:03}"
        ))
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(patch)?;
        // The write runs on its own task: its response is not on the path being timed (the
        // server sends the watch event before it answers, and on two cores the response
        // can wait behind the very processing this measures).
        let t = Instant::now();
        let write = tokio::spawn({
            let client = client.clone();
            async move {
                // Only the metadata of the answer is decoded: the resourceVersion is what
                // the second watch is matched by.
                #[derive(serde::Deserialize)]
                struct Written {
                    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
                }
                let written = client.request::<Written>(request).await;
                (written, t.elapsed())
            }
        });
        let swap = loop {
            let set = sub.changed().await;
            if set.routable().count() == expected {
                // As the Mesh's updater does: the entry list of the snapshot let go last
                // is patched into the new one.
                let swap = Instant::now();
                let spare = retired.take_spare();
                let replaced = pool.update_reusing(set, |e| e.addr(), spare);
                swaps.push(swap.elapsed());
                lat.push(t.elapsed());
                // Requests route by the new snapshot from the swap on; the old one is let
                // go after it (timed apart below).
                let teardown = Instant::now();
                retired.keep(replaced);
                teardowns.push(teardown.elapsed());
                break swap;
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err("update not observed within 30 s".into());
            }
        };
        let (written, took) = write.await?;
        let written = written?;
        writes.push(took);
        let event_at = loop {
            match arrived.recv().await {
                Some((rv, at)) if rv == written.metadata.resource_version => break at,
                Some(_) => {}
                None => return Err("the second watch ended".into()),
            }
        };
        discovered.push(swap.saturating_duration_since(event_at));
        to_event.push(event_at.saturating_duration_since(t));
    }
    raw.abort();
    // Event at a client → pool swapped, per round: discovery's part plus the swap.
    let mut event_to_pool: Vec<Duration> = discovered
        .iter()
        .zip(&swaps)
        .map(|(d, s)| *d + *s)
        .collect();
    lat.sort();
    writes.sort();
    swaps.sort();
    teardowns.sort();
    discovered.sort();
    to_event.sort();
    event_to_pool.sort();
    println!(
        "| watch event at a client → new snapshot (discovery's own), p50 / p99 | {:.0} µs / {:.0} µs |",
        percentile(&discovered, 0.5).as_secs_f64() * 1e6,
        percentile(&discovered, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "| watch event at a client → routing pool swapped, p50 / p99 | {:.0} µs / {:.0} µs |",
        percentile(&event_to_pool, 0.5).as_secs_f64() * 1e6,
        percentile(&event_to_pool, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "| API write → the watch event at a client (the test API server and the wire), p50 / p99 | {:.0} µs / {:.0} µs |",
        percentile(&to_event, 0.5).as_secs_f64() * 1e6,
        percentile(&to_event, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "| the write itself (PATCH round trip through the test API server), p50 / p99 | {:.2} ms / {:.2} ms |",
        percentile(&writes, 0.5).as_secs_f64() * 1e3,
        percentile(&writes, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| new snapshot → routing pool swapped (two subsets), p50 / p99 | {:.0} µs / {:.0} µs |",
        percentile(&swaps, 0.5).as_secs_f64() * 1e6,
        percentile(&swaps, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "| the replaced pool snapshot let go (`Retired::keep`), after the swap, p50 / p99 | {:.0} µs / {:.0} µs |",
        percentile(&teardowns, 0.5).as_secs_f64() * 1e6,
        percentile(&teardowns, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "| API write → routing pool swapped (the write's response not awaited), p50 ({update_rounds} updates) | {:.2} ms |",
        percentile(&lat, 0.5).as_secs_f64() * 1e3
    );
    println!(
        "| API write → routing pool swapped, p99 | {:.2} ms |",
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );

    if updates_only {
        return Ok(());
    }

    // 3. Pure rebuild cost.
    let svc = services.get("big").await?;
    let all: Vec<convert::LeanSlice> = (0..SLICES)
        .map(|i| serde_json::from_value(slice_json(i, true)))
        .collect::<Result<_, _>>()?;
    let pods = BTreeMap::new();
    let clock = std::sync::Arc::new(rudder_balance::SyncClock::new());
    for (label, n) in [
        ("10,000 endpoints (100 slices)", SLICES),
        ("100 endpoints (1 slice)", 1),
    ] {
        let rounds = if n == 1 { 2000 } else { 50 };
        let per = per_round(rounds, || {
            convert::from_slices(Some(&svc), None, &all[..n], &pods, &clock)
        });
        println!(
            "| full snapshot rebuild (pure `convert::from_slices`), {label} | {:.1} µs ({:.0} ns/endpoint) |",
            per.as_secs_f64() * 1e6,
            per.as_nanos() as f64 / (n * PER_SLICE) as f64
        );
    }

    // During a rollout many endpoints are not ready: each publish copies the list of those
    // (for views), every slice's, and drops the list before. Here 1,000 of 10,000.
    let rolling: Vec<convert::LeanSlice> = (0..SLICES)
        .map(|i| {
            let mut slice = slice_json(i, true);
            for (j, ep) in slice["endpoints"]
                .as_array_mut()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if j % 10 == 0 {
                    ep["conditions"] =
                        json!({"ready": false, "serving": false, "terminating": false});
                }
            }
            serde_json::from_value(slice)
        })
        .collect::<Result<_, _>>()?;
    let rolled = convert::from_slices(Some(&svc), None, &rolling, &pods, &clock);
    assert_eq!(rolled.unroutable().len(), SLICES * PER_SLICE / 10);
    let per = per_round(500, || rolled.unroutable().to_vec());
    println!(
        "| the not-routable list each publish copies (and drops), 1,000 of 10,000 endpoints not ready | {:.1} µs |",
        per.as_secs_f64() * 1e6
    );

    // The same with every Pod known and carrying four labels, as a Deployment's Pods do
    // (what label subsets need): each endpoint's metadata takes its Pod's labels. Pods as
    // discovery keeps them (a hash map, equal label sets shared through `LabelSets`), and
    // as it kept them before (a `BTreeMap`, each Pod its own set) and half-way (a hash map,
    // each Pod its own set); alternated, so that all three see the same machine weather.
    let pod_named = |name: &str| -> Result<rudder_k8s::PodInfo, serde_json::Error> {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "big", "tier": "backend",
                "version": "4.2", "pod-template-hash": "7d4b9c8f6d"}}}))?;
        Ok(rudder_k8s::PodInfo::from_pod(&pod))
    };
    let names: Vec<String> = (0..SLICES)
        .flat_map(|i| (0..PER_SLICE).map(move |j| format!("big-{i}-{j}")))
        .collect();
    let labelled = names
        .iter()
        .map(|name| Ok((name.clone(), pod_named(name)?)))
        .collect::<Result<BTreeMap<_, _>, serde_json::Error>>()?;
    type Hashed =
        std::collections::HashMap<String, rudder_k8s::PodInfo, foldhash::fast::RandomState>;
    let own_sets: Hashed = labelled
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let shared_sets = {
        let mut sets = rudder_balance::LabelSets::new();
        let mut pods = Hashed::default();
        for name in &names {
            pods.insert(name.clone(), pod_named(name)?.with_labels_in(&mut sets));
        }
        pods
    };
    let (mut shared, mut hashed, mut tree) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let rebuild = |pods: &dyn Fn() -> rudder_balance::EndpointSet| per_round(10, pods);
        shared.push(rebuild(&|| {
            convert::from_slices(Some(&svc), None, &all, &shared_sets, &clock)
        }));
        hashed.push(rebuild(&|| {
            convert::from_slices(Some(&svc), None, &all, &own_sets, &clock)
        }));
        tree.push(rebuild(&|| {
            convert::from_slices(Some(&svc), None, &all, &labelled, &clock)
        }));
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        let m = percentile(&v, 0.5);
        format!(
            "{:.1} µs ({:.0} ns/endpoint)",
            m.as_secs_f64() * 1e6,
            m.as_nanos() as f64 / (SLICES * PER_SLICE) as f64
        )
    };
    println!(
        "| full snapshot rebuild, 10,000 endpoints whose Pods carry 4 labels (median of 5 × 10): Pods as discovery keeps them (hash map, equal label sets shared) / hash map, a set per Pod / `BTreeMap`, a set per Pod | {} / {} / {} |",
        median(shared),
        median(hashed),
        median(tree)
    );
    // What discovery keeps per Pod (the map entry, its name and its `PodInfo`), with
    // shared label sets and with one set per Pod: RSS growth over 10 × 10,000 Pods.
    // Both kept to the end of the run: memory given back would be reused by what is
    // measured next, and its growth would read low.
    let (mut per_pod, mut kept_pods) = (Vec::new(), Vec::new());
    for share in [true, false] {
        let before = rss_bytes();
        let mut sets = rudder_balance::LabelSets::new();
        let held: Vec<Hashed> = (0..10)
            .map(|_| {
                names
                    .iter()
                    .map(|name| {
                        let pod = pod_named(name)?;
                        let pod = if share {
                            pod.with_labels_in(&mut sets)
                        } else {
                            pod
                        };
                        Ok((name.clone(), pod))
                    })
                    .collect::<Result<_, serde_json::Error>>()
            })
            .collect::<Result<_, _>>()?;
        per_pod.push(rss_bytes().saturating_sub(before) as f64 / (10 * names.len()) as f64);
        kept_pods.push(std::hint::black_box(held));
    }
    println!(
        "| memory per Pod discovery keeps (4 labels; RSS growth over 10 × 10,000 Pods), equal label sets shared / a set per Pod | {:.0} bytes / {:.0} bytes |",
        per_pod[0], per_pod[1]
    );

    // Decoding one slice as discovery does and as `k8s_openapi` does, from the same bytes:
    // the 100-endpoint slice captured from a real API server, and a slice of this bench.
    let captured = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testkit/tests/fixtures/objects/endpointslice-big-1-100eps.json"
    ))?;
    let generated = slice_json(0, true).to_string();
    for (label, text) in [("captured", &captured), ("generated", &generated)] {
        // Both decode (checked once); the timed rounds only decode.
        let lean: convert::LeanSlice = serde_json::from_str(text)?;
        serde_json::from_str::<EndpointSlice>(text)?;
        let lean_per = per_round(2000, || serde_json::from_str::<convert::LeanSlice>(text));
        let full_per = per_round(2000, || serde_json::from_str::<EndpointSlice>(text));
        println!(
            "| decoding one {}-endpoint slice ({label}), `LeanSlice` / `k8s_openapi` `EndpointSlice` | {:.1} µs / {:.1} µs ({:.2}×) |",
            lean.len(),
            lean_per.as_secs_f64() * 1e6,
            full_per.as_secs_f64() * 1e6,
            lean_per.as_secs_f64() / full_per.as_secs_f64()
        );
    }

    // 4. Memory per endpoint: keep many distinct snapshots alive and watch RSS grow.
    let keep = 20;
    // Each round's snapshots stay alive through the next, whose growth would otherwise
    // reuse their freed memory.
    let mut kept = Vec::new();
    for (label, pods) in [("", &pods), (", Pods with 4 labels", &labelled)] {
        let before = rss_bytes();
        let held: Vec<_> = (0..keep)
            .map(|_| convert::from_slices(Some(&svc), None, &all, pods, &clock))
            .collect();
        let after = rss_bytes();
        std::hint::black_box(&held);
        let per_ep = (after.saturating_sub(before)) as f64 / (keep * SLICES * PER_SLICE) as f64;
        println!(
            "| memory per endpoint in a snapshot{label} (RSS growth over {keep} × 10,000) | {per_ep:.0} bytes |"
        );
        kept.push(held);
    }
    // The same with topology hints on every endpoint (each hinted for its own zone, as
    // topology-aware routing writes them) and an `appProtocol` on the port: what discovery
    // keeps of these slices between updates, and what a snapshot made from them takes.
    let hinted_json: Vec<String> = (0..SLICES)
        .map(|i| {
            let mut slice = slice_json(i, true);
            slice["ports"][0]["appProtocol"] = json!("kubernetes.io/h2c");
            for ep in slice["endpoints"].as_array_mut().into_iter().flatten() {
                ep["hints"] = json!({"forZones": [{"name": "zone-a"}]});
            }
            slice.to_string()
        })
        .collect();
    let before = rss_bytes();
    let hinted: Vec<Vec<convert::LeanSlice>> = (0..keep)
        .map(|_| {
            hinted_json
                .iter()
                .map(|j| serde_json::from_str(j))
                .collect()
        })
        .collect::<Result<_, _>>()?;
    let hinted_bytes = rss_bytes().saturating_sub(before);
    let before = rss_bytes();
    let held: Vec<_> = (0..keep)
        .map(|_| convert::from_slices(Some(&svc), None, &hinted[0], &pods, &clock))
        .collect();
    let hinted_snapshots = rss_bytes().saturating_sub(before);
    assert!(
        held[0]
            .endpoints()
            .iter()
            .all(|e| !e.meta().zone_hints.is_empty())
    );
    println!(
        "| endpoints with a zone hint and an `appProtocol`: memory per endpoint of the cached slices (`LeanSlice`) / in a snapshot (RSS growth over {keep} × 10,000) | {:.0} bytes / {:.0} bytes |",
        hinted_bytes as f64 / (keep * SLICES * PER_SLICE) as f64,
        hinted_snapshots as f64 / (keep * SLICES * PER_SLICE) as f64
    );
    kept.push(held);
    std::hint::black_box(&hinted);

    // What discovery keeps of each slice between updates (a 10,000-endpoint Service: the
    // captured 100-endpoint slice, 100 times), as `LeanSlice` and as `EndpointSlice`.
    let mut cached = Vec::new();
    let before = rss_bytes();
    let lean: Vec<Vec<convert::LeanSlice>> = (0..keep)
        .map(|_| {
            (0..SLICES)
                .map(|_| serde_json::from_str(&captured))
                .collect()
        })
        .collect::<Result<_, _>>()?;
    let lean_bytes = rss_bytes().saturating_sub(before);
    cached.push(std::hint::black_box(lean));
    let before = rss_bytes();
    let full: Vec<Vec<EndpointSlice>> = (0..keep)
        .map(|_| {
            (0..SLICES)
                .map(|_| serde_json::from_str(&captured))
                .collect()
        })
        .collect::<Result<_, _>>()?;
    let full_bytes = rss_bytes().saturating_sub(before);
    std::hint::black_box(&full);
    let per = |bytes: u64| bytes as f64 / (keep * SLICES * PER_SLICE) as f64;
    println!(
        "| memory per endpoint of the cached slices, `LeanSlice` / `EndpointSlice` (RSS growth over {keep} × 10,000) | {:.0} bytes / {:.0} bytes |",
        per(lean_bytes),
        per(full_bytes)
    );
    drop((kept, cached, full));

    // 5. A Pod label change in a Service whose Pods are watched. The 10,000 Pods and their
    // slices are stored directly (creating them one by one through the API would take
    // most of the run); the label change itself is a PATCH through the API.
    let faults = server.faults();
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "labelled"},
        "spec": {"selector": {"app": "labelled"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))?;
    services.create(&PostParams::default(), &svc).await?;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::default_namespaced(client.clone());
    // One Pod made through the API, so the copies carry the defaults the API server adds
    // (a later PATCH must not seem to change the Pod's spec).
    let template = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "labelled-template", "labels": {"app": "other"}},
                "spec": {"containers": [{"name": "app", "image": "app"}]}}))?,
        )
        .await?;
    let mut template = serde_json::to_value(&template)?;
    if let Some(meta) = template["metadata"].as_object_mut() {
        meta.remove("uid");
        meta.remove("resourceVersion");
    }
    for i in 0..SLICES {
        for j in 0..PER_SLICE {
            let mut pod = template.clone();
            pod["metadata"]["name"] = json!(format!("labelled-{i}-{j}"));
            pod["metadata"]["labels"] = json!({"app": "labelled", "version": "4.1"});
            pod["status"] = json!({"phase": "Running", "podIP": pod_ip(i, j),
                "conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
            faults.put_unchecked("pods", "default", pod)?;
        }
        let mut slice = service_slice_json("labelled", i, true);
        slice["apiVersion"] = json!("discovery.k8s.io/v1");
        slice["kind"] = json!("EndpointSlice");
        slice["metadata"]["namespace"] = json!("default");
        faults.put_unchecked("endpointslices", "default", slice)?;
    }
    let mut sub = discovery.subscribe_str("labelled")?;
    let first = sub.synced(Duration::from_secs(60)).await?;
    assert_eq!(first.len(), SLICES * PER_SLICE);
    let pool = rudder_balance::Pool::new(
        rudder_balance::PoolConfig {
            selectors: vec!["version=4.1".parse()?, "version=4.2".parse()?],
            ..Default::default()
        },
        first,
        |e| e.addr(),
    );
    let mut relabel = Vec::new();
    let mut relabel_swaps = Vec::new();
    let relabel_rounds = update_rounds / 4;
    for round in 0..relabel_rounds {
        let (i, j) = ((round * 37) % SLICES, round % PER_SLICE);
        let addr: std::net::SocketAddr = format!("{}:8080", pod_ip(i, j)).parse()?;
        let t = Instant::now();
        pods.patch(
            &format!("labelled-{i}-{j}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"version": "4.2"}}})),
        )
        .await?;
        loop {
            let set = sub.changed().await;
            let eps = set.endpoints();
            let at = eps.partition_point(|e| e.addr() < addr);
            if eps[at].labels().get("version").map(String::as_str) == Some("4.2") {
                let swap = Instant::now();
                drop(pool.update(set, |e| e.addr()));
                relabel_swaps.push(swap.elapsed());
                relabel.push(t.elapsed());
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err("relabel not observed within 30 s".into());
            }
        }
    }
    relabel.sort();
    relabel_swaps.sort();
    println!(
        "| one Pod relabelled in a 10,000-endpoint Service (Pods watched): API write → routing pool swapped, p50 / p99 ({relabel_rounds} changes) | {:.2} ms / {:.2} ms |",
        percentile(&relabel, 0.5).as_secs_f64() * 1e3,
        percentile(&relabel, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| the same: new snapshot → routing pool swapped, p50 / p99 | {:.0} µs / {:.0} µs |",
        percentile(&relabel_swaps, 0.5).as_secs_f64() * 1e6,
        percentile(&relabel_swaps, 0.99).as_secs_f64() * 1e6
    );
    drop(kept_pods);
    drop(hinted);
    Ok(())
}
