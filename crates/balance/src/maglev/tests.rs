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
    assert_eq!(m.size(), 1_021);
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

#[test]
fn removing_one_endpoint_moves_few_keys() {
    let n = 100;
    let before = Maglev::new(&ids(n), &vec![1; n]).unwrap();
    // Drop endpoint 37; the others keep their ids, and positions shift past it.
    let mut rest = ids(n);
    rest.remove(37);
    let after = Maglev::new(&rest, &vec![1; n - 1]).unwrap();
    let keys = 20_000u64;
    let mut moved = 0;
    for k in 0..keys {
        let h = hash_key(&k.to_le_bytes());
        let b = before.lookup(h);
        if b == 37 {
            continue; // had to move
        }
        let expected_after = if b > 37 { b - 1 } else { b };
        if after.lookup(h) != expected_after {
            moved += 1;
        }
    }
    let share = moved as f64 / keys as f64;
    assert!(share < 0.05, "{share} of the other keys moved");
}
