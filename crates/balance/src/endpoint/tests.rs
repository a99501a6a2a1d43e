use super::*;

fn ep(s: &str) -> Endpoint {
    Endpoint::new(s.parse().unwrap())
}

#[test]
fn sets_are_sorted_deduplicated_and_compare_by_content() {
    let a = EndpointSet::new(
        ServiceState::Active,
        vec![ep("10.0.0.2:80"), ep("10.0.0.1:80"), ep("10.0.0.2:80")],
    );
    let b = EndpointSet::new(
        ServiceState::Active,
        vec![ep("10.0.0.1:80"), ep("10.0.0.2:80")],
    )
    .with_clock(Arc::new(SyncClock::new()));
    assert_eq!(a.len(), 2);
    assert_eq!(a.endpoints()[0].addr(), "10.0.0.1:80".parse().unwrap());
    assert_eq!(a, b);
}

#[test]
fn routable_falls_back_to_serving_terminating() {
    let t = |s| ep(s).with_readiness(Readiness::ServingTerminating);
    let only_terminating = EndpointSet::new(
        ServiceState::Active,
        vec![t("10.0.0.1:80"), t("10.0.0.2:80")],
    );
    assert_eq!(only_terminating.routable().count(), 2);
    let mixed = EndpointSet::new(
        ServiceState::Active,
        vec![t("10.0.0.1:80"), ep("10.0.0.3:80")],
    );
    let r: Vec<_> = mixed.routable().map(Endpoint::addr).collect();
    assert_eq!(r, ["10.0.0.3:80".parse().unwrap()]);
}

#[test]
fn empty_sets_say_why() {
    assert_eq!(
        EndpointSet::new(ServiceState::Active, vec![]).empty_reason(),
        Some(EmptyReason::NoEndpoints)
    );
    assert_eq!(EndpointSet::pending().empty_reason(), None);
    assert_eq!(EndpointSet::pending().state(), &ServiceState::Pending);
}

#[test]
fn pairing_names_each_address_once_as_kept_added_or_gone() {
    let set = |addrs: &[&str]| {
        EndpointSet::new(ServiceState::Active, addrs.iter().map(|a| ep(a)).collect())
    };
    let before = set(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.4:80", "10.0.0.6:80"]);
    let after = set(&["10.0.0.0:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.6:80"]);
    let p = Pairing::new(&before, &after);
    assert_eq!(
        p.iter().collect::<Vec<_>>(),
        [None, Some(1), None, Some(3)],
        "each new endpoint names its old position, or none"
    );
    assert_eq!(
        p.gone().collect::<Vec<_>>(),
        [0, 2],
        "10.0.0.1 and 10.0.0.4 left"
    );
    assert_eq!(p.added(), 2);
    assert!(!p.same_addresses());

    let same = Pairing::new(&before, &before);
    assert!(same.same_addresses());
    assert_eq!(same.iter().flatten().collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!((same.same_head(), same.same_tail()), (4, 0), "all the same");

    // One endpoint changes readiness: those before and after it are the same as they
    // were (their metadata shared), and carried in bulk.
    let mut flipped = before.endpoints().to_vec();
    flipped[1] = flipped[1]
        .clone()
        .with_readiness(Readiness::ServingTerminating);
    let flip = Pairing::new(&before, &EndpointSet::new(ServiceState::Active, flipped));
    assert!(flip.same_addresses());
    assert_eq!((flip.same_head(), flip.same_tail()), (1, 2));
    // Equal fields are not enough: endpoints whose metadata was made again are looked at
    // one by one.
    let remade = set(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.4:80", "10.0.0.6:80"]);
    let remade = Pairing::new(&before, &remade);
    assert!(remade.same_addresses());
    assert_eq!((remade.same_head(), remade.same_tail()), (0, 0));

    let emptied = Pairing::new(&before, &set(&[]));
    assert_eq!(emptied.gone().len(), 4, "everything left");
    let filled = Pairing::new(&set(&[]), &before);
    assert_eq!(filled.added(), 4, "everything came");
}

proptest::proptest! {
    /// Against a lookup by address: every pairing of two random sets drawn from the same
    /// 40 addresses (so changes fall at the start, the end, the middle, or everywhere).
    #[test]
    fn pairing_matches_a_lookup_by_address(
        before in proptest::collection::btree_set(0u8..40, 0..40),
        after in proptest::collection::btree_set(0u8..40, 0..40),
    ) {
        let set = |ids: &std::collections::BTreeSet<u8>| {
            let eps = ids.iter().map(|i| Endpoint::new(SocketAddr::from(([10, 0, 0, *i], 80))));
            EndpointSet::new(ServiceState::Active, eps.collect())
        };
        let (old, new) = (set(&before), set(&after));
        let p = Pairing::new(&old, &new);
        let at: std::collections::HashMap<SocketAddr, usize> =
            old.endpoints().iter().enumerate().map(|(i, e)| (e.addr(), i)).collect();
        let expected: Vec<Option<usize>> =
            new.endpoints().iter().map(|e| at.get(&e.addr()).copied()).collect();
        proptest::prop_assert_eq!(p.iter().collect::<Vec<_>>(), expected);
        let kept: std::collections::HashSet<SocketAddr> =
            new.endpoints().iter().map(Endpoint::addr).collect();
        let gone: Vec<usize> = (0..old.len())
            .filter(|i| !kept.contains(&old.endpoints()[*i].addr()))
            .collect();
        proptest::prop_assert_eq!(p.gone().collect::<Vec<_>>(), gone);
        proptest::prop_assert_eq!(p.added(), after.difference(&before).count());
    }
}
