use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One of the watches discovery keeps per Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WatchKind {
    /// The Service object.
    Service,
    /// Its EndpointSlices (or v1 Endpoints).
    Endpoints,
    /// Its Pods (labels, weights, Ready time).
    Pods,
}

impl WatchKind {
    /// Every kind, in a fixed order.
    pub const ALL: [WatchKind; 3] = [WatchKind::Service, WatchKind::Endpoints, WatchKind::Pods];

    fn index(self) -> usize {
        match self {
            WatchKind::Service => 0,
            WatchKind::Endpoints => 1,
            WatchKind::Pods => 2,
        }
    }
}

/// How fresh discovery's view is, shared by every snapshot of a Service so that an old
/// snapshot still tells the current staleness.
///
/// A quiet, healthy watch delivers no events, so freshness is tracked as health, per
/// watch: a watch is healthy until a failure arrives, and stale from that first failure
/// until its next success (an event or a completed list). A Service's staleness is that of
/// its stalest watch: zero while every watch is healthy, otherwise the time since the
/// earliest failure not yet healed. A watch that is switched off on purpose (say, Pods the
/// client may not read) is not stale.
#[derive(Debug)]
pub struct SyncClock {
    origin: Instant,
    /// Per [`WatchKind`]: 0 while healthy, else 1 + milliseconds after `origin` of the
    /// first failure since the last success.
    failing_since: [AtomicU64; 3],
}

impl Default for SyncClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncClock {
    /// A clock whose watches are all healthy now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            failing_since: Default::default(),
        }
    }

    /// Records a success of `kind` (an event or a completed list): it is healthy again.
    pub fn synced(&self, kind: WatchKind) {
        self.failing_since[kind.index()].store(0, Ordering::Relaxed);
    }

    /// Records a failure of `kind` (an API error or a broken watch); a watch already
    /// failing keeps the time of its first failure.
    pub fn failed(&self, kind: WatchKind) {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let _ = self.failing_since[kind.index()].compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Whether every watch is healthy.
    pub fn is_healthy(&self) -> bool {
        self.failing_since
            .iter()
            .all(|f| f.load(Ordering::Relaxed) == 0)
    }

    /// Zero while every watch is healthy; otherwise the time since the earliest failure
    /// that has not healed.
    pub fn staleness(&self) -> Duration {
        WatchKind::ALL
            .into_iter()
            .map(|k| self.staleness_of(k))
            .max()
            .unwrap_or_default()
    }

    /// Zero while `kind` is healthy; otherwise the time since its first failure.
    pub fn staleness_of(&self, kind: WatchKind) -> Duration {
        match self.failing_since[kind.index()].load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => self
                .origin
                .elapsed()
                .saturating_sub(Duration::from_millis(since - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_counts_from_the_first_unhealed_failure_per_watch() {
        let clock = SyncClock::new();
        assert!(clock.is_healthy());
        assert_eq!(clock.staleness(), Duration::ZERO);
        clock.failed(WatchKind::Pods);
        std::thread::sleep(Duration::from_millis(30));
        // A second failure, and another watch's success, keep the first failure's time.
        clock.failed(WatchKind::Pods);
        clock.synced(WatchKind::Service);
        let pods = clock.staleness_of(WatchKind::Pods);
        assert!(pods >= Duration::from_millis(30), "{pods:?}");
        assert_eq!(clock.staleness_of(WatchKind::Service), Duration::ZERO);
        assert!(clock.staleness() >= pods);
        clock.synced(WatchKind::Pods);
        assert!(clock.is_healthy());
        assert_eq!(clock.staleness(), Duration::ZERO);
    }
}
