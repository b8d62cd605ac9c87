//! `cargo xtask bench mesh`: what mutual TLS between nodes costs. Two nodes (network
//! namespaces, each with a bridge) joined by one link, a client pod on the first and a server
//! pod on the second; in one run, interleaved rounds of:
//!
//! - **direct**: the pods are not enrolled, no agent runs (plaintext, the kernel alone);
//! - **mesh**: an agent per node, both pods enrolled; every connection leaves the client pod
//!   through its agent, crosses the link as HBONE (HTTP/2 CONNECT over mutual TLS 1.3) and
//!   enters the server pod through the other agent;
//! - **mesh, same node**: both pods on the first node, one agent: HBONE as well (identity
//!   and policy do not depend on placement), which is what it costs;
//! - **mesh, plaintext**: both agents with `--plaintext` (the same two extra hops through
//!   the agents' user space, no TLS, no HTTP/2): what the hops alone cost on this machine,
//!   so the figures above can be read as hops plus mutual TLS;
//! - **ztunnel**, when `CEDILLE_BENCH_ZTUNNEL` names a ztunnel binary built with its
//!   `testing` feature: ztunnel in dedicated mode in each pod, the client pod's connections
//!   redirected to it by iptables, HBONE between the two ztunnels. The targets are
//!   ztunnel's published figures; this measures ztunnel itself on the same machine, pods and
//!   load, in the same run.
//!
//! Figures: request/response latency at a fixed rate (p50/p99), new connections per second,
//! one bulk stream, the agents' CPU per 1,000 requests/s, and their memory per open
//! connection. Each (round, path) gets fresh nodes.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use cedille_harness::{self as h, Background, Bridge, Cgroup, Netns, PinDir};

use super::{
    Args,
    agent::{ca_init, get, load_in, sysctl},
    group_usage, median,
};
use crate::{
    ebpf,
    util::{cargo, root},
};

const ADMIN: [&str; 2] = ["127.0.0.1:15951", "127.0.0.1:15952"];
const CLIENT_IP: &str = "10.96.0.1";
const SERVER_IP: &str = "10.96.0.2";
const ECHO_PORT: u16 = 7000;
const SINK_PORT: u16 = 7001;
const CRR_CONCURRENCY: u32 = 4;
/// Idle connections for the memory figure.
const IDLE: u32 = 1000;
/// A ztunnel binary (built with its `testing` feature): when set, each round also measures
/// ztunnel on the same pods, the baseline the targets come from.
const ZTUNNEL_ENV: &str = "CEDILLE_BENCH_ZTUNNEL";
/// ztunnel's readiness and stats ports, on loopback in each pod.
const ZT_READY: &str = "127.0.0.1:15021";
const ZT_STATS: &str = "127.0.0.1:15020";

#[derive(Clone, Copy, PartialEq)]
enum Path3 {
    Direct,
    Mesh,
    SameNode,
    Plain,
    /// ztunnel in each pod (dedicated mode), when CEDILLE_BENCH_ZTUNNEL names its binary.
    Ztunnel,
}

impl Path3 {
    const ALL: [Path3; 4] = [Path3::Direct, Path3::Mesh, Path3::SameNode, Path3::Plain];

    fn name(self) -> &'static str {
        match self {
            Path3::Direct => "direct (plaintext)",
            Path3::Mesh => "mesh (HBONE, mTLS)",
            Path3::SameNode => "mesh, same node",
            Path3::Plain => "mesh, plaintext",
            Path3::Ztunnel => "ztunnel (HBONE)",
        }
    }

    /// The server pod's node (0 or 1).
    fn server_node(self) -> usize {
        if self == Path3::SameNode { 0 } else { 1 }
    }
}

#[derive(Default, Clone)]
struct Figures {
    p50_us: f64,
    p99_us: f64,
    conns_per_s: f64,
    crr_p99_us: f64,
    gbit_s: f64,
    /// Both agents' CPU seconds per second, per 1,000 requests per second (rr run).
    vcpu_per_krps: f64,
    /// Both agents' CPU time per new connection, microseconds.
    agent_us_per_conn: f64,
    /// Both agents' resident memory per open connection, bytes.
    bytes_per_conn: f64,
}

struct Pod {
    ns: Netns,
    cgroup: PathBuf,
}

/// Two nodes, a pod on each, the link between them.
struct Nodes {
    server_node: usize,
    // Drop order: pods before the nodes' namespaces (bridges and veths go with them).
    client: Pod,
    server: Pod,
    _server_proc: Background,
    _pause: Background,
    _link_ns: [Netns; 2],
    cgroups: [Cgroup; 2],
    dir: PathBuf,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn uid(i: usize) -> String {
    format!("0c0c0c0c-0000-4000-8000-00000000000{i}")
}

impl Nodes {
    fn new(probe: &Path, server_node: usize) -> anyhow::Result<Nodes> {
        let nodes = [Netns::new("mn1")?, Netns::new("mn2")?];
        let bridges = [Bridge::new(Some(&nodes[0]))?, Bridge::new(Some(&nodes[1]))?];
        let (l1, l2) = h::veth_pair(Some(&nodes[0]), Some(&nodes[1]))?;
        bridges[0].add(&l1)?;
        bridges[1].add(&l2)?;
        let cgroups = [Cgroup::new("mc1")?, Cgroup::new("mc2")?];
        let mut pods = Vec::new();
        for (i, ip) in [CLIENT_IP, SERVER_IP].into_iter().enumerate() {
            let ns = Netns::new("mp")?;
            let node = if i == 0 { 0 } else { server_node };
            let (iface, outside) = h::veth_pair(Some(&ns), Some(&nodes[node]))?;
            ns.addr(&iface, &format!("{ip}/24"))?;
            bridges[node].add(&outside)?;
            sysctl(
                &ns,
                &[
                    "net.ipv4.ip_local_port_range=1024 65000",
                    "net.ipv4.tcp_tw_reuse=1",
                ],
            )?;
            let cgroup = cgroups[node]
                .path()
                .join(format!("kubepods/besteffort/pod{}/ctr", uid(i)));
            std::fs::create_dir_all(&cgroup)?;
            pods.push(Pod { ns, cgroup });
        }
        std::mem::forget(bridges);
        let server = pods.pop().expect("two pods");
        let client = pods.pop().expect("two pods");
        let mut cmd = Command::new(probe);
        cmd.args([
            "bench-serve",
            &format!("0.0.0.0:{ECHO_PORT}"),
            &format!("0.0.0.0:{SINK_PORT}"),
        ]);
        let server_proc = h::spawn_in(Some(&server.ns), Some(&server.cgroup), cmd)?;
        let mut pause = Command::new("sleep");
        pause.arg("infinity");
        let pause = h::spawn_in(Some(&client.ns), Some(&client.cgroup), pause)?;
        let dir = std::env::temp_dir().join(format!("cedille-bench-mesh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let n = Nodes {
            server_node,
            client,
            server,
            _server_proc: server_proc,
            _pause: pause,
            _link_ns: nodes,
            cgroups,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = n.client.ns.run(|| {
                TcpStream::connect((SERVER_IP, ECHO_PORT)).is_ok()
                    && TcpStream::connect((SERVER_IP, SINK_PORT)).is_ok()
            })?;
            if up {
                return Ok(n);
            }
            if Instant::now() > deadline {
                bail!("the benchmark server did not come up in the server pod");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn manifests(&self) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("config");
        std::fs::create_dir_all(&dir)?;
        let mut docs = vec![
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench, labels: {cedille.io/mesh: enabled}}\n".to_owned(),
        ];
        for (i, (name, ip, sa)) in [
            ("client", CLIENT_IP, "client"),
            ("server", SERVER_IP, "server"),
        ]
        .into_iter()
        .enumerate()
        {
            docs.push(format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, uid: {}}}\nspec: {{nodeName: node-{}, serviceAccountName: {sa}}}\nstatus: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n",
                uid(i),
                if i == 0 { 1 } else { self.server_node + 1 }
            ));
        }
        std::fs::write(dir.join("pods.yaml"), docs.join("---\n"))?;
        Ok(dir)
    }

    /// Runs `cedille-probe ARGS` in the client pod and returns its `key=value` pairs.
    fn load(
        &self,
        probe: &Path,
        args: &[&str],
        seconds: u64,
    ) -> anyhow::Result<Vec<(String, f64)>> {
        load_in(&self.client.ns, &self.client.cgroup, probe, args, seconds)
    }
}

/// One series' value, 0 when the agent does not answer or has no such series yet.
fn metric(admin: &str, series: &str) -> f64 {
    metric_value(admin, series).unwrap_or(0.0)
}

/// One series' value from an agent's `/metrics`; an error when the agent does not answer
/// or has no such series.
fn metric_value(admin: &str, series: &str) -> anyhow::Result<f64> {
    let Some(text) = h::http_get(admin, "/metrics") else {
        bail!("the agent at {admin} did not serve /metrics");
    };
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the agent at {admin} has no series {series}"))
}

/// Connections both hops have carried: over HBONE, the server's agent's inbound streams
/// from the client's identity (only the client's agent holds it); in plaintext, the fewer
/// of the client's agent's outbound captures and the server's agent's inbound ones; through
/// ztunnel, the server's ztunnel's mutual-TLS connections from the client's identity.
fn carried(n: &Nodes, path: Path3) -> anyhow::Result<f64> {
    let server = ADMIN[n.server_node];
    if path == Path3::Ztunnel {
        return zt_carried(n);
    }
    if path == Path3::Plain {
        let out = metric_value(
            ADMIN[0],
            "cedille_agent_captured_connections_total{direction=\"outbound\"}",
        )?;
        let inbound = metric_value(
            server,
            "cedille_agent_captured_connections_total{direction=\"inbound\"}",
        )?;
        return Ok(out.min(inbound));
    }
    metric_value(
        server,
        "cedille_agent_workload_connections_total{direction=\"inbound\",source_identity=\"spiffe://cluster.local/ns/bench/sa/client\",destination_identity=\"spiffe://cluster.local/ns/bench/sa/server\"}",
    )
}

/// The sum of a ztunnel's `istio_tcp_connections_{opened,closed}_total` series whose
/// labels hold every one of `labels` (its stats port answers inside its pod).
fn zt_connections(pod: &Pod, which: &str, labels: &[&str]) -> anyhow::Result<f64> {
    let Some(text) = pod.ns.run(|| h::http_get(ZT_STATS, "/metrics"))? else {
        bail!("ztunnel did not serve /metrics");
    };
    let name = format!("istio_tcp_connections_{which}_total{{");
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Connections the server's ztunnel accepted over mutual TLS from the client's identity.
fn zt_carried(n: &Nodes) -> anyhow::Result<f64> {
    zt_connections(
        &n.server,
        "opened",
        &[
            "reporter=\"destination\"",
            "connection_security_policy=\"mutual_tls\"",
            "source_principal=\"spiffe://",
            "/ns/bench/sa/client\"",
        ],
    )
}

/// Connections a ztunnel holds open (reporter `source` on the client's, `destination` on
/// the server's).
fn zt_open(pod: &Pod, reporter: &str) -> f64 {
    let r = format!("reporter=\"{reporter}\"");
    let count = |which| zt_connections(pod, which, &[&r]).unwrap_or(0.0);
    count("opened") - count("closed")
}

struct Agents {
    procs: Vec<Background>,
    _pins: Vec<PinDir>,
}

impl Agents {
    fn start(bin: &Path, n: &Nodes, log: &Path, tls: bool) -> anyhow::Result<Agents> {
        let config = n.manifests()?;
        let ca = if tls {
            Some(ca_init(bin, &n.dir)?)
        } else {
            None
        };
        let mut procs = Vec::new();
        let mut pins = Vec::new();
        for (i, admin) in ADMIN.iter().enumerate() {
            let pin = PinDir::new()?;
            let mut cmd = Command::new(bin);
            cmd.arg("--config-dir")
                .arg(&config)
                .args(["--node-name", &format!("node-{}", i + 1), "--cgroup-root"])
                .arg(n.cgroups[i].path())
                .args(["--admin-addr", admin, "--bpf-pin-dir"])
                .arg(pin.path());
            match &ca {
                Some(ca) => cmd.arg("--ca-dir").arg(ca),
                None => cmd.arg("--plaintext"),
            };
            cmd.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(log)?,
            );
            procs.push(h::spawn_in(None, None, cmd)?);
            pins.push(pin);
        }
        let agents = Agents { procs, _pins: pins };
        let deadline = Instant::now() + Duration::from_secs(20);
        let with_pods = if n.server_node == 0 { 1 } else { 2 };
        loop {
            let ready = ADMIN[..with_pods].iter().all(|a| {
                h::http_get(a, "/config")
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .is_some_and(|c| {
                        c["pods"]
                            .as_array()
                            .is_some_and(|p| p.iter().any(|p| p["state"] == "enrolled"))
                            && (!tls || c["identities"][0]["serial"].is_string())
                    })
            });
            if ready {
                return Ok(agents);
            }
            if Instant::now() > deadline {
                bail!(
                    "the agents did not enroll their pods; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// ztunnel in dedicated mode in each pod (as a sidecar: Cedille's bench has no
    /// istio-cni to hand it pods' namespaces): its built-in test CA (`FAKE_CA`, a binary
    /// built with ztunnel's `testing` feature), the two workloads from a local file, the
    /// client pod's connections to the server redirected to its outbound port by iptables.
    /// Logs at `warn` like the agents (no access log).
    fn ztunnel(bin: &Path, n: &Nodes, log: &Path) -> anyhow::Result<Agents> {
        let workloads = n.dir.join("ztunnel-workloads.yaml");
        let mut doc = String::from("workloads:\n");
        for (name, ip, node) in [
            ("client", CLIENT_IP, 1),
            ("server", SERVER_IP, n.server_node + 1),
        ] {
            doc.push_str(&format!(
                "- {{uid: Kubernetes//Pod/bench/{name}, name: {name}, namespace: bench, serviceAccount: {name}, workloadIps: [\"{ip}\"], protocol: HBONE, node: node-{node}, network: \"\", services: {{}}}}\n"
            ));
        }
        std::fs::write(&workloads, doc)?;
        for port in [ECHO_PORT, SINK_PORT] {
            let port = port.to_string();
            h::run(
                "ip",
                &[
                    "netns", "exec", n.client.ns.name(), "iptables", "-t", "nat", "-A", "OUTPUT",
                    "-p", "tcp", "-d", SERVER_IP, "--dport", &port, "-j", "REDIRECT",
                    "--to-ports", "15001",
                ],
            )
            .context("redirecting the client pod's connections to ztunnel (is iptables installed? run scripts/setup.sh --bench)")?;
        }
        let mut procs = Vec::new();
        for (pod, name) in [(&n.client, "client"), (&n.server, "server")] {
            let out = std::fs::File::options()
                .create(true)
                .append(true)
                .open(log)?;
            let mut cmd = Command::new(bin);
            cmd.env("PROXY_MODE", "dedicated")
                .env("PROXY_WORKLOAD_INFO", format!("bench/{name}/{name}"))
                .env("FAKE_CA", "true")
                .env("XDS_ADDRESS", "")
                .env("LOCAL_XDS_PATH", &workloads)
                .env("ENABLE_ORIG_SRC", "false")
                .env("RUST_LOG", "warn")
                .stdout(out.try_clone()?)
                .stderr(out);
            procs.push(h::spawn_in(Some(&pod.ns), None, cmd)?);
        }
        let zt = Agents {
            procs,
            _pins: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = [&n.client, &n.server].iter().all(|p| {
                p.ns.run(|| h::http_get(ZT_READY, "/healthz/ready"))
                    .ok()
                    .flatten()
                    .is_some_and(|b| b.starts_with("ready"))
            });
            if ready {
                return Ok(zt);
            }
            if Instant::now() > deadline {
                bail!("ztunnel did not become ready; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Both agents' CPU seconds and resident bytes.
    fn usage(&self) -> (f64, u64) {
        self.procs.iter().fold((0.0, 0), |(c, r), p| {
            let (c1, r1) = group_usage(p.id());
            (c + c1, r + r1)
        })
    }
}

fn measure(
    path: Path3,
    args: &Args,
    bins: &(PathBuf, PathBuf),
    ztunnel: Option<&Path>,
    log: &Path,
) -> anyhow::Result<Figures> {
    let (agent_bin, probe) = bins;
    let probe = probe.as_path();
    let n = Nodes::new(probe, path.server_node())?;
    let agents = match path {
        Path3::Direct => None,
        Path3::Mesh | Path3::SameNode => Some(Agents::start(agent_bin, &n, log, true)?),
        Path3::Plain => Some(Agents::start(agent_bin, &n, log, false)?),
        Path3::Ztunnel => {
            let Some(bin) = ztunnel else {
                bail!("the ztunnel path needs {ZTUNNEL_ENV}");
            };
            Some(Agents::ztunnel(bin, &n, log)?)
        }
    };
    let usage = || agents.as_ref().map_or((0.0, 0), Agents::usage);
    let secs = args.seconds.to_string();
    let echo = format!("{SERVER_IP}:{ECHO_PORT}");
    let sink = format!("{SERVER_IP}:{SINK_PORT}");
    let mut f = Figures::default();

    let rate = args.rate.to_string();
    let conns = args.connections.unwrap_or(8).to_string();
    super::agent::wait_quiet();
    let (c0, _) = usage();
    let t0 = Instant::now();
    let rr = n.load(
        probe,
        &[
            "rr",
            &echo,
            "--rate",
            &rate,
            "--seconds",
            &secs,
            "--connections",
            &conns,
        ],
        args.seconds,
    )?;
    let elapsed = t0.elapsed().as_secs_f64();
    if get(&rr, "errors")? > 0.0 || get(&rr, "requests")? < 0.95 * get(&rr, "expected")? {
        bail!("{}: the fixed-rate run fell short: {rr:?}", path.name());
    }
    f.p50_us = get(&rr, "p50_us")?;
    f.p99_us = get(&rr, "p99_us")?;
    let (c1, _) = usage();
    f.vcpu_per_krps = (c1 - c0) / elapsed / (f64::from(args.rate) / 1000.0);

    super::agent::wait_quiet();
    let bulk = n.load(probe, &["bulk", &sink, "--seconds", &secs], args.seconds)?;
    f.gbit_s = get(&bulk, "gbit_per_second")?;

    // Memory per open connection: the agents' resident memory with IDLE proven idle
    // connections open, against before. Measured before the connection-rate run, which
    // leaves the client's ports in TIME_WAIT.
    if agents.is_some() {
        let server_admin = ADMIN[n.server_node];
        super::agent::wait_quiet();
        let (_, before) = usage();
        let count = IDLE.to_string();
        let idle_secs = "6";
        let mut cmd = Command::new(probe);
        cmd.args(["idle", &echo, "--count", &count, "--seconds", idle_secs])
            .stdout(Stdio::null());
        let holder = h::spawn_in(Some(&n.client.ns), Some(&n.client.cgroup), cmd)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        // Connections held open: the client's side (outbound) and the server's (inbound).
        let open = |client: bool| match (path, client) {
            (Path3::Ztunnel, true) => zt_open(&n.client, "source"),
            (Path3::Ztunnel, false) => zt_open(&n.server, "destination"),
            (_, true) => metric(
                ADMIN[0],
                "cedille_agent_active_connections{direction=\"outbound\"}",
            ),
            (_, false) => metric(
                server_admin,
                "cedille_agent_active_connections{direction=\"inbound\"}",
            ),
        };
        while open(true) < f64::from(IDLE) || open(false) < f64::from(IDLE) {
            if Instant::now() > deadline {
                bail!(
                    "the idle connections did not all open: {} outbound, {} inbound",
                    open(true),
                    open(false)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        let (_, during) = usage();
        f.bytes_per_conn = during.saturating_sub(before) as f64 / f64::from(IDLE);
        drop(holder);
    }
    super::agent::wait_quiet();
    let conc = CRR_CONCURRENCY.to_string();
    let (c0, _) = usage();
    let carried_before = match agents {
        Some(_) => carried(&n, path)?,
        None => 0.0,
    };
    let crr = n.load(
        probe,
        &["crr", &echo, "--seconds", &secs, "--concurrency", &conc],
        args.seconds,
    )?;
    let connections = get(&crr, "connections")?;
    f.conns_per_s = get(&crr, "per_second")?;
    f.crr_p99_us = get(&crr, "p99_us")?;
    f.agent_us_per_conn = (usage().0 - c0) * 1e6 / connections.max(1.0);
    if get(&crr, "errors")? > 0.0 {
        eprintln!("bench: {}: {crr:?}", path.name());
    }

    if agents.is_some() {
        // Both hops carried every connection.
        let carried = carried(&n, path)? - carried_before;
        if carried < connections {
            bail!(
                "{}: the agents carried {carried} of the {connections} connections made",
                path.name()
            );
        }
    }
    drop(agents);
    drop(n);
    Ok(f)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    h::require_privileges();
    let obj = ebpf::build()?;
    cargo(&["build", "--release", "-p", "cedille-agent"])
        .env(ebpf::OBJECT_ENV, &obj)
        .run()?;
    let release = root().join("target/release");
    let bins = (release.join("cedille-agent"), release.join("cedille-probe"));
    let log = std::env::temp_dir().join("cedille-bench-mesh.log");
    let _ = std::fs::remove_file(&log);
    let ztunnel = std::env::var_os(ZTUNNEL_ENV).map(PathBuf::from);
    let mut paths = Path3::ALL.to_vec();
    if ztunnel.is_some() {
        paths.push(Path3::Ztunnel);
    }
    let results = super::rounds(args, &paths, Path3::name, |path| {
        measure(path, args, &bins, ztunnel.as_deref(), &log)
    })?;
    report(args, &paths, &results);
    Ok(())
}

fn report(args: &Args, paths: &[Path3], results: &[Vec<Figures>]) {
    let med = |i: usize, f: fn(&Figures) -> f64| median(results[i].iter().map(f).collect());
    println!(
        "\ncedille-agent, a pod on each of two nodes; medians of {} rounds of {} s per measurement",
        args.rounds, args.seconds
    );
    println!(
        "{:<20} {:>8} {:>8} {:>9} {:>9} {:>7} {:>16} {:>14} {:>13}",
        "path",
        "p50 µs",
        "p99 µs",
        "conn/s",
        "conn p99",
        "Gbit/s",
        "vCPU per krps",
        "agents µs/conn",
        "bytes/conn"
    );
    for (i, &path) in paths.iter().enumerate() {
        let agent = |v: f64, prec: usize| {
            if path == Path3::Direct {
                "-".to_owned()
            } else {
                format!("{v:.prec$}")
            }
        };
        println!(
            "{:<20} {:>8.1} {:>8.1} {:>9.0} {:>9.1} {:>7.2} {:>16} {:>14} {:>13}",
            path.name(),
            med(i, |f| f.p50_us),
            med(i, |f| f.p99_us),
            med(i, |f| f.conns_per_s),
            med(i, |f| f.crr_p99_us),
            med(i, |f| f.gbit_s),
            agent(med(i, |f| f.vcpu_per_krps), 3),
            agent(med(i, |f| f.agent_us_per_conn), 1),
            agent(med(i, |f| f.bytes_per_conn), 0),
        );
    }
    let (d, m, same) = (0, 1, 2);
    let added_p99_ms = (med(m, |f| f.p99_us) - med(d, |f| f.p99_us)) / 1000.0;
    let added_p50_ms = (med(m, |f| f.p50_us) - med(d, |f| f.p50_us)) / 1000.0;
    let bulk = med(m, |f| f.gbit_s) / med(d, |f| f.gbit_s);
    let vcpu_both = med(m, |f| f.vcpu_per_krps);
    let same_p99_ms = (med(same, |f| f.p99_us) - med(d, |f| f.p99_us)) / 1000.0;
    println!(
        "\nfixed rate: {} req/s over {} connections; connection rate: {CRR_CONCURRENCY} clients; bulk: one stream",
        args.rate,
        args.connections.unwrap_or(8)
    );
    println!("targets (Istio ambient's published figures for ztunnel):");
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "  added p99, both hops: {added_p99_ms:.3} ms (p50 {added_p50_ms:.3} ms); target <= 0.2 ms: {}",
        if added_p99_ms < 0.0 {
            "inconclusive (the direct path's own p99 is above the mesh's: a noisy run)"
        } else {
            mark(added_p99_ms <= 0.2)
        }
    );
    println!(
        "  bulk through the mesh: {:.0}% of direct; target >= 70%: {}",
        bulk * 100.0,
        mark(bulk >= 0.7)
    );
    println!(
        "  agent CPU: {:.3} vCPU per 1,000 req/s per agent ({vcpu_both:.3} for both); target < 0.06: {}",
        vcpu_both / 2.0,
        mark(vcpu_both / 2.0 < 0.06)
    );
    println!(
        "same node through HBONE (one agent, both hops): added p99 {same_p99_ms:.3} ms, {:.3} vCPU per 1,000 req/s, {:.0}% of direct bulk",
        med(same, |f| f.vcpu_per_krps),
        med(same, |f| f.gbit_s) / med(d, |f| f.gbit_s) * 100.0
    );
    let plain = 3;
    println!(
        "the same two hops without TLS or HTTP/2 (--plaintext): added p99 {:.3} ms, {:.3} vCPU per 1,000 req/s per agent, {:.0}% of direct bulk",
        (med(plain, |f| f.p99_us) - med(d, |f| f.p99_us)) / 1000.0,
        med(plain, |f| f.vcpu_per_krps) / 2.0,
        med(plain, |f| f.gbit_s) / med(d, |f| f.gbit_s) * 100.0
    );
    if let Some(z) = paths.iter().position(|&p| p == Path3::Ztunnel) {
        let zt_p99_ms = (med(z, |f| f.p99_us) - med(d, |f| f.p99_us)) / 1000.0;
        println!(
            "ztunnel on the same pods, same run (dedicated mode in each pod; the targets are its published figures):"
        );
        println!(
            "  added p99 {zt_p99_ms:.3} ms (p50 {:.3} ms), {:.3} vCPU per 1,000 req/s per ztunnel, {:.0}% of direct bulk, {:.0} connections/s",
            (med(z, |f| f.p50_us) - med(d, |f| f.p50_us)) / 1000.0,
            med(z, |f| f.vcpu_per_krps) / 2.0,
            med(z, |f| f.gbit_s) / med(d, |f| f.gbit_s) * 100.0,
            med(z, |f| f.conns_per_s),
        );
        println!(
            "  cedille-agent against it: added p99 {:.2}x, CPU per request {:.2}x, bulk {:.2}x, connections/s {:.2}x, memory per connection {:.2}x (below 1 is better for all but bulk and connections/s)",
            added_p99_ms / zt_p99_ms,
            vcpu_both / med(z, |f| f.vcpu_per_krps),
            med(m, |f| f.gbit_s) / med(z, |f| f.gbit_s),
            med(m, |f| f.conns_per_s) / med(z, |f| f.conns_per_s),
            med(m, |f| f.bytes_per_conn) / med(z, |f| f.bytes_per_conn),
        );
    }
}
