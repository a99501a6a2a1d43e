//! Fault injection: the failures a real control plane has, on demand.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::server::Shared;

/// A handle that injects failures into a running [`ApiServer`](super::ApiServer).
///
/// Cheap to clone; every method takes effect at once for new requests, and
/// [`drop_watches`](Self::drop_watches) / [`stall_watches`](Self::stall_watches) also for
/// watches already open.
#[derive(Clone)]
pub struct Faults {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug, Default)]
pub(crate) struct FaultState {
    pub(crate) fail_next: Option<(usize, StatusCode)>,
    pub(crate) expire_next_watch: bool,
    pub(crate) latency: Duration,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults").finish_non_exhaustive()
    }
}

impl Faults {
    /// Stores `object` as a `resource` (plural name, e.g. `endpointslices`) in `namespace`
    /// without any validation or defaulting, and tells watchers: the malformed or
    /// wrongly-typed objects a buggy controller or a newer API version can produce. The name
    /// comes from `metadata.name`.
    pub fn put_unchecked(
        &self,
        resource: &str,
        namespace: &str,
        object: serde_json::Value,
    ) -> Result<(), crate::Error> {
        let res = super::resource::Resource::ALL
            .into_iter()
            .find(|r| r.plural() == resource)
            .ok_or_else(|| crate::Error::Invalid(format!("unknown resource {resource:?}")))?;
        let name = object["metadata"]["name"]
            .as_str()
            .ok_or_else(|| crate::Error::Invalid("metadata.name is required".into()))?
            .to_string();
        self.shared
            .write(|store| store.put((res, namespace.to_string(), name), object));
        Ok(())
    }

    /// Removes an object stored with [`put_unchecked`](Self::put_unchecked) (or any other),
    /// telling watchers.
    pub fn delete_unchecked(&self, resource: &str, namespace: &str, name: &str) {
        if let Some(res) = super::resource::Resource::ALL
            .into_iter()
            .find(|r| r.plural() == resource)
        {
            self.shared.write(|store| {
                store.remove(&(res, namespace.to_string(), name.to_string()));
            });
        }
    }

    /// Ends every open watch stream now (as an apiserver restart or a proxy timeout does).
    pub fn drop_watches(&self) {
        self.shared.drop_watches.send_modify(|g| *g += 1);
    }

    /// Stalls (`true`) or resumes (`false`) every watch stream: while stalled, streams stay
    /// open but send nothing, not even bookmarks. Events are delivered on resume.
    pub fn stall_watches(&self, stalled: bool) {
        self.shared.stalled.send_replace(stalled);
    }

    /// Fails the next `n` API requests with `status` (e.g. 429 or 500) as a `Status` object.
    /// A 429 carries `Retry-After: 1`, like the real server's priority-and-fairness rejects.
    pub fn fail_next(&self, n: usize, status: StatusCode) {
        self.shared.faults.lock().expect("fault lock").fail_next = Some((n, status));
    }

    /// Answers the next watch request with `410 Gone` (an `ERROR` event of reason `Expired`).
    pub fn expire_next_watch(&self) {
        self.shared
            .faults
            .lock()
            .expect("fault lock")
            .expire_next_watch = true;
    }

    /// Delays every request by `latency` before it is handled.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.faults.lock().expect("fault lock").latency = latency;
    }

    /// Forgets the event history, so a watch or continue token from any earlier
    /// resourceVersion gets `410 Gone` (like an etcd compaction).
    pub fn compact(&self) {
        self.shared.store.lock().expect("store lock").compact();
    }

    /// Clears every fault set through this handle.
    pub fn clear(&self) {
        *self.shared.faults.lock().expect("fault lock") = FaultState::default();
        self.stall_watches(false);
    }
}
