//! Privileged end-to-end test of the agent binary on a "node": three pods (network
//! namespace + cgroup laid out like the kubelet's + a server process), two enrolled and one
//! not, plus a host outside the mesh, all on one bridge. Run as root through
//! `cargo xtask test`; plain `cargo test` lists it as ignored.
//!
//! Servers are `cedille-probe serve`, which answers every connection with the addresses it
//! sees, so each check reads from the server's side which path a connection took; the
//! agent's side is read from its `/config` (original destinations it recovered) and metrics.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use cedille_harness::{self as h, Background};
use common::*;

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
        .arg("--ca-dir")
        .arg(ca_dir(&node.dir))
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("CEDILLE_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null());
    h::spawn_in(None, None, cmd).expect("start agent")
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

    // Enrolled to enrolled: through a's agent (outbound) and b's agent (inbound) over
    // HBONE; b's agent delivers with a's address as the source.
    let line = connect(&a.ns, Some(&a.cgroup), "10.93.0.2:8080").expect("a -> b");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.2:8080".into(), "10.93.0.1".into()),
        "{line}"
    );
    assert!(agent_saw("shop/a", "outbound", "10.93.0.2:8080"));
    assert!(agent_saw("shop/b", "inbound", "10.93.0.2:8080"));
    // IPv6 too.
    let line = connect(&a.ns, Some(&a.cgroup), "[fd93::2]:8081").expect("a -> b over IPv6");
    assert_eq!(
        local_and_peer(&line),
        ("[fd93::2]:8081".into(), "fd93::1".into()),
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

    // Outside to enrolled: captured inbound, delivered with the client's address.
    let line = connect(ext, None, "10.93.0.1:8080").expect("ext -> a");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.1:8080".into(), "10.93.0.100".into()),
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
        ("10.93.0.2:8080".into(), "10.93.0.1".into()),
        "{line}"
    );
    let line = connect(ext, None, "10.93.0.2:8080").expect("ext -> b after restart");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.2:8080".into(), "10.93.0.100".into()),
        "{line}"
    );
    assert!(agent_saw("shop/b", "inbound", "10.93.0.2:8080"));

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
    // Up: captured as under fail-closed.
    let line = connect(&n.ext, None, "10.93.0.1:8080").expect("ext -> a");
    assert_eq!(local_and_peer(&line).1, "10.93.0.100", "{line}");
    assert!(agent_saw("shop/a", "inbound", "10.93.0.1:8080"));
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
    // a -> b: out of a and into b directly.
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
    assert_eq!(local_and_peer(&line).1, "10.93.0.100", "{line}");
    connect(&a.ns, Some(&a.cgroup), "10.93.0.100:9090").expect("a -> ext after restart");
    assert!(agent_saw("shop/a", "outbound", "10.93.0.100:9090"));
    agent.kill();
}

/// The capabilities the Helm chart gives the agent's container (the `add:` list of
/// `helm/cedille/templates/agent.yaml`), read from the chart so the two cannot drift.
fn chart_capabilities() -> Vec<String> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/cedille/templates/agent.yaml");
    let text = std::fs::read_to_string(&chart).expect("the chart's agent template");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("add: ["))
        .expect("an `add: [...]` capability list");
    let list = line
        .split_once('[')
        .unwrap()
        .1
        .trim_end()
        .trim_end_matches(']');
    list.split(',').map(|c| c.trim().to_lowercase()).collect()
}

#[test]
#[ignore = "privileged: run through `cargo xtask test` as root"]
fn privileged_agent_works_with_only_the_charts_capabilities() {
    let n = node();
    let (a, b) = (&n.pods[0], &n.pods[1]);
    manifests(&n.dir, &[a, b], true);
    let caps = chart_capabilities();
    assert!(!caps.is_empty());
    let plus: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    // Every other capability dropped from all sets, as the container runtime does.
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--bounding-set=-all,{}", plus.join(",")))
        .arg(format!("--inh-caps=-all,{}", plus.join(",")))
        .arg(format!("--ambient-caps=-all,{}", plus.join(",")))
        .arg(AGENT)
        .args(["--config-dir"])
        .arg(&n.dir)
        .args(["--node-name", "node-1", "--cgroup-root"])
        .arg(&n.root)
        .args(["--admin-addr", ADMIN, "--bpf-pin-dir"])
        .arg(n.pins.path())
        .arg("--ca-dir")
        .arg(ca_dir(&n.dir))
        .env(
            "RUST_LOG",
            std::env::var("CEDILLE_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null());
    let _agent = h::spawn_in(None, None, cmd).expect("start agent under setpriv");
    wait_for("a and b enrolled with the chart's capabilities", || {
        pod_state("a") == "enrolled" && pod_state("b") == "enrolled"
    });
    let line = connect(&a.ns, Some(&a.cgroup), "10.93.0.2:8080").expect("a -> b");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.2:8080".into(), "10.93.0.1".into())
    );
    assert!(agent_saw("shop/a", "outbound", "10.93.0.2:8080"));
    assert!(agent_saw("shop/b", "inbound", "10.93.0.2:8080"));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", _agent.id())).unwrap_or_default();
    let eff = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        .unwrap_or_default();
    let eff = u64::from_str_radix(&eff, 16).expect("CapEff");
    assert_eq!(
        eff.count_ones() as usize,
        caps.len(),
        "the agent ran with exactly the chart's capabilities ({eff:x})"
    );
}
