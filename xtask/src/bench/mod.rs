//! `cargo xtask bench gateway|agent|kubernetes`: Cedille next to the software it replaces, measured in
//! one run with interleaved rounds and medians. On this 2-core machine throughput swings
//! from run to run while CPU time per unit of work is stable, so the figures that count are
//! CPU per request (or per handshake, per connection) and latency at a fixed rate.

pub(crate) mod agent;
mod callgrind;
mod gateway;
mod http3;
mod kubernetes;
mod mesh;
mod routes;

use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct Args {
    /// What to benchmark: `gateway` (HTTP/3 included), `http3` (only that part), `agent`, `mesh`, `routes`, `callgrind` or `kubernetes`.
    target: String,
    /// Interleaved rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent connections of the load generator (gateway: 32; agent, fixed-rate
    /// run: 8).
    #[arg(long)]
    connections: Option<usize>,
    /// Idle connections opened for the memory measurement.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Requests per second for the fixed-rate latency measurement.
    #[arg(long, default_value_t = 5000)]
    rate: u32,
    /// Requests counted under callgrind (`callgrind`).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Route changes for the propagation measurements (`kubernetes`, `routes`).
    #[arg(long, default_value_t = 100)]
    changes: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.target.as_str() {
        "gateway" => gateway::run(&args).and_then(|()| http3::run(&args)),
        "http3" => http3::run(&args),
        "agent" => agent::run(&args),
        "kubernetes" => kubernetes::run(args.changes),
        "mesh" => mesh::run(&args),
        "routes" => routes::run(&args),
        "callgrind" => callgrind::run(args.requests),
        other => bail!(
            "unknown benchmark {other:?}: try `cargo xtask bench gateway`, `http3`, `agent`, `mesh`, `routes` or `kubernetes`"
        ),
    }
}

/// Each process started here leads its own process group (nginx forks its workers).
fn kill_group(child: &Child) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Runs `program` pinned to `cpu`, as the leader of a new process group.
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

/// Pins the calling thread, and the threads it starts later, to one CPU.
fn pin_self(cpu: usize) -> anyhow::Result<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    set.set(cpu).context("CPU index")?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).context("sched_setaffinity")?;
    Ok(())
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

/// Interleaved rounds: each round measures every path once, in order; returns each path's
/// figures, one per round.
fn rounds<P: Copy, F>(
    args: &Args,
    paths: &[P],
    name: fn(P) -> &'static str,
    mut measure: impl FnMut(P) -> anyhow::Result<F>,
) -> anyhow::Result<Vec<Vec<F>>> {
    let mut results: Vec<Vec<F>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 1..=args.rounds {
        for (i, path) in paths.iter().enumerate() {
            eprintln!("bench: round {round}/{}: {}", args.rounds, name(*path));
            results[i].push(measure(*path)?);
        }
    }
    Ok(results)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One kept-alive HTTP/1.1 connection to a gateway, for the propagation benchmarks.
pub(crate) struct VersionClient {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
}

impl VersionClient {
    pub async fn open(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Self { sender })
    }

    /// A GET for `host` `path`: the status and the `x-bench-version` response header (the
    /// value the benchmarks change to see a new configuration arrive).
    pub async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
        use http_body_util::BodyExt;
        let req = http::Request::get(path)
            .header("host", host)
            .body(http_body_util::Empty::new())?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let v = resp
            .headers()
            .get("x-bench-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        resp.into_body().collect().await?;
        Ok((status, v))
    }
}

/// A TLS 1.3 client configuration for full handshakes only: X25519 (the key exchange every
/// server here supports; a post-quantum hybrid would cost the servers that support it more
/// than the others), no resumption, trusting `ca_der`, offering `alpn`.
pub(crate) fn full_handshake_client(
    ca_der: Vec<u8>,
    alpn: &[u8],
) -> anyhow::Result<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(ca_der))?;
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}
