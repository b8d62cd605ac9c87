//! `cargo xtask dashboards`: every query of the Grafana dashboards the chart ships is
//! checked against the real binaries.
//!
//! - Every metric name in every expression must be one the binaries export (from a real
//!   `/metrics` scrape of each).
//! - A real Prometheus (Debian's 2.42, which negotiates OpenMetrics) scrapes the gateway
//!   (Kubernetes mode against the test API server, with HTTP, HTTP/2 and HTTPS traffic,
//!   404s, a dead backend with retries, an invalid object) and the agent (two enrolled pods
//!   on a test node with traffic and a refused connection), and each expression must return
//!   data.
//!
//! Needs root (the agent's eBPF programs and the test node).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use cedille_apiserver::ApiServer;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::{
    bench::agent::{ADMIN as AGENT_ADMIN, Agent, BpfStats, ECHO_PORT, Node, SERVER_IP},
    ebpf,
    util::{cargo, is_root, root},
};

/// Every `expr` of a dashboard, with the panel it belongs to.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((p["title"].as_str().unwrap_or("").to_owned(), e.to_owned()));
            }
        }
    }
    out
}

/// Metric names an expression reads (`cedille_gateway_...`, `cedille_agent_...`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(off) = expr[i..].find("cedille_") {
        let start = i + off;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.insert(expr[start..end].to_owned());
        i = end;
    }
    out
}

/// Whether `name` (a sample name: with `_total`, `_bucket`, ...) is in a scrape.
fn exported(name: &str, scrape: &str) -> bool {
    scrape.lines().any(|l| {
        !l.starts_with('#')
            && l.split(['{', ' '])
                .next()
                .is_some_and(|sample| sample == name)
    })
}

pub fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!("the dashboard check runs the agent's eBPF programs on a test node: run it as root");
    }
    let obj = ebpf::build()?;
    cargo(&["build", "-p", "cedille-agent", "-p", "cedille-gateway"])
        .env(ebpf::OBJECT_ENV, &obj)
        .run()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(check())
}

async fn check() -> anyhow::Result<()> {
    let dir = root().join("helm/cedille/dashboards");
    let gateway_dash: Value = serde_json::from_slice(&std::fs::read(dir.join("gateway.json"))?)?;
    let agent_dash: Value = serde_json::from_slice(&std::fs::read(dir.join("agent.json"))?)?;
    let work = root().join("target/dashboards");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    // The gateway, with traffic of every kind the dashboard shows.
    let gw = Gateway::start(&work).await?;
    // The agent, on a test node.
    let bin = root().join("target/debug");
    let probe = bin.join("cedille-probe");
    let _stats = BpfStats::enable()?;
    let node = tokio::task::block_in_place(|| Node::new(&probe))?;
    let _agent = tokio::task::block_in_place(|| {
        Agent::start(
            &bin.join("cedille-agent"),
            &node,
            false,
            true,
            &work.join("agent.log"),
        )
    })?;

    let prom = Prometheus::start(
        &work,
        &[
            ("cedille-gateway", gw.admin),
            ("cedille-agent", AGENT_ADMIN.parse()?),
        ],
    )
    .await?;
    // Traffic while Prometheus scrapes every second, so every rate has samples.
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        gw.traffic().await?;
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            node.load(
                &probe,
                &[
                    "rr",
                    &format!("{SERVER_IP}:{ECHO_PORT}"),
                    "--rate",
                    "200",
                    "--seconds",
                    "1",
                    "--connections",
                    "2",
                ],
                1,
            )?;
            // A connection to a closed port: the agent's onward connect fails (HBONE 503).
            let _ = node.load(&probe, &["connect", &format!("{SERVER_IP}:1"), "500"], 1);
            // One the policy denies (HBONE 401).
            let _ = node.load(&probe, &["connect", &format!("{SERVER_IP}:7002"), "500"], 1);
            // A client outside the mesh that opens the server's HBONE port and says
            // nothing: a failed mutual TLS handshake.
            let _ = node.load_outside_mesh(
                &probe,
                &["connect", &format!("{SERVER_IP}:15008"), "300"],
                1,
            );
            Ok(())
        })?;
    }

    let mut failures = Vec::new();
    for (binary, dash, admin) in [
        ("cedille-gateway", &gateway_dash, gw.admin.to_string()),
        ("cedille-agent", &agent_dash, AGENT_ADMIN.to_owned()),
    ] {
        let scrape = cedille_harness::http_get(&admin, "/metrics")
            .with_context(|| format!("scraping {binary}"))?;
        let exprs = expressions(dash);
        if exprs.is_empty() {
            bail!("{binary}: the dashboard has no queries");
        }
        for (panel, expr) in &exprs {
            for name in metric_names(expr) {
                if !exported(&name, &scrape) {
                    failures.push(format!("{binary} / {panel}: {name} is not in /metrics"));
                }
            }
            let q = expr.replace("$__rate_interval", "15s");
            match prom.query(&q).await {
                Ok(0) => failures.push(format!("{binary} / {panel}: no data for {q}")),
                Ok(n) => println!("dashboards: {binary} / {panel}: {n} series"),
                Err(e) => failures.push(format!("{binary} / {panel}: {q}: {e:#}")),
            }
        }
    }
    if !failures.is_empty() {
        bail!("dashboard queries:\n  {}", failures.join("\n  "));
    }
    println!("dashboards: every query names exported metrics and returns data from Prometheus");
    Ok(())
}

struct Prometheus {
    child: std::process::Child,
    base: String,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(work: &Path, targets: &[(&str, SocketAddr)]) -> anyhow::Result<Prometheus> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let jobs: Vec<String> = targets
            .iter()
            .map(|(job, addr)| {
                format!("  - job_name: {job}\n    static_configs: [{{targets: [\"{addr}\"]}}]\n")
            })
            .collect();
        let config = work.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 900ms}}\nscrape_configs:\n{}",
                jobs.join("")
            ),
        )?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("prometheus.log"))?)
            .spawn()
            .context("starting prometheus (scripts/setup.sh installs it)")?;
        let p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if p.query("up == 1").await.is_ok_and(|n| n == targets.len()) {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!(
                    "Prometheus did not scrape both targets; see {}",
                    work.join("prometheus.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The number of series an instant query returns.
    async fn query(&self, q: &str) -> anyhow::Result<usize> {
        let body: String = url_encode(q);
        let req = http::Request::post(format!("{}/api/v1/query", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!("query={body}"))))?;
        let resp = self.http.request(req).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes)?;
        if v["status"] != "success" {
            bail!("{}", v["error"].as_str().unwrap_or("query failed"));
        }
        Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The gateway in Kubernetes mode against the test API server: HTTP and HTTPS listeners,
/// an echo backend, a dead backend with retries, an object it rejects.
struct Gateway {
    _api: ApiServer,
    child: tokio::process::Child,
    admin: SocketAddr,
    http: SocketAddr,
    https: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Gateway {
    async fn start(work: &Path) -> anyhow::Result<Gateway> {
        let api = crate::cluster::api_server(work).await?;
        let kubeconfig = work.join("kubeconfig");
        let backend = crate::cluster::echo().await?;
        let free = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (http, https, dead) = (free()?, free()?, free()?);
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["dash.example.com".to_owned()])?
            .self_signed(&key)?;
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        let slice = |name: &str, port: u16| {
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": port}],
                "endpoints": [{"addresses": ["127.0.0.1"]}]})
        };
        let service = |name: &str| {
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                "spec": {"ports": [{"name": "http", "port": 80}]}})
        };
        for o in [
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "cedille"},
                "spec": {"controllerName": "cedille.io/gateway-controller"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "dash", "namespace": "default"},
                "data": {"tls.crt": b64(cert.pem()), "tls.key": b64(key.serialize_pem())}}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": "default"},
                "spec": {"gatewayClassName": "cedille", "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
                    "listeners": [{"name": "http", "port": http, "protocol": "HTTP"},
                        {"name": "https", "port": https, "protocol": "HTTPS", "hostname": "dash.example.com",
                         "tls": {"certificateRefs": [{"name": "dash"}]}}]}}),
            service("echo"),
            slice("echo", backend.port()),
            service("dead"),
            slice("dead", dead),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "app", "namespace": "default"},
                "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/app"}}], "backendRefs": [{"name": "echo", "port": 80}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/dead"}}], "backendRefs": [{"name": "dead", "port": 80}],
                     "retry": {"attempts": 2, "backoff": "1ms"}}]}}),
            // Accepted by the API server, rejected by the gateway (no leading "/").
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "broken", "namespace": "default"},
                "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "nope"}}]}]}}),
        ] {
            api.apply(o).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        }
        let admin: SocketAddr = ([127, 0, 0, 1], free()?).into();
        let child = tokio::process::Command::new(root().join("target/debug/cedille-gateway"))
            .args([
                "--kubernetes",
                "--namespace",
                "default",
                "--pod-name",
                "dash",
                "--admin-addr",
                &admin.to_string(),
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("CEDILLE_CONFIG_DIR")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("gateway.log"))?)
            .kill_on_drop(true)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while cedille_harness::http_get(&admin.to_string(), "/readyz").is_none() {
            if Instant::now() > deadline {
                bail!(
                    "the gateway is not ready; see {}",
                    work.join("gateway.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert.der().clone())?;
            roots
        })
        .with_no_client_auth();
        Ok(Gateway {
            _api: api,
            child,
            admin,
            http: ([127, 0, 0, 1], http).into(),
            https: ([127, 0, 0, 1], https).into(),
            tls: Arc::new(tls),
        })
    }

    /// One round of traffic: 2xx over HTTP/1.1, HTTP/2 and HTTPS, a 404, a 503 from the
    /// dead backend (retried), a failed TLS handshake.
    async fn traffic(&self) -> anyhow::Result<()> {
        use hyper_util::rt::TokioIo;
        let get = |path: &'static str| {
            http::Request::get(path)
                .header("host", "dash.example.com")
                .body(Full::new(Bytes::from_static(b"ping")))
                .expect("request")
        };
        // HTTP/1.1.
        let tcp = tokio::net::TcpStream::connect(self.http).await?;
        let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        for path in ["/app/x", "/nothing", "/dead"] {
            h1.ready().await?;
            let r = h1.send_request(get(path)).await?;
            r.into_body().collect().await?;
        }
        // HTTP/2, prior knowledge.
        let tcp = tokio::net::TcpStream::connect(self.http).await?;
        let (mut h2, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tcp),
        )
        .await?;
        tokio::spawn(conn);
        h2.ready().await?;
        let r = h2.send_request(get("/app/h2")).await?;
        r.into_body().collect().await?;
        // HTTPS.
        let tcp = tokio::net::TcpStream::connect(self.https).await?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(
                rustls_pki_types::ServerName::try_from("dash.example.com")?,
                tcp,
            )
            .await?;
        let (mut h1s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        h1s.ready().await?;
        let r = h1s.send_request(get("/app/tls")).await?;
        r.into_body().collect().await?;
        // A handshake that fails: not TLS at all.
        use tokio::io::AsyncWriteExt;
        let mut raw = tokio::net::TcpStream::connect(self.https).await?;
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await?;
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::io::AsyncReadExt::read(&mut raw, &mut [0u8; 64]),
        )
        .await;
        Ok(())
    }
}
