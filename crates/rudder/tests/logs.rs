//! What the Mesh writes to its logs, captured with a subscriber per test: in a binary of
//! its own, because a thread-local subscriber in a binary whose other tests log through no
//! subscriber at all could miss events (tracing caches callsite interest process-wide).

#[allow(dead_code, unreachable_pub)]
#[path = "mesh/support.rs"]
mod support;

use rudder::MeshLayer;
use rudder_testkit::Access;
use support::*;
use tower::Layer;

/// The tests here one at a time: each sets its own subscriber.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A writer collecting everything logged.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread, so the subscriber set for this test sees every task's logs.
#[tokio::test(flavor = "current_thread")]
async fn tokens_never_show_in_logs_even_when_the_api_refuses_them() {
    let _one = SERIAL.lock().await;
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cluster = hello(1).await;
    cluster
        .api()
        .add_token("allowed-secret-token-5678", Access::admin());
    let good = cluster
        .api()
        .client_with_token("allowed-secret-token-5678")
        .await
        .unwrap();
    let bad = cluster
        .api()
        .client_with_token("refused-secret-token-9012")
        .await
        .unwrap();
    let layer = MeshLayer::builder(good)
        .trust_subset_header()
        .build()
        .unwrap();
    get(&mut layer.layer(h1()), req("http://hello-svc:8080/"))
        .await
        .unwrap();
    let refused = MeshLayer::builder(bad)
        .trust_subset_header()
        .sync_timeout(std::time::Duration::from_millis(500))
        .build()
        .unwrap();
    let err = get(&mut refused.layer(h1()), req("http://hello-svc:8080/"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("401") || err.to_string().contains("Unauthorized"),
        "{err}"
    );

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(
        text.contains("watch failed"),
        "the refusal was logged: {text}"
    );
    for token in ["allowed-secret-token-5678", "refused-secret-token-9012"] {
        assert!(!text.contains(token), "{token} leaked into the logs");
    }
}

// One thread, so the subscriber set for this test sees every task's logs.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_namespace_is_logged_once_not_per_retry() {
    let _one = SERIAL.lock().await;
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cluster = hello(1).await;
    cluster.api().add_token(
        "reader",
        Access::rules(
            manifest_rules()
                .into_iter()
                .map(|r| r.in_namespace("default")),
        ),
    );
    let client = cluster.api().client_with_token("reader").await.unwrap();
    let layer = MeshLayer::builder(client).build().unwrap();
    let mut mesh = layer.layer(recorder());
    // Three seconds of requests to a name in a namespace the Role does not cover.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut sent = 0;
    while std::time::Instant::now() < until {
        recorded(&mut mesh, "http://example.com/").await.unwrap();
        sent += 1;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    let warnings = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("namespace=com"))
        .count();
    // One per watch (Service, EndpointSlices) and one for the source probe; retries of a
    // refused watch log at DEBUG, and the refusal is cached anyway.
    assert!(warnings >= 1, "the refusal was logged: {text}");
    assert!(
        warnings <= 3,
        "{warnings} warnings for {sent} requests:\n{text}"
    );
}
