//! The world a test runs in: the manifests as the gateway sees them (placeholders filled,
//! one loopback address per Gateway, EndpointSlices for every Service), and an in-process
//! echo "pod" per Deployment replica, each on its own loopback address.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use anyhow::Context;
use cedille_echo::{Echo, EchoConfig};
use serde_json::{Value, json};

pub const CLASS: &str = "cedille";
pub const CONTROLLER: &str = "cedille.io/gateway-controller";

pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub echo: Arc<Echo>,
    ports: BTreeSet<u16>,
}

/// Where the world's objects go: the gateway's manifest directory, or the API server.
pub enum Sink {
    File(PathBuf),
    /// Objects are created, replaced and deleted through the API; `applied` remembers what
    /// the last apply created, to delete what a test no longer has.
    Api {
        server: Arc<cedille_apiserver::ApiServer>,
        applied: BTreeSet<(String, String, String, String)>,
    },
}

pub struct World {
    pub sink: Sink,
    /// Served by the pods of Deployments named `tls-backend*`.
    backend_tls: Arc<rustls::ServerConfig>,
    /// Served by `tls-backend-with-client-cert-validation`, which wants a client certificate.
    pub backend_tls_client_auth: Option<Arc<rustls::ServerConfig>>,
    gateway_ips: BTreeMap<String, Ipv4Addr>,
    pub pods: BTreeMap<String, Pod>,
    next_pod: u32,
    pub extra: Vec<Value>,
}

fn key(v: &Value) -> (String, String, String) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (s("/kind"), s("/metadata/namespace"), s("/metadata/name"))
}

pub fn labels(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

impl World {
    pub fn new(sink: Sink, extra: Vec<Value>, backend_tls: Arc<rustls::ServerConfig>) -> Self {
        Self {
            sink,
            backend_tls,
            backend_tls_client_auth: None,
            gateway_ips: BTreeMap::new(),
            pods: BTreeMap::new(),
            next_pod: 0,
            extra,
        }
    }

    /// The loopback address reserved for a Gateway (`ns/name`).
    pub fn gateway_ip(&mut self, gw: &str) -> Ipv4Addr {
        let n = self.gateway_ips.len() as u32 + 1;
        *self
            .gateway_ips
            .entry(gw.to_owned())
            .or_insert_with(|| Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 1, 0)) + n))
    }

    /// Merges `docs` (later ones replace earlier ones with the same identity, as `kubectl
    /// apply` would), fills placeholders and generated objects, starts the echo pods they
    /// need and writes the configuration file. Returns the objects as written.
    pub async fn apply(&mut self, docs: &[Value]) -> anyhow::Result<Vec<Value>> {
        let mut merged: Vec<Value> = Vec::new();
        for d in docs.iter().chain(self.extra.clone().iter()) {
            let k = key(d);
            match merged.iter_mut().find(|m| key(m) == k) {
                Some(m) => *m = d.clone(),
                None => merged.push(d.clone()),
            }
        }
        merged.push(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": CLASS}, "spec": {"controllerName": CONTROLLER}}),
        );
        let mut out = Vec::new();
        let mut services = Vec::new();
        for mut d in merged {
            let (kind, ns, name) = key(&d);
            let ns = if ns.is_empty() {
                "default".to_owned()
            } else {
                ns
            };
            match kind.as_str() {
                "Gateway" => {
                    d["spec"]["gatewayClassName"] = json!(CLASS);
                    let ip = self.gateway_ip(&format!("{ns}/{name}"));
                    let addrs = d["spec"]["addresses"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let addrs: Vec<Value> = if addrs.is_empty() {
                        vec![json!({"type": "IPAddress", "value": ip.to_string()})]
                    } else {
                        addrs
                            .into_iter()
                            .map(|mut a| {
                                match a["value"].as_str() {
                                    Some("PLACEHOLDER_USABLE_ADDRS") => {
                                        a["value"] = json!(ip.to_string())
                                    }
                                    // TEST-NET-2: never a local address, so binding fails.
                                    Some("PLACEHOLDER_UNUSABLE_ADDRS") => {
                                        a["value"] = json!("198.51.100.7")
                                    }
                                    _ => {}
                                }
                                a
                            })
                            .collect()
                    };
                    d["spec"]["addresses"] = json!(addrs);
                    out.push(d);
                }
                "GatewayClass" => {
                    if d["spec"]["controllerName"].as_str() == Some("{GATEWAY_CONTROLLER_NAME}") {
                        d["spec"]["controllerName"] = json!(CONTROLLER);
                    }
                    out.push(d);
                }
                "Deployment" => {
                    let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
                    let labels = labels(d.pointer("/spec/template/metadata/labels"));
                    for i in 0..replicas {
                        let pod = format!("{name}-7c9f{i}-x{i}k2q");
                        if !self.pods.contains_key(&pod) {
                            self.next_pod += 1;
                            let ip = Ipv4Addr::from(
                                u32::from(Ipv4Addr::new(127, 0, 2, 0)) + self.next_pod,
                            );
                            let echo = Arc::new(Echo::new(EchoConfig {
                                pod: pod.clone(),
                                namespace: ns.clone(),
                                service: name.clone(),
                            }));
                            self.pods.insert(
                                pod.clone(),
                                Pod {
                                    name: pod,
                                    namespace: ns.clone(),
                                    labels: labels.clone(),
                                    ip,
                                    echo,
                                    ports: BTreeSet::new(),
                                },
                            );
                        }
                    }
                }
                "Service" => {
                    services.push(d.clone());
                    out.push(d);
                }
                _ => out.push(d),
            }
        }
        for svc in &services {
            if let Some(slice) = self.endpoint_slice(svc).await? {
                out.push(slice);
            }
        }
        match &mut self.sink {
            Sink::File(path) => {
                let text = out
                    .iter()
                    .map(|d| serde_yaml_ng::to_string(d).map(|s| format!("---\n{s}")))
                    .collect::<Result<String, _>>()?;
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, &*path)?;
            }
            Sink::Api { server, applied } => sync_api(server, applied, &out)?,
        }
        Ok(out)
    }

    /// An EndpointSlice for a Service with a selector: its pods' addresses on the target
    /// ports. Starts the pods' listeners on those ports.
    async fn endpoint_slice(&mut self, svc: &Value) -> anyhow::Result<Option<Value>> {
        let (_, ns, name) = key(svc);
        let ns = if ns.is_empty() {
            "default".to_owned()
        } else {
            ns
        };
        let selector = labels(svc.pointer("/spec/selector"));
        if selector.is_empty() {
            return Ok(None);
        }
        let mut ports = Vec::new();
        let mut targets = Vec::new();
        for p in svc["spec"]["ports"].as_array().cloned().unwrap_or_default() {
            let port = p["port"].as_u64().unwrap_or(80);
            let target = p["targetPort"].as_u64().unwrap_or(port) as u16;
            targets.push(target);
            let mut ep = json!({"name": p["name"].as_str().unwrap_or(""), "port": target, "protocol": "TCP"});
            if let Some(ap) = p.get("appProtocol") {
                ep["appProtocol"] = ap.clone();
            }
            ports.push(ep);
        }
        let mut endpoints = Vec::new();
        let names: Vec<String> = self
            .pods
            .values()
            .filter(|p| {
                p.namespace == ns && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .map(|p| p.name.clone())
            .collect();
        for pod in names {
            for t in &targets {
                self.ensure_listening(&pod, *t).await?;
            }
            let p = &self.pods[&pod];
            endpoints.push(
                json!({"addresses": [p.ip.to_string()], "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": p.name, "namespace": p.namespace}}),
            );
        }
        Ok(Some(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-auto"), "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
        })))
    }

    async fn ensure_listening(&mut self, pod: &str, port: u16) -> anyhow::Result<()> {
        let p = self.pods.get_mut(pod).expect("known pod");
        if !p.ports.insert(port) {
            return Ok(());
        }
        let addr = SocketAddr::new(IpAddr::V4(p.ip), port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("echo pod {pod} on {addr}"))?;
        // The suite's TLS backends serve a certificate from its test CA.
        let service = &p.echo.config().service;
        let tls = match (&self.backend_tls_client_auth, service.as_str()) {
            (Some(c), "tls-backend-with-client-cert-validation") => Some(c.clone()),
            _ => service
                .starts_with("tls-backend")
                .then(|| self.backend_tls.clone()),
        };
        tokio::spawn(cedille_echo::serve(
            listener,
            p.echo.clone(),
            tls,
            std::future::pending(),
        ));
        Ok(())
    }

    /// Pods of a Deployment (by name prefix) in a namespace.
    pub fn pods_of(&self, ns: &str, deployment: &str) -> Vec<&Pod> {
        self.pods
            .values()
            .filter(|p| p.namespace == ns && p.name.starts_with(&format!("{deployment}-")))
            .collect()
    }
}

/// `(apiVersion, kind, namespace, name)` of an object as the API server keys it.
fn api_key(
    server: &cedille_apiserver::ApiServer,
    v: &Value,
) -> Option<(String, String, String, String)> {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (api_version, kind) = (s("/apiVersion"), s("/kind"));
    // Kinds the test API server does not serve (none the gateway reads) are left out.
    server.list(&api_version, &kind).ok()?;
    let cluster_scoped = matches!(kind.as_str(), "Namespace" | "GatewayClass");
    let ns = if cluster_scoped {
        String::new()
    } else {
        let ns = s("/metadata/namespace");
        if ns.is_empty() {
            "default".to_owned()
        } else {
            ns
        }
    };
    Some((api_version, kind, ns, s("/metadata/name")))
}

/// Makes the API server hold exactly `objects` of what the harness manages: creates or
/// replaces each (an unchanged object is a no-op write, as on a real API server), then
/// deletes what the previous apply had and this one does not. Namespaces go first and
/// leave last.
fn sync_api(
    server: &cedille_apiserver::ApiServer,
    applied: &mut BTreeSet<(String, String, String, String)>,
    objects: &[Value],
) -> anyhow::Result<()> {
    let mut now = BTreeSet::new();
    let mut ordered: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .collect();
    ordered.extend(objects.iter().filter(|o| o["kind"] != "Namespace"));
    for o in ordered {
        let Some(key) = api_key(server, o) else {
            continue;
        };
        let mut obj = o.clone();
        if !key.2.is_empty() {
            obj["metadata"]["namespace"] = json!(key.2);
        }
        server.apply(obj).map_err(|e| {
            anyhow::anyhow!("applying {} {}/{}: {}", key.1, key.2, key.3, e.message)
        })?;
        now.insert(key);
    }
    let gone: Vec<_> = applied.difference(&now).cloned().collect();
    for (api_version, kind, ns, name) in gone
        .iter()
        .filter(|k| k.1 != "Namespace")
        .chain(gone.iter().filter(|k| k.1 == "Namespace"))
    {
        // Already gone with its namespace, or never created: both fine.
        let _ = server.delete(api_version, kind, ns, name);
    }
    *applied = now;
    Ok(())
}
