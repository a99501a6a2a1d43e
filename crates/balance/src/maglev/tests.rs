use super::*;

fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
        .collect()
}

fn shares(m: &Maglev, n: usize) -> Vec<f64> {
    let mut counts = vec![0usize; n];
    for slot in &m.table {
        counts[*slot as usize] += 1;
    }
    counts.iter().map(|c| *c as f64 / m.size() as f64).collect()
}

#[test]
fn equal_weights_get_equal_shares() {
    let m = Maglev::new(&ids(10), &[1; 10]).unwrap();
    assert_eq!(m.size(), 65_537);
    for s in shares(&m, 10) {
        assert!((s - 0.1).abs() < 0.01, "{s}");
    }
}

#[test]
fn weights_are_honoured_and_zero_gets_nothing() {
    let w = [4, 2, 1, 1, 0];
    let m = Maglev::new(&ids(5), &w).unwrap();
    let s = shares(&m, 5);
    for (i, wi) in w.iter().enumerate() {
        assert!((s[i] - f64::from(*wi) / 8.0).abs() < 0.01, "{s:?}");
    }
    assert_eq!(s[4], 0.0);
    assert!(Maglev::new(&ids(2), &[0, 0]).is_none());
    assert!(Maglev::new::<String>(&[], &[]).is_none());
}

#[test]
fn same_endpoints_same_table_and_same_key_same_endpoint() {
    let a = Maglev::new(&ids(50), &[1; 50]).unwrap();
    let b = Maglev::new(&ids(50), &[1; 50]).unwrap();
    assert_eq!(a, b);
    let k = hash_key(b"user-42");
    assert_eq!(a.lookup(k), b.lookup(k));
}

/// The share of keys that did not map to `gone` but map elsewhere once it is removed.
fn disruption(ids: &[String], gone: usize) -> f64 {
    let before = Maglev::new(ids, &vec![1; ids.len()]).unwrap();
    // The others keep their ids, and positions shift past the removed one.
    let mut rest = ids.to_vec();
    rest.remove(gone);
    let after = Maglev::new(&rest, &vec![1; rest.len()]).unwrap();
    let (mut stayed, mut moved) = (0u32, 0u32);
    for k in 0..20_000u64 {
        let h = hash_key(&k.to_le_bytes());
        let b = before.lookup(h);
        if b == gone {
            continue; // had to move
        }
        stayed += 1;
        let expected_after = if b > gone { b - 1 } else { b };
        moved += u32::from(after.lookup(h) != expected_after);
    }
    f64::from(moved) / f64::from(stayed)
}

#[test]
fn removing_one_endpoint_moves_few_keys() {
    assert!(disruption(&ids(100), 37) < 0.01);
    // Ten endpoints at loopback-like addresses, 50 address sets: the worst one moves
    // under 1.5 % of the keys it did not have to move.
    let worst = (0..50u64)
        .map(|set| {
            let ids: Vec<String> = (0..10)
                .map(|i| {
                    format!(
                        "127.0.{}.{}:{}",
                        set % 7,
                        i + 1 + set % 40,
                        30_000 + set * 13 + i
                    )
                })
                .collect();
            disruption(&ids, (set % 10) as usize)
        })
        .fold(0.0, f64::max);
    assert!(worst < 0.015, "{worst} of the other keys moved");
}
