//! The Mesh against static endpoints and hand-written inner services: what the inner
//! service receives, retries, in-flight accounting and timeouts, without any I/O.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use rudder_balance::Endpoint;
use rudder_k8s::Static;
use tower::{Layer, ServiceExt};

use super::{MeshError, MeshLayer};
use crate::BoxError;

type Body = Full<Bytes>;
/// What the inner service receives.
type Sent = super::ReplayBody<Body>;

fn pods(n: u8) -> Static {
    Static::new(
        (1..=n)
            .map(|i| Endpoint::new(format!("10.0.0.{i}:8080").parse().unwrap()))
            .collect(),
    )
}

/// A Mesh over two Pods of `web` (10.0.0.1 and 10.0.0.2) taking turns, so a test knows
/// which Pod each request goes to.
fn round_robin_over_two() -> MeshLayer {
    MeshLayer::builder_static()
        .static_service("web", pods(2))
        .unwrap()
        .algorithm(rudder_balance::Algorithm::WeightedRoundRobin)
        .build()
        .unwrap()
}

fn layer(statics: Static) -> MeshLayer {
    MeshLayer::builder_static()
        .static_service("web", statics)
        .unwrap()
        .build()
        .unwrap()
}

/// An inner service recording what it receives (the body read whole, as a server would);
/// `fail` says which endpoints refuse connections (those never read the body, like a
/// connection that was never made).
fn recorder(
    seen: Arc<Mutex<Vec<Request<Bytes>>>>,
    fail: &'static [&'static str],
) -> impl tower::Service<Request<Sent>, Response = Response<Body>, Error = BoxError, Future = impl Send>
+ Clone {
    tower::service_fn(move |req: Request<Sent>| {
        let seen = seen.clone();
        async move {
            let authority = req.uri().authority().unwrap().to_string();
            if fail.contains(&authority.as_str()) {
                seen.lock().unwrap().push(req.map(|_| Bytes::new()));
                let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                return Err::<Response<Body>, BoxError>(Box::new(e));
            }
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            seen.lock().unwrap().push(Request::from_parts(parts, body));
            Ok(Response::new(Full::new(Bytes::from(authority))))
        }
    })
}

#[tokio::test]
async fn the_inner_service_gets_the_pod_address_and_the_service_authority() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mesh = layer(pods(1)).layer(recorder(seen.clone(), &[]));
    let req = Request::get("http://web:8080/a?b=c")
        .body(Body::default())
        .unwrap();
    let res = mesh.oneshot(req).await.unwrap();
    let target = res.body().target().expect("target on response");
    assert_eq!(target.endpoint().as_str(), "10.0.0.1:8080");
    let seen = seen.lock().unwrap();
    let req = &seen[0];
    assert_eq!(req.uri().to_string(), "http://10.0.0.1:8080/a?b=c");
    assert_eq!(req.headers()["host"], "web:8080");
    assert_eq!(target.authority().as_str(), "web:8080");
}

#[tokio::test]
async fn other_hosts_pass_through_untouched() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mesh = layer(pods(1)).layer(recorder(seen.clone(), &[]));
    let req = Request::get("http://api.example.com/x")
        .body(Body::default())
        .unwrap();
    mesh.oneshot(req).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].uri().to_string(), "http://api.example.com/x");
    assert!(seen[0].headers().get("host").is_none());
}

#[tokio::test]
async fn refused_connections_are_retried_on_other_pods_with_their_bodies() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mesh = layer(pods(3)).layer(recorder(seen.clone(), &["10.0.0.1:8080", "10.0.0.2:8080"]));
    let mut retried = 0;
    for i in 0..20 {
        let before = seen.lock().unwrap().len();
        // A POST with a body: never reaching an application, it is safe to send again.
        let req = Request::post(format!("http://web:8080/orders?id={i}"))
            .header("x-trace", format!("t{i}"))
            .header("x-many", "a")
            .header("x-many", "b")
            .body(Body::from(format!("payload {i}")))
            .unwrap();
        let res = mesh
            .clone()
            .oneshot(req)
            .await
            .expect("retried to the live Pod");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "10.0.0.3:8080");
        let seen = seen.lock().unwrap();
        retried += usize::from(seen.len() > before + 1);
        let last = seen.last().unwrap();
        assert_eq!(
            last.body(),
            &format!("payload {i}"),
            "the live Pod got the whole body"
        );
        // The head the retry was rebuilt from is the request's own.
        assert_eq!(last.method(), http::Method::POST);
        let pq = format!("/orders?id={i}");
        assert_eq!(
            last.uri().path_and_query().map(|p| p.as_str()),
            Some(pq.as_str())
        );
        assert_eq!(last.headers()["x-trace"], format!("t{i}").as_str());
        let many: Vec<_> = last.headers().get_all("x-many").iter().collect();
        assert_eq!(many, ["a", "b"]);
        assert_eq!(last.headers()["host"], "web:8080");
    }
    assert!(retried > 0, "no request was retried");
    // A body over the replay cap is not kept, so not retried: with round robin, the
    // refusing Pod gets every other request until five failures in a row eject it, and
    // the error names the Pod tried.
    let mesh = MeshLayer::builder_static()
        .static_service("web", pods(2))
        .unwrap()
        .algorithm(rudder_balance::Algorithm::WeightedRoundRobin)
        .max_replay_body(4)
        .build()
        .unwrap()
        .layer(recorder(seen.clone(), &["10.0.0.1:8080"]));
    let mut failures = 0;
    for _ in 0..40 {
        let req = Request::post("http://web:8080/")
            .body(Body::from("payload"))
            .unwrap();
        if let Err(e) = mesh.clone().oneshot(req).await {
            match e.downcast_ref::<MeshError>() {
                Some(MeshError::Failed { tried, .. }) => {
                    assert_eq!(tried, &["10.0.0.1:8080".parse().unwrap()]);
                }
                _ => panic!("{e}"),
            }
            failures += 1;
        }
    }
    assert_eq!(
        failures, 5,
        "POSTs to the refusing Pod failed until it was ejected"
    );
}

#[tokio::test]
async fn a_post_that_may_have_reached_an_application_is_not_retried() {
    // The connection was reset after the request went out: a GET is sent again, a POST
    // is not (its application may have acted on it).
    let calls = Arc::new(Mutex::new(0));
    let counted = calls.clone();
    let inner = tower::service_fn(move |req: Request<Sent>| {
        let calls = counted.clone();
        async move {
            *calls.lock().unwrap() += 1;
            let first = req.uri().authority().unwrap().as_str() == "10.0.0.1:8080";
            if first {
                let e = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
                return Err::<Response<Body>, BoxError>(Box::new(e));
            }
            Ok(Response::new(Body::default()))
        }
    });
    let mesh = round_robin_over_two().layer(inner);
    let mut get_failed = 0;
    let mut post_failed = 0;
    for _ in 0..4 {
        let req = Request::get("http://web:8080/")
            .body(Body::default())
            .unwrap();
        get_failed += usize::from(mesh.clone().oneshot(req).await.is_err());
        let req = Request::post("http://web:8080/")
            .body(Body::from("x"))
            .unwrap();
        post_failed += usize::from(mesh.clone().oneshot(req).await.is_err());
    }
    assert_eq!(get_failed, 0, "GETs retried after a reset");
    assert!(post_failed >= 1, "POSTs reset mid-flight are not retried");
}

#[tokio::test]
async fn a_request_stays_in_flight_until_its_body_is_done() {
    let statics = pods(1);
    let layer = layer(statics);
    let inner = tower::service_fn(|_: Request<Sent>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
    });
    let mesh = layer.layer(inner);
    let in_flight = || layer.view("web:8080").unwrap().endpoints[0].in_flight;
    let req = Request::get("http://web:8080/")
        .body(Body::default())
        .unwrap();
    let res = mesh.clone().oneshot(req).await.unwrap();
    assert_eq!(in_flight(), 1, "headers arrived, body not read");
    res.into_body().collect().await.unwrap();
    assert_eq!(in_flight(), 0, "body read to the end");
    let req = Request::get("http://web:8080/")
        .body(Body::default())
        .unwrap();
    let res = mesh.oneshot(req).await.unwrap();
    assert_eq!(in_flight(), 1);
    drop(res);
    assert_eq!(in_flight(), 0, "body dropped");
}

#[tokio::test(start_paused = true)]
async fn the_per_request_timeout_is_a_typed_error() {
    let layer = MeshLayer::builder_static()
        .static_service("web", pods(1))
        .unwrap()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let inner = tower::service_fn(|_: Request<Sent>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, Infallible>(Response::new(Body::default()))
    });
    let req = Request::get("http://web:8080/")
        .body(Body::default())
        .unwrap();
    let err = layer.layer(inner).oneshot(req).await.unwrap_err();
    assert!(
        matches!(err.downcast_ref::<MeshError>(), Some(MeshError::Timeout { timeout, .. }) if *timeout == Duration::from_secs(2)),
        "{err}"
    );
}

#[tokio::test]
async fn empty_and_missing_services_are_typed_errors() {
    let layer = layer(Static::new(Vec::new()));
    let inner = tower::service_fn(|_: Request<Sent>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .status(StatusCode::OK)
                .body(Body::default())
                .unwrap(),
        )
    });
    let mesh = layer.layer(inner);
    let req = Request::get("http://web:8080/")
        .body(Body::default())
        .unwrap();
    let err = mesh.clone().oneshot(req).await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<MeshError>(),
            Some(MeshError::NoEndpoints { .. })
        ),
        "{err}"
    );
    let req = Request::get("http://other.default.svc:8080/")
        .body(Body::default())
        .unwrap();
    let err = mesh.clone().oneshot(req).await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<MeshError>(),
            Some(MeshError::ServiceNotFound { .. })
        ),
        "{err}"
    );
    let req = Request::get("/no-authority").body(Body::default()).unwrap();
    let err = mesh.oneshot(req).await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<MeshError>(),
            Some(MeshError::MissingAuthority)
        ),
        "{err}"
    );
}

#[test]
fn out_of_range_retry_budgets_are_config_errors_not_panics() {
    let config: super::MeshConfig =
        serde_json::from_str(r#"{"retry_min_per_second": 4000000000}"#).unwrap();
    let err = MeshLayer::builder_static().config(&config).unwrap_err();
    assert!(
        matches!(err, super::ConfigError::RetryFloor(4_000_000_000)),
        "{err}"
    );
    let err = MeshLayer::builder_static()
        .retries(2, 2000.0, 10)
        .build()
        .unwrap_err();
    assert!(matches!(err, super::ConfigError::RetryBudget(_)), "{err}");
}

#[test]
fn the_canary_guard_has_a_config_form() {
    let config: super::MeshConfig = serde_json::from_str(
        r#"{"canary_guard": {"margin_percent": 5, "min_requests": 50, "window_ms": 10000, "probe_percent": 1}}"#,
    )
    .unwrap();
    let layer = MeshLayer::builder_static().config(&config).unwrap().build();
    assert!(layer.is_ok());
    let config: super::MeshConfig =
        serde_json::from_str(r#"{"canary_guard": {"margin_percent": 150}}"#).unwrap();
    let err = MeshLayer::builder_static().config(&config).unwrap_err();
    assert!(matches!(err, super::ConfigError::CanaryGuard(_)), "{err}");
    assert!(
        serde_json::from_str::<super::MeshConfig>(r#"{"canary_guard": {"margin": 0.1}}"#).is_err(),
        "unknown fields are refused"
    );
}

#[tokio::test]
async fn chosen_statuses_are_retried_for_idempotent_requests_only() {
    // 10.0.0.1 sheds load with 503s; the others answer.
    let inner = tower::service_fn(|req: Request<Sent>| async move {
        let shedding = req.uri().authority().unwrap().as_str() == "10.0.0.1:8080";
        let mut res = Response::new(Body::default());
        if shedding {
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        Ok::<_, Infallible>(res)
    });
    let build = |retry: bool| {
        let mut b = MeshLayer::builder_static()
            .static_service("web", pods(3))
            .unwrap()
            .algorithm(rudder_balance::Algorithm::WeightedRoundRobin)
            // Keep the shedding Pod in rotation: this is about retries, not ejection.
            .failure_on_5xx(false);
        if retry {
            b = b.retry_on_status([StatusCode::SERVICE_UNAVAILABLE]);
        }
        b.build().unwrap().layer(inner)
    };
    let statuses = |mesh: super::Mesh<_>, method: http::Method| async move {
        let mut unavailable = 0;
        for _ in 0..30 {
            let req = Request::builder()
                .method(method.clone())
                .uri("http://web:8080/")
                .body(Body::from("b"))
                .unwrap();
            let res = mesh.clone().oneshot(req).await.unwrap();
            unavailable += usize::from(res.status() == StatusCode::SERVICE_UNAVAILABLE);
        }
        unavailable
    };
    assert_eq!(
        statuses(build(false), http::Method::GET).await,
        10,
        "a third, without"
    );
    assert_eq!(
        statuses(build(true), http::Method::GET).await,
        0,
        "retried elsewhere"
    );
    assert_eq!(
        statuses(build(true), http::Method::POST).await,
        10,
        "a POST's 503 is its answer"
    );
}

/// Polls `done` between yields to the runtime (where the Mesh's updater runs), at most
/// 1,000 times.
async fn yield_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{what}: not within 1,000 yields");
}

/// A request to `web` that the inner service holds until `answer` is notified, sent once
/// it is held: with it, the Service's routing state.
async fn held_request(
    layer: &MeshLayer,
) -> (
    tokio::task::JoinHandle<Result<Response<super::ResponseBody<Body>>, BoxError>>,
    Arc<tokio::sync::Notify>,
    Arc<super::routed::Routed>,
) {
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel(1);
    let answer = Arc::new(tokio::sync::Notify::new());
    let inner = {
        let answer = answer.clone();
        tower::service_fn(move |_: Request<Sent>| {
            let (arrived_tx, answer) = (arrived_tx.clone(), answer.clone());
            async move {
                arrived_tx.send(()).await.unwrap();
                answer.notified().await;
                Ok::<_, Infallible>(Response::new(Body::default()))
            }
        })
    };
    let req = Request::get("http://web:8080/")
        .body(Body::default())
        .unwrap();
    let request = tokio::spawn(layer.layer(inner).oneshot(req));
    arrived.recv().await.unwrap();
    let svc =
        crate::ServiceRef::parse_in("web:8080", &layer.shared.settings.default_namespace).unwrap();
    let routed = layer.shared.routed.read().unwrap()[&svc].clone();
    (request, answer, routed)
}

#[tokio::test]
async fn a_request_in_flight_holds_no_snapshot() {
    let statics = pods(3);
    let layer = layer(statics.clone());
    let (request, answer, routed) = held_request(&layer).await;
    let replaced = Arc::downgrade(&routed.pool.snapshot());

    // Discovery publishes while the request is in flight. The request holds its
    // endpoint's entry and nothing of the snapshot it was picked from (a retry picks from
    // the newest one), so the updater drops the replaced snapshot at the swap, and no
    // request ever pays for a teardown.
    let endpoints = |n: usize| pods(3).subscribe().borrow().endpoints()[..n].to_vec();
    statics.set(endpoints(2));
    yield_until("swapped", || routed.pool.snapshot().set().len() == 2).await;
    yield_until("replaced snapshot dropped", || replaced.upgrade().is_none()).await;
    assert!(!request.is_finished(), "the request is still in flight");
    answer.notify_one();
    let res = request.await.unwrap().unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
}

/// A request held at its first attempt: the request, the authority of its first attempt,
/// those of the attempts sent after, the `Notify` that ends the first attempt, and the
/// Service's routing state.
type Held = (
    tokio::task::JoinHandle<Result<Response<super::ResponseBody<Body>>, BoxError>>,
    String,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    Arc<tokio::sync::Notify>,
    Arc<super::routed::Routed>,
);

/// A request to `web` through `layer` whose attempts all fail up to the `failing`th:
/// refused, or answered with `status` when one is given. The first one waits to fail until
/// the returned `Notify` is notified, and later ones answer with the authority they were
/// sent to. Returns the request, the authorities attempts were sent to (the first one
/// already received), the `Notify` and the Service's routing state.
async fn failing_at_first(layer: MeshLayer, failing: u32, status: Option<StatusCode>) -> Held {
    let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel();
    let fail = Arc::new(tokio::sync::Notify::new());
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let inner = {
        let fail = fail.clone();
        tower::service_fn(move |req: Request<Sent>| {
            let authority = req.uri().authority().unwrap().to_string();
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            sent_tx.send(authority.clone()).unwrap();
            let fail = fail.clone();
            async move {
                if n == 0 {
                    fail.notified().await;
                }
                let mut res = Response::new(Body::from(authority));
                match status {
                    _ if n >= failing => {}
                    Some(status) => *res.status_mut() = status,
                    None => {
                        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                        return Err::<Response<Body>, BoxError>(Box::new(e));
                    }
                }
                Ok(res)
            }
        })
    };
    let req = Request::get("http://web:8080/")
        .body(Body::default())
        .unwrap();
    let svc =
        crate::ServiceRef::parse_in("web:8080", &layer.shared.settings.default_namespace).unwrap();
    let shared = layer.shared.clone();
    let request = tokio::spawn(layer.layer(inner).oneshot(req));
    let first = sent.recv().await.unwrap();
    let routed = shared.routed.read().unwrap()[&svc].clone();
    (request, first, sent, fail, routed)
}

/// [`failing_at_first`] through [`layer`], refused.
async fn refused_at_first(statics: &Static, refused: u32) -> Held {
    failing_at_first(layer(statics.clone()), refused, None).await
}

/// When every other endpoint left while the first attempt failed, the retry has nowhere
/// to go: the request ends with the attempt's own failure (which endpoint, what error),
/// not with "no endpoints".
#[tokio::test]
async fn a_retry_with_nowhere_left_to_go_ends_with_the_attempts_failure() {
    for left in [1, 0] {
        let statics = pods(3);
        let (request, first, _sent, fail, routed) = refused_at_first(&statics, 1).await;
        // The two others leave; with `left == 0` the one tried leaves too.
        let only: Vec<Endpoint> = statics
            .subscribe()
            .borrow()
            .endpoints()
            .iter()
            .filter(|e| e.addr().to_string() == first)
            .take(left)
            .cloned()
            .collect();
        statics.set(only);
        yield_until("swapped", || routed.pool.snapshot().set().len() == left).await;
        fail.notify_one();
        let e = request.await.unwrap().unwrap_err();
        match e.downcast_ref::<MeshError>() {
            Some(MeshError::Failed { tried, source, .. }) => {
                assert_eq!(tried, &[first.parse::<SocketAddr>().unwrap()]);
                let io = source
                    .downcast_ref::<std::io::Error>()
                    .expect("the inner error");
                assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            other => panic!("with {left} endpoints left: expected Failed, got {other:?} ({e})"),
        }
    }
}

/// The same for a retry on a status: the attempt's own response is the answer.
#[tokio::test]
async fn a_status_retry_with_nowhere_left_to_go_answers_with_the_attempts_response() {
    let statics = pods(3);
    let layer = MeshLayer::builder_static()
        .static_service("web", statics.clone())
        .unwrap()
        .retry_on_status([StatusCode::SERVICE_UNAVAILABLE])
        .build()
        .unwrap();
    let (request, first, mut sent, fail, routed) =
        failing_at_first(layer, 1, Some(StatusCode::SERVICE_UNAVAILABLE)).await;
    statics.set(Vec::new());
    yield_until("swapped", || routed.pool.snapshot().set().is_empty()).await;
    fail.notify_one();
    let res = request
        .await
        .unwrap()
        .expect("the first attempt's response");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let answered = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(answered, first.as_bytes());
    assert!(sent.try_recv().is_err(), "no second attempt was sent");
}

/// A retry that finds nowhere to go is not sent and takes nothing from the retry budget:
/// after more such requests than the budget holds retries, the next retry is still sent.
#[tokio::test]
async fn a_retry_with_nowhere_left_to_go_costs_the_budget_nothing() {
    // No share of requests, a floor of one retry a second: tower's budget holds ten
    // (its 10 s window's worth) and earns nothing from requests.
    let statics = pods(3);
    let all = statics.subscribe().borrow().endpoints().to_vec();
    let layer = MeshLayer::builder_static()
        .static_service("web", statics.clone())
        .unwrap()
        .retries(2, 0.0, 1)
        .retry_on_status([StatusCode::SERVICE_UNAVAILABLE])
        .build()
        .unwrap();
    let mut routed: Option<Arc<super::routed::Routed>> = None;
    let back = |routed: &Option<Arc<super::routed::Routed>>| {
        statics.set(all.clone());
        let routed = routed.clone();
        async move {
            if let Some(routed) = routed {
                yield_until("back", || routed.pool.snapshot().set().len() == 3).await;
            }
        }
    };
    for _ in 0..20 {
        back(&routed).await;
        let (request, _first, mut sent, fail, r) =
            failing_at_first(layer.clone(), 1, Some(StatusCode::SERVICE_UNAVAILABLE)).await;
        statics.set(Vec::new());
        yield_until("swapped", || r.pool.snapshot().set().is_empty()).await;
        fail.notify_one();
        let res = request.await.unwrap().expect("the attempt's response");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(sent.try_recv().is_err(), "no retry was sent");
        routed = Some(r);
    }
    back(&routed).await;
    let (request, first, mut sent, fail, _) =
        failing_at_first(layer, 1, Some(StatusCode::SERVICE_UNAVAILABLE)).await;
    fail.notify_one();
    let res = request.await.unwrap().unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the retry was sent and answered"
    );
    let retried_on = sent.recv().await.unwrap();
    assert_ne!(retried_on, first);
}

#[tokio::test]
async fn a_retry_picks_from_the_endpoints_published_since_the_first_attempt() {
    let statics = pods(3);
    let (request, first, mut sent, fail, routed) = refused_at_first(&statics, 1).await;

    // Meanwhile the other two Pods left and a new one came.
    let new_pod: SocketAddr = "10.0.0.9:8080".parse().unwrap();
    statics.set(vec![
        Endpoint::new(first.parse().unwrap()),
        Endpoint::new(new_pod),
    ]);
    yield_until("swapped", || {
        routed.pool.snapshot().set().position(new_pod).is_some()
    })
    .await;
    fail.notify_one();
    let res = request.await.unwrap().unwrap();
    let answered = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        answered, "10.0.0.9:8080",
        "the retry went to the new Pod: not to the one that failed, nor to those that left"
    );
    assert_eq!(sent.recv().await.unwrap(), "10.0.0.9:8080");
}

/// What counts as "another endpoint to retry on" is the subset as the retry found it: an
/// endpoint that left does not use up a retry's place.
#[tokio::test]
async fn retries_count_the_endpoints_left_untried_in_the_newest_snapshot() {
    let statics = pods(3);
    // The first attempt and the second are refused; the third answers.
    let (request, first, mut sent, fail, routed) = refused_at_first(&statics, 2).await;

    // The first attempt's Pod leaves: the retries find two Pods, both untried, so after
    // the second attempt fails there is still one to try (two tried, of two left).
    let next: Vec<Endpoint> = pods(3)
        .subscribe()
        .borrow()
        .endpoints()
        .iter()
        .filter(|e| e.addr().to_string() != first)
        .cloned()
        .collect();
    statics.set(next);
    yield_until("swapped", || {
        let snapshot = routed.pool.snapshot();
        snapshot.set().len() == 2
    })
    .await;
    fail.notify_one();
    let res = request.await.unwrap().unwrap();
    let answered = res.into_body().collect().await.unwrap().to_bytes();
    let second = sent.recv().await.unwrap();
    let third = sent.recv().await.unwrap();
    assert_eq!(answered, third.as_bytes());
    let mut tried = vec![first, second, third];
    tried.sort();
    tried.dedup();
    assert_eq!(tried.len(), 3, "three attempts on three Pods: {tried:?}");
}

/// The same when the Mesh releases the Service (idle) while the request is in flight: the
/// request holds the Service's routing state (the Mesh let go of it), but the pool's last
/// snapshot is torn down by the Service's updater, which stays until nothing else holds
/// it, and not by the request's end.
#[tokio::test(start_paused = true)]
async fn a_released_service_leaves_the_teardown_to_its_updater_too() {
    let statics = pods(3);
    let layer = MeshLayer::builder_static()
        .static_service("web", statics.clone())
        .unwrap()
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (request, answer, routed) = held_request(&layer).await;
    let replaced = Arc::downgrade(&routed.pool.snapshot());
    let endpoints = |n: usize| pods(3).subscribe().borrow().endpoints()[..n].to_vec();
    statics.set(endpoints(2));
    yield_until("swapped", || routed.pool.snapshot().set().len() == 2).await;
    yield_until("replaced snapshot dropped", || replaced.upgrade().is_none()).await;
    // Two sweeps, the second after the idle timeout: the Mesh releases the Service.
    let now = std::time::Instant::now();
    layer.shared.sweep(now);
    assert!(
        !routed.is_released(),
        "the request used it since the last sweep"
    );
    layer.shared.sweep(now + Duration::from_secs(2));
    assert!(routed.is_released(), "the idle Service was released");
    // The request holds the Service's routing state: its end drops the pool.
    let last = Arc::downgrade(&routed.pool.snapshot());
    drop(routed);
    answer.notify_one();
    drop(request.await.unwrap().unwrap());
    assert!(
        last.upgrade().is_some(),
        "the pool's last snapshot is kept by the updater, not dropped with the request"
    );
    // Its next look (every RELEASE_EVERY; the clock is paused, so this sleep only lets
    // that timer fire) finds it held by nobody else and drops it.
    tokio::time::sleep(super::routed::RELEASE_EVERY * 2).await;
    assert!(last.upgrade().is_none(), "the updater dropped the last one");
}

/// An inner service that says which copy of it served an attempt: its `tag`, with the
/// endpoint. 10.0.0.1 refuses connections.
#[derive(Clone)]
struct Tagged {
    tag: u32,
    served: Arc<Mutex<Vec<(String, u32)>>>,
}

impl tower::Service<Request<Sent>> for Tagged {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Body>, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Sent>) -> Self::Future {
        let authority = req.uri().authority().unwrap().to_string();
        let refused = authority == "10.0.0.1:8080";
        self.served.lock().unwrap().push((authority, self.tag));
        std::future::ready(if refused {
            Err(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) as BoxError)
        } else {
            Ok(Response::new(Body::default()))
        })
    }
}

#[tokio::test]
async fn retries_go_through_the_inner_service_as_get_mut_left_it() {
    use tower::Service;
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut mesh = round_robin_over_two().layer(Tagged {
        tag: 1,
        served: served.clone(),
    });
    // Round robin over two Pods: requests go first to the refusing Pod, in turn, and
    // are retried on the other.
    let send_two = async |mesh: &mut super::Mesh<Tagged>| {
        for _ in 0..2 {
            let req = Request::get("http://web:8080/")
                .body(Body::default())
                .unwrap();
            mesh.ready()
                .await
                .unwrap()
                .call(req)
                .await
                .expect("retried");
        }
        std::mem::take(&mut *served.lock().unwrap())
    };
    let retried = |attempts: &[(String, u32)]| {
        attempts
            .windows(2)
            .filter(|w| w[0].0 == "10.0.0.1:8080" && w[1].0 == "10.0.0.2:8080")
            .count()
    };
    let first = send_two(&mut mesh).await;
    assert!(retried(&first) > 0, "a retry: {first:?}");
    assert!(first.iter().all(|(_, tag)| *tag == 1), "{first:?}");
    // A change through `get_mut` reaches the retries too.
    mesh.get_mut().tag = 2;
    let second = send_two(&mut mesh).await;
    assert!(retried(&second) > 0, "a retry: {second:?}");
    assert!(
        second.iter().all(|(_, tag)| *tag == 2),
        "every attempt, retries included, went through the service as changed: {second:?}"
    );
}

/// The Mesh takes inner services that are `Send` but not `Sync` (tower's
/// `BoxCloneService`, for one): its retry clone is shared behind a lock, so requests can
/// still be spawned onto a multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inner_service_that_is_not_sync_still_serves_spawned_requests() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = tower::util::BoxCloneService::new(recorder(seen.clone(), &["10.0.0.1:8080"]));
    let mesh = round_robin_over_two().layer(inner);
    for _ in 0..2 {
        let req = Request::get("http://web:8080/")
            .body(Body::default())
            .unwrap();
        let res = tokio::spawn(mesh.clone().oneshot(req)).await.unwrap();
        assert_eq!(
            res.expect("retried on the live Pod").status(),
            StatusCode::OK
        );
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .any(|r| r.uri().authority().unwrap().as_str() == "10.0.0.1:8080"),
        "a request went first to the refusing Pod and was retried"
    );
}
