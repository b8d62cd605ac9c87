//! `cargo xtask bench routes`: the gateway (release binary, standalone mode) with 3,000
//! HTTPRoutes over 100 hostnames and 3,000 Services, against the same gateway with 10.
//!
//! - Propagation: one route changed `--changes` times (a new response header value each
//!   time, the file rewritten as editors do: temporary file, rename); the time from the
//!   rename's completion to the first response that carries the new value, polled on a kept-alive
//!   connection every millisecond (a tighter loop would mostly measure the poller taking
//!   the gateway's one CPU from the reload). Target: p99 at most 10 ms.
//! - Memory: resident memory with 3,000 routes less that with 10, per 1,000 routes
//!   (Services and their EndpointSlices included). Target: at most 2 MiB.
//! - Request cost: gateway CPU per request (from /proc) on one route, with 3,000 routes
//!   against 10; the matching cost must not grow with the routes of other hostnames.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{Args, VersionClient, group_usage, kill_group, median};
use crate::{
    manifests::{free_port, gateway, service},
    util::{cargo, root},
};

const HOSTS: usize = 100;
const PER_HOST: usize = 30;

fn base(port: u16) -> String {
    gateway(
        "gw",
        &format!("  - {{name: http, port: {port}, protocol: HTTP}}"),
    )
}

/// One hostname's file: `routes` HTTPRoutes (`/p<i>` prefixes, each with a header match
/// on half of them), each to a Service of its own with an EndpointSlice at `backend`. The
/// first route carries `x-bench-version: version`.
fn host_file(h: usize, routes: usize, backend: SocketAddr, version: usize) -> String {
    let mut s = String::new();
    for r in 0..routes {
        let name = format!("h{h:03}-r{r:02}");
        let header = if r % 2 == 1 {
            "\n      headers: [{name: x-team, value: blue}]"
        } else {
            ""
        };
        let filter = if r == 0 {
            format!(
                "\n    filters:\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {{set: [{{name: x-bench-version, value: \"{version}\"}}]}}"
            )
        } else {
            String::new()
        };
        let _ = write!(
            s,
            r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [h{h:03}.example.com]
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /p{r:02}}}{header}{filter}
    backendRefs: [{{name: {name}, port: 80}}]
---
{}"#,
            service(&name, backend)
        );
    }
    s
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

struct Gateway {
    child: Child,
    port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        kill_group(&self.child);
        let _ = self.child.wait();
    }
}

/// A config directory with `routes` routes (30 per hostname), and the gateway on it, pinned
/// to CPU 0.
fn start(work: &Path, name: &str, routes: usize, backend: SocketAddr) -> anyhow::Result<Gateway> {
    use std::os::unix::process::CommandExt;
    let dir = work.join(name);
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    write(&dir, "base.yaml", &base(port))?;
    let hosts = routes.div_ceil(PER_HOST);
    for h in 0..hosts {
        let n = PER_HOST.min(routes - h * PER_HOST);
        write(&dir, &format!("h{h:03}.yaml"), &host_file(h, n, backend, 0))?;
    }
    let admin = free_port()?;
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(root().join("target/release/cedille-gateway"))
        .arg("--config-dir")
        .arg(&dir)
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .env("RUST_LOG", "warn,cedille_gateway::app=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join(format!("{name}.log")))?)
        .process_group(0)
        .spawn()
        .context("starting cedille-gateway")?;
    Ok(Gateway { child, port })
}

/// Waits until the gateway serves `host` `path` with 200; returns how long that took.
async fn until_served(port: u16, host: &str, path: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if let Ok(mut c) = VersionClient::open(([127, 0, 0, 1], port).into()).await
            && c.get(host, path).await.is_ok_and(|(s, _)| s == 200)
        {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{host}{path} not served within 120 s")
}

/// Gateway CPU per request over `seconds` of keep-alive load on one route.
async fn cpu_per_request(
    gw: &Gateway,
    host: &'static str,
    path: &'static str,
    seconds: u64,
) -> anyhow::Result<f64> {
    let pgid = gw.child.id();
    let (c0, _) = group_usage(pgid);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let port = gw.port;
        tasks.spawn(async move {
            let mut c = VersionClient::open(([127, 0, 0, 1], port).into()).await?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let (s, _) = c.get(host, path).await?;
                if s != 200 {
                    bail!("status {s}");
                }
                n += 1;
            }
            Ok::<_, anyhow::Error>(n)
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    let (c1, _) = group_usage(pgid);
    Ok((c1 - c0) / total as f64 * 1e6)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "cedille-gateway"]).run()?;
    // The load generator and the echo backend on CPU 1; the gateway on CPU 0.
    super::pin_self(1)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    let work = root().join("target/bench-routes");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let backend = crate::cluster::echo().await?;
    let total = HOSTS * PER_HOST;

    let small = start(&work, "small", 10, backend)?;
    until_served(small.port, "h000.example.com", "/p08").await?;
    let big = start(&work, "big", total, backend)?;
    let startup = until_served(big.port, "h099.example.com", "/p28").await?;
    eprintln!(
        "bench: {total} routes served {:.0} ms after start",
        startup.as_secs_f64() * 1e3
    );
    // Settle, then memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, rss_small) = group_usage(small.child.id());
    let (_, rss_big) = group_usage(big.child.id());
    let per_1000 = (rss_big.saturating_sub(rss_small)) as f64 / (total - 10) as f64 * 1000.0;

    // Propagation on the big configuration: route h000-r00.
    let dir = work.join("big");
    let mut client = VersionClient::open(([127, 0, 0, 1], big.port).into()).await?;
    let mut samples = Vec::with_capacity(args.changes);
    let mut slowest_rename = Duration::ZERO;
    for v in 1..=args.changes {
        let text = host_file(0, PER_HOST, backend, v);
        let tmp = dir.join(".h000.yaml.tmp");
        std::fs::write(&tmp, &text)?;
        let want = v.to_string();
        // The clock starts when the new file is in place: on this machine's disk a rename
        // itself sometimes waits on the journal for tens of milliseconds, which is not the
        // gateway's time (the slowest rename is reported).
        let r0 = Instant::now();
        std::fs::rename(&tmp, dir.join("h000.yaml"))?;
        slowest_rename = slowest_rename.max(r0.elapsed());
        let t0 = Instant::now();
        loop {
            let (_, got) = client.get("h000.example.com", "/p00").await?;
            if got == want {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("change {v} not seen within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(t0.elapsed().as_secs_f64() * 1e3);
        // Changes a little apart, as people and controllers make them.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("bench: propagation samples (ms): {samples:.1?}");
    eprintln!(
        "bench: the slowest rename took {:.1} ms",
        slowest_rename.as_secs_f64() * 1e3
    );
    samples.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));

    // Request cost on one route, interleaved rounds.
    let (mut cpu_big, mut cpu_small) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        eprintln!("bench: round {round}/{}: request cost", args.rounds);
        cpu_big.push(cpu_per_request(&big, "h000.example.com", "/p08", args.seconds).await?);
        cpu_small.push(cpu_per_request(&small, "h000.example.com", "/p08", args.seconds).await?);
    }
    let (cpu_big, cpu_small) = (median(cpu_big), median(cpu_small));

    println!();
    println!("## Routes at scale: {total} HTTPRoutes over {HOSTS} hostnames, {total} Services");
    println!();
    println!("| | figure | target |");
    println!("|---|---|---|");
    println!(
        "| change to traffic, p50 / p99 ({} changes) | {p50:.1} / {p99:.1} ms | p99 ≤ 10 ms |",
        args.changes
    );
    println!(
        "| memory per 1,000 routes (with their Services) | {:.2} MiB | ≤ 2 MiB |",
        per_1000 / (1024.0 * 1024.0)
    );
    println!(
        "| request CPU, {total} routes vs 10 | {cpu_big:.1} vs {cpu_small:.1} µs ({:.2}x) | flat |",
        cpu_big / cpu_small
    );
    println!(
        "| start to serving all {total} routes | {:.0} ms | |",
        startup.as_secs_f64() * 1e3
    );
    println!();
    Ok(())
}
