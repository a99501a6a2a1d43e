use super::*;
use crate::endpoint::{Endpoint, ServiceState};

#[test]
fn the_ewma_weighs_each_sample_by_the_time_since_the_last() {
    let decay = Duration::from_secs(10);
    let after_one_tau = ewma(5e6, 1e6, decay, decay);
    let expected = 5e6 * (-1f64).exp() + 1e6 * (1.0 - (-1f64).exp());
    assert!((after_one_tau - expected).abs() < 1.0);
    assert_eq!(
        ewma(5e6, 1e6, Duration::ZERO, decay),
        5e6,
        "no time passed, no weight"
    );
    // Samples close together (the linear pull) and further apart (the polynomial), each
    // against the exact update, from below and from above.
    for elapsed in [
        Duration::from_micros(3),
        Duration::from_millis(9),
        Duration::from_millis(50),
    ] {
        let w = (-elapsed.as_secs_f64() / decay.as_secs_f64()).exp();
        for (estimate, sample) in [(5e6, 1e6), (1e6, 5e6)] {
            let exact = estimate * w + sample * (1.0 - w);
            let ours = ewma(estimate, sample, elapsed, decay);
            assert!(
                (ours - exact).abs() <= 1e-9 * exact,
                "after {elapsed:?}: {ours} against {exact}"
            );
        }
    }
}

#[test]
fn a_peak_replaces_at_once_and_falls_back_linearly() {
    assert_eq!(held_peak(1e6, 5e6, 0.0), 5e6, "a higher sample replaces it");
    assert_eq!(held_peak(5e6, 1e6, 0.0), 5e6, "no time passed");
    let after = held_peak(5e6, 1e6, 8e6);
    assert_eq!(after, 5e6 - 8e6 / PEAK_HOLD);
    assert_eq!(held_peak(5e6, 1e6, 1e9), 1e6, "gone: the sample stands");
}

#[test]
fn a_stall_raises_the_peak_and_barely_the_ewma() {
    let table = LoadTable::default();
    let set = EndpointSet::new(
        ServiceState::Active,
        vec![Endpoint::new("10.0.0.1:80".parse().unwrap())],
    );
    let loads = table.for_set(&set);
    let load = &loads[0];
    let ms = Duration::from_millis;
    // Answers every millisecond in 0.3 ms for ten seconds, from a minute on (the first
    // answer nearly replaces the initial estimate)...
    for t in 60_000..70_000 {
        table.record_at(load, Duration::from_micros(300), ms(t));
    }
    let settled = load.ewma_nanos();
    assert!((settled - 300e3).abs() < 1e3, "{settled}");
    assert_eq!(load.peak_nanos(), 0.0);
    // ...then once in 3 ms.
    table.record_at(load, ms(3), ms(70_000));
    assert_eq!(load.peak_nanos(), 3e6);
    let moved = load.ewma_nanos() - settled;
    assert!(moved < 1e3, "the EWMA moved {moved} ns");
    // The peak is gone PEAK_HOLD × 2.7 ms later, and the next sample clears it.
    table.record_at(load, Duration::from_micros(300), ms(70_000 + 11));
    assert_eq!(load.peak_nanos(), 0.0);
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
    assert!(l2[1].peak_nanos() >= 50e6, "{:?}", l2[1]);
    drop(guard);
    assert_eq!(l2[0].in_flight(), 0);
    let s3 = EndpointSet::new(
        ServiceState::Active,
        vec![Endpoint::new("10.0.0.3:80".parse().unwrap())],
    );
    table.for_set(&s3);
    assert_eq!(table.len(), 1);
}

#[test]
fn decay_factor_matches_exp_across_its_range() {
    // Both sides of the switch to libm, from a sample microseconds after the previous one
    // to one several decays later.
    for x in [
        0.0,
        1e-9,
        LINEAR_BELOW - 1e-15,
        LINEAR_BELOW,
        1e-6,
        1e-3,
        0.01,
        1.0 / 64.0 - 1e-12,
        1.0 / 64.0,
        0.5,
        1.0,
        7.0,
    ] {
        let (ours, libm) = (decay_factor(x), (-x).exp());
        assert!(
            (ours - libm).abs() <= 1e-8 * libm,
            "e^-{x}: {ours} against {libm}"
        );
    }
}

#[test]
fn the_tables_clock_agrees_with_the_os_clock() {
    // The time-stamp counter, scaled, must agree with the OS clock about a known wait.
    let table = LoadTable::new(Duration::from_secs(10), Duration::from_micros(1));
    let start = table.raw_now();
    let wall = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(20));
    let measured = Duration::from_nanos(table.elapsed_nanos(start, table.raw_now()));
    let reference = wall.elapsed();
    let skew = measured.abs_diff(reference);
    assert!(
        skew < Duration::from_millis(2),
        "{measured:?} against {reference:?}"
    );
    assert_eq!(table.elapsed_nanos(start, start), 0, "no time, no latency");
}

#[test]
fn loads_go_with_the_last_holder_once_their_table_is_dropped() {
    // Loads point back at their table's recorder, which holds them: dropping the table
    // must end that cycle, and a request in flight must keep its load until it ends.
    let table = LoadTable::default();
    let set = EndpointSet::new(
        ServiceState::Active,
        vec![Endpoint::new("10.0.0.1:80".parse().unwrap())],
    );
    let loads = table.for_set(&set);
    let load = Arc::downgrade(&loads[0]);
    let in_flight = table.start(&loads[0]);
    drop(table);
    drop(loads);
    assert_eq!(load.upgrade().map(|l| l.in_flight()), Some(1));
    drop(in_flight);
    assert!(load.upgrade().is_none(), "the load leaked");
}

#[test]
fn a_load_with_its_counts_is_no_larger_than_a_cache_line() {
    // Balancers read many loads per pick: keep each within a cache line's size.
    assert!(std::mem::size_of::<EndpointLoad>() + 2 * std::mem::size_of::<usize>() <= 64);
}
