//! The object store: one resourceVersion counter, the objects, and a bounded event history.
//!
//! Like etcd behind the watch cache, every write gets the next resourceVersion and is
//! appended to the history. Watches replay the history after their starting version and
//! then follow it live; a version older than the retained history is `410 Gone`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use super::resource::Resource;

/// `(resource, namespace or "", name)`; the BTreeMap order is etcd's key order.
pub(crate) type Key = (Resource, String, String);

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as watches see it.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) res: Resource,
    pub(crate) kind: EventKind,
    /// The new state; for a delete, the last state stamped with the delete's version.
    pub(crate) object: Arc<Value>,
    /// The state before the write (for selector transitions).
    pub(crate) old: Option<Arc<Value>>,
}

#[derive(Debug)]
pub(crate) struct Store {
    objects: BTreeMap<Key, Arc<Value>>,
    rv: u64,
    events: VecDeque<Event>,
    retention: usize,
    /// Every event with `rv > compacted` is still in `events`.
    compacted: u64,
    /// Events trimmed from the history and not yet dropped: [`Shared::write`] keeps their
    /// versions as spares for later copies, or drops them, once the store is unlocked and
    /// the watches are woken, so freeing the versions the history forgot is not on the way
    /// from a write to its watch event.
    ///
    /// [`Shared::write`]: super::server::Shared::write
    forgotten: Vec<Event>,
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

pub(crate) fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), rv.to_string().into());
    }
}

/// Makes `dst` a deep copy of `src`, reusing `dst`'s strings, lists and maps where the two
/// have the same shape (the same keys in the same order), so copying an object into an
/// older version of it allocates little or nothing.
pub(crate) fn copy_into(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::String(d), Value::String(s)) => d.clone_from(s),
        (Value::Array(d), Value::Array(s)) => {
            d.truncate(s.len());
            for (dv, sv) in d.iter_mut().zip(s) {
                copy_into(dv, sv);
            }
            let copied = d.len();
            d.extend(s[copied..].iter().cloned());
        }
        (Value::Object(d), Value::Object(s))
            if d.len() == s.len() && d.keys().zip(s.keys()).all(|(a, b)| a == b) =>
        {
            for ((_, dv), (_, sv)) in d.iter_mut().zip(s) {
                copy_into(dv, sv);
            }
        }
        (d, s) => *d = s.clone(),
    }
}

impl Store {
    pub(crate) fn new(retention: usize) -> Self {
        Self {
            objects: BTreeMap::new(),
            // Real clusters never start from zero; starting higher catches clients that
            // treat "0" specially by accident.
            rv: 100,
            events: VecDeque::new(),
            retention: retention.max(1),
            compacted: 100,
            forgotten: Vec::new(),
        }
    }

    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Forgets all history up to now, so any earlier version is `410 Gone`.
    pub(crate) fn compact(&mut self) {
        self.events.clear();
        self.compacted = self.rv;
    }

    pub(crate) fn get(&self, key: &Key) -> Option<&Arc<Value>> {
        self.objects.get(key)
    }

    /// Objects of one resource, optionally in one namespace, in key order.
    pub(crate) fn iter(
        &self,
        res: Resource,
        ns: Option<&str>,
    ) -> impl Iterator<Item = (&Key, &Arc<Value>)> + '_ {
        let start = (res, ns.unwrap_or("").to_string(), String::new());
        let ns = ns.map(str::to_string);
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.0 == res && ns.as_ref().is_none_or(|n| &k.1 == n))
    }

    pub(crate) fn contains(&self, key: &Key) -> bool {
        self.objects.contains_key(key)
    }

    /// Stores `obj` under `key` with a fresh version, its fields in the order the API
    /// server writes them ([`canonical`](super::admission::canonical)), so that readers
    /// can serialise a stored object as it is; returns the stored object.
    pub(crate) fn put(&mut self, key: Key, mut obj: Value) -> Arc<Value> {
        self.rv += 1;
        set_rv(&mut obj, self.rv);
        let obj = Arc::new(super::admission::canonical(key.0, obj));
        let old = self.objects.insert(key.clone(), obj.clone());
        let kind = if old.is_some() {
            EventKind::Modified
        } else {
            EventKind::Added
        };
        self.record(key.0, kind, obj.clone(), old);
        obj
    }

    /// Removes `key`; returns the final state stamped with the delete's version.
    pub(crate) fn remove(&mut self, key: &Key) -> Option<Arc<Value>> {
        let old = self.objects.remove(key)?;
        self.rv += 1;
        let mut last = (*old).clone();
        set_rv(&mut last, self.rv);
        let last = Arc::new(last);
        self.record(key.0, EventKind::Deleted, last.clone(), Some(old));
        Some(last)
    }

    fn record(
        &mut self,
        res: Resource,
        kind: EventKind,
        object: Arc<Value>,
        old: Option<Arc<Value>>,
    ) {
        self.events.push_back(Event {
            rv: self.rv,
            res,
            kind,
            object,
            old,
        });
        self.trim();
    }

    fn trim(&mut self) {
        while self.events.len() > self.retention {
            if let Some(e) = self.events.pop_front() {
                self.compacted = e.rv;
                self.forgotten.push(e);
            }
        }
    }

    /// The events trimmed from the history since the last call, for the caller to drop.
    pub(crate) fn take_forgotten(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.forgotten)
    }

    /// Events of `res` with a version above `after`; `None` when `after` is compacted.
    pub(crate) fn events_after(&self, res: Resource, after: u64) -> Option<Vec<Event>> {
        if after < self.compacted {
            return None;
        }
        let start = self.events.partition_point(|e| e.rv <= after);
        Some(
            self.events
                .range(start..)
                .filter(|e| e.res == res)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::copy_into;

    /// Objects of different shapes: copying any of them into any other gives the source,
    /// with its keys in its order.
    #[test]
    fn copies_into_any_shape_equal_the_source() {
        let shapes = [
            json!({"a": 1, "b": [1, 2, {"c": "long string here"}], "d": {"e": null}}),
            json!({"a": 2, "b": [3], "d": {"e": true}}),
            json!({"b": [1, 2, 3, 4], "a": 1, "d": {"e": null}}),
            json!({"a": "x", "b": {"c": 1}, "d": []}),
            json!({"a": 1, "b": [1, 2, {"c": "s"}], "d": {"e": null, "f": 0}}),
            json!([{"a": 1}, "s", 2.5]),
            json!("just a string"),
            json!(null),
            Value::Object(Default::default()),
        ];
        for src in &shapes {
            for start in &shapes {
                let mut dst = start.clone();
                copy_into(&mut dst, src);
                assert_eq!(&dst, src, "copy of {src} into {start}");
                assert_eq!(
                    serde_json::to_string(&dst).unwrap(),
                    serde_json::to_string(src).unwrap(),
                    "key order of the copy of {src} into {start}"
                );
            }
        }
    }
}
