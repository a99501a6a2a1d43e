use std::collections::BTreeMap;

use super::*;
use crate::endpoint::{EndpointMeta, Readiness, ServiceState};
use crate::maglev::hash_key;

fn endpoint(i: u32, meta: EndpointMeta) -> Endpoint {
    Endpoint::new(SocketAddr::from((
        [10, 1, (i / 250) as u8, (i % 250 + 1) as u8],
        80,
    )))
    .with_meta(meta)
}

fn labelled(i: u32, version: &str) -> Endpoint {
    endpoint(
        i,
        EndpointMeta {
            labels: BTreeMap::from([("version".to_string(), version.to_string())]).into(),
            ..Default::default()
        },
    )
}

fn set(eps: Vec<Endpoint>) -> Arc<EndpointSet> {
    Arc::new(EndpointSet::new(ServiceState::Active, eps))
}

fn pool(config: PoolConfig, eps: Vec<Endpoint>) -> Pool<SocketAddr> {
    Pool::new(config, set(eps), Endpoint::addr)
}

#[test]
fn snapshots_are_indexed_on_update_and_carry_payloads_and_loads() {
    let v2: Selector = "version=2".parse().unwrap();
    let config = PoolConfig {
        selectors: vec![v2.clone()],
        ..Default::default()
    };
    let p = pool(config, vec![labelled(0, "1"), labelled(1, "2")]);
    let s1 = p.snapshot();
    let picked = s1.subset(&v2, &Fallback::NoFallback).unwrap();
    assert_eq!(picked.len(), 1);
    let pos = p.pick(&s1, &picked, None).unwrap();
    assert_eq!(*s1.extra(pos), s1.set().endpoints()[pos].addr());
    let attempt = p.start(&s1, pos);
    assert_eq!(s1.entries()[pos].load().in_flight(), 1);

    // An update publishes a new snapshot; a staying endpoint keeps its entry (load and
    // payload), and only the new one asks for a payload.
    let mut made = Vec::new();
    p.update(set(vec![labelled(1, "2"), labelled(2, "2")]), |e| {
        made.push(e.addr());
        e.addr()
    });
    assert_eq!(made, [labelled(2, "2").addr()]);
    let s2 = p.snapshot();
    let kept = s1
        .entries()
        .iter()
        .find(|x| *x.extra() == labelled(1, "2").addr());
    assert!(
        Arc::ptr_eq(kept.unwrap(), &s2.entries()[0]),
        "the entry is shared"
    );
    assert!(!Arc::ptr_eq(&s1, &s2));
    let same = s2
        .set()
        .endpoints()
        .iter()
        .position(|e| e.addr() == attempt.addr())
        .unwrap();
    assert_eq!(s2.entries()[same].load().in_flight(), 1);
    drop(attempt);
    assert_eq!(s2.entries()[same].load().in_flight(), 0);
    assert_eq!(s2.subset(&v2, &Fallback::NoFallback).unwrap().len(), 2);
    assert_eq!(
        s2.index().extra_len(),
        0,
        "configured selectors are not extras"
    );
}

#[test]
fn selectors_from_requests_are_cached_up_to_a_bound() {
    let p = pool(
        PoolConfig::default(),
        (0..20).map(|i| labelled(i, &(i % 4).to_string())).collect(),
    );
    let snap = p.snapshot();
    for i in 0..100_000u32 {
        let sel: Selector = format!("version={}", i % 4 + (i / 4) * 10).parse().unwrap();
        let picked = snap.subset(&sel, &Fallback::AnyEndpoint).unwrap();
        assert!(!picked.is_empty());
    }
    assert_eq!(snap.index().extra_len(), crate::subset::EXTRA_SUBSETS);
    // Past the bound, answers are still right.
    let late: Selector = "version=3".parse().unwrap();
    assert_eq!(snap.subset(&late, &Fallback::NoFallback).unwrap().len(), 5);
}

#[test]
fn failures_eject_once_through_the_hook_and_are_counted() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook: EjectionHook = {
        let seen = seen.clone();
        Arc::new(move |addr| seen.lock().unwrap().push(addr))
    };
    let config = PoolConfig {
        ejection: Ejection {
            consecutive_failures: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let p = Pool::with_ejection_hook(
        config,
        set((0..4).map(|i| labelled(i, "1")).collect()),
        |_| (),
        Some(hook),
    );
    let snap = p.snapshot();
    // Two 5xx responses, then a success that ends the streak.
    p.start(&snap, 0).responded(true);
    p.start(&snap, 0).responded(true);
    assert_eq!(p.ejections(), 0);
    p.start(&snap, 0).responded(false);
    // A 5xx, then a response whose body fails (not a success), then no response.
    p.start(&snap, 0).responded(true);
    let mut cut = p.start(&snap, 0);
    cut.responded(false);
    cut.failed();
    assert_eq!(p.ejections(), 0, "the success ended the earlier streak");
    p.start(&snap, 0).failed();
    assert_eq!(p.ejections(), 1);
    assert!(snap.entries()[0].load().is_ejected());
    assert_eq!(*seen.lock().unwrap(), [snap.set().endpoints()[0].addr()]);
    assert_eq!(
        snap.entries()[0].load().in_flight(),
        0,
        "every attempt ended"
    );
}

/// Shares of the endpoint at `new` (Ready `age` ago, window 1,000 s) among 10, over 20,000
/// picks; `concurrent` keeps 400 requests in flight (40 per endpoint at full weight, so a
/// ramping endpoint's fair share is several requests), releasing the oldest each time.
fn ramp_share(algorithm: Algorithm, age_percent: u64, concurrent: bool) -> f64 {
    let window = Duration::from_secs(1_000);
    let now = SystemTime::now();
    let eps = (0..10)
        .map(|i| {
            let age = if i == 0 {
                window * age_percent as u32 / 100
            } else {
                window * 10
            };
            endpoint(
                i,
                EndpointMeta {
                    ready_since: Some(now - age),
                    ..Default::default()
                },
            )
        })
        .collect();
    let config = PoolConfig {
        algorithm,
        slow_start: Some(SlowStart::new(window)),
        ..Default::default()
    };
    let p = pool(config, eps);
    let snap = p.snapshot();
    let all = snap.index().all();
    let mut in_flight = std::collections::VecDeque::new();
    let mut new = 0;
    let rounds = 20_000;
    for _ in 0..rounds {
        let pos = p.pick(&snap, &all, None).unwrap();
        new += usize::from(pos == 0);
        let attempt = p.start(&snap, pos);
        if concurrent {
            in_flight.push_back(attempt);
            if in_flight.len() > 400 {
                in_flight.pop_front();
            }
        }
    }
    new as f64 / rounds as f64
}

#[test]
fn slow_start_ramps_the_share_for_every_algorithm() {
    for algorithm in [
        Algorithm::P2cPeakEwma,
        Algorithm::LeastRequests,
        Algorithm::WeightedRoundRobin,
        Algorithm::Maglev,
    ] {
        for concurrent in [false, true] {
            for (age, factor) in [(10, 0.1), (50, 0.5), (90, 0.9), (200, 1.0)] {
                let expected: f64 = factor / (factor + 9.0);
                let share = ramp_share(algorithm, age, concurrent);
                // Sampling noise (four standard deviations of 20,000 draws) plus what the
                // algorithm itself may deviate: nothing sequentially, some under load,
                // where P2C also weighs requests in flight.
                let noise = 4.0 * (expected * (1.0 - expected) / 20_000.0).sqrt();
                let model = if concurrent { 0.3 } else { 0.02 };
                assert!(
                    (share - expected).abs() <= noise + expected * model,
                    "{algorithm:?} concurrent={concurrent} at {age} % of the window: share {share:.4}, expected {expected:.4}"
                );
            }
        }
    }
}

#[test]
fn ramping_pools_refresh_until_the_window_ends() {
    let now = SystemTime::now();
    let config = PoolConfig {
        slow_start: Some(SlowStart::new(Duration::from_secs(60))),
        ..Default::default()
    };
    let ready = |age: u64| EndpointMeta {
        ready_since: Some(now - Duration::from_secs(age)),
        ..Default::default()
    };
    let p = pool(
        config.clone(),
        vec![endpoint(0, ready(30)), endpoint(1, ready(600))],
    );
    assert!(p.ramping());
    let before = p.snapshot();
    let replaced = p.refresh().expect("a ramping pool is re-indexed");
    assert!(
        Arc::ptr_eq(&before, &replaced),
        "the refresh returns what it replaced"
    );
    assert!(!Arc::ptr_eq(&before, &p.snapshot()), "a refresh publishes");
    assert!(p.ramping());
    assert_eq!(p.refresh_interval(), Duration::from_secs(3));
    let done = pool(config, vec![endpoint(0, ready(600))]);
    assert!(!done.ramping());
    assert!(done.refresh().is_none());
}

#[test]
fn replaced_snapshots_are_released_by_their_keeper_once_no_request_holds_them() {
    let p = pool(
        PoolConfig::default(),
        (0..4).map(|i| labelled(i, "1")).collect(),
    );
    let mut retired = Retired::new();
    // Nobody holds the replaced snapshot: it goes at once.
    let first = Arc::downgrade(&p.snapshot());
    retired.keep(p.update(
        set((0..3).map(|i| labelled(i, "1")).collect()),
        Endpoint::addr,
    ));
    assert!(first.upgrade().is_none());
    assert_eq!(retired.len(), 0);
    // Its lists are kept for the next update, but not for long: two releases.
    assert!(!retired.is_empty());
    retired.release();
    assert!(!retired.is_empty());
    retired.release();
    assert!(retired.is_empty());

    // A request holds the snapshot across two updates (one a refresh would make alike).
    let request = p.snapshot();
    let second = Arc::downgrade(&request);
    retired.keep(p.update(
        set((0..2).map(|i| labelled(i, "1")).collect()),
        Endpoint::addr,
    ));
    retired.keep(p.update(
        set((0..4).map(|i| labelled(i, "1")).collect()),
        Endpoint::addr,
    ));
    assert_eq!(retired.len(), 1);
    assert_eq!(retired.release(), 1, "still held by the request");
    // The request ends: its reference is not the last, so it tears nothing down.
    drop(request);
    assert!(second.upgrade().is_some(), "the keeper still holds it");
    assert_eq!(retired.release(), 0);
    assert!(second.upgrade().is_none(), "released by its keeper");
}

#[test]
fn the_entry_list_of_a_snapshot_let_go_is_patched_into_the_next() {
    let p = pool(
        PoolConfig::default(),
        (0..100).map(|i| labelled(i, "1")).collect(),
    );
    let mut retired = Retired::new();
    let update = |n: u32, retired: &mut Retired<SocketAddr>| {
        let spare = retired.take_spare();
        let next = set((0..n).map(|i| labelled(i, "1")).collect());
        retired.keep(p.update_reusing(next, Endpoint::addr, spare));
        retired.release();
        p.snapshot()
    };
    // As the Mesh's updater does: keep what an update replaced, release what nobody
    // holds after each update and on a timer (here: when the test lets go). A new list has room for its endpoints exactly; a patched one keeps the room of the
    // list it was: that tells them apart (an address would not: the allocator may hand
    // a freed list's memory out again).
    let room = |s: &Snapshot<SocketAddr>| s.entries.capacity();
    // The label matches and the list of routable positions are filled the same way.
    let rooms = |s: &Snapshot<SocketAddr>| (s.matches.room(), s.index.room());
    let first_rooms = rooms(&p.snapshot());
    let second = update(99, &mut retired);
    assert_eq!(room(&second), 99, "no spare yet: a new list");
    assert_eq!(rooms(&second), (99, 99));
    // Nobody held the first snapshot once replaced: its lists are the spare.
    let third = update(98, &mut retired);
    assert_eq!(room(&third), 100, "the first list, patched");
    assert_eq!(
        rooms(&third),
        first_rooms,
        "the first snapshot's lists, filled"
    );
    assert_eq!(third.index().all().len(), 98);
    let fresh = SubsetIndex::new(third.set().clone(), []);
    assert_eq!(third.index().all().positions(), fresh.all().positions());
    assert_eq!(third.entries().len(), 98);
    for (a, b) in third.entries().iter().zip(second.entries()) {
        assert!(Arc::ptr_eq(a, b), "entries carried");
    }
    drop(second);
    retired.release();
    // A request holds the third: its list is no spare, and stays as it is.
    let request = third;
    let fourth = update(97, &mut retired);
    assert_eq!(room(&fourth), 99, "the second list, patched");
    assert_eq!(retired.len(), 1, "the request holds the third");
    drop(fourth);
    let fifth = update(96, &mut retired);
    assert_eq!(
        room(&fifth),
        96,
        "the third held, the fourth current: a new list"
    );
    assert_eq!((room(&request), request.entries().len()), (100, 98));
    assert_eq!(request.extra(97), &labelled(97, "1").addr());
    // The request ends: its snapshot goes at the next release, its list the spare; but
    // a list with room for more than twice the endpoints is not reused.
    drop(request);
    assert_eq!(retired.release(), 0);
    drop(fifth);
    let small = update(10, &mut retired);
    assert_eq!(room(&small), 10);
}

fn maglev_pool(n: u32) -> Pool<SocketAddr> {
    let config = PoolConfig {
        algorithm: Algorithm::Maglev,
        ..Default::default()
    };
    pool(config, (0..n).map(|i| labelled(i, "1")).collect())
}

fn owner(p: &Pool<SocketAddr>, key: u64) -> SocketAddr {
    let snap = p.snapshot();
    let all = snap.index().all();
    *snap.extra(p.pick(&snap, &all, Some(key)).unwrap())
}

#[test]
fn keyed_picks_are_sticky_agree_between_pools_and_move_about_one_nth() {
    let (a, b) = (maglev_pool(10), maglev_pool(10));
    let keys: Vec<u64> = (0..1_000)
        .map(|i| hash_key(format!("user-{i}").as_bytes()))
        .collect();
    let first: Vec<SocketAddr> = keys.iter().map(|k| owner(&a, *k)).collect();
    for (k, o) in keys.iter().zip(&first) {
        assert_eq!(owner(&a, *k), *o, "same key, same Pod");
        assert_eq!(owner(&b, *k), *o, "replicas agree");
    }
    let distinct: std::collections::HashSet<_> = first.iter().collect();
    assert_eq!(distinct.len(), 10, "keys spread over every Pod");
    // One of ten leaves: its keys move, about 1/10 of the rest stay put.
    let gone = first[0];
    let eps: Vec<Endpoint> = (0..10u32)
        .map(|i| labelled(i, "1"))
        .filter(|e| e.addr() != gone)
        .collect();
    a.update(set(eps), Endpoint::addr);
    let moved = keys
        .iter()
        .zip(&first)
        .filter(|(k, o)| owner(&a, **k) != **o)
        .count();
    let owned = first.iter().filter(|o| **o == gone).count();
    assert!(moved >= owned, "the leaving Pod's keys moved");
    assert!(
        moved <= 150,
        "about 1/10 of the keys move: {moved} moved, the leaving Pod owned {owned}"
    );
}

#[test]
fn terminating_endpoints_killed_last_are_preferred() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let term = |i: u32, deadline: u64| {
        endpoint(
            i,
            EndpointMeta {
                deletion_deadline: Some(now + Duration::from_secs(deadline)),
                ..Default::default()
            },
        )
        .with_readiness(Readiness::ServingTerminating)
    };
    let p = pool(
        PoolConfig::default(),
        vec![term(0, 5), term(1, 30), term(2, 30), term(3, 10)],
    );
    let snap = p.snapshot();
    let all = snap.index().all();
    assert_eq!(all.positions(), [1, 2]);
    let mut picked = [0; 4];
    for _ in 0..100 {
        picked[p.pick(&snap, &all, None).unwrap()] += 1;
    }
    assert_eq!(
        picked[0] + picked[3],
        0,
        "earlier deadlines are never picked"
    );
    assert!(
        picked[1] > 0 && picked[2] > 0,
        "both latest ones are: {picked:?}"
    );
}

#[test]
fn round_robin_turns_are_per_subset() {
    // Requests for two subsets, interleaved: each subset still alternates between its
    // members (a shared counter would give each subset every other turn: one member).
    let (v1, v2): (Selector, Selector) =
        ("version=1".parse().unwrap(), "version=2".parse().unwrap());
    let config = PoolConfig {
        algorithm: Algorithm::WeightedRoundRobin,
        selectors: vec![v1.clone(), v2.clone()],
        ..Default::default()
    };
    let p = pool(
        config,
        vec![
            labelled(0, "1"),
            labelled(1, "1"),
            labelled(2, "2"),
            labelled(3, "2"),
        ],
    );
    let snap = p.snapshot();
    let (one, two) = (
        snap.subset(&v1, &Fallback::NoFallback).unwrap(),
        snap.subset(&v2, &Fallback::NoFallback).unwrap(),
    );
    let mut counts = [0; 4];
    for _ in 0..100 {
        counts[p.pick(&snap, &one, None).unwrap()] += 1;
        counts[p.pick(&snap, &two, None).unwrap()] += 1;
    }
    assert_eq!(counts, [50; 4]);
}

#[test]
fn updates_match_again_only_what_changed_and_keep_payloads_when_addresses_stay() {
    let v2: Selector = "version=2".parse().unwrap();
    let config = PoolConfig {
        selectors: vec![v2.clone()],
        ..Default::default()
    };
    let first: Vec<Endpoint> = (0..6).map(|i| labelled(i, "1")).collect();
    let p = pool(config, first.clone());
    let members = |p: &Pool<SocketAddr>| -> Vec<SocketAddr> {
        let s = p.snapshot();
        let picked = s.subset(&v2, &Fallback::NoFallback);
        picked.map_or_else(|_| Vec::new(), |m| m.iter().map(Endpoint::addr).collect())
    };
    assert!(members(&p).is_empty());

    // Same addresses; endpoint 3 relabelled (new metadata), the rest shared with the
    // previous set: the payloads are carried whole (`extra` is not asked), and the
    // relabelled endpoint joins the subset.
    let mut relabelled = first.clone();
    relabelled[3] = labelled(3, "2");
    let mut asked = 0;
    p.update(set(relabelled.clone()), |e| {
        asked += 1;
        e.addr()
    });
    assert_eq!(asked, 0, "payloads are carried when the addresses stay");
    assert_eq!(members(&p), vec![relabelled[3].addr()]);

    // Endpoint 3 relabelled back: it leaves the subset although every other endpoint's
    // match is reused.
    p.update(set(first.clone()), Endpoint::addr);
    assert!(members(&p).is_empty());

    // An endpoint added with the label and one removed: matches follow the new
    // positions, and only the new address asks for a payload.
    let mut grown: Vec<Endpoint> = first[1..].to_vec();
    grown.push(labelled(9, "2"));
    let mut fresh = Vec::new();
    p.update(set(grown.clone()), |e| {
        fresh.push(e.addr());
        e.addr()
    });
    assert_eq!(fresh, vec![grown[5].addr()]);

    // A new Pod at an old Pod's address, nothing else changed: `extra` is asked for it.
    let mut reborn = grown.clone();
    reborn[0] = reborn[0].clone().with_meta(EndpointMeta {
        pod: Some("new-pod".into()),
        ..reborn[0].meta().clone()
    });
    let mut asked_for = Vec::new();
    p.update(set(reborn.clone()), |e| {
        asked_for.push(e.addr());
        e.addr()
    });
    assert_eq!(asked_for, [reborn[0].addr()]);
    p.update(set(grown.clone()), Endpoint::addr);
    assert_eq!(members(&p), vec![grown[5].addr()]);
    let s = p.snapshot();
    for (pos, e) in s.set().endpoints().iter().enumerate() {
        assert_eq!(*s.extra(pos), e.addr(), "payloads stay aligned");
    }
}

#[test]
fn updates_share_the_weight_tables_of_subsets_whose_weights_stayed() {
    let v2: Selector = "version=2".parse().unwrap();
    let config = PoolConfig {
        selectors: vec![v2.clone()],
        ..Default::default()
    };
    // Unequal weights, so every subset has an alias table to build or share.
    let eps = |v: &[&str], w: &[u32]| {
        v.iter()
            .zip(w)
            .enumerate()
            .map(|(i, (v, w))| labelled(i as u32, v).with_weight(*w))
            .collect::<Vec<_>>()
    };
    let p = pool(config, eps(&["1", "2", "2", "1"], &[1, 2, 3, 4]));
    let tables = |s: &Snapshot<SocketAddr>| {
        let all = s.index().all().into_owned();
        let v2 = s.subset(&v2, &Fallback::NoFallback).unwrap().into_owned();
        (all, v2)
    };
    let (all0, v2_0) = tables(&p.snapshot());

    // A label change that moves no endpoint in or out of either subset's weights: both
    // tables are shared with the snapshot before.
    let mut relabelled = eps(&["1", "2", "2", "1"], &[1, 2, 3, 4]);
    relabelled[0] = endpoint(
        0,
        EndpointMeta {
            labels: BTreeMap::from([
                ("version".to_string(), "1".to_string()),
                ("team".to_string(), "a".to_string()),
            ])
            .into(),
            ..Default::default()
        },
    );
    p.update(set(relabelled), Endpoint::addr);
    let (all1, v2_1) = tables(&p.snapshot());
    assert!(all1.weights().shares_tables_with(all0.weights()));
    assert!(v2_1.weights().shares_tables_with(v2_0.weights()));

    // A weight change in `version=2`: both tables it is in are rebuilt, and picks follow
    // the new weights.
    p.update(
        set(eps(&["1", "2", "2", "1"], &[1, 2, 9, 4])),
        Endpoint::addr,
    );
    let (all2, v2_2) = tables(&p.snapshot());
    assert!(!all2.weights().shares_tables_with(all1.weights()));
    assert!(!v2_2.weights().shares_tables_with(v2_1.weights()));
    assert_eq!(v2_2.weights().total(), 11);
    assert_eq!(all2.weights().total(), 16);

    // A weight change outside `version=2` leaves its table shared.
    p.update(
        set(eps(&["1", "2", "2", "1"], &[5, 2, 9, 4])),
        Endpoint::addr,
    );
    let (all3, v2_3) = tables(&p.snapshot());
    assert!(!all3.weights().shares_tables_with(all2.weights()));
    assert!(v2_3.weights().shares_tables_with(v2_2.weights()));
}

#[test]
fn updates_and_refreshes_rebuild_only_the_weight_chunks_that_changed() {
    // 400 endpoints of unequal weights: 100 chunks of 4 under test (1,024 otherwise).
    let now = SystemTime::now();
    let all: Vec<Endpoint> = (0..400u32)
        .map(|i| {
            let age = if i == 100 { 30 } else { 600 };
            endpoint(
                i,
                EndpointMeta {
                    ready_since: Some(now - Duration::from_secs(age)),
                    ..Default::default()
                },
            )
            .with_weight(1 + i % 3)
        })
        .collect();
    // Discovery's updates carry the endpoints that stayed as they were (metadata shared).
    let mut fewer = all.clone();
    fewer.remove(300);
    let config = PoolConfig {
        slow_start: Some(SlowStart::new(Duration::from_secs(60))),
        ..Default::default()
    };
    let p = pool(config, all);
    let weights = |p: &Pool<SocketAddr>| p.snapshot().index().all().weights().clone();
    let fresh = |eps: Vec<Endpoint>| {
        let options = IndexOptions {
            slow_start: Some(SlowStart::new(Duration::from_secs(60))),
            ..Default::default()
        };
        let index = SubsetIndex::with_options(set(eps), [], options);
        index.all().weights().clone()
    };
    let first = weights(&p);
    let chunks = first.chunks_shared_with(&first);
    assert_eq!(chunks, 100);

    // Endpoint 300 leaves: the chunks around it are rebuilt, the others (endpoint 100's
    // among them, still ramping) shared.
    p.update(set(fewer.clone()), Endpoint::addr);
    let second = weights(&p);
    assert_eq!(second.len(), 399);
    assert!(second.chunks_shared_with(&first) >= chunks - 3);
    assert!(second.chunks_shared_with(&first) < chunks);

    // A refresh (slow start moves endpoint 100's weight) rebuilds its chunk alone.
    // (Weights under slow start are in thousandths: endpoint 100 ramps up to 2,000.)
    let ramped = p.snapshot().index().all().weights().weight(100);
    assert!((1..2_000).contains(&ramped), "{ramped}");
    // Refreshes until the ramp has moved it (one thousandth per 30 ms): those before
    // change nothing and share every table.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut third = second.clone();
    while third.weight(100) == ramped {
        assert!(
            std::time::Instant::now() < deadline,
            "the ramp did not move"
        );
        let before = weights(&p);
        assert!(p.refresh().is_some());
        third = weights(&p);
        assert!(third.weight(100) != ramped || third.shares_tables_with(&before));
    }
    assert_eq!(
        third.chunks_shared_with(&second),
        second.chunks_shared_with(&second) - 1
    );
    // It equals an index made from scratch, but for the ramping weight, which moves on
    // with the clock.
    let from_scratch = fresh(fewer);
    assert_eq!(third.len(), from_scratch.len());
    assert!(
        (0..third.len())
            .filter(|i| *i != 100)
            .all(|i| third.weight(i) == from_scratch.weight(i))
    );
}

#[test]
fn maglev_tables_are_shared_while_members_and_weights_stay() {
    let p = maglev_pool(10);
    let table = |p: &Pool<SocketAddr>| {
        let snap = p.snapshot();
        let all = snap.index().all().into_owned();
        let ptr: *const crate::Maglev = all.maglev().expect("a table");
        (ptr, all)
    };
    let (first, _keep) = table(&p);
    // A label change: same addresses, same weights, the same table.
    let mut eps: Vec<Endpoint> = (0..10).map(|i| labelled(i, "1")).collect();
    eps[3] = labelled(3, "2");
    p.update(set(eps.clone()), Endpoint::addr);
    let (second, _keep2) = table(&p);
    assert_eq!(first, second, "a label change rebuilt the Maglev table");
    // A weight change builds a new one, and keys follow it.
    eps[3] = eps[3].clone().with_weight(5);
    p.update(set(eps), Endpoint::addr);
    let (third, _keep3) = table(&p);
    assert_ne!(second, third, "a weight change kept the old Maglev table");
    let to_heavy = (0..2_000u64)
        .filter(|k| owner(&p, hash_key(&k.to_le_bytes())) == labelled(3, "2").addr())
        .count();
    // Weight 5 of 14: about 36 % of keys (a weight-1 endpoint gets about 7 %).
    assert!((550..=900).contains(&to_heavy), "{to_heavy} of 2,000 keys");
}

#[test]
fn a_loaded_snapshot_is_the_current_one_and_can_be_kept() {
    let p = pool(
        PoolConfig::default(),
        vec![labelled(0, "1"), labelled(1, "1")],
    );
    let loaded = p.load();
    assert!(Arc::ptr_eq(loaded.set(), p.snapshot().set()));
    let everything = Selector::everything();
    let picked = loaded.subset(&everything, &Fallback::NoFallback).unwrap();
    let pos = p.pick(&loaded, &picked, None).unwrap();
    drop(p.start(&loaded, pos));
    drop(picked);
    // Kept past an update, it still holds the set it was loaded with.
    let kept = loaded.into_arc();
    p.update(set(vec![labelled(2, "1")]), Endpoint::addr);
    assert_eq!(kept.set().len(), 2);
    assert_eq!(p.load().set().len(), 1);
}

proptest::proptest! {
    /// Updates carry what the endpoints they leave alone had (subset members by position,
    /// label matches, loads, payloads) and match only the rest: after every update of a
    /// random sequence, each subset is what a pool built fresh on the same set has, and
    /// each endpoint keeps its address's load and payload from the snapshot before.
    /// Changes fall anywhere (start, end, middle, all over), including readiness flips
    /// that move a subset to its serving-terminating fallback and back, and relabels that
    /// give an empty subset (`version=c`, no Pod at first) members and take them away;
    /// `version=z` stays empty throughout.
    #[test]
    fn updates_give_what_a_fresh_index_gives(
        steps in proptest::collection::vec(proptest::collection::vec(0u8..8, 24), 1..6),
    ) {
        let selectors: Vec<Selector> =
            ["version=a", "version=b", "version=c", "version=z"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
        let config = PoolConfig {
            selectors: selectors.clone(),
            ..PoolConfig::default()
        };
        let base: Vec<Endpoint> =
            (0..24).map(|i| labelled(i, if i % 3 == 0 { "a" } else { "b" })).collect();
        let mut current: Vec<Option<Endpoint>> = base.iter().cloned().map(Some).collect();
        let pool = Pool::new(config.clone(), set(base.clone()), |e| (e.addr(), 0usize));
        // As the Mesh's updater does: each update patches the entry list of the snapshot
        // let go before it.
        let mut retired = Retired::new();
        for (step, ops) in steps.iter().enumerate() {
            // Per address: 0–3 keep the endpoint as it was (its metadata shared), 4 drops
            // it, 5 flips its readiness, 6 changes its weight, 7 relabels it (a → b → c → a).
            for (i, op) in ops.iter().enumerate() {
                let was = current[i].clone().unwrap_or_else(|| base[i].clone());
                current[i] = match op {
                    0..=3 => current[i].clone(),
                    4 => None,
                    5 => Some(was.clone().with_readiness(match was.readiness() {
                        Readiness::Ready => Readiness::ServingTerminating,
                        _ => Readiness::Ready,
                    })),
                    6 => Some(was.clone().with_weight(was.weight() % 3 + 1)),
                    _ => {
                        let mut meta = was.meta().clone();
                        let v = match meta.labels["version"].as_str() {
                            "a" => "b",
                            "b" => "c",
                            _ => "a",
                        };
                        meta.labels.to_mut().insert("version".into(), v.into());
                        Some(was.clone().with_meta(meta))
                    }
                };
            }
            let next = set(current.iter().flatten().cloned().collect());
            let before = pool.snapshot();
            let by_addr: std::collections::HashMap<SocketAddr, usize> = before
                .set()
                .endpoints()
                .iter()
                .enumerate()
                .map(|(i, e)| (e.addr(), i))
                .collect();
            let spare = retired.take_spare();
            let replaced = pool.update_reusing(next.clone(), |e| (e.addr(), step + 1), spare);
            let after = pool.snapshot();
            let fresh = Pool::new(config.clone(), next.clone(), |e| (e.addr(), 0usize));
            let fresh = fresh.snapshot();
            for s in std::iter::once(Selector::everything()).chain(selectors.iter().cloned()) {
                let got = after.subset(&s, &Fallback::NoFallback);
                let want = fresh.subset(&s, &Fallback::NoFallback);
                proptest::prop_assert_eq!(
                    got.as_ref().map(|p| (p.positions().to_vec(), p.weights().clone())).ok(),
                    want.as_ref().map(|p| (p.positions().to_vec(), p.weights().clone())).ok(),
                    "subset {}", s
                );
            }
            for (pos, e) in next.endpoints().iter().enumerate() {
                match by_addr.get(&e.addr()) {
                    Some(&j) => {
                        proptest::prop_assert!(Arc::ptr_eq(&after.entries()[pos], &before.entries()[j]));
                        proptest::prop_assert_eq!(after.extra(pos), before.extra(j));
                    }
                    None => proptest::prop_assert_eq!(after.extra(pos), &(e.addr(), step + 1)),
                }
            }
            drop(before);
            retired.keep(replaced);
        }
    }
}

#[test]
fn a_new_pod_at_an_old_address_starts_a_history_of_its_own() {
    let named = |i: u32, pod: &str| {
        endpoint(
            i,
            EndpointMeta {
                pod: Some(pod.into()),
                ..Default::default()
            },
        )
    };
    let config = PoolConfig {
        ejection: Ejection {
            consecutive_failures: 1,
            max_ejected_percent: 50,
            ..Default::default()
        },
        ..Default::default()
    };
    let p = pool(config, vec![named(0, "a"), named(1, "b"), named(2, "c")]);
    let s1 = p.snapshot();
    // Pod a fails once and is ejected; a request to Pod b is still in flight.
    p.start(&s1, 0).failed();
    assert!(s1.entries()[0].load().is_ejected());
    let in_flight = p.start(&s1, 1);

    // Pod a is replaced by Pod z at the same address; b and c stay.
    let mut made = Vec::new();
    p.update(
        set(vec![named(0, "z"), named(1, "b"), named(2, "c")]),
        |e| {
            made.push(e.addr());
            e.addr()
        },
    );
    let s2 = p.snapshot();
    assert_eq!(
        made,
        [named(0, "z").addr()],
        "only the new Pod asks for a payload"
    );
    assert!(!Arc::ptr_eq(&s1.entries()[0], &s2.entries()[0]));
    assert!(
        !s2.entries()[0].load().is_ejected(),
        "Pod z inherits no ejection"
    );
    assert!(Arc::ptr_eq(&s1.entries()[1], &s2.entries()[1]));
    assert_eq!(
        s2.entries()[1].load().in_flight(),
        1,
        "Pod b keeps its load"
    );
    drop(in_flight);
    assert_eq!(s2.entries()[1].load().in_flight(), 0);

    // Pod a's ejection no longer counts against the limit (at most 50 % of three
    // endpoints: one): Pod b can be ejected now.
    p.start(&s2, 1).failed();
    assert!(s2.entries()[1].load().is_ejected());
    assert_eq!(p.ejections(), 2);
}
