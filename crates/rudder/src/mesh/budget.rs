//! The retry budget, fed without a shared write per request.
//!
//! tower's [`TpsBudget`] takes a mutex, reads the clock and adds to one counter on every
//! deposit, so with one deposit per request every thread of a client wrote the same two
//! cache lines on every request (measured with two threads sharing one Mesh, `cargo bench
//! -p rudder --bench mesh -- two_threads`: 1.20–1.28 µs per request with it, 1.10 µs
//! without). Here each thread counts its requests on a line of its own and passes them on
//! in batches of [`BATCH`]; retries (rare) withdraw from the budget as before.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// Deposits passed to the budget at once. At most `BATCH - 1` per stripe are not yet
/// counted: a budget of 20 % lags by at most three retries per thread.
const BATCH: u32 = 16;

/// Stripes of deposit counters; threads beyond this many share them.
const STRIPES: usize = 8;

/// One counter on a line of its own (128 bytes: adjacent-line prefetch pairs lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU32);

thread_local! {
    /// This thread's stripe, handed out in turn as threads first deposit.
    static STRIPE: Cell<usize> = Cell::new({
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
    });
}

/// Retries allowed as a share of requests over the last 10 s, plus a floor per second.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    budget: TpsBudget,
    stripes: [Stripe; STRIPES],
}

impl RetryBudget {
    /// `percent` of requests (0–1000) may be retried, plus `min_per_second`.
    pub(crate) fn new(percent: f32, min_per_second: u32) -> Self {
        Self {
            budget: TpsBudget::new(Duration::from_secs(10), min_per_second, percent / 100.0),
            stripes: Default::default(),
        }
    }

    /// Counts a request.
    pub(crate) fn deposit(&self) {
        let stripe = &self.stripes[STRIPE.with(Cell::get)];
        if stripe.0.fetch_add(1, Ordering::Relaxed) % BATCH == BATCH - 1 {
            for _ in 0..BATCH {
                self.budget.deposit();
            }
        }
    }

    /// Takes one retry from the budget, if it allows one.
    pub(crate) fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deposits_count_in_batches() {
        // 50 %: two requests earn a retry; no floor.
        let b = RetryBudget::new(50.0, 0);
        for _ in 0..BATCH - 1 {
            b.deposit();
        }
        assert!(!b.withdraw(), "nothing is passed on before a batch is full");
        b.deposit();
        let allowed = (0..BATCH).take_while(|_| b.withdraw()).count();
        assert_eq!(allowed, BATCH as usize / 2);
    }
}
