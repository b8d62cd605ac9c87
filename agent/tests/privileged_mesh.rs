//! Privileged end-to-end test of the agent binary on a "node": three pods (network
//! namespace + cgroup laid out like the kubelet's + a server process), two enrolled and one
//! not, plus a host outside the mesh, all on one bridge. Run as root through
//! `cargo xtask test`; plain `cargo test` lists it as ignored.
//!
//! Servers are `cedille-probe serve`, which answers every connection with the addresses it
//! sees, so each check reads from the server's side which path a connection took; the
//! agent's side is read from its `/config` (original destinations it recovered) and metrics.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cedille_harness::{self as h, Background, Bridge, Cgroup, Netns, PinDir};

const PROBE: &str = env!("CARGO_BIN_EXE_cedille-probe");
const AGENT: &str = env!("CARGO_BIN_EXE_cedille-agent");
const ADMIN: &str = "127.0.0.1:15921";

struct Pod {
    name: &'static str,
    uid: &'static str,
    ip4: &'static str,
    ip6: &'static str,
    ns: Netns,
    cgroup: PathBuf,
    _server: Background,
}

fn http_get(path: &str) -> Option<String> {
    h::http_get(ADMIN, path)
}

fn config() -> serde_json::Value {
    serde_json::from_str(&http_get("/config").expect("agent /config")).expect("JSON")
}

fn pod_state(name: &str) -> String {
    let Some(text) = http_get("/config") else {
        return String::new();
    };
    let config: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    config["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .map(|p| p["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "timed out waiting for {what}; agent config: {}",
        http_get("/config").unwrap_or_default()
    );
}

/// Connects from inside `ns` (and `cgroup`, as a process of that pod would) and returns
/// the server's line `local=… peer=…`, or the error.
fn connect(ns: &Netns, cgroup: Option<&Path>, addr: &str) -> Result<String, String> {
    let mut cmd = Command::new(PROBE);
    cmd.args(["connect", addr, "1500"]);
    let out = h::run_in(Some(ns), cgroup, cmd, Duration::from_secs(10)).expect("run probe");
    if out.success() {
        Ok(out.stdout.trim().to_owned())
    } else {
        Err(out.stderr.trim().to_owned())
    }
}

fn manifests(dir: &Path, pods: &[&Pod], mesh_enabled: bool) {
    let label = if mesh_enabled { "enabled" } else { "disabled" };
    let mut docs = vec![
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{cedille.io/mesh: {label}}}}}\n"
        ),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n".to_owned(),
    ];
    for p in pods {
        let ns = if p.name == "c" { "legacy" } else { "shop" };
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {ns}, uid: {}}}\nspec: {{nodeName: node-1}}\nstatus: {{podIP: {}, podIPs: [{{ip: {}}}, {{ip: {}}}]}}\n",
            p.name, p.uid, p.ip4, p.ip4, p.ip6
        ));
    }
    // A document that does not validate: reported, and nothing else is affected.
    docs.push("apiVersion: v1\nkind: Pod\nmetadata: {name: broken, namespace: shop}\nspec: {nodeName: node-1}\n".to_owned());
    let tmp = dir.join(".pods.yaml.tmp");
    std::fs::write(&tmp, docs.join("---\n")).unwrap();
    std::fs::rename(&tmp, dir.join("pods.yaml")).unwrap();
}

fn start_agent(node: &Node, extra: &[&str]) -> Background {
    let mut cmd = Command::new(AGENT);
    cmd.args(["--config-dir"])
        .arg(&node.dir)
        .args(["--node-name", "node-1", "--cgroup-root"])
        .arg(&node.root)
        .args(["--admin-addr", ADMIN, "--bpf-pin-dir"])
        .arg(node.pins.path())
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    h::spawn_in(None, None, cmd).expect("start agent")
}

fn metric(name_and_labels: &str) -> f64 {
    let text = http_get("/metrics").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn local_and_peer(line: &str) -> (String, String) {
    let mut local = String::new();
    let mut peer = String::new();
    for part in line.split_whitespace() {
        if let Some(v) = part.strip_prefix("local=") {
            local = v.to_owned();
        }
        if let Some(v) = part.strip_prefix("peer=") {
            peer = v
                .rsplit_once(':')
                .map(|(ip, _)| ip.trim_matches(['[', ']']).to_owned())
                .unwrap_or_default();
        }
    }
    (local, peer)
}

/// Whether the agent recorded a connection of `pod` in `direction` to `dst`.
fn agent_saw(pod: &str, direction: &str, dst: &str) -> bool {
    config()["recentConnections"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["pod"] == pod && c["direction"] == direction && c["originalDst"] == dst)
}

/// The node: pods a and b in namespace `shop`, c in `legacy`, a host outside the mesh, all
/// on one bridge; each runs `cedille-probe serve`.
struct Node {
    pods: Vec<Pod>,
    ext: Netns,
    _ext_server: Background,
    dir: PathBuf,
    root: PathBuf,
    pins: PinDir,
    _cgroups: Cgroup,
    // Last: the bridge and every veth go with it.
    _node: Netns,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node() -> Node {
    h::require_privileges();
    let node = Netns::new("node").unwrap();
    let bridge = Bridge::new(Some(&node)).unwrap();
    let cg = Cgroup::new("kub").unwrap();
    let root = cg.path().to_owned();
    let pins = PinDir::new().unwrap();

    let specs = [
        (
            "a",
            "aaaaaaaa-0000-4000-8000-000000000001",
            "10.93.0.1",
            "fd93::1",
        ),
        (
            "b",
            "bbbbbbbb-0000-4000-8000-000000000002",
            "10.93.0.2",
            "fd93::2",
        ),
        (
            "c",
            "cccccccc-0000-4000-8000-000000000003",
            "10.93.0.3",
            "fd93::3",
        ),
    ];
    let mut pods = Vec::new();
    for (i, (name, uid, ip4, ip6)) in specs.into_iter().enumerate() {
        let ns = Netns::new(name).unwrap();
        ns.ip(&["link", "set", "lo", "up"]).unwrap();
        let (inside, outside) = h::veth_pair(Some(&ns), Some(&node)).unwrap();
        ns.addr(&inside, &format!("{ip4}/24")).unwrap();
        ns.addr(&inside, &format!("{ip6}/64")).unwrap();
        bridge.add(&outside).unwrap();
        // cgroupfs driver for a and c, systemd driver for b.
        let cgroup = if i == 1 {
            root.join(format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/ctr",
                uid.replace('-', "_")
            ))
        } else {
            root.join(format!("kubepods/besteffort/pod{uid}/ctr"))
        };
        std::fs::create_dir_all(&cgroup).unwrap();
        let mut cmd = Command::new(PROBE);
        cmd.args(["serve", "0.0.0.0:8080", "[::]:8081"]);
        let server = h::spawn_in(Some(&ns), Some(&cgroup), cmd).unwrap();
        pods.push(Pod {
            name,
            uid,
            ip4,
            ip6,
            ns,
            cgroup,
            _server: server,
        });
    }
    // A host outside the mesh.
    let ext = Netns::new("ext").unwrap();
    ext.ip(&["link", "set", "lo", "up"]).unwrap();
    let (inside, outside) = h::veth_pair(Some(&ext), Some(&node)).unwrap();
    ext.addr(&inside, "10.93.0.100/24").unwrap();
    ext.addr(&inside, "fd93::100/64").unwrap();
    bridge.add(&outside).unwrap();
    let mut cmd = Command::new(PROBE);
    cmd.args(["serve", "0.0.0.0:9090", "[::]:9091"]);
    let _ext_server = h::spawn_in(Some(&ext), None, cmd).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Deleted with the node's namespace.
    std::mem::forget(bridge);
    let dir = std::env::temp_dir().join(format!("cedille-mesh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Node {
        pods,
        ext,
        _ext_server,
        dir,
        root,
        pins,
        _cgroups: cg,
        _node: node,
    }
}

#[test]
#[ignore = "privileged: run through `cargo xtask test` as root"]
fn privileged_node_with_three_pods() {
    let n = node();
    let (pods, ext, dir) = (&n.pods, &n.ext, &n.dir);
    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
    manifests(dir, &[a, b, c], true);
    let mut agent = start_agent(&n, &[]);
    wait_for("a and b enrolled", || {
        pod_state("a") == "enrolled" && pod_state("b") == "enrolled"
    });
    assert_eq!(pod_state("c"), "not-enrolled");
    let errors = config()["invalidManifests"].clone();
    assert!(
        errors.to_string().contains("metadata.uid"),
        "bad manifest reported: {errors}"
    );

    // Enrolled to enrolled: through a's agent (outbound) and b's agent (inbound), which
    // delivers from b's own address over loopback.
    let line = connect(&a.ns, Some(&a.cgroup), "10.93.0.2:8080").expect("a -> b");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.2:8080".into(), "10.93.0.2".into()),
        "{line}"
    );
    assert!(agent_saw("shop/a", "outbound", "10.93.0.2:8080"));
    assert!(agent_saw("shop/b", "inbound", "10.93.0.2:8080"));
    // IPv6 too.
    let line = connect(&a.ns, Some(&a.cgroup), "[fd93::2]:8081").expect("a -> b over IPv6");
    assert_eq!(
        local_and_peer(&line),
        ("[fd93::2]:8081".into(), "fd93::2".into()),
        "{line}"
    );
    assert!(agent_saw("shop/a", "outbound", "[fd93::2]:8081"));

    // Enrolled to outside: through a's agent, unchanged on arrival (source a's address).
    let line = connect(&a.ns, Some(&a.cgroup), "10.93.0.100:9090").expect("a -> ext");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.100:9090".into(), "10.93.0.1".into()),
        "{line}"
    );
    assert!(agent_saw("shop/a", "outbound", "10.93.0.100:9090"));
    let line = connect(&a.ns, Some(&a.cgroup), "[fd93::100]:9091").expect("a -> ext over IPv6");
    assert!(line.starts_with("local=[fd93::100]:9091"), "{line}");
    assert!(agent_saw("shop/a", "outbound", "[fd93::100]:9091"));

    // Outside to enrolled: captured inbound.
    let line = connect(ext, None, "10.93.0.1:8080").expect("ext -> a");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.1:8080".into(), "10.93.0.1".into()),
        "{line}"
    );
    assert!(agent_saw("shop/a", "inbound", "10.93.0.1:8080"));

    // The non-enrolled pod is untouched both ways.
    let captured = metric("cedille_agent_captured_connections_total{direction=\"outbound\"}");
    // a -> b and a -> ext, each over IPv4 and IPv6.
    assert!(captured >= 4.0, "outbound connections captured: {captured}");
    assert!(
        metric("cedille_agent_captured_connections_total{direction=\"inbound\"}") >= 3.0,
        "inbound connections captured"
    );
    let line = connect(&c.ns, Some(&c.cgroup), "10.93.0.100:9090").expect("c -> ext");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.100:9090".into(), "10.93.0.3".into()),
        "{line}"
    );
    let line = connect(ext, None, "10.93.0.3:8080").expect("ext -> c");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.3:8080".into(), "10.93.0.100".into()),
        "{line}"
    );
    assert_eq!(
        metric("cedille_agent_captured_connections_total{direction=\"outbound\"}"),
        captured
    );
    assert_eq!(metric("cedille_agent_enrolled_pods"), 2.0);

    // kill -9: nothing enrolled gets through unproxied, in either direction.
    agent.kill();
    for (from, cgroup, to) in [
        (&a.ns, Some(&a.cgroup), "10.93.0.100:9090"),
        (&a.ns, Some(&a.cgroup), "[fd93::100]:9091"),
        (&a.ns, Some(&a.cgroup), "10.93.0.2:8080"),
        (ext, None, "10.93.0.2:8080"),
    ] {
        let r = connect(from, cgroup.map(PathBuf::as_path), to);
        assert!(r.is_err(), "{to} reachable while the agent is down: {r:?}");
    }
    // Others still are.
    connect(&c.ns, Some(&c.cgroup), "10.93.0.100:9090").expect("c -> ext with the agent down");

    // Restart: the pins are adopted and traffic flows again.
    let mut agent = start_agent(&n, &[]);
    wait_for("a and b enrolled again", || {
        pod_state("a") == "enrolled" && pod_state("b") == "enrolled"
    });
    let line = connect(&a.ns, Some(&a.cgroup), "10.93.0.2:8080").expect("a -> b after restart");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.2:8080".into(), "10.93.0.2".into()),
        "{line}"
    );
    let line = connect(ext, None, "10.93.0.2:8080").expect("ext -> b after restart");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.2:8080".into(), "10.93.0.2".into()),
        "{line}"
    );

    // Un-enroll by label: everything for those pods goes, traffic is direct again.
    manifests(dir, &[a, b, c], false);
    wait_for("a and b un-enrolled", || {
        pod_state("a") == "not-enrolled" && pod_state("b") == "not-enrolled"
    });
    let line = connect(ext, None, "10.93.0.2:8080").expect("ext -> b un-enrolled");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.2:8080".into(), "10.93.0.100".into()),
        "{line}"
    );
    let line = connect(&a.ns, Some(&a.cgroup), "10.93.0.100:9090").expect("a -> ext un-enrolled");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.100:9090".into(), "10.93.0.1".into()),
        "{line}"
    );
    for map in [
        "targets",
        "inbound_addrs",
        "inbound_sockets",
        "original_dst",
    ] {
        assert_eq!(
            metric(&format!("cedille_agent_bpf_map_entries{{map=\"{map}\"}}")),
            0.0,
            "{map} entries left"
        );
    }
    let links = std::fs::read_dir(n.pins.path().join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(links, 0, "links left pinned");
    agent.kill();
}

#[test]
#[ignore = "privileged: run through `cargo xtask test` as root"]
fn privileged_fail_open_policy_bypasses_a_dead_agent() {
    let n = node();
    let (a, b, c) = (&n.pods[0], &n.pods[1], &n.pods[2]);
    manifests(&n.dir, &[a, b, c], true);
    let open = ["--failure-policy", "open"];
    let mut agent = start_agent(&n, &open);
    wait_for("a and b enrolled", || {
        pod_state("a") == "enrolled" && pod_state("b") == "enrolled"
    });
    // Up: captured as under fail-closed (inbound delivered from the pod's own address).
    let line = connect(&n.ext, None, "10.93.0.1:8080").expect("ext -> a");
    assert_eq!(local_and_peer(&line).1, "10.93.0.1", "{line}");
    connect(&a.ns, Some(&a.cgroup), "10.93.0.100:9090").expect("a -> ext");
    assert!(agent_saw("shop/a", "outbound", "10.93.0.100:9090"));

    // Down: connections go direct instead of failing, both ways, over IPv4 and IPv6.
    agent.kill();
    let line = connect(&n.ext, None, "10.93.0.1:8080").expect("ext -> a, agent down");
    assert_eq!(local_and_peer(&line).1, "10.93.0.100", "{line}");
    let line = connect(&n.ext, None, "[fd93::1]:8081").expect("ext -> a over IPv6, agent down");
    assert_eq!(local_and_peer(&line).1, "fd93::100", "{line}");
    let line = connect(&a.ns, Some(&a.cgroup), "10.93.0.100:9090").expect("a -> ext, agent down");
    assert_eq!(local_and_peer(&line).1, "10.93.0.1", "{line}");
    let line = connect(&a.ns, Some(&a.cgroup), "[fd93::100]:9091")
        .expect("a -> ext over IPv6, agent down");
    assert_eq!(local_and_peer(&line).1, "fd93::1", "{line}");
    // a -> b: out of a and into b directly (through b's agent, the peer would be b itself).
    let line = connect(&a.ns, Some(&a.cgroup), "10.93.0.2:8080").expect("a -> b, agent down");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.2:8080".into(), "10.93.0.1".into()),
        "{line}"
    );

    // Back up: the pins are adopted and traffic is captured again.
    let mut agent = start_agent(&n, &open);
    wait_for("a and b enrolled again", || {
        pod_state("a") == "enrolled" && pod_state("b") == "enrolled"
    });
    let line = connect(&n.ext, None, "10.93.0.1:8080").expect("ext -> a after restart");
    assert_eq!(local_and_peer(&line).1, "10.93.0.1", "{line}");
    connect(&a.ns, Some(&a.cgroup), "10.93.0.100:9090").expect("a -> ext after restart");
    assert!(agent_saw("shop/a", "outbound", "10.93.0.100:9090"));
    agent.kill();
}
