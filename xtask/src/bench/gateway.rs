//! `cargo xtask bench gateway`: cedille-gateway, nginx and HAProxy side by side in one run,
//! each with one worker pinned to CPU 0, in front of the same backend (an nginx returning a
//! small body) with the load generator, both on CPU 1. Rounds are interleaved and medians
//! reported, because on this machine requests per second swing from run to run while CPU
//! time per request is stable.
//!
//! Measured so far: CPU time per request at saturation over HTTP/1.1 keep-alive, and memory
//! per idle keep-alive connection. Needs `scripts/setup.sh --bench` (nginx, HAProxy, oha).

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{Args, group_usage, kill_group, median, pin_self, spawn_pinned, wait_port};
use crate::util::{cargo, root};

pub(super) const BACKEND: u16 = 18000;
pub(super) const SERVER_NAME: &str = "bench.local";

/// The ports one proxy listens on.
#[derive(Clone, Copy)]
struct Ports {
    /// HTTP/1.1 on cleartext.
    h1: u16,
    /// HTTP/2 with prior knowledge on cleartext.
    h2c: u16,
    /// HTTPS.
    tls: u16,
}

struct Proxy {
    name: &'static str,
    ports: Ports,
    child: Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        kill_group(&self.child);
        let _ = self.child.wait();
    }
}

pub(super) fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A CA and a server certificate for `SERVER_NAME` it signed (ECDSA P-256), written to
/// `work`; returns the CA's DER for the handshake client.
pub(super) fn make_certs(work: &Path) -> anyhow::Result<Vec<u8>> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![SERVER_NAME.to_owned()])?.signed_by(&key, &ca)?;
    write(&work.join("server.crt"), &cert.pem())?;
    write(&work.join("server.key"), &key.serialize_pem())?;
    write(
        &work.join("server.pem"),
        &format!("{}{}", cert.pem(), key.serialize_pem()),
    )?;
    Ok(ca.der().to_vec())
}

pub(super) fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

const NGINX_COMMON: &str =
    "daemon off; master_process on; worker_processes 1; error_log stderr crit;";

/// The backend every proxy forwards to: an nginx on CPU 1 answering a small body.
pub(super) fn start_backend(work: &Path) -> anyhow::Result<Child> {
    // Each nginx needs a pid file of its own: nginx deletes it on exit (pointing it at
    // /dev/null would delete /dev/null).
    let nginx_common = NGINX_COMMON;
    let pid_backend = format!("pid {};", work.join("backend.pid").display());
    let backend_conf = work.join("backend.conf");
    write(
        &backend_conf,
        &format!(
            "{nginx_common} {pid_backend} events {{ worker_connections 4096; }} http {{ access_log off; keepalive_requests 1000000; server {{ listen 127.0.0.1:{BACKEND} reuseport; location / {{ return 200 \"hello from the benchmark backend\\n\"; }} }} }}"
        ),
    )?;
    let backend = spawn_pinned(
        "1",
        "nginx",
        &["-c", path(&backend_conf)?, "-p", path(work)?],
        &[],
    )?;
    wait_port(BACKEND)?;
    Ok(backend)
}

/// The gateway's manifests in `dir`: Gateway `bench` with `listeners` (YAML list items),
/// the certificate `crt`/`key` as Secret `bench-tls`, and one route to the backend.
pub(super) fn gateway_config(
    dir: &Path,
    listeners: &str,
    crt: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let b64 = |p: &Path| -> anyhow::Result<String> {
        use base64::Engine;
        Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(p)?))
    };
    write(
        &dir.join("gw.yaml"),
        &format!(
            r#"{}---
apiVersion: v1
kind: Secret
metadata: {{name: bench-tls, namespace: default}}
type: kubernetes.io/tls
data: {{tls.crt: {crt_b64}, tls.key: {key_b64}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bench, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  rules: [{{backendRefs: [{{name: backend, port: 80}}]}}]
---
{}"#,
            crate::manifests::gateway("bench", listeners),
            crate::manifests::service("backend", ([127, 0, 0, 1], BACKEND).into()),
            crt_b64 = b64(crt)?,
            key_b64 = b64(key)?,
        ),
    )
}

/// The release gateway on CPU 0 with one worker thread, reading `dir`.
pub(super) fn spawn_gateway(dir: &Path) -> anyhow::Result<Child> {
    let bin = root().join("target/release/cedille-gateway");
    spawn_pinned(
        "0",
        path(&bin)?,
        &[
            "--config-dir",
            path(dir)?,
            "--admin-addr",
            "127.0.0.1:18090",
            "--max-connections",
            "65536",
        ],
        &[("TOKIO_WORKER_THREADS", "1"), ("RUST_LOG", "error")],
    )
}

fn start_all(work: &Path) -> anyhow::Result<(Child, Vec<Proxy>)> {
    let nginx_common = NGINX_COMMON;
    let pid_proxy = format!("pid {};", work.join("proxy.pid").display());
    let backend = start_backend(work)?;
    let (crt, key, pem) = (
        work.join("server.crt"),
        work.join("server.key"),
        work.join("server.pem"),
    );
    let nginx = Ports {
        h1: 18081,
        h2c: 18181,
        tls: 18481,
    };
    let nginx_conf = work.join("nginx-proxy.conf");
    write(
        &nginx_conf,
        &format!(
            "{nginx_common} {pid_proxy} worker_rlimit_nofile 20000; events {{ worker_connections 9000; }} \
             http {{ access_log off; keepalive_requests 1000000; http2_max_requests 1000000; \
             upstream b {{ server 127.0.0.1:{BACKEND}; keepalive 64; }} \
             server {{ listen 127.0.0.1:{h1}; listen 127.0.0.1:{h2c} http2; listen 127.0.0.1:{tls} ssl; \
             ssl_certificate {crt}; ssl_certificate_key {key}; ssl_protocols TLSv1.3; \
             location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}",
            h1 = nginx.h1,
            h2c = nginx.h2c,
            tls = nginx.tls,
            crt = crt.display(),
            key = key.display(),
        ),
    )?;
    let haproxy = Ports {
        h1: 18082,
        h2c: 18182,
        tls: 18482,
    };
    let haproxy_conf = work.join("haproxy.cfg");
    write(
        &haproxy_conf,
        &format!(
            "global\n  nbthread 1\n  maxconn 9000\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n\
             frontend f\n  bind 127.0.0.1:{h1}\n  bind 127.0.0.1:{h2c} proto h2\n  bind 127.0.0.1:{tls} ssl crt {pem} alpn http/1.1\n  default_backend b\n\
             backend b\n  server s 127.0.0.1:{BACKEND}\n",
            h1 = haproxy.h1,
            h2c = haproxy.h2c,
            tls = haproxy.tls,
            pem = pem.display(),
        ),
    )?;
    // HTTP/1.1 and h2c share the gateway's cleartext port (it detects the preface).
    let gateway = Ports {
        h1: 18080,
        h2c: 18080,
        tls: 18480,
    };
    let gw_dir = work.join("gateway");
    gateway_config(
        &gw_dir,
        &format!(
            "  - {{name: http, port: {h1}, protocol: HTTP}}\n  - name: https\n    port: {tls}\n    protocol: HTTPS\n    tls: {{certificateRefs: [{{name: bench-tls}}]}}",
            h1 = gateway.h1,
            tls = gateway.tls,
        ),
        &crt,
        &key,
    )?;
    let proxies = vec![
        Proxy {
            name: "cedille-gateway",
            ports: gateway,
            child: spawn_gateway(&gw_dir)?,
        },
        Proxy {
            name: "nginx",
            ports: nginx,
            child: spawn_pinned(
                "0",
                "nginx",
                &["-c", path(&nginx_conf)?, "-p", path(work)?],
                &[],
            )?,
        },
        Proxy {
            name: "haproxy",
            ports: haproxy,
            child: spawn_pinned("0", "haproxy", &["-f", path(&haproxy_conf)?], &[])?,
        },
    ];
    for p in &proxies {
        for port in [p.ports.h1, p.ports.h2c, p.ports.tls] {
            wait_port(port).with_context(|| p.name)?;
        }
    }
    Ok((backend, proxies))
}

/// What one load run reports.
struct Load {
    /// Requests answered with a 200.
    ok: u64,
    /// Latency percentiles in seconds (oha runs only).
    p50: f64,
    p99: f64,
}

/// One oha run on CPU 1 against `url`; `extra` selects the protocol and the rate.
fn oha(url: &str, seconds: u64, connections: usize, extra: &[&str]) -> anyhow::Result<Load> {
    let out = Command::new("taskset")
        .args(["-c", "1", "oha", "--no-tui", "--output-format", "json"])
        .args(["-z", &format!("{seconds}s"), "-c", &connections.to_string()])
        .args(extra)
        .arg(url)
        .output()
        .context("running oha (run scripts/setup.sh --bench)")?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("oha output")?;
    Ok(Load {
        ok: v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0),
        p50: v["latencyPercentiles"]["p50"].as_f64().unwrap_or(f64::NAN),
        p99: v["latencyPercentiles"]["p99"].as_f64().unwrap_or(f64::NAN),
    })
}

/// Full TLS 1.3 handshakes (X25519, no session resumption), each followed by one request on
/// a connection the server closes: `connections` clients in a loop for `seconds`. The
/// client runs on this process's CPU (pinned to CPU 1 by the caller).
fn handshakes(
    rt: &tokio::runtime::Runtime,
    config: &Arc<rustls::ClientConfig>,
    port: u16,
    seconds: u64,
    connections: usize,
) -> anyhow::Result<Load> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME)?;
    let ok = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let connector = connector.clone();
            let name = name.clone();
            tasks.spawn(async move {
                let mut ok = 0u64;
                let mut buf = Vec::with_capacity(1024);
                while tokio::time::Instant::now() < deadline {
                    let one = async {
                        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                        tcp.set_nodelay(true)?;
                        let mut tls = connector.connect(name.clone(), tcp).await?;
                        tls.write_all(
                            b"GET / HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n",
                        )
                        .await?;
                        buf.clear();
                        // A server may end with a TCP close instead of close_notify.
                        let _ = tls.read_to_end(&mut buf).await;
                        Ok::<_, std::io::Error>(buf.starts_with(b"HTTP/1.1 200"))
                    };
                    match tokio::time::timeout(Duration::from_secs(5), one).await {
                        Ok(Ok(true)) => ok += 1,
                        _ => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                ok
            });
        }
        let mut ok = 0;
        while let Some(n) = tasks.join_next().await {
            ok += n.unwrap_or(0);
        }
        ok
    });
    Ok(Load {
        ok,
        p50: f64::NAN,
        p99: f64::NAN,
    })
}

/// Resident memory per idle keep-alive connection, plaintext and TLS: `n` plaintext
/// connections with one request on each, then, with those still open, `n` TLS ones (full
/// handshake, one request): each figure is the growth its connections brought, divided
/// by them. Nothing is closed between the two, so the TLS connections cannot reuse memory
/// the plaintext ones freed (which would hide their cost).
fn idle_memory(
    rt: &tokio::runtime::Runtime,
    config: &Arc<rustls::ClientConfig>,
    pgid: u32,
    ports: &Ports,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // What ran before (the load rounds) closes first.
    std::thread::sleep(Duration::from_secs(1));
    let (_, before) = group_usage(pgid);
    let mut plain = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", ports.h1))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf)?;
        plain.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, mid) = group_usage(pgid);
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME)?;
    let tls = rt.block_on(async {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports.tls)).await?;
            let mut tls = connector.connect(name.clone(), tcp).await?;
            tls.write_all(b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n")
                .await?;
            let mut buf = [0u8; 512];
            let got = tls.read(&mut buf).await?;
            if !buf[..got].starts_with(b"HTTP/1.1 200") {
                bail!("no 200 on an idle TLS connection's request");
            }
            conns.push(tls);
        }
        Ok::<_, anyhow::Error>(conns)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let (_, after) = group_usage(pgid);
    drop((plain, tls));
    let per = |from: u64, to: u64| to.saturating_sub(from) as f64 / n as f64;
    Ok((per(before, mid), per(mid, after)))
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Http1,
    Http2,
    Https,
    Handshake,
    FixedRate,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Http1,
        Scenario::Http2,
        Scenario::Https,
        Scenario::Handshake,
        Scenario::FixedRate,
    ];

    fn title(self, args: &Args) -> String {
        match self {
            Scenario::Http1 => "HTTP/1.1 keep-alive at saturation".into(),
            Scenario::Http2 => "HTTP/2 (h2c, 8 streams per connection) at saturation".into(),
            Scenario::Https => "HTTPS (TLS 1.3, HTTP/1.1) keep-alive at saturation".into(),
            Scenario::Handshake => {
                "a new TLS connection per request (full TLS 1.3 handshake, X25519, ECDSA P-256)"
                    .into()
            }
            Scenario::FixedRate => format!(
                "HTTP/1.1 keep-alive at a fixed {} requests/s (latency corrected)",
                args.rate
            ),
        }
    }
}

/// One measurement: CPU the proxy spent per 200 response, the 200s per second, and the
/// latency percentiles when the load generator reports them.
struct Sample {
    cpu_us: f64,
    rps: f64,
    p50: f64,
    p99: f64,
}

fn measure(
    s: Scenario,
    p: &Proxy,
    args: &Args,
    rt: &tokio::runtime::Runtime,
    tls_client: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<Sample> {
    let pgid = p.child.id();
    let (c0, _) = group_usage(pgid);
    let t0 = Instant::now();
    let (secs, conns) = (args.seconds, args.connections.unwrap_or(32));
    let h1 = format!("http://127.0.0.1:{}/", p.ports.h1);
    let load = match s {
        Scenario::Http1 => oha(&h1, secs, conns, &[])?,
        Scenario::Http2 => {
            let streams = 8;
            let c = conns.div_ceil(streams).max(1);
            let url = format!("http://127.0.0.1:{}/", p.ports.h2c);
            oha(&url, secs, c, &["--http2", "-p", &streams.to_string()])?
        }
        Scenario::Https => {
            let url = format!("https://127.0.0.1:{}/", p.ports.tls);
            oha(&url, secs, conns, &["--insecure"])?
        }
        Scenario::Handshake => handshakes(rt, tls_client, p.ports.tls, secs, conns)?,
        Scenario::FixedRate => oha(
            &h1,
            secs,
            conns,
            &["-q", &args.rate.to_string(), "--latency-correction"],
        )?,
    };
    let elapsed = t0.elapsed().as_secs_f64();
    let (c1, _) = group_usage(pgid);
    if load.ok == 0 {
        bail!("{}: {} answered no request with 200", s.title(args), p.name);
    }
    Ok(Sample {
        cpu_us: (c1 - c0) / load.ok as f64 * 1e6,
        rps: load.ok as f64 / elapsed,
        p50: load.p50,
        p99: load.p99,
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "cedille-gateway"]).run()?;
    let work: PathBuf = root().join("target/bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let ca = make_certs(&work)?;
    let tls_client = Arc::new(super::full_handshake_client(ca, b"http/1.1")?);
    // The handshake client runs in this process: on CPU 1 with the backend and oha.
    pin_self(1)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut backend, proxies) = start_all(&work)?;
    let n = proxies.len();
    let mut samples: Vec<Vec<Vec<Sample>>> = Scenario::ALL
        .iter()
        .map(|_| (0..n).map(|_| Vec::new()).collect())
        .collect();
    for round in 0..args.rounds {
        for (si, s) in Scenario::ALL.iter().enumerate() {
            // Interleave, and rotate who goes first, so drift affects everyone alike.
            for k in 0..n {
                let i = (k + round) % n;
                let p = &proxies[i];
                let m = measure(*s, p, args, &rt, &tls_client)?;
                eprintln!(
                    "bench: round {} {:<60} {:<16} {:>9.0}/s {:>8.2} us CPU each",
                    round + 1,
                    s.title(args),
                    p.name,
                    m.rps,
                    m.cpu_us
                );
                samples[si][i].push(m);
            }
        }
    }
    let mut mem = Vec::new();
    for p in &proxies {
        mem.push(idle_memory(
            &rt,
            &tls_client,
            p.child.id(),
            &p.ports,
            args.idle,
        )?);
    }
    let nginx = proxies
        .iter()
        .position(|p| p.name == "nginx")
        .expect("nginx is benchmarked");
    println!();
    println!(
        "One worker on CPU 0 per proxy; backend and load generators on CPU 1; {} connections; medians of {} rounds of {} s",
        args.connections.unwrap_or(32),
        args.rounds,
        args.seconds
    );
    for (si, s) in Scenario::ALL.iter().enumerate() {
        let med = |i: usize, f: fn(&Sample) -> f64| median(samples[si][i].iter().map(f).collect());
        println!();
        println!("{}", s.title(args));
        if *s == Scenario::FixedRate {
            println!(
                "{:<16} {:>10} {:>9} {:>10} {:>9} {:>12} {:>9}",
                "proxy", "p50 ms", "vs nginx", "p99 ms", "vs nginx", "CPU us/req", "vs nginx"
            );
            for (i, p) in proxies.iter().enumerate() {
                let (p50, p99, cpu) = (med(i, |m| m.p50), med(i, |m| m.p99), med(i, |m| m.cpu_us));
                let (n50, n99, ncpu) = (
                    med(nginx, |m| m.p50),
                    med(nginx, |m| m.p99),
                    med(nginx, |m| m.cpu_us),
                );
                println!(
                    "{:<16} {:>10.3} {:>9.2} {:>10.3} {:>9.2} {:>12.2} {:>9.2}",
                    p.name,
                    p50 * 1e3,
                    p50 / n50,
                    p99 * 1e3,
                    p99 / n99,
                    cpu,
                    cpu / ncpu
                );
            }
            continue;
        }
        let per = if *s == Scenario::Handshake {
            "handshakes/CPU s"
        } else {
            "req/CPU s"
        };
        println!(
            "{:<16} {:>12} {:>9} {:>16} {:>9} {:>18}",
            "proxy", "CPU us each", "vs nginx", per, "vs nginx", "per s (unstable)"
        );
        for (i, p) in proxies.iter().enumerate() {
            let cpu = med(i, |m| m.cpu_us);
            let ncpu = med(nginx, |m| m.cpu_us);
            println!(
                "{:<16} {:>12.2} {:>9.2} {:>16.0} {:>9.2} {:>18.0}",
                p.name,
                cpu,
                cpu / ncpu,
                1e6 / cpu,
                ncpu / cpu,
                med(i, |m| m.rps),
            );
        }
    }
    println!();
    println!(
        "Memory per idle HTTP/1.1 keep-alive connection ({} connections of each)",
        args.idle
    );
    println!("proxy             plaintext        TLS");
    for (i, p) in proxies.iter().enumerate() {
        println!("{:<16} {:>10.0} B {:>8.0} B", p.name, mem[i].0, mem[i].1);
    }
    // nginx allocates connection structures up front, so its resident memory barely moves:
    // the idle-connection figures are compared with the targets instead of a ratio.
    println!();
    println!(
        "targets: CPU per request no more than nginx's (ratio <= 1.00); handshakes per CPU second at least 1.5x nginx's; \
         p99 at a fixed rate no higher than nginx's; at most 4096 bytes per idle plaintext connection, 16384 per idle TLS one"
    );
    drop(proxies);
    kill_group(&backend);
    let _ = backend.wait();
    Ok(())
}
