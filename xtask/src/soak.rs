//! `cargo xtask soak`: the gateway (the real binary, standalone mode) under a steady load
//! over HTTP/1.1, HTTPS (HTTP/1.1) and HTTP/2 over TLS while its manifests change: an
//! HTTPRoute rewritten `--route-changes` times and the listener's certificate Secret
//! rotated `--rotations` times. Every request must succeed and every TLS handshake must
//! complete; the last route version and the last certificate must be seen by the clients.
//! Clients reconnect every few requests, so handshakes go on throughout.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use clap::Args as ClapArgs;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, KeyPair};

use crate::{
    manifests::{free_port, gateway, service},
    util::{cargo, root},
};

#[derive(ClapArgs)]
pub struct Args {
    /// How many times the HTTPRoute is rewritten.
    #[arg(long, default_value_t = 100)]
    pub route_changes: u32,
    /// How many times the listener's certificate is replaced (spread over the changes).
    #[arg(long, default_value_t = 50)]
    pub rotations: u32,
    /// Time between two changes.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Client tasks per protocol.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            route_changes: 100,
            rotations: 50,
            interval_ms: 100,
            clients: 4,
        }
    }
}

const HOST: &str = "soak.example.com";
/// Requests per client connection before it reconnects (and handshakes again).
const PER_CONNECTION: u32 = 20;

pub fn run(args: Args) -> anyhow::Result<()> {
    cargo(&["build", "-p", "cedille-gateway"]).run()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(soak(args))
}

/// The CA clients trust, which signs each rotated listener certificate.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "soak CA");
        Ok(Self {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key)?,
        })
    }

    /// A `kubernetes.io/tls` Secret with a new key and certificate for [`HOST`], and the
    /// certificate's DER.
    fn secret(&self, n: u32) -> anyhow::Result<(String, Vec<u8>)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![HOST.to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("soak {n}"));
        let cert = params.signed_by(&key, &self.issuer)?;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let secret = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: soak-tls, namespace: default}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            b64(&cert.pem()),
            b64(&key.serialize_pem())
        );
        Ok((secret, cert.der().to_vec()))
    }
}

fn base(http: u16, https: u16, echo: SocketAddr) -> String {
    let listeners = format!(
        "  - {{name: http, port: {http}, protocol: HTTP}}\n  - name: https\n    port: {https}\n    protocol: HTTPS\n    tls: {{certificateRefs: [{{name: soak-tls}}]}}"
    );
    format!(
        "{}---\n{}",
        gateway("gw", &listeners),
        service("echo", echo)
    )
}

/// The route, version `v`: every response carries `x-soak-version: v`; odd versions also
/// add a request header, so the rule's shape changes too.
fn route(v: u32) -> String {
    let extra = if v % 2 == 1 {
        "\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {add: [{name: x-odd, value: \"1\"}]}"
    } else {
        ""
    };
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: soak, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{HOST}]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{set: [{{name: x-soak-version, value: "{v}"}}]}}{extra}
    backendRefs: [{{name: echo, port: 80}}]
"#
    )
}

/// Writes a file as editors and controllers do: a temporary file renamed into place.
fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

#[derive(Default)]
struct Tally {
    requests: [AtomicU64; 3],
    failures: AtomicU64,
    handshakes: AtomicU64,
    handshake_failures: AtomicU64,
    newest_version: AtomicU64,
    certs_seen: Mutex<HashSet<Vec<u8>>>,
    first_errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.count(&self.failures, what);
    }

    fn handshake_failed(&self, what: String) {
        self.count(&self.handshake_failures, what);
    }

    /// Counts a failure, keeping the first few for the report.
    fn count(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut e = self.first_errors.lock().unwrap();
        if e.len() < 10 {
            e.push(what);
        }
    }

    fn response(&self, proto: usize, resp: &http::Response<hyper::body::Incoming>) {
        self.requests[proto].fetch_add(1, Ordering::Relaxed);
        let v = resp
            .headers()
            .get("x-soak-version")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        self.newest_version.fetch_max(v, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy)]
enum Proto {
    Http1,
    Https1,
    Https2,
}

const PROTOS: [(Proto, &str); 3] = [
    (Proto::Http1, "HTTP/1.1"),
    (Proto::Https1, "HTTPS HTTP/1.1"),
    (Proto::Https2, "HTTPS HTTP/2"),
];

fn tls_client(ca_der: &[u8], alpn: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(ca_der.to_vec()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection a full handshake, so that each sees the current certificate.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

async fn request<B>(send: &mut B, tally: &Tally, proto: usize, uri: &str) -> Result<(), String>
where
    B: Sender,
{
    let req = http::Request::get(uri)
        .header("host", HOST)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send(req).await.map_err(|e| format!("request: {e}"))?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    tally.response(proto, &resp);
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(())
}

/// HTTP/1 and HTTP/2 client halves behind one call.
trait Sender {
    async fn send(
        &mut self,
        req: http::Request<Empty<Bytes>>,
    ) -> hyper::Result<http::Response<hyper::body::Incoming>>;
}

impl Sender for hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    async fn send(
        &mut self,
        req: http::Request<Empty<Bytes>>,
    ) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        self.ready().await?;
        self.send_request(req).await
    }
}

impl Sender for hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    async fn send(
        &mut self,
        req: http::Request<Empty<Bytes>>,
    ) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        self.ready().await?;
        self.send_request(req).await
    }
}

/// One client: connections of [`PER_CONNECTION`] requests each until `stop`.
async fn client(
    proto: Proto,
    index: usize,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let name = rustls_pki_types::ServerName::try_from(HOST).expect("a DNS name");
    while !stop.load(Ordering::Relaxed) {
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) => {
                tally.handshake_failed(format!("connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let p = index;
        let one = async {
            match (proto, &tls) {
                (Proto::Http1, _) => {
                    let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                        .await
                        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
                    tokio::spawn(c);
                    for _ in 0..PER_CONNECTION {
                        request(&mut s, &tally, p, "/").await?;
                    }
                    Ok(())
                }
                (_, Some(tls)) => {
                    let conn = tokio_rustls::TlsConnector::from(tls.clone())
                        .connect(name.clone(), tcp)
                        .await;
                    let stream = match conn {
                        Ok(s) => s,
                        Err(e) => {
                            tally.handshake_failed(format!("TLS handshake: {e}"));
                            return Ok(());
                        }
                    };
                    tally.handshakes.fetch_add(1, Ordering::Relaxed);
                    if let Some(leaf) = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                    {
                        tally.certs_seen.lock().unwrap().insert(leaf.to_vec());
                    }
                    let io = TokioIo::new(stream);
                    if matches!(proto, Proto::Https2) {
                        let (mut s, c) =
                            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                                .await
                                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
                        tokio::spawn(c);
                        for _ in 0..PER_CONNECTION {
                            request(&mut s, &tally, p, "https://soak.example.com/").await?;
                        }
                    } else {
                        let (mut s, c) = hyper::client::conn::http1::handshake(io)
                            .await
                            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
                        tokio::spawn(c);
                        for _ in 0..PER_CONNECTION {
                            request(&mut s, &tally, p, "/").await?;
                        }
                    }
                    Ok(())
                }
                (_, None) => Err("no TLS client".to_owned()),
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), one).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tally.fail(e),
            Err(_) => tally.fail("a connection's requests took over 10 s".into()),
        }
    }
}

async fn soak(args: Args) -> anyhow::Result<()> {
    let work: PathBuf = root().join("target/soak");
    let _ = std::fs::remove_dir_all(&work);
    let config = work.join("config");
    std::fs::create_dir_all(&config)?;

    let echo = Arc::new(cedille_echo::Echo::new(cedille_echo::EchoConfig {
        pod: "echo-0".into(),
        namespace: "default".into(),
        service: "echo".into(),
    }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = l.local_addr()?;
    tokio::spawn(cedille_echo::serve(l, echo, None, std::future::pending()));

    let (http, https, admin) = (free_port()?, free_port()?, free_port()?);
    let ca = Ca::new()?;
    let (secret, mut last_cert) = ca.secret(0)?;
    write(&config, "base.yaml", &base(http, https, echo_addr))?;
    write(&config, "secret.yaml", &secret)?;
    write(&config, "route.yaml", &route(0))?;

    let bin = root().join("target/debug/cedille-gateway");
    let admin_addr: SocketAddr = ([127, 0, 0, 1], admin).into();
    let log = work.join("gateway.log");
    let mut child = tokio::process::Command::new(&bin)
        .arg("--config-dir")
        .arg(&config)
        .args([
            "--admin-addr",
            &admin_addr.to_string(),
            "--drain-timeout",
            "2s",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let ready = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = tokio::net::TcpStream::connect(("127.0.0.1", https))
            .await
            .is_ok()
            && tokio::net::TcpStream::connect(("127.0.0.1", http))
                .await
                .is_ok();
        if ok {
            break;
        }
        if Instant::now() > ready {
            bail!(
                "the gateway did not open its listeners; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let h1 = tls_client(ca.issuer.der(), b"http/1.1")?;
    let h2 = tls_client(ca.issuer.der(), b"h2")?;
    let mut clients = Vec::new();
    for (i, (proto, _)) in PROTOS.iter().enumerate() {
        for _ in 0..args.clients {
            let (addr, tls) = match proto {
                Proto::Http1 => (SocketAddr::from(([127, 0, 0, 1], http)), None),
                Proto::Https1 => (SocketAddr::from(([127, 0, 0, 1], https)), Some(h1.clone())),
                Proto::Https2 => (SocketAddr::from(([127, 0, 0, 1], https)), Some(h2.clone())),
            };
            clients.push(tokio::spawn(client(
                *proto,
                i,
                addr,
                tls,
                tally.clone(),
                stop.clone(),
            )));
        }
    }

    // The changes: a route version every interval, a rotation every few of them.
    let started = Instant::now();
    let every = (args.route_changes / args.rotations.max(1)).max(1);
    let mut rotated = 0;
    for v in 1..=args.route_changes {
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        write(&config, "route.yaml", &route(v))?;
        if rotated < args.rotations && v % every == 0 {
            rotated += 1;
            let (secret, der) = ca.secret(rotated)?;
            write(&config, "secret.yaml", &secret)?;
            last_cert = der;
        }
    }
    while rotated < args.rotations {
        rotated += 1;
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        let (secret, der) = ca.secret(rotated)?;
        write(&config, "secret.yaml", &secret)?;
        last_cert = der;
    }
    // The last of each must reach the clients.
    let settle = Instant::now() + Duration::from_secs(10);
    let seen_all = loop {
        let version = tally.newest_version.load(Ordering::Relaxed);
        let cert = tally.certs_seen.lock().unwrap().contains(&last_cert);
        if version == u64::from(args.route_changes) && cert {
            break true;
        }
        if Instant::now() > settle {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;

    let requests: Vec<u64> = tally
        .requests
        .iter()
        .map(|r| r.load(Ordering::Relaxed))
        .collect();
    let failures = tally.failures.load(Ordering::Relaxed);
    let handshakes = tally.handshakes.load(Ordering::Relaxed);
    let handshake_failures = tally.handshake_failures.load(Ordering::Relaxed);
    let certs = tally.certs_seen.lock().unwrap().len();
    eprintln!(
        "soak: {} route changes and {rotated} certificate rotations in {:.1} s",
        args.route_changes,
        elapsed.as_secs_f64()
    );
    for ((_, name), n) in PROTOS.iter().zip(&requests) {
        eprintln!("soak:   {name}: {n} requests");
    }
    eprintln!(
        "soak:   {failures} failed requests; {handshakes} TLS handshakes, {handshake_failures} failed; {certs} distinct certificates seen; newest route version seen {}",
        tally.newest_version.load(Ordering::Relaxed)
    );
    for e in tally.first_errors.lock().unwrap().iter() {
        eprintln!("soak:   error: {e}");
    }
    if failures > 0 || handshake_failures > 0 {
        bail!(
            "soak: {failures} failed requests and {handshake_failures} failed handshakes (gateway log: {})",
            log.display()
        );
    }
    if requests.contains(&0) {
        bail!("soak: a protocol carried no request");
    }
    if !seen_all {
        bail!(
            "soak: the last route version or the last certificate never reached the clients (gateway log: {})",
            log.display()
        );
    }
    Ok(())
}
