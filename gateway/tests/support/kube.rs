//! Kubernetes mode under test: the test API server (`cedille-apiserver`, real HTTP on
//! loopback) with the Gateway API CRDs, and the real gateway binary started against it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use cedille_apiserver::{ApiServer, Options};
use serde_json::{Value, json};

use super::{eventually, free_port, get};

pub const CONTROLLER: &str = "cedille.io/gateway-controller";

pub fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/gateway-api-v1.6.1/crds")
}

/// The Gateway API v1.6.1 CRDs, optionally edited (to stand for an older release).
pub fn crds(edit: impl Fn(&mut Vec<Value>)) -> Vec<Value> {
    let mut c = cedille_apiserver::load_crds(&crds_dir()).expect("Gateway API CRDs");
    edit(&mut c);
    c
}

pub struct Cluster {
    pub api: ApiServer,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    pub async fn start(crds: Vec<Value>) -> Cluster {
        let api = ApiServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Options {
                crds,
                bookmark_interval: Duration::from_millis(500),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        Cluster {
            api,
            dir,
            kubeconfig,
        }
    }

    /// Creates or replaces each object of a YAML stream.
    pub fn apply_yaml(&self, yaml: &str) {
        use serde::Deserialize;
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let v = Value::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            self.api
                .apply(v.clone())
                .unwrap_or_else(|e| panic!("applying {v}: {}", e.message));
        }
    }

    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Value {
        self.api
            .get(api_version, kind, ns, name)
            .unwrap_or_else(|e| panic!("{kind} {ns}/{name}: {}", e.message))
    }

    pub fn route(&self, name: &str) -> Value {
        self.get("gateway.networking.k8s.io/v1", "HTTPRoute", "default", name)
    }

    pub fn lease_holder(&self) -> Option<String> {
        self.api
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                "default",
                "cedille-gateway",
            )
            .ok()
            .and_then(|l| {
                l.pointer("/spec/holderIdentity")?
                    .as_str()
                    .map(str::to_owned)
            })
            .filter(|h| !h.is_empty())
    }
}

/// True when `route` has our parent entry, Accepted, for its current generation.
pub fn route_accepted(route: &Value) -> bool {
    let generation = route
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    route
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p["controllerName"] == CONTROLLER)
        .flat_map(|p| p["conditions"].as_array().cloned().unwrap_or_default())
        .any(|c| {
            c["type"] == "Accepted"
                && c["status"] == "True"
                && c["observedGeneration"].as_i64() == generation
        })
}

/// A condition of a Gateway's listener.
pub fn listener_condition<'a>(gw: &'a Value, listener: &str, type_: &str) -> Option<&'a Value> {
    gw.pointer("/status/listeners")?
        .as_array()?
        .iter()
        .find(|l| l["name"] == listener)?["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The real gateway binary in Kubernetes mode.
pub struct Gateway {
    child: tokio::process::Child,
    pub admin: SocketAddr,
    pub name: String,
    pub log: PathBuf,
}

impl Gateway {
    /// Starts a replica named `name` with short Lease timings (2 s lease, 1.5 s renew
    /// deadline, 250 ms retry period), so failover tests are quick.
    pub async fn start(cluster: &Cluster, name: &str, extra: &[&str]) -> Gateway {
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = cluster.dir.path().join(format!("{name}.log"));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cedille-gateway"))
            .args([
                "--kubernetes",
                "--admin-addr",
                &admin.to_string(),
                "--pod-name",
                name,
                "--namespace",
                "default",
                "--drain-timeout",
                "1s",
                "--lease-duration",
                "2s",
                "--lease-renew-deadline",
                "1500ms",
                "--lease-retry-period",
                "250ms",
            ])
            .args(extra)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("RUST_LOG", "info,access=off")
            .env_remove("CEDILLE_CONFIG_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("starting cedille-gateway");
        Gateway {
            child,
            admin,
            name: name.to_owned(),
            log,
        }
    }

    pub async fn wait_ready(&self) {
        if eventually(Duration::from_secs(20), || async {
            get(self.admin, "/readyz")
                .await
                .is_ok_and(|(s, _)| s == 200)
        })
        .await
        .is_err()
        {
            panic!(
                "gateway {} not ready; log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    pub async fn ready(&self) -> bool {
        get(self.admin, "/readyz")
            .await
            .is_ok_and(|(s, _)| s == 200)
    }

    pub async fn status(&self) -> Value {
        let (_, body) = get(self.admin, "/status").await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    pub async fn metrics(&self) -> String {
        let (_, body) = get(self.admin, "/metrics").await.unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Status writes this replica made (`written` results).
    pub async fn writes(&self) -> u64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| {
                l.starts_with("cedille_gateway_status_writes_total{")
                    && l.contains("result=\"written\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// SIGKILL: the replica vanishes without releasing anything.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then waits for the process to exit.
    pub async fn terminate(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// GatewayClass `cedille`, Gateway `gw` with an HTTP listener on `port`, Service `echo`
/// and its EndpointSlice pointing at `backend`, as JSON objects.
pub fn base(port: u16, backend: SocketAddr) -> String {
    super::base(port, backend)
}

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}
