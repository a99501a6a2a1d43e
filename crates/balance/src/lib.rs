//! Pure load-balancing logic for Rudder: label selectors, subsets, weighted splits and
//! balancers. No I/O and no Kubernetes client types live here, so everything can be driven
//! directly by unit and property tests.
//!
//! Today this crate holds [`Selector`], the Kubernetes label selector (string syntax and
//! matching), and [`EndpointSet`], the immutable endpoint snapshot discovery publishes.
//! Subsets, splits and balancers follow.

pub mod balancer;
pub mod endpoint;
pub mod load;
pub mod maglev;
pub mod selector;
pub mod subset;
pub mod weighted;

pub use self::balancer::{Algorithm, Balancer};
pub use self::endpoint::{
    EmptyReason, Endpoint, EndpointMeta, EndpointSet, Readiness, ServiceState, SyncClock,
};
pub use self::load::{Ejection, EndpointLoad, InFlight, LoadTable};
pub use self::maglev::Maglev;
pub use self::selector::{Requirement, Selector, SelectorError};
pub use self::subset::{Fallback, Picked, SubsetError, SubsetIndex};
pub use self::weighted::WeightedIndex;
