//! The retry budget, fed without a shared write per request.
//!
//! tower's [`TpsBudget`] takes a mutex, reads the clock and adds to one counter on every
//! deposit, so with one deposit per request every thread of a client wrote the same two
//! cache lines on every request (measured with two threads sharing one Mesh, `cargo bench
//! -p rudder --bench mesh -- two_threads`: 1.20–1.28 µs per request with it, 1.10 µs
//! without). Here each thread counts its requests on a line of its own and passes them on
//! in batches of [`BATCH`], as *one* deposit into a budget whose ratio is `BATCH` times the
//! configured one (so one deposit earns what `BATCH` requests earn: one clock read and one
//! lock per batch, not per request); retries (rare) withdraw from the budget as before.
//! Below 1/`BATCH` (6.25 %) a batch is passed on as `BATCH` deposits at the configured
//! ratio instead: `TpsBudget` rounds the cost of a retry to a whole number of deposits
//! when the ratio is at most 1, which for a scaled ratio just under 1 would nearly double
//! the budget.

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
    /// Deposits per batch: 1 (at `BATCH` times the ratio) or `BATCH`.
    per_batch: u32,
    stripes: [Stripe; STRIPES],
}

impl RetryBudget {
    /// `percent` of requests (0–1000) may be retried, plus `min_per_second`.
    pub(crate) fn new(percent: f32, min_per_second: u32) -> Self {
        let ratio = percent / 100.0;
        // Percent is at most 1,000 (checked by the builder), so a scaled ratio is at most
        // 160, within the 1,000 `TpsBudget` accepts.
        let per_batch = if ratio * BATCH as f32 > 1.0 { 1 } else { BATCH };
        let ratio = ratio * (BATCH / per_batch) as f32;
        Self {
            budget: TpsBudget::new(Duration::from_secs(10), min_per_second, ratio),
            per_batch,
            stripes: Default::default(),
        }
    }

    /// Counts a request.
    pub(crate) fn deposit(&self) {
        let stripe = &self.stripes[STRIPE.with(Cell::get)];
        if stripe.0.fetch_add(1, Ordering::Relaxed) % BATCH == BATCH - 1 {
            for _ in 0..self.per_batch {
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

    #[test]
    fn batches_earn_what_their_requests_earn_at_every_ratio() {
        let requests = BATCH * 100;
        for percent in [1.0f32, 3.0, 5.0, 6.25, 7.0, 20.0, 100.0, 1000.0] {
            let b = RetryBudget::new(percent, 0);
            for _ in 0..requests {
                b.deposit();
            }
            let allowed = (0..requests * 20).take_while(|_| b.withdraw()).count() as f32;
            let expected = requests as f32 * percent / 100.0;
            // `TpsBudget` rounds a retry's cost to a whole number of thousandths of a
            // deposit (or, at most 1, of deposits): within 5 % at every ratio.
            assert!(
                (allowed - expected).abs() <= expected * 0.05,
                "{percent} %: {allowed} retries allowed for {requests} requests"
            );
        }
    }
}
