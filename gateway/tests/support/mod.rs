//! Runs the real gateway in-process on a temporary manifest directory, in front of real echo
//! backends, and talks to it with real HTTP clients over real sockets.
#![allow(dead_code)]

pub mod kube;
pub mod tls;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use cedille_echo::{Echo, EchoConfig};
use cedille_gateway::{
    app::{self, Running, Settings},
    proxy::conn::Limits,
};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub gateway: Option<Running>,
    pub echo: Arc<Echo>,
    pub echo_addr: SocketAddr,
    pub port: u16,
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The GatewayClass, a Gateway `gw` with an HTTP listener on `port`, and Service `echo`
/// (port 80) whose EndpointSlice points at `echo`.
pub fn base(port: u16, echo: SocketAddr) -> String {
    format!(
        "{}---\n{}",
        gateway(
            &format!("  - {{name: http, port: {port}, protocol: HTTP}}\n"),
            ""
        ),
        service("echo", echo)
    )
}

/// The GatewayClass and Gateway `gw` on 127.0.0.1 with `listeners` (YAML list items under
/// `spec.listeners`, each line indented by two spaces) and `spec_extra` (more `spec` fields,
/// indented by two spaces).
pub fn gateway(listeners: &str, spec_extra: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: cedille}}
spec: {{controllerName: cedille.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: cedille
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
{listeners}{spec_extra}"#
    )
}

/// Service `name` (port 80) and an EndpointSlice pointing at `backend`.
pub fn service(name: &str, backend: SocketAddr) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {}}}]
endpoints: [{{addresses: ["{}"]}}]
"#,
        backend.port(),
        backend.ip()
    )
}

/// An HTTPRoute `name` on Gateway `gw` sending `prefix` to Service `echo`.
pub fn route(name: &str, prefix: &str) -> String {
    route_to(name, prefix, "echo")
}

/// An HTTPRoute `name` on Gateway `gw` sending `prefix` to Service `backend` (port 80). The
/// text ends with the rule's `backendRefs` line, so more fields of that rule may follow.
pub fn route_to(name: &str, prefix: &str, backend: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backendRefs: [{{name: {backend}, port: 80}}]
"#
    )
}

impl Env {
    pub async fn start(files: &[(&str, &str)], tweak: impl FnOnce(&mut Settings)) -> Env {
        let echo = Arc::new(Echo::new(EchoConfig {
            pod: "echo-0".into(),
            namespace: "default".into(),
            service: "echo".into(),
        }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = l.local_addr().unwrap();
        tokio::spawn(cedille_echo::serve(
            l,
            echo.clone(),
            None,
            std::future::pending(),
        ));
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut env = Env {
            dir,
            gateway: None,
            echo,
            echo_addr,
            port,
        };
        env.write("base.yaml", &base(port, echo_addr));
        for (name, text) in files {
            env.write(name, text);
        }
        let mut settings = Settings {
            mode: cedille_gateway::app::Mode::Dir(env.dir.path().to_owned()),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            drain_timeout: Duration::from_secs(5),
            shutdown_delay: Duration::ZERO,
            max_connections: 1000,
            limits: Limits::default(),
            rescan_interval: Duration::from_millis(200),
            http3: true,
        };
        tweak(&mut settings);
        env.gateway = Some(app::start(settings).await.unwrap());
        env.wait_ready().await;
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a manifest file atomically (as editors and kubectl-like tools do).
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }

    pub fn admin(&self) -> SocketAddr {
        self.gateway.as_ref().unwrap().admin_addr
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn wait_ready(&self) {
        eventually(Duration::from_secs(10), || async {
            get(self.admin(), "/readyz")
                .await
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        })
        .await
        .expect("gateway ready");
    }

    pub async fn status(&self) -> Value {
        let (_, body) = get(self.admin(), "/status").await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    pub async fn metrics(&self) -> String {
        let (_, body) = get(self.admin(), "/metrics").await.unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }
}

/// Polls `f` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> Result<(), ()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(())
}

/// One HTTP/1.1 GET on a new connection: status and body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, Bytes), String> {
    let mut conn = Conn::open(addr).await?;
    let (status, _, body) = conn.request("GET", path, &[], Bytes::new()).await?;
    Ok((status, body))
}

/// A kept-alive HTTP/1.1 client connection.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Conn { sender })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(u16, http::HeaderMap, Bytes), String> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "example.com");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).unwrap();
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, headers, body))
    }
}

pub fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}
