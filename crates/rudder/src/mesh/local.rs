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
//! entry lives. At most [`PER_THREAD`] of each kind are kept per thread: a full table
//! (endpoints that came and went) is emptied and refilled.

use std::cell::RefCell;
use std::collections::HashMap;

use bytes::Bytes;
use http::HeaderValue;
use http::uri::Authority;

/// Copies kept per thread, of endpoint authorities and of `Host` values each.
const PER_THREAD: usize = 1024;

/// Per shared value, by the address of its bytes: the shared value itself (held, so that
/// no other value's bytes can take that address while the entry lives) and this thread's
/// copy.
type Copies<T> = RefCell<HashMap<usize, (T, T), foldhash::fast::FixedState>>;

thread_local! {
    static AUTHORITIES: Copies<Authority> = RefCell::default();
    static HOSTS: Copies<HeaderValue> = RefCell::default();
}

/// This thread's copy of `shared`.
pub(crate) fn authority(shared: &Authority) -> Authority {
    copy(&AUTHORITIES, shared, shared.as_str().as_bytes(), |s| {
        Authority::from_maybe_shared(Bytes::copy_from_slice(s)).ok()
    })
}

/// This thread's copy of `shared`, a `Host` value.
pub(crate) fn host(shared: &HeaderValue) -> HeaderValue {
    copy(&HOSTS, shared, shared.as_bytes(), |s| {
        HeaderValue::from_bytes(s).ok()
    })
}

fn copy<T: Clone>(
    table: &'static std::thread::LocalKey<Copies<T>>,
    shared: &T,
    bytes: &[u8],
    make: impl FnOnce(&[u8]) -> Option<T>,
) -> T {
    let at = bytes.as_ptr() as usize;
    table
        .try_with(|copies| {
            let mut copies = copies.borrow_mut();
            if let Some((_, mine)) = copies.get(&at) {
                return mine.clone();
            }
            if copies.len() >= PER_THREAD {
                copies.clear();
            }
            let mine = make(bytes).unwrap_or_else(|| shared.clone());
            copies.insert(at, (shared.clone(), mine.clone()));
            mine
        })
        // The thread is exiting.
        .unwrap_or_else(|_| shared.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_equal_and_bounded() {
        let shared: Authority = "10.0.0.1:8080".parse().unwrap();
        let a = authority(&shared);
        assert_eq!(a, shared);
        assert_eq!(authority(&shared), a);
        let host = HeaderValue::from_static("web:8080");
        assert_eq!(super::host(&host), host);
        // Endpoints coming and going: the table never holds more than its bound, and
        // a copy always has the text it stands for, whatever address it was found by.
        for i in 0..3 * PER_THREAD {
            let other: Authority = format!("10.1.{}.{}:80", i / 250, i % 250).parse().unwrap();
            assert_eq!(authority(&other), other);
            assert!(AUTHORITIES.with(|c| c.borrow().len()) <= PER_THREAD);
        }
    }
}
