//! Watch streams: initial events, replay from a resourceVersion, live events, bookmarks,
//! `410 Gone`, and the injected faults (dropped and stalled streams).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use rudder_balance::Selector;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::handler::{Body, Target, as_metadata, labels_of};
use super::query::{self, FieldSelector, Query, Repr};
use super::resource::Resource;
use super::server::Shared;
use super::status::{ApiError, ApiResult};
use super::store::EventKind;

/// Observed: without `timeoutSeconds` kube-apiserver picks 30–60 minutes.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Filter {
    ns: Option<String>,
    labels: Selector,
    fields: FieldSelector,
    metadata: bool,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        self.ns
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches(&labels_of(obj))
            && self.fields.matches(obj)
    }

    fn line(&self, kind: &str, obj: &Value) -> Bytes {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            r#type: &'a str,
            object: &'a Value,
        }
        let metadata;
        let object = if self.metadata {
            metadata = as_metadata(obj);
            &metadata
        } else {
            // Stored objects are canonical already (`Store::put`): written as they are,
            // not copied.
            obj
        };
        let mut s = serde_json::to_vec(&Line {
            r#type: kind,
            object,
        })
        .unwrap_or_default();
        s.push(b'\n');
        Bytes::from(s)
    }
}

fn bookmark_line(filter: &Filter, mut object: Value) -> Bytes {
    if filter.metadata {
        object = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"].clone()});
    }
    Bytes::from(format!(
        "{}\n",
        json!({"type": "BOOKMARK", "object": object})
    ))
}

fn expired_line(message: String) -> Bytes {
    let status = ApiError::expired(message).to_status();
    let mut s = json!({"type": "ERROR", "object": status}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Validates the watch parameters and starts streaming.
pub(crate) fn start(
    shared: Arc<Shared>,
    target: Target,
    query: &Query,
    repr: Repr,
    uri: String,
) -> ApiResult<Response<Body>> {
    let timeout = query
        .int("timeoutSeconds")?
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64));
    let rv = query.resource_version(true)?;
    let send_initial = query.get("sendInitialEvents").map(|v| v == "true");
    if send_initial == Some(true) && query.get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(query::list_options_invalid(
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    let filter = Filter {
        ns: target.ns.clone(),
        labels: query.label_selector()?,
        fields: query.field_selector(target.res)?,
        metadata: matches!(repr, Repr::Metadata | Repr::MetadataList),
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let initial = match (rv, send_initial) {
        (_, Some(explicit)) => explicit,
        (None | Some(0), None) => true,
        (Some(_), None) => false,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let expire = std::mem::take(&mut shared.faults.lock().expect("fault lock").expire_next_watch);
    let deadline = Instant::now() + timeout.unwrap_or(DEFAULT_TIMEOUT);
    let warning = target.res.warning();
    // Subscribe before answering, so a fault injected right after the response headers
    // reach the client is not missed.
    let signals = Signals {
        changed: shared.changed.subscribe(),
        dropped: shared.drop_watches.subscribe(),
        stalled: shared.stalled.subscribe(),
    };
    let opts = Opts {
        rv,
        initial,
        bookmarks,
        expire,
        deadline,
    };
    let out = Out {
        tx,
        uri,
        resource: target.res.plural(),
    };
    tokio::spawn(stream(shared, target, filter, opts, signals, out));

    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let mut resp = Response::new(body.boxed_unsync());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    super::handler::api_headers(h, "application/json");
    if let Some(w) = warning {
        h.insert(header::WARNING, HeaderValue::from_static(w));
    }
    Ok(resp)
}

/// Where a watch's lines go: the response body, and the recording if the server keeps one.
struct Out {
    tx: mpsc::Sender<Bytes>,
    uri: String,
    resource: &'static str,
}

impl Out {
    /// Sends one line; `false` once the client has gone.
    async fn send(&self, shared: &Shared, line: Bytes) -> bool {
        if let Some(r) = &shared.recorder {
            r.record(&self.uri, &line);
        }
        shared.count(self.resource, "watch", 0, line.len() as u64);
        self.tx.send(line).await.is_ok()
    }
}

struct Signals {
    changed: watch::Receiver<u64>,
    dropped: watch::Receiver<u64>,
    stalled: watch::Receiver<bool>,
}

struct Opts {
    rv: Option<u64>,
    initial: bool,
    bookmarks: bool,
    expire: bool,
    deadline: Instant,
}

/// How many encoded event lines are kept for other watchers (the newest).
const ENCODED_KEPT: usize = 4096;

/// An object's resourceVersion as a number (the event's own, stamped by the store).
fn e_rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The events after `cursor` as lines, and the new cursor (`None`: the watch fell out of
/// the history and got a 410 line).
fn drain(
    shared: &Shared,
    res: Resource,
    filter: &Filter,
    cursor: u64,
) -> (Vec<Bytes>, Option<u64>) {
    let store = shared.store.lock().expect("store lock");
    let Some(events) = store.events_after(res, cursor) else {
        let line = expired_line(format!(
            "too old resource version: {cursor} ({})",
            store.compacted() + 1
        ));
        return (vec![line], None);
    };
    let mut lines = Vec::new();
    // Like kube-apiserver's watch cache, an event is serialised once for every watcher
    // that gets it in the same form, not once per watcher.
    let line = |kind: &'static str, object: &Value| {
        // The version first: the oldest lines are the first to go.
        let key = (e_rv(object), res, kind, filter.metadata);
        let mut cache = shared.encoded.lock().expect("encoded lock");
        if let Some(l) = cache.get(&key) {
            return l.clone();
        }
        let l = filter.line(kind, object);
        cache.insert(key, l.clone());
        while cache.len() > ENCODED_KEPT {
            cache.pop_first();
        }
        l
    };
    for e in &events {
        let now = filter.matches(&e.object) && e.kind != EventKind::Deleted;
        let before = e.old.as_deref().is_some_and(|o| filter.matches(o));
        let line = match (before, now, e.kind) {
            (true, _, EventKind::Deleted) => Some(line("DELETED", &e.object)),
            (true, true, _) => Some(line("MODIFIED", &e.object)),
            (false, true, _) => Some(line("ADDED", &e.object)),
            (true, false, _) => {
                // Stopped matching: DELETED with the old state and the new version.
                let mut old = e.old.as_deref().cloned().unwrap_or_default();
                old["metadata"]["resourceVersion"] = e.rv.to_string().into();
                Some(filter.line("DELETED", &old))
            }
            (false, false, _) => None,
        };
        lines.extend(line);
    }
    (lines, Some(store.rv().max(cursor)))
}

async fn stream(
    shared: Arc<Shared>,
    target: Target,
    filter: Filter,
    opts: Opts,
    signals: Signals,
    out: Out,
) {
    let res = target.res;
    let Opts {
        rv,
        initial,
        bookmarks,
        expire,
        deadline,
    } = opts;
    let Signals {
        mut changed,
        mut dropped,
        mut stalled,
    } = signals;

    // Where this watch starts, and what it sends first.
    let start = {
        let store = shared.store.lock().expect("store lock");
        let too_old = |v: u64| format!("too old resource version: {v} ({})", store.compacted() + 1);
        if expire {
            Err(expired_line(too_old(rv.unwrap_or(0))))
        } else if let Some(v) = rv.filter(|v| *v > 0 && *v < store.compacted()) {
            Err(expired_line(too_old(v)))
        } else if initial {
            let mut first = Vec::new();
            for (_, obj) in store.iter(res, target.ns.as_deref()) {
                if filter.matches(obj) {
                    first.push(filter.line("ADDED", obj));
                }
            }
            let now = store.rv().max(rv.unwrap_or(0));
            if bookmarks {
                let mut b = res.bookmark(now);
                b["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                first.push(bookmark_line(&filter, b));
            }
            Ok((now, first))
        } else {
            Ok((rv.unwrap_or(0), Vec::new()))
        }
    };
    let (mut cursor, first) = match start {
        Ok(s) => s,
        Err(line) => {
            out.send(&shared, line).await;
            return;
        }
    };
    for line in first {
        if !out.send(&shared, line).await {
            return;
        }
    }

    let interval = shared.config.bookmark_interval;
    let mut next_bookmark = Instant::now() + interval;
    // Observed: one more bookmark shortly before the server closes the stream.
    let mut final_bookmark = deadline
        .checked_sub(Duration::from_secs(2))
        .filter(|t| *t > Instant::now());
    let mut ending = false;
    loop {
        let is_stalled = *stalled.borrow_and_update();
        if !is_stalled {
            let (lines, new_cursor) = drain(&shared, res, &filter, cursor);
            for line in lines {
                if !out.send(&shared, line).await {
                    return;
                }
            }
            match new_cursor {
                Some(c) => cursor = c,
                None => return,
            }
        }
        if ending {
            // Dropped: what was committed before the drop has been delivered.
            return;
        }

        let bookmark_at = match final_bookmark {
            Some(f) if f < next_bookmark => f,
            _ => next_bookmark,
        };
        tokio::select! {
            _ = changed.changed() => {}
            _ = stalled.changed() => {}
            _ = dropped.changed() => ending = true,
            _ = out.tx.closed() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tokio::time::sleep_until(bookmark_at) => {
                if final_bookmark == Some(bookmark_at) {
                    final_bookmark = None;
                } else {
                    next_bookmark = Instant::now() + interval;
                }
                let now = shared.read(|s| s.rv());
                // A watch from the future stays silent, bookmarks included.
                if bookmarks
                    && !is_stalled
                    && cursor <= now
                    && !out.send(&shared, bookmark_line(&filter, res.bookmark(now))).await
                {
                    return;
                }
            }
        }
    }
}
