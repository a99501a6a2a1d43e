use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::endpoint::{EndpointMeta, Readiness, ServiceState};

fn ep(i: u8, version: &str, readiness: Readiness) -> Endpoint {
    let labels = BTreeMap::from([
        ("app".to_string(), "biz1".to_string()),
        ("version".to_string(), version.to_string()),
    ]);
    Endpoint::new(format!("10.0.0.{i}:8080").parse().unwrap())
        .with_readiness(readiness)
        .with_meta(EndpointMeta {
            labels: labels.into(),
            ..EndpointMeta::default()
        })
}

fn biz1() -> Arc<EndpointSet> {
    Arc::new(EndpointSet::new(
        ServiceState::Active,
        vec![
            ep(1, "4.1", Readiness::Ready),
            ep(2, "4.1", Readiness::Ready),
            ep(3, "4.1", Readiness::Ready),
            ep(4, "4.2", Readiness::Ready),
            ep(5, "4.3", Readiness::ServingTerminating),
        ],
    ))
}

fn addrs(p: &Picked<'_>) -> Vec<u8> {
    p.iter()
        .map(|e| match e.addr().ip() {
            std::net::IpAddr::V4(v4) => v4.octets()[3],
            _ => 0,
        })
        .collect()
}

#[test]
fn subsets_by_selector() {
    let v42: Selector = "version=4.2".parse().unwrap();
    let index = SubsetIndex::new(biz1(), [&v42]);
    assert_eq!(
        addrs(&index.subset(&v42, &Fallback::NoFallback).unwrap()),
        [4]
    );
    let in_: Selector = "version in (4.1,4.2)".parse().unwrap();
    assert_eq!(
        addrs(&index.subset(&in_, &Fallback::NoFallback).unwrap()),
        [1, 2, 3, 4]
    );
    // All routable: ready ones only, since some are ready.
    assert_eq!(addrs(&index.all()), [1, 2, 3, 4]);
    // A subset whose only members are terminating still serves, as kube-proxy would.
    let v43: Selector = "version=4.3".parse().unwrap();
    assert_eq!(
        addrs(&index.subset(&v43, &Fallback::NoFallback).unwrap()),
        [5]
    );
}

#[test]
fn fallbacks() {
    let index = SubsetIndex::new(biz1(), []);
    let v5: Selector = "version=5.0".parse().unwrap();
    let err = index.subset(&v5, &Fallback::NoFallback).unwrap_err();
    assert!(err.to_string().contains("version=5.0"), "{err}");
    let any = index.subset(&v5, &Fallback::AnyEndpoint).unwrap();
    assert!(any.fell_back());
    assert_eq!(any.len(), 4);
    let stable = index
        .subset(&v5, &Fallback::Default("version=4.1".parse().unwrap()))
        .unwrap();
    assert_eq!(addrs(&stable), [1, 2, 3]);
    assert!(
        index
            .subset(&v5, &Fallback::Default("version=9".parse().unwrap()))
            .is_err()
    );
}

#[test]
fn empty_and_single_sets() {
    let empty = SubsetIndex::new(Arc::new(EndpointSet::new(ServiceState::Active, vec![])), []);
    assert!(
        empty
            .subset(&Selector::everything(), &Fallback::AnyEndpoint)
            .is_err()
    );
    let one = SubsetIndex::new(
        Arc::new(EndpointSet::new(
            ServiceState::Active,
            vec![ep(1, "4.1", Readiness::Ready)],
        )),
        [],
    );
    assert_eq!(
        one.subset(&Selector::everything(), &Fallback::NoFallback)
            .unwrap()
            .len(),
        1
    );
}

proptest! {
    /// Whatever the endpoints and selector, a subset holds exactly the routable endpoints
    /// that match, and only those.
    #[test]
    fn subsets_hold_exactly_the_matching_routable_endpoints(
        versions in proptest::collection::vec((0u8..4, any::<bool>()), 0..40),
        wanted in 0u8..4,
    ) {
        let eps: Vec<Endpoint> = versions.iter().enumerate().map(|(i, (v, ready))| {
            ep(i as u8, &v.to_string(), if *ready { Readiness::Ready } else { Readiness::ServingTerminating })
        }).collect();
        let set = Arc::new(EndpointSet::new(ServiceState::Active, eps));
        let sel: Selector = format!("version={wanted}").parse().unwrap();
        let index = SubsetIndex::new(set.clone(), [&sel]);
        let matching: Vec<&Endpoint> = set.endpoints().iter().filter(|e| e.labels()["version"] == wanted.to_string()).collect();
        let any_ready = matching.iter().any(|e| e.readiness() == Readiness::Ready);
        let expected: Vec<_> = matching.iter().filter(|e| (e.readiness() == Readiness::Ready) == any_ready).map(|e| e.addr()).collect();
        match index.subset(&sel, &Fallback::NoFallback) {
            Ok(p) => prop_assert_eq!(p.iter().map(|e| e.addr()).collect::<Vec<_>>(), expected),
            Err(_) => prop_assert!(expected.is_empty()),
        }
    }
}

/// Label sets shared between endpoints (as discovery keeps them) are matched once per set:
/// with more sets than the matcher remembers, interleaved, and with a run of endpoints
/// that each have a set of their own (after which it stops remembering), every subset,
/// configured or not, still holds exactly the endpoints its selector matches.
#[test]
fn shared_label_sets_match_as_each_endpoint_alone_would() {
    let mut sets = crate::endpoint::LabelSets::new();
    let mut state = 7u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let endpoints: Vec<Endpoint> = (0..2_000usize)
        .map(|i| {
            // Seven versions in a random order, then 100 endpoints each with its own set,
            // then the seven again.
            let version = if (900..1_000).contains(&i) {
                format!("own-{i}")
            } else {
                format!("4.{}", next() % 7)
            };
            let labels: crate::endpoint::Labels =
                [("app", "biz1".to_string()), ("version", version)]
                    .into_iter()
                    .collect();
            Endpoint::new(
                format!("10.{}.{}.1:8080", i / 250, i % 250)
                    .parse()
                    .unwrap(),
            )
            .with_meta(EndpointMeta {
                labels: sets.share(labels),
                ..EndpointMeta::default()
            })
        })
        .collect();
    let set = Arc::new(EndpointSet::new(ServiceState::Active, endpoints));
    let configured: Vec<Selector> = ["version=4.1", "version in (4.2,4.5)", "version!=4.3"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let index = SubsetIndex::new(set.clone(), configured.iter());
    let asked: Vec<Selector> = ["version=4.6", "version notin (4.0,4.4)", "version=own-950"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    for selector in configured.iter().chain(&asked) {
        let expected: Vec<u32> = (0..set.len() as u32)
            .filter(|i| selector.matches(set.endpoints()[*i as usize].labels()))
            .collect();
        assert!(!expected.is_empty(), "{selector} matches some endpoint");
        let picked = index.subset(selector, &Fallback::NoFallback).unwrap();
        assert_eq!(picked.positions(), expected, "{selector}");
    }
}
