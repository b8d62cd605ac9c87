//! `cargo xtask bench http3` (also the end of `cargo xtask bench gateway`): HTTP/3 through
//! cedille-gateway and Caddy (Debian's, the one packaged HTTP/3 server) side by side in one
//! run, each with one worker (one tokio worker thread; GOMAXPROCS=1) pinned to CPU 0, in
//! front of the same nginx backend on CPU 1. The load client is this process on CPU 1:
//! quinn and h3, because h2load from Debian cannot speak HTTP/3 and oha's HTTP/3 is
//! experimental. Both servers get the same certificate (ECDSA P-256) and the client offers
//! only X25519 and no resumption, so every handshake is a full one.
//!
//! Three figures per server, medians of interleaved rounds:
//! - CPU time per request at saturation (8 connections with 8 requests in flight each);
//! - p50 and p99 latency at a fixed rate (`--rate`, open loop: latency is counted from when
//!   the request was due, so a stalled server is not hidden by a stalled client);
//! - full QUIC handshakes (each followed by one request) per CPU second.

use std::{
    path::{Path, PathBuf},
    process::Child,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use bytes::Bytes;

use super::{
    Args,
    gateway::{
        BACKEND, SERVER_NAME, gateway_config, make_certs, path, spawn_gateway, start_backend, write,
    },
    group_usage, kill_group, median, pin_self, spawn_pinned, wait_port,
};
use crate::util::{cargo, root};

const GATEWAY_PORT: u16 = 18480;
const CADDY_PORT: u16 = 18483;
const SATURATION_CONNECTIONS: usize = 8;
const STREAMS_PER_CONNECTION: usize = 8;
const HANDSHAKE_CLIENTS: usize = 8;

struct Server {
    name: &'static str,
    port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_group(&self.child);
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Saturation,
    FixedRate,
    Handshakes,
}

impl Scenario {
    const ALL: [Scenario; 3] = [
        Scenario::Saturation,
        Scenario::FixedRate,
        Scenario::Handshakes,
    ];
}

#[derive(Default, Clone, Copy)]
struct Sample {
    /// Server CPU microseconds per request (or per handshake).
    cpu_us: f64,
    /// Requests (or handshakes) completed per second, for information only.
    per_s: f64,
    p50: f64,
    p99: f64,
}

fn start_servers(work: &Path) -> anyhow::Result<Vec<Server>> {
    let (crt, key) = (work.join("server.crt"), work.join("server.key"));
    let gw_dir = work.join("gateway");
    gateway_config(
        &gw_dir,
        &format!(
            "  - name: https\n    port: {GATEWAY_PORT}\n    protocol: HTTPS\n    tls: {{certificateRefs: [{{name: bench-tls}}]}}"
        ),
        &crt,
        &key,
    )?;
    let caddyfile = work.join("Caddyfile");
    write(
        &caddyfile,
        &format!(
            "{{\n  admin off\n  auto_https off\n  servers {{\n    protocols h1 h2 h3\n  }}\n}}\n\
             https://{SERVER_NAME}:{CADDY_PORT} {{\n  bind 127.0.0.1\n  tls {crt} {key}\n  reverse_proxy 127.0.0.1:{BACKEND}\n}}\n",
            crt = crt.display(),
            key = key.display(),
        ),
    )?;
    let servers = vec![
        Server {
            name: "cedille-gateway",
            port: GATEWAY_PORT,
            child: spawn_gateway(&gw_dir)?,
        },
        Server {
            name: "caddy",
            port: CADDY_PORT,
            child: spawn_pinned(
                "0",
                "caddy",
                &[
                    "run",
                    "--adapter",
                    "caddyfile",
                    "--config",
                    path(&caddyfile)?,
                ],
                &[("GOMAXPROCS", "1"), ("HOME", path(work)?)],
            )?,
        },
    ];
    for s in &servers {
        wait_port(s.port).with_context(|| s.name)?;
    }
    Ok(servers)
}

fn client_config(ca_der: Vec<u8>) -> anyhow::Result<quinn::ClientConfig> {
    let tls = super::full_handshake_client(ca_der, b"h3")?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// A new HTTP/3 connection (a full handshake) and the task that drives it.
async fn connect(
    endpoint: &quinn::Endpoint,
    port: u16,
) -> anyhow::Result<(Sender, tokio::task::JoinHandle<()>)> {
    let conn = endpoint
        .connect(([127, 0, 0, 1], port).into(), SERVER_NAME)?
        .await?;
    let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
    let task = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok((sender, task))
}

async fn get(sender: &mut Sender) -> anyhow::Result<bool> {
    let req = http::Request::get(format!("https://{SERVER_NAME}/")).body(())?;
    let mut stream = sender.send_request(req).await?;
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    while stream.recv_data().await?.is_some() {}
    Ok(resp.status() == 200)
}

/// Requests completed and latencies (seconds) of one scenario against `port`.
async fn load(
    s: Scenario,
    endpoint: &quinn::Endpoint,
    port: u16,
    seconds: u64,
    rate: u32,
) -> anyhow::Result<(u64, Vec<f64>)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    // Connections the requests share, kept open until every request has ended.
    let mut keep = Vec::new();
    match s {
        Scenario::Saturation => {
            for _ in 0..SATURATION_CONNECTIONS {
                let (sender, driver) = connect(endpoint, port).await?;
                for _ in 0..STREAMS_PER_CONNECTION {
                    let mut sender = sender.clone();
                    tasks.spawn(async move {
                        let mut ok = 0;
                        while tokio::time::Instant::now() < deadline {
                            if matches!(get(&mut sender).await, Ok(true)) {
                                ok += 1;
                            }
                        }
                        (ok, Vec::new())
                    });
                }
                tasks.spawn(async move {
                    tokio::time::sleep_until(deadline + Duration::from_millis(500)).await;
                    driver.abort();
                    (0, Vec::new())
                });
            }
        }
        Scenario::FixedRate => {
            let mut senders = Vec::new();
            for _ in 0..SATURATION_CONNECTIONS {
                senders.push(connect(endpoint, port).await?);
            }
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            let start = tokio::time::Instant::now();
            let mut i: u32 = 0;
            loop {
                let due = start + interval * i;
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due).await;
                let mut sender = senders[i as usize % senders.len()].0.clone();
                tasks.spawn(async move {
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(5), get(&mut sender)).await,
                        Ok(Ok(true))
                    );
                    let took = due.elapsed().as_secs_f64();
                    (u64::from(ok), if ok { vec![took] } else { Vec::new() })
                });
                i += 1;
            }
            keep = senders;
        }
        Scenario::Handshakes => {
            for _ in 0..HANDSHAKE_CLIENTS {
                let endpoint = endpoint.clone();
                tasks.spawn(async move {
                    let mut ok = 0;
                    while tokio::time::Instant::now() < deadline {
                        let one = async {
                            let (mut sender, driver) = connect(&endpoint, port).await?;
                            let r = get(&mut sender).await;
                            drop(sender);
                            driver.abort();
                            r
                        };
                        if let Ok(Ok(true)) =
                            tokio::time::timeout(Duration::from_secs(5), one).await
                        {
                            ok += 1;
                        }
                    }
                    (ok, Vec::new())
                });
            }
        }
    }
    let mut ok = 0;
    let mut latencies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (n, l) = r.unwrap_or_default();
        ok += n;
        latencies.extend(l);
    }
    drop(keep);
    Ok((ok, latencies))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn measure(
    rt: &tokio::runtime::Runtime,
    endpoint: &quinn::Endpoint,
    server: &Server,
    s: Scenario,
    args: &Args,
) -> anyhow::Result<Sample> {
    let pgid = server.child.id();
    let (cpu0, _) = group_usage(pgid);
    let (ok, mut lat) = rt.block_on(load(s, endpoint, server.port, args.seconds, args.rate))?;
    let wall = args.seconds as f64;
    let (cpu1, _) = group_usage(pgid);
    if ok == 0 {
        bail!("{}: no request succeeded over HTTP/3", server.name);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(Sample {
        cpu_us: (cpu1 - cpu0) * 1e6 / ok as f64,
        per_s: ok as f64 / wall,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "cedille-gateway"]).run()?;
    let work: PathBuf = root().join("target/bench-http3");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let ca = make_certs(&work)?;
    pin_self(1)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut backend = start_backend(&work)?;
    let servers = start_servers(&work)?;
    let endpoint = rt.block_on(async {
        let mut e = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        e.set_default_client_config(client_config(ca)?);
        anyhow::Ok(e)
    })?;
    // Both answer over HTTP/3 before anything is measured.
    for s in &servers {
        let up = rt.block_on(async {
            for _ in 0..50 {
                if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(1), async {
                    let (mut sender, _driver) = connect(&endpoint, s.port).await?;
                    get(&mut sender).await
                })
                .await
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        });
        if !up {
            bail!("{} does not answer over HTTP/3 on port {}", s.name, s.port);
        }
    }
    let n = servers.len();
    let mut samples: Vec<Vec<Vec<Sample>>> = Scenario::ALL
        .iter()
        .map(|_| (0..n).map(|_| Vec::new()).collect())
        .collect();
    for round in 0..args.rounds {
        for (si, s) in Scenario::ALL.iter().enumerate() {
            for k in 0..n {
                let i = (k + round) % n;
                let m = measure(&rt, &endpoint, &servers[i], *s, args)?;
                eprintln!(
                    "bench http3: round {} scenario {} {:<16} {:>9.0}/s {:>8.2} us CPU each, p99 {:.3} ms",
                    round + 1,
                    si,
                    servers[i].name,
                    m.per_s,
                    m.cpu_us,
                    m.p99 * 1e3
                );
                samples[si][i].push(m);
            }
        }
    }
    let caddy = servers
        .iter()
        .position(|s| s.name == "caddy")
        .expect("caddy is benchmarked");
    println!();
    println!(
        "HTTP/3 (client: quinn + h3 in this process on CPU 1); one worker on CPU 0 per server; medians of {} rounds of {} s",
        args.rounds, args.seconds
    );
    let titles = [
        format!(
            "Saturation: {SATURATION_CONNECTIONS} connections x {STREAMS_PER_CONNECTION} requests in flight"
        ),
        format!(
            "Fixed rate: {} requests/s over {SATURATION_CONNECTIONS} connections",
            args.rate
        ),
        format!("Full handshakes (+1 request each), {HANDSHAKE_CLIENTS} clients"),
    ];
    for (si, s) in Scenario::ALL.iter().enumerate() {
        let med = |i: usize, f: fn(&Sample) -> f64| median(samples[si][i].iter().map(f).collect());
        println!();
        println!("{}", titles[si]);
        let cpu_c = med(caddy, |m| m.cpu_us);
        match s {
            Scenario::FixedRate => {
                println!(
                    "{:<16} {:>10} {:>9} {:>10} {:>9} {:>12} {:>9}",
                    "server", "p50 ms", "vs caddy", "p99 ms", "vs caddy", "CPU us/req", "vs caddy"
                );
                for (i, srv) in servers.iter().enumerate() {
                    let (p50, p99, cpu) =
                        (med(i, |m| m.p50), med(i, |m| m.p99), med(i, |m| m.cpu_us));
                    println!(
                        "{:<16} {:>10.3} {:>9.2} {:>10.3} {:>9.2} {:>12.2} {:>9.2}",
                        srv.name,
                        p50 * 1e3,
                        p50 / med(caddy, |m| m.p50),
                        p99 * 1e3,
                        p99 / med(caddy, |m| m.p99),
                        cpu,
                        cpu / cpu_c
                    );
                }
            }
            _ => {
                let per = if *s == Scenario::Handshakes {
                    "handshakes/CPU s"
                } else {
                    "req/CPU s"
                };
                println!(
                    "{:<16} {:>12} {:>9} {:>16} {:>9} {:>18}",
                    "server", "CPU us each", "vs caddy", per, "vs caddy", "per s (unstable)"
                );
                for (i, srv) in servers.iter().enumerate() {
                    let cpu = med(i, |m| m.cpu_us);
                    println!(
                        "{:<16} {:>12.2} {:>9.2} {:>16.0} {:>9.2} {:>18.0}",
                        srv.name,
                        cpu,
                        cpu / cpu_c,
                        1e6 / cpu,
                        cpu_c / cpu,
                        med(i, |m| m.per_s)
                    );
                }
            }
        }
    }
    println!();
    println!("targets: HTTP/3 CPU per request and p99 at most Caddy's (ratios <= 1.00)");
    drop(servers);
    kill_group(&backend);
    let _ = backend.wait();
    Ok(())
}
