//! Discovery fed with what a real kube-apiserver v1.34 served: the captured watch streams of
//! the Services chapter (`hello-svc`: readiness flips, a graceful then forced delete, a new
//! Pod, a relabel; `biz1`: a selector switch and back) replayed into the test server event
//! by event. After each event, what discovery publishes must be what the real server's
//! EndpointSlices (joined with the Pods' labels) said at that point, with no other state
//! in between (one race between two watches aside, see `assert_published`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rudder_balance::{EndpointSet, Readiness};
use rudder_k8s::{Discovery, Subscription};
use rudder_testkit::{ApiServer, Speed, Trace, TraceEvent, TraceEventKind};
use serde_json::Value;

use super::BOUND;

fn fixture(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testkit/tests/fixtures")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(rel: &str) -> Value {
    serde_json::from_str(&fixture(rel)).expect("fixture JSON")
}

/// A captured watch stream with its timing.
fn stream(rel: &str) -> Trace {
    Trace::from_watch_stream(&fixture(rel), Some(&fixture(&format!("{rel}.timing.json"))))
        .expect("captured stream")
}

/// One routable endpoint as discovery publishes it: address, readiness, the Pod's labels.
type State = Vec<(String, &'static str, BTreeMap<String, String>)>;

fn readiness(r: Readiness) -> &'static str {
    match r {
        Readiness::Ready => "ready",
        Readiness::ServingTerminating => "serving-terminating",
    }
}

fn published(set: &EndpointSet) -> State {
    let mut s: State = set
        .endpoints()
        .iter()
        .map(|e| {
            (
                e.addr().to_string(),
                readiness(e.readiness()),
                e.labels().clone(),
            )
        })
        .collect();
    s.sort();
    s
}

/// The objects the replayed server holds, as the real server held them.
#[derive(Default)]
struct Model {
    slices: BTreeMap<String, Value>,
    pods: BTreeMap<String, Value>,
}

impl Model {
    fn apply(&mut self, e: &TraceEvent) {
        let name = e.object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let map = match e.object["kind"].as_str() {
            Some("EndpointSlice") => &mut self.slices,
            Some("Pod") => &mut self.pods,
            _ => return,
        };
        match e.kind {
            TraceEventKind::Deleted => map.remove(&name),
            _ => map.insert(name, e.object.clone()),
        };
    }

    /// What the slices say is routable for `service`'s one port, with the Pods' labels (none
    /// for a Pod the server does not have), by Kubernetes' rules: ready (unset means
    /// ready), or serving while terminating.
    fn expected(&self, service: &str) -> State {
        let mut out = State::new();
        for slice in self.slices.values() {
            if slice["metadata"]["labels"]["kubernetes.io/service-name"] != service {
                continue;
            }
            let port = slice["ports"][0]["port"].as_u64().expect("port");
            for ep in slice["endpoints"].as_array().into_iter().flatten() {
                let c = &ep["conditions"];
                let ready = c["ready"].as_bool().unwrap_or(true);
                let serving = c["serving"].as_bool().unwrap_or(ready);
                let terminating = c["terminating"].as_bool().unwrap_or(false);
                let r = match (ready, serving && terminating) {
                    (true, _) => "ready",
                    (false, true) => "serving-terminating",
                    (false, false) => continue,
                };
                let pod = ep["targetRef"]["name"].as_str().unwrap_or_default();
                let labels = self
                    .pods
                    .get(pod)
                    .and_then(|p| p["metadata"]["labels"].as_object())
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((
                    format!("{}:{port}", ep["addresses"][0].as_str().expect("address")),
                    r,
                    labels,
                ));
            }
        }
        out.sort();
        out
    }
}

/// Waits (bounded) until discovery publishes `want`, adding every distinct state it
/// publishes on the way to `seen`.
async fn until_published(sub: &mut Subscription, want: &State, seen: &mut Vec<State>) {
    let fut = async {
        loop {
            let now = published(&sub.current());
            if seen.last() != Some(&now) {
                seen.push(now.clone());
            }
            if &now == want {
                return;
            }
            sub.changed().await;
        }
    };
    tokio::time::timeout(BOUND, fut).await.unwrap_or_else(|_| {
        panic!(
            "discovery never published {want:#?}; last: {:#?}",
            seen.last()
        )
    });
}

/// Replays `start` at once, subscribes to `service`, then applies `changes` one event at
/// a time and checks the published sequence against the model. Returns how many distinct
/// states the model went through.
async fn replay(service: &str, ns: &str, start: Trace, changes: Trace) -> usize {
    let server = ApiServer::builder()
        .controllers(false)
        .start()
        .await
        .expect("server");
    let mut model = Model::default();
    if ns != "default" {
        let namespace =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        server
            .apply(&TraceEvent::new(
                Duration::ZERO,
                TraceEventKind::Added,
                namespace,
            ))
            .expect("namespace");
    }
    server.replay(&start, Speed::Instant).await.expect("start");
    start.events().iter().for_each(|e| model.apply(e));

    let discovery = Discovery::new(server.client().await.expect("client"));
    let mut sub = discovery
        .subscribe_str(&format!("{service}.{ns}.svc:8080"))
        .expect("subscribe");
    sub.synced(BOUND).await.expect("synced");
    let mut expected = vec![model.expected(service)];
    let mut seen = Vec::new();
    until_published(&mut sub, &expected[0], &mut seen).await;
    for event in changes.events() {
        server.apply(event).expect("apply");
        model.apply(event);
        let want = model.expected(service);
        if expected.last() != Some(&want) {
            expected.push(want.clone());
        }
        until_published(&mut sub, &want, &mut seen).await;
    }
    assert_published(&seen, &expected);
    expected.len()
}

/// `seen` must be `expected`, with one allowance: the slice watch and the Service watch are
/// separate streams, so when a selector change widens the Service, discovery may get the
/// slice update first and publish its new endpoints before the new Pod list brings their
/// labels (the Pods were outside the Pod watch until then). Such a state may come between
/// two expected ones: the next expected state with the new endpoints' labels still
/// missing. An endpoint that had labels never loses them.
fn assert_published(seen: &[State], expected: &[State]) {
    let mut next = 0;
    for state in seen {
        if expected.get(next) == Some(state) {
            next += 1;
            continue;
        }
        let (Some(before), Some(after)) = (
            next.checked_sub(1).and_then(|i| expected.get(i)),
            expected.get(next),
        ) else {
            panic!(
                "unexpected state {state:#?}\nexpected sequence: {expected:#?}\nseen: {seen:#?}"
            );
        };
        let early = state.len() == after.len()
            && state.iter().zip(after).all(|(s, a)| {
                s == a
                    || (s.0 == a.0
                        && s.1 == a.1
                        && s.2.is_empty()
                        && !before.iter().any(|b| b.0 == a.0))
            });
        assert!(
            early,
            "a state that is neither expected nor the next one early: {state:#?}\nexpected sequence: {expected:#?}\nseen: {seen:#?}"
        );
    }
    assert_eq!(
        next,
        expected.len(),
        "every expected state was published: {seen:#?}"
    );
}

#[tokio::test]
async fn the_captured_hello_svc_history_publishes_what_the_real_slices_said() {
    let dir = "watch/hello-svc";
    let service = json("objects/service-hello-svc.json");
    let start = Trace::from_iter([TraceEvent::new(
        Duration::ZERO,
        TraceEventKind::Added,
        service,
    )])
    .merge(Trace::from_list(&fixture(&format!("{dir}/00-pods.list.json"))).expect("pods"))
    .merge(
        Trace::from_list(&fixture(&format!("{dir}/00-endpointslices.list.json"))).expect("slices"),
    );
    let changes = stream(&format!("{dir}/pods.watch.jsonl"))
        .merge(stream(&format!("{dir}/endpointslices.watch.jsonl")));
    assert_eq!(changes.events().len(), 14, "captured changes");
    let states = replay("hello-svc", "default", start, changes).await;
    // 10 ready; 3 not ready; 3 back; 4 terminating (serving); 4 gone; 11 in; 5 out.
    assert_eq!(states, 9, "states published");
}

#[tokio::test]
async fn the_captured_biz1_selector_switch_publishes_what_the_real_slices_said() {
    let dir = "watch/biz1-selector";
    let mut pods = json("lists/pods-demo-app-biz1-zone-prod.json");
    let nozone = json("objects/pod-biz1-nozone.json");
    pods["items"].as_array_mut().expect("items").push(nozone);
    let start = Trace::from_iter([TraceEvent::new(
        Duration::ZERO,
        TraceEventKind::Added,
        json("objects/service-biz1.json"),
    )])
    .merge(Trace::from_list(&pods.to_string()).expect("pods"))
    .merge(
        Trace::from_list(&fixture(&format!("{dir}/00-endpointslices.list.json"))).expect("slices"),
    );
    // The two Service patches (the switch and the switch back) happened just before the
    // slice updates they caused (`timeline.log`: 3.0 s and 12.0 s into the watch).
    let slices = stream(&format!("{dir}/endpointslices.watch.jsonl"));
    let patched = |step: &str, at: f64| {
        TraceEvent::new(
            Duration::from_secs_f64(at),
            TraceEventKind::Modified,
            json(&format!("{dir}/steps/{step}.response.json")),
        )
    };
    let changes = Trace::from_iter([
        patched("01-selector-add-version-4.2", 3.0),
        patched("02-selector-remove-version", 12.0),
    ])
    .merge(slices);
    assert_eq!(changes.events().len(), 4, "captured changes");
    let states = replay("biz1", "demo", start, changes).await;
    // Five Pods, then only the two of version 4.2, then five again.
    assert_eq!(states, 3);
}
