//! `kubectl rudder endpoints` against the test API server: what it prints is what a Mesh
//! over the same cluster sees, as JSON, as a table, and through the real `kubectl`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rudder::MeshLayer;
use rudder_testkit::TestCluster;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-rudder");

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// biz1 with three Pods at 4.1 and two at 4.2; one 4.1 Pod not ready, one 4.2 Pod
/// terminating (deleted with a long grace period, still serving).
async fn biz1() -> TestCluster {
    let mut cluster = TestCluster::builder()
        .service("biz1")
        .label("app", "biz1")
        .label("zone", "prod")
        .replicas(0)
        .start()
        .await
        .expect("cluster");
    for (name, version) in [
        ("biz1-a", "4.1"),
        ("biz1-b", "4.1"),
        ("biz1-c", "4.1"),
        ("biz1-d", "4.2"),
        ("biz1-e", "4.2"),
    ] {
        let l = labels(&[("app", "biz1"), ("zone", "prod"), ("version", version)]);
        cluster.add_pod(name, l).await.expect("pod");
    }
    cluster.set_ready("biz1-c", false).await.expect("not ready");
    cluster
        .delete_pod("biz1-e", 600)
        .await
        .expect("terminating");
    cluster.api().settled().await;
    cluster
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn plugin(kubeconfig: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .await
        .expect("run kubectl-rudder");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_show_what_a_mesh_sees() {
    let cluster = biz1().await;
    let kubeconfig = cluster.api().kubeconfig_path().to_path_buf();

    // The Mesh's own view of the same Service.
    let layer = MeshLayer::builder(cluster.api().client().await.unwrap())
        .build()
        .unwrap();
    layer.warm(["biz1:8080"]).await.expect("warm");
    let view = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(v) = layer.view("biz1:8080")
                && v.endpoints.len() + v.unroutable.len() == 5
            {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the Mesh sees all five");

    let run = plugin(
        &kubeconfig,
        &[
            "endpoints",
            "biz1:8080",
            "-o",
            "json",
            "--selector",
            "version=4.2",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).expect("JSON output");
    let rows = report["endpoints"].as_array().expect("endpoints");
    assert_eq!(rows.len(), 5);

    // Routable rows: the Mesh's endpoints, with the same Pod, state and labels.
    let mut ours: Vec<(String, String, String, Value)> = rows
        .iter()
        .filter(|r| r["routable"] == true)
        .map(|r| {
            (
                format!("{}:{}", r["address"].as_str().unwrap(), r["port"]),
                r["pod"].as_str().unwrap_or_default().to_string(),
                r["state"].as_str().unwrap().to_string(),
                r["labels"].clone(),
            )
        })
        .collect();
    let mut mesh: Vec<(String, String, String, Value)> = view
        .endpoints
        .iter()
        .map(|e| {
            (
                e.addr.to_string(),
                e.pod.clone().unwrap_or_default(),
                match e.readiness {
                    rudder::Readiness::Ready => "ready".to_string(),
                    _ => "serving-terminating".to_string(),
                },
                serde_json::to_value(&e.labels).unwrap(),
            )
        })
        .collect();
    ours.sort_by(|a, b| a.0.cmp(&b.0));
    mesh.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(ours, mesh);
    assert!(
        ours.iter()
            .any(|(_, pod, state, _)| pod == "biz1-e" && state == "serving-terminating"),
        "{ours:?}"
    );
    // The not-ready Pod: not routable, and why, as the Mesh says.
    let unroutable: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r["routable"] == false)
        .map(|r| {
            (
                r["pod"].as_str().unwrap_or_default().to_string(),
                r["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mesh_unroutable: Vec<(String, String)> = view
        .unroutable
        .iter()
        .map(|u| (u.pod.clone().unwrap_or_default(), u.reason.to_string()))
        .collect();
    assert_eq!(unroutable, mesh_unroutable);
    assert_eq!(
        unroutable,
        [("biz1-c".to_string(), "not ready".to_string())]
    );
    // The subset: the two 4.2 Pods (one of them terminating).
    let in_subset: Vec<&str> = rows
        .iter()
        .filter(|r| r["in_subset"] == true)
        .filter_map(|r| r["pod"].as_str())
        .collect();
    assert_eq!(in_subset.len(), 2, "{in_subset:?}");

    // The table, and the same through the real kubectl, which finds the plugin on PATH.
    let table = plugin(&kubeconfig, &["endpoints", "biz1:8080", "-o", "wide"]).await;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(table.stdout.starts_with("ADDRESS"), "{}", table.stdout);
    assert!(
        table.stdout.contains("not routable (not ready)") && table.stdout.contains("version=4.2"),
        "{}",
        table.stdout
    );
    let dir = Path::new(BIN).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let via_kubectl = tokio::process::Command::new("kubectl")
        .args([
            "rudder",
            "endpoints",
            "biz1:8080",
            "-o",
            "wide",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .env("PATH", path)
        .output()
        .await
        .expect("kubectl must be installed (CI installs it; see .ci/run)");
    assert!(via_kubectl.status.success(), "{:?}", via_kubectl);
    // Same rows (the two runs differ only in nothing: same snapshot of the cluster).
    let rows_of = |s: &str| {
        let mut v: Vec<String> = s.lines().skip(1).map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(
        rows_of(&String::from_utf8_lossy(&via_kubectl.stdout)),
        rows_of(&table.stdout)
    );
}

#[tokio::test]
async fn errors_are_clear_and_exit_non_zero() {
    let cluster = TestCluster::builder()
        .service("hello-svc")
        .replicas(0)
        .start()
        .await
        .expect("cluster");
    let kubeconfig = cluster.api().kubeconfig_path().to_path_buf();

    let missing = plugin(&kubeconfig, &["endpoints", "nope:8080"]).await;
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);

    // No Pods: it says why nothing is routable.
    let empty = plugin(&kubeconfig, &["endpoints", "hello-svc:8080"]).await;
    assert_eq!(empty.code, Some(0), "{}", empty.stderr);
    assert!(
        empty.stdout.contains("no routable endpoint"),
        "{}",
        empty.stdout
    );

    for bad in [
        vec!["endpoints"],
        vec!["endpoints", "hello-svc", "--selector", "version in (4.2"],
        vec!["endpoints", "hello-svc", "-o", "yaml"],
        vec!["routes"],
    ] {
        let run = plugin(&kubeconfig, &bad).await;
        assert_eq!(run.code, Some(2), "{bad:?}: {}", run.stderr);
        assert!(!run.stderr.is_empty(), "{bad:?}");
    }
    let help = plugin(&kubeconfig, &["--help"]).await;
    assert_eq!(help.code, Some(0));

    // `-n` and `--context`, as kubectl plugins take them: the short name is looked up in
    // the namespace given, and a context the kubeconfig lacks is an error naming it.
    let elsewhere = plugin(
        &kubeconfig,
        &["endpoints", "hello-svc:8080", "-n", "kube-system"],
    )
    .await;
    assert_eq!(elsewhere.code, Some(1));
    assert!(
        elsewhere.stderr.contains("hello-svc.kube-system"),
        "{}",
        elsewhere.stderr
    );
    let here = plugin(
        &kubeconfig,
        &["endpoints", "hello-svc:8080", "--context", "rudder-testkit"],
    )
    .await;
    assert_eq!(here.code, Some(0), "{}", here.stderr);
    let unknown = plugin(
        &kubeconfig,
        &["endpoints", "hello-svc:8080", "--context", "nope"],
    )
    .await;
    assert_eq!(unknown.code, Some(1));
    assert!(unknown.stderr.contains("nope"), "{}", unknown.stderr);
}
