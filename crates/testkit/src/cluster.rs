//! A Service with Ready Pods in one call: an [`ApiServer`] plus [`PodServer`]s.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::apiserver::ApiServer;
use crate::error::Error;
use crate::pod_server::PodServer;

/// Settings for a [`TestCluster`]; see [`TestCluster::builder`].
#[derive(Clone, Debug)]
pub struct TestClusterBuilder {
    namespace: String,
    service: String,
    pod_prefix: Option<String>,
    selector: BTreeMap<String, String>,
    replicas: usize,
    port: u16,
    target_port: u16,
    tls: Option<crate::PodTls>,
}

/// An API server holding one Service whose Pods are real [`PodServer`]s on loopback.
///
/// Nodes `node-a` (zone `zone-a`) and `node-b` (zone `zone-b`) exist; Pods alternate
/// between them. Each Pod has `status.podIP` set to its server's loopback IP and is Ready.
///
/// ```no_run
/// # async fn demo() -> Result<(), rudder_testkit::Error> {
/// let cluster = rudder_testkit::TestCluster::builder()
///     .service("hello-svc")
///     .label("app", "hello-world")
///     .replicas(10)
///     .start()
///     .await?;
/// assert_eq!(cluster.pods().len(), 10);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TestCluster {
    api: ApiServer,
    namespace: String,
    service: String,
    port: u16,
    target_port: u16,
    tls: Option<crate::PodTls>,
    pods: Vec<PodServer>,
}

impl Default for TestClusterBuilder {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            service: "hello-svc".into(),
            pod_prefix: None,
            selector: BTreeMap::new(),
            replicas: 3,
            port: 8080,
            target_port: 8080,
            tls: None,
        }
    }
}

impl TestClusterBuilder {
    /// The namespace (default `default`; created when missing).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// The Service's name (default `hello-svc`).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = name.into();
        self
    }

    /// Names the Pods `<prefix>-1`, `<prefix>-2`, … (default: the Service's name).
    pub fn pod_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.pod_prefix = Some(prefix.into());
        self
    }

    /// Adds a selector label, which every Pod also carries (default `app=<service>`).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.selector.insert(key.into(), value.into());
        self
    }

    /// How many Pods (default 3).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// The Service port (default 8080).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The Pods' container port (default 8080).
    pub fn target_port(mut self, port: u16) -> Self {
        self.target_port = port;
        self
    }

    /// Pods serve TLS with `tls` (certificates for the Service's names; see
    /// [`PodTls`](crate::PodTls)), on this and every later Pod.
    pub fn tls(mut self, tls: crate::PodTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Starts the API server, the Pods and the Service, and waits until the controllers
    /// have published the Service's endpoints.
    pub async fn start(self) -> Result<TestCluster, Error> {
        let api = ApiServer::start().await?;
        self.start_on(api).await
    }

    /// Like [`start`](Self::start), on an API server the caller configured.
    pub async fn start_on(mut self, api: ApiServer) -> Result<TestCluster, Error> {
        if self.selector.is_empty() {
            self.selector.insert("app".into(), self.service.clone());
        }
        let client = api.client().await?;
        let nodes: Api<Node> = Api::all(client.clone());
        for (node, zone) in [("node-a", "zone-a"), ("node-b", "zone-b")] {
            let obj: Node = serde_json::from_value(json!({"metadata": {"name": node, "labels": {
                "topology.kubernetes.io/zone": zone, "kubernetes.io/hostname": node, "kubernetes.io/os": "linux"}}}))
            .map_err(|e| Error::Invalid(e.to_string()))?;
            create_if_missing(nodes.create(&PostParams::default(), &obj).await)?;
        }
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": self.namespace}}))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        create_if_missing(namespaces.create(&PostParams::default(), &ns).await)?;

        let mut cluster = TestCluster {
            api,
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            port: self.port,
            target_port: self.target_port,
            tls: self.tls.clone(),
            pods: Vec::new(),
        };
        let prefix = self
            .pod_prefix
            .clone()
            .unwrap_or_else(|| self.service.clone());
        for i in 1..=self.replicas {
            cluster
                .add_pod(&format!("{prefix}-{i}"), self.selector.clone())
                .await?;
        }
        let services: Api<Service> = Api::namespaced(client, &self.namespace);
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": self.service},
            "spec": {"selector": self.selector, "ports": [{"port": self.port, "targetPort": self.target_port}]},
        }))
        .map_err(|e| Error::Invalid(e.to_string()))?;
        services.create(&PostParams::default(), &svc).await?;
        cluster.api.settled().await;
        Ok(cluster)
    }
}

fn create_if_missing<T>(result: Result<T, kube::Error>) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl TestCluster {
    /// Settings for a cluster.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder::default()
    }

    /// The API server.
    pub fn api(&self) -> &ApiServer {
        &self.api
    }

    /// The namespace everything lives in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Service's name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The Service port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Pod servers, in creation order.
    pub fn pods(&self) -> &[PodServer] {
        &self.pods
    }

    /// The Pod server named `name`.
    pub fn pod(&self, name: &str) -> Option<&PodServer> {
        self.pods.iter().find(|p| p.name() == name)
    }

    /// Starts a Pod server with `labels` and registers it as a Ready Pod; it joins every
    /// Service whose selector it matches.
    pub async fn add_pod(
        &mut self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<&PodServer, Error> {
        let server = PodServer::start_on_loopback_with(
            name,
            self.target_port,
            labels.clone(),
            self.tls.as_ref(),
        )
        .await?;
        let node = if self.pods.len().is_multiple_of(2) {
            "node-a"
        } else {
            "node-b"
        };
        let pods: Api<Pod> = Api::namespaced(self.api.client().await?, &self.namespace);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "rudder/pod-server:1",
                "ports": [{"name": "http", "containerPort": self.target_port}]}]},
        }))
        .map_err(|e| Error::Invalid(e.to_string()))?;
        pods.create(&PostParams::default(), &pod).await?;
        self.pods.push(server);
        let ip = self
            .pods
            .last()
            .map(|p| p.addr().ip().to_string())
            .unwrap_or_default();
        self.set_status(name, Some(&ip), true).await?;
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Registers a Ready Pod at `ip` whose server runs elsewhere (another process or network
    /// namespace); it joins every Service whose selector it matches.
    pub async fn register_pod(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        ip: std::net::IpAddr,
    ) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(self.api.client().await?, &self.namespace);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "rudder/pod-server:1",
                "ports": [{"name": "http", "containerPort": self.target_port}]}]},
        }))
        .map_err(|e| Error::Invalid(e.to_string()))?;
        pods.create(&PostParams::default(), &pod).await?;
        self.set_status(name, Some(&ip.to_string()), true).await
    }

    /// Marks a Pod Ready or not Ready through its `status` subresource.
    pub async fn set_ready(&self, name: &str, ready: bool) -> Result<(), Error> {
        self.set_status(name, None, ready).await
    }

    async fn set_status(&self, name: &str, ip: Option<&str>, ready: bool) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(self.api.client().await?, &self.namespace);
        let flag = if ready { "True" } else { "False" };
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut status = json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": flag, "lastProbeTime": null, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": flag, "lastProbeTime": null, "lastTransitionTime": now}],
            "containerStatuses": [{"name": "app", "ready": ready, "restartCount": 0, "image": "rudder/pod-server:1",
                "imageID": "", "started": true, "state": {"running": {"startedAt": now}}, "lastState": {}}]});
        if let Some(ip) = ip {
            status["podIP"] = ip.into();
            status["podIPs"] = json!([{"ip": ip}]);
            status["startTime"] = now.clone().into();
        }
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
        Ok(())
    }

    /// Deletes a Pod: gracefully (it stays Terminating for `grace_seconds`) or at once (0).
    /// The Pod server keeps running, as a terminating process would; kill it separately.
    pub async fn delete_pod(&self, name: &str, grace_seconds: u32) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(self.api.client().await?, &self.namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(grace_seconds),
            ..DeleteParams::default()
        };
        pods.delete(name, &dp).await?;
        Ok(())
    }

    /// Replaces a Pod's labels (a merge patch; `None` values remove a label).
    pub async fn label_pod(
        &self,
        name: &str,
        labels: BTreeMap<String, Option<String>>,
    ) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(self.api.client().await?, &self.namespace);
        pods.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await?;
        Ok(())
    }
}
