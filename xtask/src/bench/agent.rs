//! `cargo xtask bench agent`: the cost of meshing a pod, in one run, over three paths
//! between two pods on one node:
//!
//! - **kernel**: the pods are not enrolled and no agent runs;
//! - **iptables**: the agent (with `--no-ebpf`) fed by netfilter REDIRECT rules in each pod,
//!   the way sidecar meshes capture traffic;
//! - **eBPF**: the agent fed by its own programs.
//!
//! A mesh path crosses the agent twice: out of the client pod, into the server pod. Each
//! (round, path) gets a fresh node (namespaces, bridge, cgroups, server), so no TIME_WAIT
//! sockets or conntrack state leak from one measurement into the next. The load comes from
//! `cedille-probe` inside the client pod: fixed-rate request/response latency, connections
//! per second, bulk throughput. The kernel's time in each eBPF program comes from
//! `kernel.bpf_stats_enabled`, read back through the agent's metrics.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use cedille_harness::{self as h, Background, Bridge, Cgroup, Netns, PinDir};

use super::{Args, group_usage, median};
use crate::{
    ebpf,
    util::{cargo, root},
};

pub(crate) const ADMIN: &str = "127.0.0.1:15931";
const CLIENT_IP: &str = "10.94.0.1";
pub(crate) const SERVER_IP: &str = "10.94.0.2";
pub(crate) const ECHO_PORT: u16 = 7000;
const SINK_PORT: u16 = 7001;
/// The agent's mark on its own connections; the iptables rules let them through.
const AGENT_MARK: &str = "0x539";
/// Concurrent clients of the connection-rate measurement (two cores).
const CRR_CONCURRENCY: u32 = 4;

#[derive(Clone, Copy, PartialEq)]
enum Path3 {
    Kernel,
    Iptables,
    Ebpf,
}

impl Path3 {
    const ALL: [Path3; 3] = [Path3::Kernel, Path3::Iptables, Path3::Ebpf];

    fn name(self) -> &'static str {
        match self {
            Path3::Kernel => "kernel (not enrolled)",
            Path3::Iptables => "agent via iptables",
            Path3::Ebpf => "agent via eBPF",
        }
    }
}

/// One path's figures from one round.
#[derive(Default, Clone)]
struct Figures {
    p50_us: f64,
    p99_us: f64,
    conns_per_s: f64,
    crr_p99_us: f64,
    gbit_s: f64,
    /// Agent CPU time per request (rr) and per connection (crr), microseconds.
    agent_us_per_req: f64,
    agent_us_per_conn: f64,
    /// (program, nanoseconds per run, runs).
    programs: Vec<(String, f64, f64)>,
}

struct Pod {
    ns: Netns,
    cgroup: PathBuf,
    iface: String,
}

/// A node: two pods on a bridge, a server in the second, the cgroup root the agent scans.
pub(crate) struct Node {
    // Field order is drop order: pods (their namespaces) before the bridge's namespace.
    client: Pod,
    server: Pod,
    _server_proc: Background,
    /// The client pod's long-lived process (a pause container's role): the agent finds a
    /// pod's network namespace through the processes in its cgroup.
    _pause: Background,
    _bridge_ns: Netns,
    cgroups: Cgroup,
}

pub(crate) fn sysctl(ns: &Netns, settings: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["netns", "exec", ns.name(), "sysctl", "-qw"];
    args.extend_from_slice(settings);
    h::run("ip", &args)
        .map(drop)
        .with_context(|| format!("sysctl {settings:?} in {}", ns.name()))
}

impl Node {
    pub(crate) fn new(probe: &Path) -> anyhow::Result<Node> {
        let bridge_ns = Netns::new("bnd")?;
        let cgroups = Cgroup::new("bnc")?;
        let mut pods = Vec::new();
        for (i, ip) in [CLIENT_IP, SERVER_IP].into_iter().enumerate() {
            let ns = Netns::new("bnp")?;
            let (iface, outside) = h::veth_pair(Some(&ns), Some(&bridge_ns))?;
            ns.addr(&iface, &format!("{ip}/24"))?;
            // Connection-rate runs open tens of thousands of connections: a wide port range
            // and reuse of TIME_WAIT ports, as on a busy node.
            sysctl(
                &ns,
                &[
                    "net.ipv4.ip_local_port_range=1024 65000",
                    "net.ipv4.tcp_tw_reuse=1",
                ],
            )?;
            let cgroup = cgroups
                .path()
                .join(format!("kubepods/besteffort/pod{}/ctr", uid(i)));
            std::fs::create_dir_all(&cgroup)?;
            pods.push((Pod { ns, cgroup, iface }, outside));
        }
        let bridge = Bridge::new(Some(&bridge_ns))?;
        for (_, outside) in &pods {
            bridge.add(outside)?;
        }
        // The bridge goes with its namespace.
        std::mem::forget(bridge);
        let (server, _) = pods.pop().expect("two pods");
        let (client, _) = pods.pop().expect("two pods");
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
        let node = Node {
            client,
            server,
            _server_proc: server_proc,
            _pause: pause,
            _bridge_ns: bridge_ns,
            cgroups,
        };
        // Wait for the server from the client pod (outside its cgroup: nothing enrolled yet).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = node.client.ns.run(|| {
                TcpStream::connect((SERVER_IP, ECHO_PORT)).is_ok()
                    && TcpStream::connect((SERVER_IP, SINK_PORT)).is_ok()
            })?;
            if up {
                return Ok(node);
            }
            if Instant::now() > deadline {
                bail!("the benchmark server did not come up in the server pod");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The capture rules of a sidecar mesh, in each pod: outbound TCP to the agent's
    /// outbound port (except the agent's own, marked connections and loopback), inbound TCP
    /// from the pod's interface to the inbound port.
    fn iptables(&self) -> anyhow::Result<()> {
        for pod in [&self.client, &self.server] {
            let rules: [&[&str]; 4] = [
                &[
                    "-A", "OUTPUT", "-p", "tcp", "-m", "mark", "--mark", AGENT_MARK, "-j", "RETURN",
                ],
                &[
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "-d",
                    "127.0.0.0/8",
                    "-j",
                    "RETURN",
                ],
                &[
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    "15001",
                ],
                &[
                    "-A",
                    "PREROUTING",
                    "-p",
                    "tcp",
                    "-i",
                    &pod.iface,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    "15006",
                ],
            ];
            for rule in rules {
                let mut args = vec!["netns", "exec", pod.ns.name(), "iptables", "-t", "nat"];
                args.extend_from_slice(rule);
                h::run("ip", &args).context(
                    "adding iptables rules in the pod (is iptables installed? run scripts/setup.sh --bench)",
                )?;
            }
        }
        Ok(())
    }

    fn manifests(&self, dir: &Path) -> anyhow::Result<()> {
        let mut docs = vec![
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench, labels: {cedille.io/mesh: enabled}}\n".to_owned(),
        ];
        for (i, (name, ip)) in [("client", CLIENT_IP), ("server", SERVER_IP)]
            .into_iter()
            .enumerate()
        {
            docs.push(format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, uid: {}}}\nspec: {{nodeName: bench-node}}\nstatus: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n",
                uid(i)
            ));
        }
        std::fs::write(dir.join("pods.yaml"), docs.join("---\n"))?;
        Ok(())
    }

    /// Runs `cedille-probe ARGS` in the client pod's network namespace but outside its
    /// cgroup, so the agent does not capture it: a host outside the mesh. Its output is
    /// not read.
    pub(crate) fn load_outside_mesh(
        &self,
        probe: &Path,
        args: &[&str],
        seconds: u64,
    ) -> anyhow::Result<()> {
        let mut cmd = Command::new(probe);
        cmd.args(args);
        h::run_in(
            Some(&self.client.ns),
            None,
            cmd,
            Duration::from_secs(seconds + 5),
        )?;
        Ok(())
    }

    /// Runs `cedille-probe ARGS` in the client pod and returns its `key=value` line.
    pub(crate) fn load(
        &self,
        probe: &Path,
        args: &[&str],
        seconds: u64,
    ) -> anyhow::Result<Vec<(String, f64)>> {
        load_in(&self.client.ns, &self.client.cgroup, probe, args, seconds)
    }
}

/// `cedille-agent ca init DIR/ca`: a CA for the agents of a measurement.
pub(crate) fn ca_init(bin: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let ca = dir.join("ca");
    let out = Command::new(bin).args(["ca", "init"]).arg(&ca).output()?;
    if !out.status.success() {
        bail!("ca init: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(ca)
}

/// Runs `cedille-probe ARGS` in a pod (namespace and cgroup) and returns its `key=value`
/// pairs.
pub(crate) fn load_in(
    ns: &Netns,
    cgroup: &Path,
    probe: &Path,
    args: &[&str],
    seconds: u64,
) -> anyhow::Result<Vec<(String, f64)>> {
    let mut cmd = Command::new(probe);
    cmd.args(args);
    let out = h::run_in(
        Some(ns),
        Some(cgroup),
        cmd,
        Duration::from_secs(seconds + 60),
    )?;
    if !out.success() {
        bail!("cedille-probe {args:?} failed: {}", out.stderr.trim());
    }
    Ok(out
        .stdout
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

fn uid(i: usize) -> String {
    format!("0b0b0b0b-0000-4000-8000-00000000000{i}")
}

pub(crate) fn get(kv: &[(String, f64)], key: &str) -> anyhow::Result<f64> {
    kv.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .with_context(|| format!("no {key} in the load generator's output"))
}

fn admin_get(path: &str) -> Option<String> {
    h::http_get(ADMIN, path)
}

/// `name{labels} value` lines of the agent's metrics whose name starts with `prefix`.
fn metrics(prefix: &str) -> Vec<(String, f64)> {
    admin_get("/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn metric(name: &str) -> f64 {
    metrics(name)
        .into_iter()
        .find(|(k, _)| k == name)
        .map_or(0.0, |(_, v)| v)
}

pub(crate) struct Agent {
    proc: Background,
    _pins: PinDir,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Agent {
    /// Starts the agent on `node`: in plaintext (this benchmark measures capture, eBPF
    /// against iptables; `bench mesh` measures mutual TLS), or with `mtls`, a CA of its own
    /// and a policy denying the server's port 7002 (the dashboards check shows it all).
    pub(crate) fn start(
        bin: &Path,
        node: &Node,
        no_ebpf: bool,
        mtls: bool,
        log: &Path,
    ) -> anyhow::Result<Agent> {
        let dir = TempDir(std::env::temp_dir().join(format!(
            "cedille-bench-agent-{}-{}",
            std::process::id(),
            no_ebpf
        )));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0)?;
        node.manifests(&dir.0)?;
        let identity = if mtls {
            let ca = ca_init(bin, &dir.0)?;
            std::fs::write(
                dir.0.join("policy.yaml"),
                "apiVersion: cedille.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: no-7002, namespace: bench}\nspec: {action: Deny, rules: [{ports: [7002]}]}\n",
            )?;
            vec!["--ca-dir".into(), ca.into_os_string()]
        } else {
            vec!["--plaintext".into()]
        };
        let pins = PinDir::new()?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config-dir")
            .arg(&dir.0)
            .args(["--node-name", "bench-node", "--cgroup-root"])
            .arg(node.cgroups.path())
            .args(["--admin-addr", ADMIN, "--bpf-pin-dir"])
            .arg(pins.path())
            .args(&identity)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(log)?,
            );
        if no_ebpf {
            cmd.arg("--no-ebpf");
        }
        let proc = h::spawn_in(None, None, cmd)?;
        let mut agent = Agent {
            proc,
            _pins: pins,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if agent.proc.exited() {
                bail!("the agent exited; see {}", log.display());
            }
            let enrolled = admin_get("/config")
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .map(|c| {
                    c["pods"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|p| p["state"] == "enrolled")
                        .count()
                })
                .unwrap_or(0);
            if enrolled == 2 {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not enroll both pods: {}; see {}",
                    admin_get("/config").unwrap_or_default(),
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cpu(&self) -> f64 {
        group_usage(self.proc.id()).0
    }
}

/// Sets `kernel.bpf_stats_enabled` for the benchmark's duration, restoring it after.
pub(crate) struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub(crate) fn enable() -> anyhow::Result<BpfStats> {
        let old = std::fs::read_to_string(BPF_STATS).context(BPF_STATS)?;
        std::fs::write(BPF_STATS, "1").context(BPF_STATS)?;
        Ok(BpfStats(old.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.0);
    }
}

/// Busy and total jiffies of all CPUs, from `/proc/stat`.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Waits until the machine is idle: tearing down the previous node's namespaces (tens of
/// thousands of sockets) runs in kernel workers for seconds and would land in the next
/// measurement's tail latency.
pub(crate) fn wait_quiet() {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet = 0;
    while Instant::now() < deadline {
        let (b0, t0) = cpu_jiffies();
        std::thread::sleep(Duration::from_millis(200));
        let (b1, t1) = cpu_jiffies();
        let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        quiet = if busy < 0.05 { quiet + 1 } else { 0 };
        if quiet == 3 {
            return;
        }
    }
    eprintln!("bench: WARNING: the machine did not go idle; figures may be noisy");
}

fn measure(
    path: Path3,
    args: &Args,
    bins: &(PathBuf, PathBuf),
    log: &Path,
) -> anyhow::Result<Figures> {
    let (agent_bin, probe) = bins;
    let probe = probe.as_path();
    let node = Node::new(probe)?;
    let agent = match path {
        Path3::Kernel => None,
        Path3::Iptables => {
            node.iptables()?;
            Some(Agent::start(agent_bin, &node, true, false, log)?)
        }
        Path3::Ebpf => Some(Agent::start(agent_bin, &node, false, false, log)?),
    };
    let cpu = || agent.as_ref().map_or(0.0, Agent::cpu);
    let secs = args.seconds.to_string();
    let echo = format!("{SERVER_IP}:{ECHO_PORT}");
    let sink = format!("{SERVER_IP}:{SINK_PORT}");
    let mut f = Figures::default();

    let rate = args.rate.to_string();
    let conns = args.connections.unwrap_or(8).to_string();
    wait_quiet();
    let c0 = cpu();
    let rr = node.load(
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
    let requests = get(&rr, "requests")?;
    if get(&rr, "errors")? > 0.0 || requests < 0.95 * get(&rr, "expected")? {
        bail!("{}: the fixed-rate run fell short: {rr:?}", path.name());
    }
    f.p50_us = get(&rr, "p50_us")?;
    f.p99_us = get(&rr, "p99_us")?;
    f.agent_us_per_req = (cpu() - c0) * 1e6 / get(&rr, "sent")?;

    wait_quiet();
    let bulk = node.load(probe, &["bulk", &sink, "--seconds", &secs], args.seconds)?;
    f.gbit_s = get(&bulk, "gbit_per_second")?;

    let conc = CRR_CONCURRENCY.to_string();
    wait_quiet();
    let c0 = cpu();
    let crr = node.load(
        probe,
        &["crr", &echo, "--seconds", &secs, "--concurrency", &conc],
        args.seconds,
    )?;
    let connections = get(&crr, "connections")?;
    f.conns_per_s = get(&crr, "per_second")?;
    f.crr_p99_us = get(&crr, "p99_us")?;
    f.agent_us_per_conn = (cpu() - c0) * 1e6 / connections.max(1.0);
    if get(&crr, "errors")? > 0.0 {
        eprintln!("bench: {}: {crr:?}", path.name());
    }

    if agent.is_some() {
        // The traffic really went through the agent, both hops.
        let captured = |d: &str| {
            metric(&format!(
                "cedille_agent_captured_connections_total{{direction=\"{d}\"}}"
            ))
        };
        for d in ["outbound", "inbound"] {
            if captured(d) < connections {
                let rules = h::run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        node.client.ns.name(),
                        "iptables",
                        "-t",
                        "nat",
                        "-L",
                        "-n",
                        "-v",
                    ],
                )
                .unwrap_or_default();
                bail!(
                    "{}: the agent captured {} {d} connections, fewer than the {connections} made; metrics:\n{:?}\nclient pod's nat table:\n{rules}",
                    path.name(),
                    captured(d),
                    metrics("cedille_agent_c"),
                );
            }
        }
    }
    if path == Path3::Ebpf {
        let ns = metrics("cedille_agent_bpf_program_run_time_ns");
        let runs = metrics("cedille_agent_bpf_program_runs");
        for (k, t) in ns {
            let Some(program) = k.split('"').nth(1) else {
                continue;
            };
            let n = runs
                .iter()
                .find(|(rk, _)| rk.contains(&format!("\"{program}\"")))
                .map_or(0.0, |(_, v)| *v);
            if n > 0.0 {
                f.programs.push((program.to_owned(), t / n, n));
            }
        }
        f.programs.sort_by(|a, b| a.0.cmp(&b.0));
        if f.programs.is_empty() {
            bail!("no eBPF program statistics: is kernel.bpf_stats_enabled honoured?");
        }
    }
    drop(agent);
    drop(node);
    Ok(f)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    h::require_privileges();
    if h::run("iptables", &["-V"]).is_err() {
        bail!("iptables is missing: run scripts/setup.sh --bench");
    }
    let obj = ebpf::build()?;
    cargo(&["build", "--release", "-p", "cedille-agent"])
        .env(ebpf::OBJECT_ENV, &obj)
        .run()?;
    let release = root().join("target/release");
    let bins = (release.join("cedille-agent"), release.join("cedille-probe"));
    let log = std::env::temp_dir().join("cedille-bench-agent.log");
    let _ = std::fs::remove_file(&log);
    let _stats = BpfStats::enable()?;

    let results = super::rounds(args, &Path3::ALL, Path3::name, |path| {
        measure(path, args, &bins, &log)
    })?;
    report(args, &results);
    Ok(())
}

fn report(args: &Args, results: &[Vec<Figures>]) {
    let med = |i: usize, f: fn(&Figures) -> f64| median(results[i].iter().map(f).collect());
    println!(
        "\ncedille-agent, two pods on one node; medians of {} rounds of {} s per measurement",
        args.rounds, args.seconds
    );
    println!(
        "{:<24} {:>9} {:>9} {:>10} {:>10} {:>8} {:>12} {:>12}",
        "path", "p50 µs", "p99 µs", "conn/s", "conn p99", "Gbit/s", "agent µs/req", "agent µs/conn"
    );
    for (i, path) in Path3::ALL.into_iter().enumerate() {
        let agent = |v: f64| {
            if path == Path3::Kernel {
                "-".to_owned()
            } else {
                format!("{v:.1}")
            }
        };
        println!(
            "{:<24} {:>9.1} {:>9.1} {:>10.0} {:>10.1} {:>8.2} {:>12} {:>12}",
            path.name(),
            med(i, |f| f.p50_us),
            med(i, |f| f.p99_us),
            med(i, |f| f.conns_per_s),
            med(i, |f| f.crr_p99_us),
            med(i, |f| f.gbit_s),
            agent(med(i, |f| f.agent_us_per_req)),
            agent(med(i, |f| f.agent_us_per_conn)),
        );
    }
    let (k, ipt, bpf) = (0, 1, 2);
    println!(
        "\nfixed rate: {} req/s over {} connections; connection rate: {CRR_CONCURRENCY} clients; bulk: one stream",
        args.rate,
        args.connections.unwrap_or(8)
    );
    println!("ratios (eBPF against iptables, and against the kernel alone):");
    println!(
        "  connections per second: {:.2}x iptables, {:.2}x kernel   (target >= 1.10x iptables)",
        med(bpf, |f| f.conns_per_s) / med(ipt, |f| f.conns_per_s),
        med(bpf, |f| f.conns_per_s) / med(k, |f| f.conns_per_s),
    );
    println!(
        "  round trip p50: {:.2}x iptables, p99: {:.2}x iptables   (target <= 1.00x)",
        med(bpf, |f| f.p50_us) / med(ipt, |f| f.p50_us),
        med(bpf, |f| f.p99_us) / med(ipt, |f| f.p99_us),
    );
    println!(
        "  bulk throughput: {:.2}x iptables, {:.2}x kernel",
        med(bpf, |f| f.gbit_s) / med(ipt, |f| f.gbit_s),
        med(bpf, |f| f.gbit_s) / med(k, |f| f.gbit_s),
    );
    for (i, name) in [(ipt, "iptables"), (bpf, "eBPF")] {
        println!(
            "  added per agent hop ({name}): p50 {:.1} µs, p99 {:.1} µs   (target p99 < 100 µs)",
            (med(i, |f| f.p50_us) - med(k, |f| f.p50_us)) / 2.0,
            (med(i, |f| f.p99_us) - med(k, |f| f.p99_us)) / 2.0,
        );
    }
    println!("eBPF programs, kernel time per run (kernel.bpf_stats_enabled):");
    let mut names: Vec<String> = results[bpf]
        .iter()
        .flat_map(|f| f.programs.iter().map(|p| p.0.clone()))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let per_run = median(
            results[bpf]
                .iter()
                .flat_map(|f| f.programs.iter().filter(|p| p.0 == name).map(|p| p.1))
                .collect(),
        );
        let runs = median(
            results[bpf]
                .iter()
                .flat_map(|f| f.programs.iter().filter(|p| p.0 == name).map(|p| p.2))
                .collect(),
        );
        let target = if name.contains("connect") {
            "   (target < 500 ns)"
        } else {
            ""
        };
        println!("  {name:<24} {per_run:>7.0} ns per run over {runs:>8.0} runs{target}");
    }
}
