//! The agent binary in Kubernetes mode against the test API server: it watches only its
//! node's pods, enrolls them exactly as in directory mode, and follows changes made through
//! the API. Privileged (eBPF, namespaces, cgroups): run through `cargo xtask test` as root.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use cedille_apiserver::{ApiServer, Options};
use cedille_harness::{self as h, Background};
use common::*;
use serde_json::{Value, json};

fn start_agent(n: &Node, kubeconfig: &std::path::Path) -> Background {
    let ca = ca_dir(&n.dir);
    let ca = ca.to_str().unwrap();
    start_agent_with(n, kubeconfig, &["--ca-dir", ca])
}

fn start_agent_with(n: &Node, kubeconfig: &std::path::Path, identity: &[&str]) -> Background {
    let mut cmd = Command::new(AGENT);
    cmd.args(["--kubernetes", "--node-name", "node-1", "--cgroup-root"])
        .arg(&n.root)
        .args(["--admin-addr", ADMIN, "--bpf-pin-dir"])
        .arg(n.pins.path())
        .args(identity)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("CEDILLE_CONFIG_DIR")
        .env(
            "RUST_LOG",
            std::env::var("CEDILLE_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null());
    h::spawn_in(None, None, cmd).expect("start agent")
}

/// Creates a Pod on `node` through the API, as the scheduler would leave it; returns the
/// UID the API server gave it.
fn create_pod(api: &ApiServer, name: &str, ns: &str, node: &str) -> String {
    let created = api
        .create(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "probe"}]}}))
        .expect("create pod");
    created["metadata"]["uid"].as_str().unwrap().to_owned()
}

/// Writes the pod's IPs through `/status`, as the kubelet does once the sandbox runs.
fn set_ips(api: &ApiServer, name: &str, ns: &str, ips: &[&str]) {
    let mut pod = api.get("v1", "Pod", ns, name).unwrap();
    let ip_list: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    pod["status"] = json!({"phase": "Running", "podIP": ips[0], "podIPs": ip_list});
    api.set_status(&pod).expect("pod status");
}

/// Namespaces `shop` (meshed), `legacy` and those in `extra`; pods a and b in shop, c in legacy,
/// made through the API on node-1; their sandboxes (cgroups named after the UIDs the API
/// gave them, as the kubelet makes them); their IPs written through `/status`.
fn pods_through_the_api(api: &ApiServer, extra: &[&str]) -> Node {
    api.create(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"cedille.io/mesh": "enabled"}}}))
        .unwrap();
    for ns in std::iter::once(&"legacy").chain(extra) {
        api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }
    let uids = [
        create_pod(api, "a", "shop", "node-1"),
        create_pod(api, "b", "shop", "node-1"),
        create_pod(api, "c", "legacy", "node-1"),
    ];
    let n = node_with([&uids[0], &uids[1], &uids[2]]);
    for p in &n.pods {
        let ns = if p.name == "c" { "legacy" } else { "shop" };
        set_ips(api, p.name, ns, &[p.ip4, p.ip6]);
    }
    n
}

#[test]
#[ignore = "privileged: run through `cargo xtask test` as root"]
fn privileged_kubernetes_mode_enrolls_this_nodes_pods_only() {
    h::require_privileges();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt
        .block_on(ApiServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Options::default(),
        ))
        .unwrap();
    let n = pods_through_the_api(&api, &[]);
    let (a, c) = (&n.pods[0], &n.pods[2]);
    // A pod of another node, in a meshed namespace: never seen by this node's agent.
    create_pod(&api, "elsewhere", "shop", "node-2");
    set_ips(&api, "elsewhere", "shop", &["10.93.9.9"]);
    let kubeconfig = n.dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();

    let _agent = start_agent(&n, &kubeconfig);
    wait_for("a and b enrolled", || {
        pod_state("a") == "enrolled" && pod_state("b") == "enrolled"
    });
    assert_eq!(pod_state("c"), "not-enrolled");
    let names: Vec<String> = config()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n == "elsewhere"),
        "another node's pod: {names:?}"
    );
    assert_eq!(http_get("/readyz").as_deref(), Some("ok\n"));

    // Traffic between the enrolled pods goes through the agent, as in directory mode.
    let line = connect(&a.ns, Some(&a.cgroup), "10.93.0.2:8080").expect("a -> b");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.2:8080".into(), "10.93.0.1".into())
    );
    assert!(agent_saw("shop/a", "outbound", "10.93.0.2:8080"));
    assert!(agent_saw("shop/b", "inbound", "10.93.0.2:8080"));

    // Opting b out through the API un-enrolls it; deleting a removes it.
    let mut bobj = api.get("v1", "Pod", "shop", "b").unwrap();
    bobj["metadata"]["annotations"] = json!({"cedille.io/mesh": "disabled"});
    api.apply(bobj).unwrap();
    wait_for("b opted out", || pod_state("b") == "not-enrolled");
    api.delete("v1", "Pod", "shop", "a").unwrap();
    wait_for("a gone", || pod_state("a").is_empty());
    let line = connect(&c.ns, Some(&c.cgroup), "10.93.0.2:8080").expect("c -> b, direct");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.2:8080".into(), "10.93.0.3".into())
    );

    // The API server goes away and comes back: nothing is lost, changes made meanwhile
    // arrive.
    api.pause();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pod_state("b"), "not-enrolled", "the last view stays");
    let mut bobj = api.get("v1", "Pod", "shop", "b").unwrap();
    bobj["metadata"]["annotations"] = json!({});
    api.apply(bobj).unwrap();
    rt.block_on(api.resume()).unwrap();
    wait_for("b enrolled again after the outage", || {
        pod_state("b") == "enrolled"
    });
    drop(api);
    drop(rt);
}

/// The CRDs the agent reads beyond the built-ins: the chart's AuthorizationPolicy, and a
/// stand-in for cert-manager's CertificateRequest.
fn crds() -> Vec<Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut crds = cedille_apiserver::load_crds(&root.join("../helm/cedille/crds")).unwrap();
    crds.extend(cedille_apiserver::load_crds(&root.join("tests/crds")).unwrap());
    crds
}

/// Plays cert-manager's CA issuer: signs each CertificateRequest for `issuer` with the CA
/// in `ca` (honouring `spec.duration`), as cert-manager writes the status. Counts what it
/// signed; stops when `stop` is set.
fn fake_cert_manager(
    api: std::sync::Arc<ApiServer>,
    ca: std::path::PathBuf,
    issuer: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    signed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    use base64::Engine;
    use std::sync::atomic::Ordering;
    let b64 = base64::engine::general_purpose::STANDARD;
    std::thread::spawn(move || {
        let ca_pem = std::fs::read_to_string(ca.join("ca.crt")).unwrap();
        let key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca.join("ca.key")).unwrap()).unwrap();
        let issuer_ca = rcgen::Issuer::from_ca_cert_pem(&ca_pem, key).unwrap();
        while !stop.load(Ordering::Relaxed) {
            for cr in api
                .list("cert-manager.io/v1", "CertificateRequest")
                .unwrap_or_default()
            {
                if cr["status"]["certificate"].is_string()
                    || cr["spec"]["issuerRef"]["name"] != issuer
                {
                    continue;
                }
                let csr =
                    String::from_utf8(b64.decode(cr["spec"]["request"].as_str().unwrap()).unwrap())
                        .unwrap();
                let mut params = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
                let secs: u64 = cr["spec"]["duration"]
                    .as_str()
                    .and_then(|d| d.strip_suffix('s'))
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(3600);
                let now = std::time::SystemTime::now();
                params.params.not_before = (now - Duration::from_secs(60)).into();
                params.params.not_after = (now + Duration::from_secs(secs)).into();
                let cert = params.signed_by(&issuer_ca).unwrap();
                let mut done = cr.clone();
                done["status"] = json!({
                    "certificate": b64.encode(cert.pem()),
                    "ca": b64.encode(&ca_pem),
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Issued"}],
                });
                if api.set_status(&done).is_ok() {
                    signed.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[test]
#[ignore = "privileged: run through `cargo xtask test` as root"]
fn privileged_kubernetes_mode_identities_from_cert_manager_and_policies_from_the_api() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    h::require_privileges();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = Arc::new(
        rt.block_on(ApiServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Options {
                crds: crds(),
                ..Options::default()
            },
        ))
        .unwrap(),
    );
    let n = pods_through_the_api(&api, &["cedille-system"]);
    let a = &n.pods[0];
    // The CA lives with the test's cert-manager, never with the agent.
    let ca = ca_dir(&n.dir.join("issuer"));
    let stop = Arc::new(AtomicBool::new(false));
    let signed = Arc::new(AtomicUsize::new(0));
    let issuer = fake_cert_manager(api.clone(), ca, "mesh-ca", stop.clone(), signed.clone());
    let kubeconfig = n.dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let _agent = start_agent_with(
        &n,
        &kubeconfig,
        &[
            "--cert-manager-issuer",
            "mesh-ca",
            "--namespace",
            "cedille-system",
        ],
    );
    wait_for("a and b enrolled with an identity", || {
        pod_state("a") == "enrolled"
            && pod_state("b") == "enrolled"
            && config()["identities"][0]["serial"].is_string()
    });
    let mtls = config()["mtls"].clone();
    assert!(
        mtls["source"]
            .as_str()
            .unwrap_or("")
            .starts_with("cert-manager ClusterIssuer mesh-ca"),
        "{mtls}"
    );
    assert!(signed.load(Ordering::Relaxed) >= 1);
    let line = connect(&a.ns, Some(&a.cgroup), "10.93.0.2:8080").expect("a -> b");
    assert_eq!(
        local_and_peer(&line),
        ("10.93.0.2:8080".into(), "10.93.0.1".into())
    );
    assert!(
        config()["recentConnections"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["pod"] == "shop/b" && r["protocol"] == "hbone"),
        "b received a's connection over HBONE"
    );
    // The agent deletes its requests once signed.
    wait_for("CertificateRequests cleaned up", || {
        api.list("cert-manager.io/v1", "CertificateRequest")
            .map(|l| l.is_empty())
            .unwrap_or(false)
    });

    // A policy made through the API: a may no longer reach b.
    api.create(
        json!({"apiVersion": "cedille.io/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "quiet", "namespace": "shop"},
        "spec": {"action": "Deny", "rules": [{"ports": [8080]}]}}),
    )
    .unwrap();
    wait_for("the policy is in force", || {
        connect(&a.ns, Some(&a.cgroup), "10.93.0.2:8080").is_err()
    });
    connect(&a.ns, Some(&a.cgroup), "[fd93::2]:8081").expect("another port is allowed");
    assert!(metric("cedille_agent_policy_denials_total{policy=\"shop/quiet\"}") >= 1.0);
    stop.store(true, Ordering::Relaxed);
    issuer.join().unwrap();
}
