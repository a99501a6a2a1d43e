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
    Algorithm, Balancer, Endpoint, EndpointMeta, EndpointSet, Fallback, LoadTable, Selector,
    ServiceState, SubsetIndex,
};

fn set(n: usize) -> Arc<EndpointSet> {
    let eps = (0..n)
        .map(|i| {
            let labels = [
                ("app".to_string(), "biz1".to_string()),
                (
                    "version".to_string(),
                    if i % 10 == 0 { "4.2" } else { "4.1" }.to_string(),
                ),
            ]
            .into();
            Endpoint::new(
                format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256)
                    .parse()
                    .unwrap(),
            )
            .with_weight(1 + (i % 3) as u32)
            .with_meta(EndpointMeta {
                labels,
                ..Default::default()
            })
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
    }
    group.finish();
}

criterion_group!(benches, picks, subsets);
criterion_main!(benches);
