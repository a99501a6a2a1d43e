//! The `rudder-apiserver` binary: ready line, kubeconfig, clean exit on SIGTERM.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts `rudder-apiserver` with `args` and waits for its `ready` line.
async fn start_ready(args: &[&std::ffi::OsStr]) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rudder-apiserver"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rudder-apiserver");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("ready within 30 s")
        .expect("stdout")
        .expect("a line");
    assert!(line.contains("ready"), "{line}");
    child
}

/// Sends SIGTERM and waits (bounded) for the exit.
async fn terminate(mut child: tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("wait")
}

#[tokio::test]
async fn prints_ready_serves_and_exits_cleanly_on_sigterm() {
    let kubeconfig = std::env::temp_dir().join(format!(
        "rudder-apiserver-bin-{}.kubeconfig",
        std::process::id()
    ));
    let child = start_ready(&[
        "--kubeconfig".as_ref(),
        kubeconfig.as_os_str(),
        "--demo".as_ref(),
    ])
    .await;

    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig written"),
        &Default::default(),
    )
    .await
    .expect("config");
    let pods: Api<Pod> = Api::default_namespaced(kube::Client::try_from(config).expect("client"));
    let listed = pods
        .list(&ListParams::default().labels("app=hello-world"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 10, "--demo serves hello-svc's 10 Pods");

    let exit = terminate(child).await;
    assert!(exit.success(), "{exit:?}");
    assert!(!kubeconfig.exists(), "the kubeconfig is removed on exit");
}

#[tokio::test]
async fn bad_arguments_exit_2_with_usage() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rudder-apiserver"))
        .arg("--port")
        .arg("notaport")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
}

#[tokio::test]
async fn help_exits_0_and_an_existing_kubeconfig_is_never_overwritten() {
    let bin = env!("CARGO_BIN_EXE_rudder-apiserver");
    let out = tokio::process::Command::new(bin)
        .arg("--help")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--kubeconfig") && help.contains("--force"),
        "{help}"
    );

    // A file that is already there (a user's ~/.kube/config, say) is refused, untouched.
    let path = std::env::temp_dir().join(format!(
        "rudder-apiserver-existing-{}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(&path, "precious").unwrap();
    let out = tokio::process::Command::new(bin)
        .arg("--kubeconfig")
        .arg(&path)
        .output()
        .await
        .expect("run");
    let contents = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(contents, "precious", "left as it was");
}

#[tokio::test]
async fn force_uses_an_existing_path_and_puts_its_contents_back() {
    let path = std::env::temp_dir().join(format!(
        "rudder-apiserver-force-{}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(&path, "precious").unwrap();
    let child = start_ready(&[
        "--kubeconfig".as_ref(),
        path.as_os_str(),
        "--force".as_ref(),
    ])
    .await;
    let during = std::fs::read_to_string(&path).unwrap();
    assert!(during.contains("clusters"), "a kubeconfig while it runs");
    let exit = terminate(child).await;
    let after = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(after, "precious", "the original contents are back");
}

/// `--record FILE` writes every watch event served; the file reads back as a trace with
/// the events a client saw. An existing FILE is refused without `--force`.
#[tokio::test]
async fn record_writes_every_watch_event_served() {
    use futures::TryStreamExt;
    use kube::api::{DeleteParams, WatchEvent, WatchParams};
    use rudder_testkit::{Trace, TraceEventKind};

    let dir = std::env::temp_dir();
    let id = std::process::id();
    let kubeconfig = dir.join(format!("rudder-apiserver-record-{id}.kubeconfig"));
    let record = dir.join(format!("rudder-apiserver-record-{id}.jsonl"));
    let _ = std::fs::remove_file(&record);
    let child = start_ready(&[
        "--kubeconfig".as_ref(),
        kubeconfig.as_os_str(),
        "--demo".as_ref(),
        "--record".as_ref(),
        record.as_os_str(),
    ])
    .await;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig written"),
        &Default::default(),
    )
    .await
    .expect("config");
    let pods: Api<Pod> = Api::default_namespaced(kube::Client::try_from(config).expect("client"));
    let watch = pods
        .watch(&WatchParams::default().labels("app=hello-world"), "0")
        .await
        .expect("watch");
    futures::pin_mut!(watch);
    pods.delete("hello-world-1", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete");
    let mut seen = 0;
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = watch.try_next().await.expect("watch event") {
            if matches!(
                e,
                WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_)
            ) {
                seen += 1;
            }
            if matches!(&e, WatchEvent::Deleted(p) if p.metadata.name.as_deref() == Some("hello-world-1"))
            {
                break;
            }
        }
    })
    .await
    .expect("the deletion is watched");
    let exit = terminate(child).await;
    assert!(exit.success(), "{exit:?}");

    let trace = Trace::read_recording(&record).expect("a recording");
    let added = trace
        .events()
        .iter()
        .filter(|e| e.kind == TraceEventKind::Added)
        .count();
    assert_eq!(added, 10, "the initial events of the watch");
    assert!(
        trace.skipped() >= 1,
        "bookmarks are recorded (and skipped on replay)"
    );
    let last = trace.events().last().expect("events");
    assert_eq!(last.kind, TraceEventKind::Deleted);
    assert_eq!(last.object["metadata"]["name"], "hello-world-1");
    assert_eq!(
        trace.events().len(),
        seen,
        "one recorded event per object event served"
    );
    assert!(
        trace.events().windows(2).all(|w| w[0].at <= w[1].at),
        "in time order"
    );

    // The recording is not replaced unless asked.
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_rudder-apiserver"))
        .args(["--kubeconfig".as_ref(), kubeconfig.as_os_str()])
        .args(["--record".as_ref(), record.as_os_str()])
        .output()
        .await
        .expect("run");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert!(std::fs::metadata(&record).expect("kept").len() > 0);
    std::fs::remove_file(&record).expect("remove the recording");
}
