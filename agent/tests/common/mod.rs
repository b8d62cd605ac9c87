//! The privileged agent tests' node: pods (network namespace + cgroup laid out like the
//! kubelet's + a `cedille-probe serve` process) and a host outside the mesh on one bridge,
//! and helpers that read the agent's admin endpoint.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use cedille_harness::{self as h, Background, Bridge, Cgroup, Netns, PinDir};

pub const PROBE: &str = env!("CARGO_BIN_EXE_cedille-probe");
pub const AGENT: &str = env!("CARGO_BIN_EXE_cedille-agent");
pub const ADMIN: &str = "127.0.0.1:15921";

pub struct Pod {
    pub name: &'static str,
    pub uid: String,
    pub ip4: &'static str,
    pub ip6: &'static str,
    pub ns: Netns,
    pub cgroup: PathBuf,
    _server: Background,
}

pub fn http_get(path: &str) -> Option<String> {
    h::http_get(ADMIN, path)
}

pub fn config() -> serde_json::Value {
    serde_json::from_str(&http_get("/config").expect("agent /config")).expect("JSON")
}

pub fn pod_state(name: &str) -> String {
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

pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
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
pub fn connect(ns: &Netns, cgroup: Option<&Path>, addr: &str) -> Result<String, String> {
    let mut cmd = Command::new(PROBE);
    cmd.args(["connect", addr, "1500"]);
    let out = h::run_in(Some(ns), cgroup, cmd, Duration::from_secs(10)).expect("run probe");
    if out.success() {
        Ok(out.stdout.trim().to_owned())
    } else {
        Err(out.stderr.trim().to_owned())
    }
}

/// A development CA under `dir/ca` (made once), as `cedille-agent ca init` writes it.
pub fn ca_dir(dir: &Path) -> PathBuf {
    let ca = dir.join("ca");
    if !ca.join("ca.key").exists() {
        let out = Command::new(AGENT)
            .args(["ca", "init"])
            .arg(&ca)
            .output()
            .expect("cedille-agent ca init");
        assert!(
            out.status.success(),
            "ca init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ca
}

pub fn metric(name_and_labels: &str) -> f64 {
    let text = http_get("/metrics").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub fn local_and_peer(line: &str) -> (String, String) {
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
pub fn agent_saw(pod: &str, direction: &str, dst: &str) -> bool {
    config()["recentConnections"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["pod"] == pod && c["direction"] == direction && c["originalDst"] == dst)
}

/// The node: pods a and b in namespace `shop`, c in `legacy`, a host outside the mesh, all
/// on one bridge; each runs `cedille-probe serve`.
pub struct Node {
    pub pods: Vec<Pod>,
    pub ext: Netns,
    _ext_server: Background,
    pub dir: PathBuf,
    pub root: PathBuf,
    pub pins: PinDir,
    _cgroups: Cgroup,
    // Last: the bridge and every veth go with it.
    _node: Netns,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The node with pods a, b and c, whose cgroups are named after fixed UIDs.
pub fn node() -> Node {
    node_with([
        "aaaaaaaa-0000-4000-8000-000000000001",
        "bbbbbbbb-0000-4000-8000-000000000002",
        "cccccccc-0000-4000-8000-000000000003",
    ])
}

/// The node with pods a, b and c whose cgroups are named after `uids` (the kubelet names
/// them after the UIDs the API server gave the pods).
pub fn node_with(uids: [&str; 3]) -> Node {
    h::require_privileges();
    let node = Netns::new("node").unwrap();
    let bridge = Bridge::new(Some(&node)).unwrap();
    let cg = Cgroup::new("kub").unwrap();
    let root = cg.path().to_owned();
    let pins = PinDir::new().unwrap();

    let specs = [
        ("a", uids[0], "10.93.0.1", "fd93::1"),
        ("b", uids[1], "10.93.0.2", "fd93::2"),
        ("c", uids[2], "10.93.0.3", "fd93::3"),
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
            uid: uid.to_owned(),
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
