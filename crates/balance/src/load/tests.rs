use super::*;
use crate::endpoint::{Endpoint, ServiceState};

#[test]
fn peak_ewma_jumps_up_and_decays_down() {
    let decay = Duration::from_secs(10);
    assert_eq!(
        peak_ewma(1e6, 5e6, Duration::ZERO, decay),
        5e6,
        "a peak replaces the estimate"
    );
    let after_one_tau = peak_ewma(5e6, 1e6, decay, decay);
    let expected = 5e6 * (-1f64).exp() + 1e6 * (1.0 - (-1f64).exp());
    assert!((after_one_tau - expected).abs() < 1.0);
    assert_eq!(
        peak_ewma(5e6, 1e6, Duration::ZERO, decay),
        5e6,
        "no time passed, no decay"
    );
}

#[test]
fn loads_survive_snapshots_and_leave_with_their_address() {
    let table = LoadTable::default();
    let a = Endpoint::new("10.0.0.1:80".parse().unwrap());
    let b = Endpoint::new("10.0.0.2:80".parse().unwrap());
    let s1 = EndpointSet::new(ServiceState::Active, vec![a.clone(), b.clone()]);
    let l1 = table.for_set(&s1);
    let guard = table.start(&l1[0]);
    table.record(&l1[1], Duration::from_millis(50));
    let s2 = EndpointSet::new(ServiceState::Active, vec![b, a]);
    let l2 = table.for_set(&s2);
    assert_eq!(l2[0].in_flight(), 1, "same address, same load");
    assert!(l2[1].ewma() >= Duration::from_millis(50));
    drop(guard);
    assert_eq!(l2[0].in_flight(), 0);
    let s3 = EndpointSet::new(
        ServiceState::Active,
        vec![Endpoint::new("10.0.0.3:80".parse().unwrap())],
    );
    table.for_set(&s3);
    assert_eq!(table.loads.lock().unwrap().len(), 1);
}
