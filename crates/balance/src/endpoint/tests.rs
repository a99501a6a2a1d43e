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
    // Equal fields are not enough: endpoints whose metadata was made again (equal, not
    // shared) are looked at one by one.
    let with_meta = |s: &EndpointSet| {
        let endpoints = s.endpoints().iter().map(|e| {
            e.clone().with_meta(EndpointMeta {
                pod: Some(e.addr().to_string().into()),
                ..EndpointMeta::default()
            })
        });
        EndpointSet::new(ServiceState::Active, endpoints.collect())
    };
    let (made, remade) = (with_meta(&before), with_meta(&before));
    assert_eq!(made, remade, "equal content");
    let remade = Pairing::new(&made, &remade);
    assert!(remade.same_addresses());
    assert_eq!((remade.same_head(), remade.same_tail()), (0, 0));
    // Endpoints without metadata have none to make again: made apart, they are the same;
    // an empty metadata made on purpose is equal to none, but not shared with it.
    let bare = Endpoint::new(before.endpoints()[0].addr());
    let empty = bare.clone().with_meta(EndpointMeta::default());
    assert!(bare == empty && !bare.shares_meta(&empty) && !bare.is_same(&empty));
    let again = set(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.4:80", "10.0.0.6:80"]);
    let again = Pairing::new(&before, &again);
    assert_eq!((again.same_head(), again.same_tail()), (4, 0));

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

proptest::proptest! {
    /// A set made after another knows from its copy alone what comparing the two lists
    /// finds: its pairing with the set before, and whether it equals it, are those of the
    /// same list made without that knowledge. Endpoints go, change readiness or weight,
    /// have their metadata made again (equal, not shared), stay, or come.
    #[test]
    fn sets_made_after_another_pair_and_compare_as_if_scanned(
        before in proptest::collection::btree_set(0u8..40, 0..40),
        edits in proptest::collection::vec(0u8..8, 40),
        added in proptest::collection::btree_set(40u8..60, 0..4),
        spent_edits in proptest::collection::vec(0u8..8, 40),
    ) {
        let ep = |i: u8| {
            Endpoint::new(SocketAddr::from(([10, 0, 0, i], 80))).with_meta(EndpointMeta {
                pod: Some(format!("pod-{i}").into()),
                ..EndpointMeta::default()
            })
        };
        let old = EndpointSet::new(ServiceState::Active, before.iter().map(|i| ep(*i)).collect());
        let mut list = Vec::new();
        for ((i, e), edit) in before.iter().zip(old.endpoints()).zip(&edits) {
            match edit {
                0 => {}
                1 => list.push(e.clone().with_readiness(Readiness::ServingTerminating)),
                2 => list.push(e.clone().with_weight(e.weight() + 1)),
                3 => list.push(ep(*i)),
                _ => list.push(e.clone()),
            }
        }
        list.extend(added.iter().map(|i| ep(*i)));
        let plain = EndpointSet::from_sorted(ServiceState::Active, &list);
        let after = EndpointSet::from_sorted_after(ServiceState::Active, &list, &old);
        proptest::prop_assert!(after.lineage_to(&old).is_some());
        proptest::prop_assert_eq!(after.endpoints(), plain.endpoints());
        proptest::prop_assert_eq!(Pairing::new(&old, &after), Pairing::new(&old, &plain));
        let equal = plain.endpoints() == old.endpoints();
        proptest::prop_assert_eq!(after == old, equal);
        proptest::prop_assert_eq!(old == after, equal);
        // Made after a set it does not follow, it compares and pairs by scanning.
        let other = EndpointSet::from_sorted(ServiceState::Active, old.endpoints());
        proptest::prop_assert_eq!(Pairing::new(&other, &after), Pairing::new(&other, &plain));
        proptest::prop_assert_eq!(after == other, equal);

        // Made with what the list's maker knows of its ends (discovery's patched list),
        // the walks start there: the same set, pairing and comparison, whatever part of
        // the true ends is claimed. Claims about another list, or that do not fit the
        // lengths, are not used.
        let truth = after.lineage_to(&old).expect("made after old");
        let (h, t) = (truth.same_head as usize, truth.same_tail as usize);
        let claims = [
            (old.list_id(), h, t),
            (old.list_id(), h / 2, t / 2),
            (old.list_id(), 0, t),
            (old.list_id(), h, 0),
            (old.list_id(), old.len() + 1, 0),
            (old.list_id(), usize::MAX, 1),
            (other.list_id(), old.len(), 0),
        ];
        for (after_list, head, tail) in claims {
            let known = KnownEnds { after: after_list, head, tail };
            let made = EndpointSet::from_sorted_after_reusing(
                ServiceState::Active,
                &list,
                &old,
                None,
                Some(known),
            );
            proptest::prop_assert_eq!(made.endpoints(), plain.endpoints());
            let lineage = made.lineage_to(&old).expect("made after old");
            let (lh, lt) = (lineage.same_head as usize, lineage.same_tail as usize);
            proptest::prop_assert!(lh + lt <= old.len().min(list.len()));
            proptest::prop_assert!(old.endpoints()[..lh]
                .iter()
                .zip(&list[..lh])
                .chain(old.endpoints()[old.len() - lt..].iter().zip(&list[list.len() - lt..]))
                .all(|(a, b)| a.is_same(b)));
            if after_list == old.list_id()
                && head.checked_add(tail).is_some_and(|n| n <= old.len().min(list.len()))
            {
                proptest::prop_assert!(lh >= head && lt >= tail);
            }
            proptest::prop_assert_eq!(Pairing::new(&old, &made), Pairing::new(&old, &plain));
            proptest::prop_assert_eq!(made == old, equal);
        }

        // Values carried into a list of some earlier set's values (the old ones with
        // some left out, made again or kept) are those carried into a new list: the
        // old values themselves where carried, made ones elsewhere.
        let values: Vec<Arc<u32>> = (0..old.len() as u32).map(Arc::new).collect();
        let pairing = Pairing::new(&old, &after);
        let make = |i: usize, before: Option<usize>| match before {
            Some(j) if j % 2 == 0 => values[j].clone(),
            _ => Arc::new(1000 + i as u32),
        };
        let carried: Vec<Arc<u32>> = pairing.carry(&values, make);
        let mut into: Vec<Arc<u32>> = values
            .iter()
            .zip(&spent_edits)
            .filter(|(_, edit)| **edit != 0)
            .map(|(v, edit)| if *edit == 1 { Arc::new(**v) } else { v.clone() })
            .collect();
        pairing.carry_into(&values, &mut into, Arc::ptr_eq, make);
        proptest::prop_assert_eq!(&into, &carried);
        for (a, b) in into.iter().zip(&carried) {
            proptest::prop_assert_eq!(**a >= 1000, !Arc::ptr_eq(a, b));
        }

        // Made with a spent set's list patched in place: the same set, in the spent list's
        // allocation when nothing else holds it, else in one of its own with the spent
        // set untouched. (Spent lists here are `before` with some endpoints left out,
        // remade or reweighted.)
        let spent_list: Vec<Endpoint> = before
            .iter()
            .zip(old.endpoints())
            .zip(&spent_edits)
            .filter(|(_, edit)| **edit != 0)
            .map(|((i, e), edit)| match edit {
                1 => ep(*i),
                2 => e.clone().with_weight(e.weight() + 2),
                _ => e.clone(),
            })
            .collect();
        // Either on its own, or as discovery makes them: the set in force made after the
        // spent one (whose lineage then tells how much of the spent list is the same).
        for (held, chained) in [(false, false), (true, false), (false, true), (true, true)] {
            let spent = Arc::new(EndpointSet::from_sorted(ServiceState::Active, &spent_list));
            let old = if chained {
                EndpointSet::from_sorted_after(ServiceState::Active, old.endpoints(), &spent)
            } else {
                old.clone()
            };
            proptest::prop_assert_eq!(old.follows(&spent), chained);
            let at = spent.endpoints().as_ptr();
            let kept = held.then(|| spent.clone());
            let reused = EndpointSet::from_sorted_after_reusing(
                ServiceState::Active,
                &list,
                &old,
                Some(spent),
                None,
            );
            proptest::prop_assert_eq!(reused.endpoints(), plain.endpoints());
            proptest::prop_assert!(reused.lineage_to(&old).is_some());
            proptest::prop_assert_eq!(reused == old, equal);
            proptest::prop_assert_eq!(Pairing::new(&old, &reused), Pairing::new(&old, &plain));
            // Reused unless held or with room for more than twice the list; then in the
            // spent list's allocation unless it had to grow (the spent list lives until
            // a new one is made, so the allocator cannot hand its memory out again), with
            // its room. Empty lists allocate nothing.
            let reusable = !held && spent_list.len() <= 2 * list.len();
            if !list.is_empty() && (!reusable || spent_list.len() >= list.len()) {
                proptest::prop_assert_eq!(reused.endpoints().as_ptr() == at, reusable);
            }
            let expected = if reusable { spent_list.len().max(list.len()) } else { list.len() };
            proptest::prop_assert_eq!(reused.endpoints.capacity(), expected);
            if let Some(kept) = kept {
                proptest::prop_assert_eq!(kept.endpoints(), &spent_list[..]);
            }
        }
    }
}

#[test]
fn a_list_out_of_order_is_sorted_even_after_another() {
    let old = EndpointSet::new(ServiceState::Active, vec![ep("10.0.0.1:80")]);
    let list = [ep("10.0.0.3:80"), ep("10.0.0.2:80"), ep("10.0.0.3:80")];
    let after = EndpointSet::from_sorted_after(ServiceState::Active, &list, &old);
    assert_eq!(after, EndpointSet::new(ServiceState::Active, list.to_vec()));
    assert_eq!(after.len(), 2);
    assert!(after.lineage_to(&old).is_none(), "made as `new` makes it");
    // An address twice right at the edge of what stayed the same is found too.
    let old = EndpointSet::new(
        ServiceState::Active,
        vec![ep("10.0.0.1:80"), ep("10.0.0.2:80"), ep("10.0.0.3:80")],
    );
    let twice = old.endpoints()[1]
        .clone()
        .with_readiness(Readiness::ServingTerminating);
    let mut list = old.endpoints().to_vec();
    list.insert(2, twice);
    let after = EndpointSet::from_sorted_after(ServiceState::Active, &list, &old);
    assert_eq!(after.len(), 3);
    assert!(after.lineage_to(&old).is_none(), "made as `new` makes it");
}

#[test]
fn labels_are_shared_until_changed() {
    let a: Labels = [("version", "4.2")].into_iter().collect();
    let mut b = a.clone();
    assert!(a.shares(&b) && a == b);
    b.to_mut().insert("team".into(), "x".into());
    assert!(!a.shares(&b) && a != b, "a change copies first");
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 2);
    let remade: Labels = [("version", "4.2")].into_iter().collect();
    assert!(!a.shares(&remade) && a == remade, "equal content, apart");
    assert!(
        Labels::from(BTreeMap::new()).shares(&Labels::new()),
        "empty allocates nothing"
    );
}

/// Endpoints made with one block share it, each at its own place: a copy shares its
/// metadata with the original, two places of one block do not, and metadata made apart
/// with the same content is equal without being shared.
#[test]
fn endpoints_of_a_block_share_it_each_at_its_place() {
    let block = MetaBlock::from(
        (0..3)
            .map(|i| EndpointMeta {
                pod: Some(format!("p{i}").into()),
                ..EndpointMeta::default()
            })
            .collect::<Vec<_>>(),
    );
    let addr = |i: u8| SocketAddr::from(([10, 0, 0, i], 80));
    let eps: Vec<Endpoint> = (0..3)
        .map(|i| Endpoint::new(addr(i as u8)).with_meta_in(&block, i))
        .collect();
    assert_eq!(eps[1].meta().pod.as_deref(), Some("p1"));
    assert!(eps[1].shares_meta(&eps[1].clone()));
    assert!(eps[1].is_same(&eps[1].clone()));
    assert!(!eps[0].shares_meta(&eps[1]));
    let apart = Endpoint::new(addr(1)).with_meta(eps[1].meta().clone());
    assert_eq!(apart, eps[1]);
    assert!(!apart.shares_meta(&eps[1]));
    // Debug shows the endpoint's own metadata, not the block's.
    assert!(!format!("{:?}", eps[1]).contains("p2"));
    let outside = std::panic::catch_unwind(|| Endpoint::new(addr(9)).with_meta_in(&block, 3));
    assert!(outside.is_err(), "an index outside the block");
    // The place in the block costs an endpoint 8 bytes over a pointer of its own.
    #[cfg(target_pointer_width = "64")]
    assert_eq!(std::mem::size_of::<Endpoint>(), 56);
}

#[test]
fn label_sets_are_shared_while_in_use_and_stay_bounded_as_they_come_and_go() {
    let set = |i: usize| -> Labels {
        [("app", "web".to_string()), ("version", i.to_string())]
            .into_iter()
            .collect()
    };
    let mut sets = LabelSets::new();
    // Two Pods of one ReplicaSet: one allocation.
    let a = sets.share(set(0));
    let b = sets.share(set(0));
    assert!(a.shares(&b));
    assert!(!a.shares(&sets.share(set(1))));
    // 100,000 label sets that each come and go (a Pod that leaves drops its set), while
    // 100 stay in use: the table keeps at most twice what is in use, plus 64.
    let staying: Vec<Labels> = (0..100).map(|i| sets.share(set(1_000_000 + i))).collect();
    let mut most = 0;
    for i in 0..100_000 {
        drop(sets.share(set(2_000_000 + i)));
        most = most.max(sets.len());
    }
    assert!(most <= 2 * (100 + 2) + 64 + 1, "the table grew to {most}");
    // What stayed in use is still the set it gives back, and what a caller holds is kept.
    for (i, kept) in staying.iter().enumerate() {
        assert!(kept.shares(&sets.share(set(1_000_000 + i))));
    }
    assert!(a.shares(&sets.share(set(0))));
    // Empty labels allocate nothing and take no room.
    let before = sets.len();
    assert!(sets.share(Labels::new()).shares(&Labels::new()));
    assert_eq!(sets.len(), before);
}
