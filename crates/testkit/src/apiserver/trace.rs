//! Watch traces: the events a watch served, with their timing, recorded by this server
//! ([`ApiServerBuilder::record`](super::ApiServerBuilder::record), `rudder-apiserver
//! --record`) or captured from a real kube-apiserver, and replayed into a test server.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Error;

/// What happened to an object in a [`TraceEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TraceEventKind {
    /// The object appeared (created, or first seen by the watch).
    Added,
    /// The object changed.
    Modified,
    /// The object went away. A watch with a label or field selector also reports an object
    /// that stopped matching as deleted; a replay deletes it.
    Deleted,
}

impl TraceEventKind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "ADDED" => Some(Self::Added),
            "MODIFIED" => Some(Self::Modified),
            "DELETED" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// One watch event of a [`Trace`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TraceEvent {
    /// When it arrived, from the start of the trace.
    pub at: Duration,
    /// What happened.
    pub kind: TraceEventKind,
    /// The full object as served (with `kind`, `apiVersion` and its resourceVersion).
    pub object: Value,
}

impl TraceEvent {
    /// An event: `object` (with `kind` and `apiVersion`) `kind` at `at`.
    pub fn new(at: Duration, kind: TraceEventKind, object: Value) -> Self {
        Self { at, kind, object }
    }

    /// `kind/namespace/name@resourceVersion`: one version of one object.
    fn identity(&self) -> (TraceEventKind, String) {
        let m = &self.object["metadata"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        (
            self.kind,
            format!(
                "{}/{}/{}/{}@{}",
                s(&self.object["apiVersion"]),
                s(&self.object["kind"]),
                s(&m["namespace"]),
                s(&m["name"]),
                s(&m["resourceVersion"]),
            ),
        )
    }
}

/// How fast [`ApiServer::replay`](super::ApiServer::replay) plays a trace.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Speed {
    /// With the recorded gaps between events.
    Real,
    /// With the recorded gaps divided by this factor (`Faster(10.0)`: ten times as fast).
    Faster(f64),
    /// Every event at once, in order.
    Instant,
}

/// The object-changing events of one or more watch streams, in arrival order.
///
/// Bookmarks, `ERROR` events and metadata-only objects (`PartialObjectMetadata`) are not
/// object states a server could hold, so they are left out (counted in
/// [`skipped`](Self::skipped)); an event several watches saw (same object version) is kept
/// once.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    events: Vec<TraceEvent>,
    skipped: usize,
}

impl Trace {
    /// A watch stream as captured from a real server: `stream` is the raw body (one event
    /// per line, as in `../shared/fixtures/watch/*.watch.jsonl`); `timing` is its
    /// `*.timing.json` sidecar (`{"lines": [{"t": seconds}, …]}`), without which every
    /// event is at 0.
    pub fn from_watch_stream(stream: &str, timing: Option<&str>) -> Result<Self, Error> {
        let times: Vec<f64> = match timing {
            None => Vec::new(),
            Some(t) => {
                let v: Value = serde_json::from_str(t)
                    .map_err(|e| Error::Invalid(format!("trace timing is not JSON: {e}")))?;
                v["lines"]
                    .as_array()
                    .ok_or_else(|| Error::Invalid("trace timing has no `lines`".into()))?
                    .iter()
                    .map(|l| l["t"].as_f64().unwrap_or(0.0))
                    .collect()
            }
        };
        let mut trace = Trace::default();
        for (i, line) in stream.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let event: Value = serde_json::from_str(line)
                .map_err(|e| Error::Invalid(format!("watch line {} is not JSON: {e}", i + 1)))?;
            let at = times.get(i).copied().unwrap_or(0.0);
            trace.push(at, &event)?;
        }
        Ok(trace)
    }

    /// A list response (`{"kind": "PodList", "items": […]}`) as the starting state: one
    /// `Added` per item at time 0. List items carry no `kind`/`apiVersion`; they are taken
    /// from the list's.
    pub fn from_list(list: &str) -> Result<Self, Error> {
        let v: Value = serde_json::from_str(list)
            .map_err(|e| Error::Invalid(format!("list is not JSON: {e}")))?;
        let kind = v["kind"]
            .as_str()
            .and_then(|k| k.strip_suffix("List"))
            .ok_or_else(|| Error::Invalid("not a list: no `…List` kind".into()))?
            .to_string();
        let mut trace = Trace::default();
        for item in v["items"].as_array().into_iter().flatten() {
            let mut object = item.clone();
            object["kind"] = kind.clone().into();
            object["apiVersion"] = v["apiVersion"].clone();
            trace.push(0.0, &serde_json::json!({"type": "ADDED", "object": object}))?;
        }
        Ok(trace)
    }

    /// What a server recorded ([`ApiServerBuilder::record`](super::ApiServerBuilder::record)):
    /// one JSON object per line, `{"t": seconds, "watch": "/api/v1/…?watch=true…", "event":
    /// {the line as served}}`, every watch of the server in one file.
    pub fn from_recording(text: &str) -> Result<Self, Error> {
        let mut trace = Trace::default();
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let v: Value = serde_json::from_str(line).map_err(|e| {
                Error::Invalid(format!("recording line {} is not JSON: {e}", i + 1))
            })?;
            trace.push(v["t"].as_f64().unwrap_or(0.0), &v["event"])?;
        }
        Ok(trace)
    }

    /// Reads a recording written by a server.
    pub fn read_recording(path: &Path) -> Result<Self, Error> {
        Self::from_recording(&std::fs::read_to_string(path)?)
    }

    /// This trace and `other` interleaved by time (this one's events first on a tie).
    pub fn merge(mut self, other: Trace) -> Self {
        self.skipped += other.skipped;
        let mut seen: HashSet<_> = self.events.iter().map(TraceEvent::identity).collect();
        self.events.extend(
            other
                .events
                .into_iter()
                .filter(|e| seen.insert(e.identity())),
        );
        self.events.sort_by_key(|e| e.at);
        self
    }

    /// The events, in order.
    pub fn events(&self) -> &[TraceEvent] {
        &self.events
    }

    /// How many served lines were not object events (bookmarks, errors, metadata-only).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    fn push(&mut self, at: f64, event: &Value) -> Result<(), Error> {
        let kind = event["type"].as_str().unwrap_or_default();
        let object = &event["object"];
        let Some(kind) = TraceEventKind::parse(kind) else {
            if matches!(kind, "BOOKMARK" | "ERROR") {
                self.skipped += 1;
                return Ok(());
            }
            return Err(Error::Invalid(format!("unknown watch event type {kind:?}")));
        };
        if object["kind"] == "PartialObjectMetadata" {
            self.skipped += 1;
            return Ok(());
        }
        if !at.is_finite() || at < 0.0 {
            return Err(Error::Invalid(format!("event time {at} is not a time")));
        }
        let event = TraceEvent {
            at: Duration::from_secs_f64(at),
            kind,
            object: object.clone(),
        };
        let id = event.identity();
        if self.events.iter().any(|e| e.identity() == id) {
            return Ok(());
        }
        self.events.push(event);
        Ok(())
    }
}

impl FromIterator<TraceEvent> for Trace {
    /// A trace of these events, in time order (stable), each object version once.
    fn from_iter<I: IntoIterator<Item = TraceEvent>>(events: I) -> Self {
        events
            .into_iter()
            .map(|e| Trace {
                events: vec![e],
                skipped: 0,
            })
            .fold(Trace::default(), Trace::merge)
    }
}

/// Writes every watch event a server serves, as one line each (see
/// [`Trace::from_recording`]).
pub(crate) struct Recorder {
    start: Instant,
    file: Mutex<std::fs::File>,
}

impl Recorder {
    pub(crate) fn create(path: &Path) -> Result<Self, Error> {
        Ok(Self {
            start: Instant::now(),
            file: Mutex::new(std::fs::File::create(path)?),
        })
    }

    /// Records one served line (with its trailing newline) of the watch `uri`.
    pub(crate) fn record(&self, uri: &str, line: &[u8]) {
        let event = std::str::from_utf8(line).unwrap_or_default().trim_end();
        if event.is_empty() {
            return;
        }
        let record = format!(
            "{{\"t\":{:.6},\"watch\":{},\"event\":{event}}}\n",
            self.start.elapsed().as_secs_f64(),
            Value::from(uri),
        );
        // One write per line, so a reader never sees half of one; a failed write loses
        // this line only and is logged.
        if let Err(e) = self
            .file
            .lock()
            .expect("recorder lock")
            .write_all(record.as_bytes())
        {
            tracing::warn!(error = %e, "cannot record a watch event");
        }
    }
}
