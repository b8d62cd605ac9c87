//! A Kubernetes API server for tests, over real HTTP. No kube-apiserver can run here, so
//! this serves what Cedille uses of one, with its semantics: discovery, CRDs, list with
//! pagination and resourceVersions, watch from a resourceVersion with replay, bookmarks,
//! in-stream 410 once compacted, label and field selectors (objects moving in and out of a
//! selector are ADDED/DELETED), the `/status` subresource isolated from the rest,
//! `generation` bumped by spec changes only, PUT and PATCH (merge, JSON, strategic, apply)
//! with resourceVersion preconditions, and the standard Status errors. `kubectl` drives it
//! in the tests to keep it honest.
//!
//! What it leaves out: authentication and authorization, admission, schema validation,
//! defaulting and pruning from CRD schemas, finalizers and graceful deletion, field
//! ownership in server-side apply (an apply merges the applied configuration), protobuf.

pub mod discovery;
pub mod patch;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod store;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tokio::{net::TcpSocket, sync::watch, task::JoinHandle};

use server::Shared;
pub use store::ApiError;

#[derive(Clone, Debug)]
pub struct Options {
    /// CustomResourceDefinitions served from the start.
    pub crds: Vec<Value>,
    /// How often idle watch streams get a BOOKMARK (when they ask for them).
    pub bookmark_interval: Duration,
    /// Events kept for watch replay; older ones are compacted (410 for a watch from them).
    pub log_limit: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            crds: Vec::new(),
            bookmark_interval: Duration::from_secs(1),
            log_limit: 10_000,
        }
    }
}

/// Reads every CustomResourceDefinition in the YAML files of `dir`.
pub fn load_crds(dir: &Path) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)?;
            if v.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition") {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// A running server.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    kill_connections: watch::Sender<u64>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl ApiServer {
    pub async fn start(addr: SocketAddr, options: Options) -> anyhow::Result<Self> {
        let mut store = store::Store::new();
        store.set_log_limit(options.log_limit);
        let crd_res = (
            "apiextensions.k8s.io".to_owned(),
            "customresourcedefinitions".to_owned(),
        );
        for crd in options.crds {
            let name = crd
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            store
                .create(&crd_res, None, crd, false)
                .map_err(|e| anyhow::anyhow!("CRD {name}: {}", e.message))?;
        }
        let shared = Arc::new(Shared::new(store, options.bookmark_interval));
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        *shared.addr.lock().unwrap_or_else(|e| e.into_inner()) = addr.to_string();
        let server = Self {
            shared,
            addr,
            kill_connections: watch::channel(0).0,
            accept: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let shared = self.shared.clone();
        let kill = self.kill_connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let shared = shared.clone();
                let mut killed = kill.subscribe();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(server::handle(shared, req).await)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.changed() => {}
                    }
                });
            }
        });
        *self.accept.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server over plain HTTP, namespace `default`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cedille-test\n  cluster:\n    server: {}\nusers:\n- name: cedille-test\n  user: {{}}\ncontexts:\n- name: cedille-test\n  context:\n    cluster: cedille-test\n    user: cedille-test\n    namespace: default\ncurrent-context: cedille-test\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Drops the event log: watches and continue tokens from before now get 410.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Ends every open watch stream (clients reconnect from their last resourceVersion).
    pub fn drop_watches(&self) {
        self.shared.kill_watches.send_modify(|n| *n += 1);
    }

    /// The server goes away: stops accepting and closes every connection. State is kept.
    pub fn pause(&self) {
        if let Some(t) = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
        self.kill_connections.send_modify(|n| *n += 1);
        self.drop_watches();
    }

    /// The server comes back on the same address.
    pub async fn resume(&self) -> anyhow::Result<()> {
        let mut tries = 0;
        let listener = loop {
            match bind(self.addr) {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "rebinding");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.serve(listener);
        Ok(())
    }

    fn resource_of(&self, obj: &Value) -> Result<(String, String), ApiError> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.shared
            .lock()
            .resources
            .values()
            .find(|r| r.group == group && r.kind == kind && r.serves(version))
            .map(|r| r.key())
            .ok_or_else(|| ApiError::bad_request(format!("no resource for {api_version} {kind}")))
    }

    /// Creates `obj` (its namespace from its metadata), as a POST would.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let res = self.resource_of(&obj)?;
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let r = self.shared.lock().create(&res, ns.as_deref(), obj, false);
        self.shared.notify();
        r
    }

    fn resource(&self, api_version: &str, kind: &str) -> Result<(String, String), ApiError> {
        self.resource_of(&serde_json::json!({"apiVersion": api_version, "kind": kind}))
    }

    /// The resource, namespace ("" for cluster scope) and name `obj` names.
    fn locate(&self, obj: &Value) -> Result<((String, String), String, String), ApiError> {
        let res = self.resource_of(obj)?;
        let namespaced = self
            .shared
            .lock()
            .resources
            .get(&res)
            .is_some_and(|r| r.namespaced);
        let s = |p: &str| {
            obj.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let ns = match s("/metadata/namespace") {
            _ if !namespaced => String::new(),
            ns if ns.is_empty() => "default".to_owned(),
            ns => ns,
        };
        Ok((res, ns, s("/metadata/name")))
    }

    /// Creates or replaces `obj` (a replace takes the current resourceVersion), keeping the
    /// current status.
    pub fn apply(&self, mut obj: Value) -> Result<Value, ApiError> {
        let (res, ns, name) = self.locate(&obj)?;
        let r = {
            let mut s = self.shared.lock();
            match s.get(&res, &ns, &name) {
                Ok(current) => {
                    obj["metadata"]["resourceVersion"] =
                        current["metadata"]["resourceVersion"].clone();
                    let how = store::Write {
                        put: true,
                        ..Default::default()
                    };
                    s.replace(&res, &ns, &name, obj, how)
                }
                Err(_) => {
                    let ns = (!ns.is_empty()).then_some(ns.as_str());
                    s.create(&res, ns, obj, false)
                }
            }
        };
        self.shared.notify();
        r
    }

    /// Replaces the status of the object `obj` names with `obj.status`, as a PUT to
    /// `/status` would.
    pub fn set_status(&self, obj: &Value) -> Result<Value, ApiError> {
        let (res, ns, name) = self.locate(obj)?;
        let mut body = obj.clone();
        if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let how = store::Write {
            status_only: true,
            ..Default::default()
        };
        let r = self.shared.lock().replace(&res, &ns, &name, body, how);
        self.shared.notify();
        r
    }

    /// The object of `api_version`/`kind` named `namespace/name` ("" for cluster scope).
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let res = self.resource(api_version, kind)?;
        self.shared.lock().get(&res, namespace, name)
    }

    /// Every object of `api_version`/`kind`.
    pub fn list(&self, api_version: &str, kind: &str) -> Result<Vec<Value>, ApiError> {
        let res = self.resource(api_version, kind)?;
        Ok(self.shared.lock().snapshot(&res, None))
    }

    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let res = self.resource(api_version, kind)?;
        let r = self.shared.lock().delete(&res, namespace, name, None);
        self.shared.notify();
        r
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.pause();
    }
}
