//! The test Kubernetes API server; see [`ApiServer`].

mod access;
mod admission;
mod controller;
mod discovery;
mod faults;
mod handler;
mod portforward;
mod query;
mod resource;
mod server;
mod status;
mod store;
mod table;
mod tls;
mod trace;
mod watch;

pub use self::access::{Access, Rule};
pub use self::faults::Faults;
pub use self::server::{ApiServer, ApiServerBuilder, Traffic};
pub use self::trace::{Speed, Trace, TraceEvent, TraceEventKind};
