use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How fresh discovery's view is, shared by every snapshot of a Service so that an old
/// snapshot still tells the current staleness.
///
/// A quiet, healthy watch delivers no events, so freshness is tracked as health: the
/// clock is fresh while the last thing heard from the API was a success, and stale since
/// that last success once a failure arrives.
#[derive(Debug)]
pub struct SyncClock {
    origin: Instant,
    /// Milliseconds after `origin` of the last success.
    last_ms: AtomicU64,
    healthy: AtomicBool,
}

impl Default for SyncClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncClock {
    /// A clock that is healthy now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        }
    }

    /// Records a success (an event or a completed list).
    pub fn synced(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
        self.healthy.store(true, Ordering::Relaxed);
    }

    /// Records a failure (an API error or a broken watch).
    pub fn failed(&self) {
        self.healthy.store(false, Ordering::Relaxed);
    }

    /// Whether the last thing heard from the API was a success.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Zero while healthy; otherwise the time since the last success.
    pub fn staleness(&self) -> Duration {
        if self.is_healthy() {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}
