//! Pick cost per balancer for 10 / 1,000 / 10,000 endpoints, against tower's
//! `p2c::Balance` over the same number of endpoints, plus subset lookup cost; all in one
//! run so the ratios compare like with like.
//!
//! `cargo bench -p rudder-balance --bench pick`

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::task::Poll;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rudder_balance::{
    Algorithm, Balancer, Endpoint, EndpointMeta, EndpointSet, Fallback, LoadTable, MetaBlock,
    Selector, ServiceState, SubsetIndex,
};

fn set(n: usize) -> Arc<EndpointSet> {
    set_with(n, None)
}

/// [`set`], each endpoint's labels taken from `sets` (as discovery keeps them: two label
/// sets between all the endpoints) rather than a set of its own.
fn set_with(n: usize, mut sets: Option<&mut rudder_balance::LabelSets>) -> Arc<EndpointSet> {
    // Metadata in blocks of 100, one per EndpointSlice, as discovery makes it.
    let blocks: Vec<MetaBlock> = (0..n.div_ceil(100))
        .map(|b| {
            (b * 100..n.min(b * 100 + 100))
                .map(|i| {
                    let labels = [
                        ("app".to_string(), "biz1".to_string()),
                        (
                            "version".to_string(),
                            if i % 10 == 0 { "4.2" } else { "4.1" }.to_string(),
                        ),
                    ]
                    .into_iter()
                    .collect();
                    let labels = match sets.as_deref_mut() {
                        Some(sets) => sets.share(labels),
                        None => labels,
                    };
                    EndpointMeta {
                        labels,
                        ..Default::default()
                    }
                })
                .collect::<Vec<_>>()
                .into()
        })
        .collect();
    let eps = (0..n)
        .map(|i| {
            Endpoint::new(
                format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256)
                    .parse()
                    .unwrap(),
            )
            .with_weight(1 + (i % 3) as u32)
            .with_meta_in(&blocks[i / 100], i % 100)
        })
        .collect();
    Arc::new(EndpointSet::new(ServiceState::Active, eps))
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [10usize, 1_000, 10_000] {
        let set = set(n);
        let index = SubsetIndex::new(set.clone(), []);
        let subset = index.all();
        let loads = LoadTable::default().for_set(&set);
        for (name, algorithm) in [
            ("p2c_peak_ewma", Algorithm::P2cPeakEwma),
            ("wrr", Algorithm::WeightedRoundRobin),
            ("least_requests", Algorithm::LeastRequests),
        ] {
            let b = Balancer::new(algorithm);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                bench.iter(|| black_box(b.pick(&subset, &loads)))
            });
        }
        let maglev = Balancer::new(Algorithm::Maglev);
        let key = rudder_balance::maglev::hash_key(b"user-42");
        subset.maglev();
        group.bench_with_input(BenchmarkId::new("maglev_keyed", n), &n, |bench, _| {
            bench.iter(|| black_box(maglev.pick_keyed(&subset, &loads, Some(black_box(key)))))
        });
        if n <= 1_000 {
            let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            let weights = vec![1u32; n];
            group.bench_with_input(BenchmarkId::new("maglev_table_build", n), &n, |bench, _| {
                bench.iter(|| black_box(rudder_balance::Maglev::new(&ids, &weights)))
            });
        }
        // tower: the same number of always-ready endpoints behind p2c::Balance with a
        // constant load, driven through poll_ready + call as a client would.
        let services: Vec<_> = (0..n)
            .map(|i| {
                tower::load::Constant::new(
                    tower::service_fn(|_: ()| async { Ok::<_, Infallible>(()) }),
                    i as u32 % 3,
                )
            })
            .collect();
        let mut balance =
            tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(services));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        use tower::Service;
        group.bench_with_input(BenchmarkId::new("tower_p2c", n), &n, |bench, _| {
            bench.iter(|| {
                let Poll::Ready(Ok(())) = balance.poll_ready(&mut cx) else {
                    panic!("tower balance not ready")
                };
                drop(black_box(balance.call(())));
            })
        });
    }
    group.finish();
}

fn subsets(c: &mut Criterion) {
    let mut group = c.benchmark_group("subset");
    let v42: Selector = "version=4.2".parse().unwrap();
    for n in [10usize, 1_000, 10_000] {
        let set = set(n);
        let index = SubsetIndex::new(set.clone(), [&v42]);
        group.bench_with_input(BenchmarkId::new("lookup_cached", n), &n, |bench, _| {
            bench.iter(|| black_box(index.subset(&v42, &Fallback::NoFallback).map(|p| p.len())))
        });
        group.bench_with_input(BenchmarkId::new("index_new_snapshot", n), &n, |bench, _| {
            bench.iter(|| black_box(SubsetIndex::new(set.clone(), [&v42])))
        });
        // A selector that was not configured, with the index's cache of such selectors
        // full (say, filled by hostile headers): every lookup matches the endpoints again.
        // With a label set per endpoint, and with the label sets shared as discovery keeps
        // them (matched once per set).
        let shared = set_with(n, Some(&mut rudder_balance::LabelSets::new()));
        for (name, set) in [
            ("lookup_uncached", &set),
            ("lookup_uncached_shared_labels", &shared),
        ] {
            let index = SubsetIndex::new(set.clone(), [&v42]);
            for i in 0..rudder_balance::subset::EXTRA_SUBSETS {
                let other: Selector = format!("version=x{i}").parse().unwrap();
                let _ = index.subset(&other, &Fallback::NoFallback);
            }
            let v41: Selector = "version=4.1".parse().unwrap();
            group.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                bench.iter(|| black_box(index.subset(&v41, &Fallback::NoFallback).map(|p| p.len())))
            });
        }
        group.bench_with_input(
            BenchmarkId::new("index_new_snapshot_shared_labels", n),
            &n,
            |bench, _| bench.iter(|| black_box(SubsetIndex::new(shared.clone(), [&v42]))),
        );
    }
    group.finish();
}

/// A request's whole balancing cost, like for like: Rudder's pool (snapshot borrowed,
/// subset lookup, weighted P2C pick, in-flight start, peak-EWMA record on response, end)
/// against tower's `p2c::Balance` over `PeakEwma` services (poll_ready, call, the response
/// future completing, which records the round trip), and the floor under both (`floor`).
fn pick_and_record(c: &mut Criterion) {
    use std::future::Future;
    use std::time::Duration;
    use tower::Service;

    let mut group = c.benchmark_group("pick_and_record");
    let everything = Selector::everything();
    for n in [10usize, 1_000, 10_000] {
        let set = set(n);
        let pool =
            rudder_balance::Pool::new(rudder_balance::PoolConfig::default(), set.clone(), |_| ());
        let one_request = |pool: &rudder_balance::Pool<()>| {
            let snapshot = pool.load();
            let subset = snapshot
                .subset(&everything, &Fallback::NoFallback)
                .expect("endpoints");
            let pos = pool.pick(&snapshot, &subset, None).expect("pick");
            let mut attempt = pool.start(&snapshot, pos);
            black_box(attempt.responded(false));
        };
        let request = || one_request(&pool);
        group.bench_with_input(BenchmarkId::new("rudder_pool_p2c", n), &n, |bench, _| {
            bench.iter(request)
        });
        // The same with every weight equal (most Services: no weight annotations, no
        // ramp): candidates are drawn by index, with no weight table to walk.
        let equal = Arc::new(EndpointSet::new(
            ServiceState::Active,
            set.endpoints()
                .iter()
                .map(|e| e.clone().with_weight(1))
                .collect(),
        ));
        let equal = rudder_balance::Pool::new(rudder_balance::PoolConfig::default(), equal, |_| ());
        group.bench_with_input(
            BenchmarkId::new("rudder_pool_p2c_equal_weights", n),
            &n,
            |bench, _| bench.iter(|| one_request(&equal)),
        );
        // The same request keeping its snapshot and subset (two reference counts), as the
        // Mesh does so a retry can pick again from them.
        let kept = || {
            let snapshot = pool.snapshot();
            let subset = snapshot
                .subset(&everything, &Fallback::NoFallback)
                .expect("endpoints")
                .into_owned();
            let pos = pool.pick(&snapshot, &subset, None).expect("pick");
            let mut attempt = pool.start(&snapshot, pos);
            black_box(attempt.responded(false));
        };
        group.bench_with_input(
            BenchmarkId::new("rudder_pool_p2c_kept", n),
            &n,
            |bench, _| bench.iter(kept),
        );
        // Both cores sending through one pool: what a request costs when every shared
        // counter it touches may be on the other core's cache. The time is per request
        // (wall time over both threads' requests). tower's `Balance` needs `&mut self`, so
        // it has no shared arm.
        group.bench_with_input(
            BenchmarkId::new("rudder_pool_p2c_two_threads", n),
            &n,
            |bench, _| bench.iter_custom(|iters| on_two_threads(iters, request)),
        );
        // The same with the snapshot and subset kept: their reference counts are shared
        // by both threads.
        group.bench_with_input(
            BenchmarkId::new("rudder_pool_p2c_kept_two_threads", n),
            &n,
            |bench, _| bench.iter_custom(|iters| on_two_threads(iters, kept)),
        );

        // The floor under any P2C + peak-EWMA pick and record on this machine: only what
        // every such balancer must do (a snapshot borrowed, two candidates drawn at
        // random and their loads read, the cheaper one's in-flight count up and down, two
        // clock readings, its estimate stored), with no weights, subsets, ejection or
        // ageing: a yardstick for how much the pool's own logic adds above.
        let floor_loads: Vec<Arc<FloorLoad>> = (0..n).map(|_| Arc::default()).collect();
        let floor_snapshot = arc_swap::ArcSwap::from_pointee(floor_loads);
        let clock = quanta::Clock::new();
        let seed = std::cell::Cell::new(1u64);
        group.bench_with_input(BenchmarkId::new("floor", n), &n, |bench, _| {
            bench.iter(|| floor_request(&floor_snapshot, &clock, &seed))
        });

        let services: Vec<_> = (0..n)
            .map(|_| {
                tower::load::PeakEwma::new(
                    tower::service_fn(|_: ()| async { Ok::<_, Infallible>(()) }),
                    Duration::from_millis(1),
                    Duration::from_secs(10).as_nanos() as f64,
                    tower::load::CompleteOnResponse::default(),
                )
            })
            .collect();
        let mut balance =
            tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(services));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        group.bench_with_input(
            BenchmarkId::new("tower_p2c_peak_ewma", n),
            &n,
            |bench, _| {
                bench.iter(|| {
                    let Poll::Ready(Ok(())) = balance.poll_ready(&mut cx) else {
                        panic!("tower balance not ready")
                    };
                    let mut response = std::pin::pin!(balance.call(()));
                    let Poll::Ready(Ok(r)) = response.as_mut().poll(&mut cx) else {
                        panic!("tower response not ready")
                    };
                    black_box(r);
                })
            },
        );
    }
    group.finish();
}

/// An endpoint's load as the floor arm of `pick_and_record` keeps it: the fields a peak-EWMA
/// P2C balancer reads and writes per request.
#[derive(Default)]
struct FloorLoad {
    in_flight: std::sync::atomic::AtomicU32,
    ewma: std::sync::atomic::AtomicU64,
    stamp: std::sync::atomic::AtomicU64,
}

/// One request of the floor arm (see `pick_and_record`).
fn floor_request(
    snapshot: &arc_swap::ArcSwap<Vec<Arc<FloorLoad>>>,
    clock: &quanta::Clock,
    seed: &std::cell::Cell<u64>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let loads = snapshot.load();
    let s = seed.get().wrapping_add(2);
    seed.set(s);
    let n = loads.len() as u64;
    let draw = |r: u64| &loads[((u128::from(splitmix(r)) * u128::from(n)) >> 64) as usize];
    let (a, b) = (draw(s), draw(s + 1));
    let cost = |l: &FloorLoad| {
        f64::from_bits(l.ewma.load(Relaxed)) * f64::from(l.in_flight.load(Relaxed) + 1)
    };
    let chosen = if cost(b) < cost(a) { b } else { a };
    chosen.in_flight.fetch_add(1, Relaxed);
    let start = clock.raw();
    let end = clock.raw();
    let latency = clock.delta_as_nanos(start, end) as f64;
    let ewma = f64::from_bits(chosen.ewma.load(Relaxed));
    chosen
        .ewma
        .store((ewma + (latency - ewma) * 1e-6).to_bits(), Relaxed);
    chosen.stamp.store(end, Relaxed);
    chosen.in_flight.fetch_sub(1, Relaxed);
    black_box(chosen);
}

/// SplitMix64's output for state `z`.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The wall time per call of `f` when two threads each call it `iters` times at once.
fn on_two_threads(iters: u64, f: impl Fn() + Sync) -> std::time::Duration {
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| (0..iters).for_each(|_| f()));
        }
    });
    start.elapsed() / 2
}

/// What one discovery publish costs the pool off the request path: a 10,000-endpoint
/// Service where one endpoint changed, re-indexed with two configured subsets and every
/// payload reused.
fn pool_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool_update");
    let v42: Selector = "version=4.2".parse().unwrap();
    let v41: Selector = "version=4.1".parse().unwrap();
    for n in [1_000usize, 10_000] {
        let a = set(n);
        let mut changed: Vec<Endpoint> = a.endpoints().to_vec();
        changed[n / 2] = changed[n / 2].clone().with_weight(7);
        let b = Arc::new(EndpointSet::new(ServiceState::Active, changed));
        let config = rudder_balance::PoolConfig {
            selectors: vec![v41.clone(), v42.clone()],
            ..Default::default()
        };
        let pool = rudder_balance::Pool::new(config, a.clone(), Endpoint::addr);
        let mut flip = false;
        group.bench_with_input(
            BenchmarkId::new("one_endpoint_changed", n),
            &n,
            |bench, _| {
                bench.iter(|| {
                    flip = !flip;
                    let next = if flip { b.clone() } else { a.clone() };
                    pool.update(next, Endpoint::addr);
                })
            },
        );
        // A readiness flip: one endpoint leaves the set and comes back (the addresses
        // change, so payloads and loads are carried by a merge walk); then the same with
        // every weight equal (most Services: no weight annotations, no ramp), where no
        // subset needs a weight table.
        let mut fewer: Vec<Endpoint> = a.endpoints().to_vec();
        fewer.remove(n / 2);
        let c = Arc::new(EndpointSet::new(ServiceState::Active, fewer));
        let equal = |s: &EndpointSet| {
            let eps = s.endpoints().iter().map(|e| e.clone().with_weight(1));
            Arc::new(EndpointSet::new(ServiceState::Active, eps.collect()))
        };
        let (a1, c1) = (equal(&a), equal(&c));
        for (name, full, left) in [
            ("one_endpoint_left", &a, &c),
            ("one_endpoint_left_equal_weights", &a1, &c1),
        ] {
            let config = rudder_balance::PoolConfig {
                selectors: vec![v41.clone(), v42.clone()],
                ..Default::default()
            };
            let pool = rudder_balance::Pool::new(config, full.clone(), Endpoint::addr);
            let mut gone = false;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                bench.iter(|| {
                    gone = !gone;
                    let next = if gone { left.clone() } else { full.clone() };
                    pool.update(next, Endpoint::addr);
                })
            });
        }
    }
    // Maglev pools, 1,000 endpoints: a label change keeps every subset's addresses and
    // weights, so the consistent-hashing tables are shared; a weight change rebuilds the
    // tables of the subsets it is in.
    let n = 1_000;
    let a = set(n);
    let relabelled: Vec<Endpoint> = a
        .endpoints()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if i != n / 2 {
                return e.clone();
            }
            let mut meta = e.meta().clone();
            meta.labels.to_mut().insert("team".into(), "a".into());
            e.clone().with_meta(meta)
        })
        .collect();
    let mut reweighted: Vec<Endpoint> = a.endpoints().to_vec();
    reweighted[n / 2] = reweighted[n / 2].clone().with_weight(7);
    for (name, changed) in [
        ("maglev_label_changed", relabelled),
        ("maglev_weight_changed", reweighted),
    ] {
        let b = Arc::new(EndpointSet::new(ServiceState::Active, changed));
        let config = rudder_balance::PoolConfig {
            algorithm: Algorithm::Maglev,
            selectors: vec![v41.clone(), v42.clone()],
            ..Default::default()
        };
        let pool = rudder_balance::Pool::new(config, a.clone(), |e| e.addr());
        let mut flip = false;
        group.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
            bench.iter(|| {
                flip = !flip;
                let next = if flip { b.clone() } else { a.clone() };
                pool.update(next, Endpoint::addr);
            })
        });
    }
    group.finish();
}

/// What discovery does per update of a 10,000-endpoint Service, from its patched list on:
/// make the set, compare it with the set in force (publish only a change), update a pool
/// (two configured subsets) to it. One endpoint's readiness flips back and forth. The set
/// is made on its own (`from_sorted`: the comparison and the pool's pairing each walk
/// both lists) or after the set in force (`from_sorted_after`: one walk finds what is the
/// same, and the comparison and pairing look at the rest only), or after it with the list
/// of the set before patched in place, and the pool patching the entry list of the
/// snapshot it let go (`from_sorted_after_reusing`, `Pool::update_reusing` with a
/// `Retired`: what discovery and the Mesh's updater do); weights of 1 to 3, or all equal
/// (most Services), where no subset needs a weight table.
fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    let n = 10_000;
    let unequal = set(n);
    let equal = {
        let eps = unequal.endpoints().iter().map(|e| e.clone().with_weight(1));
        Arc::new(EndpointSet::new(ServiceState::Active, eps.collect()))
    };
    for (weights, a) in [("", unequal), ("_equal_weights", equal)] {
        let mut flipped: Vec<Endpoint> = a.endpoints().to_vec();
        flipped[n / 2] = flipped[n / 2]
            .clone()
            .with_readiness(rudder_balance::Readiness::ServingTerminating);
        let lists = [a.endpoints().to_vec(), flipped];
        for made in ["made_alone", "made_after", "made_reusing"] {
            let config = rudder_balance::PoolConfig {
                selectors: vec![
                    "version=4.1".parse().unwrap(),
                    "version=4.2".parse().unwrap(),
                ],
                ..Default::default()
            };
            let pool = rudder_balance::Pool::new(config, a.clone(), Endpoint::addr);
            let mut current = a.clone();
            let mut spent = None;
            let mut retired = rudder_balance::Retired::new();
            let mut turn = 0;
            let name = format!("{made}{weights}");
            group.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                bench.iter(|| {
                    turn += 1;
                    let list = &lists[turn % 2];
                    let next = match made {
                        "made_alone" => EndpointSet::from_sorted(ServiceState::Active, list),
                        "made_after" => {
                            EndpointSet::from_sorted_after(ServiceState::Active, list, &current)
                        }
                        _ => EndpointSet::from_sorted_after_reusing(
                            ServiceState::Active,
                            list,
                            &current,
                            spent.take(),
                            None,
                        ),
                    };
                    assert!(next != *current, "every turn changes one endpoint");
                    let before = std::mem::replace(&mut current, Arc::new(next));
                    if made == "made_reusing" {
                        spent = Some(before);
                        let spare = retired.take_spare();
                        retired.keep(pool.update_reusing(current.clone(), Endpoint::addr, spare));
                        retired.release();
                    } else {
                        drop(before);
                        pool.update(current.clone(), Endpoint::addr);
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    picks,
    subsets,
    pick_and_record,
    pool_update,
    publish
);
criterion_main!(benches);
