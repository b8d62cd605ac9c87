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
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::util::{cargo, root};

#[derive(clap::Args)]
pub struct Args {
    /// What to benchmark (only `gateway` for now).
    target: String,
    /// Interleaved rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Idle connections opened for the memory measurement.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
}

const BACKEND: u16 = 18000;

struct Proxy {
    name: &'static str,
    port: u16,
    child: Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        kill_group(&self.child);
        let _ = self.child.wait();
    }
}

/// Each process started here leads its own process group (nginx forks its workers).
fn kill_group(child: &Child) {
    // SAFETY: signals a process group this benchmark created.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
}

fn spawn_pinned(
    cpu: &str,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("taskset");
    c.args(["-c", cpu, program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn()
        .with_context(|| format!("starting {program} (run scripts/setup.sh --bench)"))
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port}")
}

/// CPU seconds and resident bytes of every process in a process group.
fn group_usage(pgid: u32) -> (f64, u64) {
    let ticks = 100.0; // USER_HZ on Linux
    let mut cpu = 0.0;
    let mut rss = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the ")" that ends the command name.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 22 || f[2].parse::<u32>().ok() != Some(pgid) {
            continue;
        }
        let utime: f64 = f[11].parse().unwrap_or(0.0);
        let stime: f64 = f[12].parse().unwrap_or(0.0);
        cpu += (utime + stime) / ticks;
        rss += f[21].parse::<u64>().unwrap_or(0) * 4096;
    }
    (cpu, rss)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn start_all(work: &Path) -> anyhow::Result<(Child, Vec<Proxy>)> {
    // Each nginx needs a pid file of its own: nginx deletes it on exit (pointing it at
    // /dev/null would delete /dev/null).
    let nginx_common = "daemon off; master_process on; worker_processes 1; error_log stderr crit;";
    let pid_backend = format!("pid {};", work.join("backend.pid").display());
    let pid_proxy = format!("pid {};", work.join("proxy.pid").display());
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
        &[
            "-c",
            backend_conf.to_str().context("path")?,
            "-p",
            work.to_str().context("path")?,
        ],
        &[],
    )?;
    wait_port(BACKEND)?;

    let nginx_conf = work.join("nginx-proxy.conf");
    write(
        &nginx_conf,
        &format!(
            "{nginx_common} {pid_proxy} worker_rlimit_nofile 20000; events {{ worker_connections 9000; }} http {{ access_log off; keepalive_requests 1000000; upstream b {{ server 127.0.0.1:{BACKEND}; keepalive 64; }} server {{ listen 127.0.0.1:18081; location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}"
        ),
    )?;
    let haproxy_conf = work.join("haproxy.cfg");
    write(
        &haproxy_conf,
        &format!(
            "global\n  nbthread 1\n  maxconn 9000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\nfrontend f\n  bind 127.0.0.1:18082\n  default_backend b\nbackend b\n  server s 127.0.0.1:{BACKEND}\n"
        ),
    )?;
    let gw_dir = work.join("gateway");
    std::fs::create_dir_all(&gw_dir)?;
    write(
        &gw_dir.join("gw.yaml"),
        &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: cedille}}
spec: {{controllerName: cedille.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: bench, namespace: default}}
spec:
  gatewayClassName: cedille
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners: [{{name: http, port: 18080, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bench, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  rules: [{{backendRefs: [{{name: backend, port: 80}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: backend, namespace: default, labels: {{kubernetes.io/service-name: backend}}}}
addressType: IPv4
ports: [{{name: http, port: {BACKEND}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"#
        ),
    )?;
    let gw_bin = root().join("target/release/cedille-gateway");
    let proxies = vec![
        Proxy {
            name: "cedille-gateway",
            port: 18080,
            child: spawn_pinned(
                "0",
                gw_bin.to_str().context("path")?,
                &[
                    "--config-dir",
                    gw_dir.to_str().context("path")?,
                    "--admin-addr",
                    "127.0.0.1:18090",
                    "--max-connections",
                    "65536",
                ],
                &[("TOKIO_WORKER_THREADS", "1"), ("RUST_LOG", "error")],
            )?,
        },
        Proxy {
            name: "nginx",
            port: 18081,
            child: spawn_pinned(
                "0",
                "nginx",
                &[
                    "-c",
                    nginx_conf.to_str().context("path")?,
                    "-p",
                    work.to_str().context("path")?,
                ],
                &[],
            )?,
        },
        Proxy {
            name: "haproxy",
            port: 18082,
            child: spawn_pinned(
                "0",
                "haproxy",
                &["-f", haproxy_conf.to_str().context("path")?],
                &[],
            )?,
        },
    ];
    for p in &proxies {
        wait_port(p.port).with_context(|| p.name)?;
    }
    Ok((backend, proxies))
}

/// Requests that got a 200 during `seconds` of load at saturation.
fn load(port: u16, seconds: u64, connections: usize) -> anyhow::Result<u64> {
    let out = Command::new("taskset")
        .args([
            "-c",
            "1",
            "oha",
            "--no-tui",
            "--output-format",
            "json",
            "-z",
            &format!("{seconds}s"),
            "-c",
            &connections.to_string(),
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("running oha (run scripts/setup.sh --bench)")?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("oha output")?;
    Ok(v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0))
}

/// Resident memory per idle keep-alive connection (after one request on each).
fn idle_memory(pgid: u32, port: u16, n: usize) -> anyhow::Result<f64> {
    let (_, before) = group_usage(pgid);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf)?;
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, after) = group_usage(pgid);
    drop(conns);
    Ok((after.saturating_sub(before)) as f64 / n as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.target != "gateway" {
        bail!(
            "unknown benchmark {:?}: try `cargo xtask bench gateway`",
            args.target
        );
    }
    cargo(&["build", "--release", "-p", "cedille-gateway"]).run()?;
    let work: PathBuf = root().join("target/bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("logs"))?;
    let (mut backend, proxies) = start_all(&work)?;
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); proxies.len()];
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); proxies.len()];
    for round in 0..args.rounds {
        // Interleave, and rotate who goes first, so drift affects everyone alike.
        for k in 0..proxies.len() {
            let i = (k + round) % proxies.len();
            let p = &proxies[i];
            let pgid = p.child.id();
            let (c0, _) = group_usage(pgid);
            let t0 = Instant::now();
            let n = load(p.port, args.seconds, args.connections)?;
            let secs = t0.elapsed().as_secs_f64();
            let (c1, _) = group_usage(pgid);
            if n == 0 {
                bail!("{} answered no request with 200", p.name);
            }
            cpu[i].push((c1 - c0) / n as f64 * 1e6);
            rps[i].push(n as f64 / secs);
            eprintln!(
                "bench: round {} {:<16} {:>9.0} req/s {:>7.2} us CPU/request",
                round + 1,
                p.name,
                n as f64 / secs,
                (c1 - c0) / n as f64 * 1e6
            );
        }
    }
    let mut mem = Vec::new();
    for p in &proxies {
        mem.push(idle_memory(p.child.id(), p.port, args.idle)?);
    }
    let nginx = proxies
        .iter()
        .position(|p| p.name == "nginx")
        .expect("nginx is benchmarked");
    let cpu_med: Vec<f64> = cpu.into_iter().map(median).collect();
    let rps_med: Vec<f64> = rps.into_iter().map(median).collect();
    println!();
    println!(
        "HTTP/1.1 keep-alive at saturation, {} connections, one worker on CPU 0; medians of {} rounds",
        args.connections, args.rounds
    );
    println!(
        "{:<16} {:>12} {:>10} {:>18} {:>10} {:>16}",
        "proxy", "CPU us/req", "vs nginx", "req/s (unstable)", "vs nginx", "bytes/idle conn"
    );
    for (i, p) in proxies.iter().enumerate() {
        println!(
            "{:<16} {:>12.2} {:>10.2} {:>18.0} {:>10.2} {:>16.0}",
            p.name,
            cpu_med[i],
            cpu_med[i] / cpu_med[nginx],
            rps_med[i],
            rps_med[i] / rps_med[nginx],
            mem[i],
        );
    }
    // nginx allocates connection structures up front, so its resident memory barely moves:
    // the idle-connection figure is compared with the 4 KiB target instead of a ratio.
    println!(
        "target: CPU per request no more than nginx's; at most 4096 bytes per idle connection"
    );
    drop(proxies);
    kill_group(&backend);
    let _ = backend.wait();
    Ok(())
}
