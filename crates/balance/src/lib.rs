//! Pure load-balancing logic for Rudder: label selectors, subsets, weighted splits and
//! balancers. No I/O and no Kubernetes client types live here, so everything can be driven
//! directly by unit and property tests.
//!
//! - [`Selector`]: the Kubernetes label selector (string syntax and matching).
//! - [`EndpointSet`]: the immutable endpoint snapshot discovery publishes.
//! - [`SubsetIndex`]: label subsets of a snapshot with [`Fallback`]s; [`Split`]: weighted
//!   traffic between subsets (canary, blue/green).
//! - [`Balancer`]: weighted P2C over peak EWMA (default), exact weighted round robin,
//!   least requests and Maglev consistent hashing, over per-endpoint load kept in a
//!   [`LoadTable`] (with outlier [`Ejection`]), and zone preference with spill-over
//!   ([`Balancer::pick_local_first`]); [`SlowStart`] ramps the weights they draw from.
//! - [`Pool`]: all of the above for one Service port, indexed when discovery publishes and
//!   swapped in atomically; a request loads a [`Snapshot`], picks, and holds an
//!   [`Attempt`] that records its outcome.

pub mod balancer;
pub mod endpoint;
pub mod load;
pub mod maglev;
pub mod pool;
pub mod selector;
pub mod slow_start;
pub mod split;
pub mod subset;
pub mod weighted;

pub use self::balancer::{Algorithm, Balancer};
pub use self::endpoint::{
    EmptyReason, Endpoint, EndpointMeta, EndpointSet, KnownEnds, LabelSets, Labels, ListId,
    MetaBlock, Pairing, Readiness, ServiceState, SyncClock, Unroutable, UnroutableReason,
    WatchKind, ZoneHints,
};
pub use self::load::{
    Ejection, EjectionHook, EndpointLoad, HoldsLoad, InFlight, LoadTable, calibrate_clock,
};
pub use self::maglev::{Maglev, hash_key};
pub use self::pool::{
    Attempt, Pool, PoolConfig, PoolEntry, Retired, Snapshot, SnapshotGuard, SpareEntries,
};
pub use self::selector::{Requirement, Selector, SelectorError};
pub use self::slow_start::SlowStart;
pub use self::split::{Split, SplitError};
pub use self::subset::{
    EXTRA_SUBSETS, Fallback, IndexOptions, Matches, Picked, SubsetError, SubsetIndex,
};
pub use self::weighted::WeightedIndex;
