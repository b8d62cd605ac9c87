//! Privileged: two "nodes" (network namespaces, each with a bridge) joined by one link, two
//! agents, pods on each, and mutual TLS between them. Checks what crosses the link (a
//! capture: only TLS records, the marker never in clear), identities, authorization, strict
//! and permissive namespaces, an independent HBONE client (Python `h2` + `ssl`), peers with
//! bad certificates, and renewals under traffic. Run as root through `cargo xtask test`.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use cedille_agent::identity::{SpiffeId, ca::svid_params};
use cedille_harness::{self as h, Background, Bridge, Cgroup, Netns, PinDir};
use common::{AGENT, PROBE, ca_dir, local_and_peer};
use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

const ADMIN: [&str; 2] = ["127.0.0.1:15941", "127.0.0.1:15942"];
const MARKER: &str = "cedille-marker-7d1f3a";

struct Pod {
    name: &'static str,
    ns_name: &'static str,
    sa: &'static str,
    node: usize,
    uid: &'static str,
    ip4: &'static str,
    ip6: &'static str,
    labels: &'static str,
    ns: Netns,
    cgroup: PathBuf,
    _servers: Vec<Background>,
}

struct Cluster {
    pods: Vec<Pod>,
    ext: Netns,
    _ext_server: Background,
    /// node 1's end of the link between the nodes.
    link: String,
    dir: PathBuf,
    roots: [PathBuf; 2],
    pins: [PinDir; 2],
    _cgroups: [Cgroup; 2],
    // Last: the bridges and every veth go with them.
    nodes: [Netns; 2],
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap()
    }
}

fn cluster() -> Cluster {
    h::require_privileges();
    let nodes = [Netns::new("n1").unwrap(), Netns::new("n2").unwrap()];
    let bridges = [
        Bridge::new(Some(&nodes[0])).unwrap(),
        Bridge::new(Some(&nodes[1])).unwrap(),
    ];
    let (l1, l2) = h::veth_pair(Some(&nodes[0]), Some(&nodes[1])).unwrap();
    bridges[0].add(&l1).unwrap();
    bridges[1].add(&l2).unwrap();
    let cgroups = [Cgroup::new("hb1").unwrap(), Cgroup::new("hb2").unwrap()];
    let roots = [cgroups[0].path().to_owned(), cgroups[1].path().to_owned()];
    let specs = [
        (
            "a",
            "front",
            "web",
            0,
            "a0000000-0000-4000-8000-00000000000a",
            "10.95.0.1",
            "fd95::1",
            "{app: web}",
        ),
        (
            "b",
            "front",
            "admin",
            0,
            "b0000000-0000-4000-8000-00000000000b",
            "10.95.0.2",
            "fd95::2",
            "{app: admin}",
        ),
        (
            "c",
            "back",
            "api",
            1,
            "c0000000-0000-4000-8000-00000000000c",
            "10.95.0.3",
            "fd95::3",
            "{app: api}",
        ),
        (
            "d",
            "back",
            "db",
            1,
            "d0000000-0000-4000-8000-00000000000d",
            "10.95.0.4",
            "fd95::4",
            "{app: db}",
        ),
    ];
    let mut pods = Vec::new();
    for (name, ns_name, sa, node, uid, ip4, ip6, labels) in specs {
        let ns = Netns::new(name).unwrap();
        ns.ip(&["link", "set", "lo", "up"]).unwrap();
        let (inside, outside) = h::veth_pair(Some(&ns), Some(&nodes[node])).unwrap();
        ns.addr(&inside, &format!("{ip4}/24")).unwrap();
        ns.addr(&inside, &format!("{ip6}/64")).unwrap();
        bridges[node].add(&outside).unwrap();
        let cgroup = roots[node].join(format!("kubepods/besteffort/pod{uid}/ctr"));
        std::fs::create_dir_all(&cgroup).unwrap();
        let mut serve = Command::new(PROBE);
        serve.args(["serve", "0.0.0.0:8080", "[::]:8081"]);
        let mut bench = Command::new(PROBE);
        bench.args(["bench-serve", "0.0.0.0:9000", "0.0.0.0:9001"]);
        let servers = vec![
            h::spawn_in(Some(&ns), Some(&cgroup), serve).unwrap(),
            h::spawn_in(Some(&ns), Some(&cgroup), bench).unwrap(),
        ];
        pods.push(Pod {
            name,
            ns_name,
            sa,
            node,
            uid,
            ip4,
            ip6,
            labels,
            ns,
            cgroup,
            _servers: servers,
        });
    }
    let ext = Netns::new("hx").unwrap();
    ext.ip(&["link", "set", "lo", "up"]).unwrap();
    let (inside, outside) = h::veth_pair(Some(&ext), Some(&nodes[0])).unwrap();
    ext.addr(&inside, "10.95.0.100/24").unwrap();
    ext.addr(&inside, "fd95::100/64").unwrap();
    bridges[0].add(&outside).unwrap();
    let mut serve = Command::new(PROBE);
    serve.args(["serve", "0.0.0.0:9090"]);
    let _ext_server = h::spawn_in(Some(&ext), None, serve).unwrap();
    // Deleted with the nodes' namespaces.
    std::mem::forget(bridges);
    let dir = std::env::temp_dir().join(format!("cedille-hbone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    Cluster {
        pods,
        ext,
        _ext_server,
        link: l1,
        dir,
        roots,
        pins: [PinDir::new().unwrap(), PinDir::new().unwrap()],
        _cgroups: cgroups,
        nodes,
    }
}

/// Writes the cluster's objects; `overrides` replaces a pod's service account.
fn manifests(c: &Cluster, dir: &Path, overrides: &[(&str, &str)], extra: &str) {
    let mut docs = vec![
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: front, labels: {cedille.io/mesh: enabled}}\n".to_owned(),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: back, labels: {cedille.io/mesh: enabled, cedille.io/mtls: strict}}\n".to_owned(),
    ];
    for p in &c.pods {
        let sa = overrides
            .iter()
            .find(|(n, _)| *n == p.name)
            .map_or(p.sa, |(_, sa)| *sa);
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {}, uid: {}, labels: {}}}\nspec: {{nodeName: node-{}, serviceAccountName: {sa}}}\nstatus: {{podIP: {}, podIPs: [{{ip: {}}}, {{ip: {}}}]}}\n",
            p.name, p.ns_name, p.uid, p.labels, p.node + 1, p.ip4, p.ip4, p.ip6
        ));
    }
    if !extra.is_empty() {
        docs.push(extra.to_owned());
    }
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(".objects.yaml.tmp");
    std::fs::write(&tmp, docs.join("---\n")).unwrap();
    std::fs::rename(&tmp, dir.join("objects.yaml")).unwrap();
}

fn start_agent(c: &Cluster, node: usize, config: &Path, extra: &[&str]) -> Background {
    let mut cmd = Command::new(AGENT);
    cmd.arg("--config-dir")
        .arg(config)
        .args([
            "--node-name",
            &format!("node-{}", node + 1),
            "--cgroup-root",
        ])
        .arg(&c.roots[node])
        .args(["--admin-addr", ADMIN[node], "--bpf-pin-dir"])
        .arg(c.pins[node].path())
        .arg("--ca-dir")
        .arg(ca_dir(&c.dir))
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("CEDILLE_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null());
    h::spawn_in(None, None, cmd).expect("start agent")
}

fn config(admin: &str) -> serde_json::Value {
    h::http_get(admin, "/config")
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn enrolled(admin: &str, names: &[&str]) -> bool {
    let c = config(admin);
    names.iter().all(|n| {
        c["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == *n && p["state"] == "enrolled")
    }) && c["identities"]
        .as_array()
        .is_some_and(|ids| !ids.is_empty() && ids.iter().all(|i| i["serial"].is_string()))
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "timed out waiting for {what}; agents: {} {}",
        config(ADMIN[0]),
        config(ADMIN[1])
    );
}

/// The value of the first series of `admin`'s metrics that starts with `prefix`.
fn metric(admin: &str, prefix: &str) -> f64 {
    h::http_get(admin, "/metrics")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn probe(from: &Pod, args: &[&str]) -> Result<String, String> {
    probe_for(from, args, Duration::from_secs(10))
}

fn probe_for(from: &Pod, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut cmd = Command::new(PROBE);
    cmd.args(args);
    let out = h::run_in(Some(&from.ns), Some(&from.cgroup), cmd, limit).expect("run probe");
    if out.success() {
        Ok(out.stdout.trim().to_owned())
    } else {
        Err(out.stderr.trim().to_owned())
    }
}

/// Runs the independent HBONE client from the host outside the mesh.
fn python_client(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup.sh (it installs the h2 package the HBONE client uses)",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hbone/client.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).args(args);
    let out = h::run_in(Some(&c.ext), None, cmd, Duration::from_secs(15)).expect("run client");
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|_| panic!("client printed no JSON: {} / {}", out.stdout, out.stderr))
}

/// A client certificate for the Python client, written as `<name>.crt`/`<name>.key`.
struct ClientCert {
    crt: PathBuf,
    key: PathBuf,
}

fn client_cert(
    dir: &Path,
    name: &str,
    issuer: &Issuer<'_, KeyPair>,
    f: impl FnOnce(&mut CertificateParams),
) -> ClientCert {
    let now = SystemTime::now();
    let mut p = svid_params(
        &SpiffeId::new("cluster.local", "tools", "probe"),
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    )
    .unwrap();
    f(&mut p);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    let crt = dir.join(format!("{name}.crt"));
    let keyf = dir.join(format!("{name}.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    ClientCert { crt, key: keyf }
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[test]
#[ignore = "privileged: run through `cargo xtask test` as root"]
fn privileged_two_nodes_speak_hbone_with_identities_and_policy() {
    let c = cluster();
    let conf = c.dir.join("config");
    manifests(&c, &conf, &[], "");
    let _agent2 = start_agent(&c, 1, &conf, &[]);
    // Node 1's agent reads its own copy of the objects, so that it can be told a wrong
    // service account for c below.
    let conf1 = c.dir.join("config1");
    manifests(&c, &conf1, &[], "");
    let _agent1 = start_agent(&c, 0, &conf1, &[]);
    wait_for("a, b enrolled on node 1", || {
        enrolled(ADMIN[0], &["a", "b"])
    });
    wait_for("c, d enrolled on node 2", || {
        enrolled(ADMIN[1], &["c", "d"])
    });
    let (a, b) = (c.pod("a"), c.pod("b"));

    // Across the link, under capture.
    let pcap = c.dir.join("link.pcap");
    let mut tcpdump = Command::new("tcpdump");
    tcpdump
        .args(["-i", &c.link, "-U", "--immediate-mode", "-n", "-w"])
        .arg(&pcap)
        .stderr(Stdio::null());
    let mut capture = h::spawn_in(Some(&c.nodes[0]), None, tcpdump)
        .expect("tcpdump (scripts/setup.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pcap.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!capture.exited(), "tcpdump is running");
    let line = probe(a, &["send", "10.95.0.3:8080", MARKER]).expect("a -> c");
    assert_eq!(
        local_and_peer(&line),
        ("10.95.0.3:8080".into(), "10.95.0.1".into()),
        "the application sees a's address: {line}"
    );
    let line = probe(a, &["send", "[fd95::3]:8081", MARKER]).expect("a -> c over IPv6");
    assert_eq!(
        local_and_peer(&line),
        ("[fd95::3]:8081".into(), "fd95::1".into()),
        "{line}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!capture.exited(), "tcpdump is still running");
    // SIGINT: tcpdump flushes and closes the file.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(capture.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let t = Instant::now();
    while !capture.exited() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let bytes = std::fs::read(&pcap).unwrap();
    assert!(
        !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "the marker crossed the link in clear"
    );
    let flows = pcap_flows(&bytes);
    let between_pods: Vec<_> = flows
        .iter()
        .filter(|(k, _)| k.0.starts_with("10.95.0.") || k.0.starts_with("fd95::"))
        .collect();
    assert!(
        !between_pods.is_empty(),
        "nothing captured on the link ({} bytes): {:?}",
        bytes.len(),
        flows.keys().collect::<Vec<_>>()
    );
    let mut app_records = 0;
    for ((src, sport, dst, dport), payload) in &between_pods {
        assert!(
            *sport == 15008 || *dport == 15008,
            "{src}:{sport} -> {dst}:{dport} crossed the link outside HBONE"
        );
        app_records += tls_records(payload)
            .unwrap_or_else(|e| panic!("{src}:{sport} -> {dst}:{dport}: not TLS records: {e}"));
    }
    assert!(app_records >= 2, "TLS application data crossed the link");

    // Identities: each agent holds its pods' service accounts.
    let ids = |admin: &str| -> Vec<String> {
        config(admin)["identities"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i["spiffeId"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        ids(ADMIN[0]),
        [
            "spiffe://cluster.local/ns/front/sa/admin",
            "spiffe://cluster.local/ns/front/sa/web"
        ]
    );
    assert_eq!(
        ids(ADMIN[1]),
        [
            "spiffe://cluster.local/ns/back/sa/api",
            "spiffe://cluster.local/ns/back/sa/db"
        ]
    );
    assert!(
        metric(
            ADMIN[1],
            "cedille_agent_workload_connections_total{direction=\"inbound\",source_identity=\"spiffe://cluster.local/ns/front/sa/web\",destination_identity=\"spiffe://cluster.local/ns/back/sa/api\"}"
        ) >= 2.0
    );
    assert!(
        metric(
            ADMIN[0],
            "cedille_agent_certificate_expiry_timestamp_seconds{identity=\"spiffe://cluster.local/ns/front/sa/web\"}"
        ) > 1.7e9
    );

    // Same node: a -> b goes through HBONE as well.
    let line = probe(a, &["send", "10.95.0.2:8080", "same-node"]).expect("a -> b");
    assert_eq!(local_and_peer(&line).1, "10.95.0.1", "{line}");
    let recent = config(ADMIN[0])["recentConnections"].clone();
    assert!(
        recent
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["pod"] == "front/b"
                && r["direction"] == "inbound"
                && r["protocol"] == "hbone"
                && r["sourceIdentity"] == "spiffe://cluster.local/ns/front/sa/web"),
        "b's agent received a -> b over HBONE: {recent}"
    );

    // Strict namespace: plaintext from outside the mesh is refused; permissive accepts it.
    let run_ext = |addr: &str| {
        let mut cmd = Command::new(PROBE);
        cmd.args(["connect", addr, "1500"]);
        let out = h::run_in(Some(&c.ext), None, cmd, Duration::from_secs(10)).unwrap();
        if out.success() {
            Ok(out.stdout.trim().to_owned())
        } else {
            Err(out.stderr)
        }
    };
    assert!(
        run_ext("10.95.0.3:8080").is_err(),
        "strict: plaintext refused"
    );
    assert!(
        metric(
            ADMIN[1],
            "cedille_agent_policy_denials_total{policy=\"strict-mtls\"}"
        ) >= 1.0
    );
    let line = run_ext("10.95.0.1:8080").expect("permissive: plaintext accepted");
    assert_eq!(local_and_peer(&line).1, "10.95.0.100", "{line}");

    // The independent HBONE client (Python h2 + ssl) with an SVID of the mesh CA.
    let ca = ca_dir(&c.dir);
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca.join("ca.key")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(ca.join("ca.crt")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let certs = c.dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let good = client_cert(&certs, "good", &issuer, |_| {});
    let ca_crt = ca.join("ca.crt");
    let hbone = |cert: Option<&ClientCert>, method: &str, authority: &str, send: &str| {
        let mut args = vec![
            "--server".to_owned(),
            "10.95.0.3:15008".to_owned(),
            "--authority".to_owned(),
            authority.to_owned(),
            "--ca".to_owned(),
            ca_crt.display().to_string(),
            "--method".to_owned(),
            method.to_owned(),
        ];
        if let Some(cc) = cert {
            args.extend([
                "--cert".to_owned(),
                cc.crt.display().to_string(),
                "--key".to_owned(),
                cc.key.display().to_string(),
            ]);
        }
        if !send.is_empty() {
            args.extend(["--send".to_owned(), send.to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        python_client(&c, &args)
    };
    let r = hbone(Some(&good), "CONNECT", "10.95.0.3:8080", "hello over h2");
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(
        r["server_identity"][0], "spiffe://cluster.local/ns/back/sa/api",
        "{r}"
    );
    assert_eq!(r["echo"], "hello over h2", "{r}");
    assert!(
        r["banner"]
            .as_str()
            .unwrap_or("")
            .ends_with("peer=10.95.0.100")
            || r["banner"]
                .as_str()
                .unwrap_or("")
                .contains("peer=10.95.0.100:"),
        "{r}"
    );
    let r = hbone(Some(&good), "GET", "10.95.0.3:8080", "");
    assert_eq!(r["status"], 400, "a request other than CONNECT: {r}");
    let r = hbone(Some(&good), "CONNECT", "10.95.0.99:8080", "");
    assert_eq!(
        r["status"], 400,
        "an authority that is no pod of the node: {r}"
    );
    let r = hbone(Some(&good), "CONNECT", "10.95.0.3:7777", "");
    assert_eq!(r["status"], 503, "nothing listening: {r}");
    let before = metric(
        ADMIN[1],
        "cedille_agent_tls_handshake_failures_total{side=\"server\",reason=\"no_certificate\"}",
    );
    let r = hbone(None, "CONNECT", "10.95.0.3:8080", "");
    assert!(
        r.get("status").is_none() && r["error"].is_string(),
        "no certificate: {r}"
    );
    wait_for("no_certificate counted", || {
        metric(
            ADMIN[1],
            "cedille_agent_tls_handshake_failures_total{side=\"server\",reason=\"no_certificate\"}",
        ) > before
    });

    // Peers with bad certificates, each refused with its reason.
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    other_params
        .distinguished_name
        .push(DnType::CommonName, "another CA");
    let other_issuer = Issuer::new(other_params, other_key);
    let bad: Vec<(&str, ClientCert)> = vec![
        (
            "unknown_ca",
            client_cert(&certs, "other-ca", &other_issuer, |_| {}),
        ),
        (
            "wrong_trust_domain",
            client_cert(&certs, "other-td", &issuer, |p| {
                p.subject_alt_names = vec![uri("spiffe://other.domain/ns/tools/sa/probe")]
            }),
        ),
        (
            "bad_san",
            client_cert(&certs, "two-sans", &issuer, |p| {
                p.subject_alt_names = vec![
                    uri("spiffe://cluster.local/ns/tools/sa/probe"),
                    uri("spiffe://cluster.local/ns/tools/sa/other"),
                ]
            }),
        ),
        (
            "ca_leaf",
            client_cert(&certs, "ca-leaf", &issuer, |p| {
                p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
            }),
        ),
        (
            "expired",
            client_cert(&certs, "expired", &issuer, |p| {
                let past = SystemTime::now() - Duration::from_secs(7200);
                p.not_before = past.into();
                p.not_after = (past + Duration::from_secs(60)).into();
            }),
        ),
    ];
    for (reason, cert) in &bad {
        let series = format!(
            "cedille_agent_tls_handshake_failures_total{{side=\"server\",reason=\"{reason}\"}}"
        );
        let before = metric(ADMIN[1], &series);
        let r = hbone(Some(cert), "CONNECT", "10.95.0.3:8080", "x");
        assert!(r.get("status").is_none(), "{reason}: answered {r}");
        wait_for(reason, || metric(ADMIN[1], &series) > before);
    }
    // Nothing else was disturbed.
    probe(a, &["send", "10.95.0.3:8080", "still fine"]).expect("a -> c after the bad peers");

    // A deny policy blocks exactly the pair it names.
    let deny_web = "apiVersion: cedille.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: no-web, namespace: back}\nspec:\n  selector: {matchLabels: {app: api}}\n  action: Deny\n  rules: [{from: [{identities: [\"spiffe://cluster.local/ns/front/sa/web\"]}]}]\n";
    manifests(&c, &conf, &[], deny_web);
    wait_for("the policy is in force", || {
        probe(a, &["connect", "10.95.0.3:8080", "1500"]).is_err()
    });
    assert!(
        metric(
            ADMIN[1],
            "cedille_agent_policy_denials_total{policy=\"back/no-web\"}"
        ) >= 1.0
    );
    probe(b, &["send", "10.95.0.3:8080", "admin may"]).expect("b -> c is not denied");
    probe(a, &["send", "10.95.0.4:8080", "db is not selected"]).expect("a -> d is not denied");
    let r = hbone(Some(&good), "CONNECT", "10.95.0.3:8080", "");
    assert_eq!(r["status"], 200, "tools/probe is not denied: {r}");

    // A policy change closes an open connection it now denies.
    let mut hold = Command::new(PROBE);
    hold.args(["hold", "10.95.0.3:8080", "15"])
        .stdout(Stdio::piped());
    let mut held = h::spawn_in(Some(&b.ns), Some(&b.cgroup), hold).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!held.exited(), "b's connection is open");
    let deny_front = deny_web.replace(
        "spiffe://cluster.local/ns/front/sa/web",
        "spiffe://cluster.local/ns/front/sa/*",
    );
    manifests(&c, &conf, &[], &deny_front);
    let t = Instant::now();
    while !held.exited() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        held.exited(),
        "the open connection was closed by the policy change"
    );
    let r = hbone(Some(&good), "CONNECT", "10.95.0.3:8080", "");
    assert_eq!(r["status"], 200, "other namespaces still allowed: {r}");
    let denied = client_cert(&certs, "front-web", &issuer, |p| {
        p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/front/sa/web")]
    });
    let r = hbone(Some(&denied), "CONNECT", "10.95.0.3:8080", "");
    assert_eq!(r["status"], 401, "denied by policy: {r}");

    // The client checks the server's identity: node 1 is told c runs as another account.
    manifests(&c, &conf, &[], "");
    manifests(&c, &conf1, &[("c", "imposter")], "");
    let series =
        "cedille_agent_tls_handshake_failures_total{side=\"client\",reason=\"wrong_identity\"}";
    wait_for("a -> c refused for the server's identity", || {
        probe(a, &["connect", "10.95.0.3:8080", "1500"]).is_err() && metric(ADMIN[0], series) >= 1.0
    });
}

#[test]
#[ignore = "privileged: run through `cargo xtask test` as root"]
fn privileged_fifty_renewals_under_traffic_fail_nothing() {
    let c = cluster();
    let conf = c.dir.join("config");
    manifests(&c, &conf, &[], "");
    // Two-second certificates: each identity is renewed every second.
    let _agent1 = start_agent(&c, 0, &conf, &["--svid-lifetime", "2s"]);
    let _agent2 = start_agent(&c, 1, &conf, &["--svid-lifetime", "2s"]);
    wait_for("a, b enrolled", || enrolled(ADMIN[0], &["a", "b"]));
    wait_for("c, d enrolled", || enrolled(ADMIN[1], &["c", "d"]));
    let renewals = || -> u64 {
        ADMIN
            .iter()
            .flat_map(|admin| {
                config(admin)["identities"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|i| i["renewals"].as_u64().unwrap_or(0))
            .sum()
    };
    let start = renewals();
    let out = probe_for(
        c.pod("a"),
        &[
            "crr",
            "10.95.0.3:9000",
            "--seconds",
            "15",
            "--concurrency",
            "4",
        ],
        Duration::from_secs(30),
    )
    .expect("load a -> c");
    let done = renewals() - start;
    let fields: BTreeMap<&str, &str> = out
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let n: u64 = fields["connections"].parse().unwrap();
    assert!(n > 500, "{out}");
    assert_eq!(
        fields["errors"], "0",
        "failed requests during renewals: {out}"
    );
    assert!(done >= 50, "only {done} renewals during the load");
    eprintln!("{done} renewals, {out}");
    // New pooled connections were made with the renewed certificates.
    assert!(metric(ADMIN[0], "cedille_agent_tls_handshake_failures_total") == 0.0);
}

/// TCP payload of each flow (src, sport, dst, dport) in a pcap of Ethernet frames, in
/// sequence order.
type Flow = (String, u16, String, u16);
/// A flow's initial sequence number (from its SYN) and its segments by sequence number.
type Segments = (Option<u32>, BTreeMap<u32, Vec<u8>>);

fn pcap_flows(b: &[u8]) -> BTreeMap<Flow, Vec<u8>> {
    assert!(b.len() >= 24, "empty capture");
    let le = b[0..4] == [0xd4, 0xc3, 0xb2, 0xa1] || b[0..4] == [0x4d, 0x3c, 0xb2, 0xa1];
    let u32at = |s: &[u8], i: usize| {
        let a = [s[i], s[i + 1], s[i + 2], s[i + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    assert_eq!(u32at(b, 20), 1, "link type Ethernet");
    let mut segs: BTreeMap<Flow, Segments> = BTreeMap::new();
    let mut i = 24;
    while i + 16 <= b.len() {
        let incl = u32at(b, i + 8) as usize;
        let frame = &b[i + 16..(i + 16 + incl).min(b.len())];
        i += 16 + incl;
        if frame.len() < 14 {
            continue;
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let ip = &frame[14..];
        let (src, dst, tcp) = match ethertype {
            0x0800 if ip.len() >= 20 && ip[9] == 6 => {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
                let s = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]).to_string();
                let d = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]).to_string();
                (s, d, &ip[ihl..total])
            }
            0x86dd if ip.len() >= 40 && ip[6] == 6 => {
                let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                let s: [u8; 16] = ip[8..24].try_into().unwrap();
                let d: [u8; 16] = ip[24..40].try_into().unwrap();
                (
                    std::net::Ipv6Addr::from(s).to_string(),
                    std::net::Ipv6Addr::from(d).to_string(),
                    &ip[40..(40 + plen).min(ip.len())],
                )
            }
            _ => continue,
        };
        if tcp.len() < 20 {
            continue;
        }
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let off = usize::from(tcp[12] >> 4) * 4;
        let syn = tcp[13] & 0x02 != 0;
        let e = segs.entry((src, sport, dst, dport)).or_default();
        if syn {
            e.0 = Some(seq.wrapping_add(1));
        }
        if tcp.len() > off {
            e.1.entry(seq).or_insert_with(|| tcp[off..].to_vec());
        }
    }
    segs.into_iter()
        .map(|(k, (isn, parts))| {
            let isn = isn.or_else(|| parts.keys().next().copied()).unwrap_or(0);
            let mut out: Vec<u8> = Vec::new();
            for (seq, data) in parts {
                let at = seq.wrapping_sub(isn) as usize;
                if at > out.len() {
                    // A gap (the capture started mid-stream): keep what follows apart.
                    break;
                }
                let skip = out.len() - at;
                if skip < data.len() {
                    out.extend_from_slice(&data[skip..]);
                }
            }
            (k, out)
        })
        .collect()
}

/// Walks a byte stream as TLS records; returns how many carry application data.
fn tls_records(s: &[u8]) -> Result<usize, String> {
    let mut i = 0;
    let mut app = 0;
    while i + 5 <= s.len() {
        let (ty, major, minor) = (s[i], s[i + 1], s[i + 2]);
        let len = usize::from(u16::from_be_bytes([s[i + 3], s[i + 4]]));
        if !(20..=23).contains(&ty) || major != 3 || !(1..=3).contains(&minor) || len > 16384 + 256
        {
            return Err(format!("byte {i}: {:02x?}", &s[i..(i + 8).min(s.len())]));
        }
        if ty == 23 {
            app += 1;
        }
        i += 5 + len;
    }
    Ok(app)
}
