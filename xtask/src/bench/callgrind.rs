//! `cargo xtask bench callgrind`: instructions per request, counted by valgrind's callgrind
//! (exact, whatever else the machine does), for cedille-gateway and nginx on the same
//! request: HTTP/1.1 keep-alive GETs on one connection, proxied to the same nginx backend.
//! Each proxy runs under callgrind with one worker; counters are zeroed after a warm-up,
//! `--requests` requests are sent, and the dump's total divided by them.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::kill_group;
use crate::{
    manifests::{gateway, service},
    util::{cargo, root},
};

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: default}
spec:
  parentRefs: [{name: bench}]
  rules: [{backendRefs: [{name: backend, port: 80}]}]
";

const BACKEND: u16 = 18600;
const GATEWAY: u16 = 18601;
const NGINX: u16 = 18602;

fn wait_port(port: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on port {port}")
}

/// `n` GETs on one kept-alive connection; each answer read whole (Content-Length).
fn requests(port: u16, n: usize) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = vec![0u8; 8192];
    for _ in 0..n {
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n")?;
        let mut got = Vec::new();
        loop {
            let k = s.read(&mut buf)?;
            if k == 0 {
                bail!("the proxy closed the connection");
            }
            got.extend_from_slice(&buf[..k]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    bail!("unexpected answer: {head}");
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .context("no content-length")?;
                if got.len() >= end + 4 + len {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// The total instruction count of the newest callgrind dump in `work` for `prefix`.
fn dumped_instructions(work: &Path, prefix: &str) -> anyhow::Result<u64> {
    let mut newest = None;
    for e in std::fs::read_dir(work)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            let t = e.metadata()?.modified()?;
            if newest.as_ref().is_none_or(|(nt, _)| t > *nt) {
                newest = Some((t, e.path()));
            }
        }
    }
    let (_, path) = newest.context("no callgrind dump")?;
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no totals in {}", path.display()))
}

fn measure(work: &Path, name: &str, port: u16, cmd: &[&str], n: usize) -> anyhow::Result<f64> {
    use std::os::unix::process::CommandExt;
    let prefix = format!("callgrind.{name}.out");
    let child: Child = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            // Self-contained dumps, so that callgrind_annotate can read each alone.
            "--compress-strings=no",
            "--compress-pos=no",
            &format!("--callgrind-out-file={}", work.join(&prefix).display()),
        ])
        .args(cmd)
        .env("TOKIO_WORKER_THREADS", "1")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(
            work.join(format!("{name}.valgrind.log")),
        )?)
        .process_group(0)
        .spawn()
        .context("starting valgrind (apt-get install valgrind)")?;
    let pid = child.id().to_string();
    let result = (|| {
        wait_port(port, Duration::from_secs(120))?;
        requests(port, 200)?; // warm-up: connections to the backend, caches, lazy state
        let zero = Command::new("callgrind_control")
            .args(["--zero", &pid])
            .output()?;
        if !zero.status.success() {
            bail!("callgrind_control --zero failed");
        }
        requests(port, n)?;
        let dump = Command::new("callgrind_control")
            .args(["--dump", &pid])
            .output()?;
        if !dump.status.success() {
            bail!("callgrind_control --dump failed");
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(dumped_instructions(work, &prefix)? as f64 / n as f64)
    })();
    kill_group(&child);
    let mut child = child;
    let _ = child.wait();
    result
}

pub fn run(requests_n: usize) -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "cedille-gateway"]).run()?;
    let work = root().join("target/bench-callgrind");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let p = |x: &Path| x.to_string_lossy().into_owned();
    let common = "daemon off; master_process off; worker_processes 1; error_log stderr crit;";
    let backend_conf = work.join("backend.conf");
    std::fs::write(
        &backend_conf,
        format!(
            "{common} pid {}; events {{ worker_connections 1024; }} http {{ access_log off; keepalive_requests 1000000; \
             server {{ listen 127.0.0.1:{BACKEND}; location / {{ return 200 \"hello from the benchmark backend\\n\"; }} }} }}",
            p(&work.join("backend.pid"))
        ),
    )?;
    let mut backend = {
        use std::os::unix::process::CommandExt;
        Command::new("nginx")
            .args(["-c", &p(&backend_conf), "-p", &p(&work)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting nginx (scripts/setup.sh --bench)")?
    };
    wait_port(BACKEND, Duration::from_secs(10))?;
    let nginx_conf = work.join("proxy.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "{common} pid {}; events {{ worker_connections 1024; }} http {{ access_log off; keepalive_requests 1000000; \
             upstream b {{ server 127.0.0.1:{BACKEND}; keepalive 64; }} \
             server {{ listen 127.0.0.1:{NGINX}; location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}",
            p(&work.join("proxy.pid"))
        ),
    )?;
    let gw_dir = work.join("gateway");
    std::fs::create_dir_all(&gw_dir)?;
    std::fs::write(
        gw_dir.join("gw.yaml"),
        format!(
            "{}---\n{}---\n{}",
            gateway(
                "bench",
                &format!("  - {{name: http, port: {GATEWAY}, protocol: HTTP}}")
            ),
            ROUTE,
            service("backend", ([127, 0, 0, 1], BACKEND).into())
        ),
    )?;
    let gw_bin = p(&root().join("target/release/cedille-gateway"));
    let gw = measure(
        &work,
        "cedille-gateway",
        GATEWAY,
        &[
            &gw_bin,
            "--config-dir",
            &p(&gw_dir),
            "--admin-addr",
            "127.0.0.1:18603",
        ],
        requests_n,
    );
    let ng = measure(
        &work,
        "nginx",
        NGINX,
        &["nginx", "-c", &p(&nginx_conf), "-p", &p(&work)],
        requests_n,
    );
    kill_group(&backend);
    let _ = backend.wait();
    let (gw, ng) = (gw?, ng?);
    println!();
    println!(
        "Instructions per HTTP/1.1 keep-alive request (callgrind, {requests_n} requests on one connection, one worker)"
    );
    println!("{:<16} {:>14} {:>9}", "proxy", "instructions", "vs nginx");
    println!("{:<16} {:>14.0} {:>9.2}", "cedille-gateway", gw, gw / ng);
    println!("{:<16} {:>14.0} {:>9.2}", "nginx", ng, 1.0);
    println!("target: at most nginx's (ratio <= 1.00)");
    Ok(())
}
