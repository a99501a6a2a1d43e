//! The server driven by the `kubectl` on this machine, as people and scripts use it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use rudder_testkit::{ApiServer, TestCluster};

/// A scratch directory removed on drop (kubectl's cache and manifests live here).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rudder-kubectl-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) struct Kubectl<'a> {
    server: &'a ApiServer,
    scratch: Scratch,
}

pub(crate) struct Output {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl<'a> Kubectl<'a> {
    pub(crate) fn new(server: &'a ApiServer) -> Self {
        Self {
            server,
            scratch: Scratch::new(),
        }
    }

    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.server.kubeconfig_path())
            .arg("--cache-dir")
            .arg(self.scratch.0.join("cache"))
            .args(args)
            .output()
            .await
            .expect("kubectl must be installed (CI installs it; see .ci/run)");
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert!(o.ok, "kubectl {args:?} failed:\n{}\n{}", o.stdout, o.stderr);
        o.stdout
    }

    pub(crate) fn manifest(&self, name: &str, yaml: &str) -> String {
        let path = self.scratch.0.join(name);
        std::fs::write(&path, yaml).expect("manifest");
        path.display().to_string()
    }
}

async fn hello_svc() -> TestCluster {
    TestCluster::builder()
        .service("hello-svc")
        .pod_prefix("hello-world")
        .label("app", "hello-world")
        .replicas(10)
        .start()
        .await
        .expect("cluster")
}

/// The Kubernetes Services chapter: `hello-svc` over 10 `app=hello-world` Pods yields an
/// Endpoints object and EndpointSlices with the 10 addresses, and kubectl shows them.
#[tokio::test]
async fn get_and_describe_show_the_service_endpoints() {
    let cluster = hello_svc().await;
    let k = Kubectl::new(cluster.api());
    let ips: Vec<String> = cluster
        .pods()
        .iter()
        .map(|p| p.addr().ip().to_string())
        .collect();

    let pods = k.ok(&["get", "pods"]).await;
    assert_eq!(
        pods.lines()
            .filter(|l| l.starts_with("hello-world-") && l.contains("Running"))
            .count(),
        10,
        "{pods}"
    );

    let ep = k.run(&["get", "ep", "hello-svc"]).await;
    assert!(ep.ok, "{}", ep.stderr);
    assert!(ep.stdout.contains("+ 7 more..."), "{}", ep.stdout);
    assert!(
        ep.stderr.contains("v1 Endpoints is deprecated"),
        "the deprecation warning reaches kubectl: {}",
        ep.stderr
    );
    let listed = k
        .ok(&[
            "get",
            "ep",
            "hello-svc",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ])
        .await;
    let mut listed: Vec<&str> = listed.split_whitespace().collect();
    listed.sort_unstable();
    let mut want: Vec<&str> = ips.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(listed, want);

    let slices = k
        .ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=hello-svc",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[0]}",
        ])
        .await;
    assert_eq!(slices.split_whitespace().count(), 10, "{slices}");

    let describe = k.ok(&["describe", "svc", "hello-svc"]).await;
    assert!(
        describe.contains("Selector:") && describe.contains("app=hello-world"),
        "{describe}"
    );
    let line = describe
        .lines()
        .find(|l| l.starts_with("Endpoints:"))
        .expect("Endpoints line");
    assert!(line.contains("+ 7 more..."), "{line}");
}

#[tokio::test]
async fn label_annotate_and_delete() {
    let cluster = hello_svc().await;
    let k = Kubectl::new(cluster.api());
    let pods: Api<Pod> = Api::default_namespaced(cluster.api().client().await.unwrap());

    k.ok(&["label", "pod", "hello-world-1", "version=4.2"])
        .await;
    k.ok(&[
        "label",
        "pod",
        "hello-world-1",
        "version=4.3",
        "--overwrite",
    ])
    .await;
    k.ok(&[
        "annotate",
        "pod",
        "hello-world-1",
        "team.example.com/owner=mesh",
    ])
    .await;
    let p = pods.get("hello-world-1").await.unwrap();
    assert_eq!(p.metadata.labels.unwrap()["version"], "4.3");
    assert_eq!(
        p.metadata.annotations.unwrap()["team.example.com/owner"],
        "mesh"
    );
    let selected = k
        .ok(&[
            "get",
            "pods",
            "-l",
            "app=hello-world,version in (4.3)",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(selected.trim(), "pod/hello-world-1");
    k.ok(&["label", "pod", "hello-world-1", "version-"]).await;
    assert!(
        !pods
            .get("hello-world-1")
            .await
            .unwrap()
            .metadata
            .labels
            .unwrap()
            .contains_key("version")
    );

    // Relabelled out of the selector: the Pod leaves the Service's endpoints.
    k.ok(&[
        "label",
        "pod",
        "hello-world-2",
        "app=retired",
        "--overwrite",
    ])
    .await;
    cluster.api().settled().await;
    let ep = k
        .ok(&[
            "get",
            "ep",
            "hello-svc",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ])
        .await;
    assert_eq!(ep.split_whitespace().count(), 9);

    k.ok(&["delete", "pod", "hello-world-3", "--wait=false"])
        .await;
    let status = k.ok(&["get", "pod", "hello-world-3"]).await;
    assert!(status.contains("Terminating"), "{status}");
    k.ok(&[
        "delete",
        "pod",
        "hello-world-3",
        "--force",
        "--grace-period=0",
    ])
    .await;
    let gone = k.run(&["get", "pod", "hello-world-3"]).await;
    assert!(
        !gone.ok && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
}

#[tokio::test]
async fn create_from_files() {
    let cluster = hello_svc().await;
    let k = Kubectl::new(cluster.api());
    let pod = k.manifest("pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: extra\n  labels: {app: extra}\nspec:\n  containers:\n  - name: c\n    image: app:1\n");
    let svc = k.manifest("svc.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: manual\nspec:\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n");
    let eps = k.manifest("eps.yaml", "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: legacy\nsubsets:\n- addresses:\n  - ip: 10.244.0.51\n  ports:\n  - name: http\n    port: 9090\n");
    let legacy_svc = k.manifest("legacy.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: legacy\nspec:\n  ports:\n  - name: http\n    port: 9090\n");
    let slice = k.manifest("slice.yaml", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: manual-1\n  labels:\n    kubernetes.io/service-name: manual\n    endpointslice.kubernetes.io/managed-by: manual.example.com\naddressType: IPv4\nports:\n- name: http\n  port: 8080\nendpoints:\n- addresses: [10.244.0.61]\n  conditions: {ready: true}\n");
    for f in [&pod, &svc, &legacy_svc, &eps, &slice] {
        k.ok(&["create", "-f", f]).await;
    }
    assert!(k.ok(&["get", "pod", "extra"]).await.contains("Pending"));
    let manual = k
        .ok(&[
            "get",
            "endpointslices",
            "manual-1",
            "-o",
            "jsonpath={.endpoints[0].addresses[0]}",
        ])
        .await;
    assert_eq!(manual, "10.244.0.61");
    // Hand-made Endpoints of a selector-less Service are mirrored into a slice.
    cluster.api().settled().await;
    let slices: Api<EndpointSlice> = Api::default_namespaced(cluster.api().client().await.unwrap());
    let mirrored = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=legacy"))
        .await
        .unwrap();
    assert_eq!(mirrored.items.len(), 1);
    assert_eq!(mirrored.items[0].endpoints[0].addresses, ["10.244.0.51"]);
    let again = k.run(&["create", "-f", &pod]).await;
    assert!(
        !again.ok && again.stderr.contains("AlreadyExists"),
        "{}",
        again.stderr
    );
    k.ok(&["apply", "-f", &svc]).await;
}

/// `kubectl explain` reads the schemas of the OpenAPI v3 documents a real kube-apiserver
/// served, which the test server sends as captured.
#[tokio::test]
async fn explain_reads_the_captured_openapi_schemas() {
    let cluster = hello_svc().await;
    let k = Kubectl::new(cluster.api());
    let out = k.ok(&["explain", "pods.spec.containers.ports"]).await;
    assert!(out.contains("FIELD: ports <[]ContainerPort>"), "{out}");
    assert!(out.contains("containerPort"), "{out}");
    let out = k
        .ok(&["explain", "endpointslices.endpoints.conditions"])
        .await;
    assert!(out.contains("GROUP:      discovery.k8s.io"), "{out}");
    assert!(out.contains("serving"), "{out}");
}

/// Gateway API HTTPRoutes, served as their CRD serves them: `kubectl apply -f` of a GAMMA
/// route (parent: a Service), `kubectl get httproutes`, the schema's defaults, and its
/// checks of the fields Rudder reads.
#[tokio::test]
async fn httproutes_apply_get_default_and_validate() {
    let cluster = hello_svc().await;
    let k = Kubectl::new(cluster.api());
    let route = k.manifest(
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: hello-split\nspec:\n  parentRefs:\n  - group: \"\"\n    kind: Service\n    name: hello-svc\n    port: 8080\n  rules:\n  - backendRefs:\n    - name: hello-v1\n      port: 8080\n      weight: 90\n    - name: hello-v2\n      port: 8080\n      weight: 10\n",
    );
    assert_eq!(
        k.ok(&["apply", "-f", &route]).await,
        "httproute.gateway.networking.k8s.io/hello-split created\n"
    );
    let listed = k.ok(&["get", "httproutes"]).await;
    assert!(
        listed.starts_with("NAME") && listed.contains("hello-split"),
        "{listed}"
    );
    // The schema's defaults: a match on every path, backends are Services.
    let json = k
        .ok(&["get", "httproute", "hello-split", "-o", "json"])
        .await;
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        v["spec"]["rules"][0]["matches"][0]["path"],
        serde_json::json!({"type": "PathPrefix", "value": "/"})
    );
    assert_eq!(v["spec"]["rules"][0]["backendRefs"][1]["kind"], "Service");
    // Applying again works (kubectl sends a custom resource's lists whole as a merge
    // patch, and the defaults make them differ, so it says "configured"); a weight beyond
    // the schema's bound is refused.
    k.ok(&["apply", "-f", &route]).await;
    let again = k
        .ok(&["get", "httproute", "hello-split", "-o", "json"])
        .await;
    let again: serde_json::Value = serde_json::from_str(&again).expect("JSON");
    assert_eq!(again["spec"], v["spec"], "the same route");
    let bad = k.manifest(
        "bad.yaml",
        &std::fs::read_to_string(&route)
            .expect("manifest")
            .replace("weight: 10", "weight: 2000000"),
    );
    let refused = k.run(&["apply", "-f", &bad]).await;
    assert!(
        !refused.ok
            && refused
                .stderr
                .contains("spec.rules[0].backendRefs[1].weight"),
        "{}",
        refused.stderr
    );
}
