//! Per-thread copies of the authority bytes every request carries.
//!
//! A request goes out with the endpoint's `ip:port` as its URI authority and the Service's
//! authority as its `Host`, both clones of `Bytes` the Mesh keeps. Cloning `Bytes` writes
//! its reference count, so with one copy shared by every thread, each request wrote cache
//! lines that the other threads' requests also wrote (two threads sharing one Mesh, `cargo
//! bench -p rudder --bench mesh -- two_threads`: 1.08 µs per request, 0.92 µs with the
//! copies). Each thread clones its own copy instead, made on the thread's first request to
//! that authority. Copies are found by the address of the shared bytes; the table holds
//! the shared value too, so that address cannot be reused for another authority while its
//! entry lives.
//!
//! At most [`PER_THREAD`] of each kind are kept per thread. Once a thread's table is full,
//! other authorities go out as the Mesh's shared value: a thread that sends to more
//! endpoints than that spreads its requests thinly enough that no one reference count is
//! contended, and copying per request would allocate on the request path. A full table is
//! emptied and refilled only when endpoints arrived since it filled (its entries may be of
//! endpoints that left, and the new ones go without copies) and at least [`REFRESH_AFTER`]
//! requests missed it since it filled: a Service that stopped changing costs no allocation
//! at any size, and one in a long rollout at most a refill per [`REFRESH_AFTER`] misses.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::HeaderValue;
use http::uri::Authority;

/// Copies kept per thread, of endpoint authorities and of `Host` values each.
const PER_THREAD: usize = 1024;

/// Misses of a full table, since it filled, before endpoints that arrived since then get
/// it emptied and refilled.
const REFRESH_AFTER: u32 = 16 * PER_THREAD as u32;

/// Endpoints the Mesh has made routing state for, process-wide ([`endpoint_arrived`]).
static ARRIVALS: AtomicU64 = AtomicU64::new(0);

/// Counts an endpoint new to a routing pool: a thread whose table is full may refill it.
pub(crate) fn endpoint_arrived() {
    ARRIVALS.fetch_add(1, Ordering::Relaxed);
}

/// One thread's copies of one kind.
struct Copies<T> {
    /// Per shared value, by the address of its bytes: the shared value itself (held, so
    /// that no other value's bytes can take that address while the entry lives) and this
    /// thread's copy.
    map: HashMap<usize, (T, T), foldhash::fast::FixedState>,
    /// [`ARRIVALS`] when the map last filled.
    filled_at: u64,
    /// Requests that missed the map since it filled.
    misses: u32,
}

impl<T> Default for Copies<T> {
    fn default() -> Self {
        Self {
            map: HashMap::default(),
            filled_at: 0,
            misses: 0,
        }
    }
}

thread_local! {
    static AUTHORITIES: RefCell<Copies<Authority>> = RefCell::default();
    static HOSTS: RefCell<Copies<HeaderValue>> = RefCell::default();
}

/// This thread's copy of `shared`.
pub(crate) fn authority(shared: &Authority) -> Authority {
    authority_counting(shared, &ARRIVALS)
}

/// [`authority`], with endpoint arrivals counted by `arrivals`.
fn authority_counting(shared: &Authority, arrivals: &AtomicU64) -> Authority {
    copy(
        &AUTHORITIES,
        arrivals,
        shared,
        shared.as_str().as_bytes(),
        |s| Authority::from_maybe_shared(Bytes::copy_from_slice(s)).ok(),
    )
}

/// This thread's copy of `shared`, a `Host` value.
pub(crate) fn host(shared: &HeaderValue) -> HeaderValue {
    copy(&HOSTS, &ARRIVALS, shared, shared.as_bytes(), |s| {
        HeaderValue::from_bytes(s).ok()
    })
}

fn copy<T: Clone>(
    table: &'static std::thread::LocalKey<RefCell<Copies<T>>>,
    arrivals: &AtomicU64,
    shared: &T,
    bytes: &[u8],
    make: impl FnOnce(&[u8]) -> Option<T>,
) -> T {
    let at = bytes.as_ptr() as usize;
    table
        .try_with(|copies| {
            let mut copies = copies.borrow_mut();
            if let Some((_, mine)) = copies.map.get(&at) {
                return mine.clone();
            }
            if copies.map.len() >= PER_THREAD {
                copies.misses = copies.misses.saturating_add(1);
                let arrived = arrivals.load(Ordering::Relaxed) != copies.filled_at;
                if !arrived || copies.misses < REFRESH_AFTER {
                    return shared.clone();
                }
                copies.map.clear();
            }
            let mine = make(bytes).unwrap_or_else(|| shared.clone());
            copies.map.insert(at, (shared.clone(), mine.clone()));
            if copies.map.len() == PER_THREAD {
                copies.filled_at = arrivals.load(Ordering::Relaxed);
                copies.misses = 0;
            }
            mine
        })
        // The thread is exiting.
        .unwrap_or_else(|_| shared.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority_no(i: usize) -> Authority {
        format!("10.1.{}.{}:80", i / 250, i % 250).parse().unwrap()
    }

    fn copied(shared: &Authority) -> bool {
        let at = shared.as_str().as_ptr() as usize;
        AUTHORITIES.with(|c| c.borrow().map.contains_key(&at))
    }

    #[test]
    fn copies_are_equal_and_bounded() {
        let shared: Authority = "10.0.0.1:8080".parse().unwrap();
        let a = authority(&shared);
        assert_eq!(a, shared);
        assert_eq!(authority(&shared), a);
        let host = HeaderValue::from_static("web:8080");
        assert_eq!(super::host(&host), host);
        // More authorities than the table holds: every one comes back with its own text,
        // and the table never holds more than its bound.
        let many: Vec<Authority> = (0..3 * PER_THREAD).map(authority_no).collect();
        for _ in 0..2 {
            for other in &many {
                assert_eq!(&authority(other), other);
                assert!(AUTHORITIES.with(|c| c.borrow().map.len()) <= PER_THREAD);
            }
        }
    }

    #[test]
    fn a_full_table_refills_only_after_endpoints_arrived() {
        // Its own count, not the process's, which other tests' pools move.
        let arrivals = AtomicU64::new(0);
        let ask = |a: &Authority| authority_counting(a, &arrivals);
        // Fill this thread's table with endpoints that then leave.
        let gone: Vec<Authority> = (0..PER_THREAD).map(authority_no).collect();
        for a in &gone {
            assert_eq!(&ask(a), a);
        }
        assert!(copied(&gone[0]));
        // Nothing arrived since the table filled: however often `new` is asked for, it
        // gets the shared value, and the table stays as it is.
        let new: Authority = "10.9.9.9:80".parse().unwrap();
        for _ in 0..2 * REFRESH_AFTER {
            assert_eq!(ask(&new), new);
        }
        assert!(!copied(&new));
        assert!(copied(&gone[0]));
        // An endpoint arrived, and more than `REFRESH_AFTER` requests missed the table
        // since it filled: the next miss empties it, and the endpoints asked for from
        // then on get copies.
        arrivals.fetch_add(1, Ordering::Relaxed);
        assert_eq!(ask(&new), new);
        assert!(copied(&new));
        assert!(!copied(&gone[0]));
        // Full again: the next arrival refills it only `REFRESH_AFTER` misses after that.
        for a in &gone[1..] {
            assert_eq!(&ask(a), a);
        }
        assert!(copied(&gone[1]));
        arrivals.fetch_add(1, Ordering::Relaxed);
        let newer: Authority = "10.9.9.10:80".parse().unwrap();
        for _ in 0..REFRESH_AFTER - 1 {
            assert_eq!(ask(&newer), newer);
        }
        assert!(!copied(&newer));
        assert_eq!(ask(&newer), newer);
        assert!(copied(&newer));
    }
}
