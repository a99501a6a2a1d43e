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
