//! Watch traces: a server records what its watches served; another server replays it and
//! its watches serve the same changes.

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use rudder_testkit::{ApiServer, Speed, TestCluster, Trace};

use super::support::fixture_text;

const BOUND: Duration = Duration::from_secs(20);

type Seen = Vec<(String, String, Vec<String>)>;

/// Opens a watch of the namespace's slices from "0" and returns a task collecting
/// `(type, slice, sorted addresses)` of each event until `done` says so.
async fn slice_events(
    client: kube::Client,
    done: impl Fn(&Seen) -> bool + Send + Sync + 'static,
) -> tokio::task::JoinHandle<Seen> {
    let slices: Api<EndpointSlice> = Api::default_namespaced(client);
    let stream = slices
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch");
    tokio::spawn(collect(Box::pin(stream), done))
}

async fn collect(
    mut stream: std::pin::Pin<
        Box<dyn futures::Stream<Item = kube::Result<WatchEvent<EndpointSlice>>> + Send>,
    >,
    done: impl Fn(&Seen) -> bool + Send + Sync,
) -> Seen {
    let mut seen = Vec::new();
    tokio::time::timeout(BOUND, async {
        while !done(&seen) {
            let event = stream.try_next().await.expect("watch").expect("open");
            let (kind, s) = match event {
                WatchEvent::Added(s) => ("ADDED", s),
                WatchEvent::Modified(s) => ("MODIFIED", s),
                WatchEvent::Deleted(s) => ("DELETED", s),
                _ => continue,
            };
            let mut addrs: Vec<String> = s
                .endpoints
                .iter()
                .flat_map(|e| e.addresses.clone())
                .collect();
            addrs.sort();
            seen.push((kind.to_string(), s.metadata.name.unwrap_or_default(), addrs));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("watch ended early: {seen:?}"));
    seen
}

#[tokio::test]
async fn a_recorded_trace_replays_into_another_server() {
    let record = std::env::temp_dir().join(format!("rudder-trace-{}.jsonl", std::process::id()));
    let api = ApiServer::builder()
        .record(&record)
        .start()
        .await
        .expect("server");
    let cluster = TestCluster::builder()
        .service("hello-svc")
        .pod_prefix("hello-world")
        .label("app", "hello-world")
        .replicas(3)
        .start_on(api)
        .await
        .expect("cluster");
    let client = cluster.api().client().await.expect("client");
    let watching = slice_events(client, |seen| {
        seen.last().is_some_and(|(_, _, a)| a.len() == 1)
    })
    .await;
    // A Pod leaves the Service, another one is deleted: two slice updates.
    cluster
        .label_pod("hello-world-1", [("app".to_string(), None)].into())
        .await
        .expect("label");
    cluster
        .delete_pod("hello-world-2", 0)
        .await
        .expect("delete");
    let original = watching.await.expect("watch task");
    assert!(original.len() >= 3, "{original:?}");

    let trace = Trace::read_recording(&record).expect("recording");
    std::fs::remove_file(&record).expect("remove the recording");
    assert!(!trace.events().is_empty());

    // Replayed into an empty server without controllers, the same slice history appears.
    let replica = ApiServer::builder()
        .controllers(false)
        .start()
        .await
        .expect("server");
    let client = replica.client().await.expect("client");
    let expected = original.len();
    let watching = slice_events(client.clone(), move |seen| seen.len() == expected).await;
    let applied = replica
        .replay(&trace, Speed::Faster(50.0))
        .await
        .expect("replay");
    assert_eq!(applied, trace.events().len());
    let replayed = watching.await.expect("watch task");
    assert_eq!(replayed, original);
    let slices: Api<EndpointSlice> = Api::default_namespaced(client);
    let listed = slices.list(&ListParams::default()).await.expect("list");
    assert_eq!(listed.items.len(), 1);
}

/// The captured real streams replay too: `watch/hello-svc/endpointslices` (9 changes over
/// 75 s) at a 100-fold speed-up, each change at its time.
#[tokio::test]
async fn a_captured_stream_replays_at_its_pace() {
    let dir = "watch/hello-svc";
    let start = Trace::from_list(&fixture_text(&format!("{dir}/00-endpointslices.list.json")))
        .expect("list");
    let stream = Trace::from_watch_stream(
        &fixture_text(&format!("{dir}/endpointslices.watch.jsonl")),
        Some(&fixture_text(&format!(
            "{dir}/endpointslices.watch.jsonl.timing.json"
        ))),
    )
    .expect("stream");
    assert!(stream.skipped() > 0, "bookmarks are not object events");
    let last = stream.events().last().expect("events").at;
    assert!(
        last > Duration::from_secs(20),
        "{last:?}: the changes came over a minute"
    );
    let trace = start.merge(stream);
    let server = ApiServer::builder()
        .controllers(false)
        .start()
        .await
        .expect("server");
    let began = tokio::time::Instant::now();
    server
        .replay(&trace, Speed::Faster(100.0))
        .await
        .expect("replay");
    assert!(
        began.elapsed() >= last.div_f64(100.0),
        "events are spread over the recorded time"
    );
}
